"""Progress display on stderr: one bar per blob and a total, only on a terminal."""

from __future__ import annotations

import sys
import threading
from contextlib import ExitStack
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn, Task, TaskID

    from derrick.images.model import BlobOutcome
    from derrick.manifest import Descriptor


class Display:
    """A display of rich bars on stderr, drawn for the life of a ``with`` block."""

    _progress: Progress

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()


class BlobProgress(Display):
    """The copy engine's progress (:class:`derrick.images.model.Progress`) as rich bars on
    stderr: one per blob that streams, and a total.

    Sizes and speeds are in binary units (KiB, MiB/s).  Only the bytes of blobs that
    stream (those ``blob_started``) count towards a speed: a blob the destination had, or
    mounted, or took from a local copy is done at once, and is no transfer.
    """

    def __init__(self, total: int, *, label: str = "total") -> None:
        # rich is imported when bars are drawn, not when a command that may draw them loads.
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        self._console = Console(file=sys.stderr)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            _speed_column(self),
            _time_left_column(self),
            console=self._console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()
        self._total = self._progress.add_task(label, total=total)
        #: the bytes of streamed blobs, whose rate is the total's speed
        self._streamed = self._progress.add_task("streamed", total=None, visible=False)

    def speed(self, task: Task) -> float | None:
        """Bytes per second of ``task`` (of the streamed bytes, for the total)."""
        if task.id == self._total:
            task = self._progress.tasks[self._streamed]
        return task.finished_speed or task.speed

    def time_left(self, task: Task) -> float | None:
        """Seconds ``task`` has left at its speed (None when it has no speed)."""
        if task.finished:
            return 0.0
        speed = self.speed(task)
        if not speed or task.total is None:
            return None
        return max(task.total - task.completed, 0) / speed

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
            if nbytes > 0:
                self._progress.advance(self._streamed, nbytes)
        self._progress.advance(self._total, nbytes)

    def blob_finished(self, desc: Descriptor, outcome: BlobOutcome = "copied") -> None:
        task = self._tasks.get(str(desc.digest))
        if task is not None:
            self._progress.update(task, completed=desc.size, visible=False)


def binary_size(n: float) -> str:
    """``n`` bytes in binary units: ``512 B``, ``1.5 KiB``, ``12.3 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _speed_column(bars: BlobProgress) -> ProgressColumn:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class SpeedColumn(ProgressColumn):
        """The speed in binary units; nothing when no byte has streamed."""

        def render(self, task: Task) -> Text:
            speed = bars.speed(task)
            shown = f"{binary_size(speed)}/s" if speed else ""
            return Text(shown, style="progress.data.speed")

    return SpeedColumn()


def _time_left_column(bars: BlobProgress) -> ProgressColumn:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class TimeLeftColumn(ProgressColumn):
        """The time left at the speed shown."""

        max_refresh = 0.5

        def render(self, task: Task) -> Text:
            left = bars.time_left(task)
            if left is None:
                return Text("-:--:--", style="progress.remaining")
            minutes, seconds = divmod(int(left), 60)
            hours, minutes = divmod(minutes, 60)
            return Text(f"{hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")

    return TimeLeftColumn()


def wants_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def open_progress(stack: ExitStack, *, quiet: bool, label: str) -> BlobProgress | None:
    """Bars on stderr for the life of ``stack`` when it is a terminal and not ``quiet``."""
    if not wants_progress(quiet):
        return None
    return stack.enter_context(BlobProgress(0, label=label))
