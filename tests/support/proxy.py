"""Tiny loopback HTTP servers for fault cases a real registry cannot produce.

:class:`ProxyServer` is a reverse proxy in front of a real registry (or nothing): it records
every request it sees, can add response headers (``ratelimit-*``), and lets a test answer
chosen requests itself through a *route* function -- a redirect to a "storage" server, an HTML
page instead of JSON, a truncated manifest.  Without an upstream, unrouted requests get 404.

A route is ``fn(request: RecordedRequest) -> Reply | None``; ``None`` forwards the request.
Routes run in the server's threads; keep them simple.

Bodies are read whole (test images are small).  The ``Host`` header is passed through, so the
registry builds upload URLs that point back at the proxy.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

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
        "content-length",
    }
)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  #: path and query, as sent
    headers: dict[str, str]  #: lowercased names
    body: bytes
    server: str  #: the ``host:port`` of the server that received it

    @property
    def route(self) -> str:
        """The path without the query."""
        return urlsplit(self.path).path


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


class ProxyServer:
    """A threaded HTTP server on ``bind`` (default ``127.0.0.1``) with a free port.

    ``upstream`` is a base URL (``http://127.0.0.1:5000``) to forward unrouted requests to;
    ``extra_headers`` are added to every forwarded answer; ``verify`` is passed to httpx for
    an https upstream.  Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        upstream: str | None = None,
        *,
        route: Route | None = None,
        extra_headers: Mapping[str, str] | None = None,
        bind: str = "127.0.0.1",
        verify: Any = True,
    ) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.route = route
        self.extra_headers = dict(extra_headers or {})
        self.bind = bind
        self._client = httpx.Client(verify=verify, timeout=30, follow_redirects=False)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ProxyServer:
        server = self

        class Handler(_Handler):
            proxy = server

        self._httpd = ThreadingHTTPServer((self.bind, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="test-proxy",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._client.close()

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` (or the bind address, if it is not the wildcard)."""
        addr = "127.0.0.1" if self.bind in ("0.0.0.0", "") else self.bind
        return f"{addr}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # -- log -------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, route: str) -> list[RecordedRequest]:
        """The requests whose path (without query) is ``route``."""
        return [r for r in self.requests if r.route == route]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(req)

    # -- answering -------------------------------------------------------------------------

    def answer(self, req: RecordedRequest) -> Reply:
        self._record(req)
        if self.route is not None:
            reply = self.route(req)
            if reply is not None:
                return reply
        return self.forward(req)

    def forward(self, req: RecordedRequest, path: str | None = None) -> Reply:
        """Send ``req`` (to ``path`` instead, if given) upstream and return the answer."""
        if self.upstream is None:
            return Reply(404, b'{"errors":[{"code":"NOT_FOUND","message":"no route"}]}')
        headers = {k: v for k, v in req.headers.items() if k not in _HOP_BY_HOP}
        upstream_req = self._client.build_request(
            req.method,
            self.upstream + (path or req.path),
            headers=headers,
            content=req.body or None,
        )
        resp = self._client.send(upstream_req, stream=True)
        try:
            body = b"".join(resp.iter_raw())
        finally:
            resp.close()
        out = {k: v for k, v in resp.headers.multi_items() if k.lower() not in _HOP_BY_HOP}
        if req.method == "HEAD" and "content-length" in resp.headers:
            out["Content-Length"] = resp.headers["content-length"]
        out.update(self.extra_headers)
        return Reply(resp.status_code, body, out)


class _Handler(BaseHTTPRequestHandler):
    proxy: ProxyServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            server=self.proxy.host,
        )
        try:
            reply = self.proxy.answer(req)
        except Exception as e:  # an upstream failure becomes a 502, never a hung client
            reply = Reply(502, f"proxy error: {e}".encode(), {"Content-Type": "text/plain"})
        try:
            self.send_response(reply.status)
            names = {k.lower() for k in reply.headers}
            for k, v in reply.headers.items():
                self.send_header(k, v)
            if "content-length" not in names:
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD" and reply.body:
                self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


_TAGS_LIST = re.compile(r"^/v2/(.+)/tags/list$")


def paginate_tags(proxy: ProxyServer) -> Route:
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
