"""Records of verified files: what lets a blob store trust a file without hashing it again.

Whenever a file has been verified (its bytes hashed to its blob's digest), a record of
it is kept in ``<root>/verified/<alg>/<hex>``: one line per file, with the file's
device, inode, size, modification time and change time (``st_ctime``), as git's index
does.  A file whose ``stat`` matches one of its blob's records is known good; any other
is re-hashed before use (and recorded when it is good).

The change time is in the record because no program can choose it: writing to a file
sets it, and so does putting the modification time back with ``utime``.  (Linking and
unlinking set it too, which is one more reason OCI layouts get copies of the cache's
files, not hard links; see :mod:`derrick.layout.oci`.)  What a record cannot see: bytes
changed on the disk beneath the filesystem (media errors, writes to the raw device), a
clock set back, and, where file timestamps are coarse (Linux before 6.13, or a
filesystem without fine-grained timestamps), a write within the same clock tick, a few
milliseconds, as the verification; git's index has the same blind spots.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from derrick.digest import Digest, Verifier
from derrick.errors import DigestMismatchError
from derrick.manifest import Descriptor
from derrick.store.files import read_range

__all__ = ["RECORDS_KEPT", "Records", "Stamp", "hashes_to", "stamp"]

#: What identifies a verified file: device, inode, size, mtime_ns, ctime_ns.
Stamp = tuple[int, int, int, int, int]

#: Records kept per blob (the newest): one for the store's own file, the rest for copies.
RECORDS_KEPT = 32


def stamp(st: os.stat_result) -> Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def hashes_to(fd: int, desc: Descriptor) -> bool:
    """Whether the first ``desc.size`` bytes of the file ``fd`` are blob ``desc``."""
    verifier = Verifier(desc.digest, desc.size)
    for piece in read_range(fd, 0, desc.size):
        verifier.update(piece)
    try:
        verifier.verify()
    except DigestMismatchError:
        return False
    return True


class Records:
    """The records kept under ``root`` (``root/<alg>/<hex>``, one file per blob)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: Digest) -> Path:
        return self.root / digest.algorithm / digest.hex

    def stamps(self, digest: Digest) -> list[Stamp]:
        try:
            text = self.path(digest).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return []
        out: list[Stamp] = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) == 5 and all(f.isdigit() for f in fields):
                a, b, c, d, e = (int(f) for f in fields)
                out.append((a, b, c, d, e))
        return out

    def open_verified(self, path: Path, desc: Descriptor) -> int | None:
        """A read-only descriptor of ``path`` if it holds blob ``desc``, else None.

        True to a record, or re-hashed (and then recorded).  A file that changes while it
        is hashed is not trusted.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != desc.size:
                os.close(fd)
                return None
            if stamp(st) in self.stamps(desc.digest):
                return fd
            if hashes_to(fd, desc) and stamp(os.fstat(fd)) == stamp(st):
                self.add(desc.digest, st)
                return fd
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise

    def add(self, digest: Digest, st: os.stat_result) -> None:
        """Add the record of a verified file (replacing an older one of the same inode).

        Two processes recording at once may lose one record: that file is then only
        re-hashed once more.  A record that cannot be written is no error.
        """
        new = stamp(st)
        kept = [r for r in self.stamps(digest) if r[:2] != new[:2]]
        kept = [*kept, new][-RECORDS_KEPT:]
        path = self.path(digest)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{digest.hex[:16]}.", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="ascii") as f:
                    f.write("".join(" ".join(map(str, r)) + "\n" for r in kept))
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
