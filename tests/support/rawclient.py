"""A deliberately tiny registry client on plain httpx, used by tests as an independent oracle.

It answers 401 challenges (Basic, or Bearer via a GET to the token realm with optional Basic
credentials) and otherwise exposes raw responses.  It is not the code under test: keep it
simple and obviously correct.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import TYPE_CHECKING, Any

import httpx

from .registry import RegistryProcess

if TYPE_CHECKING:
    from .images import LayoutImage

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)

_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))


class RawClient:
    def __init__(
        self,
        registry: RegistryProcess,
        credentials: tuple[str, str] | None = None,
        *,
        anonymous: bool = False,
    ) -> None:
        self.registry = registry
        self.credentials = None if anonymous else (credentials or registry.credentials)
        self.http = registry.client()
        self._auth: dict[str, str] = {}  # repository (or "") -> Authorization header value

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _token(self, params: dict[str, str]) -> str:
        query = {"service": params.get("service", "")}
        if "scope" in params:
            query["scope"] = params["scope"]
        r = httpx.get(params["realm"], params=query, auth=self.credentials, timeout=30)
        r.raise_for_status()
        body = r.json()
        return str(body.get("token") or body["access_token"])

    def request(self, method: str, path: str, *, repo: str = "", **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if repo in self._auth:
            headers["Authorization"] = self._auth[repo]
        r = self.http.request(method, path, headers=headers, **kwargs)
        if r.status_code != 401 or "www-authenticate" not in r.headers:
            return r
        scheme, params = parse_challenge(r.headers["www-authenticate"])
        if scheme == "basic":
            if self.credentials is None:
                return r
            user, password = self.credentials
            value = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        elif scheme == "bearer":
            value = "Bearer " + self._token(params)
        else:
            return r
        self._auth[repo] = value
        headers["Authorization"] = value
        return self.http.request(method, path, headers=headers, **kwargs)

    # -- conveniences ----------------------------------------------------------------------

    def get_manifest(
        self, repo: str, reference: str, accept: str = MANIFEST_ACCEPT
    ) -> httpx.Response:
        return self.request(
            "GET", f"/v2/{repo}/manifests/{reference}", repo=repo, headers={"Accept": accept}
        )

    def head_manifest(
        self, repo: str, reference: str, accept: str = MANIFEST_ACCEPT
    ) -> httpx.Response:
        return self.request(
            "HEAD", f"/v2/{repo}/manifests/{reference}", repo=repo, headers={"Accept": accept}
        )

    def manifest_digest(self, repo: str, reference: str) -> str:
        """sha256 of the manifest bytes the registry serves (checked against its header)."""
        r = self.get_manifest(repo, reference)
        r.raise_for_status()
        digest = "sha256:" + hashlib.sha256(r.content).hexdigest()
        header = r.headers.get("docker-content-digest")
        if header is not None and header != digest:
            raise AssertionError(f"Docker-Content-Digest {header} != sha256 of body {digest}")
        return digest

    def get_blob(self, repo: str, digest: str) -> httpx.Response:
        return self.request("GET", f"/v2/{repo}/blobs/{digest}", repo=repo, follow_redirects=True)

    def tags(self, repo: str) -> list[str]:
        r = self.request("GET", f"/v2/{repo}/tags/list", repo=repo)
        r.raise_for_status()
        return list(r.json().get("tags") or [])

    def push_blob(self, repo: str, data: bytes) -> str:
        """Monolithic upload (POST then PUT ?digest=); returns the digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/", repo=repo)
        if r.status_code != 202:
            raise AssertionError(f"upload start: {r.status_code} {r.text}")
        location = r.headers["location"]
        sep = "&" if "?" in location else "?"
        r = self.request(
            "PUT",
            f"{location}{sep}digest={digest}",
            repo=repo,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if r.status_code != 201:
            raise AssertionError(f"upload finish: {r.status_code} {r.text}")
        return digest

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        r = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            repo=repo,
            content=data,
            headers={"Content-Type": media_type},
        )
        if r.status_code != 201:
            raise AssertionError(f"manifest put: {r.status_code} {r.text}")
        return str(r.headers["docker-content-digest"])

    def blob_exists(self, repo: str, digest: str) -> bool:
        return self.request("HEAD", f"/v2/{repo}/blobs/{digest}", repo=repo).status_code == 200

    def push_layout(self, layout: LayoutImage, repo: str, tag: str) -> str:
        """Push an OCI layout's image or index (blobs, children by digest, then the tag)."""
        for digest in layout.blob_digests:
            if not self.blob_exists(repo, digest):
                self.push_blob(repo, layout.blob_path(digest).read_bytes())
        if layout.is_index:
            for img in layout.images:
                self.put_manifest(repo, img.digest, img.manifest_bytes, img.media_type)
        return self.put_manifest(repo, tag, layout.top_bytes, layout.media_type)
