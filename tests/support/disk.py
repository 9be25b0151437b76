"""A small tmpfs mounted for out-of-space tests (the tests run as root)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def small_tmpfs(mnt: Path, size: str = "1m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at the new directory ``mnt`` while the block runs."""
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def grow(mnt: Path, size: str = "16m") -> None:
    """Make room on the tmpfs at ``mnt``."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)
