"""One-pass writers of OCI archives and docker-archive tarballs.

Both writers stream a tar to a binary file object (a file, a pipe or standard
output) without seeking.  Small members (manifests, configs, index files) are
held in memory; layers are copied from local files that ``blob_file`` returns.
``blob_file`` is called for one layer at a time, in manifest order, right before
that layer is written, so a caller may still be downloading later layers (and
may block until the requested one is complete).  Each blob is written once,
however many images share it.

OCI archive
    An OCI image layout (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``)
    as a tar.  ``index.json`` names each image with the
    ``org.opencontainers.image.ref.name`` (tag) and ``io.containerd.image.name``
    (full reference) annotations.

docker-archive
    The ``docker save`` format: ``manifest.json`` (a list of
    ``{"Config", "RepoTags", "Layers"}``), a legacy ``repositories`` file and the
    config and layer blobs under ``blobs/sha256/``.  Layers are stored exactly as
    the registry serves them (usually gzip-compressed); loaders detect the
    compression.  The same tar is also a valid OCI image layout: the registry
    manifests and an ``index.json`` are included, as newer ``docker save`` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from derrick import mediatypes as mt
from derrick.digest import Digest, verify_bytes
from derrick.errors import DerrickError, LayoutError, ManifestError
from derrick.layout.ociindex import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    BLOBS_DIR,
    blob_member,
    index_json,
    layout_file_bytes,
    named_descriptor,
)
from derrick.layout.tarstream import TarStreamWriter
from derrick.manifest import Descriptor, ImageConfig, ImageManifest, Index, Platform

__all__ = [
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_REF_NAME",
    "ArchiveImage",
    "BlobFile",
    "check_docker_image",
    "docker_manifest_json",
    "image_platform",
    "repositories_json",
    "split_repo_tag",
    "write_docker_archive",
    "write_oci_archive",
]

#: Returns the local path of the verified blob (and may block until it is downloaded),
#: or None to leave room for the layer in the archive, to be filled in by the caller
#: at the offset the writer returns (seekable outputs only).
BlobFile = Callable[[Digest], Path | None]
#: Where the content of each layer left as room starts in the archive.
Holes = dict[Digest, int]

_IMAGE_CONFIGS = frozenset({mt.OCI_CONFIG, mt.DOCKER_CONFIG})


@dataclass(frozen=True)
class ArchiveImage:
    """One image to put into an archive."""

    #: The platform image manifest (raw bytes kept).
    manifest: ImageManifest
    #: The raw config blob.
    config: bytes
    #: The tag, e.g. ``v1``, written as ``org.opencontainers.image.ref.name``.
    ref_name: str | None
    #: The full reference, e.g. ``registry:5000/test/single:v1``.
    image_name: str | None
    #: docker-archive ``RepoTags`` entries, each ``name:tag``.
    repo_tags: tuple[str, ...] = ()
    #: The whole multi-platform index, when it is exported (OCI archive only).
    index: Index | None = None
    #: The index's other platform manifests with their raw configs.
    children: tuple[tuple[ImageManifest, bytes], ...] = ()

    @property
    def display_name(self) -> str:
        return self.image_name or self.ref_name or str(self.manifest.digest)


def split_repo_tag(repo_tag: str) -> tuple[str, str] | None:
    """Split ``name:tag`` into ``(name, tag)``; None if there is no tag."""
    if "@" in repo_tag:
        return None
    slash = repo_tag.rfind("/")
    colon = repo_tag.rfind(":")
    if colon <= slash + 1 or colon == len(repo_tag) - 1:
        return None
    return repo_tag[:colon], repo_tag[colon + 1 :]


def image_platform(manifest: ImageManifest, config: bytes) -> Platform | None:
    """The platform an image's config says, or None (an artifact, or a config without one)."""
    if manifest.config.media_type not in _IMAGE_CONFIGS:
        return None
    try:
        cfg = ImageConfig.parse(config)
    except DerrickError:
        return None
    if not cfg.os or not cfg.architecture:
        return None
    return cfg.platform


def check_docker_image(what: str, manifest: ImageManifest, config: bytes) -> None:
    """Refuse an image ``docker load`` would reject: a config that does not parse, or one
    that lists another number of layers (``rootfs.diff_ids``) than the manifest."""
    try:
        cfg = ImageConfig.parse(config)
    except DerrickError as e:
        raise ManifestError(f"config {manifest.config.digest} of {what}: {e.message}") from None
    if len(manifest.layers) != len(cfg.diff_ids):
        raise LayoutError(
            f"{what} cannot be written as a docker-archive: its manifest "
            f"has {len(manifest.layers)} layers but its config lists {len(cfg.diff_ids)} "
            "(rootfs.diff_ids)",
            hint="docker load would reject it; save it as an OCI archive instead",
        )


def _check_config(image: ArchiveImage, manifest: ImageManifest, config: bytes) -> None:
    verify_bytes(
        config,
        manifest.config.digest,
        manifest.config.size,
        what=f"config of {image.display_name}",
    )


def _image_manifests(image: ArchiveImage) -> Iterator[tuple[ImageManifest, bytes]]:
    yield image.manifest, image.config
    yield from image.children


def _write_layers(
    w: TarStreamWriter,
    layers: Sequence[Descriptor],
    written: set[Digest],
    blob_file: BlobFile,
    holes: Holes,
) -> None:
    for layer in layers:
        if layer.digest in written:
            continue
        written.add(layer.digest)
        path = blob_file(layer.digest)
        if path is None:
            holes[layer.digest] = w.add_hole(blob_member(layer.digest), layer.size)
        else:
            w.add_file(blob_member(layer.digest), path, layer.size)


