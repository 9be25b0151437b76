"""Read images from OCI layouts, OCI archives and docker-archive tarballs.

:func:`open_image_source` detects what a path holds:

``oci``
    An OCI image layout directory.
``oci-archive``
    A tar of an OCI image layout.
``docker-archive``
    A ``docker save`` tarball: its ``manifest.json`` lists each image's config
    and layer files.  Both the legacy layout (``<id>/layer.tar``, ``<id>.json``)
    and the newer one (``blobs/sha256/<hex>`` plus an OCI ``index.json``) are
    read.

Archives are never extracted.  Their members are indexed once and each blob is
read by seeking into the tar file.  Member names that are absolute or contain
``..``, links that point outside the archive, and device or FIFO members make
the archive unsafe and are refused.  Links to other members inside the archive
(which ``docker save`` and containers tooling write for repeated layers) are
followed when a file is opened.

Blobs opened by digest are verified while they are read: reading to the end
raises :class:`~derrick.errors.DigestMismatchError` if the content does not
match.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Literal

from derrick import mediatypes as mt
from derrick.digest import Digest, Verifier
from derrick.errors import DerrickError, LayoutError
from derrick.layout.oci import (
    INDEX_FILE,
    LAYOUT_FILE,
    blob_member,
    check_layout_file,
    entry_names,
    parse_index_json,
    resolve_entry,
)
from derrick.manifest import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageManifest,
    Index,
    parse_manifest,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["DockerArchiveEntry", "ImageSource", "SourceKind", "open_image_source"]

SourceKind = Literal["oci", "oci-archive", "docker-archive"]

DOCKER_MANIFEST_FILE = "manifest.json"
_READ_BUFFER = 1 << 20
_MAX_LINK_HOPS = 16

_COMPRESSION_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
)


@dataclass(frozen=True)
class DockerArchiveEntry:
    """One image of a docker-archive's ``manifest.json``."""

    #: Archive path of the image config (e.g. ``<hex>.json`` or ``blobs/sha256/<hex>``).
    config_path: str
    #: ``name:tag`` references the image is saved under (may be empty).
    repo_tags: tuple[str, ...]
    #: Archive paths of the layer tarballs, base layer first.
    layer_paths: tuple[str, ...]


# -- member name safety --------------------------------------------------------


