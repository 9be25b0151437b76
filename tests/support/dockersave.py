"""``docker save`` archives in every shape Docker has written, built by pure Python.

What each shape holds follows what moby's ``image/tarexport`` writes (and the issues
filed against it).  Every archive is a plain tar whose members come in the order Docker's
directory walk gives (sorted by name, directories first as ``name/``); JSON files written with
Go's ``json.Encoder`` (``manifest.json``, ``repositories``) are compact with one trailing
newline, those written with ``json.Marshal`` (``index.json``, OCI manifests) have none.
An image saved by ID (untagged) has ``"RepoTags": null``, never ``[]``.

``legacy`` (Docker 1.10 to 24)
    One directory per layer, named by its v1 ID (the sha256 of the layer's v1 JSON with its
    chain ID and parent's ID), holding ``VERSION`` (``1.0``), ``json`` (the v1 JSON) and
    ``layer.tar`` (the layer, uncompressed).  A layer whose content was already saved under
    another v1 ID is a symlink ``../<that id>/layer.tar``.  The config is
    ``<image id hex>.json``.  ``manifest.json`` lists ``{"Config", "RepoTags", "Layers"}`` per
    image; ``repositories`` maps each familiar name to ``{tag: <top layer's v1 ID>}`` and is
    only written when some image is tagged.  No ``oci-layout``, no ``index.json``.
``moby-25.0.0`` (Docker 25.0.0 and 25.0.1 with graph drivers)
    The archive is an OCI image layout too: ``oci-layout`` is
    ``{"imageLayoutVersion": "1.0.0"}`` and everything else lives in ``blobs/sha256/``: each
    layer uncompressed under its diff ID, each layer's v1 JSON under its own digest, the config
    under the image ID, and an OCI manifest whose config descriptor carries the platform and
    whose layers came out of a Go map, in no reliable order (moby#47150; reversed here).
    ``index.json`` has one entry per tag, annotated ``io.containerd.image.name`` (the full
    reference) and ``org.opencontainers.image.ref.name`` (the tag), with the platform; when
    nothing is tagged it says ``"manifests": null`` (moby#47210).  ``manifest.json`` names
    the config and layers by their ``blobs/sha256/`` paths; ``repositories`` maps names to
    the top layer's diff ID.
``moby-25.0.2`` (Docker 25.0.2 and later with graph drivers)
    As 25.0.0, but the OCI manifest lists the layers in order
    (``application/vnd.oci.image.layer.v1.tar``, digest = diff ID) and its config descriptor
    has no platform (so neither have the index entries); when no entry has been written yet,
    an untagged image gets one without annotations (a later untagged one does not:
    moby#51389).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from .images import ImageInfo, LayoutImage

Shape = Literal["legacy", "moby-25.0.0", "moby-25.0.2"]
SHAPES: tuple[Shape, ...] = ("legacy", "moby-25.0.0", "moby-25.0.2")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

#: Docker writes this text as is (note the space), not through a JSON encoder.
OCI_LAYOUT_FILE = b'{"imageLayoutVersion": "1.0.0"}'
#: The Created time Docker gives the v1 JSON of every layer but the top one.
EPOCH = "1970-01-01T00:00:00Z"
#: A zero ``container.Config`` as Go marshals it (the v1 JSON's ``container_config``).
ZERO_CONTAINER_CONFIG: dict[str, Any] = {
    "Hostname": "",
    "Domainname": "",
    "User": "",
    "AttachStdin": False,
    "AttachStdout": False,
    "AttachStderr": False,
    "Tty": False,
    "OpenStdin": False,
    "StdinOnce": False,
    "Env": None,
    "Cmd": None,
    "Image": "",
    "Volumes": None,
    "WorkingDir": "",
    "Entrypoint": None,
    "OnBuild": None,
    "Labels": None,
}
#: Fields of Docker's ``image.V1Image``, in the order Go marshals them.
V1_FIELDS = (
    "id",
    "parent",
    "comment",
    "created",
    "container",
    "container_config",
    "docker_version",
    "author",
    "config",
    "architecture",
    "variant",
    "os",
)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def go_json(obj: Any) -> bytes:
    """What Go's ``json.Marshal`` writes for ``obj`` (fields in the order given)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def go_encoder_json(obj: Any) -> bytes:
    """What Go's ``json.Encoder.Encode`` writes: ``json.Marshal`` and a newline."""
    return go_json(obj) + b"\n"


def full_name(repo_tag: str) -> str:
    """``app:v1`` -> ``docker.io/library/app:v1`` (a familiar RepoTag made a full reference)."""
    first, slash, _ = repo_tag.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return repo_tag
    return "docker.io/" + (repo_tag if slash else "library/" + repo_tag)


def split_repo_tag(repo_tag: str) -> tuple[str, str]:
    name, _, tag = repo_tag.rpartition(":")
    return name, tag


