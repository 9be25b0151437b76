"""Deterministic test images, written as OCI image layouts by pure Python.

A layout directory holds ``oci-layout``, ``index.json`` and ``blobs/sha256/<hex>``; its
``index.json`` has one entry, annotated ``org.opencontainers.image.ref.name: <tag>``.
Layer tars use fixed mtimes/owners and gzip with ``mtime=0``, configs use fixed timestamps, so
running a generator twice produces byte-identical blobs and identical digests.

Images (see :func:`generate_all`; each call returns a :class:`LayoutImage`):

``single``
    OCI manifest, linux/amd64, one gzip layer (``etc/hostname``, ``etc/os-release``,
    ``bin/hello`` 0755, ``usr/share/single/README``).
``multi``
    OCI index with linux/amd64 and linux/arm64/v8 children.  Each child has two gzip layers: a
    base layer shared by both platforms (same digest) and a per-platform layer (``etc/arch``).
``eight``
    OCI manifest, linux/amd64, eight gzip layers exercising a whiteout, an opaque directory, a
    hardlink, symlinks, an empty layer (1024 zero bytes, the canonical empty tar), file modes
    (setuid, sticky, read-only), ownership, a long and a non-ASCII file name.  Its config history
    has one ``empty_layer: true`` entry. :attr:`ImageInfo.expected_rootfs` is the hand-written
    final filesystem after applying all layers.
``docker``
    like ``single`` but with Docker schema2 media types (manifest, config, layers).
``dockerlist``
    Docker manifest list with linux/amd64 and linux/arm/v7 schema2 children.

:func:`make_big_image` streams a large image of incompressible layers straight to disk.
:func:`push_with_skopeo` copies a layout into a :class:`~support.registry.RegistryProcess`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .rawclient import RawClient
from .registry import RegistryProcess

OCI_LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
DOCKER_TYPES = frozenset({DOCKER_MANIFEST, DOCKER_MANIFEST_LIST})

#: 2024-01-01T00:00:00Z, used for every tar member mtime and config timestamp.
FIXED_MTIME = 1704067200
FIXED_CREATED = "2024-01-01T00:00:00Z"
DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
#: The canonical empty layer: an end-of-archive marker only (two zero blocks).
EMPTY_TAR = b"\0" * 1024
EMPTY_TAR_DIFF_ID = "sha256:" + hashlib.sha256(EMPTY_TAR).hexdigest()

MiB = 1024 * 1024


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# -- data model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] | None = None

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out


@dataclass(frozen=True)
class Layer:
    descriptor: Descriptor  #: the blob as stored (compressed for gzip layers)
    diff_id: str  #: sha256 of the uncompressed tar
    uncompressed_size: int

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def size(self) -> int:
        return self.descriptor.size


@dataclass(frozen=True)
class Expected:
    """One path of an expected root filesystem (``mode`` is the permission bits incl. suid etc)."""

    kind: Literal["file", "dir", "symlink", "hardlink"]
    mode: int | None = None
    content: bytes | None = None  #: file content (also for hardlinks: the target's content)
    target: str | None = None  #: symlink target, or the path a hardlink points to
    uid: int = 0
    gid: int = 0


@dataclass
class ImageInfo:
    """One image manifest (a whole image, or one platform child of an index)."""

    manifest: Descriptor
    manifest_bytes: bytes
    config: Descriptor
    config_bytes: bytes
    layers: list[Layer]
    platform: Platform
    #: Final root filesystem after applying all layers (None for generated big images).
    expected_rootfs: dict[str, Expected] | None = None

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def media_type(self) -> str:
        return self.manifest.media_type

    @property
    def layer_digests(self) -> list[str]:
        return [layer.digest for layer in self.layers]

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    @property
    def blob_digests(self) -> list[str]:
        return [self.config.digest, *self.layer_digests]

    @property
    def manifest_json(self) -> dict[str, Any]:
        return json.loads(self.manifest_bytes)  # type: ignore[no-any-return]

    @property
    def config_json(self) -> dict[str, Any]:
        return json.loads(self.config_bytes)  # type: ignore[no-any-return]


@dataclass
class LayoutImage:
    """What a generator wrote: an OCI layout with one tagged image or index."""

    name: str
    path: Path  #: the layout directory (holds oci-layout, index.json, blobs/)
    tag: str  #: the ref.name annotation in index.json
    top: Descriptor  #: descriptor of the tagged manifest or index
    top_bytes: bytes
    images: list[ImageInfo] = field(default_factory=list)  #: the manifest, or index children

    @property
    def digest(self) -> str:
        """Digest of the tagged manifest/index (what a registry reports for the tag)."""
        return self.top.digest

    @property
    def media_type(self) -> str:
        return self.top.media_type

    @property
    def is_index(self) -> bool:
        return self.top.media_type in INDEX_TYPES

    @property
    def platforms(self) -> list[str]:
        return [str(i.platform) for i in self.images]

    @property
    def manifest_digests(self) -> list[str]:
        """Digests of the image manifests (the index children, or the single manifest)."""
        return [i.digest for i in self.images]

    @property
    def layer_digests(self) -> list[str]:
        """Unique layer digests over all images, in first-seen order."""
        return list(dict.fromkeys(d for i in self.images for d in i.layer_digests))

    @property
    def blob_digests(self) -> list[str]:
        return list(dict.fromkeys(d for i in self.images for d in i.blob_digests))

    @property
    def image(self) -> ImageInfo:
        """The only image of a non-index layout."""
        if len(self.images) != 1:
            raise ValueError(f"{self.name} has {len(self.images)} images; use image_for()")
        return self.images[0]

    def image_for(self, platform: str) -> ImageInfo:
        for img in self.images:
            if str(img.platform) == platform:
                return img
        raise KeyError(platform)

    def blob_path(self, digest: str) -> Path:
        algo, hex_ = digest.split(":", 1)
        return self.path / "blobs" / algo / hex_

    def ref(self) -> str:
        """``oci:DIR:TAG`` reference for tools that read OCI layouts."""
        return f"oci:{self.path}:{self.tag}"


# -- tar building ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A tar member to write. ``kind`` is one of file/dir/symlink/hardlink."""

    path: str
    kind: Literal["file", "dir", "symlink", "hardlink"] = "file"
    content: bytes = b""
    mode: int = 0o644
    target: str = ""
    uid: int = 0
    gid: int = 0


