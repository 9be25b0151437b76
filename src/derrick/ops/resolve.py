"""Resolve a reference to one platform's image: manifest, config and layers.

A platform asked for is found in an index by its entries' platforms; an image
that is not in an index has its platform in its config, and is checked against
that.  An OCI artifact (a Helm chart, a signature, an SBOM…) has none.
"""

from __future__ import annotations

from dataclasses import dataclass

from derrick.digest import Digest
from derrick.errors import ManifestError
from derrick.manifest import Descriptor, ImageConfig, ImageManifest, Index, Platform
from derrick.platform import check_platform
from derrick.reference import Reference
from derrick.registry import FetchedManifest, RegistryClient


@dataclass(frozen=True)
class ResolvedImage:
    """One platform image reached from a reference (through an index if there is one)."""

    ref: Reference
    top: FetchedManifest  # what the reference names: an index or a manifest
    manifest: ImageManifest  # the chosen platform's image manifest
    descriptor: Descriptor  # the image manifest's descriptor (with platform when from an index)
    config: ImageConfig | None = None  # the config, when it was read to check the platform

    @property
    def digest(self) -> Digest:
        return self.descriptor.digest

    @property
    def index(self) -> Index | None:
        m = self.top.manifest
        return m if isinstance(m, Index) else None


def fetch_child(client: RegistryClient, ref: Reference, desc: Descriptor) -> ImageManifest:
    """Fetch an index entry's image manifest, verified against the entry's digest and size."""
    got = client.get_manifest(ref.with_digest(desc.digest))
    if len(got.raw) != desc.size:
        raise ManifestError(
            f"manifest {desc.digest} of {ref.name} is {len(got.raw)} bytes "
            f"but the index says {desc.size}"
        )
    if not isinstance(got.manifest, ImageManifest):
        raise ManifestError(f"index entry {desc.digest} of {ref} is not an image manifest")
    return got.manifest


def resolve_image(
    client: RegistryClient, ref: Reference, platform: Platform | None = None
) -> ResolvedImage:
    """Fetch what ``ref`` names; if it is an index, pick ``platform`` (default: the host's).

    A manifest that is not in an index is taken whatever its platform, unless
    ``platform`` is given: then its config must name that platform
    (:class:`PlatformNotFoundError` otherwise, as for an index without it).
    """
    top = client.get_manifest(ref)
    m = top.manifest
    if isinstance(m, ImageManifest):
        config = None
        if platform is not None:
            config = fetch_config(client, ref, m) if m.is_image else None
            check_platform(str(ref), m, config, platform)
        return ResolvedImage(ref, top, m, top.descriptor, config)
    desc = m.select(platform or Platform.host())
    return ResolvedImage(ref, top, fetch_child(client, ref, desc), desc)


def fetch_config(client: RegistryClient, ref: Reference, manifest: ImageManifest) -> ImageConfig:
    raw = client.get_blob_bytes(ref, manifest.config)
    try:
        return ImageConfig.parse(raw)
    except ManifestError as e:
        raise ManifestError(f"config {manifest.config.digest} of {ref}: {e.message}") from None


def resolved_config(client: RegistryClient, img: ResolvedImage) -> ImageConfig:
    """The config of a resolved image (read once)."""
    return img.config or fetch_config(client, img.ref, img.manifest)
