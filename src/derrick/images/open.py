"""Open a :class:`~derrick.images.locations.Location` as an image source or sink.

The one place that knows which class serves which kind of location: a registry
repository (:mod:`derrick.images.remote`), an OCI layout (:mod:`derrick.images.layout`),
an OCI archive (:mod:`derrick.images.ociarchive`) or a docker-archive
(:mod:`derrick.images.dockerarchive`).  An archive read as a source is recognised by its
content whatever prefix named it (a Docker 25+ ``docker save`` is both kinds at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import BinaryIO

from derrick.errors import DerrickError, UsageError
from derrick.images.dockerarchive import DockerArchiveSink, open_archive
from derrick.images.layout import LayoutDir
from derrick.images.locations import Location
from derrick.images.model import ImageName, ImageSink, ImageSource, Selection
from derrick.images.ociarchive import OCIArchiveSink
from derrick.images.remote import DEFAULT_CHUNK_SIZE, RegistryRepository
from derrick.images.tarsource import TarSource
from derrick.manifest import Platform
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore

__all__ = [
    "copy_names",
    "copy_selection",
    "destination_names",
    "open_sink",
    "open_source",
    "source_name",
    "source_tags",
]

DEFAULT_JOBS = 4


def open_source(
    loc: Location,
    *,
    client: RegistryClient | None = None,
    store: BlobStore | None = None,
    jobs: int = DEFAULT_JOBS,
) -> ImageSource:
    """The image source at ``loc`` (``client`` is needed for a registry)."""
    if loc.is_registry:
        assert loc.reference is not None
        return RegistryRepository(_client(client, loc), loc.reference)
    assert loc.path is not None
    if loc.is_stream:
        raise UsageError(
            "an image is read from an archive by seeking, not from a stream",
            hint="save the stream to a file first",
        )
    if loc.kind == "oci":
        return LayoutDir(loc.path, name=loc.name, store=store)
    return open_archive(loc.path, jobs=jobs)


def source_name(loc: Location) -> str | None:
    """The name of the image to take from the source at ``loc`` (None: its default)."""
    return None if loc.is_registry else loc.name


def open_sink(
    loc: Location,
    *,
    client: RegistryClient | None = None,
    store: BlobStore | None = None,
    stdout: BinaryIO | None = None,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    shown: str | None = None,
) -> ImageSink:
    """The image sink at ``loc``.  A stream (``-``) writes to ``stdout``, which the caller
    must give: the library writes only where it is told to.  ``shown`` is how messages
    name a local destination (default: its path)."""
    if loc.is_registry:
        assert loc.reference is not None
        return RegistryRepository(_client(client, loc), loc.reference, chunk_size=chunk_size)
    assert loc.path is not None
    if loc.kind == "oci":
        return LayoutDir(loc.path, store=store, shown=shown)
    dest: str | BinaryIO = loc.path
    if loc.is_stream:
        if stdout is None:
            raise UsageError(f"{loc}: no stream to write to was given")
        dest = stdout
    if loc.kind == "oci-archive":
        return OCIArchiveSink(dest, shown=shown)
    return DockerArchiveSink(dest, shown=shown)  # docker-archive, or a plain existing file


def destination_names(loc: Location) -> tuple[ImageName, ...] | None:
    """What the image is called at ``loc``; None keeps the source's names.

    A registry destination takes its tag (or, named by digest, no name at all); a local
    one its NAME: a plain tag (``oci:DIR:v1``), or a full name whose tag and repository
    are both used (``oci:DIR:registry.example/app:v1``, ``docker-archive:F:app:1.0``;
    ``docker-archive:F:app`` is ``app:latest``).
    """
    if loc.is_registry:
        ref = loc.reference
        assert ref is not None
        if ref.digest is not None:
            return ()
        return (ImageName(ref.name, ref.tag),) if ref.tag else None
    if not loc.name:
        return None
    if "/" not in loc.name and ":" not in loc.name:
        if loc.kind in ("docker-archive", "archive"):
            # a RepoTag needs a repository: NAME alone is NAME:latest, as docker and skopeo
            # read it (a tag alone would be no RepoTag, and the image would load untagged)
            return (ImageName(Reference.parse(loc.name).name, "latest"),)
        return (ImageName(None, loc.name),)
    try:
        ref = Reference.parse(loc.name, default_tag=None)
    except DerrickError:
        raise UsageError(
            f"{loc}: {loc.name!r} is neither a tag nor an image name",
            hint="give a tag (v1) or a name with a tag (registry.example/app:v1)",
        ) from None
    if ref.digest is not None:
        raise UsageError(f"{loc}: an image is named here by a tag, not by a digest")
    return (ImageName(ref.name, ref.tag),)


def source_tags(source: ImageSource, name: str | None) -> tuple[str, ...]:
    """The tags the image ``name`` of ``source`` carries there (a layout's ref names, an
    archive's RepoTags, a registry reference's tag), each once."""
    if isinstance(source, LayoutDir):
        return source.tags(name)
    if isinstance(source, TarSource):
        return source.select(name).tags
    tag = source.image_name(name).tag
    return (tag,) if tag else ()


def copy_names(
    loc: Location, source: ImageSource, name: str | None, shown: str
) -> tuple[ImageName, ...] | None:
    """What a copy of the image ``name`` of ``source`` is called at ``loc``: as
    :func:`destination_names` says, except that a registry destination without tag or
    digest takes the one tag the image has in its source (``shown`` names the source in
    errors): an image without one, or with several, needs the tag named.  None keeps the
    source's names."""
    names = destination_names(loc)
    ref = loc.reference
    if not loc.is_registry or names is not None or ref is None:
        return names
    tags = source_tags(source, name)
    if len(tags) == 1:
        return (ImageName(ref.name, tags[0]),)
    if not tags:
        raise UsageError(
            f"{shown} is not tagged, so {ref} needs a tag to copy it as",
            hint=f"add one, e.g. {ref.name}:latest",
        )
    raise UsageError(
        f"{shown} is tagged {', '.join(tags)}, so {ref} needs the tag to copy it as",
        hint=f"add one, e.g. {ref.name}:{tags[0]}",
    )


def copy_selection(
    platforms: Sequence[Platform | str], all_platforms: bool, *, to_registry: bool
) -> Selection:
    """What a copy takes of an index: the ``platforms`` named (each once); else the index
    whole when ``all_platforms`` or when the destination is a registry (a mirror must not
    lose platforms); else this machine's platform (as a pull does)."""
    if platforms and all_platforms:
        raise UsageError("a copy takes all platforms, or the ones named: not both")
    if platforms:
        wanted = (Platform.parse(p) if isinstance(p, str) else p for p in platforms)
        return Selection(platforms=tuple(dict.fromkeys(wanted)))
    return Selection(all=all_platforms or to_registry)


def _client(client: RegistryClient | None, loc: Location) -> RegistryClient:
    if client is None:
        raise UsageError(f"{loc} is a registry, and no registry client was given")
    return client
