"""The one place derrick does HTTP.

:class:`Transport` owns the connection pools, TLS settings, retries with backoff, and
redirects.  It knows nothing of registries or auth: :mod:`derrick.registry` builds
requests and hands them here.  Which scheme a host speaks is asked of it explicitly
(:meth:`Transport.probe_scheme`), never found out as a side effect of building a URL.

Redirects are followed by hand so that the ``Authorization`` header is dropped
whenever a redirect leaves the origin it was meant for (blob downloads are
commonly redirected to a storage host that must never see registry
credentials).

The connections are derrick's own (:mod:`derrick.connections`: large socket reads, an
expiry check that cannot race a request); importing this module changes nothing in
httpx or httpcore for anyone else.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from derrick.connections import http_client
from derrick.errors import DerrickError, Remedy, TLSError, TransportError, UsageError
from derrick.neterrors import (
    failed_url,
    is_cert_problem,
    is_client_cert_problem,
    is_refused,
    is_tls_problem,
    is_unknown_host,
    retryable,
    transport_error,
)

log = logging.getLogger("derrick.http")

#: Status codes that are worth another try.
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_MAX_REDIRECTS = 10
_SECRET_QUERY = re.compile(
    r"((?:token|access_token|refresh_token|password|signature|sig|x-amz-signature|x-amz-credential)=)[^&]*",
    re.IGNORECASE,
)


def redact_url(url: str | httpx.URL) -> str:
    """The URL with user info and secret-looking query values removed, for messages."""
    s = str(url)
    parts = urlsplit(s)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        s = s.replace(parts.netloc, host, 1)
    return _SECRET_QUERY.sub(r"\1REDACTED", s)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``name[:port]``) is this machine: localhost or a loopback IP.

    Host names are case-insensitive: ``LOCALHOST:5000`` is this machine too.
    """
    name = host.lower()
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    port = url.port or (443 if url.scheme == "https" else 80)
    return (url.scheme, url.host, port)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to try again after a transient failure."""

    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        base = min(self.max_backoff, self.backoff * (2**attempt))
        return random.uniform(base / 2, base)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class TLSConfig:
    """TLS settings: extra CA file, per-host certs.d directory, verification switch."""

    ca_cert: Path | None = None
    certs_dir: Path | None = field(default_factory=lambda: Path("/etc/docker/certs.d"))

    def host_dir(self, host: str) -> Path | None:
        """The certs.d directory of ``host`` (``certs_dir/HOST[:PORT]``), found whatever the
        case of either name: host names are case-insensitive."""
        if self.certs_dir is None:
            return None
        exact = self.certs_dir / host
        if exact.is_dir() or not self.certs_dir.is_dir():
            return exact
        want = host.lower()
        try:
            found = [d for d in self.certs_dir.iterdir() if d.name.lower() == want and d.is_dir()]
        except OSError:
            return exact
        return min(found) if found else exact

    def context_for(self, host: str, *, verify: bool) -> ssl.SSLContext:
        """The context for ``host``: its client certificate, and unless ``verify`` is
        false, the system's CAs (loading them costs ~20 ms), ``ca_cert`` and its own."""
        hostdir = self.host_dir(host)
        if not verify:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context()
            self._load_cas(ctx, hostdir)
        if hostdir is not None and hostdir.is_dir():
            for f in sorted(hostdir.iterdir()):
                if f.suffix == ".cert":
                    key = f.with_suffix(".key")
                    if key.exists():
                        ctx.load_cert_chain(str(f), str(key))
        return ctx

    def _load_cas(self, ctx: ssl.SSLContext, hostdir: Path | None) -> None:
        if self.ca_cert is not None:
            try:
                ctx.load_verify_locations(cafile=str(self.ca_cert))
            except (OSError, ssl.SSLError) as e:
                raise TLSError(
                    f"cannot load CA certificate {self.ca_cert}: {e}", remedy=Remedy("ca-file")
                ) from None
        if hostdir is not None and hostdir.is_dir():
            for f in sorted(hostdir.iterdir()):
                if f.suffix == ".crt":
                    ctx.load_verify_locations(cafile=str(f))


