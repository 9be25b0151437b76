"""Keeping the blob store in bounds: what it holds (:func:`usage`) and emptying it
(:func:`prune`), safely while other derrick processes may be using it.

Every :class:`~derrick.store.cache.BlobStore` holds a shared ``flock`` on
``<root>/.lock`` from its first use until it is closed or dropped (:class:`UseLock`), so a
blob it has looked up is not removed under it.  :func:`prune` takes that lock exclusively
without waiting: while any process uses the store it removes nothing and raises
:class:`StoreBusyError`; a process that starts to use the store meanwhile waits until the
prune is done, and then finds it empty.  Partial files left by interrupted runs go too;
one being written is never touched, as its writer holds the shared lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from derrick.errors import DerrickError, Remedy

__all__ = ["LOCK_NAME", "StoreBusyError", "StoreUsage", "UseLock", "prune", "usage"]

#: The file in the store's root that users lock shared and a prune exclusively.
LOCK_NAME = ".lock"

#: What the store keeps, below its root (everything else there is left alone).
_CONTENT = ("blobs", "verified")


class StoreBusyError(DerrickError):
    """Another process (or another store object of this one) is using the blob store."""


@dataclass(frozen=True)
class StoreUsage:
    """What a blob store holds: verified blobs and partial files, counted and sized."""

    root: Path
    blobs: int = 0
    blob_bytes: int = 0
    partials: int = 0
    partial_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.blob_bytes + self.partial_bytes


class UseLock:
    """The shared lock a store object holds while it is in use (see the module docstring).

    :meth:`hold` takes it once (waiting while a prune runs); a store that cannot be
    written (a read-only cache) is used without it.  :meth:`release` lets it go.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fd: int | None = None
        self._guard = threading.Lock()

    def hold(self) -> None:
        if self._fd is not None:
            return
        with self._guard:
            if self._fd is not None:
                return
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError:
                return  # a store that cannot be written: reads go on without the lock
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd

    def release(self) -> None:
        with self._guard:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


def usage(root: Path) -> StoreUsage:
    """What the store at ``root`` holds now (nothing, when there is no store there)."""
    blobs = blob_bytes = partials = partial_bytes = 0
    top = root / "blobs"
    for algorithm in _entries(top):
        for entry in _entries(algorithm):
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.name.endswith(".partial"):
                partials += 1
                partial_bytes += st.st_size
            else:
                blobs += 1
                blob_bytes += st.st_size
    return StoreUsage(root, blobs, blob_bytes, partials, partial_bytes)


def _entries(path: Path | os.DirEntry[str]) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return [e for e in it if e.is_dir(follow_symlinks=False) or e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def prune(root: Path) -> StoreUsage:
    """Remove every blob, record and partial file of the store at ``root``; what was there.

    Raises :class:`StoreBusyError` (removing nothing) while any process uses the store,
    and :class:`DerrickError` when the store cannot be changed.
    """
    if not root.is_dir():
        return StoreUsage(root)
    try:
        fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise _cannot(root, e) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreBusyError(
                f"the blob cache {root} is in use by another derrick process",
                hint="nothing was removed",
                remedy=Remedy("retry"),
            ) from None
        found = usage(root)
        for name in _CONTENT:
            _remove_tree(root, name)
        for left in root.glob(".*.pruned-*"):  # from a prune that was killed
            shutil.rmtree(left, ignore_errors=True)
        return found
    finally:
        os.close(fd)


def _remove_tree(root: Path, name: str) -> None:
    """Remove ``root/name``: renamed aside first, so that no half-removed tree is ever
    there under its name, then deleted."""
    path = root / name
    aside = root / f".{name}.pruned-{os.getpid()}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    except OSError as e:
        raise _cannot(root, e) from None
    shutil.rmtree(aside, ignore_errors=True)


def _cannot(root: Path, e: OSError) -> DerrickError:
    reason = e.strerror or str(e)
    return DerrickError(f"cannot prune the blob cache {root}: {reason[:1].lower()}{reason[1:]}")
