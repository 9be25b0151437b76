"""URLs of the distribution API, built without I/O.

An :class:`Endpoint` is a registry whose scheme is known (the session finds it out once
per registry, see :meth:`derrick.registry.session.Session.endpoint`); everything here
only joins strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import httpx

from derrick.digest import Digest
from derrick.transport import origin

#: Where Docker Hub's API lives (``docker.io`` names images, not the API host).
DOCKER_HUB_API = "registry-1.docker.io"


def api_host(registry: str) -> str:
    """The host (``name[:port]``) that serves the API of ``registry``."""
    return DOCKER_HUB_API if registry == "docker.io" else registry


@dataclass(frozen=True)
class Endpoint:
    """A registry's API root: ``registry`` as references name it, its ``host`` and
    the ``scheme`` it speaks."""

    registry: str
    host: str
    scheme: str

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}"

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def origin(self) -> tuple[str, str, int | None]:
        """The origin credentials are meant for (see :func:`derrick.transport.origin`)."""
        return origin(httpx.URL(self.base))


def query_string(**params: object) -> str:
    """``?k=v&…`` of the params that are not None, each value percent-encoded."""
    items = [(k, str(v)) for k, v in params.items() if v is not None]
    if not items:
        return ""
    return "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in items)


def manifest_path(repository: str, identifier: str | Digest) -> str:
    return f"/v2/{repository}/manifests/{identifier}"


def blob_path(repository: str, digest: Digest) -> str:
    return f"/v2/{repository}/blobs/{digest}"


def uploads_path(repository: str, query: str = "") -> str:
    return f"/v2/{repository}/blobs/uploads/{query}"


def tags_path(repository: str, query: str = "") -> str:
    return f"/v2/{repository}/tags/list{query}"


def catalog_path(query: str = "") -> str:
    return f"/v2/_catalog{query}"


def with_digest(location: str, digest: Digest) -> str:
    """An upload ``location`` with ``?digest=`` added (the request that commits the blob)."""
    return str(httpx.URL(location).copy_merge_params({"digest": str(digest)}))
