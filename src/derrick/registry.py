"""The registry client: every call of the distribution HTTP API goes through here.

:class:`RegistryClient` is long-lived: it keeps connection pools, the scheme
each registry speaks, and tokens per (registry, scopes).  Public methods take
and return derrick's own types, never HTTP responses.  Every manifest and blob
it hands out has been checked against its digest (streams are checked by the
reader with :class:`~derrick.digest.Verifier`, see :meth:`RegistryClient.open_blob`).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from derrick import mediatypes as mt
from derrick.api import CATALOG_SCOPE, delete_scope, pull_scope, push_scope, query_string
from derrick.auth.credentials import Credential, CredentialStore
from derrick.auth.token import Authenticator
from derrick.digest import Digest, Verifier
from derrick.errors import (
    BlobUnknownError,
    DeniedError,
    DerrickError,
    DigestMismatchError,
    ManifestError,
    ManifestUnknownError,
    NameUnknownError,
    NotFoundError,
    ProtocolError,
    RegistryError,
    RegistryErrorDetail,
    Remedy,
    ServerError,
    TooManyRequestsError,
    TransportError,
    UnauthorizedError,
    UnsupportedError,
)
from derrick.manifest import MAX_MANIFEST_SIZE, Descriptor, Manifest, parse_manifest
from derrick.reference import Reference
from derrick.transport import (
    RetryPolicy,
    TLSConfig,
    Transport,
    origin,
    parse_retry_after,
    redact_url,
)
from derrick.upload import BlobUploads

log = logging.getLogger("derrick.registry")

#: Largest error body or JSON listing derrick will read.
MAX_JSON_SIZE = 16 * 1024 * 1024
_LINK_RE = re.compile(r"<([^>]*)>\s*;\s*rel=\"?next\"?", re.IGNORECASE)


@dataclass(frozen=True)
class RateLimit:
    """Docker Hub style pull limits from ``ratelimit-*`` response headers."""

    limit: int | None
    remaining: int | None
    window_seconds: int | None
    source: str | None

    @classmethod
    def from_headers(cls, headers: httpx.Headers) -> RateLimit | None:
        def parse(v: str | None) -> tuple[int | None, int | None]:
            if not v:
                return None, None
            head, _, rest = v.partition(";")
            try:
                n: int | None = int(head.strip())
            except ValueError:
                n = None
            w = None
            m = re.search(r"w=(\d+)", rest)
            if m:
                w = int(m.group(1))
            return n, w

        limit, w1 = parse(headers.get("ratelimit-limit"))
        remaining, w2 = parse(headers.get("ratelimit-remaining"))
        if limit is None and remaining is None:
            return None
        return cls(limit, remaining, w1 or w2, headers.get("docker-ratelimit-source"))

    def describe(self) -> str:
        window = f" per {self.window_seconds // 3600}h" if self.window_seconds else ""
        if self.window_seconds and self.window_seconds % 3600:
            window = f" per {self.window_seconds}s"
        return f"{self.remaining} of {self.limit} pulls left{window}"


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest as served, with the digest of its exact bytes."""

    manifest: Manifest
    digest: Digest
    media_type: str
    ratelimit: RateLimit | None = None

    @property
    def raw(self) -> bytes:
        return self.manifest.raw

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.manifest.raw))


@dataclass(frozen=True)
class ManifestHead:
    descriptor: Descriptor
    ratelimit: RateLimit | None = None


@dataclass(frozen=True)
class PingResult:
    registry: str
    url: str
    api_version: str | None
    auth_scheme: str | None


class BlobStream:
    """An open blob download: iterate :meth:`chunks`; ``offset`` is where it starts."""

    def __init__(self, resp: httpx.Response, offset: int, total: int | None) -> None:
        self._resp = resp
        self.offset = offset
        self.total = total

    def chunks(self, size: int | None = None) -> Iterator[bytes]:
        """The body as it arrives (re-chunking to ``size`` costs a copy; None avoids it)."""
        try:
            yield from self._resp.iter_raw(size)
        except httpx.HTTPError as e:
            raise _stream_error(e, self._resp) from None


