"""Small builders for the distribution API: token scopes, query strings, Location URLs."""

from __future__ import annotations

from urllib.parse import quote

import httpx

from derrick.errors import ProtocolError
from derrick.transport import redact_url

#: The scope that lets a token list the registry's repositories.
CATALOG_SCOPE = "registry:catalog:*"


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def delete_scope(repository: str) -> str:
    return f"repository:{repository}:delete"


def query_string(**params: object) -> str:
    """``?k=v&…`` of the params that are not None, each value percent-encoded."""
    items = [(k, str(v)) for k, v in params.items() if v is not None]
    if not items:
        return ""
    return "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in items)


def upload_location(resp: httpx.Response, what: str) -> str:
    """The absolute URL of the response's ``Location`` (an upload session)."""
    loc = resp.headers.get("location")
    if not loc:
        raise ProtocolError(
            f"{what}: the registry did not say where to upload (no Location header)",
            status=resp.status_code,
            url=redact_url(resp.request.url),
        )
    return str(resp.request.url.join(loc))
