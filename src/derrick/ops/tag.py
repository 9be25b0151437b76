"""Put new tags on an image of a registry: the manifest is read and written again under each
tag, byte for byte; no blob is read or written."""

from __future__ import annotations

from collections.abc import Sequence

from derrick.reference import Reference
from derrick.registry import FetchedManifest, RegistryClient

__all__ = ["tag_image"]


def tag_image(client: RegistryClient, ref: Reference, tags: Sequence[str]) -> FetchedManifest:
    """Put ``tags`` (in ``ref``'s repository) on the manifest ``ref`` names; the manifest."""
    got = client.get_manifest(ref)
    for tag in tags:
        client.put_manifest(ref.with_tag(tag), got.raw, got.media_type)
    return got