def file(path: str, content: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    data = content.encode() if isinstance(content, str) else content
    return Entry(path, "file", data, mode, uid=uid, gid=gid)


def directory(path: str, mode: int = 0o755) -> Entry:
    return Entry(path.rstrip("/"), "dir", mode=mode)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, "symlink", mode=0o777, target=target)


def hardlink(path: str, target: str) -> Entry:
    return Entry(path, "hardlink", target=target)


def whiteout(path: str) -> Entry:
    """A whiteout deleting ``path`` (``dir/.wh.name``)."""
    head, _, name = path.rpartition("/")
    return Entry((head + "/" if head else "") + ".wh." + name, "file", mode=0o644)


def opaque(dir_path: str) -> Entry:
    """The opaque-directory marker for ``dir_path`` (``dir/.wh..wh..opq``)."""
    return Entry(dir_path.rstrip("/") + "/.wh..wh..opq", "file", mode=0o644)


def _tarinfo(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path + ("/" if entry.kind == "dir" else ""))
    info.mtime = FIXED_MTIME
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    if entry.kind == "file":
        info.type = tarfile.REGTYPE
        info.size = len(entry.content)
    elif entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
    else:
        info.type = tarfile.LNKTYPE
        info.linkname = entry.target
    return info


def build_tar(entries: Iterable[Entry]) -> bytes:
    """A deterministic PAX tar of ``entries`` (in the given order). No entries => EMPTY_TAR."""
    entries = list(entries)
    if not entries:
        return EMPTY_TAR
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = _tarinfo(entry)
            tar.addfile(info, io.BytesIO(entry.content) if entry.kind == "file" else None)
    return buf.getvalue()


