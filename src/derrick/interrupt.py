"""Cutting short the network waits of worker threads, so that a cancel takes effect at once.

A worker blocked reading a stalled body (or sending to a peer that stopped reading) does
not see a cancel event until the socket times out, which may be tens of seconds.  An
:class:`Interrupter` is shared by the threads of one piece of work: each runs inside
:meth:`Interrupter.active`, derrick's HTTP connections register the socket of every
request such a thread has in flight (:func:`track`, :func:`untrack`), and
:meth:`Interrupter.interrupt` shuts those sockets down.  A blocked ``recv`` or ``send``
then returns at once (an end of stream, or an error), which the worker reports as a
broken connection and stops on, seeing the cancel.  Sockets of requests another thread
has, or that are back in a connection pool, are never touched.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

__all__ = ["Interrupter", "track", "untrack"]

_local = threading.local()


class Interrupter:
    """The in-flight sockets of the threads working under it, shut down on demand."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: dict[int, socket.socket] = {}
        self.interrupted = False

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The calling thread's requests are this interrupter's while the block runs."""
        before = getattr(_local, "interrupter", None)
        _local.interrupter = self
        try:
            yield
        finally:
            _local.interrupter = before

    def interrupt(self) -> None:
        """Shut down every registered socket, and any registered from now on."""
        with self._lock:
            self.interrupted = True
            for sock in self._sockets.values():
                _shut(sock)

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets[id(sock)] = sock
            if self.interrupted:
                _shut(sock)

    def discard(self, sock: socket.socket) -> None:
        """Forget ``sock``: once this returns, :meth:`interrupt` no longer touches it."""
        with self._lock:
            self._sockets.pop(id(sock), None)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def track(sock: socket.socket) -> Interrupter | None:
    """Register ``sock`` (a request starts on it) with the calling thread's interrupter;
    that interrupter (pass it to :func:`untrack`), or None when the thread has none."""
    current: Interrupter | None = getattr(_local, "interrupter", None)
    if current is not None:
        current.add(sock)
    return current


def untrack(interrupter: Interrupter | None, sock: socket.socket) -> None:
    """The request on ``sock`` is over (its socket may go back to a pool)."""
    if interrupter is not None:
        interrupter.discard(sock)
