"""Token scopes for the distribution API (``repository:NAME:ACTIONS``, the catalog)."""

from __future__ import annotations

#: The scope that lets a token list the registry's repositories.
CATALOG_SCOPE = "registry:catalog:*"


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def delete_scope(repository: str) -> str:
    return f"repository:{repository}:delete"
