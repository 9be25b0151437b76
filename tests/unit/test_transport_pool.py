"""derrick's guard against a race in httpcore's connection pool (see
:func:`derrick.transport._atomic_expiry_check`): a pooled connection is judged dead
only while its state cannot change under the check."""

from __future__ import annotations

from typing import Any

import httpcore
from httpcore._sync.http11 import HTTP11Connection, HTTPConnectionState

import derrick.transport


class _Stream:
    """A network stream that records whether the connection's state lock is held when the
    socket is polled."""

    def __init__(self, readable: bool) -> None:
        self.readable = readable
        self.conn: Any = None
        self.locked: list[bool] = []

    def get_extra_info(self, name: str) -> Any:
        if name == "is_readable":
            self.locked.append(self.conn._state_lock._lock.locked())
            return self.readable
        return None

    def close(self) -> None:
        pass


def _idle_connection(readable: bool) -> tuple[HTTP11Connection, _Stream]:
    stream = _Stream(readable)
    conn = HTTP11Connection(origin=httpcore.Origin(b"http", b"registry.test", 80), stream=stream)  # type: ignore[arg-type]
    stream.conn = conn
    conn._state = HTTPConnectionState.IDLE
    return conn, stream


def test_expiry_check_polls_the_socket_under_the_state_lock() -> None:
    conn, stream = _idle_connection(readable=False)
    assert conn.has_expired() is False
    assert stream.locked == [True]
    assert not conn._state_lock._lock.locked()  # and lets go of it


def test_expiry_check_still_sees_a_server_disconnect() -> None:
    conn, _ = _idle_connection(readable=True)
    assert conn.has_expired() is True
    conn._state = HTTPConnectionState.ACTIVE  # a request started: never "disconnected"
    assert conn.has_expired() is False


def test_guard_is_installed_once() -> None:
    guarded = HTTP11Connection.has_expired
    assert guarded is derrick.transport._conn_cls.has_expired
    assert getattr(guarded, "__derrick_atomic__", False)
    assert not getattr(guarded.__wrapped__, "__derrick_atomic__", False)  # type: ignore[attr-defined]
