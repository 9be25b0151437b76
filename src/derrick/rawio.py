"""Bodies on derrick's HTTP/1.1 connections moved without copies in between.

Through httpcore and h11 each byte of a response body is copied three times in user
space (from the socket into a new ``bytes``, into h11's receive buffer, out of it, and
into ``bytes`` again), and each chunk of a request body twice (joined by h11, then cut
again after every partial ``send``).  For a blob that costs more CPU than hashing it.
Here:

* :class:`RawBody` reads the rest of a response body whose length is known straight
  from the connection's socket into the caller's buffer (``recv_into``), after the bytes
  h11 had already received with the head.  When the body is complete, h11 is told so
  and the connection goes back to the pool as usual; a body that breaks off closes it.
  :func:`raw_chunks` is the httpx-level view: a response's body as views of one reused
  buffer, or None when it must be read the ordinary way.
* :func:`send_body` writes a request body's chunks with ``sendall`` from the caller's
  buffers, h11 only adding the framing (``send_with_data_passthrough``).

Both need the connection's own socket: a plain TCP socket, or a TLS socket (not TLS
inside a TLS tunnel, whose socket carries the outer layer's bytes).  Timeouts are those
of the request, and errors are those httpx raises for a broken or timed out read.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from typing import cast

import h11
import httpcore
import httpx

from derrick.errors import Cancelled

__all__ = ["RAW_BODY", "RawBody", "raw_chunks", "raw_socket", "send_body"]

#: The response extension a :class:`RawBody` is offered under.
RAW_BODY = "derrick.raw_body"


def raw_socket(stream: httpcore.NetworkStream) -> socket.socket | None:
    """The socket that carries exactly ``stream``'s bytes (None: TLS in a TLS tunnel)."""
    sock = stream.get_extra_info("socket")
    if isinstance(sock, ssl.SSLSocket):
        return sock
    if isinstance(sock, socket.socket) and stream.get_extra_info("ssl_object") is None:
        return sock
    return None


