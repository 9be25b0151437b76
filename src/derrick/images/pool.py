"""The one bounded worker pool for blobs.

:class:`BlobPool` runs one task per item on at most ``jobs`` threads.  The first failure
cancels everything: the cancel event is set, tasks not started never start, and running
ones stop at their next chunk (the :class:`~derrick.images.feed.Feed` they read checks
the same event).  :meth:`BlobPool.run` returns, or raises, only once every worker has
stopped, so a sink may close its files right after it.  The error raised is the first
real one, not the :class:`~derrick.errors.Cancelled` of the tasks it stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

from derrick.errors import Cancelled

__all__ = ["BlobPool", "ReadAhead"]

T = TypeVar("T")
R = TypeVar("R")


class BlobPool:
    """Up to ``jobs`` workers; ``cancel`` is the event every task checks (set on failure)."""

    def __init__(self, jobs: int, cancel: threading.Event | None = None) -> None:
        self.jobs = max(1, jobs)
        self.cancel = cancel if cancel is not None else threading.Event()
        #: bytes the tasks reported moving (the sum of what they returned)
        self.bytes = 0
        self._lock = threading.Lock()

    def run(self, items: Iterable[T], task: Callable[[T], int]) -> int:
        """Run ``task(item)`` for every item, ``jobs`` at a time; each returns a byte count.

        Returns the bytes of this run.  Raises the first error a task raised (after every
        worker stopped), or :class:`Cancelled` when the cancel event was set from outside
        before every item ran.  A :class:`KeyboardInterrupt` in the calling thread cancels
        the tasks, waits for the workers, and is raised again.
        """
        pending: Sequence[T] = list(items)
        if not pending:
            return 0
        it = iter(pending)
        errors: list[BaseException] = []
        total = [0, 0]  # bytes, items finished

        def worker() -> None:
            while not self.cancel.is_set():
                with self._lock:
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                try:
                    n = task(item)
                except BaseException as e:
                    with self._lock:
                        errors.append(e)
                    self.cancel.set()
                    return
                with self._lock:
                    total[0] += n
                    total[1] += 1
                    self.bytes += n

        threads = [
            threading.Thread(target=worker, name=f"derrick-blob-{i}", daemon=True)
            for i in range(min(self.jobs, len(pending)))
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:
            # Interrupted while waiting: stop the workers, wait for them, raise again.
            self.cancel.set()
            for t in threads:
                t.join()
            raise
        if errors:
            real = [e for e in errors if not isinstance(e, Cancelled)]
            raise (real or errors)[0]
        if total[1] < len(pending):
            raise Cancelled(f"cancelled after {total[1]} of {len(pending)} blobs")
        return total[0]


class ReadAhead(Generic[T, R]):
    """Items fetched ahead, in order, by a :class:`BlobPool`, taken one at a time.

    ``fetch`` runs on up to ``jobs`` workers, in the order of ``items``, at most
    ``window`` items ahead of the one last taken (:meth:`take`), so what is fetched and
    not yet taken stays bounded.  The first failure cancels the rest; :meth:`take`
    raises it.  Use as a context manager: leaving it stops the workers and waits for
    them.
    """

    def __init__(
        self,
        items: Sequence[T],
        fetch: Callable[[T], R],
        *,
        jobs: int,
        window: int,
        cancel: threading.Event,
    ) -> None:
        self.items = list(items)
        self.cancel = cancel
        self._fetch = fetch
        self._jobs = jobs
        self._window = max(1, window)
        self._cond = threading.Condition()
        self._taken = 0  # items taken so far
        self._done: dict[int, R] = {}
        self._error: BaseException | None = None
        self._finished = False
        self._thread = threading.Thread(target=self._run, name="derrick-ahead", daemon=True)

    def __enter__(self) -> ReadAhead[T, R]:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None or self._taken < len(self.items):
            self.cancel.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        positions = range(len(self.items))
        try:
            BlobPool(self._jobs, self.cancel).run(positions, self._one)
        except BaseException as e:
            with self._cond:
                self._error = e
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _one(self, pos: int) -> int:
        with self._cond:
            while pos >= self._taken + self._window:
                if self.cancel.is_set():
                    raise Cancelled("cancelled")
                self._cond.wait(0.1)
        got = self._fetch(self.items[pos])
        with self._cond:
            self._done[pos] = got
            self._cond.notify_all()
        return 0

    def take(self) -> R:
        """What was fetched for the next item (waiting for it)."""
        pos = self._taken
        with self._cond:
            while pos not in self._done:
                if self._error is not None:
                    raise self._error
                # Once cancelled, the workers stop at once: wait for them, so that the error
                # raised is the one that cancelled them, not the cancellation.
                if self._finished:
                    raise Cancelled(f"cancelled after {pos} of {len(self.items)} blobs")
                self._cond.wait(0.1)
            got = self._done.pop(pos)
            self._taken = pos + 1
            self._cond.notify_all()
        return got
