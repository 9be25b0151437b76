"""The Python API: :class:`Client` and :class:`Repository`, which take strings wherever a
reference or a location goes (the one-call functions :func:`~derrick.shortcuts.open`,
:func:`~derrick.shortcuts.copy`, :func:`~derrick.shortcuts.unpack` and
:func:`~derrick.shortcuts.sync` are built on them).

A location is what the command line takes (see :mod:`derrick.images.locations`): a
registry reference (``registry.example/team/app:1.0``, ``docker://…``), ``oci:DIR[:TAG]``,
``oci-archive:FILE[:TAG]``, ``docker-archive:FILE[:NAME:TAG]``, or a plain path where that
is unambiguous.  An image is read through the lazy :class:`~derrick.images.view.Image`
view; :func:`copy` is the one engine (:func:`derrick.images.engine.copy`), which pulls,
pushes and copies.  The library writes only where it is told to, and keeps blobs in a
cache only when given one (``cache=``).  Every error is a
:class:`~derrick.errors.DerrickError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from derrick.auth.credentials import Credential, CredentialStore
from derrick.closing import Closing
from derrick.digest import Digest
from derrick.errors import UsageError
from derrick.images.locations import Location, parse_location
from derrick.images.model import CopyResult, ImageSource, Progress, Selection
from derrick.images.open import DEFAULT_JOBS, copy_names, copy_selection, open_sink, open_source
from derrick.images.open import source_name as name_in
from derrick.images.remote import RegistryRepository
from derrick.images.view import Image, open_image
from derrick.manifest import ImageManifest, Index, Platform
from derrick.ops import transfer
from derrick.reference import Reference, bare_registry, validate_tag
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore

if TYPE_CHECKING:
    pass

__all__ = ["Client", "Repository"]

#: Where credentials come from: a store, a lookup by registry, or None for the usual
#: sources (``DOCKER_AUTH_CONFIG``, Docker's ``config.json`` and its credential helpers).
Credentials = CredentialStore | Callable[[str], Credential | None] | None
#: Platforms as a copy takes them: one, several, or None for the default.
Platforms = Platform | str | Sequence[Platform | str] | None


class Client(Closing):
    """A long-lived client for registries: connections, tokens and the scheme each
    registry speaks are kept across calls.  Use as a context manager, or :meth:`close`.

    ``insecure`` allows plain http and unverified TLS for every registry,
    ``insecure_registries`` for those named; ``ca_cert`` is a PEM file of CAs to trust;
    ``cache`` is a blob cache (a directory or a :class:`~derrick.store.cache.BlobStore`)
    that layers read from registries and copies to local destinations go through (none
    by default: nothing is kept).
    """

    def __init__(
        self,
        *,
        credentials: Credentials = None,
        insecure: bool = False,
        insecure_registries: Sequence[str] = (),
        ca_cert: str | Path | None = None,
        certs_dir: str | Path | None = "/etc/docker/certs.d",
        cache: str | Path | BlobStore | None = None,
        timeout: float = 30.0,
        retries: int = 3,
    ) -> None:
        self.registry = RegistryClient(
            credentials=credentials,
            insecure=insecure,
            insecure_registries=insecure_registries,
            ca_cert=Path(ca_cert) if ca_cert is not None else None,
            certs_dir=Path(certs_dir) if certs_dir is not None else None,
            timeout=timeout,
            retries=retries,
        )
        self.cache = _store(cache)
        self._own_cache = not isinstance(cache, BlobStore)
        self._closed = False

    def __repr__(self) -> str:
        return f"Client(cache={self.cache!r})"

    def close(self) -> None:
        """Close the connections (and the cache the client opened); using the client, or
        an image or repository it gave, afterwards raises :class:`UsageError`."""
        self._closed = True
        self.registry.close()
        if self.cache is not None and self._own_cache:
            self.cache.close()

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(
                "the derrick.Client is closed: it was used after close() (or after its with block)",
                hint="open a new client",
            )

    def repository(self, name: str | Reference) -> Repository:
        """The repository ``name`` (``registry.example/team/app``; ``alpine`` is Docker
        Hub's ``docker.io/library/alpine``)."""
        self._check_open()
        _check_type("the repository", name, str, Reference)
        if isinstance(name, str) and bare_registry(name) is not None:
            raise UsageError(
                f"{name} is a registry (host:port), not a repository",
                hint=f"give a repository of it, {name}/REPOSITORY",
            )
        ref = Reference.parse(name, default_tag=None) if isinstance(name, str) else name
        if ref.tag is not None or ref.digest is not None:
            raise UsageError(
                f"{name} names an image, not a repository",
                hint=f"give the repository ({ref.name}) and ask it for the image",
            )
        return Repository(self, ref)

    def open(self, location: str | Location, *, platform: Platform | str | None = None) -> Image:
        """The image at ``location``, for ``platform`` (None: this machine's, from an
        index; a single image whatever its platform)."""
        return self._open(location, platform)

    def _open(
        self,
        location: str | Location,
        platform: Platform | str | None,
        closers: Sequence[Callable[[], None]] = (),
    ) -> Image:
        """:meth:`open`; ``closers`` are called when the image is closed."""
        self._check_open()
        return open_image(
            location,
            client=self.registry,
            store=self.cache,
            platform=platform,
            retry=self.registry.transport.retry,
            closers=closers,
        )

    def copy(
        self,
        source: str | Location | Image,
        destination: str | Location,
        *,
        platform: Platforms = None,
        all_platforms: bool = False,
        jobs: int = DEFAULT_JOBS,
        progress: Progress | None = None,
    ) -> CopyResult:
        """Copy ``source`` (a location, or an :class:`Image` opened before) to
        ``destination``; see :func:`copy`."""
        self._check_open()
        _check_jobs(jobs)
        dst = _location(destination, destination=True)
        with contextlib.ExitStack() as stack:
            src, name, selection = self._source(stack, source, platform, all_platforms, dst)
            names = copy_names(dst, src, name, str(source))
            sink = open_sink(dst, client=self.registry, store=self.cache)
            return transfer.copy(
                src,
                sink,
                name=name,
                selection=selection,
                names=names,
                jobs=jobs,
                progress=progress,
                retry=self.registry.transport.retry,
                cache=self.cache,
            )

    def _source(
        self,
        stack: contextlib.ExitStack,
        source: str | Location | Image,
        platform: Platforms,
        all_platforms: bool,
        dst: Location,
    ) -> tuple[ImageSource, str | None, Selection]:
        """The source, the name of the image in it, and what to take of an index."""
        if isinstance(source, Image):
            if platform is not None or all_platforms:
                raise UsageError(
                    f"{source} is one platform's image: choose the platform when opening it"
                )
            return source.source, source.name, source.selection
        loc = _location(source)
        opened = open_source(loc, client=self.registry, store=self.cache)
        stack.callback(opened.close)
        wanted = _platforms(platform)
        selection = copy_selection(wanted, all_platforms, to_registry=dst.is_registry)
        return opened, name_in(loc), selection


class Repository:
    """A repository of a registry, reached through ``client``."""

    def __init__(self, client: Client, reference: Reference) -> None:
        self.client = client
        self.reference = reference

    @property
    def name(self) -> str:
        """The full name, e.g. ``registry.example/team/app``."""
        return self.reference.name

    def __repr__(self) -> str:
        return f"Repository({self.name!r})"

    def __str__(self) -> str:
        return self.name

    def _ref(self, tag: str) -> Reference:
        """The reference of a tag, or of a digest (``sha256:…``)."""
        if ":" in tag:
            return self.reference.with_digest(Digest.parse(tag))
        return self.reference.with_tag(validate_tag(tag))

    def tags(self) -> list[str]:
        """Every tag of the repository."""
        return self.client.registry.list_tags(self.reference)

    def image(self, tag: str = "latest", *, platform: Platform | str | None = None) -> Image:
        """The image ``tag`` (a tag or a digest) names, for ``platform`` (None: this
        machine's, from an index): a lazy view, read when first asked something."""
        ref = self._ref(tag)
        registry = self.client.registry
        return Image(
            RegistryRepository(registry, ref),
            platform=platform,
            store=self.client.cache,
            retry=registry.transport.retry,
            shown=str(ref),
        )

    def manifest(self, tag: str = "latest") -> ImageManifest | Index:
        """The manifest or index ``tag`` (a tag or a digest) names, verified; its bytes
        as served are ``.raw``."""
        return self.client.registry.get_manifest(self._ref(tag)).manifest

    def delete(self, tag: str) -> Digest:
        """Delete the manifest ``tag`` (a tag or a digest) names, and with it every tag on
        it; its digest."""
        ref = self._ref(tag)
        registry = self.client.registry
        if ref.digest is None:
            ref = ref.with_digest(registry.head_manifest(ref).descriptor.digest)
        registry.delete_manifest(ref)
        assert ref.digest is not None
        return ref.digest


# -- the functions -----------------------------------------------------------------------------


def _store(cache: str | Path | BlobStore | None) -> BlobStore | None:
    """A blob store: the one given, or the directory named (``~`` expanded)."""
    if isinstance(cache, BlobStore | None):
        return cache
    return BlobStore(Path(cache).expanduser())


def _location(text: str | Location, *, destination: bool = False) -> Location:
    _check_type("a destination" if destination else "a source", text, str, Location)
    return parse_location(text, destination=destination) if isinstance(text, str) else text


def _check_type(what: str, value: object, *types: type) -> None:
    """Refuse ``value`` unless it is of one of ``types`` (a :class:`UsageError`, as for
    any other argument that cannot work)."""
    if not isinstance(value, types):
        wanted = " or ".join("a string" if t is str else f"a {t.__name__}" for t in types)
        raise UsageError(f"{what} must be {wanted}, not {type(value).__name__} {value!r}")


def _platforms(platform: Platforms) -> list[Platform | str]:
    """The platforms a copy is asked for, as a list (each a Platform or a string)."""
    if platform is None:
        return []
    wanted = [platform] if isinstance(platform, Platform | str) else platform
    if not isinstance(wanted, Sequence):
        wanted = [wanted]
    for p in wanted:
        _check_type("a platform", p, str, Platform)
    return list(wanted)


def _check_jobs(jobs: int) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"jobs must be a whole number of 1 or more, not {jobs!r}")
