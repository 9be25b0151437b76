"""Cutting short the network waits of worker threads, so that a cancel takes effect at once.

A worker blocked reading a stalled body (or sending to a peer that stopped reading) does
not see a cancel event until the socket times out, which may be tens of seconds.  An
:class:`Interrupter` is shared by the threads of one piece of work: each runs inside
:meth:`Interrupter.active`, derrick's HTTP connections register the socket of every
request such a thread has in flight (:func:`track`, :func:`untrack`), and
:meth:`Interrupter.interrupt` shuts those sockets down, once.  A blocked ``recv`` or
``send`` then returns at once (an end of stream, or an error), which the worker reports
as a broken connection and stops on, seeing the cancel; a request whose socket was shut
down under it raises :class:`~derrick.errors.Cancelled` (not retried, as a broken
connection would be).  Requests started after the interrupt (cleaning up: an upload
session cancelled) are left alone, and so are sockets of requests another thread has, or
that are back in a connection pool.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

__all__ = ["Interrupter", "current", "track", "untrack"]

_local = threading.local()


class Interrupter:
    """The in-flight sockets of the threads working under it, shut down on demand."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: dict[int, socket.socket] = {}
        self._cut: set[int] = set()
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
        """Shut down every socket registered now (the first call does; later ones, and
        sockets registered later, are left alone)."""
        with self._lock:
            if self.interrupted:
                return
            self.interrupted = True
            for key, sock in self._sockets.items():
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                self._cut.add(key)

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            if not self.interrupted:
                self._sockets[id(sock)] = sock

    def discard(self, sock: socket.socket) -> None:
        """Forget ``sock``: once this returns, :meth:`interrupt` no longer touches it."""
        with self._lock:
            self._sockets.pop(id(sock), None)

    def cut(self, sock: object) -> bool:
        """Whether :meth:`interrupt` shut ``sock`` down."""
        with self._lock:
            return id(sock) in self._cut


def current() -> Interrupter | None:
    """The calling thread's interrupter, if it works under one."""
    found: Interrupter | None = getattr(_local, "interrupter", None)
    return found


def track(sock: socket.socket) -> Interrupter | None:
    """Register ``sock`` (a request starts on it) with the calling thread's interrupter;
    that interrupter (pass it to :func:`untrack`), or None when the thread has none."""
    found = current()
    if found is not None:
        found.add(sock)
    return found


def untrack(interrupter: Interrupter | None, sock: socket.socket) -> None:
    """The request on ``sock`` is over (its socket may go back to a pool)."""
    if interrupter is not None:
        interrupter.discard(sock)
