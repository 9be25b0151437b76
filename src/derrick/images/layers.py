"""An image's layers read as verified streams, and as tar archives.

:class:`LayerReader` hands out the layers of one image in the order a reader applies
them, each as the blob's bytes checked against its digest (a
:class:`~derrick.images.feed.Feed`: every byte hashed, the digest checked before the
last chunk is given out), or opened as a tar (:meth:`LayerReader.tar`): decompressed,
its uncompressed stream checked against the config's diff_id, read by
:class:`~derrick.layout.tarread.TarReader`.

Layers of a registry image go through the blob store when the reader is given one: a
:class:`~derrick.images.pool.ReadAhead` fills the store with the layers in order, ``jobs``
at once and a bounded number ahead of the one being read, and each is read back from
its file, hashed again.  Without a store, and for local sources (layouts, archives),
each layer streams straight from the source when its turn comes, so nothing is written
anywhere.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from derrick.compression import DiffIDVerifier, decompress_chunks
from derrick.digest import Digest
from derrick.errors import DerrickError, ManifestError
from derrick.images.cachefeed import fill, store_errors
from derrick.images.feed import BlobOpener, Feed, FileOpener
from derrick.images.model import Chunk, Progress
from derrick.images.pool import ReadAhead
from derrick.interrupt import Interrupter
from derrick.layout.tarread import TarReader
from derrick.manifest import Descriptor, ImageConfig, ImageManifest
from derrick.store.cache import BlobStore
from derrick.transport import RetryPolicy

__all__ = ["Layer", "LayerReader", "numbered_layers"]


@dataclass(frozen=True)
class Layer:
    """One layer of an image: where it is in the image (``number``, from 1, as people
    count), its descriptor, and the diff_id the config lists for it."""

    number: int
    descriptor: Descriptor
    diff_id: Digest | None

    @property
    def digest(self) -> Digest:
        return self.descriptor.digest

    @property
    def size(self) -> int:
        return self.descriptor.size

    @property
    def media_type(self) -> str:
        return self.descriptor.media_type

    @property
    def label(self) -> str:
        return f"layer {self.number} ({self.digest.short})"


def numbered_layers(shown: str, manifest: ImageManifest, config: ImageConfig) -> tuple[Layer, ...]:
    """The layers of an image, each with its diff_id; a config that lists another number
    of diff_ids than the manifest lists layers is refused."""
    if len(config.diff_ids) != len(manifest.layers):
        raise ManifestError(
            f"{shown}: the image has {len(manifest.layers)} layers but its config lists "
            f"{len(config.diff_ids)} diff_ids",
            hint="the manifest and config do not belong together",
        )
    return tuple(
        Layer(i + 1, d, diff_id)
        for i, (d, diff_id) in enumerate(zip(manifest.layers, config.diff_ids, strict=True))
    )


class _Readable:
    """Chunks as a binary reader (``read`` returns at most what one chunk has left)."""

    def __init__(self, chunks: Iterator[Chunk]) -> None:
        self._chunks = chunks
        self._left = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        while not self._left:
            try:
                self._left = memoryview(next(self._chunks))
            except StopIteration:
                return b""
        n = len(self._left) if size < 0 else min(size, len(self._left))
        out = bytes(self._left[:n])  # chunks may be views of a buffer reused for the next
        self._left = self._left[n:]
        return out

    def readable(self) -> bool:
        return True


class LayerReader:
    """Reads ``layers`` of an image from ``source`` in the order given (see the module
    docstring).  Use as a context manager: leaving it stops what is still being fetched.

    ``remote`` says the source is a registry (whose layers go through ``store`` when there
    is one); ``progress`` hears of the bytes fetched from it.
    """

    def __init__(
        self,
        source: BlobOpener,
        layers: Sequence[Layer],
        *,
        remote: bool,
        store: BlobStore | None = None,
        jobs: int = 4,
        retry: RetryPolicy | None = None,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.source = source
        self.layers = list(layers)
        self.retry = retry
        self.progress = progress if remote else None
        self._owns_cancel = cancel is None
        self.cancel = cancel if cancel is not None else threading.Event()
        #: stops the read-ahead: its first failure sets it, and so does leaving the reader
        #: (the layers already fetched are still read; the failure is raised when the
        #: reader comes to the layer that failed)
        self._ahead_cancel = threading.Event()
        self._store = store if remote else None
        self._jobs = jobs
        self._files: dict[Digest, Path] = {}
        #: each layer blob once, in the order read; how many were taken from the read-ahead
        self._unique = list({layer.digest: layer.descriptor for layer in self.layers}.values())
        self._taken = 0
        self._ahead: ReadAhead[Descriptor, Path] | None = None

    def __enter__(self) -> LayerReader:
        unique = self._unique
        if self.progress is not None:
            self.progress.planned(sum(d.size for d in unique))
        if self._store is not None and unique:
            self._ahead = ReadAhead(
                unique,
                self._fetch,
                jobs=self._jobs,
                window=2 * self._jobs,
                cancel=self._ahead_cancel,
            ).__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owns_cancel:
            self.cancel.set()  # stops any feed still open
        self._ahead_cancel.set()
        if self._ahead is not None:
            self._ahead.__exit__(exc_type, exc, tb)
            self._ahead = None

    # -- fetching ------------------------------------------------------------------------

    def _fetch(self, desc: Descriptor) -> Path:
        """The layer's verified file in the store, filled from the source if need be."""
        store = self._store
        assert store is not None
        with store_errors(store):
            found = store.lookup(desc)
        if found is not None:
            self._finished(desc, advance=True)
            return found
        if self.progress is not None:
            self.progress.blob_started(desc)
        filled = fill(
            store,
            self.source,
            desc,
            retry=self.retry,
            cancel=self._ahead_cancel,
            progress=self._advance(desc),
        )
        self._finished(desc, advance=not filled.stored)
        return filled.path

    def _advance(self, desc: Descriptor) -> Callable[[int], None] | None:
        progress = self.progress
        if progress is None:
            return None
        return lambda n: progress.blob_advanced(desc, n)

    def _finished(self, desc: Descriptor, *, advance: bool) -> None:
        if self.progress is not None:
            if advance:
                self.progress.blob_advanced(desc, desc.size)
            self.progress.blob_finished(desc, "linked" if advance else "copied")

    # -- reading -------------------------------------------------------------------------

    def chunks(self, layer: Layer) -> Iterator[Chunk]:
        """The layer blob's bytes, verified against its digest as they are read."""
        desc = layer.descriptor
        if self._ahead is not None:
            while desc.digest not in self._files:
                if self._taken >= len(self._unique):
                    raise DerrickError(f"{layer.label} is not one of the layers being read")
                self._files[self._unique[self._taken].digest] = self._ahead.take()
                self._taken += 1
            opener: BlobOpener = FileOpener(self._files[desc.digest])  # named by its path
            return Feed(opener, desc, retry=self.retry, cancel=self.cancel).chunks()
        return self._streamed(desc)

    def _streamed(self, desc: Descriptor) -> Iterator[Chunk]:
        if self.progress is not None:
            self.progress.blob_started(desc)
        feed = Feed(
            self.source, desc, retry=self.retry, cancel=self.cancel, progress=self._advance(desc)
        )
        yield from feed.chunks()
        if self.progress is not None:
            self.progress.blob_finished(desc, "copied")

    @contextlib.contextmanager
    def tar(
        self, layer: Layer, *, threaded: bool = True
    ) -> Iterator[tuple[TarReader, DiffIDVerifier]]:
        """The layer as a :class:`TarReader` over its uncompressed stream.

        After the caller has iterated the reader, ``verifier.verify()`` checks the diff_id
        (call ``reader.drain()`` first if iteration stopped early).  With ``threaded`` the
        layer is read and decompressed in a thread of its own, ahead of the reader.
        """
        verifier = DiffIDVerifier(layer.diff_id, what=layer.label)
        chunks: Iterator[bytes] = verifier.wrap(
            decompress_chunks(
                _Readable(self.chunks(layer)),  # type: ignore[arg-type]  # read() is enough
                media_type=layer.media_type,
                what=layer.label,
            )
        )
        if threaded:
            chunks = _prefetch(chunks)
        try:
            yield TarReader(chunks, what=layer.label), verifier
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()


def _prefetch(chunks: Iterable[bytes], depth: int = 4) -> Iterator[bytes]:
    """Run ``chunks`` in a thread, ``depth`` pieces ahead of the consumer.

    Decompression and hashing release the GIL, so on two cores they overlap with tar
    parsing and file writes.  Errors surface in the consumer.
    """
    q: queue.Queue[tuple[bytes | None, BaseException | None]] = queue.Queue(depth)
    stop = threading.Event()
    interrupter = Interrupter()  # a consumer that stops early cuts a stalled read short

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
            with interrupter.active():
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
        interrupter.interrupt()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        t.join()
        close = getattr(chunks, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