def _stream_error(e: Exception, resp: httpx.Response) -> DerrickError:

    url = redact_url(resp.request.url)
    if isinstance(e, httpx.TimeoutException):
        return TransportError(
            f"download from {url} timed out: nothing arrived for longer than the timeout",
            hint="finished blobs are kept and partial ones resume",
            remedy=Remedy("timeout"),
        )
    return TransportError(
        f"download from {url} broke off: {e or type(e).__name__}",
        hint="finished blobs are kept and partial ones resume",
        remedy=Remedy("retry"),
    )


class RegistryClient(BlobUploads):
    """A client for one or more registries, reused across calls.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        *,
        credentials: CredentialStore | Callable[[str], Credential | None] | None = None,
        insecure: bool = False,
        insecure_registries: Iterable[str] = (),
        ca_cert: Path | None = None,
        certs_dir: Path | None = Path("/etc/docker/certs.d"),
        timeout: float = 30.0,
        retries: int = 3,
        max_connections: int = 16,
        transport: Transport | None = None,
    ) -> None:
        self.transport = transport or Transport(
            insecure=insecure,
            insecure_hosts=insecure_registries,
            tls=TLSConfig(ca_cert=ca_cert, certs_dir=certs_dir),
            timeout=timeout,
            retry=RetryPolicy(retries=retries),
            max_connections=max_connections,
        )
        if credentials is None:
            store = CredentialStore()
            lookup: Callable[[str], Credential | None] = store.get
        elif isinstance(credentials, CredentialStore):
            lookup = credentials.get
        else:
            lookup = credentials
        self.auth = Authenticator(self.transport, lookup)

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    # -- the one request path -----------------------------------------------------------

    def _url(self, ref: Reference | str, path: str) -> str:
        host = ref.api_host if isinstance(ref, Reference) else _api_host(ref)
        return self.transport.base_url(host) + path

    def _request(
        self,
        method: str,
        registry: str,
        url: str,
        *,
        scopes: Sequence[str],
        what: str,
        headers: dict[str, str] | None = None,
        content: bytes | Callable[[], Iterable[bytes]] | None = None,
        stream: bool = False,
        ok: Sequence[int] = (200,),
        retry: bool = True,
    ) -> httpx.Response:
        """Send with auth, retry once after a challenge, and raise for errors."""
        hdrs = dict(headers or {})
        auth = self.auth.header(registry, scopes, httpx.URL(url))
        if auth:
            hdrs["Authorization"] = auth
        # Credentials are for the registry only: not for a Link or Location elsewhere.
        send = functools.partial(
            self.transport.send,
            method,
            url,
            headers=hdrs,
            content=content,
            stream=stream,
            retry=retry,
            auth_origin=origin(httpx.URL(self._url(registry, "/"))),
        )
        resp = send()
        if resp.status_code == 401:
            fresh = auth is not None and auth.startswith("Bearer ")
            new = self.auth.respond(registry, resp, scopes, fresh=fresh)
            if new is not None:
                resp.close()
                hdrs["Authorization"] = new  # the same dict send() passes
                resp = send()
        if resp.status_code not in ok:
            try:
                if stream:
                    resp.read()
            except httpx.HTTPError:
                pass
            finally:
                resp.close()
            raise self._error(resp, registry, what)
        return resp

    def _error(self, resp: httpx.Response, registry: str, what: str) -> RegistryError:
        status = resp.status_code
        url = redact_url(resp.request.url)
        details = _error_details(resp)
        codes = {d.code for d in details}
        first = next((d.message for d in details if d.message), "")
        rl = RateLimit.from_headers(resp.headers)
        kw: dict[str, object] = {"status": status, "url": url, "errors": details}
        if "MANIFEST_UNKNOWN" in codes or (
            status == 404 and what.startswith("manifest") and "NAME_UNKNOWN" not in codes
        ):
            return ManifestUnknownError(
                f"{what} not found: the tag or digest is not in the repository",
                remedy=Remedy("tags"),
                **kw,  # type: ignore[arg-type]
            )
        if "NAME_UNKNOWN" in codes:
            return NameUnknownError(
                f"{what}: the repository does not exist on {registry}",
                hint="check the repository name",
                **kw,  # type: ignore[arg-type]
            )
        if "BLOB_UNKNOWN" in codes or (status == 404 and what.startswith("blob")):
            return BlobUnknownError(
                f"{what} not found in the repository",
                **kw,  # type: ignore[arg-type]
            )
        unauthorized = status == 401 or "UNAUTHORIZED" in codes
        denied = status == 403 or "DENIED" in codes
        # Held back, the credentials were judged by no one: say so before anything else.
        if (unauthorized or denied) and registry in self.auth.withheld:
            return (UnauthorizedError if unauthorized else DeniedError)(
                f"{what}: authentication required by {registry}, and credentials are "
                "not sent over plain http",
                remedy=Remedy("insecure", host=registry),
                **kw,  # type: ignore[arg-type]
            )
        sent = registry in self.auth.sent
        scope = _insufficient_scope(resp)
        if status == 401 and scope is not None and sent:
            # A token was issued for these credentials, without the access asked for.
            return DeniedError(
                f"{what}: access denied by {registry} (the credentials do not grant {scope})",
                hint="the credentials in use lack permission for this repository",
                **kw,  # type: ignore[arg-type]
            )
        if unauthorized and sent:
            return UnauthorizedError(
                f"{what}: {registry} rejected the credentials" + (f" ({first})" if first else ""),
                remedy=Remedy("credentials", registry=registry),
                **kw,  # type: ignore[arg-type]
            )
        login = Remedy("login", registry=registry)
        if unauthorized:
            return UnauthorizedError(
                f"{what}: authentication required by {registry}" + (f" ({first})" if first else ""),
                remedy=login,
                **kw,  # type: ignore[arg-type]
            )
        if denied:
            return DeniedError(
                f"{what}: access denied by {registry}" + (f" ({first})" if first else ""),
                hint="the credentials in use lack permission for this repository" if sent else None,
                remedy=None if sent else login,
                **kw,  # type: ignore[arg-type]
            )
        if status == 429 or "TOOMANYREQUESTS" in codes:
            ra = parse_retry_after(resp.headers.get("retry-after"))
            msg = f"{what}: rate limited by {registry}"
            if rl is not None:
                msg += f" ({rl.describe()})"
            hint = "wait and try again"
            if ra is not None:
                hint = f"try again in {int(ra)} seconds"
            if registry == "docker.io":
                hint += ", or log in to raise the limit"
            return TooManyRequestsError(msg, hint=hint, retry_after=ra, **kw)  # type: ignore[arg-type]
        if status == 404:
            return NotFoundError(f"{what} not found on {registry}", **kw)  # type: ignore[arg-type]
        if status == 405 or "UNSUPPORTED" in codes:
            return UnsupportedError(
                f"{what}: {registry} does not support this operation"
                + (f" ({first})" if first else ""),
                **kw,  # type: ignore[arg-type]
            )
        if status >= 500:
            return ServerError(
                f"{what}: registry {registry} failed with HTTP {status}"
                + (f" ({first})" if first else ""),
                hint="the registry has a problem; try again later",
                **kw,  # type: ignore[arg-type]
            )
        return ProtocolError(
            f"{what}: unexpected HTTP {status} from {registry}" + (f" ({first})" if first else ""),
            **kw,  # type: ignore[arg-type]
        )

    # -- base, listing ----------------------------------------------------------------

    def ping(self, registry: str) -> PingResult:
        """Check that ``registry`` speaks the distribution API (``GET /v2/``)."""
        url = self._url(registry, "/v2/")
        resp = self.transport.send("GET", url)
        scheme = None
        if resp.status_code == 401:
            from derrick.auth.challenge import parse_challenges

            chs = parse_challenges(resp.headers.get_list("www-authenticate"))
            scheme = chs[0].scheme if chs else None
        elif resp.status_code != 200:
            raise self._error(resp, registry, f"registry {registry}")
        return PingResult(
            registry=registry,
            url=redact_url(url),
            api_version=resp.headers.get("docker-distribution-api-version"),
            auth_scheme=scheme,
        )

    def check_login(self, registry: str) -> None:
        """Prove that ``registry`` accepts the configured credentials.

        An anonymous ``GET /v2/`` must be challenged; the answer to the challenge must
        carry the credentials (a Basic header, or a token request with them that the
        token service grants), and ``GET /v2/`` with that answer must succeed.  Nothing
        less proves them: credentials held back over plain http, a registry that asks
        for none, or a token granted without them all raise.
        """
        what = f"login to {registry}"
        if self.auth.credential(registry) is None:
            from derrick.errors import CredentialsError

            raise CredentialsError(f"no credentials for {registry} to log in with")
        url = self._url(registry, "/v2/")
        resp = self.transport.send("GET", url)
        if resp.status_code == 200:
            raise UnsupportedError(
                f"{what}: {registry} asks for no credentials (GET /v2/ succeeds without "
                "them), so it cannot tell whether they are right",
                hint="check the registry address",
                remedy=Remedy("inline-credentials", registry=registry),
                status=200,
                url=redact_url(url),
            )
        if resp.status_code != 401:
            raise self._error(resp, registry, what)
        header = self.auth.login(registry, resp)
        if header is None:
            if registry in self.auth.withheld:
                raise self._error(resp, registry, what)
            challenge = resp.headers.get("www-authenticate", "")
            raise UnauthorizedError(
                f"{what}: the credentials cannot answer the challenge of {registry} "
                f"({challenge[:100] or 'none'})",
                hint="Basic and Bearer challenges are answered with a user name and "
                "password or an identity token",
                status=401,
                url=redact_url(url),
            )
        resp = self.transport.send(
            "GET",
            url,
            headers={"Authorization": header},
            auth_origin=origin(httpx.URL(self._url(registry, "/"))),
        )
        if resp.status_code != 200:
            raise self._error(resp, registry, what)

    def _paged(
        self, registry: str, url: str, key: str, scopes: Sequence[str], what: str
    ) -> Iterator[str]:
        seen: set[str] = set()
        next_url: str | None = url
        while next_url:
            if next_url in seen:
                raise ProtocolError(
                    f"{what}: the registry's pagination loops back to a page already read",
                    status=200,
                    url=redact_url(next_url),
                )
            seen.add(next_url)
            resp = self._request("GET", registry, next_url, scopes=scopes, what=what)
            body = _json_body(resp, what)
            items = body.get(key) if isinstance(body, dict) else None
            if items is None:
                items = []
            if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
                raise ProtocolError(
                    f"{what}: the registry's answer has no list of strings under {key!r}",
                    status=resp.status_code,
                    url=redact_url(resp.request.url),
                )
            yield from items
            link = resp.headers.get("link")
            next_url = None
            if link:
                m = _LINK_RE.search(link)
                if m:
                    next_url = str(resp.request.url.join(m.group(1)))

    def list_tags(
        self, ref: Reference, *, page_size: int | None = None, last: str | None = None
    ) -> list[str]:
        """All tags of the repository, following ``Link`` pagination."""
        url = self._url(
            ref, f"/v2/{ref.repository}/tags/list{query_string(n=page_size, last=last)}"
        )
        what = f"repository {ref.registry}/{ref.repository}"
        return list(self._paged(ref.registry, url, "tags", [pull_scope(ref.repository)], what))

    def catalog(
        self, registry: str, *, page_size: int | None = None, last: str | None = None
    ) -> list[str]:
        """Repository names the registry lists (``/v2/_catalog``)."""
        url = self._url(registry, f"/v2/_catalog{query_string(n=page_size, last=last)}")
        return list(
            self._paged(registry, url, "repositories", [CATALOG_SCOPE], f"catalog of {registry}")
        )

    # -- manifests --------------------------------------------------------------------

    def get_manifest(self, ref: Reference, *, accept: str = mt.MANIFEST_ACCEPT) -> FetchedManifest:
        """Fetch and parse a manifest or index; its digest is checked when ``ref`` has one."""
        what = f"manifest {ref}"
        url = self._url(ref, f"/v2/{ref.repository}/manifests/{ref.identifier}")
        resp = self._request(
            "GET",
            ref.registry,
            url,
            scopes=[pull_scope(ref.repository)],
            what=what,
            headers={"Accept": accept},
            stream=True,
        )
        try:
            raw = _read_capped(resp, MAX_MANIFEST_SIZE, what)
        finally:
            resp.close()
        digest = Digest.of(raw)
        if ref.digest is not None and ref.digest != digest:
            if ref.digest.algorithm != "sha256":
                digest = Digest.of(raw, ref.digest.algorithm)
            if ref.digest != digest:
                raise DigestMismatchError(
                    f"{what}: the registry served content with digest {digest}, "
                    "not the one asked for",
                    hint="the registry is serving wrong content; nothing was kept",
                )
        header_digest = resp.headers.get("docker-content-digest")
        if ref.digest is None and header_digest:
            try:
                claimed = Digest.parse(header_digest.strip())
            except DerrickError:
                claimed = None
            if claimed is not None and claimed.algorithm == "sha256" and claimed != digest:
                raise DigestMismatchError(
                    f"{what}: content does not match the Docker-Content-Digest header "
                    f"({claimed}, content is {digest})",
                    hint="the registry is serving inconsistent content; nothing was kept",
                )
        content_type = resp.headers.get("content-type", "")
        try:
            manifest = parse_manifest(raw, content_type)
        except ManifestError as e:
            raise ManifestError(f"{what}: {e.message}", hint=e.hint, remedy=e.remedy) from None
        return FetchedManifest(
            manifest=manifest,
            digest=digest,
            media_type=manifest.media_type,
            ratelimit=RateLimit.from_headers(resp.headers),
        )

    def head_manifest(self, ref: Reference, *, accept: str = mt.MANIFEST_ACCEPT) -> ManifestHead:
        """Digest, size and media type of a manifest without fetching it."""
        what = f"manifest {ref}"
        url = self._url(ref, f"/v2/{ref.repository}/manifests/{ref.identifier}")
        resp = self._request(
            "HEAD",
            ref.registry,
            url,
            scopes=[pull_scope(ref.repository)],
            what=what,
            headers={"Accept": accept},
        )
        header = resp.headers.get("docker-content-digest")
        if not header:
            # Not every registry sends the digest on HEAD: fall back to a GET.
            got = self.get_manifest(ref, accept=accept)
            return ManifestHead(got.descriptor, got.ratelimit)
        try:
            digest = Digest.parse(header.strip())
        except DerrickError as e:
            raise ProtocolError(
                f"{what}: the registry sent an invalid Docker-Content-Digest ({e})",
                status=resp.status_code,
                url=redact_url(resp.request.url),
            ) from None
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        size = int(resp.headers.get("content-length") or 0)
        return ManifestHead(
            Descriptor(media_type, digest, size), RateLimit.from_headers(resp.headers)
        )

    def put_manifest(
        self, ref: Reference, raw: bytes, media_type: str, *, scopes: Sequence[str] | None = None
    ) -> Digest:
        """Store manifest bytes under the tag or digest of ``ref``; return its digest.

        ``scopes`` replaces the default push scope (to share one token with other calls).
        """
        digest = Digest.of(raw)
        if ref.digest is not None and ref.digest != digest:
            raise DigestMismatchError(
                f"manifest for {ref} does not match the digest it is pushed under ({digest})"
            )
        url = self._url(ref, f"/v2/{ref.repository}/manifests/{ref.identifier}")
        resp = self._request(
            "PUT",
            ref.registry,
            url,
            scopes=list(scopes) if scopes else [push_scope(ref.repository)],
            what=f"push of manifest {ref}",
            headers={"Content-Type": media_type},
            content=raw,
            ok=(200, 201, 202),
        )
        header = resp.headers.get("docker-content-digest")
        if header and header.strip() != str(digest):
            raise DigestMismatchError(
                f"registry stored manifest {ref} as {header.strip()}, expected {digest}"
            )
        return digest

    def delete_manifest(self, ref: Reference) -> None:
        """Delete a manifest (by digest; a tag is resolved to its digest first)."""
        if ref.digest is None:
            ref = ref.with_digest(self.head_manifest(ref).descriptor.digest)
        url = self._url(ref, f"/v2/{ref.repository}/manifests/{ref.digest}")
        self._request(
            "DELETE",
            ref.registry,
            url,
            scopes=[delete_scope(ref.repository)],
            what=f"delete of manifest {ref}",
            ok=(200, 202),
        )

    # -- blobs ------------------------------------------------------------------------

    def head_blob(
        self, ref: Reference, digest: Digest, *, scopes: Sequence[str] | None = None
    ) -> int | None:
        """The blob's size if the repository has it, else None.

        ``scopes`` replaces the default pull scope (a push asks with its push token).
        """
        url = self._url(ref, f"/v2/{ref.repository}/blobs/{digest}")
        try:
            resp = self._request(
                "HEAD",
                ref.registry,
                url,
                scopes=list(scopes) if scopes else [pull_scope(ref.repository)],
                what=f"blob {digest} in {ref.registry}/{ref.repository}",
            )
        except NotFoundError:
            return None
        length = resp.headers.get("content-length")
        return int(length) if length and length.isdigit() else 0

    @contextmanager
    def open_blob(self, ref: Reference, digest: Digest, *, offset: int = 0) -> Iterator[BlobStream]:
        """Stream a blob, from ``offset`` with a ``Range`` request when it is not 0.

        The registry may ignore the range; then the stream starts at 0 and
        ``stream.offset`` says so.  The caller verifies the digest.
        """
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        url = self._url(ref, f"/v2/{ref.repository}/blobs/{digest}")
        resp = self._request(
            "GET",
            ref.registry,
            url,
            scopes=[pull_scope(ref.repository)],
            what=f"blob {digest} of {ref.registry}/{ref.repository}",
            headers=headers,
            stream=True,
            ok=(200, 206),
        )
        try:
            start = 0
            total: int | None = None
            if resp.status_code == 206:
                m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("content-range", ""))
                if not m or int(m.group(1)) != offset:
                    raise ProtocolError(
                        f"blob {digest}: the registry answered a range request with a "
                        "wrong Content-Range",
                        status=206,
                        url=redact_url(resp.request.url),
                    )
                start = offset
                if m.group(3) != "*":
                    total = int(m.group(3))
            else:
                cl = resp.headers.get("content-length")
                total = int(cl) if cl and cl.isdigit() else None
            yield BlobStream(resp, start, total)
        finally:
            resp.close()

    def get_blob_bytes(
        self, ref: Reference, desc: Descriptor | Digest, *, max_size: int = MAX_MANIFEST_SIZE
    ) -> bytes:
        """A small blob (a config) read whole and verified."""
        digest = desc.digest if isinstance(desc, Descriptor) else desc
        size = desc.size if isinstance(desc, Descriptor) else None
        if size is not None and size > max_size:
            raise ManifestError(f"blob {digest} is {size} bytes, more than the {max_size} limit")
        v = Verifier(digest, size)
        parts: list[bytes] = []
        with self.open_blob(ref, digest) as stream:
            for chunk in stream.chunks():
                v.update(chunk)
                if v.count > max_size:
                    raise ManifestError(f"blob {digest} is larger than the {max_size} byte limit")
                parts.append(chunk)
        v.verify()
        return b"".join(parts)

    def delete_blob(self, ref: Reference, digest: Digest) -> None:
        url = self._url(ref, f"/v2/{ref.repository}/blobs/{digest}")
        self._request(
            "DELETE",
            ref.registry,
            url,
            scopes=[delete_scope(ref.repository)],
            what=f"delete of blob {digest} in {ref.registry}/{ref.repository}",
            ok=(200, 202),
        )


def _api_host(registry: str) -> str:
    return "registry-1.docker.io" if registry == "docker.io" else registry


def _read_capped(resp: httpx.Response, cap: int, what: str) -> bytes:
    cl = resp.headers.get("content-length")
    if cl and cl.isdigit() and int(cl) > cap:
        raise ManifestError(f"{what} is {cl} bytes, more than the {cap} byte limit")
    parts: list[bytes] = []
    n = 0
    try:
        for chunk in resp.iter_bytes(1 << 16):
            n += len(chunk)
            if n > cap:
                raise ManifestError(f"{what} is more than the {cap} byte limit")
            parts.append(chunk)
    except httpx.HTTPError as e:
        raise _stream_error(e, resp) from None
    return b"".join(parts)


def _json_body(resp: httpx.Response, what: str) -> object:
    if len(resp.content) > MAX_JSON_SIZE:
        raise ProtocolError(f"{what}: answer too large", status=resp.status_code, url="")
    try:
        return json.loads(resp.content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError(
            f"{what}: the registry answered something that is not JSON",
            status=resp.status_code,
            url=redact_url(resp.request.url),
            hint="is this address really a container registry?",
        ) from None


def _insufficient_scope(resp: httpx.Response) -> str | None:
    """The scope a Bearer challenge says the token lacked (``error="insufficient_scope"``)."""
    from derrick.auth.challenge import parse_challenges

    for ch in parse_challenges(resp.headers.get_list("www-authenticate")):
        if ch.scheme == "bearer" and ch.params.get("error") == "insufficient_scope":
            return ch.params.get("scope") or "the access asked for"
    return None


def _error_details(resp: httpx.Response) -> list[RegistryErrorDetail]:
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
