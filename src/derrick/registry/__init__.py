"""The registry client: every call of the distribution HTTP API goes through here.

:class:`RegistryClient` is the facade; the parts are small modules over one
:class:`~derrick.registry.session.Session` (the scheme each registry speaks and the one
request path): ``manifests``, ``blobs``, ``uploads``, ``tags``, ``base`` (``/v2/``),
``errors`` (the table that maps error answers to exceptions), ``ratelimit``,
``scopes`` and ``urls`` (built without I/O).
"""

from __future__ import annotations

from derrick.registry.base import PingResult
from derrick.registry.blobs import BlobStream
from derrick.registry.client import RegistryClient
from derrick.registry.manifests import FetchedManifest, ManifestHead
from derrick.registry.ratelimit import RateLimit
from derrick.registry.scopes import CATALOG_SCOPE, delete_scope, pull_scope, push_scope

__all__ = [
    "CATALOG_SCOPE",
    "BlobStream",
    "FetchedManifest",
    "ManifestHead",
    "PingResult",
    "RateLimit",
    "RegistryClient",
    "delete_scope",
    "pull_scope",
    "push_scope",
]
