"""Manifests and indexes: get (verified), head, put and delete."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from derrick import mediatypes as mt
from derrick.digest import Digest
from derrick.errors import DerrickError, DigestMismatchError, ManifestError, ProtocolError
from derrick.manifest import MAX_MANIFEST_SIZE, Descriptor, Manifest, parse_manifest
from derrick.reference import Reference
from derrick.registry.ratelimit import RateLimit
from derrick.registry.scopes import delete_scope, pull_scope, push_scope
from derrick.registry.session import Call, Session, read_capped
from derrick.registry.urls import Endpoint, manifest_path
from derrick.transport import redact_url


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


def _where(session: Session, ref: Reference) -> tuple[Endpoint, str]:
    """The endpoint of ``ref``'s registry and the URL of the manifest ``ref`` names."""
    ep = session.endpoint(ref.registry)
    return ep, ep.url(manifest_path(ref.repository, ref.identifier))


def _read(
    session: Session, method: str, ref: Reference, accept: str, *, stream: bool = False
) -> httpx.Response:
    """The answer to a GET or HEAD of the manifest ``ref`` names, of the ``accept`` types."""
    ep, url = _where(session, ref)
    scopes = (pull_scope(ref.repository),)
    headers = {"Accept": accept}
    call = Call(method, ep, url, scopes, f"manifest {ref}", "manifest", headers, stream=stream)
    return session.request(call)


def get_manifest(
    session: Session, ref: Reference, accept: str = mt.MANIFEST_ACCEPT
) -> FetchedManifest:
    """Fetch and parse a manifest or index; its digest is checked when ``ref`` has one."""
    what = f"manifest {ref}"
    resp = _read(session, "GET", ref, accept, stream=True)
    try:
        raw = read_capped(resp, MAX_MANIFEST_SIZE, what)
    finally:
        resp.close()
    digest = _verified_digest(ref, raw, resp.headers, what)
    try:
        manifest = parse_manifest(raw, resp.headers.get("content-type", ""))
    except ManifestError as e:
        raise ManifestError(f"{what}: {e.message}", hint=e.hint, remedy=e.remedy) from None
    return FetchedManifest(
        manifest=manifest,
        digest=digest,
        media_type=manifest.media_type,
        ratelimit=RateLimit.from_headers(resp.headers),
    )


def _verified_digest(ref: Reference, raw: bytes, headers: httpx.Headers, what: str) -> Digest:
    """The digest of ``raw``, checked against the one ``ref`` names, else the header's."""
    digest = Digest.of(raw)
    if ref.digest is not None and ref.digest != digest:
        if ref.digest.algorithm != "sha256":
            digest = Digest.of(raw, ref.digest.algorithm)
        if ref.digest != digest:
            raise DigestMismatchError(
                f"{what}: the registry served content with digest {digest}, not the one asked for",
                hint="the registry is serving wrong content; nothing was kept",
            )
    header_digest = headers.get("docker-content-digest")
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
    return digest


def head_manifest(
    session: Session, ref: Reference, accept: str = mt.MANIFEST_ACCEPT
) -> ManifestHead:
    """Digest, size and media type of a manifest without fetching it."""
    what = f"manifest {ref}"
    resp = _read(session, "HEAD", ref, accept)
    header = resp.headers.get("docker-content-digest")
    if not header:
        # Not every registry sends the digest on HEAD: fall back to a GET.
        got = get_manifest(session, ref, accept)
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
    return ManifestHead(Descriptor(media_type, digest, size), RateLimit.from_headers(resp.headers))


def put_manifest(
    session: Session, ref: Reference, raw: bytes, media_type: str, scopes: tuple[str, ...] = ()
) -> Digest:
    """Store manifest bytes under the tag or digest of ``ref``; return its digest."""
    digest = Digest.of(raw)
    if ref.digest is not None and ref.digest != digest:
        raise DigestMismatchError(
            f"manifest for {ref} does not match the digest it is pushed under ({digest})"
        )
    ep, url = _where(session, ref)
    call = Call(
        "PUT",
        ep,
        url,
        scopes or (push_scope(ref.repository),),
        f"push of manifest {ref}",
        headers={"Content-Type": media_type},
        content=raw,
        ok=(200, 201, 202),
    )
    header = session.request(call).headers.get("docker-content-digest")
    if header and header.strip() != str(digest):
        raise DigestMismatchError(
            f"registry stored manifest {ref} as {header.strip()}, expected {digest}"
        )
    return digest


def delete_manifest(session: Session, ref: Reference) -> None:
    """Delete a manifest (by digest; a tag is resolved to its digest first)."""
    if ref.digest is None:
        ref = ref.with_digest(head_manifest(session, ref).descriptor.digest)
    ep, url = _where(session, ref)
    scopes = (delete_scope(ref.repository),)
    session.request(Call("DELETE", ep, url, scopes, f"delete of manifest {ref}", ok=(200, 202)))
