"""derrick's own HTTP/1.1 connections, under httpx: bodies without copies, large socket
reads, a race-free expiry check, requests a cancel can cut short.

:func:`http_client` builds the ``httpx.Client`` the :class:`~derrick.transport.Transport`
sends through.  Its connection pool is derrick's (:class:`ConnectionTransport`): direct,
through an http proxy (``HTTP_PROXY``) and tunnelled through one (``HTTPS_PROXY``), every
connection is a :class:`DerrickHTTP11Connection`.  Nothing in httpx or httpcore is changed:
every other user of them in the process keeps their behaviour.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence

import h11
import httpcore
import httpx
from httpx._utils import get_environment_proxies

from derrick.errors import Cancelled
from derrick.interrupt import Interrupter, track, untrack
from derrick.rawio import RAW_BODY, RawBody, content_length, raw_socket, send_body

#: Bytes asked of the socket per read.  httpcore reads 64 KiB at a time; for blob bodies
#: that means thousands of trips through its parser per 100 MiB, and that per-read Python
#: work (with the GIL held) is what limits parallel downloads.  512 KiB reads cut the CPU
#: cost of a pull by about a fifth (a 256 MiB blob: 0.25 s of CPU with 64 KiB reads, 0.2 s
#: with 512 KiB).
SOCKET_READ_SIZE = 512 * 1024

_Headers = list[tuple[bytes, bytes]]


class DerrickHTTP11Connection(httpcore.HTTP11Connection):
    """httpcore's HTTP/1.1 connection with bodies moved without copies, large reads, an
    atomic expiry check, and its socket registered while a request is in flight.

    * The answer to a ``GET`` whose body has a ``Content-Length`` offers a
      :class:`~derrick.rawio.RawBody` (extension :data:`~derrick.rawio.RAW_BODY`), which
      a blob download reads straight into its buffer (:func:`~derrick.rawio.raw_chunks`);
      request bodies are sent from the caller's chunks (:func:`~derrick.rawio.send_body`).
      Other bodies are read :data:`SOCKET_READ_SIZE` bytes at a time.
    * While a request is in flight its socket is known to the thread's
      :class:`~derrick.interrupt.Interrupter`, if any, which can shut it down.
    * httpcore (1.0.9) decides a pooled connection is dead when it is idle and its socket
      is readable, reading the state and polling the socket apart.  With many threads on
      one pool, a request handed that connection can start in between and get its answer
      back: the socket is readable, the connection is closed under the request, and the
      request hangs until its read timeout (seen as 30 s stalls when 20 copies share 4
      connections).  Taking the lock a request takes to start makes the check see one
      state or the other.
    """

    READ_NUM_BYTES = SOCKET_READ_SIZE

    def __init__(
        self,
        origin: httpcore.Origin,
        stream: httpcore.NetworkStream,
        keepalive_expiry: float | None = None,
    ) -> None:
        super().__init__(origin, stream, keepalive_expiry)
        self._socket = raw_socket(stream)
        self._tracked: tuple[Interrupter | None, socket.socket] | None = None

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        response = super().handle_request(request)
        length = content_length(response.headers)
        if request.method == b"GET" and self._socket is not None and length is not None:
            timeout = request.extensions.get("timeout", {}).get("read")
            raw = RawBody(self._h11_state, self._socket, length, timeout, self._was_cut)
            response.extensions[RAW_BODY] = raw
        return response

    def _was_cut(self) -> bool:
        """Whether the interrupter of the request in flight shut its socket down."""
        tracked = self._tracked
        return tracked is not None and tracked[0] is not None and tracked[0].cut(tracked[1])

    def _send_request_headers(self, request: httpcore.Request) -> None:
        # The first step of a request, once the connection is this request's.
        sock = self._network_stream.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            self._tracked = (track(sock), sock)
        super()._send_request_headers(request)

    def _send_request_body(self, request: httpcore.Request) -> None:
        timeout = request.extensions.get("timeout", {}).get("write")
        assert isinstance(request.stream, Iterable)
        send_body(self._h11_state, self._network_stream, request.stream, timeout)

    def _response_closed(self) -> None:
        tracked, self._tracked = self._tracked, None
        if tracked is not None:
            untrack(*tracked)
        super()._response_closed()

    def has_expired(self) -> bool:
        with self._state_lock:
            return super().has_expired()

    def _receive_event(self, timeout: float | None = None) -> h11.Event | type[h11.PAUSED]:
        """httpcore's, except that a server that sent bytes which are not the head of an
        HTTP answer and closed the connection is said to send something that is not HTTP
        (httpcore calls it "disconnected without sending a response", as for a server
        that closed an idle connection, which is worth another try; this is not), and that
        a read an interrupter cut short raises :class:`~derrick.errors.Cancelled`."""
        try:
            return super()._receive_event(timeout)
        except (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError) as e:
            if self._was_cut():  # not a broken connection, to be tried again
                raise Cancelled("cancelled: the request was cut short") from e
            if not isinstance(e, httpcore.RemoteProtocolError):
                raise
            received, _ = self._h11_state.trailing_data
            if received and str(e).startswith("Server disconnected"):
                raise httpcore.RemoteProtocolError(
                    "malformed data: the server sent something that is not an HTTP answer "
                    "and closed the connection"
                ) from e
            raise


def _merge(
    defaults: Sequence[tuple[bytes, bytes]], overrides: Sequence[tuple[bytes, bytes]]
) -> _Headers:
    """``defaults`` without the names ``overrides`` sets, then ``overrides``."""
    names = {k.lower() for k, _ in overrides}
    return [(k, v) for k, v in defaults if k.lower() not in names] + list(overrides)


class _Proxy:
    """Where a pool's connections go through: an http(s) proxy's origin and headers."""

    def __init__(self, proxy: httpx.Proxy) -> None:
        url = proxy.url
        self.origin = httpcore.Origin(url.raw_scheme, url.raw_host, url.port or 80)
        #: The proxy as messages name it: its scheme, host and port (no credentials).
        self.shown = f"{url.scheme}://{url.netloc.decode('ascii').rpartition('@')[2]}"
        self.ssl_context = proxy.ssl_context
        headers: _Headers = list(proxy.headers.raw)
        if proxy.raw_auth is not None:
            user, password = proxy.raw_auth
            token = base64.b64encode(user + b":" + password)
            headers.insert(0, (b"Proxy-Authorization", b"Basic " + token))
        self.headers = headers


@contextlib.contextmanager
def _reaching(proxy: _Proxy) -> Iterator[None]:
    """Connecting to ``proxy``: failing to is the proxy's fault, not the host's (a
    :class:`httpcore.ProxyError` that names it)."""
    try:
        yield
    except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
        raise httpcore.ProxyError(f"cannot connect to the proxy {proxy.shown}: {e}") from e


class _Connection(httpcore.ConnectionInterface):
    """One HTTP/1.1 connection to ``origin``, opened on first use: directly, or tunnelled
    through ``proxy`` with ``CONNECT``."""

    def __init__(
        self,
        origin: httpcore.Origin,
        *,
        ssl_context: ssl.SSLContext | None,
        keepalive_expiry: float | None,
        proxy: _Proxy | None = None,
    ) -> None:
        self._origin = origin
        self._ssl_context = ssl_context
        self._expiry = keepalive_expiry
        self._proxy = proxy
        self._lock = threading.Lock()
        self._http: DerrickHTTP11Connection | None = None
        self._failed = False

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        if not self.can_handle_request(request.url.origin):
            raise RuntimeError(f"request to {request.url.origin} on a connection to {self._origin}")
        try:
            with self._lock:
                if self._http is None:
                    stream = self._open(request)
                    self._http = DerrickHTTP11Connection(self._origin, stream, self._expiry)
        except BaseException:
            self._failed = True
            raise
        return self._http.handle_request(request)

    def _open(self, request: httpcore.Request) -> httpcore.NetworkStream:
        timeout = request.extensions.get("timeout", {}).get("connect")
        host = self._origin.host.decode("ascii")
        if self._proxy is None:
            stream = httpcore.SyncBackend().connect_tcp(host, self._origin.port, timeout=timeout)
        else:
            stream = self._tunnel(request)
        if self._origin.scheme != b"https":
            return stream
        ctx = self._ssl_context or httpcore.default_ssl_context()
        return stream.start_tls(ctx, server_hostname=host, timeout=timeout)

    def _tunnel(self, request: httpcore.Request) -> httpcore.NetworkStream:
        assert self._proxy is not None
        proxy = self._proxy
        leg = _Connection(proxy.origin, ssl_context=proxy.ssl_context, keepalive_expiry=None)
        target = b"%b:%d" % (self._origin.host, self._origin.port)
        url = httpcore.URL(
            scheme=proxy.origin.scheme,
            host=proxy.origin.host,
            port=proxy.origin.port,
            target=target,
        )
        headers = _merge([(b"Host", target), (b"Accept", b"*/*")], proxy.headers)
        with _reaching(proxy):
            answer = leg.handle_request(
                httpcore.Request(b"CONNECT", url, headers=headers, extensions=request.extensions)
            )
        if not 200 <= answer.status < 300:
            reason = answer.extensions.get("reason_phrase", b"").decode("ascii", "replace")
            leg.close()
            raise httpcore.ProxyError(
                f"the proxy {proxy.shown} refused the tunnel: HTTP {answer.status} {reason}"
            )
        stream: httpcore.NetworkStream = answer.extensions["network_stream"]
        return stream

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return origin == self._origin

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def info(self) -> str:
        return self._http.info() if self._http is not None else "CONNECTING"

    def is_available(self) -> bool:
        return self._http is not None and self._http.is_available()

    def has_expired(self) -> bool:
        return self._failed if self._http is None else self._http.has_expired()

    def is_idle(self) -> bool:
        return self._failed if self._http is None else self._http.is_idle()

    def is_closed(self) -> bool:
        return self._failed if self._http is None else self._http.is_closed()


class _ForwardConnection(httpcore.ConnectionInterface):
    """Plain-http requests for ``origin`` sent to an http proxy, in absolute form."""

    def __init__(
        self, origin: httpcore.Origin, proxy: _Proxy, *, keepalive_expiry: float | None
    ) -> None:
        self._remote = origin
        self._proxy = proxy
        self._leg = _Connection(
            proxy.origin, ssl_context=proxy.ssl_context, keepalive_expiry=keepalive_expiry
        )

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        if not self.can_handle_request(request.url.origin):
            raise RuntimeError(f"request to {request.url.origin} on a connection to {self._remote}")
        via = self._proxy.origin
        url = httpcore.URL(
            scheme=via.scheme, host=via.host, port=via.port, target=bytes(request.url)
        )
        forwarded = httpcore.Request(
            request.method,
            url,
            headers=_merge(self._proxy.headers, request.headers),
            content=request.stream,
            extensions=request.extensions,
        )
        with _reaching(self._proxy):
            return self._leg.handle_request(forwarded)

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return origin == self._remote

    def close(self) -> None:
        self._leg.close()

    def info(self) -> str:
        return self._leg.info()

    def is_available(self) -> bool:
        return self._leg.is_available()

    def has_expired(self) -> bool:
        return self._leg.has_expired()

    def is_idle(self) -> bool:
        return self._leg.is_idle()

    def is_closed(self) -> bool:
        return self._leg.is_closed()


class _Pool(httpcore.ConnectionPool):
    """httpcore's pool, making derrick's connections (through ``proxy`` when given)."""

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None, limits: httpx.Limits, proxy: _Proxy | None
    ) -> None:
        super().__init__(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
        )
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["http/1.1"])
        self._context = ssl_context
        self._expiry = limits.keepalive_expiry
        self._route = proxy

    def create_connection(self, origin: httpcore.Origin) -> httpcore.ConnectionInterface:
        if self._route is not None and origin.scheme == b"http":
            return _ForwardConnection(origin, self._route, keepalive_expiry=self._expiry)
        return _Connection(
            origin, ssl_context=self._context, keepalive_expiry=self._expiry, proxy=self._route
        )


class ConnectionTransport(httpx.HTTPTransport):
    """httpx's HTTP transport over derrick's connection pool (:class:`_Pool`)."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        limits: httpx.Limits,
        proxy: httpx.Proxy | None = None,
    ) -> None:
        # Not super().__init__(), which would build (and load CA files for) a pool of
        # httpcore's own connections: handle_request and close use only this pool.
        self._pool = _Pool(
            ssl_context=ssl_context, limits=limits, proxy=_Proxy(proxy) if proxy else None
        )

    def connections(self) -> Iterator[httpcore.ConnectionInterface]:
        """The pool's connections (for tests and debugging)."""
        yield from self._pool.connections