def _normalize_member(name: str, archive: str) -> str:
    """Normalise a member name; refuse absolute names and ``..`` components."""
    if name.startswith("/") or "\x00" in name:
        raise LayoutError(f"{archive} is unsafe: member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayoutError(f"{archive} is unsafe: member {name!r} contains '..'")
    return "/".join(parts)


def _normalize_ref(name: str) -> str | None:
    """Normalise a path named in manifest.json; None if it leaves the archive."""
    if name.startswith("/"):
        return None
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or norm == ".":
        return None
    return norm


# -- verified reading ----------------------------------------------------------


class _VerifyingReader(io.RawIOBase):
    """Reads exactly ``size`` bytes of ``f`` and verifies them at the end."""

    def __init__(self, f: io.FileIO, size: int, verifier: Verifier | None) -> None:
        super().__init__()
        self._f = f
        self._left = size
        self._verifier = verifier
        self._error: DerrickError | None = None

    def readable(self) -> bool:
        return True

    def _finish(self) -> None:
        if self._verifier is not None:
            v, self._verifier = self._verifier, None
            try:
                v.verify()
            except DerrickError as e:
                self._error = e
                raise

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self._error is not None:
            raise self._error
        view = memoryview(buffer).cast("B")
        if self._left <= 0:
            self._finish()
            return 0
        if not len(view):
            return 0
        n = self._f.readinto(view[: min(len(view), self._left)])
        if not n:
            what = self._verifier.what if self._verifier else "file"
            self._error = LayoutError(
                f"{what} ended {self._left} bytes early; the file is truncated"
            )
            raise self._error
        if self._verifier is not None:
            self._verifier.update(view[:n])
        self._left -= n
        if self._left == 0:
            self._finish()
        return n

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def _reader(f: io.FileIO, size: int, verifier: Verifier | None) -> BinaryIO:
    return io.BufferedReader(_VerifyingReader(f, size, verifier), _READ_BUFFER)


# -- storage backends ----------------------------------------------------------


class _Store:
    """Files of an image source, by archive-relative path."""

    description: str

    def size(self, name: str) -> int | None:
        raise NotImplementedError

    def open(self, name: str) -> io.FileIO:
        """Open the raw file (positioned at its start); the caller bounds reads by size."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _DirStore(_Store):
    def __init__(self, root: Path) -> None:
        self.root = root
        self._real_root = root.resolve()
        self.description = f"the OCI layout {root}"

    def _path(self, name: str) -> Path | None:
        norm = _normalize_ref(name)
        if norm is None:
            return None
        path = self.root / norm
        try:
            if not path.resolve().is_relative_to(self._real_root):
                return None
        except OSError:
            return None
        return path

    def size(self, name: str) -> int | None:
        path = self._path(name)
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def open(self, name: str) -> io.FileIO:
        path = self._path(name)
        if path is None:
            raise LayoutError(f"{name} is not inside {self.description}")
        try:
            return io.FileIO(path, "rb")
        except OSError as e:
            raise LayoutError(f"cannot open {path}: {e.strerror}") from None


class _TarStore(_Store):
    """Members of a tar file, indexed once, read by seeking."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"the archive {path}"
        self.members: dict[str, tuple[int, int]] = {}  # name -> (data offset, size)
        self.links: dict[str, str] = {}  # name -> normalised target member name
        self._index()

    def _index(self) -> None:
        try:
            with open(self.path, "rb") as f:
                self._scan(f, str(self.path))
        except OSError as e:
            raise LayoutError(f"cannot read {self.path}: {e.strerror or e}") from None

    def _scan(self, f: BinaryIO, where: str) -> None:
        head = f.read(8)
        for magic, kind in _COMPRESSION_MAGIC:
            if head.startswith(magic):
                raise LayoutError(
                    f"{where} is a {kind}-compressed file, not a tar archive",
                    hint="decompress it first",
                )
        f.seek(0)
        try:
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    self._add(m, where)
        except tarfile.TarError as e:
            raise LayoutError(f"{where} is not a valid tar archive: {e}") from None

    def _add(self, m: tarfile.TarInfo, where: str) -> None:
        name = _normalize_member(m.name, where)
        if m.isdir() or not name:
            return
        if m.issparse():
            raise LayoutError(f"{where}: member {m.name!r} is a sparse file, which is unsupported")
        if m.isreg():
            self.members[name] = (m.offset_data, m.size)
            self.links.pop(name, None)
            return
        if m.issym() or m.islnk():
            target = m.linkname
            if target.startswith("/"):
                raise LayoutError(
                    f"{where} is unsafe: link {m.name!r} points to the absolute path {target!r}"
                )
            if m.issym():
                target = posixpath.join(posixpath.dirname(name), target)
            norm = posixpath.normpath(target) if target else ""
            if not norm or norm == "." or norm == ".." or norm.startswith("../"):
                raise LayoutError(
                    f"{where} is unsafe: link {m.name!r} points outside the archive "
                    f"({m.linkname!r})"
                )
            self.links[name] = norm
            self.members.pop(name, None)
            return
        raise LayoutError(
            f"{where} is unsafe: member {m.name!r} is not a regular file, directory or link"
        )

    def _lookup(self, name: str) -> tuple[int, int] | None:
        norm = _normalize_ref(name)
        for _ in range(_MAX_LINK_HOPS):
            if norm is None:
                return None
            found = self.members.get(norm)
            if found is not None:
                return found
            norm = self.links.get(norm)
        return None

    def size(self, name: str) -> int | None:
        found = self._lookup(name)
        return None if found is None else found[1]

    def open(self, name: str) -> io.FileIO:
        found = self._lookup(name)
        if found is None:
            raise LayoutError(f"{name} is missing from {self.description}")
        f = io.FileIO(self.path, "rb")
        try:
            f.seek(found[0])
        except BaseException:
            f.close()
            raise
        return f

    def has(self, name: str) -> bool:
        return self._lookup(name) is not None


# -- the image source ----------------------------------------------------------


class ImageSource:
    """Images stored in an OCI layout, OCI archive or docker-archive."""

    def __init__(self, kind: SourceKind, path: Path, store: _Store) -> None:
        self.kind: SourceKind = kind
        self.path = path
        self._store = store
        self._index: Index | None = None
        self._docker: list[DockerArchiveEntry] | None = None
        if kind in ("oci", "oci-archive") or store.size(LAYOUT_FILE) is not None:
            self._load_oci(required=kind != "docker-archive")
        if kind == "docker-archive":
            self._docker = self._load_docker()

    def __repr__(self) -> str:
        return f"ImageSource({self.kind!r}, {str(self.path)!r})"

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._store.close()

    @property
    def description(self) -> str:
        return self._store.description

    # -- loading ---------------------------------------------------------

    def _read_small(self, name: str, max_size: int = MAX_MANIFEST_SIZE) -> bytes:
        size = self._store.size(name)
        if size is None:
            raise LayoutError(f"{name} is missing from {self.description}")
        if size > max_size:
            raise LayoutError(f"{name} in {self.description} is larger than {max_size} bytes")
        with _reader(self._store.open(name), size, None) as f:
            return f.read()

    def _load_oci(self, *, required: bool) -> None:
        if self._store.size(LAYOUT_FILE) is None:
            raise LayoutError(f"{self.path} is not an OCI image layout: it has no {LAYOUT_FILE}")
        check_layout_file(self._read_small(LAYOUT_FILE), str(self.path))
        if self._store.size(INDEX_FILE) is None:
            if required:
                raise LayoutError(f"{self.path} is not a complete OCI layout: no index.json")
            return
        self._index = parse_index_json(self._read_small(INDEX_FILE), str(self.path))

    def _load_docker(self) -> list[DockerArchiveEntry]:
        where = f"{self.path}: manifest.json"
        raw = self._read_small(DOCKER_MANIFEST_FILE)
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LayoutError(f"{where} is not valid JSON: {e}") from None
        if not isinstance(obj, list):
            raise LayoutError(f"{where} must be a JSON list")
        out: list[DockerArchiveEntry] = []
        for i, item in enumerate(obj):
            here = f"{where}[{i}]"
            if not isinstance(item, dict):
                raise LayoutError(f"{here} must be an object")
            config = item.get("Config")
            layers = item.get("Layers")
            tags = item.get("RepoTags") or []
            if not isinstance(config, str):
                raise LayoutError(f"{here}: 'Config' must be a string")
            if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
                raise LayoutError(f"{here}: 'Layers' must be a list of strings")
            if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
                raise LayoutError(f"{here}: 'RepoTags' must be a list of strings")
            paths = []
            for p in [config, *layers]:
                norm = _normalize_ref(p)
                if norm is None:
                    raise LayoutError(f"{self.path} is unsafe: {here} names {p!r}")
                if self._store.size(norm) is None:
                    raise LayoutError(f"{here} names {p!r}, which is missing from the archive")
                paths.append(norm)
            out.append(DockerArchiveEntry(paths[0], tuple(tags), tuple(paths[1:])))
        return out

    # -- names -----------------------------------------------------------

    @property
    def index(self) -> Index | None:
        """The OCI ``index.json`` (None for a docker-archive without one)."""
        return self._index

    def names(self) -> list[str]:
        """Names of the images: ref names of an OCI layout, RepoTags of a docker-archive."""
        if self._docker is not None:
            out: list[str] = []
            for e in self._docker:
                out.extend(t for t in e.repo_tags if t not in out)
            return out
        return entry_names(self._index.manifests) if self._index else []

    def docker_images(self) -> list[DockerArchiveEntry]:
        """The images listed in a docker-archive's ``manifest.json``."""
        if self._docker is None:
            raise LayoutError(f"{self.path} is an {self.kind}, not a docker-archive")
        return list(self._docker)

    def docker_image(self, name: str | None = None) -> DockerArchiveEntry:
        """The docker-archive image tagged ``name`` (or the only one if None)."""
        entries = self.docker_images()
        if name is None:
            if len(entries) == 1:
                return entries[0]
            if not entries:
                raise LayoutError(f"{self.path} holds no images")
            raise LayoutError(
                f"{self.path} holds {len(entries)} images; choose one of: "
                + (", ".join(self.names()) or "(none are tagged)")
            )
        for e in entries:
            if name in e.repo_tags:
                return e
        raise LayoutError(
            f"no image tagged {name!r} in {self.path} (it has: {', '.join(self.names()) or 'none'})"
        )

    def resolve(self, name: str | None = None) -> Descriptor | None:
        """The descriptor of the manifest (or index) called ``name``.

        For a docker-archive, ``name`` is one of its RepoTags, and the result is
        the OCI manifest the archive holds for that image, or None if it holds
        none (read it with :meth:`docker_image` then).
        """
        if self._docker is None:
            if self._index is None:  # pragma: no cover - guarded by _load_oci
                raise LayoutError(f"{self.path} has no index.json")
            return resolve_entry(self._index.manifests, name, self.description)
        try:
            entry = self.docker_image(name)
        except LayoutError:
            if name is None or self._index is None:
                raise
            try:
                return resolve_entry(self._index.manifests, name, self.description)
            except LayoutError:
                pass
            raise
        return self._oci_for_docker(entry)

    def _oci_for_docker(self, entry: DockerArchiveEntry) -> Descriptor | None:
        if self._index is None:
            return None
        config_digest = Digest.of(self.read_file(entry.config_path))
        for desc in self._index.manifests:
            found = self._find_config(desc, config_digest, depth=0)
            if found is not None:
                return found
        return None

    def _find_config(self, desc: Descriptor, config: Digest, depth: int) -> Descriptor | None:
        if not self.has_blob(desc.digest):
            return None
        try:
            parsed = parse_manifest(self.read_blob(desc.digest), desc.media_type)
        except DerrickError:
            return None
        if isinstance(parsed, ImageManifest):
            return desc if parsed.config.digest == config else None
        if depth < 2:
            for child in parsed.manifests:
                if mt.is_image_manifest(child.media_type) or mt.is_index(child.media_type):
                    found = self._find_config(child, config, depth + 1)
                    if found is not None:
                        return found
        return None

    # -- blobs -----------------------------------------------------------

    def has_blob(self, digest: Digest) -> bool:
        return self._store.size(blob_member(digest)) is not None

    def blob_size(self, digest: Digest) -> int:
        size = self._store.size(blob_member(digest))
        if size is None:
            raise LayoutError(f"blob {digest} is missing from {self.description}")
        return size

    def open_blob(self, digest: Digest) -> BinaryIO:
        """Open a blob; reading it to the end verifies it against ``digest``."""
        size = self.blob_size(digest)
        return _reader(
            self._store.open(blob_member(digest)), size, Verifier(digest, size, what="blob")
        )

    def read_blob(self, digest: Digest, max_size: int = MAX_MANIFEST_SIZE) -> bytes:
        """Read and verify a small blob (manifest, index or config)."""
        size = self.blob_size(digest)
        if size > max_size:
            raise LayoutError(
                f"blob {digest} in {self.description} is {size} bytes, "
                f"more than the {max_size} byte limit"
            )
        with self.open_blob(digest) as f:
            return f.read()

    def iter_chunks(self, digest: Digest, chunk_size: int = _READ_BUFFER) -> Iterator[bytes]:
        """The blob's content in chunks, verified at the end."""
        with self.open_blob(digest) as f:
            while chunk := f.read(chunk_size):
                yield chunk

    # -- plain files (docker-archive) ------------------------------------

    def file_size(self, path: str) -> int:
        """Size of a file of the source (e.g. a docker-archive layer path)."""
        size = self._store.size(path)
        if size is None:
            raise LayoutError(f"{path} is missing from {self.description}")
        return size

    def open_file(self, path: str) -> BinaryIO:
        """Open a file of the source by its path (not verified)."""
        return _reader(self._store.open(path), self.file_size(path), None)

    def read_file(self, path: str, max_size: int = MAX_MANIFEST_SIZE) -> bytes:
        """Read a small file of the source (e.g. a docker-archive config)."""
        return self._read_small(path, max_size)


def open_image_source(path: Path | str) -> ImageSource:
    """Open an OCI layout directory, OCI archive or docker-archive at ``path``."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise LayoutError(f"{p} does not exist") from None
    except OSError as e:
        raise LayoutError(f"cannot read {p}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        return ImageSource("oci", p, _DirStore(p))
    if not stat.S_ISREG(st.st_mode):
        raise LayoutError(
            f"{p} is not a regular file or directory",
            hint="save a stream to a file first; archives are read by seeking",
        )
    store = _TarStore(p)
    if store.has(DOCKER_MANIFEST_FILE):
        return ImageSource("docker-archive", p, store)
    if store.has(LAYOUT_FILE):
        return ImageSource("oci-archive", p, store)
    raise LayoutError(
        f"{p} is neither an OCI archive nor a docker-archive",
        hint="it has no oci-layout or manifest.json member",
    )
