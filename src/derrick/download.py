"""Download one blob into a region of a file, verified, resumable.

A :class:`Region` is where a blob's bytes go: a file descriptor and the offset
of the blob's first byte (0 for a file of its own, the member's data offset for
a layer inside an archive).  :func:`download` first re-hashes any bytes an
earlier, interrupted download left there, then asks the registry for the rest
with a ``Range`` request, writing each chunk with ``pwrite`` as it arrives and
hashing it on the way.  Transient failures mid-way resume from the bytes
already verified.  The digest and size are checked at the end; the caller
makes the result visible only then.  A :class:`Tee` of regions receives the
same bytes in each (an archive's hole and the blob cache's partial file), so
one download fills both.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from typing import Protocol

from derrick.digest import Verifier
from derrick.errors import Cancelled, DigestMismatchError, TransportError
from derrick.manifest import Descriptor
from derrick.reference import Reference
from derrick.registry import RegistryClient

__all__ = ["CHUNK", "Cancelled", "Progress", "Region", "download"]

CHUNK = 1 << 20
Progress = Callable[[int], None]


class _BrokeOff(Exception):
    """The body of a download broke off after it had begun: worth resuming."""

    def __init__(self, error: TransportError) -> None:
        super().__init__(str(error))
        self.error = error


class Sink(Protocol):
    """Where a download's bytes go."""

    def write_at(self, pos: int, data: bytes | memoryview) -> None: ...

    def rehash(self, verifier: Verifier, upto: int) -> int: ...


class Region:
    """``size`` bytes of the file ``fd`` starting at ``base``."""

    def __init__(self, fd: int, base: int, size: int) -> None:
        self.fd = fd
        self.base = base
        self.size = size

    def write_at(self, pos: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, self.base + pos)
            pos += n
            view = view[n:]

    def rehash(self, verifier: Verifier, upto: int) -> int:
        """Feed the first ``upto`` bytes of the region to ``verifier``; how many were read."""
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        done = 0
        while done < upto:
            n = os.preadv(self.fd, [view[: min(CHUNK, upto - done)]], self.base + done)
            if n <= 0:
                break
            verifier.update(view[:n])
            done += n
        return done


class Tee:
    """Regions that all receive the same bytes; the first one is re-hashed on a resume.

    The caller makes the regions' first bytes identical before a resume (see
    :func:`copy_range`), so what is re-hashed in one holds for all.
    """

    def __init__(self, first: Region, *others: Region) -> None:
        self.regions = (first, *others)

    def write_at(self, pos: int, data: bytes | memoryview) -> None:
        for region in self.regions:
            region.write_at(pos, data)

    def rehash(self, verifier: Verifier, upto: int) -> int:
        return self.regions[0].rehash(verifier, upto)


# errno values that mean "copy_file_range cannot copy between these files": copy by hand
_NO_COPY_RANGE = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}


def copy_range(src: Region, dst: Region, start: int, end: int) -> None:
    """Copy bytes ``start`` to ``end`` of region ``src`` to the same place in ``dst``.

    In the kernel (``copy_file_range``) where it can, else through a buffer.
    """
    pos = start
    while pos < end:
        try:
            n = os.copy_file_range(src.fd, dst.fd, end - pos, src.base + pos, dst.base + pos)
        except OSError as e:
            if e.errno not in _NO_COPY_RANGE:
                raise
            break
        if n <= 0:
            break
        pos += n
    buf = bytearray(min(CHUNK, max(end - pos, 0)))
    view = memoryview(buf)
    while pos < end:
        n = os.preadv(src.fd, [view[: min(CHUNK, end - pos)]], src.base + pos)
        if n <= 0:
            raise OSError(errno.EIO, f"{end - pos} bytes missing from the source file")
        dst.write_at(pos, view[:n])
        pos += n


def download(
    client: RegistryClient,
    ref: Reference,
    desc: Descriptor,
    region: Sink,
    *,
    have: int = 0,
    progress: Progress | None = None,
    cancelled: threading.Event | None = None,
    written: Callable[[int], None] | None = None,
) -> int:
    """Fill ``region`` with blob ``desc``, trusting nothing: every byte is verified.

    ``have`` bytes from an earlier attempt are re-hashed and kept; ``written``
    is told the count of bytes in place after each chunk (for resume state).
    If the result does not match, bytes kept from an earlier attempt may be
    the cause: the blob is then downloaded once more from its first byte.
    Returns the count of bytes received from the registry.  Raises
    :class:`DigestMismatchError` if the content is wrong (the region must then
    be discarded) or the last transport error after the retries.
    """
    job = _Download(client, ref, desc, region, progress, cancelled, written)
    if have > desc.size:
        have = 0
    if have:
        have = region.rehash(job.verifier, have)
        job.advance(have)
    try:
        job.fill()
        job.verifier.verify()
    except DigestMismatchError:
        if not have:
            raise
        # The kept bytes may be what is wrong: start over, from the registry only.
        job.advance(-job.verifier.count)
        job.verifier.reset()
        job.fill()
        job.verifier.verify()
    return job.received


class _Download:
    """One blob being downloaded into a region: what is verified so far and where it goes."""

    def __init__(
        self,
        client: RegistryClient,
        ref: Reference,
        desc: Descriptor,
        region: Sink,
        progress: Progress | None,
        cancelled: threading.Event | None,
        written: Callable[[int], None] | None,
    ) -> None:
        self.client = client
        self.ref = ref
        self.desc = desc
        self.region = region
        self.progress = progress
        self.cancelled = cancelled
        self.written = written
        self.verifier = Verifier(desc.digest, desc.size, what="blob")
        self.received = 0  # bytes that came from the registry

    def advance(self, nbytes: int) -> None:
        if self.progress and nbytes:
            self.progress(nbytes)

    def fill(self) -> None:
        """Download what the verifier has not seen yet, resuming a body that breaks off.

        Failures before a body begins (a refused connection, 5xx, 429) were already
        retried by the transport, and a 404 will not mend: those end the download.
        """
        retries = self.client.transport.retry.retries
        attempts = 0
        while self.verifier.count < self.desc.size:
            try:
                self._stream()
            except _BrokeOff as e:
                attempts += 1
                if attempts > retries or (self.cancelled is not None and self.cancelled.is_set()):
                    raise e.error from None
                self.client.transport.retry_sleep(attempts - 1)
                continue
            break

    def _stream(self) -> None:
        verifier = self.verifier
        offset = verifier.count
        with self.client.open_blob(self.ref, self.desc.digest, offset=offset) as stream:
            if stream.offset != offset:
                # The registry ignored the range: start over from the first byte.
                self.advance(-offset)
                verifier.reset()
            pos = verifier.count
            try:
                for chunk in stream.chunks():
                    if self.cancelled is not None and self.cancelled.is_set():
                        raise Cancelled("cancelled")
                    self.received += len(chunk)
                    verifier.update(chunk)
                    self.region.write_at(pos, chunk)
                    pos += len(chunk)
                    self.advance(len(chunk))
                    if self.written:
                        self.written(pos)
            except TransportError as e:  # raised by the stream only: the rest can be asked for
                raise _BrokeOff(e) from None