# -- the images ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedImage:
    """One image of a docker save archive."""

    config: bytes
    layers: tuple[bytes, ...]  #: the layer tars, uncompressed, base first
    repo_tags: tuple[str, ...] = ()  #: familiar ``name:tag`` RepoTags; () = saved by ID
    #: The OCI manifest the archive holds for the image (moby-25 shapes), as written.
    oci_manifest: bytes | None = None
    #: Whether ``index.json`` lists that manifest.
    indexed: bool = False

    @property
    def image_id(self) -> str:
        """The image ID: the sha256 of its config, e.g. ``sha256:4f1c…``."""
        return "sha256:" + sha256_hex(self.config)

    @property
    def diff_ids(self) -> list[str]:
        return ["sha256:" + sha256_hex(layer) for layer in self.layers]

    @property
    def config_json(self) -> dict[str, Any]:
        return json.loads(self.config)  # type: ignore[no-any-return]

    @property
    def tags(self) -> list[str]:
        return [split_repo_tag(t)[1] for t in self.repo_tags]


def saved_image(layout: LayoutImage, info: ImageInfo, *repo_tags: str) -> SavedImage:
    """A test image as Docker would hold it: its config as is and its layers uncompressed."""
    layers = []
    for layer in info.layers:
        raw = layout.blob_path(layer.digest).read_bytes()
        plain = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        assert "sha256:" + sha256_hex(plain) == layer.diff_id
        layers.append(plain)
    return SavedImage(info.config_bytes, tuple(layers), tuple(repo_tags))


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """Layer chain IDs: the first diff ID, then sha256("<parent chain> <diff id>")."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + sha256_hex(f"{out[-1]} {d}".encode()))
    return out


def v1_json(image: SavedImage, i: int, v1_id: str, parent: str | None) -> dict[str, Any]:
    """The v1 JSON of layer ``i``: the image's own fields for the top layer, else bare."""
    if i == len(image.layers) - 1:
        config = image.config_json
        fields = {k: config[k] for k in V1_FIELDS if k in config}
    else:
        fields = {"created": EPOCH, "container_config": dict(ZERO_CONTAINER_CONFIG)}
    fields["id"] = v1_id
    if parent:
        fields["parent"] = parent
    fields.setdefault("container_config", dict(ZERO_CONTAINER_CONFIG))
    fields["os"] = image.config_json.get("os", "linux")
    return {k: fields[k] for k in V1_FIELDS if k in fields}


def v1_ids(image: SavedImage) -> list[str]:
    """The v1 ID of each layer: sha256 of its v1 JSON (no id) plus layer_id and parent."""
    ids: list[str] = []
    for i, chain in enumerate(chain_ids(image.diff_ids)):
        parent = ids[-1] if ids else None
        body = v1_json(image, i, "", parent)
        body.pop("id", None)
        body.pop("parent", None)
        body["layer_id"] = chain
        if parent:
            body["parent"] = "sha256:" + parent
        ids.append(sha256_hex(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()))
    return ids


# -- the archive -----------------------------------------------------------------------------


@dataclass
class DockerSave:
    """What a writer produced."""

    path: Path
    shape: Shape
    images: list[SavedImage]
    #: Every member of the archive by name (symlinks as ``-> target``), for inspection.
    members: list[str]

    def manifest_json(self) -> list[dict[str, Any]]:
        with tarfile.open(self.path) as tar:
            f = tar.extractfile("manifest.json")
            assert f is not None
            return json.loads(f.read())  # type: ignore[no-any-return]


class _Tree:
    """Files of the archive being built, written sorted by name like Docker's directory walk."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.mtimes: dict[str, int] = {}

    def add(self, name: str, data: bytes, mtime: int = 0) -> None:
        self.files[name] = data
        self.mtimes[name] = mtime

    def link(self, name: str, target: str) -> None:
        self.links[name] = target

    def write(self, path: Path) -> list[str]:
        names = set(self.files) | set(self.links)
        dirs = {"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)}
        members: list[str] = []
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name in sorted(names | dirs, key=lambda n: n.split("/")):
                if name in dirs:
                    info = tarfile.TarInfo(name + "/")
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
                    members.append(name + "/")
                elif name in self.links:
                    info = tarfile.TarInfo(name)
                    info.type = tarfile.SYMTYPE
                    info.linkname = self.links[name]
                    info.mode = 0o777
                    tar.addfile(info)
                    members.append(f"{name} -> {self.links[name]}")
                else:
                    data = self.files[name]
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    info.mode = 0o644
                    info.mtime = self.mtimes[name]
                    tar.addfile(info, io.BytesIO(data))
                    members.append(name)
        return members


def _created(image: SavedImage) -> int:
    """The image's creation time, which Docker gives the files it saves for it."""
    created = image.config_json.get("created")
    return int(datetime.fromisoformat(created).timestamp()) if created else 0


