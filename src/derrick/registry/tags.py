"""Listings: the tags of a repository and the registry's catalog, ``Link`` pages followed."""

from __future__ import annotations

import re
from collections.abc import Iterator

from derrick.errors import DerrickError, NameUnknownError, ProtocolError
from derrick.reference import Reference
from derrick.registry.scopes import CATALOG_SCOPE, pull_scope
from derrick.registry.session import Call, Session, json_body
from derrick.registry.urls import Endpoint, catalog_path, query_string, tags_path
from derrick.transport import redact_url

LINK_RE = re.compile(r"<([^>]*)>\s*;\s*rel=\"?next\"?", re.IGNORECASE)
#: Repositories asked of the catalog to learn whether one it does not list tags of exists.
_CATALOG_PROBE = 10


def list_tags(
    session: Session, ref: Reference, *, page_size: int | None = None, last: str | None = None
) -> list[str]:
    """All tags of the repository of ``ref``, following ``Link`` pagination."""
    ep = session.endpoint(ref.registry)
    url = ep.url(tags_path(ref.repository, query_string(n=page_size, last=last)))
    what = f"repository {ref.registry}/{ref.repository}"
    first = Call("GET", ep, url, (pull_scope(ref.repository),), what)
    try:
        return list(_paged(session, first, "tags"))
    except NameUnknownError as e:
        # A registry answers so for a repository with no tags too (only untagged
        # manifests): its catalog tells the two apart, when it has one.
        listed = _in_catalog(session, ep, ref.repository)
        if listed:
            return []
        if listed is None:
            raise NameUnknownError(
                f"{what}: {ref.registry} knows no tags of it: the repository does not exist, "
                "or holds only untagged manifests",
                status=e.status,
                url=e.url,
                errors=e.errors,
                hint="check the repository name",
            ) from None
        raise


def _in_catalog(session: Session, ep: Endpoint, repository: str) -> bool | None:
    """Whether the registry's catalog lists ``repository``; None when it cannot tell (no
    catalog, not for these credentials, or pages that do not start where asked)."""
    # The name just before it: no repository name sorts between the two.
    before = repository[:-1] + chr(ord(repository[-1]) - 1) + "~"
    url = ep.url(catalog_path(query_string(n=_CATALOG_PROBE, last=before)))
    what = f"catalog of {ep.registry}"
    try:
        body = json_body(session.request(Call("GET", ep, url, (CATALOG_SCOPE,), what)), what)
    except DerrickError:
        return None
    names = body.get("repositories") if isinstance(body, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    if repository in names:
        return True
    if names == sorted(names) and all(n > repository for n in names):
        return False  # the page starts after it
    return None


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
