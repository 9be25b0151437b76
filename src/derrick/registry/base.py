"""The API root ``/v2/``: whether a registry speaks the API, and whether it accepts the
credentials derrick has for it."""

from __future__ import annotations

from dataclasses import dataclass

from derrick.auth.challenge import parse_challenges
from derrick.errors import CredentialsError, Remedy, UnauthorizedError, UnsupportedError
from derrick.registry.session import Call, Session
from derrick.transport import redact_url


@dataclass(frozen=True)
class PingResult:
    registry: str
    url: str
    api_version: str | None
    auth_scheme: str | None


def _root(session: Session, registry: str, what: str) -> Call:
    ep = session.endpoint(registry)
    return Call("GET", ep, ep.url("/v2/"), (), what)


def ping(session: Session, registry: str) -> PingResult:
    """Check that ``registry`` speaks the distribution API (``GET /v2/``)."""
    call = _root(session, registry, f"registry {registry}")
    resp = session.send(call, {})
    scheme = None
    if resp.status_code == 401:
        chs = parse_challenges(resp.headers.get_list("www-authenticate"))
        scheme = chs[0].scheme if chs else None
    elif resp.status_code != 200:
        raise session.root_error(resp, registry, call.what)
    return PingResult(
        registry=registry,
        url=redact_url(call.url),
        api_version=resp.headers.get("docker-distribution-api-version"),
        auth_scheme=scheme,
    )


def check_login(session: Session, registry: str) -> None:
    """Prove that ``registry`` accepts the configured credentials.

    An anonymous ``GET /v2/`` must be challenged; the answer to the challenge must
    carry the credentials (a Basic header, or a token request with them that the
    token service grants), and ``GET /v2/`` with that answer must succeed.  Nothing
    less proves them: credentials held back over plain http, a registry that asks
    for none, or a token granted without them all raise.
    """
    what = f"login to {registry}"
    if session.auth.credential(registry) is None:
        raise CredentialsError(f"no credentials for {registry} to log in with")
    call = _root(session, registry, what)
    resp = session.send(call, {})
    if resp.status_code == 200:
        raise UnsupportedError(
            f"{what}: {registry} asks for no credentials (GET /v2/ succeeds without "
            "them), so it cannot tell whether they are right",
            hint="check the registry address",
            remedy=Remedy("inline-credentials", registry=registry),
            status=200,
            url=redact_url(call.url),
        )
    if resp.status_code != 401:
        raise session.root_error(resp, registry, what)
    header = session.auth.login(registry, resp)
    if header is None:
        if registry in session.auth.withheld:
            raise session.error(resp, registry, what)
        challenge = resp.headers.get("www-authenticate", "")
        raise UnauthorizedError(
            f"{what}: the credentials cannot answer the challenge of {registry} "
            f"({challenge[:100] or 'none'})",
            hint="Basic and Bearer challenges are answered with a user name and "
            "password or an identity token",
            status=401,
            url=redact_url(call.url),
        )
    resp = session.send(call, {"Authorization": header})
    if resp.status_code != 200:
        raise session.error(resp, registry, what)
