"""Copy an image from one repository to another, and put new tags on an image.

Blobs stream straight through: each download is the body of its upload, and
nothing is kept locally.  The content is hashed as it passes and checked
against its digest before its last bytes are sent, so a blob that does not
match is never committed (and the registry, which checks ``?digest=`` itself,
would refuse it too).  Blobs the destination has are skipped; on the same
registry they are mounted from the source repository instead of copied.
Manifests are pushed byte for byte, so every digest is preserved.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from derrick import mediatypes as mt
from derrick.digest import Digest, Verifier
from derrick.errors import ManifestError
from derrick.manifest import Descriptor, ImageConfig, ImageManifest, Index, Platform
from derrick.ops.push import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_JOBS,
    BlobSource,
    ManifestBlob,
    Opener,
    TransferProgress,
    TransferStats,
    put_manifests,
    transfer_blobs,
)
from derrick.platform import check_platform
from derrick.reference import Reference
from derrick.registry import FetchedManifest, RegistryClient, pull_scope, push_scope

_MAX_INDEX_DEPTH = 4
_FOREIGN_LAYERS = frozenset(
    {mt.DOCKER_LAYER_FOREIGN, mt.OCI_LAYER_NONDIST, mt.OCI_LAYER_NONDIST_GZIP}
)


@dataclass
class CopyResult:
    src: Reference
    dst: Reference
    digest: Digest  # of what ``dst`` now names: equal to the source's
    media_type: str
    manifests: list[Digest] = field(default_factory=list)  # every manifest pushed, top last
    stats: TransferStats = field(default_factory=TransferStats)


def streaming_opener(client: RegistryClient, src: Reference, desc: Descriptor) -> Opener:
    """Reads blob ``desc`` of ``src`` from an offset, verified while it streams.

    The bytes are hashed as they pass; when the last one has arrived the
    digest and size are checked, and only then is the final chunk given out.
    Starting again anywhere but where the last read stopped re-reads (and
    re-hashes) the blob from its first byte.
    """
    verifier = Verifier(desc.digest, desc.size, what=f"blob {desc.digest} of {src.name}")

    def open_at(offset: int) -> Iterator[bytes]:
        if offset != verifier.count:
            verifier.reset()
        with client.open_blob(src, desc.digest, offset=verifier.count) as stream:
            if stream.offset != verifier.count:  # the registry ignored the range
                verifier.reset()
            pos = verifier.count
            for chunk in stream.chunks():
                verifier.update(chunk)
                end = pos + len(chunk)
                piece = chunk[max(0, offset - pos) :] if end > offset else b""
                pos = end
                if verifier.count == desc.size:
                    verifier.verify()  # before the last bytes go out
                if piece:
                    yield piece
        verifier.verify()  # the stream ended short

    return open_at


def _fetch(client: RegistryClient, src: Reference, desc: Descriptor) -> FetchedManifest:
    got = client.get_manifest(src.with_digest(desc.digest))
    if len(got.raw) != desc.size:
        raise ManifestError(
            f"manifest {desc.digest} of {src.name} is {len(got.raw)} bytes, "
            f"its index says {desc.size}"
        )
    return got


def _collect(
    client: RegistryClient,
    src: Reference,
    got: FetchedManifest,
    manifests: list[ManifestBlob],
    images: list[ImageManifest],
    depth: int = 0,
) -> None:
    """Add ``got`` and, for an index, every manifest under it (children first)."""
    m = got.manifest
    if isinstance(m, Index):
        if depth >= _MAX_INDEX_DEPTH:
            raise ManifestError(f"index {got.digest} of {src.name} nests indexes too deeply")
        for child in m.manifests:
            if all(x.digest != child.digest for x in manifests):
                _collect(client, src, _fetch(client, src, child), manifests, images, depth + 1)
    else:
        images.append(m)
    if all(x.digest != got.digest for x in manifests):
        manifests.append(ManifestBlob(got.raw, got.media_type))


def _image_blobs(images: Sequence[ImageManifest]) -> list[Descriptor]:
    seen: dict[Digest, Descriptor] = {}
    for m in images:
        for d in (m.config, *m.layers):
            if d.urls and d.media_type in _FOREIGN_LAYERS:
                continue  # fetched by clients from their URLs, not stored in registries
            seen.setdefault(d.digest, d)
    return list(seen.values())


def copy_image(
    client: RegistryClient,
    src: Reference,
    dst: Reference,
    *,
    platform: Platform | None = None,
    all_platforms: bool = False,
    jobs: int = DEFAULT_JOBS,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    progress: TransferProgress | None = None,
) -> CopyResult:
    """Copy what ``src`` names to ``dst``, preserving digests.

    An index is copied whole with ``all_platforms``; otherwise only the
    manifest for ``platform`` (default: this machine's) is copied, and ``dst``
    names that manifest.  A single manifest is copied whatever its platform,
    unless ``platform`` is given: then its config must name that platform.
    A ``dst`` without tag or digest takes ``src``'s tag.
    """
    if dst.tag is None and dst.digest is None:
        dst = dst.with_tag(src.tag) if src.tag else dst
    top = client.get_manifest(src)
    manifests: list[ManifestBlob] = []
    images: list[ImageManifest] = []
    if isinstance(top.manifest, Index) and not all_platforms:
        desc = top.manifest.select(platform or Platform.host())
        child = _fetch(client, src, desc)
        if not isinstance(child.manifest, ImageManifest):
            raise ManifestError(f"index entry {desc.digest} of {src} is not an image manifest")
        manifests.append(ManifestBlob(child.raw, child.media_type))
        images.append(child.manifest)
    else:
        m = top.manifest
        if isinstance(m, ImageManifest) and platform is not None and not all_platforms:
            # not in an index: the platform is the one its config names
            check_platform(
                str(src), m, _fetch_config(client, src, m) if m.is_image else None, platform
            )
        _collect(client, src, top, manifests, images)
    if dst.tag is None and dst.digest is None:
        dst = dst.with_digest(manifests[-1].digest)

    same_registry = src.registry == dst.registry
    mount_from = src.repository if same_registry and src.repository != dst.repository else None
    # On one registry, one token grants both: pull,push here and pull there.
    scopes = [push_scope(dst.repository)]
    if mount_from is not None:
        scopes.append(pull_scope(mount_from))
    blobs = [BlobSource(d, streaming_opener(client, src, d)) for d in _image_blobs(images)]
    stats = transfer_blobs(
        client,
        dst,
        blobs,
        jobs=jobs,
        chunk_size=chunk_size,
        progress=progress,
        scopes=scopes,
        mount_from=mount_from,
    )
    digest = put_manifests(client, dst, manifests, scopes=scopes)
    return CopyResult(
        src=src,
        dst=dst,
        digest=digest,
        media_type=manifests[-1].media_type,
        manifests=[m.digest for m in manifests],
        stats=stats,
    )


def tag_image(client: RegistryClient, ref: Reference, tags: Sequence[str]) -> FetchedManifest:
    """Put ``tags`` (in ``ref``'s repository) on the manifest ``ref`` names.

    The manifest is fetched and pushed again byte for byte under each tag; no
    blob is read or written.
    """
    got = client.get_manifest(ref)
    for tag in tags:
        client.put_manifest(ref.with_tag(tag), got.raw, got.media_type)
    return got


def _fetch_config(client: RegistryClient, ref: Reference, manifest: ImageManifest) -> ImageConfig:
    """The image config of ``manifest``, read whole and verified."""
    raw = client.get_blob_bytes(ref, manifest.config)
    try:
        return ImageConfig.parse(raw)
    except ManifestError as e:
        raise ManifestError(f"config {manifest.config.digest} of {ref}: {e.message}") from None
