"""One computation per key at a time, shared by every thread that asks for it meanwhile.

:class:`SingleFlight` is what makes "once per host" and "once per registry and scope" hold
when many threads start at once: the first caller for a key runs the work, callers that
arrive while it runs wait and get its result (or its exception).  It caches nothing: a
caller that arrives after the work finished runs it again, so callers keep their own
cache and look there first (and again inside the work, see :meth:`SingleFlight.do`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar, cast

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Flight(Generic[V]):
    __slots__ = ("done", "error", "finished", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.finished = False  # the work returned or raised an Exception
        self.value: V | None = None
        self.error: Exception | None = None


class SingleFlight(Generic[K, V]):
    """Runs ``work`` once for all callers asking for the same key at the same time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[K, _Flight[V]] = {}

    def do(self, key: K, work: Callable[[], V]) -> V:
        """The result of ``work()``, or of the call for ``key`` already under way.

        A waiter gets the leader's exception when the work raised one.  When the leader
        was interrupted (``KeyboardInterrupt``, ``SystemExit``), a waiter runs the work
        itself.  Work that fills a cache should look there first: a caller that found
        the cache empty may arrive just after another call filled it.
        """
        while True:
            with self._lock:
                flight = self._flights.get(key)
                leader = flight is None
                if flight is None:
                    flight = self._flights[key] = _Flight()
            if leader:
                return self._lead(key, flight, work)
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.finished:
                return cast(V, flight.value)

    def _lead(self, key: K, flight: _Flight[V], work: Callable[[], V]) -> V:
        try:
            flight.value = work()
            flight.finished = True
            return flight.value
        except Exception as e:
            flight.error = e
            flight.finished = True
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
