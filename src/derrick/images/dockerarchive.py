"""``docker save`` tarballs as an image source and sink.

As a source (:class:`DockerArchiveSource`), every shape Docker has written is read (see
:mod:`derrick.layout.reader`, which indexes the archive once and refuses unsafe members):

* legacy (``<id>/layer.tar``, ``<image id>.json``): there is no registry manifest, so the
  source writes one -- a Docker schema 2 manifest of the config as it is and each layer
  as stored (``application/vnd.docker.image.rootfs.diff.tar`` for a plain tar), the digests
  computed by hashing the files (several at once) -- and serves it and its blobs like any
  other.  The config must list as many layers as ``manifest.json`` does, each plain tar
  layer must be the one its config names (its digest is its diff ID), and a file named by
  its digest (``blobs/sha256/<hex>``, ``<hex>.json``) must hash to it;
* Docker 25 and later (an OCI layout inside): an image's OCI manifest is served when it
  agrees with ``manifest.json`` (same config, same layers in the same order; Docker 25.0.0
  listed them in random order), else one is written as for a legacy image.

An image is chosen by one of its RepoTags, by its image ID (``sha256:<hex>`` or 12 or more
of its hex digits: how an untagged image is named), or by a name of ``index.json``; the
only one needs no name.  ``"RepoTags": null`` (saved by ID) and ``"manifests": null``
(Docker 25.0.0) read as empty lists.

As a sink (:class:`DockerArchiveSink`), one or several images go into one tar, as
``docker save a b`` writes them: ``manifest.json`` with an entry per image (``RepoTags``
from the names the copy gives it), ``repositories``, the configs and layers (stored as the
source serves them; loaders detect the compression) under ``blobs/sha256/``, and -- so the
tar is a valid OCI layout too, as newer Docker writes -- ``oci-layout``, ``index.json`` and
the manifests.  A docker-archive holds one platform per image and container images only:
an index of several platforms or an artifact is refused before anything is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from derrick import mediatypes as mt
from derrick.digest import Digest, hash_file
from derrick.errors import DerrickError, LayoutError, ManifestError, Remedy, UsageError
from derrick.images.archive import ArchiveSink, Member
from derrick.images.model import ImageName, Plan, PlannedEntry
from derrick.images.ociarchive import OCIArchiveSource, oci_members
from derrick.images.plan import FOREIGN_LAYERS
from derrick.images.tarsource import TarSource, image_name_of
from derrick.layout.archive import (
    ArchiveImage,
    check_docker_image,
    docker_manifest_json,
    repositories_json,
)
from derrick.layout.dockermanifest import DOCKER_MANIFEST_FILE, DockerArchiveEntry
from derrick.layout.reader import ImageSource as Archive
from derrick.layout.reader import open_image_source
from derrick.manifest import Descriptor, ImageConfig
from derrick.platform import require_image
from derrick.reference import Reference

__all__ = [
    "DockerArchiveSink",
    "DockerArchiveSource",
    "LegacyImage",
    "docker_manifest_for",
    "open_archive",
    "read_legacy",
    "repo_tag",
]

DEFAULT_JOBS = 4
_READ_SIZE = 1 << 20
#: docker-archive paths that name their content's sha256: ``blobs/sha256/<hex>``, ``<hex>.json``.
_NAMED_BY_DIGEST = re.compile(r"^(?:blobs/sha256/([0-9a-f]{64})|([0-9a-f]{64})\.json)$")


# -- reading an image from manifest.json alone -------------------------------------------------


@dataclass(frozen=True)
class LegacyImage:
    """A docker-archive image read from ``manifest.json``, with the manifest written for it."""

    manifest: bytes  # Docker schema 2, compact JSON
    config: bytes
    config_desc: Descriptor
    #: Each layer and the file of the archive that holds it, base layer first.
    layers: tuple[tuple[Descriptor, str], ...]

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(mt.DOCKER_MANIFEST, Digest.of(self.manifest), len(self.manifest))


def docker_manifest_for(config: bytes, layers: Sequence[Descriptor]) -> bytes:
    """The Docker schema 2 manifest of a config and its layers (compact JSON)."""
    obj = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {
            "mediaType": mt.DOCKER_CONFIG,
            "size": len(config),
            "digest": str(Digest.of(config)),
        },
        "layers": [
            {"mediaType": d.media_type, "size": d.size, "digest": str(d.digest)} for d in layers
        ],
    }
    return json.dumps(obj, separators=(",", ":")).encode()


def _layer_media_type(archive: Archive, path: str) -> str:
    with archive.open_file(path) as f:
        head = f.read(4)
    if head.startswith(b"\x1f\x8b"):
        return mt.DOCKER_LAYER_GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return mt.DOCKER_LAYER_ZSTD
    return mt.DOCKER_LAYER


def _hash_path(archive: Archive, path: str) -> tuple[Digest, int]:
    with archive.open_file(path) as f:
        return hash_file(f, chunk=_READ_SIZE)


def _check_named(archive: Archive, path: str, digest: Digest) -> None:
    """A file named by its digest must have that digest."""
    m = _NAMED_BY_DIGEST.match(path)
    named = (m.group(1) or m.group(2)) if m else None
    if named is not None and (digest.algorithm != "sha256" or digest.hex != named):
        raise LayoutError(
            f"{path} in {archive.description} does not match its name: its content is {digest}",
            hint="the archive is damaged; save the image again",
        )


def read_legacy(archive: Archive, entry: DockerArchiveEntry, jobs: int = 1) -> LegacyImage:
    """The image ``entry`` of ``manifest.json`` names, its layers hashed ``jobs`` at a time,
    checked against its config (see the module docstring)."""
    config = archive.read_file(entry.config_path)
    config_desc = Descriptor(mt.DOCKER_CONFIG, Digest.of(config), len(config))
    _check_named(archive, entry.config_path, config_desc.digest)
    where = f"the image {entry.config_path} of {archive.description}"
    try:
        diff_ids = ImageConfig.parse(config).diff_ids
    except ManifestError as e:
        raise LayoutError(f"{where}: {e.message}") from None
    if len(diff_ids) != len(entry.layer_paths):
        raise LayoutError(
            f"{where} has {len(entry.layer_paths)} layers in manifest.json but its config "
            f"lists {len(diff_ids)} (rootfs.diff_ids)",
            hint="the archive is damaged; save the image again",
        )
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="derrick-hash") as pool:
        hashed = list(pool.map(lambda p: _hash_path(archive, p), entry.layer_paths))
    layers: list[tuple[Descriptor, str]] = []
    for i, (path, (digest, size)) in enumerate(zip(entry.layer_paths, hashed, strict=True)):
        _check_named(archive, path, digest)
        desc = Descriptor(_layer_media_type(archive, path), digest, size)
        if desc.media_type == mt.DOCKER_LAYER and digest != diff_ids[i]:
            raise LayoutError(
                f"layer {path} of {where} is {digest}, but its config names {diff_ids[i]} "
                f"(rootfs.diff_ids[{i}])",
                hint="the archive is damaged; save the image again",
            )
        layers.append((desc, path))
    manifest = docker_manifest_for(config, [d for d, _ in layers])
    return LegacyImage(manifest, config, config_desc, tuple(layers))


# -- the source --------------------------------------------------------------------------------


class DockerArchiveSource(TarSource):
    """The images of a ``docker save`` tarball (open it with :func:`open_archive`);
    ``jobs`` layers of a legacy image are hashed at once."""

    def __init__(self, archive: Archive, *, jobs: int = DEFAULT_JOBS) -> None:
        super().__init__(archive)
        self.jobs = jobs
        self._legacy: dict[str, Descriptor] = {}  # by config path

    def resolve(self, name: str | None = None) -> Descriptor:
        selected = self.select(name)
        if selected.desc is not None:
            return selected.desc
        if selected.docker is None:  # pragma: no cover - select() always finds one
            raise LayoutError(f"no image named {name!r} in {self.description}")
        return self._read_legacy(selected.docker)

    def _read_legacy(self, entry: DockerArchiveEntry) -> Descriptor:
        desc = self._legacy.get(entry.config_path)
        if desc is None:
            image = read_legacy(self.archive, entry, self.jobs)
            desc = image.descriptor
            self._made[desc.digest] = image.manifest
            for d, path in [(image.config_desc, entry.config_path), *image.layers]:
                self._paths.setdefault(d.digest, path)
            self._legacy[entry.config_path] = desc
        return desc

    def image_name(self, name: str | None = None) -> ImageName:
        selected = self.select(name)
        if selected.docker is None:
            return self._entry_name(selected.desc) if selected.desc else ImageName()
        tags = selected.docker.repo_tags
        chosen = (name,) if name in tags else tags
        return image_name_of(chosen[0]) if len(chosen) == 1 else ImageName()


def open_archive(path: str | Path, *, jobs: int = DEFAULT_JOBS) -> TarSource:
    """The OCI archive or docker-archive at ``path`` as an image source (see
    :func:`derrick.layout.reader.open_image_source`: what it holds decides which)."""
    archive = open_image_source(path)
    if archive.kind == "docker-archive":
        return DockerArchiveSource(archive, jobs=jobs)
    if archive.kind == "oci-archive":
        return OCIArchiveSource(archive)
    archive.close()
    raise LayoutError(
        f"{path} is a directory, not an archive",
        hint="an OCI archive or a docker-archive is one tar file",
    )


# -- the sink ----------------------------------------------------------------------------------


def repo_tag(name: ImageName, digest: Digest | None = None) -> str | None:
    """The ``RepoTags`` entry of a name (``app:v1``, as Docker shows it); an image named by
    ``digest`` alone gets the tag ``sha256-<12 hex digits>`` (a RepoTag has no digest)."""
    if not name.repository:
        return None
    tag = name.tag
    if tag is None:
        if digest is None:
            return None
        tag = f"{digest.algorithm}-{digest.hex[:12]}"
    try:
        familiar = Reference.parse(name.repository, default_tag=None).familiar_name
    except DerrickError:
        familiar = name.repository
    return f"{familiar}:{tag}"


def _docker_image(entry: PlannedEntry) -> ArchiveImage:
    """The image of ``entry`` as a docker-archive holds it; refuse what it cannot hold."""
    what = next((str(n) for n in entry.names if str(n)), str(entry.top.digest))
    if entry.index is not None or len(entry.images) != 1:
        raise UsageError(
            f"{what} is an index of {len(entry.images)} images, and a docker-archive holds "
            "one platform per image",
            hint="choose one platform",
            remedy=Remedy("oci-archive"),
        )
    image = entry.images[0]
    require_image(what, image.manifest, "a docker-archive holds container images only")
    check_docker_image(what, image.manifest, image.config)
    for d in image.manifest.layers:
        if d.urls and d.media_type in FOREIGN_LAYERS:
            raise LayoutError(
                f"{what} has a foreign layer {d.digest}, which clients fetch from its URLs "
                "and a docker-archive cannot hold",
                remedy=Remedy("oci-archive"),
            )
    named = (entry.origin or entry.top).digest
    tags = tuple(dict.fromkeys(t for n in entry.names if (t := repo_tag(n, named)) is not None))
    return ArchiveImage(image.manifest, image.config, None, None, tags)


def docker_members(plan: Plan) -> list[Member]:
    """The members of the docker-archive of ``plan``, in order: those of its OCI archive,
    then ``manifest.json`` (one entry per image, with every name it was given) and
    ``repositories``."""
    by_top: dict[Digest, ArchiveImage] = {}
    for entry in plan.entries:
        image = _docker_image(entry)
        have = by_top.get(entry.top.digest)
        if have is not None:
            image = replace(have, repo_tags=tuple(dict.fromkeys(have.repo_tags + image.repo_tags)))
        by_top[entry.top.digest] = image
    images = list(by_top.values())
    repositories = repositories_json(images)
    return [
        *oci_members(plan),
        Member(DOCKER_MANIFEST_FILE, docker_manifest_json(images)),
        *([Member("repositories", repositories)] if repositories is not None else []),
    ]


class DockerArchiveSink(ArchiveSink):
    """A docker-archive of one or several images, written to a file or a stream (see
    :class:`~derrick.images.archive.ArchiveSink`)."""

    kind = "docker-archive"

    def members(self, plan: Plan) -> list[Member]:
        return docker_members(plan)
