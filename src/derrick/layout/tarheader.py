"""Tar header blocks and PAX records, parsed for :class:`~derrick.layout.tarread.TarReader`.

:func:`read_header` parses a ustar/GNU header block, the quick way where it can (octal
numbers) and with :mod:`tarfile` otherwise; :func:`apply_records` applies what the PAX
extended headers and GNU long names before it said (name, link, size, owners, times,
extended attributes).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass

from derrick.errors import LayoutError

__all__ = ["Fields", "Header", "apply_records", "parse_pax", "quick_header", "read_header"]

_XATTR_PREFIX = "SCHILY.xattr."


def parse_pax(data: bytes, what: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    pos = 0
    n = len(data)
    while pos < n:
        if data[pos] == 0:
            break
        sp = data.find(b" ", pos, pos + 24)
        try:
            length = int(data[pos:sp]) if sp > pos else 0
        except ValueError:
            length = 0
        end = pos + length
        if length <= 0 or end > n or data[end - 1 : end] != b"\n":
            raise LayoutError(f"{what}: malformed PAX extended header")
        key, eq, value = data[sp + 1 : end - 1].partition(b"=")
        if not eq:
            raise LayoutError(f"{what}: malformed PAX record {key[:60]!r}")
        out[key.decode("utf-8", "surrogateescape")] = value
        pos = end
    return out


def pax_number(value: bytes, key: str, what: str, *, real: bool = False) -> float:
    try:
        return float(value) if real else int(value)
    except ValueError:
        raise LayoutError(
            f"{what}: PAX header {key} has the invalid value {value[:40]!r}"
        ) from None


class Header:
    __slots__ = (
        "devmajor",
        "devminor",
        "gid",
        "gname",
        "linkname",
        "mode",
        "mtime",
        "name",
        "size",
        "type",
        "uid",
        "uname",
    )

    name: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    type: bytes
    linkname: str
    uname: str
    gname: str
    devmajor: int
    devminor: int


_USTAR_MAGIC = b"ustar\x00"


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _octal(field: bytes) -> int:
    digits = field.split(b"\0", 1)[0].strip(b" ")
    return int(digits, 8) if digits else 0


def quick_header(block: bytes) -> Header | None:
    """A ustar/GNU header block parsed the quick way; None leaves it to :mod:`tarfile`.

    The quick way covers octal numbers only; base-256 numbers, bad checksums
    and anything odd fall back to ``tarfile.TarInfo.frombuf``, which also
    produces the error message.
    """
    if any(block[i] & 0x80 for i in (100, 108, 116, 124, 136, 329, 337)):
        return None  # base-256 numbers
    try:
        chksum = _octal(block[148:156])
        if chksum != sum(block) - sum(block[148:156]) + 256:
            return None
        h = Header()
        h.mode = _octal(block[100:108])
        h.uid = _octal(block[108:116])
        h.gid = _octal(block[116:124])
        h.size = _octal(block[124:136])
        h.mtime = _octal(block[136:148])
        h.devmajor = _octal(block[329:337])
        h.devminor = _octal(block[337:345])
    except ValueError:
        return None
    h.type = block[156:157]
    name = _text(block[0:100])
    if block[257:263] == _USTAR_MAGIC:
        prefix = _text(block[345:500])
        if prefix:
            name = f"{prefix}/{name}"
    if h.type == tarfile.AREGTYPE and name.endswith("/"):
        h.type = tarfile.DIRTYPE
    if h.type == tarfile.DIRTYPE:
        name = name.rstrip("/")
    h.name = name
    h.linkname = _text(block[157:257])
    h.uname = _text(block[265:297])
    h.gname = _text(block[297:329])
    return h


def read_header(block: bytes, what: str, entries: int) -> Header | tarfile.TarInfo:
    """The header in ``block`` (``entries`` members came before it, for the message of a
    block that is no header)."""
    quick = quick_header(block)
    if quick is not None:
        return quick
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as e:
        raise LayoutError(
            f"{what}: invalid tar header after {entries} entries ({e})",
            hint="the layer is not a tar archive or is corrupt",
        ) from None


@dataclass(slots=True)
class Fields:
    """A member's header fields once its PAX records and GNU long names are applied."""

    type: bytes
    name: str
    link: str
    size: int
    uid: int
    gid: int
    mtime: float
    uname: str
    gname: str
    xattrs: dict[str, bytes] | None = None


def apply_records(
    info: Header | tarfile.TarInfo,
    records: dict[str, bytes],
    long_name: str | None,
    long_link: str | None,
    what: str,
) -> Fields:
    """The fields of the member ``info`` heads, as ``records`` (its PAX records, global
    ones first) and the GNU long names before it say."""
    f = Fields(
        info.type,
        long_name if long_name is not None else info.name,
        long_link if long_link is not None else info.linkname,
        info.size,
        info.uid,
        info.gid,
        float(info.mtime),
        info.uname,
        info.gname,
    )
    for key, value in records.items():
        if not value:
            continue
        if key in ("path", "linkpath"):
            text = value.decode("utf-8", "surrogateescape")
            if key == "path":
                f.name = text
            else:
                f.link = text
        elif key in ("size", "uid", "gid"):
            setattr(f, key, int(pax_number(value, key, what)))
        elif key == "mtime":
            f.mtime = pax_number(value, key, what, real=True)
        elif key in ("uname", "gname"):
            setattr(f, key, value.decode("utf-8", "replace"))
        elif key.startswith(_XATTR_PREFIX):
            if f.xattrs is None:
                f.xattrs = {}
            f.xattrs[key[len(_XATTR_PREFIX) :]] = value
        elif key.startswith("GNU.sparse."):
            f.type = tarfile.GNUTYPE_SPARSE
    return f
