"""The registry auth flow: answer a 401 challenge with Basic credentials or a token.

For a Bearer challenge the token is asked of the realm named in the challenge,
for the scopes the challenge names joined with those the operation needs.
With an identity token (a refresh token) the OAuth2 ``POST`` grant is used;
otherwise a ``GET`` with Basic credentials, or anonymously.  Tokens are cached
per (registry, scopes) until shortly before they expire, and asked for once: threads
that need the same token at the same time wait for the one request.

The authenticator remembers, per registry, whether credentials were held back
(plain http to a host not named insecure) and whether they were ever sent, so
that an error can say which of the two happened.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx

from derrick.auth.challenge import Challenge, merge_scope, parse_challenges
from derrick.auth.credentials import Credential
from derrick.errors import Remedy, UnauthorizedError
from derrick.singleflight import SingleFlight
from derrick.transport import Transport, origin, redact_url

#: Seconds assumed for a token that states no lifetime, and the least we accept.
MIN_TOKEN_LIFETIME = 60
#: Renew this many seconds before a token's expiry.
EXPIRY_MARGIN = 10

CredentialLookup = Callable[[str], Credential | None]


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float
    scopes: tuple[str, ...]
    #: the token request carried credentials (a token granted anonymously proves nothing)
    with_credentials: bool = False

    def valid(self, now: float | None = None) -> bool:
        return (now or time.monotonic()) < self.expires_at - EXPIRY_MARGIN


def basic_header(username: str, password: str) -> str:
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class Authenticator:
    """Chooses the ``Authorization`` header for each (registry, scopes) request."""

    def __init__(
        self, transport: Transport, credentials: CredentialLookup, *, client_id: str = "derrick"
    ) -> None:
        self._transport = transport
        self._lookup = credentials
        self._client_id = client_id
        self._tokens: dict[tuple[str, tuple[str, ...]], Token] = {}
        self._flights: SingleFlight[tuple[str, tuple[str, ...]], Token] = SingleFlight()
        self._schemes: dict[str, Challenge] = {}
        self._creds: dict[str, Credential | None] = {}
        self._lock = threading.Lock()
        #: every token request made, as (registry, scopes): handy for tests and --debug
        self.token_requests: list[tuple[str, tuple[str, ...]]] = []
        #: registries whose credentials were held back because they speak plain http
        self.withheld: set[str] = set()
        #: registries the credentials were sent to (a Basic header, or a token request)
        self.sent: set[str] = set()

    def credential(self, registry: str) -> Credential | None:
        with self._lock:
            if registry not in self._creds:
                self._creds[registry] = self._lookup(registry)
            return self._creds[registry]

    def usable_credential(self, registry: str, url: httpx.URL) -> Credential | None:
        """The credential for ``registry``, unless ``url`` would carry it over plain http
        to a host the user did not name insecure (then it is held back)."""
        cred = self.credential(registry)
        if cred is None:
            return None
        if url.scheme == "http" and not self._transport.is_insecure(url.netloc.decode("ascii")):
            self.withheld.add(registry)
            return None
        return cred

    def _basic(self, registry: str, cred: Credential | None) -> str | None:
        """The Basic header of ``cred``, recorded as sent; None without user name and password."""
        if cred is None or cred.username is None or cred.password is None:
            return None
        self.sent.add(registry)
        return basic_header(cred.username, cred.password)

    def header(self, registry: str, scopes: Sequence[str], url: httpx.URL) -> str | None:
        """The header to send before any challenge is seen, if one is known to work."""
        ch = self._schemes.get(registry)
        if ch is None:
            return None
        if ch.scheme == "basic":
            return self._basic(registry, self.usable_credential(registry, url))
        if ch.scheme == "bearer":
            key = (registry, tuple(merge_scope(scopes)))
            tok = self._tokens.get(key)
            if tok is not None and tok.valid():
                return f"Bearer {tok.value}"
        return None

    def respond(
        self,
        registry: str,
        resp: httpx.Response,
        scopes: Sequence[str],
        *,
        rejected: str | None = None,
    ) -> str | None:
        """Given a 401 response, the header to retry with; None if there is nothing to try.

        ``rejected`` is the ``Authorization`` header the request carried: a token that
        was refused is not offered again.
        """
        challenges = parse_challenges(resp.headers.get_list("www-authenticate"))
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None and bearer.realm:
            self._schemes[registry] = bearer
            wanted = list(scopes)
            if bearer.scope:
                wanted += bearer.scope.split()
            key = (registry, tuple(merge_scope(wanted)))
            tok = self._usable_token(key, rejected)
            if tok is None:
                tok = self._flights.do(
                    key, lambda: self._renew(key, bearer, resp.request.url, rejected)
                )
                self._tokens[(registry, tuple(merge_scope(scopes)))] = tok
            return f"Bearer {tok.value}"
        if basic is not None:
            self._schemes[registry] = basic
            return self._basic(registry, self.usable_credential(registry, resp.request.url))
        return None

    def _usable_token(self, key: tuple[str, tuple[str, ...]], rejected: str | None) -> Token | None:
        """The cached token for ``key`` unless it expired or is the one ``rejected``."""
        tok = self._tokens.get(key)
        if tok is None or not tok.valid() or rejected == f"Bearer {tok.value}":
            return None
        return tok

    def _renew(
        self,
        key: tuple[str, tuple[str, ...]],
        bearer: Challenge,
        registry_url: httpx.URL,
        rejected: str | None,
    ) -> Token:
        """A token for ``key``: one another thread stored meanwhile, else a new one."""
        tok = self._usable_token(key, rejected)
        if tok is None:
            tok = self._fetch_token(key[0], bearer, key[1], registry_url)
            self._tokens[key] = tok
        return tok

    def login(self, registry: str, resp: httpx.Response) -> str | None:
        """Answer the 401 of an anonymous ``GET /v2/`` with the credentials themselves.

        The header returned carries them: a Basic header, or a token that the token
        service granted to a request with the credentials on it (never a cached token,
        never one granted anonymously).  None when they cannot be sent: held back
        (see :attr:`withheld`), unfit for the challenge, or no challenge derrick answers.
        A token service that refuses them raises :class:`UnauthorizedError`.
        """
        challenges = parse_challenges(resp.headers.get_list("www-authenticate"))
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is None and basic is None:
            return None
        cred = self.usable_credential(registry, resp.request.url)
        if cred is None:
            return None
        if bearer is not None:
            if not cred.identity_token and (cred.username is None or cred.password is None):
                return None
            self._schemes[registry] = bearer
            scopes = tuple(merge_scope(bearer.scope.split() if bearer.scope else []))
            tok = self._fetch_token(registry, bearer, scopes, resp.request.url)
            if not tok.with_credentials:
                return None
            self._tokens[(registry, scopes)] = tok
            return f"Bearer {tok.value}"
        assert basic is not None
        self._schemes[registry] = basic
        return self._basic(registry, cred)

    def _fetch_token(
        self, registry: str, ch: Challenge, scopes: tuple[str, ...], registry_url: httpx.URL
    ) -> Token:
        realm = ch.realm or ""
        realm_url = httpx.URL(realm)
        if realm_url.scheme not in ("http", "https") or not realm_url.host:
            raise UnauthorizedError(
                f"registry {registry} named an invalid token realm {redact_url(realm)!r}",
                status=401,
                url=realm,
            )
        cred = self.usable_credential(registry, registry_url)
        realm_host = realm_url.netloc.decode("ascii")
        if cred and realm_url.scheme == "http" and not self._transport.is_insecure(realm_host):
            raise UnauthorizedError(
                f"the token realm of {registry} is plain http ({redact_url(realm)}); "
                "credentials will not be sent there",
                status=401,
                url=realm,
                remedy=Remedy("insecure", host=realm_host),
            )
        self.token_requests.append((registry, scopes))
        resp, sent = self._ask_token(realm_url, ch, scopes, cred)
        if sent:
            self.sent.add(registry)
        value, lifetime = _token_in(resp, registry, realm, sent)
        return Token(value, time.monotonic() + lifetime, scopes, with_credentials=sent)

    def _ask_token(
        self, realm_url: httpx.URL, ch: Challenge, scopes: tuple[str, ...], cred: Credential | None
    ) -> tuple[httpx.Response, bool]:
        """The token service's answer, and whether credentials went with the request: an
        identity token is exchanged by a POST (OAuth2 refresh), anything else is a GET
        with the user name and password, if any, as Basic credentials."""
        headers = {"Accept": "application/json"}
        if cred and cred.identity_token:
            form: list[tuple[str, str]] = [
                ("grant_type", "refresh_token"),
                ("refresh_token", cred.identity_token),
                ("client_id", self._client_id),
            ]
            if ch.service:
                form.append(("service", ch.service))
            form += [("scope", s) for s in scopes]
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            resp = self._transport.send(
                "POST",
                str(realm_url),
                headers=headers,
                content=urlencode(form).encode(),
                auth_origin=origin(realm_url),
            )
            return resp, True
        sent = False
        params: list[tuple[str, str | int | float | bool | None]] = []
        if ch.service:
            params.append(("service", ch.service))
        params += [("scope", s) for s in scopes]
        if cred and cred.username is not None and cred.password is not None:
            headers["Authorization"] = basic_header(cred.username, cred.password)
            params.append(("account", cred.username))
            sent = True
        url = realm_url.copy_merge_params(params) if params else realm_url
        resp = self._transport.send("GET", str(url), headers=headers, auth_origin=origin(realm_url))
        return resp, sent


def _token_in(resp: httpx.Response, registry: str, realm: str, sent: bool) -> tuple[str, float]:
    """The token the token service's answer holds and how many seconds it lives (at least
    :data:`MIN_TOKEN_LIFETIME`); a refusal or an answer without one raises."""
    if resp.status_code in (401, 403):
        who = "the credentials" if sent else "anonymous access"
        raise UnauthorizedError(
            f"the token service of {registry} refused {who} (HTTP {resp.status_code})",
            status=resp.status_code,
            url=redact_url(realm),
            hint=None if sent else "this repository needs credentials",
            remedy=Remedy("credentials" if sent else "login", registry=registry),
        )
    if resp.status_code != 200:
        raise UnauthorizedError(
            f"the token service of {registry} answered HTTP {resp.status_code}",
            status=resp.status_code,
            url=redact_url(realm),
        )
    try:
        body = json.loads(resp.content)
        value = body.get("token") or body.get("access_token")
        lifetime = int(body.get("expires_in") or MIN_TOKEN_LIFETIME)
    except (ValueError, AttributeError, TypeError, RecursionError):
        value, lifetime = None, 0
    if not isinstance(value, str) or not value:
        raise UnauthorizedError(
            f"the token service of {registry} answered without a token",
            status=resp.status_code,
            url=redact_url(realm),
        )
    return value, max(lifetime, MIN_TOKEN_LIFETIME)
