"""An image's flattened filesystem written as one tar: :func:`export_image`.

Two passes over the layers (each verified against its digest and diff_id, streamed, never
written to disk): the first (:func:`~derrick.images.flat.flatten`) decides which entry of
which layer survives at each path, the second streams those entries out.  Directories
come first; hard links follow the file they share content with, and a hard link whose
original path a later layer deleted carries the content itself.  Whiteouts are applied
and do not appear in the output.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from derrick.errors import DiskError, UsageError
from derrick.images.archivefile import check_target
from derrick.images.flat import FileInfo, Slot, flatten
from derrick.images.layers import Layer
from derrick.images.model import Progress
from derrick.images.view import Image
from derrick.layout.tarread import TarEntry
from derrick.oserrors import try_again, writing_failed

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer as Buffer

__all__ = ["ExportResult", "export_image", "write_flat_tar"]

_TAR_TYPES: dict[str, bytes] = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}
_RECORD = 20 * 512


def _header(entry: TarEntry, name: str, *, link_to: str | None = None) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if link_to is not None else _TAR_TYPES[entry.kind]
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.uname, info.gname = entry.uname, entry.gname
    info.mtime = entry.mtime
    info.size = entry.size if link_to is None and entry.kind == "file" else 0
    info.linkname = link_to if link_to is not None else entry.linkname
    info.devmajor, info.devminor = entry.devmajor, entry.devminor
    if entry.xattrs:
        info.pax_headers = {
            f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
            for k, v in entry.xattrs.items()
        }
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class _Out:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.n = 0

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.n += len(data)

    def pad(self) -> None:
        if self.n % 512:
            self.write(bytes(512 - self.n % 512))


@dataclass(frozen=True)
class ExportResult:
    destination: str
    entries: int
    bytes_written: int


def _groups(flat_listing: list[FileInfo]) -> tuple[list[FileInfo], dict[Slot, list[FileInfo]]]:
    """The directories, and for each content-bearing entry the surviving paths it makes
    (its own path first when it survives, hard links after it)."""
    groups: dict[Slot, list[FileInfo]] = {}
    dirs: list[FileInfo] = []
    for info in flat_listing:
        if info.kind == "dir":
            dirs.append(info)
        else:
            groups.setdefault(info.slot, []).append(info)
    for members in groups.values():
        members.sort(key=lambda m: (m.link_to is not None, m.path))
    return dirs, groups


def write_flat_tar(
    image: Image,
    out: BinaryIO,
    *,
    on_layer: Callable[[Layer], None] | None = None,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Write the flattened filesystem of ``image`` to ``out`` as a tar.

    Returns the number of entries and of bytes written.
    """
    dirs, groups = _groups(flatten(image, on_layer=on_layer, progress=progress).listing())
    w = _Out(out)
    count = 0
    for d in dirs:
        entry = d.entry or TarEntry(d.path, "dir", d.mode, d.uid, d.gid, d.mtime, 0, "")
        w.write(_header(entry, d.path))
        count += 1
    numbers = {slot[0] for slot in groups}
    needed = [layer for layer in image.filesystem_layers() if layer.number in numbers]
    with image.read_layers(needed) as reading:
        for layer in needed:
            with reading.tar(layer) as (reader, verifier):
                for seq, entry in enumerate(reader):
                    group = groups.get((layer.number, seq))
                    if not group:
                        continue
                    first = group[0].path
                    w.write(_header(entry, first))
                    if entry.kind == "file":
                        for piece in reader.data():
                            w.write(piece)
                        w.pad()
                    for m in group[1:]:
                        w.write(_header(entry, m.path, link_to=first))
                    count += len(group)
                reader.drain()
                verifier.verify()
    w.write(bytes(1024))
    if w.n % _RECORD:
        w.write(bytes(_RECORD - w.n % _RECORD))
    return count, w.n


def _disk_error(e: OSError, dest: Path) -> DiskError:
    again = try_again(e)
    return DiskError(
        writing_failed(e, str(dest)), errno=e.errno, hint=f"nothing is left behind: {again}"
    )


class _DestFile(io.FileIO):
    """The file being written: a failed write is a :class:`DiskError` naming ``dest``
    (an ``OSError`` while the layers are read is not about the destination)."""

    dest: Path

    def write(self, b: Buffer) -> int:
        try:
            return super().write(b)
        except OSError as e:
            raise _disk_error(e, self.dest) from None


@contextlib.contextmanager
def _atomic_file(dest: Path) -> Iterator[BinaryIO]:
    """A file written under a temporary name beside ``dest``, renamed to it when complete
    (and removed after an error).  Failing to write it is a :class:`DiskError`."""
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=parent)
    except OSError as e:
        raise _disk_error(e, dest) from None
    try:
        raw = _DestFile(fd, "wb")
        raw.dest = dest
        with io.BufferedWriter(raw, buffer_size=1 << 20) as f:
            yield f
        try:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o644 & ~mask)
            os.replace(tmp, dest)
        except OSError as e:
            raise _disk_error(e, dest) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def export_image(
    image: Image,
    dest: str | Path | BinaryIO,
    *,
    on_layer: Callable[[Layer], None] | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Write the flattened filesystem of ``image`` as one tar to ``dest``: a file (written
    under a temporary name and renamed when complete), or a binary stream the caller
    opened (flushed, not closed)."""
    if isinstance(dest, str) and dest == "-":
        raise UsageError(
            "'-' names no file: the tar goes to a stream only when the stream is given",
            hint="pass the binary stream to write to (e.g. sys.stdout.buffer)",
        )
    image.filesystem_layers()  # an artifact or another platform: refused before a byte
    if isinstance(dest, str | Path):
        check_target(Path(dest), str(dest))
        with _atomic_file(Path(dest)) as f:
            entries, size = write_flat_tar(image, f, on_layer=on_layer, progress=progress)
        return ExportResult(str(dest), entries, size)
    entries, size = write_flat_tar(image, dest, on_layer=on_layer, progress=progress)
    dest.flush()
    name = getattr(dest, "name", None)
    return ExportResult(name if isinstance(name, str) else "-", entries, size)
