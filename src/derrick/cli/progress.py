"""Progress display on stderr: one bar per blob and a total, only on a terminal."""

from __future__ import annotations

import sys
import threading
from contextlib import ExitStack
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import TaskID

    from derrick.images.model import BlobOutcome
    from derrick.manifest import Descriptor


class BlobProgress:
    """The copy engine's progress (:class:`derrick.images.model.Progress`) as rich bars on
    stderr: one per blob that streams, and a total."""

    def __init__(self, total: int, *, label: str = "total") -> None:
        # rich is imported when bars are drawn, not when a command that may draw them loads.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._console = Console(file=sys.stderr)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()
        self._total = self._progress.add_task(label, total=total)

    def __enter__(self) -> BlobProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def planned(self, total_bytes: int) -> None:
        self._progress.update(self._total, total=total_bytes)

    def blob_started(self, desc: Descriptor) -> None:
        with self._lock:
            if str(desc.digest) not in self._tasks:
                self._tasks[str(desc.digest)] = self._progress.add_task(
                    desc.digest.short, total=desc.size
                )

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        task = self._tasks.get(str(desc.digest))
        if task is not None:
            self._progress.advance(task, nbytes)
        self._progress.advance(self._total, nbytes)

    def blob_finished(self, desc: Descriptor, outcome: BlobOutcome = "copied") -> None:
        task = self._tasks.get(str(desc.digest))
        if task is not None:
            self._progress.update(task, completed=desc.size, visible=False)


def wants_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def open_progress(stack: ExitStack, *, quiet: bool, label: str) -> BlobProgress | None:
    """Bars on stderr for the life of ``stack`` when it is a terminal and not ``quiet``."""
    if not wants_progress(quiet):
        return None
    return stack.enter_context(BlobProgress(0, label=label))
