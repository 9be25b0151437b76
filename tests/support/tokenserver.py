"""A small Docker-style token server for a registry running in ``auth: token`` mode.

Endpoints (both on the realm path, ``/token`` by default):

* ``GET /token?service=S&scope=T:NAME:ACTIONS&scope=...[&offline_token=true][&account=U]``
  with optional HTTP Basic credentials.  Answers
  ``{"token", "access_token", "expires_in", "issued_at"}`` plus ``refresh_token`` when
  ``offline_token=true`` and credentials were given.
* ``POST /token`` (``application/x-www-form-urlencoded``), OAuth2 style:
  ``grant_type=password`` (``username``, ``password``, ``scope``, ``service``, ``client_id``)
  answers ``{"access_token", "expires_in", "issued_at", "scope", "refresh_token"}``;
  ``grant_type=refresh_token`` (``refresh_token``, ``scope``, ``service``, ``client_id``) answers
  the same without a new refresh token.

Access policy (see :class:`Policy`):

* repositories under ``public/`` may be pulled anonymously;
* every other repository needs valid credentials, for pull as well as push;
* authenticated users get ``pull``, ``push``, ``delete`` and ``*`` unless a
  ``(user, repository prefix)`` pair in ``read_only`` limits them to ``pull``;
* ``registry:catalog:*`` is granted to the users in ``catalog_users`` only.

Actions that are not allowed are silently dropped from the grant (the token just carries fewer
actions, which makes the registry answer 401/403 later), exactly like public token services do.
Wrong credentials are a 401 with a JSON body.

Tokens are JWTs signed with ES256.  The JWT header ``kid`` is the key id format the registry
expects: SHA-256 of the DER SubjectPublicKeyInfo, first 30 bytes, base32 without padding,
as 12 colon-separated groups of 4 characters.  :attr:`TokenServer.cert_path` is a self-signed
certificate of the signing key, used as the registry's ``rootcertbundle``.

Every request is appended to :attr:`TokenServer.log` (see :class:`TokenLogEntry`), which tests
read to assert on the scopes a client asked for.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from .background import ServerThread

DEFAULT_USERS: dict[str, str] = {
    "alice": "alice-secret",  # full access (pull, push, delete) to every repository
    "reader": "reader-secret",  # pull only, everywhere
    "admin": "admin-secret",  # full access plus registry:catalog:*
}

FULL_ACTIONS = ("pull", "push", "delete", "*")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The registry's key id of a public key (see the module docstring)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a JWT, without verifying the signature."""
    header, payload, _sig = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


@dataclass(frozen=True)
class Scope:
    """One parsed scope, e.g. ``repository:private/x:pull,push``."""

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        # type[(class)]:name:actions -- the name may itself contain ':' in theory, so split the
        # type off the front and the actions off the back.
        first = text.find(":")
        last = text.rfind(":")
        if first < 0 or last == first:
            return None
        rtype = text[:first]
        if "(" in rtype:
            rtype = rtype[: rtype.index("(")]
        actions = tuple(a for a in text[last + 1 :].split(",") if a)
        return cls(rtype, text[first + 1 : last], actions)

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


@dataclass
class Policy:
    users: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS))
    #: (user, repository-name prefix) pairs limited to pull. ``""`` matches every repository.
    read_only: set[tuple[str, str]] = field(default_factory=lambda: {("reader", "")})
    catalog_users: set[str] = field(default_factory=lambda: {"admin"})
    public_prefixes: tuple[str, ...] = ("public/",)

    def allowed(self, user: str | None, scope: Scope) -> tuple[str, ...]:
        if scope.type == "registry":
            if scope.name == "catalog" and user is not None and user in self.catalog_users:
                return ("*",)
            return ()
        if scope.type != "repository":
            return ()
        if user is None:
            if scope.name.startswith(self.public_prefixes):
                return ("pull",)
            return ()
        if any(u == user and scope.name.startswith(p) for u, p in self.read_only):
            return ("pull",)
        return FULL_ACTIONS

    def grant(self, user: str | None, scopes: Iterable[Scope]) -> list[dict[str, Any]]:
        """The ``access`` claim: requested ∩ allowed, merged per (type, name), in order."""
        merged: dict[tuple[str, str], list[str]] = {}
        for scope in scopes:
            allowed = self.allowed(user, scope)
            actions = merged.setdefault((scope.type, scope.name), [])
            for action in scope.actions:
                if action in allowed and action not in actions:
                    actions.append(action)
        return [
            {"type": t, "name": n, "actions": actions}
            for (t, n), actions in merged.items()
            if actions
        ]


