"""derrick's local content-addressed blob cache, shared by every pull.

Blobs live at ``<root>/blobs/<alg>/<hex>`` only once verified.  A download in
progress is ``<hex>.partial``; an interrupted one is resumed with an HTTP
``Range`` request from where it stopped, re-hashing the bytes already there
first, so what is kept under the final name is always verified.  An advisory
lock on the partial file keeps two processes from writing the same blob.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path

from derrick.digest import Digest
from derrick.download import Progress, Region, download
from derrick.errors import DigestMismatchError
from derrick.manifest import Descriptor
from derrick.reference import Reference
from derrick.registry import RegistryClient


def default_cache_dir() -> Path:
    env = os.environ.get("DERRICK_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "derrick"


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

    def has(self, desc: Descriptor) -> bool:
        try:
            return self.path(desc.digest).stat().st_size == desc.size
        except OSError:
            return False

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
            part = self.partial_path(desc.digest)
            try:
                have = os.fstat(fd).st_size
                if have > desc.size:
                    os.ftruncate(fd, 0)
                    have = 0
                try:
                    received = download(
                        client,
                        ref,
                        desc,
                        Region(fd, 0, desc.size),
                        have=have,
                        progress=progress,
                        cancelled=cancelled,
                    )
                except BaseException as e:
                    # Keep what a later pull can resume; drop the rest (still locked, so
                    # no other process is writing it): a mismatching blob cannot be
                    # trusted, and an empty file is nothing to resume.
                    if isinstance(e, DigestMismatchError) or os.fstat(fd).st_size == 0:
                        with contextlib.suppress(OSError):
                            os.unlink(part)
                    raise
                os.replace(part, final)
            finally:
                os.close(fd)  # also releases the lock
            return final, received

    def _lock_partial(self, desc: Descriptor) -> int | None:
        """Open the blob's partial file and hold its lock; None if the blob is complete.

        Another process that held the lock may have finished (renamed) or dropped the
        file meanwhile; the lock is then on a file no longer at that path, so the
        path is looked at again.
        """
        part = self.partial_path(desc.digest)
        while True:
            if self.has(desc):
                return None
            part.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                st = os.fstat(fd)
                try:
                    now = os.stat(part)
                except FileNotFoundError:
                    now = None
                if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                    if not self.has(desc):
                        return fd
                    with contextlib.suppress(OSError):
                        os.unlink(part)  # the blob was finished meanwhile: a leftover
                    os.close(fd)
                    return None
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
