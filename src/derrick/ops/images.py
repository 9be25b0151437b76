"""Open an image's layers for reading, from a registry or a local layout or archive.

:func:`open_image` takes a registry reference or a local OCI layout (``DIR`` or
``DIR:TAG``), OCI archive or docker-archive and gives an :class:`ImageLayers`:
the config and each layer as a blob to open.  Layers from a registry download
in parallel into the shared :class:`~derrick.cache.BlobCache` while earlier
ones are already being read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

from derrick import mediatypes as mt
from derrick.cache import BlobCache
from derrick.compression import DiffIDVerifier, decompress_chunks
from derrick.digest import Digest
from derrick.errors import ManifestError, UsageError
from derrick.manifest import (
    Descriptor,
    ImageConfig,
    ImageManifest,
    Index,
    Platform,
    parse_manifest,
)

if TYPE_CHECKING:
    from derrick.images.model import Progress
    from derrick.reference import Reference
    from derrick.registry import RegistryClient


from derrick.layout.oci import LAYOUT_FILE
from derrick.layout.tarread import TarReader

log = logging.getLogger("derrick.images")

ClientFactory = Callable[["Reference"], "RegistryClient"]


@dataclass(frozen=True)
class LayerBlob:
    """One layer of an image: how to open its (compressed) blob, and its diff_id."""

    index: int
    media_type: str | None
    digest: Digest | None  # None for a legacy docker-archive layer file
    size: int | None
    diff_id: Digest | None
    opener: Callable[[], BinaryIO] = field(repr=False, compare=False)

    def open(self) -> BinaryIO:
        return self.opener()

    @property
    def label(self) -> str:
        short = f" ({self.digest.short})" if self.digest else ""
        return f"layer {self.index + 1}{short}"


class ImageLayers:
    """An image to read layer by layer; close it (or use ``with``) when done."""

    def __init__(
        self,
        name: str,
        config: ImageConfig,
        layers: Sequence[LayerBlob],
        *,
        manifest: ImageManifest | None = None,
        digest: Digest | None = None,
        closers: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.name = name
        self.config = config
        self.layers = tuple(layers)
        self.manifest = manifest
        self.digest = digest
        self._closers = list(closers)

    def __enter__(self) -> ImageLayers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        while self._closers:
            with contextlib.suppress(Exception):
                self._closers.pop()()


_LOCAL_PREFIXES = ("oci:", "oci-archive:", "docker-archive:")
_NO_FILESYSTEM = "it has no filesystem to read"


def split_path_name(text: str) -> tuple[str, str] | None:
    """``(path, name)`` for ``PATH:NAME`` where ``PATH`` exists, else None.

    The split is at the last ``:`` that leaves an existing path before it, so a
    name may hold colons itself: a full image name (``host:5000/team/app:v1``)
    or a digest (``sha256:…``).
    """
    pos = len(text)
    while (pos := text.rfind(":", 0, pos)) > 0:
        if os.path.exists(text[:pos]):
            return text[:pos], text[pos + 1 :]
    return None


def _split_local(target: str) -> tuple[Path, str | None] | None:
    """``(path, name)`` if ``target`` names a local image source, else None."""
    for prefix in _LOCAL_PREFIXES:
        if target.startswith(prefix):
            rest = target[len(prefix) :]
            if os.path.exists(rest):
                return Path(rest), None
            found = split_path_name(rest)
            if found is not None:
                return Path(found[0]), found[1] or None
            path, sep, name = rest.rpartition(":")
            if sep and path:
                return Path(path), name or None
            return Path(rest), None
    if target.startswith("docker://"):
        return None
    if os.path.exists(target):
        return Path(target), None
    found = split_path_name(target)
    if found is None:
        return None
    path, name = found
    # host:port/repo is a registry reference even beside a directory called host; a full
    # image name picks from a path only when that is an OCI layout or an archive file
    is_source = os.path.isfile(path) or os.path.exists(os.path.join(path, LAYOUT_FILE))
    if "/" in name and not is_source:
        return None
    return Path(path), name or None


def _check_diff_ids(name: str, config: ImageConfig, count: int) -> None:
    if len(config.diff_ids) != count:
        raise ManifestError(
            f"{name}: the image has {count} layers but its config lists "
            f"{len(config.diff_ids)} diff_ids",
            hint="the manifest and config do not belong together",
        )


def _parse_config(raw: bytes, name: str) -> ImageConfig:
    try:
        return ImageConfig.parse(raw)
    except ManifestError as e:
        raise ManifestError(f"config of {name}: {e.message}") from None


def open_image(
    target: str,
    *,
    client_factory: ClientFactory | None = None,
    platform: Platform | None = None,
    cache: BlobCache | None = None,
    jobs: int = 4,
    progress: Progress | None = None,
) -> ImageLayers:
    """Open a registry reference or a local image source for reading its layers.

    A local source is an existing path: an OCI layout directory, OCI archive
    or docker-archive, optionally followed by ``:NAME`` (a tag in the layout's
    index or a docker-archive RepoTag).  ``oci:``, ``oci-archive:`` and
    ``docker-archive:`` prefixes force a local source, ``docker://`` a
    registry.  ``client_factory`` makes the registry client (which the
    returned object then owns and closes).
    """
    local = _split_local(target)
    if local is not None:
        return _open_local(local[0], local[1], platform)
    if client_factory is None:
        raise UsageError(f"{target} is not a local image and no registry client is available")
    from derrick.reference import Reference

    ref = Reference.parse(target.removeprefix("docker://"))
    client = client_factory(ref)
    try:
        return _open_remote(client, ref, platform, cache or BlobCache(), jobs, progress)
    except BaseException:
        client.close()
        raise


def _open_remote(
    client: RegistryClient,
    ref: Reference,
    platform: Platform | None,
    cache: BlobCache,
    jobs: int,
    progress: Progress | None,
) -> ImageLayers:
    from derrick.ops.resolve import resolve_image, resolved_config
    from derrick.platform import require_image

    img = resolve_image(client, ref, platform)
    require_image(str(ref), img.manifest, _NO_FILESYSTEM)
    config = resolved_config(client, img)
    _check_diff_ids(str(ref), config, len(img.manifest.layers))
    if progress is not None:
        progress.planned(sum(d.size for d in img.manifest.layers))
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="derrick-layers")
    cancelled = threading.Event()
    futures: dict[Digest, Future[Path]] = {}

    def fetch(desc: Descriptor) -> Path:
        if progress is not None:
            progress.blob_started(desc)

        def advance(n: int) -> None:
            if progress is not None:
                progress.blob_advanced(desc, n)

        path = cache.fetch(client, ref, desc, progress=advance, cancelled=cancelled)
        if progress is not None:
            progress.blob_finished(desc, "copied")
        return path

    for desc in img.manifest.layers:
        if desc.digest not in futures:
            futures[desc.digest] = pool.submit(fetch, desc)

    def opener(digest: Digest) -> Callable[[], BinaryIO]:
        return lambda: open(futures[digest].result(), "rb")

    layers = [
        LayerBlob(i, d.media_type, d.digest, d.size, config.diff_ids[i], opener(d.digest))
        for i, d in enumerate(img.manifest.layers)
    ]

    def shutdown() -> None:
        cancelled.set()
        pool.shutdown(wait=True, cancel_futures=True)

    return ImageLayers(
        str(ref),
        config,
        layers,
        manifest=img.manifest,
        digest=img.digest,
        closers=[client.close, shutdown],
    )


def _open_local(path: Path, name: str | None, platform: Platform | None) -> ImageLayers:
    from derrick.layout.reader import open_image_source

    src = open_image_source(path)
    try:
        return _read_local(src, path, name, platform)
    except BaseException:
        src.close()
        raise


def _read_local(
    src: object, path: Path, name: str | None, platform: Platform | None
) -> ImageLayers:
    from derrick.layout.reader import ImageSource
    from derrick.platform import check_config_platform, check_platform, require_image

    assert isinstance(src, ImageSource)
    shown = f"{path}:{name}" if name else str(path)
    desc = src.resolve(name)
    if desc is None:  # a docker-archive without OCI manifests
        entry = src.docker_image(name)
        config = _parse_config(src.read_file(entry.config_path), shown)
        check_config_platform(shown, config, platform)
        _check_diff_ids(shown, config, len(entry.layer_paths))

        def file_opener(p: str) -> Callable[[], BinaryIO]:
            return lambda: src.open_file(p)

        layers = [
            LayerBlob(i, None, None, src.file_size(p), config.diff_ids[i], file_opener(p))
            for i, p in enumerate(entry.layer_paths)
        ]
        return ImageLayers(shown, config, layers, closers=[src.close])

    def parse(d: Descriptor) -> ImageManifest | Index:
        try:
            return parse_manifest(src.read_blob(d.digest), d.media_type)
        except ManifestError as e:  # say where the broken manifest is
            raise ManifestError(f"{shown}: manifest {d.digest}: {e.message}", hint=e.hint) from None

    from_index = False
    for _ in range(3):
        if not mt.is_index(desc.media_type):
            break
        parsed = parse(desc)
        if not isinstance(parsed, Index):
            break
        desc = parsed.select(platform or Platform.host())
        from_index = True
    manifest = parse(desc)
    if not isinstance(manifest, ImageManifest):
        raise ManifestError(f"{shown}: {desc.digest} is not an image manifest")
    require_image(shown, manifest, _NO_FILESYSTEM)
    config = _parse_config(src.read_blob(manifest.config.digest), shown)
    if not from_index:
        check_platform(shown, manifest, config, platform)
    _check_diff_ids(shown, config, len(manifest.layers))

    def blob_opener(digest: Digest) -> Callable[[], BinaryIO]:
        return lambda: src.open_blob(digest)

    layers = [
        LayerBlob(i, d.media_type, d.digest, d.size, config.diff_ids[i], blob_opener(d.digest))
        for i, d in enumerate(manifest.layers)
    ]
    return ImageLayers(
        shown, config, layers, manifest=manifest, digest=desc.digest, closers=[src.close]
    )


def _prefetch(chunks: Iterator[bytes], depth: int = 4) -> Iterator[bytes]:
    """Run ``chunks`` in a thread, ``depth`` pieces ahead of the consumer.

    Decompression and hashing release the GIL, so on two cores they overlap
    with tar parsing and file writes.  Errors surface in the consumer.
    """
    q: queue.Queue[tuple[bytes | None, BaseException | None]] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: tuple[bytes | None, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put((chunk, None)):
                    return
            put((None, None))
        except BaseException as e:  # handed to the consumer
            put((None, e))

    t = threading.Thread(target=produce, name="derrick-inflate", daemon=True)
    t.start()
    try:
        while True:
            chunk, err = q.get()
            if err is not None:
                raise err
            if chunk is None:
                return
            yield chunk
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        t.join()
        close = getattr(chunks, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


@contextlib.contextmanager
def layer_stream(
    layer: LayerBlob, *, threaded: bool = True
) -> Iterator[tuple[TarReader, DiffIDVerifier]]:
    """Open ``layer`` as a :class:`TarReader` over its verified, uncompressed stream.

    After the caller has iterated the reader, ``verifier.verify()`` checks the diff_id
    (call ``reader.drain()`` first if iteration stopped early).
    """
    verifier = DiffIDVerifier(layer.diff_id, what=layer.label)
    with layer.open() as f:
        chunks = verifier.wrap(decompress_chunks(f, media_type=layer.media_type, what=layer.label))
        if threaded:
            chunks = _prefetch(chunks)
        try:
            yield TarReader(chunks, what=layer.label), verifier
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()


def is_local(target: str) -> bool:
    """Whether :func:`open_image` reads ``target`` from a local path (not a registry)."""
    return _split_local(target) is not None