def write_legacy(path: Path, images: Sequence[SavedImage]) -> DockerSave:
    """The docker save format of Docker 1.10 to 24 (see the module docstring)."""
    tree = _Tree()
    manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    saved: set[str] = set()
    layer_paths: dict[str, str] = {}  # diff ID -> the first <id>/layer.tar holding it
    for image in images:
        ids = v1_ids(image)
        for i, (v1_id, diff_id) in enumerate(zip(ids, image.diff_ids, strict=True)):
            if v1_id in saved:
                continue
            saved.add(v1_id)
            parent = ids[i - 1] if i else None
            tree.add(f"{v1_id}/VERSION", b"1.0")
            tree.add(f"{v1_id}/json", go_json(v1_json(image, i, v1_id, parent)))
            if diff_id in layer_paths:
                tree.link(f"{v1_id}/layer.tar", f"../{layer_paths[diff_id]}")
            else:
                tree.add(f"{v1_id}/layer.tar", image.layers[i], _created(image))
                layer_paths[diff_id] = f"{v1_id}/layer.tar"
        config_name = image.image_id.split(":", 1)[1] + ".json"
        tree.add(config_name, image.config, _created(image))
        for repo_tag in image.repo_tags:
            name, tag = split_repo_tag(repo_tag)
            repositories.setdefault(name, {})[tag] = ids[-1]
        manifest.append(
            {
                "Config": config_name,
                "RepoTags": list(image.repo_tags) or None,
                "Layers": [f"{i}/layer.tar" for i in ids],
            }
        )
    tree.add("manifest.json", go_encoder_json(manifest))
    if repositories:
        tree.add("repositories", go_encoder_json(repositories))
    return DockerSave(path, "legacy", list(images), tree.write(path))


def _platform(image: SavedImage) -> dict[str, str]:
    cfg = image.config_json
    out = {"architecture": cfg["architecture"], "os": cfg["os"]}
    if cfg.get("variant"):
        out["variant"] = cfg["variant"]
    return out


def write_moby25(
    path: Path, images: Sequence[SavedImage], release: Literal["25.0.0", "25.0.2"]
) -> DockerSave:
    """The docker save format of Docker 25 with graph drivers (see the module docstring)."""
    tree = _Tree()
    manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    entries: list[dict[str, Any]] = []
    done: list[SavedImage] = []
    for image in images:
        ids = v1_ids(image)
        for i, (v1_id, diff_id) in enumerate(zip(ids, image.diff_ids, strict=True)):
            body = go_json(v1_json(image, i, v1_id, ids[i - 1] if i else None))
            tree.add(f"blobs/sha256/{sha256_hex(body)}", body, _created(image))
            tree.add(f"blobs/sha256/{diff_id.split(':', 1)[1]}", image.layers[i], _created(image))
        tree.add(f"blobs/sha256/{sha256_hex(image.config)}", image.config, _created(image))
        config_desc: dict[str, Any] = {
            "mediaType": OCI_CONFIG,
            "digest": image.image_id,
            "size": len(image.config),
        }
        layer_descs = [
            {"mediaType": OCI_LAYER, "digest": d, "size": len(data)}
            for d, data in zip(image.diff_ids, image.layers, strict=True)
        ]
        if release == "25.0.0":
            config_desc["platform"] = _platform(image)
            layer_descs.reverse()  # a Go map's order: anything but reliable
        oci = go_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config_desc,
                "layers": layer_descs,
            }
        )
        tree.add(f"blobs/sha256/{sha256_hex(oci)}", oci)
        untagged: dict[str, Any] = {
            "mediaType": OCI_MANIFEST,
            "digest": "sha256:" + sha256_hex(oci),
            "size": len(oci),
        }
        listed = bool(image.repo_tags)
        for repo_tag in image.repo_tags:
            name, tag = split_repo_tag(repo_tag)
            repositories.setdefault(name, {})[tag] = image.diff_ids[-1].split(":", 1)[1]
            entry = dict(untagged)
            entry["annotations"] = {ANNOTATION_IMAGE_NAME: full_name(repo_tag)}
            entry["annotations"][ANNOTATION_REF_NAME] = tag
            if "platform" in config_desc:
                entry["platform"] = config_desc["platform"]
            entries.append(entry)
        if release == "25.0.2" and not entries:
            entries.append(untagged)
            listed = True
        manifest.append(
            {
                "Config": f"blobs/sha256/{sha256_hex(image.config)}",
                "RepoTags": list(image.repo_tags) or None,
                "Layers": [f"blobs/sha256/{d.split(':', 1)[1]}" for d in image.diff_ids],
            }
        )
        done.append(replace(image, oci_manifest=oci, indexed=listed))
    tree.add("manifest.json", go_encoder_json(manifest))
    if repositories:
        tree.add("repositories", go_encoder_json(repositories))
    tree.add("oci-layout", OCI_LAYOUT_FILE)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries or None}
    tree.add("index.json", go_json(index))
    shape: Shape = "moby-25.0.0" if release == "25.0.0" else "moby-25.0.2"
    return DockerSave(path, shape, done, tree.write(path))


def write_docker_save(path: Path, shape: Shape, images: Sequence[SavedImage]) -> DockerSave:
    """Write ``images`` as ``docker save`` of the given shape would."""
    if shape == "legacy":
        return write_legacy(path, images)
    return write_moby25(path, images, "25.0.0" if shape == "moby-25.0.0" else "25.0.2")
