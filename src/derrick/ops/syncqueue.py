"""The workers of a sync: :class:`WorkQueue`, items worked on ``jobs`` at a time, in order,
with more queued while it runs (the signature tags of what was copied).

A worker waits while the queue is empty and another worker may still queue something; the
queue is done when it is empty and nobody works.  An error the work function raises is no
item's failure (those are reported by the work itself): the first one cancels everything --
queued items are dropped, every running copy is told to stop -- and is raised by
:meth:`WorkQueue.run` once the workers have ended.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from derrick.errors import Cancelled

__all__ = ["WorkQueue"]

T = TypeVar("T")


class WorkQueue(Generic[T]):
    """``items`` to work on, each once by ``key``, in the order queued."""

    def __init__(self, items: Iterable[T], key: Callable[[T], str]) -> None:
        self._key = key
        self._queue = collections.deque(items)
        #: every item queued, in queue order (a report keeps that order)
        self._positions = {key(item): i for i, item in enumerate(self._queue)}
        self._busy = 0
        self._running = 0  # worker threads started and not ended
        self._cond = threading.Condition()
        self.cancel = threading.Event()
        self._copies: set[threading.Event] = set()
        self._crashed: list[BaseException] = []

    @property
    def total(self) -> int:
        """How many items were queued in all."""
        with self._cond:
            return len(self._positions)

    def position(self, item: T) -> int:
        """Where ``item`` was queued, from 0."""
        with self._cond:
            return self._positions[self._key(item)]

    def add(self, items: Iterable[T]) -> int:
        """Queue the ``items`` not queued before; how many were queued in all."""
        with self._cond:
            for item in items:
                key = self._key(item)
                if key not in self._positions:
                    self._positions[key] = len(self._positions)
                    self._queue.append(item)
            self._cond.notify_all()
            return len(self._positions)

    def run(self, jobs: int, work: Callable[[T], None]) -> None:
        """Work on every item with ``jobs`` threads; raise the first error ``work`` raised
        (or an interrupt), after every worker ended.

        Workers are waited for with the condition, not ``Thread.join``: a join that a
        ``KeyboardInterrupt`` breaks may take its thread for stopped (Python 3.11), and
        an interrupted run must end only once its workers did (their outcomes are in).
        """
        workers = [
            threading.Thread(
                target=self._worker, args=(work,), name=f"derrick-sync-{i}", daemon=True
            )
            for i in range(min(max(1, jobs), max(1, len(self._queue))))
        ]
        for t in workers:
            with self._cond:
                self._running += 1
            try:
                t.start()
            except BaseException:
                with self._cond:
                    self._running -= 1
                raise
        try:
            self._wait_workers()
        except BaseException:
            self.cancel_all()
            self._wait_workers()
            raise
        if self._crashed:
            raise self._crashed[0]

    def _wait_workers(self) -> None:
        with self._cond:
            while self._running:
                self._cond.wait(0.1)

    def pending(self) -> list[T]:
        """The items queued and not started (after :meth:`cancel_all`: never to be)."""
        with self._cond:
            return list(self._queue)

    def cancel_all(self) -> None:
        """Drop what is queued and tell every running copy to stop."""
        self.cancel.set()
        with self._cond:
            for event in self._copies:
                event.set()
            self._cond.notify_all()

    @contextlib.contextmanager
    def stoppable(self) -> Iterator[threading.Event]:
        """An event :meth:`cancel_all` sets, for the copy the block runs to watch; raises
        :class:`~derrick.errors.Cancelled` when everything is cancelled already."""
        event = threading.Event()
        with self._cond:
            if self.cancel.is_set():
                raise Cancelled("cancelled")
            self._copies.add(event)
        try:
            yield event
        finally:
            with self._cond:
                self._copies.discard(event)

    def _worker(self, work: Callable[[T], None]) -> None:
        try:
            self._work(work)
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def _work(self, work: Callable[[T], None]) -> None:
        while True:
            with self._cond:
                while not self._queue and self._busy and not self.cancel.is_set():
                    self._cond.wait()
                if self.cancel.is_set() or not self._queue:
                    self._cond.notify_all()
                    return
                item = self._queue.popleft()
                self._busy += 1
            try:
                work(item)
            except BaseException as e:  # not an item's failure: stop everything
                with self._cond:
                    self._crashed.append(e)
                self.cancel_all()
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()
