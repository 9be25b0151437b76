"""derrick's local content-addressed blob cache, shared by every pull.

Blobs live at ``<root>/blobs/<alg>/<hex>`` only once verified.  A download in
progress is ``<hex>.partial``; an interrupted one is resumed with an HTTP
``Range`` request from where it stopped, re-hashing the bytes already there
first, so what is kept under the final name is always verified.  An advisory
lock on the partial file keeps two processes from writing the same blob.
"""

from __future__ import annotations

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
        final = self.path(desc.digest)
        with self._thread_lock(desc.digest):
            if self.has(desc):
                if progress:
                    progress(desc.size)
                return final
            final.parent.mkdir(parents=True, exist_ok=True)
            part = self.partial_path(desc.digest)
            fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if self.has(desc):  # another process finished it while we waited
                    if progress:
                        progress(desc.size)
                    return final
                have = os.fstat(fd).st_size
                if have > desc.size:
                    os.ftruncate(fd, 0)
                    have = 0
                try:
                    download(
                        client,
                        ref,
                        desc,
                        Region(fd, 0, desc.size),
                        have=have,
                        progress=progress,
                        cancelled=cancelled,
                    )
                except DigestMismatchError:
                    os.ftruncate(fd, 0)  # nothing of it can be trusted for a resume
                    raise
                os.replace(part, final)
            finally:
                os.close(fd)  # also releases the lock
            return final