class Transport:
    """Connection pools, retries and redirects for every request, and the scheme probe.

    ``insecure_hosts`` are registries the user named insecure: plain http is
    allowed and TLS is not verified.  Loopback hosts may also fall back to
    plain http (a registry on this machine cannot be intercepted), but their
    TLS is still verified when they speak it.
    """

    def __init__(
        self,
        *,
        insecure: bool = False,
        insecure_hosts: Iterable[str] = (),
        tls: TLSConfig | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 16,
        user_agent: str = "derrick",
        mounts: Mapping[str, httpx.BaseTransport] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.insecure_all = insecure
        self.insecure_hosts = {h.lower() for h in insecure_hosts}
        self.tls = tls or TLSConfig()
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_connections = max_connections
        self.user_agent = user_agent
        self._mounts = dict(mounts or {})
        self._sleep = sleep
        self._clients: dict[tuple[str, bool], httpx.Client] = {}
        self._lock = threading.Lock()
        self._closed = False
        #: The origins that have answered a request (with any status) in this run.
        self._answered: set[tuple[str, str, int | None]] = set()

    # -- configuration -----------------------------------------------------------------

    def is_insecure(self, host: str) -> bool:
        return self.insecure_all or host.lower() in self.insecure_hosts

    def allows_http(self, host: str) -> bool:
        return self.is_insecure(host) or is_loopback(host)

    def _client(self, host: str, scheme: str) -> httpx.Client:
        verify = not self.is_insecure(host)
        key = (host.lower() if scheme == "https" else "", verify if scheme == "https" else True)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                ctx = self.tls.context_for(host, verify=verify) if scheme == "https" else None
                client = self._clients[key] = self._new_client(ctx)
            return client

    def _new_client(self, ssl_context: ssl.SSLContext | None) -> httpx.Client:
        if self._closed:  # connections opened now would never be closed
            raise UsageError(
                "the registry client is closed: it was used after close() (or after its "
                "with block)",
                hint="open a new client",
            )
        return http_client(
            ssl_context=ssl_context,
            timeout=self.timeout,
            max_connections=self.max_connections,
            user_agent=self.user_agent,
            mounts=self._mounts,
        )

    def close(self) -> None:
        """Close every connection; the transport sends nothing more (a request raises
        :class:`UsageError`)."""
        with self._lock:
            self._closed = True
            for c in self._clients.values():
                c.close()
            self._clients.clear()

    def retry_sleep(self, attempt: int, retry_after: float | None = None) -> None:
        """Wait before retry number ``attempt`` (0-based) of a higher-level operation."""
        self._sleep(self.retry.delay(attempt, retry_after))

    # -- scheme discovery --------------------------------------------------------------

    def probe_scheme(self, host: str) -> str:
        """``"https"``, or ``"http"`` for an insecure or loopback host that answers
        https with something other than TLS.  Costs a request for such hosts (one
        ``GET /v2/`` over https); callers ask once per host and remember the answer.

        Only whether the host speaks TLS is asked: a loopback host's certificate is not
        checked by the probe (the requests that follow check it), so no CA store is
        loaded for a host that turns out to speak plain http.
        """
        if not self.allows_http(host):
            return "https"
        url = f"https://{host}/v2/"
        if self.is_insecure(host):
            probe, own = self._client(host, "https"), False
        else:
            ctx = self.tls.context_for(host, verify=False)
            probe, own = self._new_client(ctx), True
        try:
            probe.request("GET", url)
            return "https"
        except httpx.ConnectError as e:
            if is_client_cert_problem(e) or is_cert_problem(e):
                return "https"  # the real request reports the certificate problem
            if is_tls_problem(e):
                return "http"
            raise self._transport_error(e, url) from None
        except httpx.HTTPError:
            return "https"
        finally:
            if own:
                probe.close()

    # -- sending ---------------------------------------------------------------------

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | Callable[[], Iterable[bytes]] | None = None,
        stream: bool = False,
        retry: bool = True,
        auth_origin: tuple[str, str, int | None] | None = None,
    ) -> httpx.Response:
        """Send one request, following redirects and retrying transient failures.

        ``content`` may be a callable returning a fresh iterable of chunks, so a
        retried upload can be replayed.  When ``stream`` is true the caller must
        close the returned response.  Responses of every status are returned;
        mapping statuses to errors is the caller's job, except that retries of
        429/5xx are done here for requests that may be repeated.
        """
        attempt = 0
        while True:
            try:
                resp = self._send_following(
                    method, url, headers or {}, content, stream, auth_origin
                )
            except (httpx.TransportError, httpx.StreamError) as e:
                if retry and attempt < self.retry.retries and self._retryable(e, url):
                    d = self.retry.delay(attempt)
                    log.debug("%s %s failed (%s); retrying in %.1fs", method, redact_url(url), e, d)
                    self._sleep(d)
                    attempt += 1
                    continue
                raise self._transport_error(e, url) from None
            if retry and resp.status_code in RETRY_STATUS and attempt < self.retry.retries:
                ra = parse_retry_after(resp.headers.get("retry-after"))
                if ra is not None and ra > self.retry.max_retry_after:
                    return resp
                d = self.retry.delay(attempt, ra)
                log.debug(
                    "%s %s answered %d; retrying in %.1fs",
                    method,
                    redact_url(url),
                    resp.status_code,
                    d,
                )
                resp.close()
                self._sleep(d)
                attempt += 1
                continue
            return resp

    def _send_following(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        content: bytes | Callable[[], Iterable[bytes]] | None,
        stream: bool,
        auth_origin: tuple[str, str, int | None] | None,
    ) -> httpx.Response:
        hdrs = dict(headers)
        target = httpx.URL(url)
        if auth_origin is None:
            auth_origin = origin(target)
        for _ in range(_MAX_REDIRECTS + 1):
            if origin(target) != auth_origin:
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            host = target.netloc.decode("ascii")
            if target.scheme == "http" and not self.allows_http(host):
                raise TransportError(
                    f"refusing plain-http request to {redact_url(target)}",
                    remedy=Remedy("insecure", host=host),
                )
            client = self._client(host, target.scheme)
            body = content() if callable(content) else content
            req = client.build_request(method, target, headers=hdrs, content=body)
            log.debug("> %s %s", method, redact_url(target))
            resp = client.send(req, stream=True)
            self._answered.add(origin(target))
            log.debug("< %d %s", resp.status_code, redact_url(target))
            if resp.status_code in (301, 302, 303, 307, 308) and "location" in resp.headers:
                loc = resp.headers["location"]
                resp.close()
                target = target.join(loc)
                if resp.status_code == 303 or (
                    resp.status_code in (301, 302) and method not in ("GET", "HEAD")
                ):
                    method, content = "GET", None
                continue
            if not stream:
                try:
                    resp.read()
                finally:
                    resp.close()
            return resp
        raise TransportError(f"too many redirects for {redact_url(url)}")

    def _retryable(self, e: Exception, url: str) -> bool:
        """Whether a request that failed with ``e`` is worth sending again.

        A refused connection is not, as a wrong port will not mend, unless the host has
        answered in this run: then it is restarting, and is given the retries.  Nor is a
        host name that does not resolve (unless the host has answered).
        """
        if is_refused(e) or is_unknown_host(e):
            return origin(failed_url(e, url)) in self._answered
        return retryable(e)

    def _transport_error(self, e: Exception, url: str | httpx.URL) -> DerrickError:
        target = failed_url(e, url)
        return transport_error(
            e,
            target,
            shown=redact_url(target),
            certs=self.tls.host_dir(target.netloc.decode("ascii")),
            answered=origin(target) in self._answered,
        )
