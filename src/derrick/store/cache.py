"""derrick's blob cache: a content-addressed store of verified blobs, shared by processes.

It knows nothing of registries or images: it holds files named by their digest, and a
partial file for each blob being written, which whoever writes it fills from a stream.

* ``<root>/blobs/<alg>/<hex>``: a blob, only once verified (see :meth:`PartialBlob.commit`).
* ``<root>/blobs/<alg>/<hex>.partial``: a blob being written.  An interrupted write keeps
  it, and the next writer resumes it (:attr:`PartialBlob.have`, :meth:`PartialBlob.prefix`
  re-reading the bytes already there to be hashed again).  An advisory lock (``flock``)
  on it keeps two writers (processes, or threads) apart: the second waits, then takes
  the first one's result.  The lock is also held to drop a damaged blob, so a blob
  another process has just written is never removed by mistake.
* ``<root>/verified/<alg>/<hex>``: records of verified files (:mod:`derrick.store.records`),
  of the store's own file and of copies elsewhere (:meth:`BlobStore.remember`), e.g. the
  blobs of OCI layouts.  Nothing is trusted on its name and size alone: a file without a
  record that matches its ``stat`` is hashed again before it is used.
* ``<root>/.lock``: locked shared by every store object in use, exclusively by a prune
  (:mod:`derrick.store.upkeep`), which empties the store only while nobody uses it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from derrick.closing import Closing
from derrick.digest import Digest
from derrick.errors import DerrickError, DiskError, Remedy
from derrick.manifest import Descriptor
from derrick.oserrors import reason, try_again
from derrick.store.files import CHUNK, Region, lock_partial, read_range
from derrick.store.records import Records
from derrick.store.upkeep import UseLock

__all__ = ["BlobStore", "CacheDiskError", "PartialBlob", "default_cache_dir", "partials_phrase"]


def default_cache_dir() -> Path:
    """``$DERRICK_CACHE_DIR``, else ``$XDG_CACHE_HOME/derrick``, else ``~/.cache/derrick``."""
    env = os.environ.get("DERRICK_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "derrick"


class BlobStore(Closing):
    """A directory of verified blobs (``root``: :func:`default_cache_dir` when None).

    In use from its first lookup or write until :meth:`close` (which only lets other
    processes prune the store: it can be used again after it).
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_cache_dir()
        self.records = Records(self.root / "verified")
        #: held shared from the first use on, so a prune never empties the store under it
        self.use = UseLock(self.root)
        self._locks: dict[Digest, threading.Lock] = {}
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def close(self) -> None:
        self.use.release()

    def path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def partial_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / f"{digest.hex}.partial"

    def record_path(self, digest: Digest) -> Path:
        return self.records.path(digest)

    # -- knowing a file is good ----------------------------------------------------------

    def has(self, desc: Descriptor) -> bool:
        """Whether the store holds blob ``desc``, known good (see :meth:`lookup`)."""
        return self.lookup(desc) is not None

    def lookup(self, desc: Descriptor) -> Path | None:
        """The path of blob ``desc`` if the store holds it and it is good, else None.

        A damaged file is left in place here; the next :meth:`reserve` of the blob
        drops it.
        """
        path = self.path(desc.digest)
        return path if self.verify_file(path, desc) else None

    def verify_file(self, path: Path, desc: Descriptor) -> bool:
        """Whether the file at ``path`` (anywhere) holds blob ``desc``.

        True if its ``stat`` matches a record of the blob; otherwise it is re-hashed,
        and recorded when it matches.  False for a missing file.
        """
        self.use.hold()
        fd = self.records.open_verified(path, desc)
        if fd is None:
            return False
        os.close(fd)
        return True

    def open_verified(self, path: Path, desc: Descriptor) -> int | None:
        """A read-only descriptor of ``path`` if it holds blob ``desc`` (see
        :meth:`verify_file`), else None.  The caller closes it."""
        self.use.hold()
        return self.records.open_verified(path, desc)

    def remember(self, path: Path, desc: Descriptor) -> None:
        """Record the file at ``path`` as holding ``desc``: a copy just made of a good
        file, or a file just written from bytes that were verified."""
        self.use.hold()
        with contextlib.suppress(OSError):
            st = os.stat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size == desc.size:
                self.records.add(desc.digest, st)

    def partials(self, descs: Iterable[Descriptor]) -> list[Path]:
        """The partial files there are of the blobs ``descs``, each once, sorted."""
        return sorted({p for d in descs if (p := self.partial_path(d.digest)).exists()})

    # -- writing -------------------------------------------------------------------------

    def reserve(self, desc: Descriptor) -> PartialBlob | None:
        """The blob's partial file, locked for this writer; None once the store holds
        the blob (maybe written by another process while this one waited for the lock).

        Waits while another writer (process or thread) holds the lock.  A damaged blob
        under the final name is removed while the lock is held.  Raises ``OSError``
        when the store cannot be written.
        """
        self.use.hold()
        lock = self._thread_lock(desc.digest)
        lock.acquire()
        try:
            fd = self._lock_partial(desc)
        except BaseException:
            lock.release()
            raise
        if fd is None:
            lock.release()
            return None
        return PartialBlob(self, desc, fd, lock.release)

    def _thread_lock(self, digest: Digest) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(digest, threading.Lock())

    def _lock_partial(self, desc: Descriptor) -> int | None:
        """Open the blob's partial file and hold its lock; None if the blob is in the store.

        Another process that held the lock may have finished (renamed) or dropped the
        file meanwhile; the lock is then on a file no longer at that path, so the path is
        looked at again.
        """
        final = self.path(desc.digest)
        part = self.partial_path(desc.digest)
        if self.verify_file(final, desc):
            return None
        part.parent.mkdir(parents=True, exist_ok=True)
        fd, _ = lock_partial(part, mode=0o644)
        try:
            if self.verify_file(final, desc):
                with contextlib.suppress(OSError):
                    os.unlink(part)  # the blob was finished meanwhile: a leftover
                os.close(fd)
                return None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(final)  # damaged (or absent): written again
            if os.fstat(fd).st_size > desc.size:
                os.ftruncate(fd, 0)
            return fd
        except BaseException:
            os.close(fd)
            raise
            os.close(fd)


