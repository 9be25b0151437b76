"""Loopback HTTP servers that put a real registry behind faults it cannot produce itself.

:class:`FaultProxy` is a reverse proxy on ``127.0.0.1`` (or ``bind``) with a free port (or
``port``: a proxy stopped and started again on the same port is a registry restarting).  It
forwards each request to ``upstream`` (an ``http://`` or ``https://`` registry; without one,
unanswered requests get 404) and streams the answer back chunk by chunk, so large blobs pass
without being held in memory.  The ``Host`` header is passed through, so the registry builds
upload and redirect URLs that point back at the proxy.

Three ways to shape what the client sees, tried in this order:

``route``
    ``fn(request: RecordedRequest) -> Reply | None``: answer a request whole (a redirect, an
    HTML page, a truncated manifest); ``None`` passes it on.  Runs in the server's threads.
:class:`Fault` rules (:meth:`FaultProxy.add_fault`)
    Each rule applies to the matching requests, the first ``times`` of them (every one when
    None); the first rule that applies to a request is used (and counted).  A rule either
    answers itself (``status`` set: ``500`` twice, ``429`` with ``Retry-After``...), or
    drops the connection unanswered (``reset``: a TCP RST), or disturbs the forwarded
    answer: replace its ``body``, add ``headers``, ``delay`` it,
    ``flip_at`` one byte (XOR 0xFF), ``cut_after`` N bytes (the connection is shut down
    mid-body), or ``stall_after`` N bytes for ``stall_for`` seconds (or until
    :meth:`FaultProxy.release`).  Offsets are positions in the blob, also in the answer to a
    ``Range`` request.  A rule that disturbs an answer only takes a 200 or 206 one.
``extra_headers``
    Added to every forwarded answer (``ratelimit-*``).

Every request is recorded (:attr:`FaultProxy.requests`, :class:`RecordedRequest`) with its
arrival time, status, body bytes sent and whether a rule took it; :meth:`FaultProxy.blob_gets`
and :meth:`FaultProxy.ranges` pick out blob downloads.  The proxy also counts the client
connections that carry requests, open at once (:attr:`FaultProxy.peak_connections`), and those
that never sent a valid request (:attr:`FaultProxy.stray_connections`: a TLS handshake tried on
this plain-http server, as a client probing for https does).

:class:`TunnelProxy` is the other kind: an outbound proxy such as ``HTTPS_PROXY`` names
(``CONNECT`` tunnels, and absolute-URI requests for plain http), which records that it was used.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import selectors
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from .background import ServerThread

__all__ = [
    "Fault",
    "FaultProxy",
    "RecordedRequest",
    "Reply",
    "Route",
    "TunnelProxy",
    "paginate_tags",
]

_BLOB = re.compile(r"^/v2/(.+)/blobs/([a-z0-9]+:[a-f0-9]+)$")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-")
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
CHUNK = 64 * 1024
#: Longest a stall waits for :meth:`FaultProxy.release`.
MAX_STALL = 120.0


@dataclass
class RecordedRequest:
    method: str
    path: str  #: path and query, as sent
    headers: dict[str, str]  #: lowercased names
    body: bytes = b""
    server: str = ""  #: the ``host:port`` of the proxy that received it
    time: float = 0.0  #: ``time.monotonic()`` when it arrived
    status: int = 0  #: the status answered (0 until known)
    sent: int = 0  #: body bytes sent to the client
    faulted: bool = False  #: a :class:`Fault` rule took it
    done: bool = False  #: the answer is finished (or broken off)

    @property
    def route(self) -> str:
        """The path without the query."""
        return urlsplit(self.path).path

    @property
    def blob(self) -> str | None:
        """The digest, for a blob request."""
        m = _BLOB.match(self.route)
        return m.group(2) if m else None

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def redirect(cls, location: str, status: int = 307) -> Reply:
        return cls(status, b"", {"Location": location})

    @classmethod
    def text(cls, body: str, content_type: str = "text/html", status: int = 200) -> Reply:
        return cls(status, body.encode(), {"Content-Type": content_type})


Route = Callable[[RecordedRequest], Reply | None]


@dataclass
class Fault:
    """A rule: which requests it takes, how many, and what it does to them.

    Requests are chosen by ``method`` (None: any) and ``digest`` (blob requests for that
    digest) or ``path`` (a regular expression the path without query must match); with
    neither, every blob request.  See the module docstring for the actions.
    """

    digest: str | None = None
    path: str | None = None
    method: str | None = "GET"
    times: int | None = 1
    #: answer with this status instead of forwarding (with ``headers`` and ``body``)
    status: int | None = None
    reset: bool = False  #: close the connection with a TCP RST instead of answering
    headers: dict[str, str] = field(default_factory=dict)
    #: the body to answer with; for a forwarded answer it replaces the registry's
    #: (``Content-Length`` and ``Docker-Content-Digest`` follow it)
    body: bytes | None = None
    delay: float = 0.0  #: seconds to wait before answering
    flip_at: int | None = None
    cut_after: int | None = None
    stall_after: int | None = None
    stall_for: float | None = None  #: None: until :meth:`FaultProxy.release`
    used: int = 0

    def matches(self, req: RecordedRequest) -> bool:
        if self.method is not None and req.method != self.method:
            return False
        if self.times is not None and self.used >= self.times:
            return False
        if self.digest is not None:
            return req.blob == self.digest
        if self.path is not None:
            return re.fullmatch(self.path, req.route) is not None
        return req.blob is not None

    @property
    def answers(self) -> bool:
        return self.status is not None or self.reset


@dataclass
class _Stall:
    request: RecordedRequest
    offset: int


class FaultProxy:
    """See the module docstring.  Use as a context manager, or :meth:`start` / :meth:`stop`.

    ``verify`` (an :class:`ssl.SSLContext`, or True for the system's trust) is used for an
    https upstream.
    """

    def __init__(
        self,
        upstream: str | None = None,
        faults: list[Fault] | None = None,
        *,
        route: Route | None = None,
        extra_headers: Mapping[str, str] | None = None,
        bind: str = "127.0.0.1",
        port: int = 0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self._upstream_parts = urlsplit(self.upstream) if self.upstream else None
        if self._upstream_parts is not None and self._upstream_parts.scheme not in (
            "http",
            "https",
        ):
            raise ValueError("the upstream must be an http:// or https:// URL")
        self._ssl: ssl.SSLContext | None = None
        if self._upstream_parts is not None and self._upstream_parts.scheme == "https":
            self._ssl = (
                verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
            )
        self.route = route
        self.extra_headers = dict(extra_headers or {})
        self.bind = bind
        self._port = port
        self.faults: list[Fault] = list(faults or [])
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._stalls: list[_Stall] = []
        self._release = threading.Event()
        self._open = 0  # connections that carried a request, not yet closed
        self._sockets = 0  # connections accepted, not yet closed
        self.peak_connections = 0  #: most connections carrying requests open at once
        self.connections = 0  #: connections that carried requests
        self.stray_connections = 0  #: connections closed without a valid request
        self._httpd: ThreadingHTTPServer | None = None
        self._serving: ServerThread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._httpd = _QuietServer((self.bind, self._port), Handler)
        self._serving = ServerThread(self._httpd, "fault-proxy")
        return self

    def stop(self) -> None:
        """Stop taking connections, then let stalled answers go on (a stall that ends in
        ``cut_after`` then breaks its connection off, as a registry going away does)."""
        if self._serving is not None:
            self._serving.stop()
            self._serving = None
        self._release.set()
        self._httpd = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "proxy not started"
        return int(self._httpd.server_address[1])

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` (or the bind address, if it is not the wildcard)."""
        addr = "127.0.0.1" if self.bind in ("0.0.0.0", "") else self.bind
        return f"{addr}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # -- rules and log -----------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget the recorded requests and every rule (stalled answers are released)."""
        self.release()
        with self._lock:
            self._requests.clear()
            self.faults.clear()
            self._stalls.clear()
            self.peak_connections = self._open
            self.connections = self.stray_connections = 0
        self._release = threading.Event()

    def release(self) -> None:
        """Let stalled answers go on."""
        self._release.set()

    @property
    def open_connections(self) -> int:
        """Client connections accepted and not yet closed."""
        with self._lock:
            return self._sockets

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, route: str) -> list[RecordedRequest]:
        """The requests whose path (without query) is ``route``."""
        return [r for r in self.requests if r.route == route]

    def blob_gets(self, digest: str | None = None) -> list[RecordedRequest]:
        """GET requests for blobs (for ``digest`` only, when given)."""
        return [
            r
            for r in self.requests
            if r.method == "GET" and r.blob is not None and digest in (None, r.blob)
        ]

    def ranges(self, digest: str | None = None) -> list[str | None]:
        """The ``Range`` header of each blob GET, None for those without one."""
        return [r.range for r in self.blob_gets(digest)]

    def stalled(self) -> list[tuple[str, int]]:
        """(digest, offset) of every answer waiting in a stall."""
        with self._lock:
            return [(s.request.blob or "", s.offset) for s in self._stalls]

    def wait_stalled(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.stalled()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.stalled())} of {count} downloads stalled")
            time.sleep(0.02)

    def wait_idle(self, timeout: float = 10) -> None:
        """Wait until no client connection is open."""
        deadline = time.monotonic() + timeout
        while self.open_connections:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.open_connections} connections still open")
            time.sleep(0.01)

    # -- answering ---------------------------------------------------------------------------

    def _take(self, req: RecordedRequest, *, answering: bool) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.answers == answering and f.matches(req):
                    f.used += 1
                    req.faulted = True
                    return f
        return None

    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(req)

    def _accepted(self, delta: int) -> None:
        with self._lock:
            self._sockets += delta

    def _connected(self, delta: int) -> None:
        with self._lock:
            self._open += delta
            if delta > 0:
                self.connections += 1
                self.peak_connections = max(self.peak_connections, self._open)

    def _stray(self) -> None:
        with self._lock:
            self.stray_connections += 1

    def _stall(self, req: RecordedRequest, offset: int, seconds: float | None) -> None:
        release = self._release
        stall = _Stall(req, offset)
        with self._lock:
            self._stalls.append(stall)
        release.wait(timeout=MAX_STALL if seconds is None else seconds)
        with self._lock:
            if stall in self._stalls:
                self._stalls.remove(stall)

    def _connect(self) -> http.client.HTTPConnection:
        parts = self._upstream_parts
        assert parts is not None and parts.hostname is not None
        if parts.scheme == "https":
            return http.client.HTTPSConnection(
                parts.hostname, parts.port or 443, timeout=60, context=self._ssl
            )
        return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)

    def forward(self, req: RecordedRequest, path: str | None = None) -> Reply:
        """Send ``req`` (to ``path`` instead, if given) upstream and return the whole answer.

        For routes that look at the registry's answer before answering themselves.
        """
        if self.upstream is None:
            return Reply(404, b'{"errors":[{"code":"NOT_FOUND","message":"no route"}]}')
        conn = self._connect()
        try:
            headers = {k: v for k, v in req.headers.items() if k not in _HOP_BY_HOP}
            headers.pop("content-length", None)
            conn.request(req.method, path or req.path, body=req.body or None, headers=headers)
            resp = conn.getresponse()
            body = b"" if req.method == "HEAD" else resp.read()
            out = {
                k: v
                for k, v in resp.getheaders()
                if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
            }
            if req.method == "HEAD" and resp.getheader("content-length") is not None:
                out["Content-Length"] = resp.getheader("content-length") or "0"
            out.update(self.extra_headers)
            return Reply(resp.status, body, out)
        finally:
            conn.close()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-answer (killed, cancelled, timed out) is expected


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self._counted = False
        self.owner._accepted(+1)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._counted:
                self.owner._connected(-1)
            else:
                self.owner._stray()
            self.owner._accepted(-1)

    def _handle(self) -> None:
        proxy = self.owner
        if not self._counted:
            self._counted = True
            proxy._connected(+1)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            server=proxy.host,
            time=time.monotonic(),
        )
        proxy._record(req)
        try:
            reply = proxy.route(req) if proxy.route is not None else None
            if reply is None:
                fault = proxy._take(req, answering=True)
                if fault is not None:
                    time.sleep(fault.delay)
                    if fault.status is None:  # reset: no answer at all
                        self._reset()
                        return
                    reply = Reply(fault.status, fault.body or b"", dict(fault.headers))
            if reply is None and proxy.upstream is None:
                reply = proxy.forward(req)
            if reply is not None:
                self._reply(req, reply)
            else:
                self._forward(req)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up
            self.close_connection = True
        except Exception as e:  # an upstream failure becomes a 502, never a hung client
            if req.status == 0:
                msg = f"proxy error: {e}".encode()
                self._reply(req, Reply(502, msg, {"Content-Type": "text/plain"}))
            else:
                self.close_connection = True
        finally:
            req.done = True

    def _reply(self, req: RecordedRequest, reply: Reply) -> None:
        req.status = reply.status
        self.send_response(reply.status)
        names = {k.lower() for k in reply.headers}
        for k, v in reply.headers.items():
            self.send_header(k, v)
        if "content-length" not in names:
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD" and reply.body:
            self.wfile.write(reply.body)
            req.sent = len(reply.body)

    def _forward(self, req: RecordedRequest) -> None:
        proxy = self.owner
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        conn = proxy._connect()
        try:
            conn.request(self.command, self.path, body=req.body or None, headers=headers)
            resp = conn.getresponse()
            fault = None
            if resp.status in (200, 206):
                fault = proxy._take(req, answering=False)
            start = 0
            if resp.status == 206:
                m = _CONTENT_RANGE.match(resp.getheader("content-range") or "")
                start = int(m.group(1)) if m else 0
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            data: bytes | None = None
            if self.command != "HEAD":
                if fault is not None and fault.body is not None:
                    resp.read()
                    data = fault.body
                    out = [(k, v) for k, v in out if k.lower() != "docker-content-digest"]
                    if resp.getheader("docker-content-digest") is not None:
                        digest = "sha256:" + hashlib.sha256(data).hexdigest()
                        out.append(("Docker-Content-Digest", digest))
                elif resp.getheader("content-length") is None:
                    data = resp.read()  # a chunked answer: sent with a length
                if data is not None:
                    out = [(k, v) for k, v in out if k.lower() != "content-length"]
                    out.append(("Content-Length", str(len(data))))
            extra = {**proxy.extra_headers, **(fault.headers if fault is not None else {})}
            out = [(k, v) for k, v in out if k.lower() not in {n.lower() for n in extra}]
            out += list(extra.items())
            if fault is not None:
                time.sleep(fault.delay)
            req.status = resp.status
            self.send_response(resp.status)
            for k, v in out:
                self.send_header(k, v)
            self.end_headers()
            if self.command == "HEAD":
                return
            if data is not None:
                self._body(req, [data], fault, start)
            else:
                self._body(req, iter(lambda: resp.read(CHUNK), b""), fault, start)
        finally:
            conn.close()

    def _body(self, req: RecordedRequest, chunks: Any, fault: Fault | None, start: int) -> None:
        pos = start  # offset in the blob of the next byte sent
        cut = fault.cut_after if fault is not None else None
        stall = fault.stall_after if fault is not None else None
        for piece in chunks:
            chunk = piece
            while True:
                bounds = [b for b in (cut, stall) if b is not None and b >= pos]
                nxt = min(bounds) if bounds else None
                if nxt is None or pos + len(chunk) < nxt:
                    self._send(req, chunk, pos, fault)
                    pos += len(chunk)
                    break
                head = chunk[: nxt - pos]
                self._send(req, head, pos, fault)
                pos = nxt
                chunk = chunk[len(head) :]
                if stall is not None and pos == stall:
                    stall = None
                    self.wfile.flush()
                    assert fault is not None
                    self.owner._stall(req, pos, fault.stall_for)
                if cut is not None and pos >= cut:
                    self._cut()
                    return
                if not chunk:
                    break

    def _send(self, req: RecordedRequest, chunk: bytes, pos: int, fault: Fault | None) -> None:
        if (
            fault is not None
            and fault.flip_at is not None
            and pos <= fault.flip_at < pos + len(chunk)
        ):
            i = fault.flip_at - pos
            chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
        if chunk:
            self.wfile.write(chunk)
            req.sent += len(chunk)

    def _reset(self) -> None:
        """Drop the connection with a TCP RST (linger 0), as a crashed peer or middlebox does."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _cut(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


# -- routes ----------------------------------------------------------------------------------

_TAGS_LIST = re.compile(r"^/v2/(.+)/tags/list$")


def paginate_tags(proxy: FaultProxy) -> Route:
    """A route that pages ``/v2/NAME/tags/list`` by ``n`` and ``last`` with ``Link`` headers.

    The distribution registry 2.8 ignores ``n`` for tags (only its catalog pages), so the
    proxy fetches the whole list and cuts pages as the distribution spec describes.
    """

    def route(req: RecordedRequest) -> Reply | None:
        m = _TAGS_LIST.match(req.route)
        if req.method != "GET" or m is None:
            return None
        query = parse_qs(urlsplit(req.path).query)
        if "n" not in query:
            return None
        whole = proxy.forward(req, req.route)
        if whole.status != 200:
            return whole
        doc = json.loads(whole.body)
        tags = sorted(doc.get("tags") or [])
        last = query.get("last", [""])[0]
        n = int(query["n"][0])
        rest = [t for t in tags if t > last] if last else tags
        page = rest[:n]
        headers = {"Content-Type": "application/json"}
        if len(rest) > n:
            nxt = f"{req.route}?{urlencode({'n': n, 'last': page[-1]})}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        body = json.dumps({"name": m.group(1), "tags": page}).encode()
        return Reply(200, body, headers)

    return route


# -- an outbound proxy -----------------------------------------------------------------------


class TunnelProxy:
    """An outbound HTTP proxy on ``127.0.0.1``, as ``HTTPS_PROXY``/``HTTP_PROXY`` name.

    ``CONNECT host:port`` opens a tunnel; a plain-http request in absolute form
    (``GET http://host:port/path``) is passed on to that host as it is (registries accept the
    absolute form), and so is the rest of that connection.  :attr:`targets` records the
    ``host:port`` each connection was for, :attr:`lines` the first request line of each.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.lines: list[str] = []
        self._server: socketserver.ThreadingTCPServer | None = None
        self._serving: ServerThread | None = None

    @property
    def targets(self) -> list[str]:
        with self._lock:
            out = []
            for line in self.lines:
                method, target = line.split(" ")[:2]
                out.append(target if method == "CONNECT" else urlsplit(target).netloc)
            return out

    @property
    def url(self) -> str:
        assert self._server is not None, "proxy not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> TunnelProxy:
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self._serving = ServerThread(self._server, "tunnel-proxy")
        return self

    def stop(self) -> None:
        if self._serving is not None:
            self._serving.stop()
            self._serving = None
        self._server = None

    def __enter__(self) -> TunnelProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(65536)
            if not data:
                return
            head += data
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        with self._lock:
            self.lines.append(line)
        method, target = line.split(" ")[:2]
        hostport = target if method == "CONNECT" else urlsplit(target).netloc
        host, _, port = hostport.rpartition(":")
        with socket.create_connection((host.strip("[]"), int(port)), timeout=30) as upstream:
            if method == "CONNECT":
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                rest = head.split(b"\r\n\r\n", 1)[1]
            else:
                rest = head
            if rest:
                upstream.sendall(rest)
            _pipe(client, upstream)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in sel.select(timeout=60):
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                dst: socket.socket = key.data
                try:
                    data = src.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                dst.sendall(data)
    finally:
        sel.close()
