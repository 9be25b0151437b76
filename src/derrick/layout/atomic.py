"""Files of a layout that appear whole or not at all: each is written under a temporary
name in its directory and renamed into place (:func:`replacing`).

A blob added from a file elsewhere is a copy (:func:`clone_or_copy`): a reflink where the
filesystem can clone (btrfs, XFS, bcachefs: the data is shared copy-on-write, nothing is
copied), else a copy made in the kernel (``copy_file_range``).  Never a hard link: a write
into a linked file would change the other file too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from derrick.digest import Digest, Verifier
from derrick.errors import LayoutError
from derrick.store.files import Region, copy_range

__all__ = ["FICLONE", "atomic_write", "clone_or_copy", "fsync_dir", "read_verified", "replacing"]

#: ioctl that makes a file share another's data, copy-on-write (linux/fs.h ``FICLONE``).
FICLONE = 0x40049409


@contextlib.contextmanager
def replacing(dest: Path, prefix: str) -> Iterator[int]:
    """A new, empty file beside ``dest`` under a temporary name (``.PREFIX.*.tmp``), whose
    descriptor the block writes through; when the block ends the file is closed and
    renamed to ``dest`` (mode 0644), and when it fails, closed and removed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{prefix}.", suffix=".tmp", dir=dest.parent)
    try:
        try:
            yield fd
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync_dir(path: Path) -> None:
    """Have the directory's entries (a rename into it) reach the disk, as far as it can."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def clone_or_copy(src_fd: int, dst_fd: int) -> None:
    """Make the (empty) file ``dst_fd`` a copy of ``src_fd``: a reflink if possible."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return
    except OSError:
        pass  # no reflinks here (or another filesystem): copy the bytes
    size = os.fstat(src_fd).st_size
    copy_range(Region(src_fd, 0, size), Region(dst_fd, 0, size), 0, size)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a synced temporary file and ``os.replace``."""
    with replacing(path, path.name) as fd, os.fdopen(fd, "wb", closefd=False) as f:
        f.write(data)
        f.flush()
        os.fsync(fd)
    fsync_dir(path.parent)


def read_verified(f: BinaryIO, digest: Digest, max_size: int, what: str = "blob") -> bytes:
    """Read all of ``f`` (at most ``max_size`` bytes) and check it against ``digest``."""
    data = f.read(max_size + 1)
    if len(data) > max_size:
        raise LayoutError(f"{what} {digest} is larger than the {max_size} byte limit")
    v = Verifier(digest, what=what)
    v.update(data)
    v.verify()
    return data
