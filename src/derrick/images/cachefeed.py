"""Blobs through a :class:`~derrick.store.cache.BlobStore`: filled once, verified, resumed.

* :func:`fill` puts a blob into the store from a source (resuming its partial file:
  the bytes kept are hashed again, the rest asked for from where they end) and returns
  the verified file.
* :class:`TeeFeed` is a :class:`~derrick.images.model.BlobFeed` for a sink that
  streams: the chunks it gives out go into the store's partial file too, so one read of
  the source fills both; the engine commits the partial file once the feed verified.
  A partial file from an earlier run is used: its bytes are served from the file, not
  asked for again.

In both, a blob whose content does not match its digest is dropped from the partial
file: bytes kept from an earlier run may be the cause, so :func:`fill` then reads the
blob once more from its first byte before it gives up.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from derrick.closing import Closing
from derrick.errors import DerrickError, DigestMismatchError
from derrick.images.feed import BlobOpener, Feed
from derrick.images.model import BlobBody, Chunk
from derrick.manifest import Descriptor
from derrick.store.cache import BlobStore, CacheDiskError, PartialBlob
from derrick.store.files import CHUNK, read_range
from derrick.transport import RetryPolicy

__all__ = ["Filled", "TeeFeed", "fill", "store_errors"]


@contextlib.contextmanager
def store_errors(store: BlobStore) -> Iterator[None]:
    """Turn an ``OSError`` of the store into a :class:`CacheDiskError` naming it (so no
    one takes it for an error of the destination)."""
    try:
        yield
    except OSError as e:
        raise CacheDiskError(store.root, e) from e


class Filled:
    """What :func:`fill` did: the verified file, and the bytes read from the source
    (0 when the store had the blob, or another writer put it there meanwhile)."""

    def __init__(self, path: Path, received: int, stored: bool) -> None:
        self.path = path
        self.received = received
        #: True when this call wrote the blob into the store
        self.stored = stored


def fill(
    store: BlobStore,
    source: BlobOpener,
    desc: Descriptor,
    *,
    retry: RetryPolicy | None = None,
    cancel: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
) -> Filled:
    """Make ``store`` hold blob ``desc``, read from ``source`` when it lacks it.

    Waits for another writer of the blob (process or thread) and takes its result.
    Raises :class:`CacheDiskError` when the store cannot be written (what was written
    is kept to resume), the source's errors, and :class:`DigestMismatchError` (nothing
    kept).
    """
    while True:
        with store_errors(store):
            found = store.lookup(desc)
            if found is not None:
                return Filled(found, 0, False)
            partial = store.reserve(desc)
        if partial is None:
            continue  # written meanwhile (looked up again: it may be damaged since)
        with partial:
            feed = Feed(source, desc, retry=retry, cancel=cancel, progress=progress)
            _write(partial, feed)
            with store_errors(store):
                return Filled(partial.commit(), feed.received, True)


def _write(partial: PartialBlob, feed: Feed) -> None:
    """Fill ``partial`` from ``feed``: after the bytes it has, else (when they turn out
    wrong) from the first byte.  Only errors of the store become a :class:`CacheDiskError`
    (the source's are raised as they are)."""
    have = partial.have
    try:
        for chunk in feed.chunks(have, partial.prefix() if have else None):
            with store_errors(partial.store):
                partial.write(chunk)
        return
    except DigestMismatchError:
        if not have:
            partial.discard()
            raise
    with store_errors(partial.store):
        partial.truncate(0)  # the kept bytes may be what was wrong
    try:
        for chunk in feed.chunks(0):
            with store_errors(partial.store):
                partial.write(chunk)
    except DigestMismatchError:
        partial.discard()
        raise


class _KeptBody(Closing):
    """A body that serves the partial file's bytes first, then the source's.

    The source is opened here, where the partial file's bytes end (errors opening it are
    not a body breaking off, and are not asked again), unless they hold the rest."""

    def __init__(self, tee: TeeFeed, desc: Descriptor, offset: int) -> None:
        self.offset = offset
        self._tee = tee
        self._desc = desc
        self._kept = max(min(tee.partial.have, desc.size), offset)  # served from the file
        self._body: BlobBody | None = None
        if self._kept < desc.size:
            self._body = tee.source.open_blob(desc, self._kept)

    def chunks(self) -> Iterator[Chunk]:
        tee = self._tee
        pos = self.offset
        if pos < self._kept:
            for piece in read_range(tee.partial.fd, pos, self._kept, CHUNK):
                pos += len(piece)
                yield piece
            if pos < self._kept:
                return  # the file ended early: the feed finds the body short
        body = self._body
        if body is None:
            return
        skip = pos - body.offset  # a source that started before ``pos``: drop that much
        if skip < 0:
            raise DerrickError(
                f"blob {self._desc.digest} of {tee.source.description}: the source "
                f"started at byte {body.offset}, not {pos} as asked"
            )
        for chunk in body.chunks():
            tee.received += len(chunk)
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            yield chunk[skip:] if skip else chunk
            skip = 0

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None


class TeeFeed:
    """A feed whose chunks also go into ``partial``, the store's partial file of the blob.

    Bytes the partial file holds already are served from it (and hashed like the rest);
    a sink that resumes with a prefix of its own has that prefix written over the
    partial file's first bytes, so what the file holds is always what was hashed.  After
    a pass that verified (:attr:`verified`) the file holds the whole blob and may be
    committed; after a mismatch its bytes are dropped.
    """

    def __init__(
        self,
        source: BlobOpener,
        desc: Descriptor,
        partial: PartialBlob,
        *,
        retry: RetryPolicy | None = None,
        cancel: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.desc = desc
        self.local: Path | None = None
        self.source = source
        self.partial = partial
        self.description = source.description
        #: bytes read from the source (not those served from the partial file)
        self.received = 0
        self._feed = Feed(self, desc, retry=retry, cancel=cancel, progress=progress)

    @property
    def verified(self) -> bool:
        return self._feed.verified

    def open_blob(self, desc: Descriptor, offset: int = 0) -> _KeptBody:
        return _KeptBody(self, desc, offset)

    def chunks(self, start: int = 0, prefix: Iterator[Chunk] | None = None) -> Iterator[Chunk]:
        if not 0 <= start <= self.desc.size:
            raise DerrickError(f"blob {self.desc.digest}: cannot start at byte {start}")
        return self._pass(start, prefix)

    def _pass(self, start: int, prefix: Iterator[Chunk] | None) -> Iterator[Chunk]:
        partial = self.partial
        if prefix is not None and start:
            inner = self._feed.chunks(start, self._kept(prefix, start))
            pos = start
        else:
            inner = self._feed.chunks(0)  # every byte passes here, to be written
            pos = 0
        try:
            for chunk in inner:
                end = pos + len(chunk)
                if end > partial.have:  # new bytes: into the partial file too
                    skip = max(partial.have - pos, 0)
                    with store_errors(partial.store):
                        partial.write_at(pos + skip, chunk[skip:] if skip else chunk)
                if end > start:
                    yield chunk[start - pos :] if pos < start else chunk
                pos = end
        except DigestMismatchError:
            partial.truncate(0)  # which bytes were wrong is not known: none are kept
            raise

    def _kept(self, prefix: Iterator[Chunk], start: int) -> Iterator[Chunk]:
        """The sink's own first ``start`` bytes, written over the partial file's."""
        pos = 0
        try:
            for chunk in prefix:
                piece = chunk[: start - pos]
                with store_errors(self.partial.store):
                    self.partial.write_at(pos, piece)
                pos += len(piece)
                yield piece
                if pos >= start:
                    return
        finally:
            close = getattr(prefix, "close", None)
            if close is not None:
                close()
