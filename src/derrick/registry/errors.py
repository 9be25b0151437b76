"""Registry error answers mapped to derrick's exceptions, through one table.

A status code or an error code of the registry's ``{"errors": [...]}`` body selects a
:class:`Rule`: the exception class, a message template, and a neutral hint and/or a
:class:`~derrick.errors.Remedy`.  The first rule that matches wins; the last matches
everything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import httpx

from derrick.auth.challenge import parse_challenges
from derrick.errors import (
    BlobUnknownError,
    DeniedError,
    ManifestUnknownError,
    NameUnknownError,
    NotFoundError,
    ProtocolError,
    RegistryError,
    RegistryErrorDetail,
    Remedy,
    RemedyKind,
    ServerError,
    TooManyRequestsError,
    UnauthorizedError,
    UnsupportedError,
    fill,
)
from derrick.registry.ratelimit import RateLimit
from derrick.transport import parse_retry_after, redact_url

#: Largest error body or JSON listing derrick will read.
MAX_JSON_SIZE = 16 * 1024 * 1024

#: What a call is about, when a bare 404 must say which thing was not found.
Subject = Literal["manifest", "blob"]
#: What must hold of the credentials for a rule: ``withheld`` (not sent over plain http),
#: ``sent`` (the registry or its token service was given them), ``scope`` (sent, and the
#: challenge says the token lacks the scope asked for).
Condition = Literal["withheld", "sent", "scope"]


@dataclass(frozen=True)
class Rule:
    """One row of the table: when it applies, and the error it makes.

    It applies when the body has one of ``codes``, or the status is one of
    ``statuses`` (for a call on ``subject``, when one is given); a rule with neither
    applies always.  ``when`` adds a condition on the credentials.
    """

    error: type[RegistryError]
    message: str
    codes: frozenset[str] = frozenset()
    statuses: frozenset[int] = frozenset()
    subject: Subject | None = None
    when: Condition | None = None
    hint: str | None = None
    remedy: RemedyKind | None = None

    def applies(
        self, status: int, codes: set[str], subject: Subject | None, held: Mapping[str, bool]
    ) -> bool:
        if self.when is not None and not held[self.when]:
            return False
        if not self.codes and not self.statuses:
            return True
        by_status = status in self.statuses and self.subject in (None, subject)
        return by_status or bool(self.codes & codes)


def _codes(*names: str) -> frozenset[str]:
    return frozenset(names)


_401 = frozenset({401})
_403 = frozenset({403})
_404 = frozenset({404})
_LACKING = "the credentials in use lack that permission"
_NO_MANIFEST = "{what} not found: the tag or digest is not in the repository"
_HELD_BACK = (
    "{what}: authentication required by {registry}, and credentials are not sent over plain http"
)

RULES: tuple[Rule, ...] = (
    Rule(ManifestUnknownError, _NO_MANIFEST, _codes("MANIFEST_UNKNOWN"), remedy="tags"),
    Rule(
        NameUnknownError,
        "{what}: the repository does not exist on {registry}",
        _codes("NAME_UNKNOWN"),
        hint="check the repository name",
    ),
    Rule(BlobUnknownError, "{what} not found in the repository", _codes("BLOB_UNKNOWN")),
    Rule(ManifestUnknownError, _NO_MANIFEST, statuses=_404, subject="manifest", remedy="tags"),
    Rule(BlobUnknownError, "{what} not found in the repository", statuses=_404, subject="blob"),
    # Held back, the credentials were judged by no one: say so before anything else.
    Rule(
        UnauthorizedError,
        _HELD_BACK,
        _codes("UNAUTHORIZED"),
        _401,
        when="withheld",
        remedy="insecure",
    ),
    Rule(DeniedError, _HELD_BACK, _codes("DENIED"), _403, when="withheld", remedy="insecure"),
    # A token was issued for these credentials, without the access asked for.
    Rule(
        DeniedError,
        "{what}: access denied by {registry} (the credentials do not grant {scope})",
        statuses=_401,
        when="scope",
        hint=_LACKING,
    ),
    Rule(
        UnauthorizedError,
        "{what}: {registry} rejected the credentials{detail}",
        _codes("UNAUTHORIZED"),
        _401,
        when="sent",
        remedy="credentials",
    ),
    Rule(
        UnauthorizedError,
        "{what}: authentication required by {registry}{detail}",
        _codes("UNAUTHORIZED"),
        _401,
        remedy="login",
    ),
    Rule(
        DeniedError,
        "{what}: access denied by {registry}{detail}",
        _codes("DENIED"),
        _403,
        when="sent",
        hint=_LACKING,
    ),
    Rule(
        DeniedError,
        "{what}: access denied by {registry}{detail}",
        _codes("DENIED"),
        _403,
        remedy="login",
    ),
    Rule(
        TooManyRequestsError,
        "{what}: rate limited by {registry}{ratelimit}",
        _codes("TOOMANYREQUESTS"),
        frozenset({429}),
        hint="{wait}",
    ),
    Rule(NotFoundError, "{what} not found on {registry}", statuses=_404),
    Rule(
        UnsupportedError,
        "{what}: {registry} does not support this operation{detail}",
        _codes("UNSUPPORTED"),
        frozenset({405}),
    ),
    Rule(
        ServerError,
        "{what}: registry {registry} failed with HTTP {status}{detail}",
        statuses=frozenset(range(500, 600)),
        hint="the registry has a problem; try again later",
    ),
    Rule(ProtocolError, "{what}: unexpected HTTP {status} from {registry}{detail}"),
)

#: The parameter each remedy of the table takes, filled with the registry's name.
_REMEDY_PARAM: Mapping[str, str] = {
    "insecure": "host",
    "login": "registry",
    "credentials": "registry",
}


def map_error(
    resp: httpx.Response,
    *,
    registry: str,
    what: str,
    subject: Subject | None = None,
    withheld: bool = False,
    sent: bool = False,
) -> RegistryError:
    """The exception for an error answer to a call on ``registry`` (``what`` names it)."""
    status = resp.status_code
    details = error_details(resp)
    codes = {d.code for d in details}
    scope = insufficient_scope(resp) if sent else None
    held = {"withheld": withheld, "sent": sent, "scope": scope is not None}
    rule = next(r for r in RULES if r.applies(status, codes, subject, held))
    retry_after = parse_retry_after(resp.headers.get("retry-after"))
    values = _values(resp, registry, what, details, scope, retry_after)
    remedy = None
    if rule.remedy is not None:
        param = _REMEDY_PARAM.get(rule.remedy)
        remedy = Remedy(rule.remedy, **({param: registry} if param else {}))
    kw: dict[str, object] = {
        "status": status,
        "url": redact_url(resp.request.url),
        "errors": details,
        "hint": fill(rule.hint, values) if rule.hint else None,
        "remedy": remedy,
    }
    if rule.error is TooManyRequestsError:
        kw["retry_after"] = retry_after
    return rule.error(fill(rule.message, values), **kw)  # type: ignore[arg-type]


def _values(
    resp: httpx.Response,
    registry: str,
    what: str,
    details: list[RegistryErrorDetail],
    scope: str | None,
    retry_after: float | None,
) -> dict[str, str]:
    first = next((d.message for d in details if d.message), "")
    limit = RateLimit.from_headers(resp.headers)
    wait = (
        "wait and try again" if retry_after is None else f"try again in {int(retry_after)} seconds"
    )
    if registry == "docker.io":
        wait += ", or log in to raise the limit"
    return {
        "what": what,
        "registry": registry,
        "status": str(resp.status_code),
        "detail": f" ({first})" if first else "",
        "scope": scope or "",
        "ratelimit": f" ({limit.describe()})" if limit is not None else "",
        "wait": wait,
    }


#: The statuses with which a web server that is not a registry answers the API's paths
#: (nothing there, or a method it does not know).
NOT_API_STATUSES = frozenset({404, 405, 501})
#: What a registry answers ``GET /v2/`` with (the distribution spec's API version check).
API_ROOT_STATUSES = frozenset({200, 401})


def speaks_api(resp: httpx.Response) -> bool:
    """Whether an answer comes from the registry API: it has the API version header, or
    a registry error body (``{"errors": [...]}``)."""
    return "docker-distribution-api-version" in resp.headers or bool(error_details(resp))


def not_a_registry(registry: str, what: str, root: httpx.Response) -> ProtocolError:
    """The error for a call ``what`` to ``registry``, whose answer to ``GET /v2/`` was
    ``root``: neither of the statuses a registry answers there, nor from the API."""
    return ProtocolError(
        f"{what}: {registry} does not speak the registry API (GET {redact_url(root.request.url)} "
        f"answered HTTP {root.status_code}, where a registry answers 200 or 401)",
        status=root.status_code,
        url=redact_url(root.request.url),
        hint="check the host name and port",
    )


def insufficient_scope(resp: httpx.Response) -> str | None:
    """The scope a Bearer challenge says the token lacked (``error="insufficient_scope"``)."""
    for ch in parse_challenges(resp.headers.get_list("www-authenticate")):
        if ch.scheme == "bearer" and ch.params.get("error") == "insufficient_scope":
            return ch.params.get("scope") or "the access asked for"
    return None


def error_details(resp: httpx.Response) -> list[RegistryErrorDetail]:
    """The entries of the registry's ``{"errors": [...]}`` body (none when it has none)."""
    try:
        body = json.loads(resp.content[:MAX_JSON_SIZE])
    except (ValueError, UnicodeDecodeError, RecursionError, httpx.ResponseNotRead):
        return []
    errs = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errs, list):
        return []
    out = []
    for e in errs:
        if isinstance(e, dict) and isinstance(e.get("code"), str):
            msg = e.get("message")
            out.append(
                RegistryErrorDetail(
                    code=e["code"],
                    message=msg[:300] if isinstance(msg, str) else "",
                    detail=e.get("detail"),
                )
            )
    return out