@dataclass
class TokenLogEntry:
    method: str  #: "GET" or "POST"
    user: str | None  #: authenticated user, None for anonymous (or failed) requests
    grant_type: str | None  #: None for GET; "password" / "refresh_token" / ... for POST
    service: str | None
    client_id: str | None
    scopes: list[str]  #: the scope strings as requested, split on whitespace
    granted: list[dict[str, Any]]  #: the access claim of the issued token ([] if none)
    status: int
    offline_token: bool = False
    refresh_token_issued: bool = False
    account: str | None = None  #: the ``account`` query parameter of a GET, if any
    #: the request carried credentials (a GET's ``Authorization``, a POST's password or
    #: refresh token), whether or not they were accepted
    has_auth: bool = False
    issued: list[str] = field(default_factory=list)  #: the token (and refresh token) issued

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def granted_actions(self, name: str, rtype: str = "repository") -> list[str]:
        for entry in self.granted:
            if entry["type"] == rtype and entry["name"] == name:
                return list(entry["actions"])
        return []


class _HTTPError(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None):
        super().__init__(status, body)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


class TokenServer:
    """Threaded token server on ``127.0.0.1`` with a free port. Use :meth:`start`/:meth:`stop`."""

    def __init__(
        self,
        directory: Path,
        *,
        service: str = "derrick-test-registry",
        issuer: str = "derrick-test-token-issuer",
        policy: Policy | None = None,
        expires_in: int = 300,
        realm_path: str = "/token",
        include_x5c: bool = False,
    ) -> None:
        self.directory = directory
        self.service = service
        self.issuer = issuer
        self.policy = policy or Policy()
        self.expires_in = expires_in
        self.realm_path = realm_path
        self.include_x5c = include_x5c
        self._lock = threading.Lock()
        self._log: list[TokenLogEntry] = []
        self._refresh_tokens: dict[str, str] = {}  # refresh token -> user

        directory.mkdir(parents=True, exist_ok=True)
        self.signing_key = ec.generate_private_key(ec.SECP256R1())
        self.kid = key_id(self.signing_key.public_key())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "derrick test token signer")])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.signing_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.signing_key, hashes.SHA256())
        )
        self.cert_path = directory / "token-signer.crt"
        self.cert_path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        self._httpd: ThreadingHTTPServer | None = None
        self._serving: ServerThread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> TokenServer:
        server = self

        class Handler(_Handler):
            token_server = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._serving = ServerThread(self._httpd, "token-server")
        return self

    def stop(self) -> None:
        if self._serving is not None:
            self._serving.stop()
            self._serving = None
        self._httpd = None

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "token server not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return self.url + self.realm_path

    # -- log -------------------------------------------------------------------------------

    @property
    def log(self) -> list[TokenLogEntry]:
        """A snapshot copy of the request log."""
        with self._lock:
            return list(self._log)

    def log_dicts(self) -> list[dict[str, Any]]:
        return [e.as_dict() for e in self.log]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def requested_scopes(self) -> list[str]:
        """All scope strings requested since the last :meth:`clear_log`, in order."""
        return [s for e in self.log for s in e.scopes]

    def _record(self, entry: TokenLogEntry) -> None:
        with self._lock:
            self._log.append(entry)

    def revoke_refresh_tokens(self) -> None:
        with self._lock:
            self._refresh_tokens.clear()

    # -- tokens ----------------------------------------------------------------------------

    def issue(
        self, user: str | None, access: list[dict[str, Any]], *, expires_in: int | None = None
    ) -> str:
        """A signed JWT for ``user`` carrying ``access`` (usable directly by tests)."""
        now = int(time.time())
        lifetime = self.expires_in if expires_in is None else expires_in
        header: dict[str, Any] = {"typ": "JWT", "alg": "ES256", "kid": self.kid}
        if self.include_x5c:
            der = self.certificate.public_bytes(serialization.Encoding.DER)
            header["x5c"] = [base64.b64encode(der).decode("ascii")]
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        der_sig = self.signing_key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der_sig)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input + "." + b64url(signature)

    def _new_refresh_token(self, user: str) -> str:
        token = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens[token] = user
        return token

    def _refresh_user(self, token: str) -> str | None:
        with self._lock:
            return self._refresh_tokens.get(token)

    def _check_password(self, user: str, password: str) -> bool:
        expected = self.policy.users.get(user)
        return expected is not None and secrets.compare_digest(expected.encode(), password.encode())

    def _check_service(self, service: str | None) -> None:
        if service is not None and service != self.service:
            raise _HTTPError(
                400,
                {
                    "error": "invalid_request",
                    "error_description": f"unknown service {service!r}",
                },
            )

    @staticmethod
    def _split_scopes(values: Iterable[str]) -> list[str]:
        return [s for v in values for s in v.split()]

    def handle_get(self, query: dict[str, list[str]], authorization: str | None) -> dict[str, Any]:
        service = query.get("service", [None])[0]
        scopes = self._split_scopes(query.get("scope", []))
        offline = query.get("offline_token", ["false"])[0].lower() == "true"
        entry = TokenLogEntry(
            method="GET",
            user=None,
            grant_type=None,
            service=service,
            client_id=query.get("client_id", [None])[0],
            scopes=scopes,
            granted=[],
            status=200,
            offline_token=offline,
            account=query.get("account", [None])[0],
            has_auth=bool(authorization),
        )
        try:
            user: str | None = None
            if authorization:
                kind, _, cred = authorization.partition(" ")
                if kind.lower() != "basic":
                    raise _HTTPError(
                        401,
                        {"errors": [{"code": "UNAUTHORIZED", "message": "basic auth expected"}]},
                    )
                try:
                    name, _, password = base64.b64decode(cred).decode("utf-8").partition(":")
                except ValueError:
                    raise _HTTPError(
                        400, {"errors": [{"code": "BAD_REQUEST", "message": "bad credentials"}]}
                    ) from None
                if not self._check_password(name, password):
                    raise _HTTPError(
                        401,
                        {
                            "errors": [
                                {
                                    "code": "UNAUTHORIZED",
                                    "message": "incorrect username or password",
                                }
                            ],
                            "details": "incorrect username or password",
                        },
                        {"WWW-Authenticate": 'Basic realm="derrick test token server"'},
                    )
                user = name
            entry.user = user
            self._check_service(service)
            parsed = [p for p in (Scope.parse(s) for s in scopes) if p is not None]
            access = self.policy.grant(user, parsed)
            entry.granted = access
            token = self.issue(user, access)
            entry.issued.append(token)
            body: dict[str, Any] = {
                "token": token,
                "access_token": token,
                "expires_in": self.expires_in,
                "issued_at": _rfc3339_now(),
            }
            if offline and user is not None:
                body["refresh_token"] = self._new_refresh_token(user)
                entry.refresh_token_issued = True
                entry.issued.append(body["refresh_token"])
            return body
        except _HTTPError as e:
            entry.status = e.status
            raise
        finally:
            self._record(entry)

    def handle_post(self, form: dict[str, list[str]]) -> dict[str, Any]:
        def one(name: str) -> str | None:
            return form.get(name, [None])[0]

        grant_type = one("grant_type")
        service = one("service")
        scopes = self._split_scopes(form.get("scope", []))
        entry = TokenLogEntry(
            method="POST",
            user=None,
            grant_type=grant_type,
            service=service,
            client_id=one("client_id"),
            scopes=scopes,
            granted=[],
            status=200,
            has_auth=bool(one("password") or one("refresh_token")),
        )
        try:
            user: str | None
            issue_refresh = False
            if grant_type == "password":
                name, password = one("username"), one("password")
                if name is None or password is None:
                    raise _HTTPError(
                        400,
                        {
                            "error": "invalid_request",
                            "error_description": "username and password required",
                        },
                    )
                if not self._check_password(name, password):
                    raise _HTTPError(
                        401,
                        {
                            "error": "invalid_grant",
                            "error_description": "incorrect username or password",
                        },
                    )
                user = name
                issue_refresh = True
            elif grant_type == "refresh_token":
                rt = one("refresh_token")
                user = self._refresh_user(rt) if rt else None
                if user is None:
                    raise _HTTPError(
                        401,
                        {"error": "invalid_grant", "error_description": "unknown refresh token"},
                    )
            else:
                raise _HTTPError(
                    400,
                    {
                        "error": "unsupported_grant_type",
                        "error_description": f"grant_type {grant_type!r} is not supported",
                    },
                )
            entry.user = user
            self._check_service(service)
            if not one("client_id"):
                raise _HTTPError(
                    400, {"error": "invalid_request", "error_description": "client_id required"}
                )
            parsed = [p for p in (Scope.parse(s) for s in scopes) if p is not None]
            access = self.policy.grant(user, parsed)
            entry.granted = access
            token = self.issue(user, access)
            entry.issued.append(token)
            body: dict[str, Any] = {
                "access_token": token,
                "expires_in": self.expires_in,
                "issued_at": _rfc3339_now(),
                "scope": " ".join(
                    f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access
                ),
                "token_type": "Bearer",
            }
            if issue_refresh:
                body["refresh_token"] = self._new_refresh_token(user)
                entry.refresh_token_issued = True
                entry.issued.append(body["refresh_token"])
            return body
        except _HTTPError as e:
            entry.status = e.status
            raise
        finally:
            self._record(entry)


def _rfc3339_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Handler(BaseHTTPRequestHandler):
    token_server: TokenServer
    protocol_version = "HTTP/1.1"
    server_version = "derrick-test-token-server/1"

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    def _send(self, status: int, body: dict[str, Any], headers: Mapping[str, str] = {}) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _path_ok(self) -> tuple[bool, str]:
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path != self.token_server.realm_path:
            self._send(404, {"error": "not_found"})
            return False, parsed.query
        return True, parsed.query

    def do_GET(self) -> None:
        ok, query = self._path_ok()
        if not ok:
            return
        try:
            body = self.token_server.handle_get(
                urllib.parse.parse_qs(query), self.headers.get("Authorization")
            )
        except _HTTPError as e:
            self._send(e.status, e.body, e.headers)
            return
        self._send(200, body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        ok, _query = self._path_ok()
        if not ok:
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            self._send(
                400,
                {"error": "invalid_request", "error_description": "form-encoded body required"},
            )
            return
        try:
            body = self.token_server.handle_post(urllib.parse.parse_qs(raw.decode("utf-8")))
        except _HTTPError as e:
            self._send(e.status, e.body, e.headers)
            return
        self._send(200, body)
