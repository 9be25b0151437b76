"""The one bounded worker pool for blobs.

:class:`BlobPool` runs one task per item on at most ``jobs`` threads.  The first failure
cancels everything: the cancel event is set, tasks not started never start, and running
ones stop at their next chunk (the :class:`~derrick.images.feed.Feed` they read checks
the same event).  A worker blocked on the network (a stalled download, an upload the peer
stopped reading) does not wait for its timeout: once the event is set (by a failure, an
interrupt, or whoever holds it), the pool's :class:`~derrick.interrupt.Interrupter` shuts
down the sockets of the requests its workers have in flight.  :meth:`BlobPool.run`
returns, or raises, only once every worker has stopped, so a sink may close its files
right after it.  The error raised is the first real one, not the
:class:`~derrick.errors.Cancelled` of the tasks it stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

from derrick.errors import Cancelled
from derrick.interrupt import Interrupter

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
        the tasks, cuts their network waits short, waits for the workers, and is raised
        again.
        """
        pending: Sequence[T] = list(items)
        if not pending:
            return 0
        run = _Run(self, pending, task)
        try:
            run.start(min(self.jobs, len(pending)))
            run.wait()
        except BaseException:
            # Interrupted while waiting: stop the workers, wait for them, raise again.
            self.cancel.set()
            run.wait()
            raise
        if run.errors:
            real = [e for e in run.errors if not isinstance(e, Cancelled)]
            raise (real or run.errors)[0]
        if run.finished < len(pending):
            raise Cancelled(f"cancelled after {run.finished} of {len(pending)} blobs")
        return run.bytes


#: How often a pool's waiting thread looks at the cancel event (seconds).
_POLL = 0.1


class _Run(Generic[T]):
    """One :meth:`BlobPool.run`: its items, its workers, what they did.

    Workers are waited for with a condition, not ``Thread.join``: a join that a
    ``KeyboardInterrupt`` breaks may take the thread for stopped (Python 3.11), and the
    workers must have stopped when :meth:`BlobPool.run` returns or raises.
    """

    def __init__(self, pool: BlobPool, items: Sequence[T], task: Callable[[T], int]) -> None:
        self.pool = pool
        self.task = task
        self.errors: list[BaseException] = []
        self.bytes = 0
        self.finished = 0  # items done
        self.running = 0  # workers started and not stopped
        self.interrupter = Interrupter()
        self._items = iter(items)
        self._cond = threading.Condition(pool._lock)

    def _next(self) -> tuple[T] | None:
        with self._cond:
            try:
                return (next(self._items),)
            except StopIteration:
                return None

    def start(self, workers: int) -> None:
        for i in range(workers):
            with self._cond:
                self.running += 1
            try:
                threading.Thread(target=self.work, name=f"derrick-blob-{i}", daemon=True).start()
            except BaseException:
                with self._cond:
                    self.running -= 1
                raise

    def work(self) -> None:
        """A worker: items until there are none, or the pool is cancelled."""
        pool = self.pool
        try:
            with self.interrupter.active():
                while not pool.cancel.is_set() and (got := self._next()) is not None:
                    try:
                        n = self.task(got[0])
                    except BaseException as e:
                        with self._cond:
                            self.errors.append(e)
                        pool.cancel.set()
                        self.interrupter.interrupt()
                        return
                    with self._cond:
                        self.bytes += n
                        self.finished += 1
                        pool.bytes += n
        finally:
            with self._cond:
                self.running -= 1
                self._cond.notify_all()

    def wait(self) -> None:
        """Until every worker stopped; once the cancel event is set, cut their network
        waits short."""
        with self._cond:
            while self.running:
                if self.pool.cancel.is_set():
                    self.interrupter.interrupt()
                self._cond.wait(_POLL)


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
