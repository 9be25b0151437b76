"""Bytes of a blob in a file: regions of files, copies between them, reading them back.

A :class:`Region` is where a blob's bytes go: a file descriptor and the offset of the
blob's first byte (0 for a file of its own, the member's data offset for a layer inside
an archive).  A :class:`Tee` of regions receives the same bytes in each, so one download
fills two places (an archive's hole and the blob cache's partial file).
:func:`copy_range` copies bytes between regions in the kernel where it can;
:func:`read_range` reads bytes of a file back as chunks, e.g. to hash what an
interrupted write left before it is resumed.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from derrick.digest import Verifier

__all__ = ["CHUNK", "Region", "Sink", "Tee", "copy_range", "lock_partial", "read_range"]

#: Bytes read or written at once.
CHUNK = 1 << 20


class Sink(Protocol):
    """Where a download's bytes go."""

    def write_at(self, pos: int, data: bytes | memoryview) -> None: ...

    def rehash(self, verifier: Verifier, upto: int) -> int: ...


def read_range(fd: int, start: int, end: int, chunk: int = CHUNK) -> Iterator[memoryview]:
    """Bytes ``start`` to ``end`` of the file ``fd``, in chunks (a file that ends first ends
    the iteration early).  Each chunk is a view of a buffer reused for the next one."""
    buf = bytearray(min(chunk, max(end - start, 0)) or 1)
    view = memoryview(buf)
    pos = start
    while pos < end:
        n = os.preadv(fd, [view[: min(len(view), end - pos)]], pos)
        if n <= 0:
            return
        yield view[:n]
        pos += n


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
        done = 0
        for piece in read_range(self.fd, self.base, self.base + upto):
            verifier.update(piece)
            done += len(piece)
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
    for piece in read_range(src.fd, src.base + pos, src.base + end):
        dst.write_at(pos, piece)
        pos += len(piece)
    if pos < end:
        raise OSError(errno.EIO, f"{end - pos} bytes missing from the source file")


def lock_partial(path: Path, mode: int = 0o666) -> tuple[int, bool]:
    """Open the partial file ``path`` (made if need be, with ``mode`` less the umask) holding an
    exclusive ``flock`` on it, waiting while another writer holds it; the descriptor and
    whether this call made the file.

    A writer that finished meanwhile renamed the file it locked into place, so once the
    lock is had the path is looked at again (and a new file made when it is gone).
    """
    while True:
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                return fd, created and st.st_size == 0
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
