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
    read.  An image saved by ID has ``"RepoTags": null``, and Docker 25.0.0 and
    25.0.1 then write ``"manifests": null`` into ``index.json``: both read as
    empty lists.  The OCI manifest of a docker-archive image is used only when
    it agrees with ``manifest.json`` (same config, same layers in the same
    order: Docker 25.0.0 listed them in random order); otherwise the image is
    read from ``manifest.json`` alone.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

from derrick import mediatypes as mt
from derrick.closing import Closing
from derrick.digest import Digest, Verifier
from derrick.errors import DerrickError, LayoutError
from derrick.layout.oci import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
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
from derrick.reference import Reference, validate_tag

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "DockerArchiveEntry",
    "ImageSource",
    "SelectedImage",
    "SourceKind",
    "open_image_source",
    "tag_in",
]

SourceKind = Literal["oci", "oci-archive", "docker-archive"]

DOCKER_MANIFEST_FILE = "manifest.json"
_READ_BUFFER = 1 << 20
_MAX_LINK_HOPS = 16
#: Shortest image ID prefix (hex digits) that names a docker-archive image, as ``docker`` shows.
_SHORT_ID = 12
_HEX = frozenset("0123456789abcdef")

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


@dataclass(frozen=True)
class SelectedImage:
    """One image of a source, as :meth:`ImageSource.select` found it."""

    #: Its OCI manifest (or index) in the source; None for a docker-archive image without
    #: one that agrees with ``manifest.json`` (read it from :attr:`docker` then).
    desc: Descriptor | None
    #: Its docker-archive ``manifest.json`` entry (None for OCI layouts and archives).
    docker: DockerArchiveEntry | None
    #: The tags it carries in the source, each once: from the ``ref.name`` or image name
    #: annotation of its index entry, or from its RepoTags (only the one it was chosen by).
    tags: tuple[str, ...]


def tag_in(name: str) -> str | None:
    """The tag a name carries: itself if it is a tag (``v1``), or a reference's (``app:v1``)."""
    try:
        return validate_tag(name)
    except DerrickError:
        pass
    try:
        return Reference.parse(name, default_tag=None).tag
    except DerrickError:
        return None


def _tags_of(names: Iterable[str | None]) -> tuple[str, ...]:
    out: list[str] = []
    for name in names:
        tag = tag_in(name) if name else None
        if tag is not None and tag not in out:
            out.append(tag)
    return tuple(out)


def _entry_tags(desc: Descriptor) -> tuple[str, ...]:
    ann = desc.annotations or {}
    return _tags_of([ann.get(ANNOTATION_REF_NAME), ann.get(ANNOTATION_IMAGE_NAME)])


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


