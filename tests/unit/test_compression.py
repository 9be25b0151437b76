"""Compression detection, streaming decompression and diff_id verification."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import zlib

import pytest
import zstandard

from derrick import compression
from derrick.compression import (
    OUT_CHUNK,
    DiffIDVerifier,
    decompress_chunks,
    detect,
    from_media_type,
    sniff,
)
from derrick.digest import Digest
from derrick.errors import DigestMismatchError, LayoutError

DATA = b"".join(hashlib.sha256(str(i).encode()).hexdigest().encode() for i in range(20000))


class Source(io.RawIOBase):
    """A reader returning at most ``step`` bytes per read, recording whether it hit EOF."""

    def __init__(self, data: bytes, step: int = 1 << 20) -> None:
        self.data = data
        self.pos = 0
        self.step = step
        self.eof_seen = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = len(self.data)
        n = min(size, self.step)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        if not out:
            self.eof_seen = True
        return out


def inflate(data: bytes, step: int = 1 << 20, **kw: object) -> bytes:
    src = Source(data, step)
    out = b"".join(decompress_chunks(src, **kw))  # type: ignore[arg-type]
    assert src.eof_seen, "the source must be read to its end"
    return out


# -- detection -------------------------------------------------------------------------------


def test_media_types() -> None:
    assert from_media_type("application/vnd.oci.image.layer.v1.tar+gzip") == "gzip"
    assert from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip") == "gzip"
    assert from_media_type("application/vnd.oci.image.layer.v1.tar+zstd") == "zstd"
    assert from_media_type("application/vnd.oci.image.layer.v1.tar") == "none"
    assert from_media_type(None) == "none"


def test_magic_bytes() -> None:
    assert sniff(gzip.compress(b"x")) == "gzip"
    assert sniff(zstandard.ZstdCompressor().compress(b"x")) == "zstd"
    assert sniff(b"etc/hostname\0\0\0") is None
    with pytest.raises(LayoutError, match="xz"):
        sniff(b"\xfd7zXZ\x00\x00")
    with pytest.raises(LayoutError, match="bzip2"):
        sniff(b"BZh91AY")


def test_magic_bytes_win_over_a_wrong_media_type() -> None:
    gz = gzip.compress(b"x")
    assert detect(gz, "application/vnd.oci.image.layer.v1.tar") == "gzip"
    assert detect(b"plain", "application/vnd.oci.image.layer.v1.tar+zstd") == "zstd"
    assert detect(b"plain", "application/vnd.oci.image.layer.v1.tar") == "none"
    mislabelled = "application/vnd.oci.image.layer.v1.tar+zstd"
    assert inflate(gzip.compress(DATA), media_type=mislabelled) == DATA


# -- gzip ------------------------------------------------------------------------------------


def test_gzip_uses_isal() -> None:
    assert compression.GZIP_BACKEND == "isal"


@pytest.mark.parametrize("step", [1, 3, 4096, 1 << 20])
def test_gzip_round_trip_with_any_read_size(step: int) -> None:
    data = DATA[:200_000] if step < 10 else DATA
    assert inflate(gzip.compress(data), step) == data


def test_gzip_concatenated_members_and_zero_padding() -> None:
    parts = [DATA[:1000], DATA[1000:5000], DATA[5000:]]
    blob = b"".join(gzip.compress(p) for p in parts) + b"\0" * 700
    assert inflate(blob, 999) == DATA


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (gzip.compress(DATA)[:-100], "truncated"),
        (gzip.compress(DATA)[:5], "truncated"),
        (gzip.compress(DATA) + b"garbage", "after the gzip stream"),
        (gzip.compress(DATA)[:20] + b"\xff" * 200 + gzip.compress(DATA)[220:], "corrupt"),
        (b"\x1f\x8b", "truncated|corrupt"),
    ],
)
def test_gzip_damage_is_an_error(blob: bytes, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        inflate(blob)


def test_gzip_bomb_output_is_bounded() -> None:
    zeros = gzip.compress(bytes(64 << 20), compresslevel=9)
    assert len(zeros) < 100_000
    total = 0
    for piece in decompress_chunks(io.BytesIO(zeros)):
        assert len(piece) <= OUT_CHUNK
        total += len(piece)
    assert total == 64 << 20


def test_stdlib_zlib_fallback_gives_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compression, "_gzip_impl", zlib)
    assert inflate(gzip.compress(DATA) + gzip.compress(b"tail"), 777) == DATA + b"tail"


# -- zstd and plain --------------------------------------------------------------------------


@pytest.mark.parametrize("step", [1, 5, 1 << 20])
def test_zstd_round_trip_across_frames(step: int) -> None:
    data = DATA[:100_000] if step < 10 else DATA
    c = zstandard.ZstdCompressor(level=3)
    blob = c.compress(data[:1234]) + c.compress(data[1234:])
    assert inflate(blob, step) == data


def test_zstd_streaming_frame_without_content_size() -> None:
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as w:
        w.write(DATA)
    assert inflate(out.getvalue()) == DATA


def test_zstd_bomb_output_is_bounded() -> None:
    blob = zstandard.ZstdCompressor(level=19).compress(bytes(32 << 20))
    sizes = [len(p) for p in decompress_chunks(io.BytesIO(blob))]
    assert max(sizes) <= OUT_CHUNK and sum(sizes) == 32 << 20


def test_zstd_checksums_dictionary_ids_and_skippable_frames() -> None:
    plain = zstandard.ZstdCompressor(write_checksum=True, write_content_size=False)
    skippable = b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"12345"
    blob = plain.compress(DATA[:999]) + skippable + plain.compress(DATA[999:])
    assert inflate(blob, 333) == DATA


def test_zstd_trailing_garbage_is_an_error() -> None:
    blob = zstandard.ZstdCompressor().compress(DATA)
    with pytest.raises(LayoutError, match="after the zstd stream"):
        inflate(blob + b"garbage!")


def test_zstd_damage_is_an_error() -> None:
    blob = zstandard.ZstdCompressor().compress(DATA)
    with pytest.raises(LayoutError, match="zstd"):
        inflate(blob[:-50])
    with pytest.raises(LayoutError, match="zstd"):
        inflate(blob[:10] + os.urandom(200) + blob[210:])


def test_plain_passes_through() -> None:
    assert inflate(DATA, 12345) == DATA
    assert inflate(b"") == b""


# -- diff_id ---------------------------------------------------------------------------------


def test_diff_id_verifier() -> None:
    good = Digest.of(DATA)
    v = DiffIDVerifier(good, what="layer 1")
    out = b"".join(v.wrap(decompress_chunks(io.BytesIO(gzip.compress(DATA)))))
    assert out == DATA
    assert v.verify() == good
    assert v.size == len(DATA)

    bad = DiffIDVerifier(Digest.of(b"other"), what="layer 2")
    for chunk in decompress_chunks(io.BytesIO(gzip.compress(DATA))):
        bad.update(chunk)
    with pytest.raises(DigestMismatchError, match=r"layer 2.*diff_id"):
        bad.verify()

    measuring = DiffIDVerifier(None)
    measuring.update(DATA)
    assert measuring.verify() == good
