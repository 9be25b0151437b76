"""The session: where a registry's scheme is found out, and the one request path.

Every call of the distribution API is a :class:`Call` sent through
:meth:`Session.request`: the ``Authorization`` header the authenticator has for the
call's registry and scopes, one retry after a challenge, and any answer that is not
``ok`` raised as the error :mod:`derrick.registry.errors` maps it to.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import httpx

from derrick.auth.token import Authenticator
from derrick.errors import DerrickError, ManifestError, ProtocolError, Remedy, TransportError
from derrick.registry.errors import (
    API_ROOT_STATUSES,
    MAX_JSON_SIZE,
    NOT_API_STATUSES,
    Subject,
    map_error,
    not_a_registry,
    speaks_api,
)
from derrick.registry.urls import Endpoint, api_host
from derrick.singleflight import SingleFlight
from derrick.transport import Transport, redact_url

#: A request body: bytes, or a callable giving a fresh iterable of chunks (so that a
#: retried request can send it again).
Content = bytes | Callable[[], Iterable[bytes]] | None


@dataclass(frozen=True)
class Call:
    """One request of the distribution API.

    ``url`` is absolute (``endpoint.url(path)``, or a ``Location`` the registry gave);
    ``endpoint`` says whose credentials go with it.  ``what`` names the call in messages
    (``"manifest localhost:5000/app:1.0"``) and ``subject`` what a bare 404 means.
    Statuses outside ``ok`` raise.  ``stream`` leaves the body unread (close the
    response); ``retry`` allows the transport to send it again after a failure.
    """

    method: str
    endpoint: Endpoint
    url: str
    scopes: tuple[str, ...]
    what: str
    subject: Subject | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content: Content = None
    ok: tuple[int, ...] = (200,)
    stream: bool = False
    retry: bool = True


class Session:
    """The transport and authenticator shared by every part of the registry client."""

    def __init__(self, transport: Transport, auth: Authenticator) -> None:
        self.transport = transport
        self.auth = auth
        self._endpoints: dict[str, Endpoint] = {}
        self._probes: SingleFlight[str, Endpoint] = SingleFlight()
        self._lock = threading.Lock()
        #: registry -> its answer to ``GET /v2/``, when it was not a registry's
        self._roots: dict[str, httpx.Response | None] = {}

    def endpoint(self, registry: str) -> Endpoint:
        """Where ``registry``'s API is, with the scheme it speaks.

        Found out once per registry (an insecure or loopback host may speak plain http,
        which costs one probe); threads asking at once wait for the one probe.
        """
        found = self._endpoints.get(registry)
        if found is None:
            found = self._probes.do(registry, lambda: self._probe(registry))
        return found

    def _probe(self, registry: str) -> Endpoint:
        with self._lock:
            found = self._endpoints.get(registry)
        if found is None:
            host = api_host(registry)
            found = Endpoint(registry, host, self.transport.probe_scheme(host))
            with self._lock:
                self._endpoints[registry] = found
        return found

    def request(self, call: Call) -> httpx.Response:
        """Send ``call`` with auth, once more after a challenge; raise for errors."""
        registry = call.endpoint.registry
        headers = dict(call.headers)
        offered = self.auth.header(registry, call.scopes, httpx.URL(call.url))
        if offered:
            headers["Authorization"] = offered
        resp = self.send(call, headers)
        if resp.status_code == 401:
            answer = self.auth.respond(registry, resp, call.scopes, rejected=offered)
            if answer is not None:
                resp.close()
                headers["Authorization"] = answer
                resp = self.send(call, headers)
        if resp.status_code not in call.ok:
            _discard(resp, call.stream)
            raise self._not_a_registry(call.endpoint, call.what, resp) or self.error(
                resp, registry, call.what, call.subject
            )
        return resp

    def root_error(self, resp: httpx.Response, registry: str, what: str) -> DerrickError:
        """The error for ``resp``, an answer to ``GET /v2/`` other than the one expected."""
        if resp.status_code not in API_ROOT_STATUSES and not speaks_api(resp):
            return not_a_registry(registry, what, resp)
        return self.error(resp, registry, what)

    def _not_a_registry(
        self, endpoint: Endpoint, what: str, resp: httpx.Response
    ) -> DerrickError | None:
        """The error saying ``endpoint`` is not a registry, when ``resp`` (an error answer)
        is not from the API and ``GET /v2/`` does not answer as a registry's does."""
        if resp.status_code not in NOT_API_STATUSES or speaks_api(resp):
            return None
        with self._lock:
            known = endpoint.registry in self._roots
            root = self._roots.get(endpoint.registry)
        if not known:
            root = self._root_answer(endpoint)
            with self._lock:
                self._roots[endpoint.registry] = root
        return None if root is None else not_a_registry(endpoint.registry, what, root)

    def _root_answer(self, endpoint: Endpoint) -> httpx.Response | None:
        """``GET /v2/`` of ``endpoint`` when it is not answered as a registry answers it."""
        try:
            resp = self.transport.send("GET", endpoint.url("/v2/"), auth_origin=endpoint.origin)
        except DerrickError:
            return None  # unknown: the call's own error is reported
        if resp.status_code in API_ROOT_STATUSES or speaks_api(resp):
            return None
        return resp

    def send(self, call: Call, headers: Mapping[str, str]) -> httpx.Response:
        """Send ``call`` with exactly ``headers``: no auth added, any status returned."""
        return self.transport.send(
            call.method,
            call.url,
            headers=headers,
            content=call.content,
            stream=call.stream,
            retry=call.retry,
            # Credentials are for the registry only: not for a Link or Location elsewhere.
            auth_origin=call.endpoint.origin,
        )

    def error(
        self, resp: httpx.Response, registry: str, what: str, subject: Subject | None = None
    ) -> DerrickError:
        """The error an answer of ``registry`` to the call ``what`` means."""
        return map_error(
            resp,
            registry=registry,
            what=what,
            subject=subject,
            withheld=registry in self.auth.withheld,
            sent=registry in self.auth.sent,
        )