def http_client(
    *,
    ssl_context: ssl.SSLContext | None,
    timeout: float,
    max_connections: int,
    user_agent: str,
    mounts: Mapping[str, httpx.BaseTransport] | None = None,
) -> httpx.Client:
    """An ``httpx.Client`` over derrick's connections, honouring ``HTTP_PROXY``,
    ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` as httpx does; ``mounts`` (tests)
    take precedence."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    routes: dict[str, httpx.BaseTransport | None] = {}
    for pattern, url in get_environment_proxies().items():
        routes[pattern] = None if url is None else _proxied(url, ssl_context, limits)
    routes.update(mounts or {})
    return httpx.Client(
        transport=ConnectionTransport(ssl_context=ssl_context, limits=limits),
        mounts=routes or None,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
        follow_redirects=False,
        headers={"User-Agent": user_agent},
        trust_env=False,
    )


def _proxied(
    url: str, ssl_context: ssl.SSLContext | None, limits: httpx.Limits
) -> httpx.BaseTransport:
    proxy = httpx.Proxy(url)
    if proxy.url.scheme not in ("http", "https"):  # SOCKS: httpx's own transport
        return httpx.HTTPTransport(verify=ssl_context or True, limits=limits, proxy=proxy)
    return ConnectionTransport(ssl_context=ssl_context, limits=limits, proxy=proxy)
