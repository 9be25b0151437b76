"""Listings: the tags of a repository and the registry's catalog, ``Link`` pages followed."""

from __future__ import annotations

import re
from collections.abc import Iterator

from derrick.errors import ProtocolError
from derrick.reference import Reference
from derrick.registry.scopes import CATALOG_SCOPE, pull_scope
from derrick.registry.session import Call, Session, json_body
from derrick.registry.urls import catalog_path, query_string, tags_path
from derrick.transport import redact_url

LINK_RE = re.compile(r"<([^>]*)>\s*;\s*rel=\"?next\"?", re.IGNORECASE)


def list_tags(
    session: Session, ref: Reference, *, page_size: int | None = None, last: str | None = None
) -> list[str]:
    """All tags of the repository of ``ref``, following ``Link`` pagination."""
    ep = session.endpoint(ref.registry)
    url = ep.url(tags_path(ref.repository, query_string(n=page_size, last=last)))
    what = f"repository {ref.registry}/{ref.repository}"
    first = Call("GET", ep, url, (pull_scope(ref.repository),), what)
    return list(_paged(session, first, "tags"))


def catalog(
    session: Session, registry: str, *, page_size: int | None = None, last: str | None = None
) -> list[str]:
    """Repository names the registry lists (``/v2/_catalog``)."""
    ep = session.endpoint(registry)
    url = ep.url(catalog_path(query_string(n=page_size, last=last)))
    first = Call("GET", ep, url, (CATALOG_SCOPE,), f"catalog of {registry}")
    return list(_paged(session, first, "repositories"))


def _paged(session: Session, call: Call, key: str) -> Iterator[str]:
    """The strings under ``key`` of every page, from ``call`` on along ``Link: rel=next``."""
    seen: set[str] = set()
    next_url: str | None = call.url
    while next_url:
        if next_url in seen:
            raise ProtocolError(
                f"{call.what}: the registry's pagination loops back to a page already read",
                status=200,
                url=redact_url(next_url),
            )
        seen.add(next_url)
        resp = session.request(Call("GET", call.endpoint, next_url, call.scopes, call.what))
        body = json_body(resp, call.what)
        items = body.get(key) if isinstance(body, dict) else None
        if items is None:
            items = []
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
            raise ProtocolError(
                f"{call.what}: the registry's answer has no list of strings under {key!r}",
                status=resp.status_code,
                url=redact_url(resp.request.url),
            )
        yield from items
        link = resp.headers.get("link")
        next_url = None
        if link:
            m = LINK_RE.search(link)
            if m:
                next_url = str(resp.request.url.join(m.group(1)))
