"""One platform image of a source, as a lazy view: :class:`Image`.

An :class:`Image` is the image a name gives in an :class:`~derrick.images.model.ImageSource`
(a registry repository, an OCI layout, an OCI archive, a docker-archive), for one
platform.  Nothing is read until something is asked: then the copy engine's planner
(:func:`derrick.images.plan.plan`, the one index walk and platform matcher) resolves the
name with a one-platform :class:`~derrick.images.model.Selection`, reads the manifest and
the config (verified), and the view answers from what it planned:

* an index gives this machine's platform, or the one asked for (the descriptor of its
  entry, with the entry's platform, is :attr:`Image.descriptor`; the index is
  :attr:`Image.index`);
* an image that is in no index is taken whatever its platform, unless one was asked for:
  then its config must name that platform.

Layers are read with :meth:`Image.read_layers` (see :mod:`derrick.images.layers`):
verified streams, through the blob store when the image was opened with one.

:func:`open_image` opens any location (``registry.example/app:1.0``, ``oci:DIR:TAG``,
``FILE.tar``, ...) as an :class:`Image`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence

from derrick.closing import Closing
from derrick.digest import Digest, Verifier
from derrick.errors import ManifestError, UsageError
from derrick.images.layers import Layer, LayerReader, numbered_layers
from derrick.images.locations import Location, parse_location
from derrick.images.model import Chunk, ImageSource, PlannedEntry, Progress, Selection
from derrick.images.open import DEFAULT_JOBS, open_source, source_name
from derrick.images.plan import PlanItem, plan
from derrick.images.remote import RegistryRepository
from derrick.manifest import (
    Descriptor,
    ImageConfig,
    ImageManifest,
    Index,
    Manifest,
    Platform,
    parse_manifest,
)
from derrick.platform import config_platform, require_image
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore
from derrick.transport import RetryPolicy

__all__ = ["NO_FILESYSTEM", "Image", "open_image"]

#: Why an artifact cannot be read as a filesystem (for :func:`~derrick.platform.require_image`).
NO_FILESYSTEM = "it has no filesystem to read"


class Image(Closing):
    """The image ``name`` (None: the source's default) of ``source`` for ``platform``
    (None: this machine's, from an index).

    ``shown`` is how the user named the image, for messages (default: the source and the
    name).  ``store`` is the blob store layers of a registry image go through, and where
    a verified copy of the config may be found; none: nothing is written anywhere.
    ``closers`` are called by :meth:`close` (e.g. to close the source and a client made
    for it).  Use as a context manager.
    """

    def __init__(
        self,
        source: ImageSource,
        name: str | None = None,
        *,
        platform: Platform | str | None = None,
        store: BlobStore | None = None,
        retry: RetryPolicy | None = None,
        jobs: int = DEFAULT_JOBS,
        shown: str | None = None,
        closers: Sequence[Callable[[], None]] = (),
    ) -> None:
        if platform is not None and not isinstance(platform, Platform | str):
            raise UsageError(
                f"a platform must be a string or a Platform, not {type(platform).__name__} "
                f"{platform!r}"
            )
        self.source = source
        self.name = name
        self.wanted = Platform.parse(platform) if isinstance(platform, str) else platform
        self.store = store
        self.retry = retry
        self.jobs = jobs
        self.shown = shown or (f"{source.description}:{name}" if name else source.description)
        self._closers = list(closers)
        self._lock = threading.Lock()
        self._entry: PlannedEntry | None = None
        self._config: ImageConfig | None = None

    def __repr__(self) -> str:
        return f"Image({self.shown!r})"

    def __str__(self) -> str:
        return self.shown

    def close(self) -> None:
        """Close what the image was opened with (its source, a client made for it)."""
        while self._closers:
            with contextlib.suppress(Exception):
                self._closers.pop()()

    # -- what it is ----------------------------------------------------------------------

    @property
    def selection(self) -> Selection:
        """The selection that gives this image from what its name names."""
        return Selection(platforms=(self.wanted,) if self.wanted is not None else ())

    def _planned(self) -> PlannedEntry:
        with self._lock:
            if self._entry is None:
                item = PlanItem(self.source, self.name, self.selection, (), self.shown)
                local = self.store.lookup if self.store is not None else None
                self._entry = plan([item], retry=self.retry, local=local).entries[0]
            return self._entry

    @property
    def is_remote(self) -> bool:
        """Whether the image is in a registry (not on the local disk)."""
        return isinstance(self.source, RegistryRepository)

    @property
    def top(self) -> Descriptor:
        """What the name names: an index, or this image's manifest."""
        entry = self._planned()
        return entry.parent[0] if entry.parent is not None else entry.top

    @property
    def index(self) -> Index | None:
        """The index the image was chosen from, if it was."""
        entry = self._planned()
        return entry.parent[1] if entry.parent is not None else None

    @property
    def descriptor(self) -> Descriptor:
        """The image manifest's descriptor (with its platform when it is in an index)."""
        return self._planned().images[0].descriptor

    @property
    def digest(self) -> Digest:
        """The digest of the image manifest."""
        return self.descriptor.digest

    @property
    def manifest(self) -> ImageManifest:
        """The image manifest (its bytes, as served, are ``manifest.raw``)."""
        return self._planned().images[0].manifest

    @property
    def is_image(self) -> bool:
        """Whether it is a container image (not an OCI artifact: a Helm chart, an SBOM...)."""
        return self.manifest.is_image

    @property
    def config_bytes(self) -> bytes:
        """The config blob as stored, verified (an artifact's config too)."""
        return self._planned().images[0].config

    @property
    def config(self) -> ImageConfig:
        """The image config; :class:`NotAnImageError` for an artifact."""
        if self._config is None:
            require_image(self.shown, self.manifest, "its config is not an image config")
            try:
                self._config = ImageConfig.parse(self.config_bytes)
            except ManifestError as e:
                raise ManifestError(
                    f"config {self.manifest.config.digest} of {self.shown}: {e.message}"
                ) from None
        return self._config

    @property
    def layers(self) -> tuple[Descriptor, ...]:
        """The layers' descriptors, base layer first."""
        return self.manifest.layers

    @property
    def size(self) -> int:
        """Bytes of the config and the layers, as stored (compressed)."""
        m = self.manifest
        return m.config.size + sum(d.size for d in m.layers)

    @property
    def platform(self) -> Platform | None:
        """The platform: its index entry's, else the one its config names; None for an
        artifact or a config that names none."""
        if self.descriptor.platform is not None:
            return self.descriptor.platform
        if not self.is_image:
            return None
        return config_platform(self.config)

    def named(self) -> tuple[Descriptor, Manifest]:
        """What the name names (an index or an image manifest), read and verified,
        without choosing a platform."""
        desc = self.source.resolve(self.name)
        raw = self.source.manifest(desc)
        what = f"manifest {desc.digest} of {self.shown}"
        verifier = Verifier(desc.digest, desc.size, what=what)
        verifier.update(raw)
        verifier.verify()
        try:
            return desc, parse_manifest(raw, desc.media_type)
        except ManifestError as e:
            raise ManifestError(f"{self.shown}: {e.message}", hint=e.hint) from None

    # -- layers --------------------------------------------------------------------------

    def filesystem_layers(self) -> tuple[Layer, ...]:
        """The layers as a filesystem is built from them: numbered from 1, each with its
        diff_id.  An artifact (no filesystem) and a config whose diff_ids do not match
        the layers are refused."""
        require_image(self.shown, self.manifest, NO_FILESYSTEM)
        return numbered_layers(self.shown, self.manifest, self.config)

    def read_layers(
        self,
        layers: Sequence[Layer] | None = None,
        *,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> LayerReader:
        """A reader of ``layers`` (default: every layer) in that order, as verified
        streams and tars (use it as a context manager)."""
        return LayerReader(
            self.source,
            self.filesystem_layers() if layers is None else layers,
            remote=self.is_remote,
            store=self.store,
            jobs=self.jobs,
            retry=self.retry,
            progress=progress,
            cancel=cancel,
        )

    def blob(self, desc: Descriptor) -> Iterator[Chunk]:
        """The bytes of a blob of the image (a layer, the config), verified against its
        digest as they are read (see :class:`~derrick.images.feed.Feed`)."""
        layer = Layer(0, desc, None)
        with LayerReader(
            self.source,
            [layer],
            remote=self.is_remote,
            store=self.store,
            jobs=1,
            retry=self.retry,
        ) as reader:
            yield from reader.chunks(layer)


def open_image(
    location: str | Location,
    *,
    client: RegistryClient | None = None,
    store: BlobStore | None = None,
    platform: Platform | str | None = None,
    jobs: int = DEFAULT_JOBS,
    retry: RetryPolicy | None = None,
    closers: Sequence[Callable[[], None]] = (),
) -> Image:
    """The image at ``location`` (a registry reference, ``oci:DIR[:NAME]``,
    ``oci-archive:FILE[:NAME]``, ``docker-archive:FILE[:NAME:TAG]`` or a plain path; see
    :mod:`derrick.images.locations`).  ``client`` reaches a registry; the image closes
    its source and calls ``closers`` when it is closed."""
    loc = parse_location(location) if isinstance(location, str) else location
    source = open_source(loc, client=client, store=store, jobs=jobs)
    shown = str(loc.reference) if loc.reference is not None else loc.text
    if retry is None and client is not None:
        retry = client.transport.retry
    return Image(
        source,
        source_name(loc),
        platform=platform,
        store=store,
        retry=retry,
        jobs=jobs,
        shown=shown,
        closers=[*closers, source.close],
    )
