"""derrick's local content-addressed blob cache, shared by every pull.

Blobs live at ``<root>/blobs/<alg>/<hex>`` only once verified.  A download in
progress is ``<hex>.partial``; an interrupted one is resumed with an HTTP
``Range`` request from where it stopped, re-hashing the bytes already there
first.  An advisory lock (``flock``) on the partial file keeps two processes
from writing the same blob: the second waits, then takes the first one's
result.  The lock is also held to drop a damaged blob, so a blob another
process has just downloaded is never removed by mistake.

Nothing is trusted on its name and size alone.  Whenever a file has been
verified (its bytes hashed to the blob's digest), the cache keeps a record of
it in ``<root>/verified/<alg>/<hex>``: one line per file, with the file's
device, inode, size, modification time and change time (``st_ctime``), as
git's index does.  Records are kept for the cache's own file and for the
copies pulls place in OCI layouts.  A file whose ``stat`` matches one of its
blob's records is known good; any other is re-hashed before use (and recorded
when it is good).  A cached blob that fails is removed and downloaded again.

The change time is in the record because no program can choose it: writing to
a file sets it, and so does putting the modification time back with
``utime``.  (Linking and unlinking set it too, which is one more reason OCI
layouts get copies of the cache's files, not hard links; see
:mod:`derrick.layout.oci`.)  What a record cannot see: bytes changed on the
disk beneath the filesystem (media errors, writes to the raw device), a clock
set back, and, where file timestamps are coarse (Linux before 6.13, or a
filesystem without fine-grained timestamps), a write within the same clock
tick, a few milliseconds, as the verification; git's index has the same blind
spots.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
import threading
from pathlib import Path

from derrick.digest import Digest, Verifier
from derrick.download import Progress, Region, Tee, copy_range, download
from derrick.errors import DigestMismatchError
from derrick.manifest import Descriptor
from derrick.reference import Reference
from derrick.registry import RegistryClient

#: What identifies a verified file: device, inode, size, mtime_ns, ctime_ns.
Stamp = tuple[int, int, int, int, int]

#: Records kept per blob (the newest): one for the cache's file, the rest for copies.
RECORDS_KEPT = 32


def default_cache_dir() -> Path:
    env = os.environ.get("DERRICK_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "derrick"


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hashes_to(fd: int, desc: Descriptor) -> bool:
    verifier = Verifier(desc.digest, desc.size)
    Region(fd, 0, desc.size).rehash(verifier, desc.size)
    try:
        verifier.verify()
    except DigestMismatchError:
        return False
    return True


class BlobCache:
    """A directory of verified blobs, filled from a registry on demand."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_cache_dir()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def partial_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / f"{digest.hex}.partial"

    def record_path(self, digest: Digest) -> Path:
        return self.root / "verified" / digest.algorithm / digest.hex

    # -- knowing a file is good ------------------------------------------------

    def has(self, desc: Descriptor) -> bool:
        """Whether the cache holds blob ``desc``, known good (see :meth:`lookup`)."""
        return self.lookup(desc) is not None

    def lookup(self, desc: Descriptor) -> Path | None:
        """The path of blob ``desc`` if the cache holds it and it is good, else None.

        A damaged file is left in place here; the next fetch of the blob drops
        it and downloads the blob again.
        """
        path = self.path(desc.digest)
        return path if self.verify_file(path, desc) else None

    def verify_file(self, path: Path, desc: Descriptor) -> bool:
        """Whether the file at ``path`` holds blob ``desc``.

        True if its ``stat`` matches a record of the blob; otherwise it is
        re-hashed, and recorded when it matches.  False for a missing file.
        """
        fd = self._open_verified(path, desc)
        if fd is None:
            return False
        os.close(fd)
        return True

    def remember(self, path: Path, desc: Descriptor) -> None:
        """Record the file at ``path`` as holding ``desc``: a copy just made of a good file."""
        with contextlib.suppress(OSError):
            st = os.stat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size == desc.size:
                self._remember(desc.digest, st)

    def _open_verified(self, path: Path, desc: Descriptor) -> int | None:
        """A read-only descriptor of ``path`` if it holds blob ``desc``, else None."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != desc.size:
                os.close(fd)
                return None
            if _stamp(st) in self._records(desc.digest):
                return fd
            # Not known: hash it.  A file that changes meanwhile is not trusted.
            if _hashes_to(fd, desc) and _stamp(os.fstat(fd)) == _stamp(st):
                self._remember(desc.digest, st)
                return fd
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise

    def _records(self, digest: Digest) -> set[Stamp]:
        return set(self._read_records(digest))

    def _read_records(self, digest: Digest) -> list[Stamp]:
        try:
            text = self.record_path(digest).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return []
        out: list[Stamp] = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) == 5 and all(f.isdigit() for f in fields):
                a, b, c, d, e = (int(f) for f in fields)
                out.append((a, b, c, d, e))
        return out

    def _remember(self, digest: Digest, st: os.stat_result) -> None:
        """Add the record of a verified file (replacing an older one of the same inode).

        Two processes recording at once may lose one record: that file is then
        only re-hashed once more.  A record that cannot be written is no error.
        """
        new = _stamp(st)
        kept = [r for r in self._read_records(digest) if r[:2] != new[:2]]
        kept = [*kept, new][-RECORDS_KEPT:]
        path = self.record_path(digest)
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

    # -- filling the cache -------------------------------------------------------

    def _thread_lock(self, digest: Digest) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(str(digest), threading.Lock())

    def fetch(
        self,
        client: RegistryClient,
        ref: Reference,
        desc: Descriptor,
        *,
        progress: Progress | None = None,
        cancelled: threading.Event | None = None,
    ) -> Path:
        """The path of the verified blob, downloading (or resuming) it if needed."""
        return self.fetch_counted(client, ref, desc, progress=progress, cancelled=cancelled)[0]

    def fetch_counted(
        self,
        client: RegistryClient,
        ref: Reference,
        desc: Descriptor,
        *,
        progress: Progress | None = None,
        cancelled: threading.Event | None = None,
    ) -> tuple[Path, int]:
        """Like :meth:`fetch`, with the count of bytes received from the registry."""
        final = self.path(desc.digest)
        with self._thread_lock(desc.digest):
            fd = self._lock_partial(desc)
            if fd is None:
                if progress:
                    progress(desc.size)
                return final, 0
            try:
                have = os.fstat(fd).st_size
                if have > desc.size:
                    os.ftruncate(fd, 0)
                    have = 0
                received = self._download(
                    fd, client, ref, desc, Region(fd, 0, desc.size), have, progress, cancelled
                )
            finally:
                os.close(fd)  # also releases the lock
            return final, received

    def fetch_into(
        self,
        client: RegistryClient,
        ref: Reference,
        desc: Descriptor,
        region: Region,
        *,
        have: int = 0,
        progress: Progress | None = None,
        cancelled: threading.Event | None = None,
        written: Progress | None = None,
    ) -> int:
        """Fill ``region`` (a hole in an archive) with blob ``desc``, and the cache with it.

        A blob the cache holds is copied from there.  Otherwise each chunk as it
        arrives is written both into ``region`` and into the cache's partial
        file, and the blob enters the cache when its digest matches: one
        download for both.  ``have`` bytes of ``region`` come from an earlier
        attempt; the partial file may hold more, which are then used too.
        ``written`` is told the count of bytes in place (for resume state).
        Returns the count of bytes received from the registry.
        """
        with self._thread_lock(desc.digest):
            while True:
                fd = self._lock_partial(desc)
                if fd is not None:
                    break
                src = self._open_verified(self.path(desc.digest), desc)
                if src is None:  # damaged since it was looked at: drop it, download it
                    continue
                try:
                    copy_range(Region(src, 0, desc.size), region, 0, desc.size)
                finally:
                    os.close(src)
                if progress:
                    progress(desc.size)
                if written:
                    written(desc.size)
                return 0
            try:
                cached = Region(fd, 0, desc.size)
                in_part = os.fstat(fd).st_size
                if in_part > desc.size:
                    os.ftruncate(fd, 0)
                    in_part = 0
                have = min(max(have, 0), desc.size)
                # Both places start with the same bytes: the longer run is copied over
                # the other, and only the rest is downloaded.
                if in_part > have:
                    copy_range(cached, region, 0, in_part)
                    have = in_part
                elif have:
                    copy_range(region, cached, 0, have)
                return self._download(
                    fd,
                    client,
                    ref,
                    desc,
                    Tee(region, cached),
                    have,
                    progress,
                    cancelled,
                    written,
                )
            finally:
                os.close(fd)

    def _download(
        self,
        fd: int,
        client: RegistryClient,
        ref: Reference,
        desc: Descriptor,
        sink: Region | Tee,
        have: int,
        progress: Progress | None,
        cancelled: threading.Event | None,
        written: Progress | None = None,
    ) -> int:
        """Download into ``sink`` (which includes the locked partial file ``fd``); commit it."""
        part = self.partial_path(desc.digest)
        try:
            received = download(
                client,
                ref,
                desc,
                sink,
                have=have,
                progress=progress,
                cancelled=cancelled,
                written=written,
            )
        except BaseException as e:
            # Keep what a later pull can resume; drop the rest (still locked, so
            # no other process is writing it): a mismatching blob cannot be
            # trusted, and an empty file is nothing to resume.
            if isinstance(e, DigestMismatchError) or os.fstat(fd).st_size == 0:
                with contextlib.suppress(OSError):
                    os.unlink(part)
            raise
        os.replace(part, self.path(desc.digest))
        self._remember(desc.digest, os.fstat(fd))  # after the rename, which sets ctime
        return received

    def _lock_partial(self, desc: Descriptor) -> int | None:
        """Open the blob's partial file and hold its lock; None if the blob is in the cache.

        Another process that held the lock may have finished (renamed) or dropped the
        file meanwhile; the lock is then on a file no longer at that path, so the
        path is looked at again.  A damaged blob under the final name is removed
        while the lock is held (no other process is replacing it then).
        """
        final = self.path(desc.digest)
        part = self.partial_path(desc.digest)
        while True:
            if self.verify_file(final, desc):
                return None
            part.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                st = os.fstat(fd)
                try:
                    now = os.stat(part)
                except FileNotFoundError:
                    now = None
                if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                    if not self.verify_file(final, desc):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(final)  # damaged (or absent): downloaded again
                        return fd
                    with contextlib.suppress(OSError):
                        os.unlink(part)  # the blob was finished meanwhile: a leftover
                    os.close(fd)
                    return None
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