def content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The length of a response body framed by ``Content-Length`` alone, else None."""
    length: int | None = None
    for name, value in headers:
        lower = name.lower()
        if lower == b"transfer-encoding":
            return None
        if lower == b"content-length":
            if not value.strip().isdigit() or length is not None:
                return None
            length = int(value)
    return length


class RawBody:
    """The body of one response on ``state`` (h11's connection), ``length`` bytes, read
    from ``sock``; ``cut`` says whether a failed read was the socket shut down by an
    :class:`~derrick.interrupt.Interrupter` (then :class:`Cancelled` is raised)."""

    def __init__(
        self,
        state: h11.Connection,
        sock: socket.socket,
        length: int,
        timeout: float | None,
        cut: Callable[[], bool],
    ) -> None:
        self._state = state
        self._sock = sock
        self._cut = cut
        self.length = length
        self.remaining = length
        self._timeout = timeout
        self._buffered = True  # h11 may hold body bytes that came with the head
        self._pending = memoryview(b"")  # taken from h11, not yet given out

    def readinto(self, view: memoryview, *, wait: bool = True) -> int:
        """Read up to ``len(view)`` bytes of the body into ``view``; 0 once it is all read,
        or (``wait`` false) when nothing more has arrived yet.

        Raises ``httpcore.ReadTimeout``, ``httpcore.ReadError`` or
        ``httpcore.RemoteProtocolError`` (the peer closed the connection early), and
        :class:`Cancelled` when the socket was shut down by an interrupter.
        """
        if not self.remaining or not len(view):
            return 0
        if self._buffered:
            n = self._from_h11(view)
            if n:
                return n
        want = min(len(view), self.remaining)
        try:
            # A timeout of 0 takes what has arrived (and no poll before the read).
            self._sock.settimeout(self._timeout if wait else 0.0)
            n = self._sock.recv_into(view, want)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return 0  # not waiting, and nothing (no whole TLS record) there yet
        except TimeoutError as e:
            raise self._failed(httpcore.ReadTimeout(str(e) or "timed out")) from e
        except OSError as e:
            raise self._failed(httpcore.ReadError(str(e) or type(e).__name__)) from e
        if not n:
            got = self.length - self.remaining
            raise self._failed(
                httpcore.RemoteProtocolError(
                    "peer closed connection without sending complete message body "
                    f"(received {got} bytes, expected {self.length})"
                )
            )
        self._took(n)
        return n

    def _failed(self, e: Exception) -> Exception:
        return Cancelled("cancelled: the download was cut short") if self._cut() else e

    def _from_h11(self, view: memoryview) -> int:
        """Bytes h11 received with the head (at most ``len(view)``; the rest is kept)."""
        if not self._pending:
            event = self._state.next_event()
            if not isinstance(event, h11.Data):
                self._buffered = False  # NEED_DATA: everything else comes from the socket
                return 0
            self._pending = memoryview(event.data)
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._took(n)
        return n

    def _took(self, n: int) -> None:
        self.remaining -= n
        if not self.remaining:
            self._finish()

    def _finish(self) -> None:
        """Tell h11 the body is complete, so the connection can be used again.

        h11 counts the body bytes it has seen; those read here it did not see.  Its
        reader is told they came (when it is the Content-Length reader this expects);
        otherwise the connection is left unfinished, and is closed rather than reused.
        """
        reader = getattr(self._state, "_reader", None)
        if reader is None or not hasattr(reader, "_remaining"):
            return
        reader._remaining = 0
        try:
            self._state.next_event()  # EndOfMessage: their side is DONE
        except h11.ProtocolError:
            return


def raw_chunks(resp: httpx.Response, size: int) -> Iterator[memoryview] | None:
    """``resp``'s body read straight from the socket, as views of one buffer of ``size``
    bytes, each filled as far as the body goes (a view is valid until the next is asked
    for); None when the body must be read with ``resp.iter_raw()`` (no :class:`RawBody`
    offered, or some of the body read already)."""
    raw = resp.extensions.get(RAW_BODY)
    if not isinstance(raw, RawBody) or raw.remaining != raw.length or resp.is_stream_consumed:
        return None
    return _fill(raw, size, resp.request)


def _fill(raw: RawBody, size: int, request: httpx.Request) -> Iterator[memoryview]:
    """Views of one buffer, each holding what had arrived once the first bytes did (up to
    the buffer's size: fewer, larger pieces to hash and write, without holding back bytes
    that came while the rest is late).  What was read before a read failed is given out
    before the error is raised (a resume starts after it)."""
    buffer = memoryview(bytearray(min(size, raw.remaining) or 1))
    size = len(buffer)
    while raw.remaining:
        filled = 0
        error: Exception | None = None
        try:
            while filled < size and raw.remaining:
                n = raw.readinto(buffer[filled:], wait=not filled)
                if not n:
                    break  # nothing more yet: give out what there is
                filled += n
        except httpcore.ReadTimeout as e:
            error = httpx.ReadTimeout(str(e), request=request)
        except httpcore.ReadError as e:
            error = httpx.ReadError(str(e), request=request)
        except httpcore.ProtocolError as e:
            error = httpx.RemoteProtocolError(str(e), request=request)
        except Cancelled as e:
            error = e
        if filled:
            yield buffer[:filled]
        if error is not None:
            raise error


def send_body(
    state: h11.Connection,
    stream: httpcore.NetworkStream,
    chunks: Iterable[bytes | memoryview],
    timeout: float | None,
) -> None:
    """Send a request body and its end: each chunk as it is (h11 adds the framing),
    with ``sendall`` on the connection's socket, else through ``stream``."""
    sock = raw_socket(stream)
    for chunk in chunks:
        data = cast(bytes, chunk)  # h11 takes any bytes-like object, and passes it through
        for piece in state.send_with_data_passthrough(h11.Data(data=data)) or ():
            if sock is None:
                stream.write(bytes(piece), timeout=timeout)
                continue
            try:
                sock.settimeout(timeout)
                sock.sendall(piece)
            except TimeoutError as e:
                raise httpcore.WriteTimeout(str(e) or "timed out") from e
            except OSError as e:
                raise httpcore.WriteError(str(e) or type(e).__name__) from e
    end = state.send(h11.EndOfMessage())
    if end:
        stream.write(end, timeout=timeout)
