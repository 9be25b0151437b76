"""Push, pull and copy from tests through the library: each is one :func:`derrick.ops.transfer.copy`
from a source to a sink, as the CLI runs it (:mod:`derrick.cli.copying`), without the CLI.

* :func:`push` -- an OCI layout or archive on disk to a registry reference, every platform of
  an index, the tag taken from the source when the reference has none.
* :func:`pull` -- a registry reference to an OCI layout, OCI archive, docker-archive or a
  binary stream, through a blob cache, this machine's platform unless told.
* :func:`copy` -- a registry reference to another (the whole index unless a platform is named).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from derrick.images.dockerarchive import DockerArchiveSink, open_archive
from derrick.images.layout import LayoutDir
from derrick.images.locations import Location
from derrick.images.model import CopyResult, ImageName, ImageSink, ImageSource, Progress, Selection
from derrick.images.ociarchive import OCIArchiveSink
from derrick.images.open import copy_names
from derrick.images.remote import DEFAULT_CHUNK_SIZE, RegistryRepository
from derrick.manifest import Platform
from derrick.ops import transfer
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore

__all__ = ["copy", "pull", "push"]


@contextlib.contextmanager
def _local(path: Path | str, name: str | None) -> Iterator[ImageSource]:
    if Path(path).is_dir():
        yield LayoutDir(path, name=name)
        return
    with open_archive(path) as archive:
        yield archive


def push(
    client: RegistryClient,
    path: Path | str,
    ref: Reference,
    name: str | None = None,
    *,
    jobs: int = transfer.DEFAULT_JOBS,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> CopyResult:
    """Push the image ``name`` (None: the only one) of the layout or archive ``path``."""
    with _local(path, name) as source:
        dest = Location("registry", str(ref), ref)
        return transfer.copy(
            source,
            RegistryRepository(client, ref, chunk_size=chunk_size),
            name=name,
            selection=Selection(all=True),
            names=copy_names(dest, source, name, str(path)),
            jobs=jobs,
            progress=progress,
            retry=client.transport.retry,
        )


def _selection(platform: Platform | None, all_platforms: bool) -> Selection:
    if platform is not None:
        return Selection(platforms=(platform,))
    return Selection(all=all_platforms)


def pull(
    client: RegistryClient,
    ref: Reference,
    dest: Path | str | BinaryIO,
    *,
    format: str = "oci",
    platform: Platform | None = None,
    all_platforms: bool = False,
    cache: BlobStore | None = None,
    jobs: int = transfer.DEFAULT_JOBS,
) -> CopyResult:
    """Pull ``ref`` into ``dest``: a directory (``format`` oci), an archive file or a stream
    (``format`` oci-archive or docker-archive), through ``cache`` (default: the default
    cache)."""
    store = cache if cache is not None else BlobStore()
    target = str(dest) if isinstance(dest, str | Path) else dest
    sink: ImageSink
    if format == "oci":
        assert isinstance(target, str), "an OCI layout is a directory"
        sink = LayoutDir(target, store=store)
    elif format == "oci-archive":
        sink = OCIArchiveSink(target)
    else:
        sink = DockerArchiveSink(target)
    return transfer.copy(
        RegistryRepository(client, ref),
        sink,
        selection=_selection(platform, all_platforms),
        names=(ImageName(ref.name, ref.tag),),
        jobs=jobs,
        retry=client.transport.retry,
        cache=store,
    )


def copy(
    client: RegistryClient,
    src: Reference,
    dst: Reference,
    *,
    platform: Platform | None = None,
    all_platforms: bool = True,
    jobs: int = transfer.DEFAULT_JOBS,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> CopyResult:
    """Copy ``src`` to ``dst`` (without a tag: ``src``'s), registry to registry."""
    names: tuple[ImageName, ...] | None = None
    if dst.digest is not None:
        names = ()
    elif dst.tag is not None:
        names = (ImageName(dst.name, dst.tag),)
    return transfer.copy(
        RegistryRepository(client, src),
        RegistryRepository(client, dst, chunk_size=chunk_size),
        selection=_selection(platform, all_platforms and platform is None),
        names=names,
        jobs=jobs,
        progress=progress,
        retry=client.transport.retry,
    )