def gzip_bytes(data: bytes, level: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """Prefix each entry with directory entries for parents not yet emitted."""
    seen: set[str] = set()
    out: list[Entry] = []
    for entry in entries:
        parts = entry.path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in seen:
                seen.add(parent)
                out.append(directory(parent))
        if entry.kind == "dir":
            if entry.path in seen:
                # replace the auto-generated parent with the explicit one (mode may differ)
                out = [e for e in out if not (e.kind == "dir" and e.path == entry.path)]
            seen.add(entry.path)
        out.append(entry)
    return out


def rootfs_of(entries: Iterable[Entry]) -> dict[str, Expected]:
    """Expected filesystem for one layer without whiteouts (simple images)."""
    out: dict[str, Expected] = {}
    for e in entries:
        if e.kind == "file":
            out[e.path] = Expected("file", e.mode, e.content, uid=e.uid, gid=e.gid)
        elif e.kind == "dir":
            out[e.path] = Expected("dir", e.mode)
        elif e.kind == "symlink":
            out[e.path] = Expected("symlink", target=e.target)
        else:
            out[e.path] = Expected("hardlink", content=out[e.target].content, target=e.target)
    return out


# -- layout writing --------------------------------------------------------------------------


class LayoutWriter:
    """Writes blobs and index.json of one OCI image layout."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists():
            shutil.rmtree(path)
        (path / "blobs" / "sha256").mkdir(parents=True)
        (path / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))

    def blob(self, data: bytes, media_type: str) -> Descriptor:
        digest = sha256_digest(data)
        target = self.path / "blobs" / "sha256" / digest.split(":", 1)[1]
        if not target.exists():
            target.write_bytes(data)
        return Descriptor(media_type, digest, len(data))

    def json_blob(self, obj: Any, media_type: str) -> tuple[Descriptor, bytes]:
        data = canonical_json(obj)
        return self.blob(data, media_type), data

    def layer(self, entries: Iterable[Entry], media_type: str = OCI_LAYER_GZIP) -> Layer:
        tar = build_tar(entries)
        data = gzip_bytes(tar) if media_type.endswith("gzip") else tar
        return Layer(self.blob(data, media_type), sha256_digest(tar), len(tar))

    def image(
        self,
        layers: list[Layer],
        platform: Platform,
        *,
        docker: bool = False,
        history: list[dict[str, Any]] | None = None,
        labels: dict[str, str] | None = None,
        cmd: list[str] | None = None,
        expected_rootfs: dict[str, Expected] | None = None,
    ) -> ImageInfo:
        config: dict[str, Any] = {
            "created": FIXED_CREATED,
            "author": "derrick tests",
            "architecture": platform.architecture,
            "os": platform.os,
        }
        if platform.variant:
            config["variant"] = platform.variant
        config["config"] = {
            "Env": list(DEFAULT_ENV),
            "Cmd": cmd or ["/bin/sh"],
            "WorkingDir": "/",
            "Labels": labels or {},
        }
        config["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
        config["history"] = history or [
            {"created": FIXED_CREATED, "created_by": f"derrick-tests: layer {i}"}
            for i in range(len(layers))
        ]
        config_desc, config_bytes = self.json_blob(config, DOCKER_CONFIG if docker else OCI_CONFIG)
        manifest_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        manifest = {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config_desc.to_json(),
            "layers": [layer.descriptor.to_json() for layer in layers],
        }
        desc, manifest_bytes = self.json_blob(manifest, manifest_type)
        return ImageInfo(
            manifest=Descriptor(manifest_type, desc.digest, desc.size, platform),
            manifest_bytes=manifest_bytes,
            config=config_desc,
            config_bytes=config_bytes,
            layers=layers,
            platform=platform,
            expected_rootfs=expected_rootfs,
        )

    def index(self, images: list[ImageInfo], *, docker: bool = False) -> tuple[Descriptor, bytes]:
        media_type = DOCKER_MANIFEST_LIST if docker else OCI_INDEX
        obj = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [img.manifest.to_json() for img in images],
        }
        return self.json_blob(obj, media_type)

    def finish(
        self, name: str, tag: str, top: Descriptor, top_bytes: bytes, images: list[ImageInfo]
    ) -> LayoutImage:
        entry = Descriptor(top.media_type, top.digest, top.size, annotations={REF_NAME: tag})
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry.to_json()]}
        (self.path / "index.json").write_bytes(canonical_json(index))
        return LayoutImage(name, self.path, tag, top, top_bytes, images)


# -- the images ------------------------------------------------------------------------------

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
ARMV7 = Platform("linux", "arm", "v7")


def _simple_entries(name: str, arch: str) -> list[Entry]:
    return with_parents(
        [
            file("etc/hostname", f"{name}\n"),
            file("etc/os-release", f'ID=derrick-test\nNAME="{name}"\nARCH={arch}\n'),
            file("bin/hello", f"#!/bin/sh\necho hello from {name} on {arch}\n", 0o755),
            file("usr/share/" + name + "/README", f"test image {name}\n" * 20),
        ]
    )


def _single_like(
    path: Path, name: str, tag: str, *, docker: bool, platform: Platform = AMD64
) -> LayoutImage:
    w = LayoutWriter(path)
    entries = _simple_entries(name, platform.architecture)
    layer = w.layer(entries, DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP)
    img = w.image(
        [layer],
        platform,
        docker=docker,
        labels={"org.example.image": name},
        cmd=["/bin/hello"],
        expected_rootfs=rootfs_of(entries),
    )
    return w.finish(name, tag, img.manifest, img.manifest_bytes, [img])


def make_single(path: Path, tag: str = "v1") -> LayoutImage:
    return _single_like(path, "single", tag, docker=False)


def make_docker(path: Path, tag: str = "v1") -> LayoutImage:
    return _single_like(path, "docker", tag, docker=True)


def _multi_like(
    path: Path, name: str, tag: str, platforms: list[Platform], *, docker: bool
) -> LayoutImage:
    w = LayoutWriter(path)
    layer_type = DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP
    base_entries = with_parents(
        [file("etc/hostname", f"{name}\n"), file("usr/share/common/data.txt", "shared\n" * 50)]
    )
    base = w.layer(base_entries, layer_type)
    images = []
    for plat in platforms:
        plat_entries = with_parents(
            [
                file("etc/arch", f"{plat}\n"),
                file("bin/hello", f"#!/bin/sh\necho {name} on {plat}\n", 0o755),
            ]
        )
        layer = w.layer(plat_entries, layer_type)
        expected = rootfs_of(base_entries)
        expected.update(rootfs_of(plat_entries))
        images.append(
            w.image(
                [base, layer],
                plat,
                docker=docker,
                labels={"org.example.image": name, "org.example.platform": str(plat)},
                expected_rootfs=expected,
            )
        )
    top, top_bytes = w.index(images, docker=docker)
    return w.finish(name, tag, top, top_bytes, images)


def make_multi(path: Path, tag: str = "v1") -> LayoutImage:
    return _multi_like(path, "multi", tag, [AMD64, ARM64], docker=False)


def make_dockerlist(path: Path, tag: str = "v1") -> LayoutImage:
    return _multi_like(path, "dockerlist", tag, [AMD64, ARMV7], docker=True)


LONG_NAME = "data/" + "long-directory-name-" * 4 + "/" + "a-file-name-longer-than-100-" * 3
UNICODE_NAME = "data/ünïcødé-ファイル.txt"


def make_eight(path: Path, tag: str = "v1") -> LayoutImage:
    """Eight layers; see the module docstring.  The expected rootfs is written out by hand."""
    w = LayoutWriter(path)
    layer_entries: list[list[Entry]] = [
        # 1: base files
        with_parents(
            [
                file("etc/hostname", "eight\n"),
                file("bin/tool", "#!/bin/sh\necho tool\n", 0o755),
                file("data/secret", "secret\n", 0o600),
                file("data/removed.txt", "to be removed\n"),
                file("opq/old-a", "a\n"),
                file("opq/sub/old-b", "b\n"),
            ]
        ),
        # 2: an empty layer (no members at all)
        [],
        # 3: whiteout of data/removed.txt, plus a new file in the same directory
        [directory("data"), whiteout("data/removed.txt"), file("data/new.txt", "new\n")],
        # 4: opaque directory: everything below opq/ from lower layers disappears
        [directory("opq"), opaque("opq"), file("opq/new-d", "d\n")],
        # 5: a hardlink (target first, in the same layer)
        with_parents(
            [
                file("usr/share/doc/original.txt", "hardlink target\n"),
                hardlink("usr/share/doc/link.txt", "usr/share/doc/original.txt"),
            ]
        ),
        # 6: symlinks (relative and absolute)
        with_parents(
            [
                symlink("usr/bin/tool-link", "../../bin/tool"),
                symlink("etc/abs-link", "/etc/hostname"),
            ]
        ),
        # 7: file modes and a replaced file
        [
            directory("bin"),
            file("bin/suid", "#!/bin/sh\n", 0o4755),
            directory("data"),
            file("data/readonly", "ro\n", 0o444),
            directory("data/sticky", 0o1777),
            directory("etc"),
            file("etc/hostname", "eight-replaced\n"),
        ],
        # 8: ownership, a long name (PAX path header) and a non-ASCII name
        with_parents(
            [
                file("home/user/owned.txt", "owned by 1000\n", 0o640, uid=1000, gid=1000),
                file(LONG_NAME, "long\n"),
                file(UNICODE_NAME, "unicode\n"),
            ]
        ),
    ]
    layers = [w.layer(entries) for entries in layer_entries]
    history: list[dict[str, Any]] = []
    labels = [
        "ADD base files",
        "RUN true  # produces an empty layer",
        "RUN rm /data/removed.txt && echo new > /data/new.txt",
        "RUN rm -rf /opq && mkdir /opq && echo d > /opq/new-d",
        "RUN ln /usr/share/doc/original.txt /usr/share/doc/link.txt",
        "RUN ln -s ../../bin/tool /usr/bin/tool-link && ln -s /etc/hostname /etc/abs-link",
        "RUN chmod 4755 /bin/suid && chmod 1777 /data/sticky",
        "ADD --chown=1000:1000 home files",
    ]
    for i, created_by in enumerate(labels):
        history.append({"created": FIXED_CREATED, "created_by": f"/bin/sh -c {created_by}"})
        if i == 2:
            history.append(
                {
                    "created": FIXED_CREATED,
                    "created_by": '/bin/sh -c #(nop)  ENV EIGHT="yes"',
                    "empty_layer": True,
                }
            )

    def d(mode: int = 0o755) -> Expected:
        return Expected("dir", mode)

    expected: dict[str, Expected] = {
        "etc": d(),
        "etc/hostname": Expected("file", 0o644, b"eight-replaced\n"),
        "etc/abs-link": Expected("symlink", target="/etc/hostname"),
        "bin": d(),
        "bin/tool": Expected("file", 0o755, b"#!/bin/sh\necho tool\n"),
        "bin/suid": Expected("file", 0o4755, b"#!/bin/sh\n"),
        "data": d(),
        "data/secret": Expected("file", 0o600, b"secret\n"),
        "data/new.txt": Expected("file", 0o644, b"new\n"),
        "data/readonly": Expected("file", 0o444, b"ro\n"),
        "data/sticky": d(0o1777),
        "data/" + LONG_NAME.split("/")[1]: d(),
        LONG_NAME: Expected("file", 0o644, b"long\n"),
        UNICODE_NAME: Expected("file", 0o644, b"unicode\n"),
        "opq": d(),
        "opq/new-d": Expected("file", 0o644, b"d\n"),
        "usr": d(),
        "usr/share": d(),
        "usr/share/doc": d(),
        "usr/share/doc/original.txt": Expected("file", 0o644, b"hardlink target\n"),
        "usr/share/doc/link.txt": Expected(
            "hardlink", content=b"hardlink target\n", target="usr/share/doc/original.txt"
        ),
        "usr/bin": d(),
        "usr/bin/tool-link": Expected("symlink", target="../../bin/tool"),
        "home": d(),
        "home/user": d(),
        "home/user/owned.txt": Expected("file", 0o640, b"owned by 1000\n", uid=1000, gid=1000),
    }
    img = w.image(
        layers,
        AMD64,
        history=history,
        labels={"org.example.image": "eight"},
        expected_rootfs=expected,
    )
    return w.finish("eight", tag, img.manifest, img.manifest_bytes, [img])


GENERATORS = {
    "single": make_single,
    "multi": make_multi,
    "eight": make_eight,
    "docker": make_docker,
    "dockerlist": make_dockerlist,
}


def generate_all(root: Path, tag: str = "v1") -> dict[str, LayoutImage]:
    """Write every test image into ``root/<name>`` and return them by name."""
    return {name: gen(root / name, tag) for name, gen in GENERATORS.items()}


# -- big images ------------------------------------------------------------------------------


def _keystream(seed: int, index: int) -> Any:
    """A deterministic, incompressible byte stream: AES-128-CTR keyed by (seed, layer index)."""
    key = hashlib.sha256(f"derrick-big-image:{seed}:{index}".encode()).digest()[:16]
    return Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _HashingWriter:
    """File-like sink that hashes and counts what passes through to ``out``."""

    def __init__(self, out: _Writable) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def make_big_image(
    path: Path,
    layers: int = 4,
    layer_size: int = 256 * MiB,
    *,
    tag: str = "big",
    seed: int = 0,
    compression: Literal["none", "gzip"] = "none",
    chunk_size: int = 4 * MiB,
) -> LayoutImage:
    """An image of ``layers`` layers, each a tar holding one file of ``layer_size`` random bytes.

    Layers are streamed to disk chunk by chunk (no layer is held in memory).  With
    ``compression="none"`` (default, fastest) layers use the plain OCI tar media type and
    digest == diff_id; ``"gzip"`` uses compression level 1.  Deterministic for a given seed.
    """
    w = LayoutWriter(path)
    blob_dir = path / "blobs" / "sha256"
    built: list[Layer] = []
    for i in range(layers):
        info = tarfile.TarInfo(f"data/layer-{i}.bin")
        info.size = layer_size
        info.mtime = FIXED_MTIME
        info.mode = 0o644
        info.uname = info.gname = ""
        header = info.tobuf(format=tarfile.PAX_FORMAT)
        padding = (-layer_size) % tarfile.BLOCKSIZE
        keystream = _keystream(seed, i)
        zeros = bytes(chunk_size)
        fd, tmp_name = tempfile.mkstemp(dir=blob_dir, prefix=".tmp-")
        with os.fdopen(fd, "wb") as raw:
            stored = _HashingWriter(raw)
            gz: gzip.GzipFile | None = None
            if compression == "gzip":
                gz = gzip.GzipFile(fileobj=stored, mode="wb", compresslevel=1, mtime=0)
                plain = _HashingWriter(gz)
            else:
                plain = stored  # uncompressed: hash once, digest == diff_id
            plain.write(header)
            remaining = layer_size
            while remaining:
                n = min(chunk_size, remaining)
                plain.write(keystream.update(zeros if n == chunk_size else zeros[:n]))
                remaining -= n
            plain.write(b"\0" * padding + EMPTY_TAR)
            if gz is not None:
                gz.close()
        media_type = OCI_LAYER_GZIP if compression == "gzip" else OCI_LAYER
        os.replace(tmp_name, blob_dir / stored.digest.split(":", 1)[1])
        built.append(
            Layer(Descriptor(media_type, stored.digest, stored.size), plain.digest, plain.size)
        )
    img = w.image(built, AMD64, labels={"org.example.image": "big"})
    return w.finish("big", tag, img.manifest, img.manifest_bytes, [img])


# -- pushing with skopeo ---------------------------------------------------------------------


class SkopeoError(RuntimeError):
    pass


def _skopeo_env(home: Path) -> dict[str, str]:
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "run").mkdir(exist_ok=True)
    (home / "run").chmod(0o700)
    registries_conf = home / "registries.conf"
    if not registries_conf.exists():
        registries_conf.write_text("")  # no mirrors, no search registries, nothing insecure
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
        "REGISTRY_AUTH_FILE": str(home / "auth.json"),
        "TMPDIR": str(home),
    }


def _skopeo(args: list[str], home: Path) -> bytes:
    """Run skopeo in an isolated environment; returns its stdout."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise SkopeoError("skopeo not installed")
    home.mkdir(parents=True, exist_ok=True)
    authfile = home / "auth.json"
    if not authfile.exists():
        authfile.write_text("{}")
    proc = subprocess.run(
        [skopeo, "--insecure-policy", *args],
        capture_output=True,
        env=_skopeo_env(home),
        timeout=300,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        raise SkopeoError(f"skopeo {' '.join(args)} failed:\n{err}")
    return proc.stdout


def write_dir_transport(layout: LayoutImage, target: Path) -> Path:
    """Copy ``layout`` into skopeo's ``dir:`` format (version 1.1).

    ``manifest.json`` is the top manifest/list, ``<hex>.manifest.json`` each list instance, and
    every blob is stored as ``<hex>``.
    """
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    (target / "version").write_text("Directory Transport Version: 1.1\n")
    (target / "manifest.json").write_bytes(layout.top_bytes)
    for img in layout.images:
        if layout.is_index:
            (target / f"{img.manifest.hex}.manifest.json").write_bytes(img.manifest_bytes)
        for digest in img.blob_digests:
            dst = target / digest.split(":", 1)[1]
            if not dst.exists():
                shutil.copyfile(layout.blob_path(digest), dst)
    return target


def _tls_args(prefix: str, registry: RegistryProcess) -> list[str]:
    """``--dest-tls-verify``/``--dest-cert-dir`` style options (``prefix=""``: plain names)."""
    p = f"{prefix}-" if prefix else ""
    if registry.tls is not None:
        return [f"--{p}tls-verify=true", f"--{p}cert-dir={registry.tls.ca_dir}"]
    return [f"--{p}tls-verify=false"]


def push_with_skopeo(
    layout: LayoutImage | Path,
    tag: str,
    registry: RegistryProcess,
    repo: str,
    *,
    all_platforms: bool = True,
    creds: tuple[str, str] | None = None,
    dest_tag: str | None = None,
    home: Path | None = None,
    verify_digest: str | None = None,
) -> str:
    """``skopeo copy oci:LAYOUT:TAG docker://HOST/REPO:DEST_TAG``; returns the pushed digest.

    Digests are preserved (``--preserve-digests``).  Afterwards the manifest the registry serves
    for the tag is fetched over HTTP and its sha256 is checked against ``verify_digest``, or by
    default against the layout's digest (with ``all_platforms=False`` and an index: against the
    index children, as skopeo then copies the child for the host platform, unchanged).
    skopeo runs with a private HOME/XDG dirs, an empty auth file, an empty registries.conf and
    ``--insecure-policy``, so nothing from the user's configuration is used.
    """
    layout_dir = layout.path if isinstance(layout, LayoutImage) else layout
    whole = all_platforms or (isinstance(layout, LayoutImage) and not layout.is_index)
    expected = verify_digest
    if expected is None and isinstance(layout, LayoutImage) and whole:
        expected = layout.digest
    reference = f"{dest_tag or tag}"
    dest = f"docker://{registry.host}/{repo}:{reference}"
    creds_args = [f"--dest-creds={creds[0]}:{creds[1]}"] if creds else ["--dest-no-creds"]
    cleanup = home is None
    home = home or Path(tempfile.mkdtemp(prefix="skopeo-home-"))
    source = f"oci:{layout_dir}:{tag}"
    try:
        if isinstance(layout, LayoutImage) and layout.media_type in DOCKER_TYPES:
            # skopeo's oci: transport only accepts OCI media types in index.json; its dir:
            # transport keeps Docker schema2 manifests and lists byte for byte.
            source = "dir:" + str(write_dir_transport(layout, home / "dir-source"))
        _skopeo(
            [
                "copy",
                "--quiet",
                *(["--preserve-digests"] if whole else []),
                "--authfile",
                str(home / "auth.json"),
                *(["--all"] if all_platforms else []),
                *_tls_args("dest", registry),
                *creds_args,
                source,
                dest,
            ],
            home,
        )
    finally:
        if cleanup:
            shutil.rmtree(home, ignore_errors=True)
    with RawClient(registry, creds, anonymous=creds is None) as client:
        digest = client.manifest_digest(repo, reference)
    if expected is not None and digest != expected:
        raise SkopeoError(f"pushed {dest} has digest {digest}, expected {expected}")
    if not whole and isinstance(layout, LayoutImage) and digest not in layout.manifest_digests:
        # one platform of an index: the child manifest must arrive unchanged
        raise SkopeoError(f"pushed {dest} has digest {digest}, not one of the index children")
    return digest


# -- zstd image (appended for the unpack tests) -----------------------------------------------

OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def make_zstd(path: Path, tag: str = "v1") -> LayoutImage:
    """Three layers: zstd, zstd written as two concatenated frames (whiteout, new file), gzip.

    ``expected_rootfs`` is the final tree.
    """
    import zstandard

    cctx = zstandard.ZstdCompressor(level=3)
    w = LayoutWriter(path)
    big = bytes(range(256)) * 4096  # 1 MiB, compresses well
    first = with_parents(
        [
            file("etc/hostname", "zstd\n"),
            file("etc/remove-me", "gone\n"),
            file("usr/lib/big.bin", big),
            file("bin/run", "#!/bin/sh\necho zstd\n", 0o755),
        ]
    )
    tar1 = build_tar(first)
    layer1 = Layer(w.blob(cctx.compress(tar1), OCI_LAYER_ZSTD), sha256_digest(tar1), len(tar1))
    second = [directory("etc"), whiteout("etc/remove-me"), file("etc/motd", "hello zstd\n")]
    tar2 = build_tar(second)
    half = len(tar2) // 2
    frames = cctx.compress(tar2[:half]) + cctx.compress(tar2[half:])
    layer2 = Layer(w.blob(frames, OCI_LAYER_ZSTD), sha256_digest(tar2), len(tar2))
    third = with_parents([file("var/log/gzip.txt", "a gzip layer among zstd ones\n")])
    layer3 = w.layer(third)
    expected = rootfs_of(first)
    del expected["etc/remove-me"]
    expected.update(rootfs_of(second[:1] + second[2:]))
    expected.update(rootfs_of(third))
    img = w.image(
        [layer1, layer2, layer3],
        AMD64,
        labels={"org.example.image": "zstd"},
        expected_rootfs=expected,
    )
    return w.finish("zstd", tag, img.manifest, img.manifest_bytes, [img])
