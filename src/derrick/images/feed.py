"""The one verified, resumable blob stream: :class:`Feed` implements
:class:`~derrick.images.model.BlobFeed` over :meth:`ImageSource.open_blob`.

Every byte that passes is hashed; the digest and size are checked before the last chunk
is given out, so a sink that commits after the last chunk never commits wrong content.
A body that breaks off (:class:`~derrick.errors.TransportError` while it streams) is
asked for again from where it stopped, up to the retry limit, with the backoff of a
:class:`~derrick.transport.RetryPolicy`; a source that cannot start at that offset
starts at 0, and the bytes already given out are then hashed again but not given out
twice.  Content that does not match its digest is never retried.  A cancel event is
checked between chunks, once the bytes that came have been given out, and before the
last bytes of the blob go out (so a cancelled copy never completes a blob), and during a
backoff: the stream then raises :class:`~derrick.errors.Cancelled`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from derrick.closing import Closing
from derrick.digest import Digest, Verifier
from derrick.errors import (
    Cancelled,
    DerrickError,
    DigestMismatchError,
    ManifestError,
    TransportError,
)
from derrick.images.model import BlobBody, Chunk
from derrick.manifest import MAX_MANIFEST_SIZE, Descriptor
from derrick.store.files import CHUNK, read_range
from derrick.transport import RetryPolicy

__all__ = ["BlobOpener", "BytesBody", "Feed", "FileBody", "FileOpener", "read_small"]


class BlobOpener(Protocol):
    """What a feed reads from: the blob-reading half of an :class:`ImageSource`."""

    @property
    def description(self) -> str: ...

    def open_blob(self, desc: Descriptor, offset: int = 0) -> BlobBody: ...


class _SourceVerifier(Verifier):
    """A blob's :class:`Verifier` whose errors say where the bytes came from:
    ``blob sha256:… does not match its content (sha256:…), read from SOURCE``."""

    def __init__(self, digest: Digest, size: int, source: str) -> None:
        super().__init__(digest, size, what="blob")
        self.source = source

    def _from(self, e: DigestMismatchError) -> DigestMismatchError:
        return DigestMismatchError(f"{e.message}, read from {self.source}", hint=e.hint)

    def update(self, data: bytes | memoryview) -> None:
        try:
            super().update(data)
        except DigestMismatchError as e:
            raise self._from(e) from None

    def verify(self) -> None:
        try:
            super().verify()
        except DigestMismatchError as e:
            raise self._from(e) from None


class Feed:
    """One blob as the engine hands it to a sink (see :class:`BlobFeed`).

    ``progress`` is told the bytes done as they are hashed (a negative count when a new
    pass or a restart from the first byte goes back).  :attr:`received` counts the bytes
    read from the source over every pass; :attr:`verified` is True once a pass hashed
    the whole blob and it matched (checked before its last chunk is given out, so a
    consumer that stops after taking exactly the blob's size needs nothing more).
    """

    def __init__(
        self,
        source: BlobOpener,
        desc: Descriptor,
        *,
        retry: RetryPolicy | None = None,
        cancel: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
        local: Path | None = None,
    ) -> None:
        self.source = source
        self.desc = desc
        self.local = local
        self.received = 0
        self.verified = False
        self._retry = retry or RetryPolicy()
        self._cancel = cancel
        self._progress = progress
        self._done = 0  # bytes reported to ``progress`` and not taken back

    def __repr__(self) -> str:
        return f"Feed({self.desc.digest}, {self.source.description})"

    @property
    def what(self) -> str:
        return f"blob {self.desc.digest} of {self.source.description}"

    def chunks(self, start: int = 0, prefix: Iterator[Chunk] | None = None) -> Iterator[Chunk]:
        """The blob's bytes from ``start`` on (see :meth:`BlobFeed.chunks`).

        Each call is a new pass over the blob, hashed from its first byte.  ``prefix``
        must yield (at least) the ``start`` bytes before ``start``; when it ends early
        :class:`DigestMismatchError` is raised.  A mismatch at the end of a pass that
        used a prefix may be the prefix's fault: the sink may ask again from 0.
        """
        if not 0 <= start <= self.desc.size:
            raise DerrickError(f"{self.what}: cannot start at byte {start} of {self.desc.size}")
        return self._pass(start, prefix)

    # -- one pass ------------------------------------------------------------------------

    def _report(self, nbytes: int) -> None:
        if nbytes:
            self._done += nbytes
            if self._progress is not None:
                self._progress(nbytes)

    def _check_cancel(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled(f"{self.what}: cancelled")

    def _pass(self, start: int, prefix: Iterator[Chunk] | None) -> Iterator[Chunk]:
        size = self.desc.size
        verifier = _SourceVerifier(self.desc.digest, size, self.source.description)
        self.verified = False
        self._report(-self._done)
        pos = 0  # bytes hashed
        if prefix is not None and start:
            pos = self._hash_prefix(verifier, prefix, start)
        given = start  # the next byte to give out
        failures = 0
        while pos < size:
            self._check_cancel()
            body = self.source.open_blob(self.desc, pos)  # errors here are not retried
            with body:
                if body.offset != pos:
                    if body.offset != 0:  # neither where asked nor the start
                        raise DerrickError(
                            f"{self.what}: the source started at byte {body.offset}, "
                            f"not {pos} as asked"
                        )
                    verifier.reset()  # it ignored the offset: hash from the first byte
                    self._report(-pos)
                    pos = 0
                try:
                    for chunk in body.chunks():
                        n = len(chunk)
                        if n:
                            self.received += n
                            verifier.update(chunk)
                            end = pos + n
                            if end == size:
                                # a cancelled copy does not finish a blob (a sink would
                                # commit it): the last bytes stay back, the rest went out
                                self._check_cancel()
                                verifier.verify()  # before the last bytes go out
                                self.verified = True
                            piece = chunk if pos >= given else chunk[given - pos :]
                            pos = end
                            self._report(n)
                            if end > given:
                                given = end
                                yield piece
                        # after the bytes that came were given out: a sink keeps them
                        self._check_cancel()
                except TransportError:
                    failures += 1
                    if failures > self._retry.retries:
                        raise
                    self._backoff(failures - 1)
                    continue
            break  # the body ended
        verifier.verify()  # raises when it ended short
        self.verified = True

    def _hash_prefix(self, verifier: Verifier, prefix: Iterator[Chunk], start: int) -> int:
        pos = 0
        try:
            for chunk in prefix:
                self._check_cancel()
                piece = chunk[: start - pos]
                verifier.update(piece)
                pos += len(piece)
                self._report(len(piece))
                if pos == start:
                    break
        finally:
            close = getattr(prefix, "close", None)
            if close is not None:
                close()
        if pos < start:
            raise DigestMismatchError(
                f"{self.what}: the bytes kept end after {pos} of the {start} said to be there",
                hint="the partial copy changed; it is written again from the first byte",
            )
        if pos == self.desc.size:
            verifier.verify()
        return pos

    def _backoff(self, attempt: int) -> None:
        delay = self._retry.delay(attempt)
        if self._cancel is not None:
            if self._cancel.wait(delay):
                self._check_cancel()
        elif delay > 0:
            time.sleep(delay)


def read_small(
    source: BlobOpener,
    desc: Descriptor,
    *,
    limit: int = MAX_MANIFEST_SIZE,
    retry: RetryPolicy | None = None,
    cancel: threading.Event | None = None,
) -> bytes:
    """A small blob (a config) read whole through a :class:`Feed`: verified, at most
    ``limit`` bytes (refused before a byte is read when its descriptor says more)."""
    if desc.size > limit:
        raise ManifestError(
            f"config {desc.digest} of {source.description} is {desc.size} bytes, "
            f"more than the {limit} byte limit"
        )
    feed = Feed(source, desc, retry=retry, cancel=cancel)
    return b"".join(bytes(c) for c in feed.chunks())


class BytesBody(Closing):
    """A :class:`BlobBody` over bytes in memory (from ``offset``)."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.offset = offset if 0 <= offset <= len(data) else 0
        self._data = data

    def chunks(self) -> Iterator[Chunk]:
        if self.offset < len(self._data):
            yield memoryview(self._data)[self.offset :]

    def close(self) -> None:
        pass


class FileBody(Closing):
    """A :class:`BlobBody` over a local file, from ``offset`` (opened here: ``OSError``
    when it cannot be)."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def chunks(self) -> Iterator[Chunk]:
        fd = self._fd
        if fd is None:
            return
        end = os.fstat(fd).st_size
        yield from read_range(fd, self.offset, end, CHUNK)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class FileOpener:
    """A local file holding one blob, as a :class:`BlobOpener` (a feed over it hashes it
    like any other source)."""

    def __init__(self, path: Path, description: str | None = None) -> None:
        self.path = path
        self.description = description or str(path)

    def open_blob(self, desc: Descriptor, offset: int = 0) -> FileBody:
        try:
            return FileBody(self.path, offset)
        except OSError as e:
            raise DerrickError(
                f"cannot read blob {desc.digest} from {self.path}: {e.strerror or e}"
            ) from None