def _discard(resp: httpx.Response, streamed: bool) -> None:
    """Read (for the error body) and close a response that will not be used."""
    try:
        if streamed:
            resp.read()
    except httpx.HTTPError:
        pass
    finally:
        resp.close()


def stream_error(e: Exception, resp: httpx.Response) -> DerrickError:
    """The error for a response body that stopped coming (timed out, or broke off)."""
    url = redact_url(resp.request.url)
    if isinstance(e, httpx.TimeoutException):
        return TransportError(
            f"download from {url} timed out: nothing arrived for longer than the timeout",
            hint="finished blobs are kept and partial ones resume",
            remedy=Remedy("timeout"),
        )
    return TransportError(
        f"download from {url} broke off: {e or type(e).__name__}",
        hint="finished blobs are kept and partial ones resume",
        remedy=Remedy("retry"),
    )


def read_capped(resp: httpx.Response, cap: int, what: str) -> bytes:
    """The whole body of a streamed ``resp``, refused when longer than ``cap`` bytes."""
    cl = resp.headers.get("content-length")
    if cl and cl.isdigit() and int(cl) > cap:
        raise ManifestError(f"{what} is {cl} bytes, more than the {cap} byte limit")
    parts: list[bytes] = []
    n = 0
    try:
        for chunk in resp.iter_bytes(1 << 16):
            n += len(chunk)
            if n > cap:
                raise ManifestError(f"{what} is more than the {cap} byte limit")
            parts.append(chunk)
    except httpx.HTTPError as e:
        raise stream_error(e, resp) from None
    return b"".join(parts)


def json_body(resp: httpx.Response, what: str) -> object:
    """The JSON document of a read ``resp`` (a listing), refused when not JSON."""
    if len(resp.content) > MAX_JSON_SIZE:
        raise ProtocolError(f"{what}: answer too large", status=resp.status_code, url="")
    try:
        return json.loads(resp.content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError(
            f"{what}: the registry answered something that is not JSON",
            status=resp.status_code,
            url=redact_url(resp.request.url),
            hint="is this address really a container registry?",
        ) from None
