"""A sequential tar writer for streaming archives to any binary file object.

:class:`TarStreamWriter` writes POSIX ustar headers (with a PAX extended header
only when a name or size does not fit ustar) and never seeks, so the output can
be a pipe or standard output.  Headers are deterministic: regular files are
mode 0644, directories 0755, owner 0/0 with empty user and group names, and
every member carries the same modification time.

Member data is streamed in large chunks and never held in memory as a whole.
When both the source and the output are real file descriptors the kernel copies
the data (``os.sendfile``); otherwise a reusable 1 MiB buffer is used.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from derrick.errors import LayoutError

BLOCK_SIZE = 512
RECORD_SIZE = 20 * BLOCK_SIZE
CHUNK_SIZE = 1 << 20

_FILE_MODE = 0o644
_DIR_MODE = 0o755
_ZEROS = bytes(RECORD_SIZE)

#: errno values that mean "sendfile cannot be used between these descriptors".
_NO_SENDFILE = frozenset(
    {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF, errno.EXDEV}
)


def _check_name(name: str) -> str:
    """Validate a member name: relative, normalised, no ``..`` components."""
    if not name or name.startswith("/") or "\x00" in name:
        raise LayoutError(f"invalid tar member name {name!r}")
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise LayoutError(f"invalid tar member name {name!r}")
    return posixpath.join(*parts)


class TarStreamWriter:
    """Write a tar archive sequentially to ``out`` (which is not closed)."""

    def __init__(self, out: BinaryIO, *, mtime: int = 0, use_sendfile: bool = True) -> None:
        self._out = out
        self._mtime = int(mtime)
        self._offset = 0
        self._closed = False
        self._use_sendfile = use_sendfile
        self._out_fd: int | None = None
        self._buffer: bytearray | None = None

    # -- context manager -------------------------------------------------

    def __enter__(self) -> TarStreamWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()

    # -- public API ------------------------------------------------------

    @property
    def offset(self) -> int:
        """Bytes written so far."""
        return self._offset

    def add_dir(self, name: str) -> None:
        """Add a directory entry (written with a trailing slash)."""
        info = self._info(name, tarfile.DIRTYPE, _DIR_MODE, 0)
        self._write(self._header(info))

    def add_bytes(self, name: str, data: bytes) -> None:
        """Add a regular file whose content is ``data``."""
        info = self._info(name, tarfile.REGTYPE, _FILE_MODE, len(data))
        self._write(self._header(info))
        if data:
            self._write(data)
        self._pad(len(data))

    def add_stream(self, name: str, size: int, chunks: Iterable[bytes | memoryview]) -> None:
        """Add a regular file of ``size`` bytes whose content arrives as ``chunks``.

        Raises :class:`LayoutError` if the chunks add up to a different size; the
        output is then incomplete and must be discarded.
        """
        info = self._info(name, tarfile.REGTYPE, _FILE_MODE, size)
        self._write(self._header(info))
        n = 0
        for chunk in chunks:
            if not chunk:
                continue
            n += len(chunk)
            if n > size:
                raise LayoutError(f"tar member {name}: content is larger than {size} bytes")
            self._write(chunk)
        if n != size:
            raise LayoutError(f"tar member {name}: content has {n} bytes, expected {size}")
        self._pad(size)

    def add_file(self, name: str, path: Path | str, size: int | None = None) -> None:
        """Add the regular file at ``path``; ``size``, when given, must match it."""
        with open(path, "rb", buffering=0) as src:
            st = os.fstat(src.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise LayoutError(f"{path} is not a regular file")
            if size is None:
                size = st.st_size
            elif st.st_size != size:
                raise LayoutError(
                    f"{path} has {st.st_size} bytes, expected {size}",
                    hint="the file changed or is not the blob it was expected to be",
                )
            info = self._info(name, tarfile.REGTYPE, _FILE_MODE, size)
            self._write(self._header(info))
            self._copy_fd(src, size, name)
        self._pad(size)

    def add_hole(self, name: str, size: int) -> int:
        """Add a regular file of ``size`` bytes whose content is written later.

        The header is written and ``size`` bytes are skipped; the returned offset
        is where the content goes (the caller fills it, e.g. with ``os.pwrite``).
        Needs a seekable output.
        """
        info = self._info(name, tarfile.REGTYPE, _FILE_MODE, size)
        self._write(self._header(info))
        start = self._offset
        if size:
            try:
                self._out.seek(size, os.SEEK_CUR)
            except (OSError, ValueError, io.UnsupportedOperation) as e:
                raise LayoutError(
                    f"tar member {name}: cannot leave room in an output that cannot seek ({e})"
                ) from None
            self._offset += size
        self._pad(size)
        return start

    def close(self) -> None:
        """Write the end-of-archive marker and pad to a whole record; flush ``out``."""
        if self._closed:
            return
        self._closed = True
        end = self._offset + 2 * BLOCK_SIZE
        end += -end % RECORD_SIZE
        while self._offset < end:
            self._write(_ZEROS[: min(RECORD_SIZE, end - self._offset)])
        self._out.flush()

    # -- internals -------------------------------------------------------

    def _info(self, name: str, typ: bytes, mode: int, size: int) -> tarfile.TarInfo:
        if self._closed:
            raise LayoutError("the tar archive is already closed")
        if size < 0:
            raise LayoutError(f"tar member {name}: negative size")
        info = tarfile.TarInfo(_check_name(name))
        info.type = typ
        info.mode = mode
        info.size = size
        info.mtime = self._mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    @staticmethod
    def _header(info: tarfile.TarInfo) -> bytes:
        return info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if n:
            self._out.write(data)
            self._offset += n

    def _pad(self, size: int) -> None:
        rem = size % BLOCK_SIZE
        if rem:
            self._write(_ZEROS[: BLOCK_SIZE - rem])

    def _output_fd(self) -> int | None:
        """The output's file descriptor if sendfile may be used on it, else None."""
        if not self._use_sendfile or not hasattr(os, "sendfile"):
            return None
        if self._out_fd is None:
            try:
                fd = self._out.fileno()
            except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
                self._use_sendfile = False
                return None
            try:
                mode = os.fstat(fd).st_mode
            except OSError:
                self._use_sendfile = False
                return None
            if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
                self._use_sendfile = False
                return None
            self._out_fd = fd
        return self._out_fd

    def _copy_fd(self, src: io.FileIO, size: int, name: str) -> None:
        done = 0
        out_fd = self._output_fd()
        if out_fd is not None and size > 0:
            self._out.flush()
            try:
                done = self._sendfile(out_fd, src.fileno(), size)
            finally:
                self._offset += done
                self._resync()
        if done < size:
            self._copy_loop(src, done, size, name)

    def _sendfile(self, out_fd: int, in_fd: int, size: int) -> int:
        done = 0
        while done < size:
            try:
                sent = os.sendfile(out_fd, in_fd, done, min(size - done, 1 << 30))
            except OSError as e:
                if e.errno in _NO_SENDFILE:
                    self._use_sendfile = False
                    break
                raise
            if sent == 0:
                break  # the source is shorter than announced; the loop reports it
            done += sent
        return done

    def _resync(self) -> None:
        """Bring a seekable buffered output's idea of its position up to date."""
        try:
            if self._out.seekable():
                fd = self._out_fd
                if fd is not None:
                    self._out.seek(os.lseek(fd, 0, os.SEEK_CUR))
        except (OSError, ValueError):
            pass

    def _copy_loop(self, src: io.FileIO, start: int, size: int, name: str) -> None:
        if self._buffer is None:
            self._buffer = bytearray(CHUNK_SIZE)
        view = memoryview(self._buffer)
        src.seek(start)
        left = size - start
        while left > 0:
            n = src.readinto(view[: min(left, CHUNK_SIZE)])
            if not n:
                raise LayoutError(
                    f"tar member {name}: source ended {left} bytes early",
                    hint="the file changed while it was being archived",
                )
            self._write(view[:n])
            left -= n
