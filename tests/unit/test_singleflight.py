"""SingleFlight: one run of the work per key at a time, its result shared by the waiters."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from derrick.singleflight import SingleFlight


def _together(n: int, fn: object) -> list[object]:
    gate = threading.Barrier(n)

    def run(i: int) -> object:
        gate.wait()
        try:
            return fn(i)  # type: ignore[operator]
        except Exception as e:
            return e

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def test_callers_at_once_share_one_run() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    runs: list[int] = []

    def work() -> int:
        runs.append(1)
        time.sleep(0.2)
        return 42

    assert _together(8, lambda i: flights.do("k", work)) == [42] * 8
    assert len(runs) == 1
    assert flights.do("k", work) == 42  # nothing cached: a later caller runs it again
    assert len(runs) == 2


def test_keys_are_apart() -> None:
    flights: SingleFlight[int, int] = SingleFlight()
    runs: list[int] = []

    def work(i: int) -> int:
        runs.append(i)
        time.sleep(0.2)
        return i * 10

    assert _together(6, lambda i: flights.do(i % 2, lambda: work(i % 2))) == [0, 10] * 3
    assert sorted(runs) == [0, 1]


def test_waiters_get_the_leaders_error() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    runs: list[int] = []

    def work() -> int:
        runs.append(1)
        time.sleep(0.2)
        raise ValueError("refused")

    results = _together(5, lambda i: flights.do("k", work))
    assert len(runs) == 1
    assert all(isinstance(r, ValueError) and str(r) == "refused" for r in results)


def test_an_interrupted_leader_leaves_the_work_to_a_waiter() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    started = threading.Event()
    calls: list[str] = []

    def interrupted() -> str:
        calls.append("leader")
        started.set()
        time.sleep(0.2)
        raise KeyboardInterrupt

    def leader() -> None:
        with pytest.raises(KeyboardInterrupt):
            flights.do("k", interrupted)

    t = threading.Thread(target=leader)
    t.start()
    started.wait()
    assert flights.do("k", lambda: calls.append("waiter") or "done") == "done"
    t.join()
    assert calls == ["leader", "waiter"]
