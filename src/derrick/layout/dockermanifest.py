"""A docker-archive's ``manifest.json``: the images a ``docker save`` tarball holds, each
named by its RepoTags or its image ID.

Both the legacy layout (``<id>/layer.tar``, ``<id>.json``) and the newer one
(``blobs/sha256/<hex>``) name their files here.  An image saved by ID has
``"RepoTags": null``, read as no tags, as ``"Layers": null`` is read as no layers (Go
writes empty lists so).  Every path named must stay inside the archive and be there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from derrick.digest import Digest
from derrick.errors import DerrickError, LayoutError
from derrick.layout.members import normalize_path
from derrick.layout.ociindex import blob_member
from derrick.manifest import ImageManifest
from derrick.reference import Reference

__all__ = [
    "DOCKER_MANIFEST_FILE",
    "DockerArchiveEntry",
    "DockerManifest",
    "read_docker_manifest",
    "same_layers",
]

DOCKER_MANIFEST_FILE = "manifest.json"
#: Shortest image ID prefix (hex digits) that names a docker-archive image, as ``docker`` shows.
_SHORT_ID = 12
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class DockerArchiveEntry:
    """One image of a docker-archive's ``manifest.json``."""

    #: Archive path of the image config (e.g. ``<hex>.json`` or ``blobs/sha256/<hex>``).
    config_path: str
    #: ``name:tag`` references the image is saved under (may be empty).
    repo_tags: tuple[str, ...]
    #: Archive paths of the layer tarballs, base layer first.
    layer_paths: tuple[str, ...]


def read_docker_manifest(
    raw: bytes, path: Path, size_of: Callable[[str], int | None]
) -> list[DockerArchiveEntry]:
    """The entries of the ``manifest.json`` ``raw`` of the archive ``path``, each path it
    names checked to be in the archive (``size_of`` says which are)."""
    where = f"{path}: manifest.json"
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LayoutError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(obj, list):
        raise LayoutError(f"{where} must be a JSON list")
    return [_entry(item, f"{where}[{i}]", path, size_of) for i, item in enumerate(obj)]


def _entry(
    item: object, here: str, path: Path, size_of: Callable[[str], int | None]
) -> DockerArchiveEntry:
    if not isinstance(item, dict):
        raise LayoutError(f"{here} must be an object")
    config = item.get("Config")
    layers = item.get("Layers", ...)
    if layers is None:  # null lists are empty lists, as Go writes them
        layers = []
    tags = item.get("RepoTags")
    if tags is None:  # an image saved by ID
        tags = []
    if not isinstance(config, str):
        raise LayoutError(f"{here}: 'Config' must be a string")
    if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
        raise LayoutError(f"{here}: 'Layers' must be a list of strings")
    if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
        raise LayoutError(f"{here}: 'RepoTags' must be a list of strings")
    paths = []
    for p in [config, *layers]:
        norm = normalize_path(p)
        if norm is None:
            raise LayoutError(f"{path} is unsafe: {here} names {p!r}")
        if size_of(norm) is None:
            raise LayoutError(f"{here} names {p!r}, which is missing from the archive")
        paths.append(norm)
    return DockerArchiveEntry(paths[0], tuple(tags), tuple(paths[1:]))


class DockerManifest:
    """The images of the archive ``path`` as its ``manifest.json`` lists them; ``read``
    reads a (small) file of the archive, for the image IDs."""

    def __init__(
        self, entries: list[DockerArchiveEntry], read: Callable[[str], bytes], path: Path
    ) -> None:
        self.entries = entries
        self.path = path
        self._read = read
        self._image_ids: dict[str, Digest] = {}

    def names(self) -> list[str]:
        """Every RepoTag, each once, in order."""
        out: list[str] = []
        for e in self.entries:
            out.extend(t for t in e.repo_tags if t not in out)
        return out

    def image_id(self, entry: DockerArchiveEntry) -> Digest:
        """The image ID of an image: the digest of its config."""
        found = self._image_ids.get(entry.config_path)
        if found is None:
            found = self._image_ids[entry.config_path] = Digest.of(self._read(entry.config_path))
        return found

    def shown_names(self) -> list[str]:
        """Each image by its RepoTags, or by its short image ID if it has none."""
        out: list[str] = []
        for e in self.entries:
            shown = list(e.repo_tags) or [f"{self.image_id(e).hex[:_SHORT_ID]} (untagged)"]
            out.extend(n for n in shown if n not in out)
        return out

    def by_image_id(self, name: str) -> DockerArchiveEntry | None:
        """The image whose ID is ``name`` (``sha256:<hex>``, or 12 or more of its hex digits)."""
        hex_ = name.removeprefix("sha256:")
        if len(hex_) < _SHORT_ID or not set(hex_) <= _HEX:
            return None
        found: dict[Digest, DockerArchiveEntry] = {}
        for e in self.entries:
            image_id = self.image_id(e)
            if image_id.algorithm == "sha256" and image_id.hex.startswith(hex_):
                found.setdefault(image_id, e)
        if len(found) > 1:
            raise LayoutError(
                f"{name!r} is the start of {len(found)} image IDs in {self.path}",
                hint="give more of the image ID",
            )
        return next(iter(found.values()), None)

    def image(self, name: str | None = None) -> DockerArchiveEntry:
        """The image called ``name`` (or the only one if None): one of its RepoTags, or its
        image ID (``sha256:<hex>``, or at least the first 12 hex digits), which is how an
        untagged image is named."""
        entries = self.entries
        if name is None:
            if len(entries) == 1:
                return entries[0]
            if not entries:
                raise LayoutError(f"{self.path} holds no images")
            raise LayoutError(
                f"{self.path} holds {len(entries)} images; choose one with "
                f"{self.path}:NAME, NAME one of: " + ", ".join(self.shown_names())
            )
        for e in entries:
            if name in e.repo_tags:
                return e
        wanted = _normalized(name)
        if wanted is not None:  # app is app:latest; docker.io/library/app:1 is app:1
            for e in entries:
                if any(_normalized(t) == wanted for t in e.repo_tags):
                    return e
        by_id = self.by_image_id(name)
        if by_id is not None:
            return by_id
        raise LayoutError(
            f"no image tagged {name!r} in {self.path} "
            f"(it has: {', '.join(self.shown_names()) or 'none'})"
        )


def _normalized(name: str) -> str | None:
    """``name`` as a full image name with its tag (``latest`` when it has none), as Docker
    reads a RepoTag; None when it is no image name (or is a digest)."""
    try:
        ref = Reference.parse(name, default_tag="latest")
    except DerrickError:
        return None
    return None if ref.digest is not None else f"{ref.name}:{ref.tag}"


def same_layers(manifest: ImageManifest, entry: DockerArchiveEntry) -> bool:
    """Whether ``manifest`` lists the layers ``entry`` names, in the same order.

    A foreign layer (one with URLs) is stored by its diff ID, not its digest,
    so its path is not compared.
    """
    if len(manifest.layers) != len(entry.layer_paths):
        return False
    return all(
        d.urls or blob_member(d.digest) == path
        for d, path in zip(manifest.layers, entry.layer_paths, strict=True)
    )