def _write_blob_dirs(w: TarStreamWriter, digests: Sequence[Digest]) -> None:
    w.add_dir(f"{BLOBS_DIR}/")
    for alg in sorted({d.algorithm for d in digests} | {"sha256"}):
        w.add_dir(f"{BLOBS_DIR}/{alg}/")


def _unique(entries: Sequence[Descriptor]) -> list[Descriptor]:
    out: list[Descriptor] = []
    for d in entries:
        if d not in out:
            out.append(d)
    return out


def _all_digests(images: Sequence[ArchiveImage]) -> list[Digest]:
    out: list[Digest] = []
    for image in images:
        if image.index is not None:
            out.append(image.index.digest)
        for m, _ in _image_manifests(image):
            out.append(m.digest)
            out.append(m.config.digest)
            out.extend(layer.digest for layer in m.layers)
    return out


def write_oci_archive(
    out: BinaryIO,
    images: Sequence[ArchiveImage],
    blob_file: BlobFile,
    *,
    mtime: int = 0,
) -> Holes:
    """Write ``images`` as an OCI image layout tar to ``out`` in one pass.

    Returns the offsets of the layers ``blob_file`` left as room.
    """
    if not images:
        raise LayoutError("no images to write to the OCI archive")
    small: dict[Digest, bytes] = {}  # manifests, configs, index: written first, once each
    entries: list[Descriptor] = []
    layers: list[Descriptor] = []
    for image in images:
        provided: dict[Digest, ImageManifest] = {}
        for m, cfg in _image_manifests(image):
            _check_config(image, m, cfg)
            provided[m.digest] = m
        if image.index is not None:
            top = image.index.descriptor()
            small.setdefault(image.index.digest, image.index.raw)
            missing = [d for d in image.index.manifests if d.digest not in provided]
            if missing:
                raise LayoutError(
                    f"the index of {image.display_name} lists manifests that were not "
                    "provided: " + ", ".join(str(d.digest) for d in missing),
                    hint="export one platform, or provide every manifest of the index",
                )
        else:
            top = image.manifest.descriptor(image_platform(image.manifest, image.config))
        entries.append(named_descriptor(top, image.ref_name, image.image_name))
        for m, cfg in _image_manifests(image):
            small.setdefault(m.digest, m.raw)
            small.setdefault(m.config.digest, cfg)
            layers.extend(m.layers)

    w = TarStreamWriter(out, mtime=mtime)
    w.add_bytes("oci-layout", layout_file_bytes())
    w.add_bytes("index.json", index_json(_unique(entries)))
    _write_blob_dirs(w, _all_digests(images))
    for digest, data in small.items():
        w.add_bytes(blob_member(digest), data)
    written = set(small)
    holes: Holes = {}
    _write_layers(w, layers, written, blob_file, holes)
    w.close()
    return holes


def write_docker_archive(
    out: BinaryIO,
    images: Sequence[ArchiveImage],
    blob_file: BlobFile,
    *,
    mtime: int = 0,
) -> Holes:
    """Write ``images`` as a docker-archive (``docker load`` format) to ``out``.

    Returns the offsets of the layers ``blob_file`` left as room.

    Only each image's platform manifest is written (``index`` and ``children``
    are not part of the docker format and are ignored).
    """
    if not images:
        raise LayoutError("no images to write to the docker archive")
    for image in images:
        _check_config(image, image.manifest, image.config)
        check_docker_image(image.display_name, image.manifest, image.config)

    w = TarStreamWriter(out, mtime=mtime)
    w.add_bytes("oci-layout", layout_file_bytes())
    platform_images = [ArchiveImage(i.manifest, i.config, None, None) for i in images]
    _write_blob_dirs(w, _all_digests(platform_images))
    written: set[Digest] = set()
    for image in images:
        digest = image.manifest.config.digest
        if digest not in written:
            written.add(digest)
            w.add_bytes(blob_member(digest), image.config)
    holes: Holes = {}
    for image in images:
        _write_layers(w, image.manifest.layers, written, blob_file, holes)
    for image in images:
        digest = image.manifest.digest
        if digest not in written:
            written.add(digest)
            w.add_bytes(blob_member(digest), image.manifest.raw)

    entries = [
        named_descriptor(
            image.manifest.descriptor(image_platform(image.manifest, image.config)),
            image.ref_name,
            image.image_name,
        )
        for image in images
    ]
    w.add_bytes("index.json", index_json(_unique(entries)))
    w.add_bytes("manifest.json", docker_manifest_json(images))
    repositories = repositories_json(images)
    if repositories is not None:
        w.add_bytes("repositories", repositories)
    w.close()
    return holes


def docker_manifest_json(images: Sequence[ArchiveImage]) -> bytes:
    items: list[dict[str, Any]] = []
    for image in images:
        items.append(
            {
                "Config": blob_member(image.manifest.config.digest),
                "RepoTags": list(image.repo_tags),
                "Layers": [blob_member(layer.digest) for layer in image.manifest.layers],
            }
        )
    return json.dumps(items, separators=(",", ":")).encode()


def repositories_json(images: Sequence[ArchiveImage]) -> bytes | None:
    repos: dict[str, dict[str, str]] = {}
    for image in images:
        if not image.manifest.layers:
            continue
        top = image.manifest.layers[-1].digest.hex
        for repo_tag in image.repo_tags:
            split = split_repo_tag(repo_tag)
            if split is not None:
                repos.setdefault(split[0], {})[split[1]] = top
    if not repos:
        return None
    return json.dumps(repos, separators=(",", ":")).encode()
