"""An archive written to a file in one pass, its blobs filled in place, resumable.

:func:`lay_out` writes the whole tar at once: the small members as they are, and for
each blob its header and a hole of its exact size (``TarStreamWriter.add_hole``), which
costs no disk space until filled.  :class:`ArchiveFile` does that into a hidden partial
file beside the destination (``.NAME.derrick-partial``), fills each hole with ``pwrite``
as the blob's verified bytes arrive (several at once), and renames the file to its name
once every blob is in place.  A failed or killed write leaves the partial file and its
:class:`ResumeState` (``.NAME.derrick-partial.json``: where each blob's hole is and how
many of its bytes were written); the next run lays the same tar out over it, which leaves
those bytes where they are, re-hashes them and asks the source only for the rest.

An OS error (a full disk, say) becomes a :class:`~derrick.errors.DiskError` naming the
destination as the caller gave it and what is left behind to resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from derrick.digest import Digest
from derrick.errors import DerrickError, DigestMismatchError, DiskError, UsageError
from derrick.images.model import BlobFeed, Kept
from derrick.oserrors import reason, try_again, writing_failed
from derrick.store.files import CHUNK, Region, copy_range, lock_partial

__all__ = [
    "ArchiveFile",
    "Holes",
    "ResumeState",
    "check_regular",
    "check_target",
    "describe_os_error",
    "kept_hint",
    "lay_out",
]

#: Where the content of each blob left as a hole starts in the archive.
Holes = dict[Digest, int]


def describe_os_error(e: OSError) -> tuple[str, str]:
    """What to say of an OS error: its reason (``no space left on device``) and what to do."""
    return reason(e), try_again(e)


def kept_hint(kept: Sequence[str], files: int, again: str, *, plural: bool = False) -> str:
    """``A and B are kept: <again> to resume, or delete them`` (``files`` is how many)."""
    are = "are" if plural or len(kept) > 1 else "is"
    return (
        f"{' and '.join(kept)} {are} kept: {again} to resume, "
        f"or delete {'them' if files > 1 else 'it'}"
    )


class ResumeState:
    """What an interrupted archive write had put in place, kept beside the partial file.

    Saved every few dozen MiB and when the write fails, so a re-run re-hashes
    those bytes and asks the source only for the rest.
    """

    SAVE_EVERY = 32 * 1024 * 1024

    def __init__(self, path: Path, *, load: bool = True) -> None:
        self.path = path
        self.holes: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self._lock = threading.Lock()
        self._unsaved = 0
        if not load:
            return
        try:
            data = json.loads(path.read_text())
            self.holes = {str(k): int(v) for k, v in data.get("holes", {}).items()}
            self.done = {str(k): int(v) for k, v in data.get("done", {}).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            pass

    def resumable(self, digest: Digest, offset: int) -> int:
        """Bytes of ``digest`` already in place at ``offset``, from the last run."""
        if self.holes.get(str(digest)) != offset:
            return 0
        return self.done.get(str(digest), 0)

    def start(self, holes: dict[Digest, int], have: dict[Digest, int]) -> None:
        with self._lock:
            self.holes = {str(d): o for d, o in holes.items()}
            self.done = {str(d): have.get(d, 0) for d in holes}
        self.save()

    def kept(self, digest: Digest) -> int:
        """Bytes of ``digest`` in place now (as far as this state knows)."""
        with self._lock:
            return self.done.get(str(digest), 0)

    def progress(self, digest: Digest) -> Callable[[int], None]:
        key = str(digest)

        def written(count: int) -> None:
            with self._lock:
                self._unsaved += count - self.done.get(key, 0)
                self.done[key] = count
                due = self._unsaved >= self.SAVE_EVERY
                if due:
                    self._unsaved = 0
            if due:
                self.save()

        return written

    def forget(self, digest: Digest) -> None:
        with self._lock:
            self.done[str(digest)] = 0

    def save(self) -> None:
        with self._lock:
            data = json.dumps({"holes": self.holes, "done": self.done}).encode()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
            return
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
        # No room for a new file (a full disk): overwrite the last state in place.  A torn
        # write costs nothing but a download: kept bytes are re-hashed before any is used.
        with contextlib.suppress(OSError), open(self.path, "r+b") as f:
            f.write(data)
            f.truncate()

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


def lay_out(fd: int, write: Callable[[BinaryIO], Holes]) -> Holes:
    """Write a tar over the file ``fd`` from its start with ``write`` (which leaves holes and
    returns where they are), then cut the file to the tar's end.

    The layout of a given content is always the same, so writing it over an earlier partial
    file leaves the bytes already in its holes where they are.
    """
    with os.fdopen(os.dup(fd), "r+b") as out:
        holes = write(out)
        out.flush()
        end = out.tell()
    os.ftruncate(fd, end)
    return holes


def _read_back(region: Region, upto: int) -> Iterator[bytes]:
    """The first ``upto`` bytes of ``region`` (fewer if the file ends first)."""
    pos = region.base
    end = region.base + upto
    while pos < end and (data := os.pread(region.fd, min(CHUNK, end - pos), pos)):
        yield data
        pos += len(data)


class ArchiveFile:
    """The file ``target`` (named ``shown`` to users) written as described above.

    :meth:`begin` checks the destination, takes the partial file (waiting, under an
    exclusive ``flock``, while another writer has it) and lays the tar out; :meth:`put`
    fills one blob's hole (from worker threads); :meth:`commit` renames the finished file
    into place; :meth:`abort` keeps what a later run can resume from (or removes a partial
    file it created and never started), and :meth:`kept` says what that is.
    """

    def __init__(self, target: Path, shown: str) -> None:
        self.target = target
        self.shown = shown
        parent = target.parent if str(target.parent) else Path(".")
        self.part = parent / f".{target.name}.derrick-partial"
        self.state = ResumeState(parent / f".{target.name}.derrick-partial.json", load=False)
        self.holes: Holes = {}
        self._fd = -1
        self._created = self._started = False
        self._filled: set[Digest] = set()
        self._lock = threading.Lock()

    def begin(self, write: Callable[[BinaryIO], Holes]) -> None:
        check_target(self.target, self.shown)
        try:
            self.part.parent.mkdir(parents=True, exist_ok=True)
            self._fd, self._created = lock_partial(self.part)
            self.state = ResumeState(self.state.path)  # read under the lock
            self.holes = lay_out(self._fd, write)
            have = {d: self.state.resumable(d, off) for d, off in self.holes.items()}
            self.state.start(self.holes, have)
            self._started = True
        except OSError as e:
            raise self.disk_error(e) from None

    def put(self, feed: BlobFeed) -> None:
        desc = feed.desc
        offset = self.holes.get(desc.digest)
        if offset is None:
            raise DerrickError(f"blob {desc.digest} has no place in {self.shown}")
        region = Region(self._fd, offset, desc.size)
        try:
            if feed.local is not None:
                self._copy(feed.local, region)
                self.state.progress(desc.digest)(desc.size)
            else:
                self._fill(feed, region)
        except OSError as e:
            raise self.disk_error(e) from None
        with self._lock:
            self._filled.add(desc.digest)

    def _copy(self, local: Path, region: Region) -> None:
        """Copy a verified local file into the hole (in the kernel where it can)."""
        src = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(src).st_size != region.size:
                raise DerrickError(f"{local} is not {region.size} bytes long")
            copy_range(Region(src, 0, region.size), region, 0, region.size)
        finally:
            os.close(src)

    def _fill(self, feed: BlobFeed, region: Region) -> None:
        """Stream the blob into its hole, after re-hashing what an earlier run left there.

        Kept bytes that turn out wrong cost one more pass from the first byte.
        """
        digest = feed.desc.digest
        written = self.state.progress(digest)
        have = min(self.state.kept(digest), region.size)
        for start in (have, 0) if have else (0,):
            try:
                pos = start
                prefix = _read_back(region, start) if start else None
                for chunk in feed.chunks(start, prefix):
                    region.write_at(pos, chunk)
                    pos += len(chunk)
                    written(pos)
                return
            except DigestMismatchError:
                self.state.forget(digest)
                if not start:
                    raise

    def commit(self) -> None:
        missing = [str(d) for d in self.holes if d not in self._filled]
        if missing:
            raise DerrickError(f"{self.shown}: blobs never written: {', '.join(missing)}")
        # The state goes first (the lock is still held): a writer that takes the next
        # partial file under this name must not find it.  abort() saves it again.
        self.state.remove()
        try:
            os.replace(self.part, self.target)
        except OSError as e:
            raise self.disk_error(e) from None
        self._started = False
        self._close()

    def abort(self) -> None:
        if self._fd < 0:
            return
        if self._started:
            self.state.save()
        elif self._created:
            with contextlib.suppress(OSError):
                self.part.unlink()
        self._close()

    def kept(self) -> list[Kept]:
        """What an abort left for a later run: the partial file (and its resume state)."""
        if self._fd >= 0 or not (self._started or not self._created) or not self.part.exists():
            return []
        if self.state.path.exists():
            return [(f"{self.part} (and its .json resume state)", 2)]
        return [(str(self.part), 1)]

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def disk_error(self, e: OSError) -> DiskError:
        """The error to raise for ``e``: it names the destination and what is kept."""
        _, again = describe_os_error(e)
        kept = self._started or not self._created
        if kept and self.part.exists() and self.state.path.exists():
            hint = kept_hint([f"{self.part} (and its .json resume state)"], 2, again)
        elif kept and self.part.exists():
            hint = kept_hint([str(self.part)], 1, again)
        else:
            hint = f"nothing is left behind: {again}"
        return DiskError(writing_failed(e, self.shown), errno=e.errno, hint=hint)


def check_target(target: Path, shown: str) -> None:
    """Refuse a directory (or a link to one) as the destination of an archive file, and a
    file that is not a tar archive (it is not derrick's to replace), before anything is
    made beside it."""
    if target.is_dir():
        raise UsageError(
            f"{shown} is a directory, not an archive file",
            hint="name a file to write the archive to, or the directory as an OCI layout",
        )
    check_regular(target, shown)
    if not _replaceable(target):
        raise UsageError(
            f"{shown} exists and is not a tar archive",
            hint="derrick does not overwrite it: delete it or name another file",
        )


def check_regular(target: Path, shown: str) -> None:
    """Refuse an output path that exists and is not a regular file (a device such as
    /dev/null, a FIFO, or a link to one): the file written beside it and renamed into
    place would replace it."""
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return  # not there (or a dangling link): writing it says what is wrong
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise UsageError(
            f"{shown} exists and is not a regular file",
            hint="it would be replaced by the file written beside it: name a regular file, "
            "or write to standard output",
        )


def _replaceable(target: Path) -> bool:
    """Whether an archive may be written over the regular file ``target``: it is not
    there, it is empty, or it begins as a tar does."""
    try:
        with open(target, "rb") as f:
            head = f.read(tarfile.BLOCKSIZE)
    except OSError:
        return True  # not there, or not readable: writing it says what is wrong
    if not head or head == bytes(len(head)):
        return True  # empty, or zeros (an empty archive)
    if len(head) < tarfile.BLOCKSIZE:
        return False
    try:
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True