class PartialBlob(Closing):
    """A blob being written into the store, holding the lock on its partial file.

    :attr:`have` bytes are there already (from an earlier, interrupted writer); the
    writer hashes them again (:meth:`prefix`), appends the rest (:meth:`write`), and
    :meth:`commit`\\ s.  The store does not hash what it is given: commit only once every
    byte in the file was verified, e.g. by a :class:`~derrick.images.feed.Feed` pass over
    :meth:`prefix` and the chunks written.  :meth:`close` without a commit keeps the
    bytes for the next writer (none kept: the file goes); :meth:`discard` drops them
    (they turned out wrong).  Either releases the lock.
    """

    def __init__(
        self, store: BlobStore, desc: Descriptor, fd: int, release: Callable[[], None]
    ) -> None:
        self.store = store
        self.desc = desc
        self.fd = fd
        self.path = store.partial_path(desc.digest)
        self.have = os.fstat(fd).st_size
        self.committed: Path | None = None
        self._release = release
        self._closed = False

    def __repr__(self) -> str:
        return f"PartialBlob({self.desc.digest}, have={self.have})"

    @property
    def region(self) -> Region:
        """The file as a :class:`Region` (for :func:`~derrick.store.files.copy_range`)."""
        return Region(self.fd, 0, self.desc.size)

    def prefix(self) -> Iterator[memoryview]:
        """The :attr:`have` bytes already there, read back in chunks."""
        return read_range(self.fd, 0, self.have, CHUNK)

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` after the :attr:`have` bytes."""
        self.write_at(self.have, data)

    def write_at(self, pos: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``pos`` (at most :attr:`have`: the file has no gaps)."""
        if not 0 <= pos <= self.have:
            raise DerrickError(
                f"partial blob {self.desc.digest}: a write at {pos} would leave a gap "
                f"after byte {self.have}"
            )
        end = pos + len(data)
        if end > self.desc.size:
            raise DerrickError(
                f"partial blob {self.desc.digest}: {end} bytes is more than its {self.desc.size}"
            )
        Region(self.fd, 0, self.desc.size).write_at(pos, data)
        self.have = max(self.have, end)

    def truncate(self, size: int = 0) -> None:
        """Keep only the first ``size`` bytes."""
        os.ftruncate(self.fd, size)
        self.have = min(self.have, size)

    def commit(self) -> Path:
        """Give the blob its final name (and record it); the path.  Releases the lock."""
        if self.committed is not None:
            return self.committed
        if self._closed:
            raise DerrickError(f"partial blob {self.desc.digest} was closed")
        if self.have != self.desc.size:
            raise DerrickError(
                f"partial blob {self.desc.digest} has {self.have} of its "
                f"{self.desc.size} bytes: it cannot be committed"
            )
        final = self.store.path(self.desc.digest)
        os.replace(self.path, final)
        # after the rename, which sets the change time
        self.store.records.add(self.desc.digest, os.fstat(self.fd))
        self.committed = final
        self._finish()
        return final

    def discard(self) -> None:
        """Drop the bytes (they are wrong), and release the lock."""
        if not self._closed:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self._finish()

    def close(self) -> None:
        """Keep what a later writer can resume (nothing: the file goes); release the lock."""
        if self._closed:
            return
        try:
            empty = os.fstat(self.fd).st_size == 0
        except OSError:
            empty = False
        if empty:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # still locked: no other writer has it
        self._finish()

    def _finish(self) -> None:
        self._closed = True
        try:
            os.close(self.fd)  # also releases the flock
        finally:
            self._release()


def partials_phrase(partials: Sequence[Path], root: Path) -> str | None:
    """The partial files ``partials`` of the store at ``root`` in words: ``the partial
    download P``, or ``N partial downloads in DIR (*.partial)``; None for none."""
    if not partials:
        return None
    if len(partials) == 1:
        return f"the partial download {partials[0]}"
    dirs = {p.parent for p in partials}
    where = partials[0].parent if len(dirs) == 1 else root
    return f"{len(partials)} partial downloads in {where} (*.partial)"


class CacheDiskError(DiskError):
    """Writing the blob cache failed (no space left, permission denied, …).

    The message names the cache; ``partials`` are the partial files kept for a later
    run to resume, and ``also`` what else is kept for it (a phrase and how many files,
    e.g. the partial archive a pull was writing).  :meth:`pulling_to` says what was being
    written too.
    """

    def __init__(
        self,
        root: Path,
        error: OSError,
        partials: Sequence[Path] = (),
        also: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.reason = reason(error)
        self.root = root
        self.error = error
        self.partials = list(partials)
        self.also = list(also)
        again = try_again(error)
        phrase = partials_phrase(self.partials, root)
        phrases = ([phrase] if phrase is not None else []) + [p for p, _ in self.also]
        files = len(self.partials) + sum(n for _, n in self.also)
        if not phrases:
            hint = again
        else:
            them = "them" if files > 1 else "it"
            are = "are" if len(phrases) > 1 or len(self.partials) > 1 else "is"
            hint = f"{' and '.join(phrases)} {are} kept: {again} to resume, or delete {them}"
        super().__init__(
            f"{self.reason} writing the blob cache {root}",
            errno=error.errno,
            hint=hint,
            remedy=Remedy("cache-dir"),
        )

    def with_partials(
        self, partials: Sequence[Path], also: Sequence[tuple[str, int]] = ()
    ) -> CacheDiskError:
        """The same error, saying which partial files are kept (and what else is)."""
        return CacheDiskError(self.root, self.error, partials, also)

    def pulling_to(self, destination: str) -> DiskError:
        """The error as said of a pull to ``destination`` (as the user named it)."""
        return DiskError(
            f"{self.reason} writing the blob cache {self.root} (pulling to {destination})",
            errno=self.errno,
            hint=self.hint,
            remedy=self.remedy,
        )
