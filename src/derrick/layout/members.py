"""The files of an image source by path: a directory's, or the members of a tar file.

A tar is never extracted: its members are indexed once (:class:`TarStore`) and each is read
by seeking into the file.  Member names that are absolute or contain ``..``, links that
point outside the archive, and device or FIFO members make the archive unsafe and are
refused; links to other members inside it (which ``docker save`` and containers tooling
write for repeated layers) are followed when a file is opened.  A compressed file is named
for what it is.  Reads are bounded by the size the index says, and verified against a
digest when one is given (:func:`bounded_reader`).
"""

from __future__ import annotations

import io
import posixpath
import stat
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from derrick.digest import Verifier
from derrick.errors import DerrickError, LayoutError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "READ_BUFFER",
    "DirStore",
    "FileStore",
    "TarStore",
    "bounded_reader",
    "normalize_path",
]

READ_BUFFER = 1 << 20
_MAX_LINK_HOPS = 16

_COMPRESSION_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
)


# -- member name safety --------------------------------------------------------


def _normalize_member(name: str, archive: str) -> str:
    """Normalise a member name; refuse absolute names and ``..`` components."""
    if name.startswith("/") or "\x00" in name:
        raise LayoutError(f"{archive} is unsafe: member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayoutError(f"{archive} is unsafe: member {name!r} contains '..'")
    return "/".join(parts)


def normalize_path(name: str) -> str | None:
    """Normalise a path named in manifest.json; None if it leaves the archive."""
    if name.startswith("/"):
        return None
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or norm == ".":
        return None
    return norm


# -- verified reading ----------------------------------------------------------


class _VerifyingReader(io.RawIOBase):
    """Reads exactly ``size`` bytes of ``f`` and verifies them at the end."""

    def __init__(self, f: io.FileIO, size: int, verifier: Verifier | None) -> None:
        super().__init__()
        self._f = f
        self._left = size
        self._verifier = verifier
        self._error: DerrickError | None = None

    def readable(self) -> bool:
        return True

    def _finish(self) -> None:
        if self._verifier is not None:
            v, self._verifier = self._verifier, None
            try:
                v.verify()
            except DerrickError as e:
                self._error = e
                raise

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self._error is not None:
            raise self._error
        view = memoryview(buffer).cast("B")
        if self._left <= 0:
            self._finish()
            return 0
        if not len(view):
            return 0
        n = self._f.readinto(view[: min(len(view), self._left)])
        if not n:
            what = self._verifier.what if self._verifier else "file"
            self._error = LayoutError(
                f"{what} ended {self._left} bytes early; the file is truncated"
            )
            raise self._error
        if self._verifier is not None:
            self._verifier.update(view[:n])
        self._left -= n
        if self._left == 0:
            self._finish()
        return n

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def bounded_reader(f: io.FileIO, size: int, verifier: Verifier | None) -> BinaryIO:
    """``size`` bytes of ``f``, buffered; checked by ``verifier`` at the end when given."""
    return io.BufferedReader(_VerifyingReader(f, size, verifier), READ_BUFFER)


# -- storage backends ----------------------------------------------------------


class FileStore:
    """Files of an image source, by archive-relative path."""

    description: str

    def size(self, name: str) -> int | None:
        raise NotImplementedError

    def open(self, name: str) -> io.FileIO:
        """Open the raw file (positioned at its start); the caller bounds reads by size."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class DirStore(FileStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self._real_root = root.resolve()
        self.description = f"the OCI layout {root}"

    def _path(self, name: str) -> Path | None:
        norm = normalize_path(name)
        if norm is None:
            return None
        path = self.root / norm
        try:
            if not path.resolve().is_relative_to(self._real_root):
                return None
        except OSError:
            return None
        return path

    def size(self, name: str) -> int | None:
        path = self._path(name)
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def open(self, name: str) -> io.FileIO:
        path = self._path(name)
        if path is None:
            raise LayoutError(f"{name} is not inside {self.description}")
        try:
            return io.FileIO(path, "rb")
        except OSError as e:
            raise LayoutError(f"cannot open {path}: {e.strerror}") from None


class TarStore(FileStore):
    """Members of a tar file, indexed once, read by seeking."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"the archive {path}"
        self.members: dict[str, tuple[int, int]] = {}  # name -> (data offset, size)
        self.links: dict[str, str] = {}  # name -> normalised target member name
        self._index()

    def _index(self) -> None:
        try:
            with open(self.path, "rb") as f:
                self._scan(f, str(self.path))
        except OSError as e:
            raise LayoutError(f"cannot read {self.path}: {e.strerror or e}") from None

    def _scan(self, f: BinaryIO, where: str) -> None:
        head = f.read(8)
        for magic, kind in _COMPRESSION_MAGIC:
            if head.startswith(magic):
                raise LayoutError(
                    f"{where} is a {kind}-compressed file, not a tar archive",
                    hint="decompress it first",
                )
        f.seek(0)
        try:
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    self._add(m, where)
                end = tf.offset  # where the next header would begin
        except tarfile.ReadError as e:
            if str(e) == "unexpected end of data":  # a member's data goes past the end
                raise _truncated(where) from None
            raise LayoutError(f"{where} is not a valid tar archive: {e}") from None
        except tarfile.TarError as e:
            raise LayoutError(f"{where} is not a valid tar archive: {e}") from None
        # tarfile ends the listing quietly at a header cut short, or at one that is not a
        # header at all: the archive would look complete, less the members after it.
        f.seek(end)
        tail = f.read(tarfile.BLOCKSIZE)
        if any(tail):
            if len(tail) < tarfile.BLOCKSIZE:
                raise _truncated(where)
            raise LayoutError(
                f"{where} is damaged: what follows its last readable member is not a tar header",
                hint="write or download it again",
            )

    def _add(self, m: tarfile.TarInfo, where: str) -> None:
        name = _normalize_member(m.name, where)
        if m.isdir() or not name:
            return
        if m.issparse():
            raise LayoutError(f"{where}: member {m.name!r} is a sparse file, which is unsupported")
        if m.isreg():
            self.members[name] = (m.offset_data, m.size)
            self.links.pop(name, None)
            return
        if m.issym() or m.islnk():
            target = m.linkname
            if target.startswith("/"):
                raise LayoutError(
                    f"{where} is unsafe: link {m.name!r} points to the absolute path {target!r}"
                )
            if m.issym():
                target = posixpath.join(posixpath.dirname(name), target)
            norm = posixpath.normpath(target) if target else ""
            if not norm or norm == "." or norm == ".." or norm.startswith("../"):
                raise LayoutError(
                    f"{where} is unsafe: link {m.name!r} points outside the archive "
                    f"({m.linkname!r})"
                )
            self.links[name] = norm
            self.members.pop(name, None)
            return
        raise LayoutError(
            f"{where} is unsafe: member {m.name!r} is not a regular file, directory or link"
        )

    def _lookup(self, name: str) -> tuple[int, int] | None:
        norm = normalize_path(name)
        for _ in range(_MAX_LINK_HOPS):
            if norm is None:
                return None
            found = self.members.get(norm)
            if found is not None:
                return found
            norm = self.links.get(norm)
        return None

    def size(self, name: str) -> int | None:
        found = self._lookup(name)
        return None if found is None else found[1]

    def open(self, name: str) -> io.FileIO:
        found = self._lookup(name)
        if found is None:
            raise LayoutError(f"{name} is missing from {self.description}")
        f = io.FileIO(self.path, "rb")
        try:
            f.seek(found[0])
        except BaseException:
            f.close()
            raise
        return f

    def has(self, name: str) -> bool:
        return self._lookup(name) is not None


def _truncated(where: str) -> LayoutError:
    return LayoutError(
        f"{where} is truncated: it ends inside a member",
        hint="the file is incomplete; write or download it again",
    )
