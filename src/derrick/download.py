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

import threading
from collections.abc import Callable

from derrick.digest import Verifier
from derrick.errors import Cancelled, DigestMismatchError, TransportError
from derrick.manifest import Descriptor
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.store.files import CHUNK, Region, Sink, Tee, copy_range

__all__ = ["CHUNK", "Cancelled", "Progress", "Region", "Sink", "Tee", "copy_range", "download"]

Progress = Callable[[int], None]


class _BrokeOff(Exception):
    """The body of a download broke off after it had begun: worth resuming."""

    def __init__(self, error: TransportError) -> None:
        super().__init__(str(error))
        self.error = error


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
