"""A streaming loopback proxy in front of a real registry that injects faults into blob downloads.

:class:`FaultProxy` forwards every request to ``upstream`` (an ``http://`` registry) and
streams the answer back chunk by chunk, so it also serves large blobs without holding them in
memory.  Blob downloads (``GET /v2/<name>/blobs/<digest>``) can be disturbed by
:class:`BlobFault` rules:

``flip_at``
    flip one byte (XOR 0xFF) at this offset of the blob, so the content no longer matches its
    digest;
``cut_after``
    close the connection once the blob has been sent up to this offset (the client sees a
    short body);
``stall_after``
    stop sending at this offset until :meth:`FaultProxy.release` is called (to catch a client
    mid-blob and kill it).

Offsets are positions in the blob, also in answers to ``Range`` requests.  A rule applies to
the blob ``digest`` (any blob when None) and to its first ``times`` matching downloads (every
one when None).  Every request is recorded with its ``Range`` header, status and the body
bytes sent (:attr:`FaultProxy.requests`, :meth:`FaultProxy.blob_gets`,
:meth:`FaultProxy.ranges`).
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

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


@dataclass
class BlobFault:
    """What to do to matching blob downloads (see the module docstring)."""

    digest: str | None = None
    flip_at: int | None = None
    cut_after: int | None = None
    stall_after: int | None = None
    times: int | None = 1
    used: int = 0

    def matches(self, digest: str) -> bool:
        if self.digest is not None and self.digest != digest:
            return False
        return self.times is None or self.used < self.times


@dataclass
class ProxiedRequest:
    method: str
    path: str
    headers: dict[str, str]  #: lowercased names
    status: int = 0
    sent: int = 0  #: body bytes sent to the client
    faulted: bool = False
    done: bool = False

    @property
    def route(self) -> str:
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
class _Stall:
    request: ProxiedRequest
    offset: int


class FaultProxy:
    """A threaded proxy on 127.0.0.1 with a free port; use as a context manager."""

    def __init__(self, upstream: str, faults: list[BlobFault] | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError("FaultProxy forwards to a plain http upstream")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.faults: list[BlobFault] = list(faults or [])
        self._lock = threading.Lock()
        self._requests: list[ProxiedRequest] = []
        self._stalls: list[_Stall] = []
        self._release = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fault-proxy",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        assert self._httpd is not None, "proxy not started"
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    # -- faults and log ----------------------------------------------------------------------

    def add_fault(self, fault: BlobFault) -> BlobFault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget the recorded requests and every fault rule (stalled answers are released)."""
        self.release()
        with self._lock:
            self._requests.clear()
            self.faults.clear()
            self._stalls.clear()
        self._release = threading.Event()

    def release(self) -> None:
        """Let stalled answers go on."""
        self._release.set()

    @property
    def requests(self) -> list[ProxiedRequest]:
        with self._lock:
            return list(self._requests)

    def blob_gets(self, digest: str | None = None) -> list[ProxiedRequest]:
        """GET requests for blobs (for ``digest`` only, when given)."""
        return [
            r
            for r in self.requests
            if r.method == "GET" and r.blob is not None and digest in (None, r.blob)
        ]

    def ranges(self, digest: str | None = None) -> list[str]:
        """The ``Range`` headers of blob GETs (requests without one are left out)."""
        return [r.range for r in self.blob_gets(digest) if r.range is not None]

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

    def _take_fault(self, digest: str) -> BlobFault | None:
        with self._lock:
            for f in self.faults:
                if f.matches(digest):
                    f.used += 1
                    return f
        return None

    def _record(self, req: ProxiedRequest) -> None:
        with self._lock:
            self._requests.append(req)

    def _stall(self, req: ProxiedRequest, offset: int) -> None:
        release = self._release
        with self._lock:
            self._stalls.append(_Stall(req, offset))
        release.wait(timeout=120)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-answer (killed, or cancelled) is expected here


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        proxy = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        req = ProxiedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
        )
        proxy._record(req)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = f"{proxy.upstream_host}:{proxy.upstream_port}"
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            req.status = resp.status
            fault = None
            digest = req.blob
            if self.command == "GET" and digest is not None and resp.status in (200, 206):
                fault = proxy._take_fault(digest)
                req.faulted = fault is not None
            start = 0
            if resp.status == 206:
                m = _CONTENT_RANGE.match(resp.getheader("content-range") or "")
                start = int(m.group(1)) if m else 0
            chunked = resp.getheader("content-length") is None and self.command != "HEAD"
            data = resp.read() if chunked else None
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP_BY_HOP and not (chunked and k.lower() == "content-length"):
                    self.send_header(k, v)
            if data is not None:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "HEAD":
                return
            if data is not None:
                self.wfile.write(data)
                req.sent = len(data)
                return
            self._stream(resp, req, fault, start)
        finally:
            conn.close()
            req.done = True

    def _stream(
        self,
        resp: http.client.HTTPResponse,
        req: ProxiedRequest,
        fault: BlobFault | None,
        start: int,
    ) -> None:
        pos = start  # offset in the blob of the next byte sent
        cut = fault.cut_after if fault is not None else None
        stall = fault.stall_after if fault is not None else None
        while True:
            chunk = resp.read(CHUNK)
            if not chunk:
                return
            while chunk:
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
                    self.owner._stall(req, pos)
                if cut is not None and pos >= cut:
                    self._cut()
                    return

    def _send(self, req: ProxiedRequest, chunk: bytes, pos: int, fault: BlobFault | None) -> None:
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

    def _cut(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle
