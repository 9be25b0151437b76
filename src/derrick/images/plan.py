"""The index walk and the platform choice: what a copy will store, before a blob moves.

:func:`plan` resolves each item's name in its source, walks the index it names (nested
indexes at most :data:`MAX_INDEX_DEPTH` deep), chooses platforms with the one matcher
(:func:`~derrick.platform.choose_in_index`), fetches every image manifest it keeps and
each image's config (small, verified through a :class:`~derrick.images.feed.Feed`), and
collects the blobs, each once across all items.

How a :class:`~derrick.images.model.Selection` applies:

* ``Selection()``: from an index, the image for this machine's platform (the entry's top
  is then that image manifest); a single image whatever its platform.
* One platform: from an index, that platform's image; a single image must be for it (its
  config says its os, architecture and variant), else :class:`PlatformNotFoundError`.
* Two or more platforms: from an index, a new index of the same media type listing only
  those images, in the source's order, with every other field kept (annotations too).
  Its bytes, and so its digest, differ from the source index's, unless every entry was
  chosen (then the source index is kept as it is).  A single image must match one.
* ``Selection(all=True)``: the index byte for byte, with everything it lists.

Foreign (non-distributable) layers with ``urls`` are planned as part of their image but
not as blobs to copy: clients fetch them from their URLs.  Images whose config is not an
image config (artifacts) are copied like any other; nothing asks for their diff_ids.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from derrick import mediatypes as mt
from derrick.digest import Digest, Verifier
from derrick.errors import DerrickError, ManifestError
from derrick.images.feed import FileOpener, read_small
from derrick.images.model import (
    ImageName,
    ImageSource,
    Plan,
    PlannedEntry,
    PlannedImage,
    Selection,
)
from derrick.manifest import (
    Descriptor,
    ImageConfig,
    ImageManifest,
    Index,
    Manifest,
    Platform,
    parse_manifest,
)
from derrick.platform import check_platform
from derrick.platform import choose_in_index as choose
from derrick.transport import RetryPolicy

__all__ = [
    "FOREIGN_LAYERS",
    "IMAGE_CONFIGS",
    "MAX_INDEX_DEPTH",
    "LocalBlobs",
    "PlanItem",
    "choose",
    "plan",
]

#: How deep indexes may nest inside an index (the top one is at depth 0).
MAX_INDEX_DEPTH = 4

#: Layers clients fetch from their ``urls``; registries are not asked to store them.
FOREIGN_LAYERS = frozenset(
    {mt.DOCKER_LAYER_FOREIGN, mt.OCI_LAYER_NONDIST, mt.OCI_LAYER_NONDIST_GZIP}
)

#: Config media types of images (others are artifacts, and have no platform).
IMAGE_CONFIGS = frozenset({mt.OCI_CONFIG, mt.DOCKER_CONFIG})


@dataclass(frozen=True)
class PlanItem:
    """One thing to copy: the image ``name`` of ``source`` (None: the source's default).

    ``names`` is what it is called in the sink; None keeps the source's name (its tag),
    ``()`` gives it none (a registry then stores it by digest only).  ``shown`` is how
    the user named the image (``registry.example/app:1.0``, ``./app-oci:v1``), for
    messages about it; None names it by digest and source.
    """

    source: ImageSource
    name: str | None = None
    selection: Selection = field(default_factory=Selection)
    names: tuple[ImageName, ...] | None = None
    shown: str | None = None


#: Where a verified local copy of a blob may be: a file known intact, or None.
LocalBlobs = Callable[[Descriptor], Path | None]


def plan(
    items: Iterable[PlanItem],
    *,
    retry: RetryPolicy | None = None,
    cancel: threading.Event | None = None,
    local: LocalBlobs | None = None,
) -> Plan:
    """The :class:`Plan` of copying ``items`` (see the module docstring).

    ``local`` is asked for a verified local copy of each config before the source is
    (a blob cache, the destination's own blobs); the copy is hashed again as it is read.
    """
    planner = _Planner(retry, cancel, local)
    for item in items:
        planner.add(item)
    return planner.result()


def subset_index(raw: bytes, positions: Sequence[int]) -> bytes:
    """The index ``raw`` listing only the entries at ``positions``, every other field kept."""
    obj = json.loads(raw)
    obj["manifests"] = [obj["manifests"][i] for i in positions]
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _default_names(source: ImageSource, name: str | None) -> tuple[ImageName, ...]:
    n = source.image_name(name)
    return (n,) if n.repository or n.tag else ()


class _Planner:
    def __init__(
        self, retry: RetryPolicy | None, cancel: threading.Event | None, local: LocalBlobs | None
    ) -> None:
        self.retry = retry
        self.cancel = cancel
        self.local = local
        self.entries: list[PlannedEntry] = []
        #: every manifest planned, in insertion order: children before their index
        self.manifests: dict[Digest, tuple[Descriptor, bytes]] = {}
        self.blobs: dict[Digest, Descriptor] = {}
        self._fetched: dict[Digest, tuple[bytes, Manifest]] = {}
        self._configs: dict[Digest, bytes] = {}

    def result(self) -> Plan:
        return Plan(
            entries=tuple(self.entries),
            manifests=tuple(self.manifests.values()),
            blobs=tuple(self.blobs.values()),
        )

    def add(self, item: PlanItem) -> None:
        source = item.source
        names = item.names if item.names is not None else _default_names(source, item.name)
        top = source.resolve(item.name)
        raw, m = self._fetch(source, top)
        top = origin = _typed(top, m)
        selection = item.selection
        if isinstance(m, ImageManifest):
            image = self._image(source, top, raw, m)
            if selection.explicit:
                _check_platform(
                    item.shown or f"image {image.digest} of {source.description}",
                    image,
                    selection.platforms,
                )
            self.entries.append(PlannedEntry(top, names, (image,), None, source, origin=origin))
            return
        what = f"index {top.digest} of {source.description}"
        if selection.all:
            images = self._walk(source, top, raw, m, 0)
            self.entries.append(PlannedEntry(top, names, tuple(images), m, source, origin=origin))
            return
        positions = choose(m, selection.platforms or (Platform.host(),), what)
        if len(selection.platforms) < 2:
            child = m.manifests[positions[0]].with_annotations(None)
            image = self._image(source, child)
            entry = PlannedEntry(
                image.descriptor, names, (image,), None, source, (top, m), origin=origin
            )
            self.entries.append(entry)
            return
        images = [self._image(source, m.manifests[i]) for i in positions]
        if len(positions) < len(m.manifests):
            raw = subset_index(raw, positions)
            m = _parse(raw, top.media_type, f"the new index of {what}")
            top = Descriptor(m.media_type, Digest.of(raw), len(raw))
        self.manifests.setdefault(top.digest, (top, raw))
        entry = PlannedEntry(top, names, tuple(images), _as_index(m), source, origin=origin)
        self.entries.append(entry)

    def _fetch(self, source: ImageSource, desc: Descriptor) -> tuple[bytes, Manifest]:
        got = self._fetched.get(desc.digest)
        if got is None:
            what = f"manifest {desc.digest} of {source.description}"
            raw = source.manifest(desc)
            verifier = Verifier(desc.digest, desc.size, what=what)
            verifier.update(raw)
            verifier.verify()
            got = raw, _parse(raw, desc.media_type, what)
            self._fetched[desc.digest] = got
        return got

    def _walk(
        self, source: ImageSource, desc: Descriptor, raw: bytes, index: Index, depth: int
    ) -> list[PlannedImage]:
        """Plan everything under ``index`` (children first, then it); its images."""
        if depth >= MAX_INDEX_DEPTH:
            raise ManifestError(
                f"index {desc.digest} of {source.description} nests indexes more than "
                f"{MAX_INDEX_DEPTH} deep"
            )
        images: dict[Digest, PlannedImage] = {}
        for child in index.manifests:
            child_raw, m = self._fetch(source, child)
            child = _typed(child, m)
            if isinstance(m, Index):
                for img in self._walk(source, child, child_raw, m, depth + 1):
                    images.setdefault(img.digest, img)
            else:
                images.setdefault(child.digest, self._image(source, child, child_raw, m))
        self.manifests.setdefault(desc.digest, (desc, raw))
        return list(images.values())

    def _image(
        self,
        source: ImageSource,
        desc: Descriptor,
        raw: bytes | None = None,
        m: Manifest | None = None,
    ) -> PlannedImage:
        """Plan one image manifest: its blobs, its config (fetched), then it."""
        if raw is None or m is None:
            raw, m = self._fetch(source, desc)
        if not isinstance(m, ImageManifest):
            raise ManifestError(
                f"index entry {desc.digest} of {source.description} is not an image manifest"
            )
        desc = _typed(desc, m)
        for d in (m.config, *m.layers):
            if d.urls and d.media_type in FOREIGN_LAYERS:
                continue
            self.blobs.setdefault(d.digest, d)
        config = self._configs.get(m.config.digest)
        if config is None:
            config = self._read_config(source, m.config)
            self._configs[m.config.digest] = config
        self.manifests.setdefault(desc.digest, (desc, raw))
        return PlannedImage(desc, m, config)

    def _read_config(self, source: ImageSource, desc: Descriptor) -> bytes:
        """A config, verified: from a local copy when there is one, else from ``source``."""
        path = self.local(desc) if self.local is not None else None
        if path is not None:
            with contextlib.suppress(DerrickError, OSError):  # changed since: the source's
                return read_small(FileOpener(path), desc, retry=self.retry, cancel=self.cancel)
        return read_small(source, desc, retry=self.retry, cancel=self.cancel)


def _parse(raw: bytes, media_type: str, what: str) -> Manifest:
    try:
        return parse_manifest(raw, media_type)
    except ManifestError as e:
        raise ManifestError(f"{what}: {e.message}", hint=e.hint) from None


def _typed(desc: Descriptor, m: Manifest) -> Descriptor:
    """``desc`` with the media type its document has (what a registry is told it is)."""
    if desc.media_type == m.media_type:
        return desc
    return Descriptor(
        m.media_type,
        desc.digest,
        desc.size,
        desc.urls,
        desc.annotations,
        desc.platform,
        desc.artifact_type,
    )


def _as_index(m: Manifest) -> Index:
    if not isinstance(m, Index):  # the subset of an index is an index
        raise ManifestError("a new index did not parse as an index")
    return m


def _check_platform(what: str, image: PlannedImage, wanted: Sequence[Platform]) -> None:
    """Refuse a single image (``what``) that is not for one of the ``wanted`` platforms."""
    config: ImageConfig | None = None
    if image.manifest.is_image:
        try:
            config = ImageConfig.parse(image.config)
        except ManifestError as e:
            raise ManifestError(f"config of {what}: {e.message}") from None
    check_platform(what, image.manifest, config, wanted)
