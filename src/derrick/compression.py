"""Layer compression: detection, streaming decompression and diff_id checks.

A layer blob is a tar archive, plain or compressed with gzip or zstd.  Which
one is told by the layer's media type and, more reliably, by the blob's first
bytes: gzip starts with ``1f 8b``, a zstd frame with ``28 b5 2f fd``.  When
both are known and the magic bytes name a compression, the bytes win (a
mislabelled layer still reads); media types only decide for content without
a known magic number.

Decompression streams: compressed input is read in 1 MiB pieces and the
output comes in pieces of at most :data:`OUT_CHUNK` bytes, so memory stays
flat however large (or however well compressed: a "zip bomb") a layer is.
gzip is decompressed with ISA-L (the ``isal`` package), which measured more
than twice as fast as the standard library's zlib on layer-like data; if it
cannot be imported the standard zlib is used.  Concatenated gzip members and
zstd frames are read one after another, as ``gunzip`` and ``zstd -d`` do.

:class:`DiffIDVerifier` hashes the uncompressed stream and checks it against
the image config's ``rootfs.diff_ids`` entry for the layer.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any, BinaryIO, Literal, Protocol

from derrick import mediatypes as mt
from derrick.digest import Digest
from derrick.errors import DigestMismatchError, LayoutError

_gzip_impl: ModuleType
try:  # ISA-L's zlib-compatible inflate: the fast path for gzip layers
    from isal import isal_zlib as _gzip_impl

    GZIP_BACKEND = "isal"
except ImportError:  # pragma: no cover - isal is a dependency; this is a safety net
    _gzip_impl = zlib
    GZIP_BACKEND = "zlib"

__all__ = [
    "GZIP_MAGIC",
    "ZSTD_MAGIC",
    "Compression",
    "DiffIDVerifier",
    "decompress_chunks",
    "detect",
    "from_media_type",
    "sniff",
]

Compression = Literal["gzip", "zstd", "none"]

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_UNSUPPORTED_MAGIC = ((b"\xfd7zXZ\x00", "xz"), (b"BZh", "bzip2"))

#: Compressed bytes read from the source at a time.
IN_CHUNK = 1 << 20
#: Largest piece of decompressed output handed out at once.
OUT_CHUNK = 4 << 20
#: Bytes needed to recognise every supported magic number.
SNIFF_SIZE = 6

_GZIP_WBITS = 16 + 15  # gzip header and trailer, 32 KiB window


def from_media_type(media_type: str | None) -> Compression:
    """The compression a layer media type declares (``none`` when unknown)."""
    if not media_type:
        return "none"
    kind = mt.layer_compression(media_type)
    return "gzip" if kind == "gzip" else "zstd" if kind == "zstd" else "none"


def sniff(head: bytes) -> Compression | None:
    """The compression the first bytes of a blob show, or None if they show none.

    Raises :class:`LayoutError` for compressions derrick does not read (xz, bzip2).
    """
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    for magic, name in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            raise LayoutError(
                f"layer is {name}-compressed, which derrick does not read",
                hint="layers may be plain tar, gzip or zstd",
            )
    return None


def detect(head: bytes, media_type: str | None = None) -> Compression:
    """The compression to read a blob with: its magic bytes, else its media type.

    A blob whose media type says gzip or zstd but whose bytes carry no magic
    number is read as it is declared, so the decompressor reports the damage.
    """
    found = sniff(head)
    if found is not None:
        return found
    return from_media_type(media_type)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _read_source(source: _Readable, size: int) -> Iterator[bytes]:
    while True:
        data = source.read(size)
        if not data:
            return
        yield data


def _gunzip(chunks: Iterable[bytes], what: str) -> Iterator[bytes]:
    """Inflate a stream of one or more gzip members, output bounded per piece."""
    errors: tuple[type[BaseException], ...] = (zlib.error, _gzip_impl.error)
    d: Any = None
    members = 0
    carry = b""  # start of the next member, too short to check its magic yet
    try:
        for data in chunks:
            buf = carry + data if carry else data
            carry = b""
            while buf:
                if d is None:
                    if buf[0] == 0:  # zero padding after a member, as gzip tolerates
                        buf = buf.lstrip(b"\0")
                        continue
                    if len(buf) < len(GZIP_MAGIC):
                        carry = buf
                        break
                    if not buf.startswith(GZIP_MAGIC):
                        raise LayoutError(
                            f"{what}: "
                            + (
                                "unexpected data after the gzip stream"
                                if members
                                else "not gzip data"
                            )
                        )
                    d = _gzip_impl.decompressobj(_GZIP_WBITS)
                out = d.decompress(buf, OUT_CHUNK)
                if out:
                    yield out
                if d.eof:
                    buf = d.unused_data
                    d = None
                    members += 1
                else:
                    buf = d.unconsumed_tail
        if d is not None:
            out = d.flush()
            if out:
                yield out
            raise LayoutError(f"{what}: the gzip stream is truncated")
        if carry or not members:
            raise LayoutError(f"{what}: the gzip stream is " + ("truncated" if carry else "empty"))
    except errors as e:
        raise LayoutError(f"{what}: corrupt gzip data ({e})") from None


class _ZstdFrames:
    """Follows zstd frame and block boundaries (RFC 8878) in the compressed bytes.

    The decompressor stops quietly at the end of its input, even inside a
    frame; this tells a complete stream from a truncated one, and notices
    bytes after the last frame.  Only headers are looked at, not block content.
    """

    _FCS_SIZES = (0, 2, 4, 8)
    _DICT_SIZES = (0, 1, 2, 4)

    def __init__(self, what: str) -> None:
        self.what = what
        self.state = "magic"
        self.need = 4
        self.pending = bytearray()
        self.skip = 0
        self.checksum = False
        self.frames = 0

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self.skip:
                take = min(self.skip, n - i)
                self.skip -= take
                i += take
                continue
            take = min(self.need - len(self.pending), n - i)
            self.pending += data[i : i + take]
            i += take
            if len(self.pending) == self.need:
                header = bytes(self.pending)
                self.pending.clear()
                self._header(header)

    def _header(self, h: bytes) -> None:
        state = self.state
        if state == "magic":
            if h == ZSTD_MAGIC:
                self.state, self.need = "descriptor", 1
            elif h[1:] == b"\x2a\x4d\x18" and h[0] & 0xF0 == 0x50:  # a skippable frame
                self.state, self.need = "skippable", 4
            else:
                what = "unexpected data after the zstd stream" if self.frames else "not zstd data"
                raise LayoutError(f"{self.what}: {what}")
        elif state == "skippable":
            self.skip = int.from_bytes(h, "little")
            self.state, self.need = "magic", 4
        elif state == "descriptor":
            d = h[0]
            if d & 0x08:
                raise LayoutError(f"{self.what}: corrupt zstd data (reserved frame header bit)")
            single = (d >> 5) & 1
            self.checksum = bool(d & 0x04)
            fcs = self._FCS_SIZES[d >> 6] or single
            rest = (0 if single else 1) + self._DICT_SIZES[d & 3] + fcs
            if rest:
                self.state, self.need = "frame-header", rest
            else:
                self.state, self.need = "block", 3
        elif state == "frame-header":
            self.state, self.need = "block", 3
        else:
            v = int.from_bytes(h, "little")
            kind = (v >> 1) & 3
            if kind == 3:
                raise LayoutError(f"{self.what}: corrupt zstd data (reserved block type)")
            self.skip = 1 if kind == 1 else v >> 3
            if v & 1:  # the frame's last block
                self.skip += 4 if self.checksum else 0
                self.frames += 1
                self.state, self.need = "magic", 4

    def finish(self) -> None:
        if self.state != "magic" or self.pending or self.skip or not self.frames:
            raise LayoutError(f"{self.what}: the zstd stream is truncated")


class _Tap:
    """Reads ``source`` and shows every byte read to ``check``."""

    def __init__(self, source: _Readable, check: _ZstdFrames) -> None:
        self._source = source
        self._check = check

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._check.feed(data)
        return data

    def readable(self) -> bool:
        return True


def _unzstd(source: _Readable, what: str) -> Iterator[bytes]:
    import zstandard

    frames = _ZstdFrames(what)
    dctx = zstandard.ZstdDecompressor()
    try:
        with dctx.stream_reader(
            _Tap(source, frames),  # type: ignore[arg-type]  # any object with read() will do
            read_size=IN_CHUNK,
            read_across_frames=True,
            closefd=False,
        ) as reader:
            while True:
                out = reader.read(OUT_CHUNK)
                if not out:
                    break
                yield out
    except zstandard.ZstdError as e:
        raise LayoutError(f"{what}: corrupt zstd data ({e})") from None
    tap = _Tap(source, frames)
    while tap.read(IN_CHUNK):  # whatever the decompressor left unread is checked too
        pass
    frames.finish()


class _Prefixed:
    """A binary reader that first returns ``head``, then the rest of ``source``."""

    def __init__(self, head: bytes, source: BinaryIO) -> None:
        self._head = head
        self._source = source

    def read(self, size: int = -1) -> bytes:
        head = self._head
        if not head:
            return self._source.read(size)
        if size < 0:
            self._head = b""
            return head + self._source.read()
        if size < len(head):
            self._head = head[size:]
            return head[:size]
        self._head = b""
        return head  # a short read; callers read on until b""

    def readable(self) -> bool:
        return True


def decompress_chunks(
    source: BinaryIO,
    *,
    media_type: str | None = None,
    compression: Compression | None = None,
    what: str = "layer",
) -> Iterator[bytes]:
    """The uncompressed content of ``source`` (read to its very end), in pieces.

    ``compression`` forces a format; otherwise it is detected from the first
    bytes and ``media_type``.  Corrupt or truncated data raises
    :class:`LayoutError`.  Reading the source to its end lets a verifying
    reader check the blob's digest.
    """
    head = b""
    while len(head) < SNIFF_SIZE:
        more = source.read(SNIFF_SIZE - len(head))
        if not more:
            break
        head += more
    kind = compression or detect(head, media_type)
    src = _Prefixed(head, source)
    if kind == "gzip":
        yield from _gunzip(_read_source(src, IN_CHUNK), what)
    elif kind == "zstd":
        yield from _unzstd(src, what)
    else:
        yield from _read_source(src, OUT_CHUNK)


class DiffIDVerifier:
    """Hashes a layer's uncompressed stream and checks it against its diff_id.

    ``expected`` None only measures (size and digest), for layers whose
    config lists no diff_id.
    """

    def __init__(self, expected: Digest | None, *, what: str = "layer") -> None:
        self.expected = expected
        self.what = what
        self._hash = (expected or Digest("sha256", "0" * 64)).hasher()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Pass ``chunks`` through, hashing each (call :meth:`verify` after the last)."""
        for chunk in chunks:
            self._hash.update(chunk)
            self.size += len(chunk)
            yield chunk

    @property
    def digest(self) -> Digest:
        """The digest of what was seen so far."""
        alg = self.expected.algorithm if self.expected else "sha256"
        return Digest(alg, self._hash.hexdigest())

    def verify(self) -> Digest:
        """Raise :class:`DigestMismatchError` unless the content matched; return its digest."""
        got = self.digest
        if self.expected is not None and got != self.expected:
            raise DigestMismatchError(
                f"{self.what}: uncompressed content is {got}, but the image config's "
                f"diff_id is {self.expected}",
                hint="the layer or the config is corrupt or was tampered with",
            )
        return got
