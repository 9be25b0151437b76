"""derrick's guard against a race in httpcore's connection pool (see
:class:`derrick.connections.DerrickHTTP11Connection`): a pooled connection is judged dead
only while its state cannot change under the check -- on derrick's own connections only,
httpcore's class is left as it is."""

from __future__ import annotations

from typing import Any

import httpcore
from httpcore._sync.http11 import HTTP11Connection, HTTPConnectionState

from derrick.connections import SOCKET_READ_SIZE, DerrickHTTP11Connection


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


def _idle_connection(
    readable: bool, cls: type[HTTP11Connection] = DerrickHTTP11Connection
) -> tuple[HTTP11Connection, _Stream]:
    stream = _Stream(readable)
    conn = cls(origin=httpcore.Origin(b"http", b"registry.test", 80), stream=stream)  # type: ignore[arg-type]
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


def test_httpcore_connections_are_left_alone() -> None:
    """Importing derrick changes nothing for other users of httpcore."""
    conn, stream = _idle_connection(readable=False, cls=HTTP11Connection)
    assert conn.has_expired() is False
    assert stream.locked == [False]  # httpcore's own check, unguarded as it ships
    assert HTTP11Connection.READ_NUM_BYTES == 64 * 1024
    assert DerrickHTTP11Connection.READ_NUM_BYTES == SOCKET_READ_SIZE == 512 * 1024
