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
from derrick.layout.tarheader import Fields, Header, apply_records, parse_pax, read_header

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
            info = read_header(block, what, self.entries)
            if info.size < 0:
                raise LayoutError(f"{what}: tar header with a negative size")
            self._left, self._pad = info.size, -info.size % BLOCK
            typ = info.type
            if typ in _META_TYPES:
                data = self.read_data()
                if typ in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                    pax.update(parse_pax(data, what))
                elif typ == tarfile.XGLTYPE:
                    global_pax.update(parse_pax(data, what))
                else:
                    text = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    if typ == tarfile.GNUTYPE_LONGNAME:
                        long_name = text
                    else:
                        long_link = text
                continue
            records = {**global_pax, **pax} if global_pax else pax
            fields = apply_records(info, records, long_name, long_link, what)
            pax = {}
            long_name = long_link = None
            entry = self._entry(fields, info)
            if entry is not None:
                self.entries += 1
                yield entry

    def _entry(self, f: Fields, info: Header | tarfile.TarInfo) -> TarEntry | None:
        """The entry a member makes (None for a type skipped); what is left to read of it
        is set from its size."""
        what = self.what
        self._left, self._pad = f.size, -f.size % BLOCK
        if f.type == tarfile.GNUTYPE_SPARSE:
            raise LayoutError(
                f"{what}: entry {f.name!r} is a sparse file, which derrick does not unpack"
            )
        kind = _KINDS.get(f.type)
        if kind is None:
            self.skipped.append(f.name)
            log.debug("%s: skipping tar entry %r of unknown type %r", what, f.name, f.type)
            return None
        if kind == "file" and f.type == tarfile.AREGTYPE and f.name.endswith("/"):
            kind = "dir"
        size = f.size
        if kind != "file":
            self._left = self._pad = 0  # header-only types carry no data
            size = 0
        link = f.link
        if kind == "hardlink":
            link = clean_path(link, what)
            if not link:
                raise LayoutError(f"{what}: hard link {f.name!r} points to the root directory")
        return TarEntry(
            clean_path(f.name, what),
            kind,
            info.mode & 0o7777,
            f.uid,
            f.gid,
            f.mtime,
            size,
            link,
            f.uname,
            f.gname,
            info.devmajor,
            info.devminor,
            f.xattrs,
        )