class ImageSource(Closing):
    """Images stored in an OCI layout, OCI archive or docker-archive."""

    def __init__(self, kind: SourceKind, path: Path, store: _Store) -> None:
        self.kind: SourceKind = kind
        self.path = path
        self._store = store
        self._index: Index | None = None
        self._docker: list[DockerArchiveEntry] | None = None
        self._image_ids: dict[str, Digest] = {}
        if kind in ("oci", "oci-archive") or store.size(LAYOUT_FILE) is not None:
            self._load_oci(required=kind != "docker-archive")
        if kind == "docker-archive":
            self._docker = self._load_docker()

    def __repr__(self) -> str:
        return f"ImageSource({self.kind!r}, {str(self.path)!r})"

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

    def image_id(self, entry: DockerArchiveEntry) -> Digest:
        """The image ID of a docker-archive image: the digest of its config."""
        found = self._image_ids.get(entry.config_path)
        if found is None:
            found = self._image_ids[entry.config_path] = Digest.of(
                self.read_file(entry.config_path)
            )
        return found

    def _shown_names(self) -> list[str]:
        """Each image by its RepoTags, or by its short image ID if it has none."""
        out: list[str] = []
        for e in self.docker_images():
            shown = list(e.repo_tags) or [f"{self.image_id(e).hex[:_SHORT_ID]} (untagged)"]
            out.extend(n for n in shown if n not in out)
        return out

    def _by_image_id(self, name: str) -> DockerArchiveEntry | None:
        """The image whose ID is ``name`` (``sha256:<hex>``, or 12 or more of its hex digits)."""
        hex_ = name.removeprefix("sha256:")
        if len(hex_) < _SHORT_ID or not set(hex_) <= _HEX:
            return None
        found: dict[Digest, DockerArchiveEntry] = {}
        for e in self.docker_images():
            image_id = self.image_id(e)
            if image_id.algorithm == "sha256" and image_id.hex.startswith(hex_):
                found.setdefault(image_id, e)
        if len(found) > 1:
            raise LayoutError(
                f"{name!r} is the start of {len(found)} image IDs in {self.path}",
                hint="give more of the image ID",
            )
        return next(iter(found.values()), None)

    def docker_image(self, name: str | None = None) -> DockerArchiveEntry:
        """The docker-archive image called ``name`` (or the only one if None).

        ``name`` is one of its RepoTags, or its image ID (``sha256:<hex>``, or at
        least the first 12 hex digits), which is how an untagged image is named.
        """
        entries = self.docker_images()
        if name is None:
            if len(entries) == 1:
                return entries[0]
            if not entries:
                raise LayoutError(f"{self.path} holds no images")
            raise LayoutError(
                f"{self.path} holds {len(entries)} images; choose one with "
                f"{self.path}:NAME, NAME one of: " + ", ".join(self._shown_names())
            )
        for e in entries:
            if name in e.repo_tags:
                return e
        by_id = self._by_image_id(name)
        if by_id is not None:
            return by_id
        raise LayoutError(
            f"no image tagged {name!r} in {self.path} "
            f"(it has: {', '.join(self._shown_names()) or 'none'})"
        )

    def resolve(self, name: str | None = None) -> Descriptor | None:
        """The descriptor of the manifest (or index) called ``name``.

        For a docker-archive, ``name`` is one of its RepoTags (or an image ID),
        and the result is the OCI manifest the archive holds for that image, or
        None if it holds none (read it with :meth:`docker_image` then).
        """
        return self.select(name).desc

    def select(self, name: str | None = None) -> SelectedImage:
        """The image called ``name`` (None: the only one), and the tags it carries.

        In an OCI layout or archive ``name`` is a ``ref.name``, an image name or a
        digest.  In a docker-archive it is a RepoTag or an image ID, else a name
        of its ``index.json``.
        """
        if self._docker is None:
            if self._index is None:  # pragma: no cover - guarded by _load_oci
                raise LayoutError(f"{self.path} has no index.json")
            desc = resolve_entry(self._index.manifests, name, self.description)
            return SelectedImage(desc, None, _entry_tags(desc))
        try:
            entry = self.docker_image(name)
        except LayoutError:
            if name is None or self._index is None:
                raise
            try:
                desc = resolve_entry(self._index.manifests, name, self.description)
            except LayoutError:
                pass
            else:
                named = self._docker_entry_for(desc)
                if named is not None:  # read as its manifest.json entry says
                    return SelectedImage(self._oci_for_docker(named), named, _entry_tags(desc))
                return SelectedImage(desc, None, _entry_tags(desc))
            raise
        chosen = (name,) if name in entry.repo_tags else entry.repo_tags
        return SelectedImage(self._oci_for_docker(entry), entry, _tags_of(chosen))

    def _docker_entry_for(self, desc: Descriptor) -> DockerArchiveEntry | None:
        """The manifest.json entry of the image manifest ``desc`` (by its config), if any."""
        if not mt.is_image_manifest(desc.media_type) or not self.has_blob(desc.digest):
            return None
        try:
            parsed = parse_manifest(self.read_blob(desc.digest), desc.media_type)
        except DerrickError:
            return None
        if not isinstance(parsed, ImageManifest):
            return None
        for entry in self.docker_images():
            if self.image_id(entry) == parsed.config.digest:
                return entry
        return None

    def _oci_for_docker(self, entry: DockerArchiveEntry) -> Descriptor | None:
        if self._index is None:
            return None
        config_digest = self.image_id(entry)
        for desc in self._index.manifests:
            found = self._find_config(desc, entry, config_digest, depth=0)
            if found is not None:
                return found
        return None

    def _find_config(
        self, desc: Descriptor, entry: DockerArchiveEntry, config: Digest, depth: int
    ) -> Descriptor | None:
        if not self.has_blob(desc.digest):
            return None
        try:
            parsed = parse_manifest(self.read_blob(desc.digest), desc.media_type)
        except DerrickError:
            return None
        if isinstance(parsed, ImageManifest):
            if parsed.config.digest != config or not _same_layers(parsed, entry):
                return None
            return desc
        if depth < 2:
            for child in parsed.manifests:
                if mt.is_image_manifest(child.media_type) or mt.is_index(child.media_type):
                    found = self._find_config(child, entry, config, depth + 1)
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

    def size_of(self, path: str) -> int | None:
        """Size of a file of the source, or None when there is none (links followed)."""
        return self._store.size(path)

    def open_at(self, path: str, offset: int = 0) -> io.FileIO:
        """The raw file ``path`` of the source, ``offset`` bytes into its content (for a
        member of an archive: the archive file, seeked).  Not verified; the caller reads
        no more than :meth:`size_of` says."""
        f = self._store.open(path)
        if offset:
            try:
                f.seek(offset, os.SEEK_CUR)
            except BaseException:
                f.close()
                raise
        return f

    def read_file(self, path: str, max_size: int = MAX_MANIFEST_SIZE) -> bytes:
        """Read a small file of the source (e.g. a docker-archive config)."""
        return self._read_small(path, max_size)


def _same_layers(manifest: ImageManifest, entry: DockerArchiveEntry) -> bool:
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
