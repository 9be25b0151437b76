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
from collections.abc import Callable
from pathlib import Path

from derrick.digest import Digest, Verifier
from derrick.errors import DerrickError, DigestMismatchError
from derrick.manifest import Descriptor
from derrick.reference import Reference
from derrick.registry import RegistryClient

CHUNK = 1 << 20
Progress = Callable[[int], None]


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
            with os.fdopen(fd, "r+b", buffering=0) as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                try:
                    if self.has(desc):  # another process finished it while we waited
                        if progress:
                            progress(desc.size)
                        return final
                    self._download(client, ref, desc, f, progress, cancelled)
                    os.replace(part, final)
                finally:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            return final

    def _download(
        self,
        client: RegistryClient,
        ref: Reference,
        desc: Descriptor,
        f: object,
        progress: Progress | None,
        cancelled: threading.Event | None,
    ) -> None:
        import io

        assert isinstance(f, io.RawIOBase | io.FileIO)
        verifier = Verifier(desc.digest, desc.size, what=f"blob {desc.digest}")
        # Re-hash what an earlier, interrupted download left, then ask for the rest.
        have = os.fstat(f.fileno()).st_size
        if have > desc.size:
            f.truncate(0)
            have = 0
        f.seek(0)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        done = 0
        while done < have:
            n = f.readinto(view[: min(CHUNK, have - done)])
            if not n:
                break
            verifier.update(view[:n])
            done += n
        if progress and done:
            progress(done)
        attempts = 0
        while True:
            try:
                self._stream_into(client, ref, desc, f, verifier, progress, cancelled)
                break
            except DigestMismatchError:
                # Corrupt resumed data or a lying registry: drop everything.
                f.truncate(0)
                raise
            except DerrickError:
                attempts += 1
                if attempts > client.transport.retry.retries or (
                    cancelled is not None and cancelled.is_set()
                ):
                    raise
                client.transport.retry_sleep(attempts - 1)
        try:
            verifier.verify()
        except DigestMismatchError:
            f.truncate(0)
            raise

    def _stream_into(
        self,
        client: RegistryClient,
        ref: Reference,
        desc: Descriptor,
        f: object,
        verifier: Verifier,
        progress: Progress | None,
        cancelled: threading.Event | None,
    ) -> None:
        import io

        assert isinstance(f, io.RawIOBase | io.FileIO)
        offset = verifier.count
        if offset >= desc.size:
            return
        with client.open_blob(ref, desc.digest, offset=offset) as stream:
            if stream.offset != offset:
                # The registry ignored the range: start over from byte 0.
                f.truncate(0)
                verifier.reset()
                offset = 0
            f.seek(offset)
            for chunk in stream.chunks():
                if cancelled is not None and cancelled.is_set():
                    raise DerrickError("cancelled")
                verifier.update(chunk)
                f.write(chunk)
                if progress:
                    progress(len(chunk))
