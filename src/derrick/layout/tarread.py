"""Read layer tars: a streaming reader and the path rules of layer changesets.

:class:`TarReader` reads a layer's uncompressed stream (``ustar``, PAX and GNU
long names) entry by entry without ever seeking, and cleans each member name
to a path relative to the root: a leading ``/`` is dropped (``/etc/x`` is
``etc/x`` in the root, as tar does) and a name whose ``..`` climbs above the
root is refused with :class:`LayoutError`.  :func:`whiteout_of` recognises the
OCI whiteout and opaque-directory markers.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from derrick.errors import LayoutError

Kind = Literal["file", "dir", "symlink", "hardlink", "char", "block", "fifo"]

log = logging.getLogger("derrick.tarread")

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_KINDS: dict[bytes, Kind] = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.DIRTYPE: "dir",
    tarfile.FIFOTYPE: "fifo",
}
_META_TYPES = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)
#: Largest PAX header or GNU long name read.
MAX_META_SIZE = 8 << 20
_XATTR_PREFIX = "SCHILY.xattr."
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


def clean_path(name: str, what: str = "layer") -> str:
    """A member name as a path inside the root: no leading ``/``, ``.`` or ``..``.

    ``..`` that stays inside the root is resolved (``a/../b`` is ``b``);
    ``..`` that climbs above it raises :class:`LayoutError`.  ``""`` is the root.
    """
    if "\x00" in name:
        raise LayoutError(f"{what}: entry name {name!r} contains a NUL byte")
    parts: list[str] = []
    for c in name.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            if not parts:
                raise LayoutError(
                    f"{what} is unsafe: entry {name!r} points outside the root directory",
                    hint="the layer tries to write outside the directory it is unpacked to",
                )
            parts.pop()
        else:
            parts.append(c)
    return "/".join(parts)


def whiteout_of(path: str) -> tuple[str, str | None] | None:
    """For a whiteout entry: ``(directory, name)``, name None for an opaque marker.

    None when ``path`` is not a whiteout.  AUFS bookkeeping names
    (``.wh..wh.*`` other than the opaque marker) give ``(directory, "")``:
    such entries are dropped.
    """
    head, _, base = path.rpartition("/")
    if not base.startswith(WHITEOUT_PREFIX):
        return None
    if base == OPAQUE_MARKER:
        return head, None
    if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
        return head, ""
    return head, base[len(WHITEOUT_PREFIX) :]


@dataclass(slots=True)
class TarEntry:
    """One member of a layer tar, its name cleaned (see :func:`clean_path`)."""

    path: str
    kind: Kind
    mode: int
    uid: int
    gid: int
    mtime: float
    size: int  # bytes of data (0 for everything but regular files)
    linkname: str  # a symlink's target as stored; a hard link's target path, cleaned
    uname: str = ""
    gname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] | None = None


def _parse_pax(data: bytes, what: str) -> dict[str, bytes]:
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


def _pax_number(value: bytes, key: str, what: str, *, real: bool = False) -> float:
    try:
        return float(value) if real else int(value)
    except ValueError:
        raise LayoutError(
            f"{what}: PAX header {key} has the invalid value {value[:40]!r}"
        ) from None


class _Header:
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


def _parse_header(block: bytes) -> _Header | None:
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
        h = _Header()
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


class TarReader:
    """Reads a tar stream given as chunks of bytes, entry by entry.

    Iterate it for :class:`TarEntry` objects; while at an entry, :meth:`data`
    yields its content (unread content is skipped on to the next entry).
    After the end-of-archive marker the rest of the stream is read (and so
    hashed by any verifier the chunks pass through) and discarded.
    """

    def __init__(self, chunks: Iterable[bytes], *, what: str = "layer") -> None:
        self._it = iter(chunks)
        self._buf: bytes = b""
        self._pos = 0
        self._left = 0  # data bytes of the current entry not read yet
        self._pad = 0
        self.what = what
        self.entries = 0
        self.skipped: list[str] = []

    # -- bytes -----------------------------------------------------------

    def _more(self) -> bool:
        for chunk in self._it:
            if chunk:
                self._buf = chunk
                self._pos = 0
                return True
        self._buf = b""
        self._pos = 0
        return False

    def _read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or fewer at the end of the stream."""
        avail = len(self._buf) - self._pos
        if avail >= n:
            out = self._buf[self._pos : self._pos + n]
            self._pos += n
            return out
        parts = [self._buf[self._pos :]] if avail else []
        got = avail
        self._pos = len(self._buf)
        while got < n and self._more():
            take = min(n - got, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            got += take
        return b"".join(parts)

    def _skip(self, n: int) -> bool:
        """Skip ``n`` bytes; False when the stream ended first."""
        while n:
            avail = len(self._buf) - self._pos
            if avail <= 0:
                if not self._more():
                    return False
                continue
            take = min(n, avail)
            self._pos += take
            n -= take
        return True

    def _next_block(self) -> bytes:
        """The next header block, after what is left of the current entry: its data (a
        stream that ends inside it is truncated) and its padding to a whole block.  A
        stream that ends in or right after the padding ends the archive there, as if the
        end-of-archive blocks followed (some writers leave them out, and the padding of
        the last entry with them): b"" then."""
        if self._left and not self._skip(self._left):
            raise LayoutError(f"{self.what}: the tar stream is truncated")
        pad, self._left, self._pad = self._pad, 0, 0
        if pad and not self._skip(pad):
            return b""
        block = self._read(BLOCK)
        if 0 < len(block) < BLOCK:
            raise LayoutError(f"{self.what}: the tar stream is truncated")
        return block

    def drain(self) -> None:
        """Read (and discard) everything left in the stream."""
        self._left = self._pad = 0
        self._pos = len(self._buf)
        while self._more():
            pass

    def data(self) -> Iterator[memoryview]:
        """The current entry's content, in pieces."""
        while self._left:
            avail = len(self._buf) - self._pos
            if avail <= 0:
                if not self._more():
                    raise LayoutError(f"{self.what}: the tar stream is truncated")
                continue
            take = min(self._left, avail)
            start = self._pos
            self._pos += take
            self._left -= take
            yield memoryview(self._buf)[start : start + take]

    def read_data(self, limit: int = MAX_META_SIZE) -> bytes:
        if self._left > limit:
            raise LayoutError(f"{self.what}: a tar header record is larger than {limit} bytes")
        return b"".join(bytes(p) for p in self.data())

    # -- entries ---------------------------------------------------------

    def __iter__(self) -> Iterator[TarEntry]:
        what = self.what
        global_pax: dict[str, bytes] = {}
        pax: dict[str, bytes] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            block = self._next_block()
            if not block:
                return  # the stream ended at an entry boundary without the end marker
            if block == _ZERO_BLOCK:
                self.drain()
                return
            quick = _parse_header(block)
            info: _Header | tarfile.TarInfo
            if quick is not None:
                info = quick
            else:
                try:
                    info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
                except tarfile.HeaderError as e:
                    raise LayoutError(
                        f"{what}: invalid tar header after {self.entries} entries ({e})",
                        hint="the layer is not a tar archive or is corrupt",
                    ) from None
            typ = info.type
            size = info.size
            if size < 0:
                raise LayoutError(f"{what}: tar header with a negative size")
            self._left, self._pad = size, -size % BLOCK
            if typ in _META_TYPES:
                data = self.read_data()
                if typ in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                    pax.update(_parse_pax(data, what))
                elif typ == tarfile.XGLTYPE:
                    global_pax.update(_parse_pax(data, what))
                else:
                    text = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    if typ == tarfile.GNUTYPE_LONGNAME:
                        long_name = text
                    else:
                        long_link = text
                continue
            name = long_name if long_name is not None else info.name
            link = long_link if long_link is not None else info.linkname
            uid, gid, mtime = info.uid, info.gid, float(info.mtime)
            uname, gname = info.uname, info.gname
            xattrs: dict[str, bytes] | None = None
            records = {**global_pax, **pax} if global_pax else pax
            for key, value in records.items():
                if not value:
                    continue
                if key == "path":
                    name = value.decode("utf-8", "surrogateescape")
                elif key == "linkpath":
                    link = value.decode("utf-8", "surrogateescape")
                elif key == "size":
                    size = int(_pax_number(value, key, what))
                    self._left, self._pad = size, -size % BLOCK
                elif key == "uid":
                    uid = int(_pax_number(value, key, what))
                elif key == "gid":
                    gid = int(_pax_number(value, key, what))
                elif key == "mtime":
                    mtime = _pax_number(value, key, what, real=True)
                elif key == "uname":
                    uname = value.decode("utf-8", "replace")
                elif key == "gname":
                    gname = value.decode("utf-8", "replace")
                elif key.startswith(_XATTR_PREFIX):
                    if xattrs is None:
                        xattrs = {}
                    xattrs[key[len(_XATTR_PREFIX) :]] = value
                elif key.startswith("GNU.sparse."):
                    typ = tarfile.GNUTYPE_SPARSE
            pax = {}
            long_name = long_link = None
            if typ == tarfile.GNUTYPE_SPARSE:
                raise LayoutError(
                    f"{what}: entry {name!r} is a sparse file, which derrick does not unpack"
                )
            kind = _KINDS.get(typ)
            if kind is None:
                self.skipped.append(name)
                log.debug("%s: skipping tar entry %r of unknown type %r", what, name, typ)
                continue
            if kind == "file" and typ == tarfile.AREGTYPE and name.endswith("/"):
                kind = "dir"
            if kind != "file":
                self._left = self._pad = 0  # header-only types carry no data
                size = 0
            path = clean_path(name, what)
            if kind == "hardlink":
                link = clean_path(link, what)
                if not link:
                    raise LayoutError(f"{what}: hard link {name!r} points to the root directory")
            self.entries += 1
            yield TarEntry(
                path,
                kind,
                info.mode & 0o7777,
                uid,
                gid,
                mtime,
                size,
                link,
                uname,
                gname,
                info.devmajor,
                info.devminor,
                xattrs,
            )
