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

Archives are never extracted: :mod:`derrick.layout.members` indexes their members
once and reads each by seeking into the tar file, refusing unsafe ones.
:mod:`derrick.layout.dockermanifest` reads a docker-archive's ``manifest.json``.

Blobs opened by digest are verified while they are read: reading to the end
raises :class:`~derrick.errors.DigestMismatchError` if the content does not
match.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from derrick import mediatypes as mt
from derrick.closing import Closing
from derrick.digest import Digest, Verifier
from derrick.errors import DerrickError, LayoutError
from derrick.layout.dockermanifest import (
    DOCKER_MANIFEST_FILE,
    DockerArchiveEntry,
    DockerManifest,
    read_docker_manifest,
    same_layers,
)
from derrick.layout.members import READ_BUFFER, DirStore, FileStore, TarStore, bounded_reader
from derrick.layout.ociindex import (
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

__all__ = [
    "DOCKER_MANIFEST_FILE",
    "DockerArchiveEntry",
    "ImageSource",
    "SelectedImage",
    "SourceKind",
    "open_image_source",
    "tag_in",
]

SourceKind = Literal["oci", "oci-archive", "docker-archive"]


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


# -- the image source ----------------------------------------------------------


class ImageSource(Closing):
    """Images stored in an OCI layout, OCI archive or docker-archive."""

    def __init__(self, kind: SourceKind, path: Path, store: FileStore) -> None:
        self.kind: SourceKind = kind
        self.path = path
        self._store = store
        self._index: Index | None = None
        self._docker: DockerManifest | None = None
        if kind in ("oci", "oci-archive") or store.size(LAYOUT_FILE) is not None:
            self._load_oci(required=kind != "docker-archive")
        if kind == "docker-archive":
            raw = self._read_small(DOCKER_MANIFEST_FILE)
            entries = read_docker_manifest(raw, path, store.size)
            self._docker = DockerManifest(entries, self.read_file, path)

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
        with bounded_reader(self._store.open(name), size, None) as f:
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

    # -- names -----------------------------------------------------------

    @property
    def index(self) -> Index | None:
        """The OCI ``index.json`` (None for a docker-archive without one)."""
        return self._index

    def names(self) -> list[str]:
        """Names of the images: ref names of an OCI layout, RepoTags of a docker-archive."""
        if self._docker is not None:
            return self._docker.names()
        return entry_names(self._index.manifests) if self._index else []

    def _docker_manifest(self) -> DockerManifest:
        if self._docker is None:
            raise LayoutError(f"{self.path} is an {self.kind}, not a docker-archive")
        return self._docker

    def docker_images(self) -> list[DockerArchiveEntry]:
        """The images listed in a docker-archive's ``manifest.json``."""
        return list(self._docker_manifest().entries)

    def image_id(self, entry: DockerArchiveEntry) -> Digest:
        """The image ID of a docker-archive image: the digest of its config."""
        return self._docker_manifest().image_id(entry)

    def docker_image(self, name: str | None = None) -> DockerArchiveEntry:
        """The docker-archive image called ``name`` (or the only one if None): one of its
        RepoTags, or its image ID (see :meth:`DockerManifest.image`)."""
        return self._docker_manifest().image(name)

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
            if parsed.config.digest != config or not same_layers(parsed, entry):
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
        return bounded_reader(
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

    def iter_chunks(self, digest: Digest, chunk_size: int = READ_BUFFER) -> Iterator[bytes]:
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
        return bounded_reader(self._store.open(path), self.file_size(path), None)

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
        return ImageSource("oci", p, DirStore(p))
    if not stat.S_ISREG(st.st_mode):
        raise LayoutError(
            f"{p} is not a regular file or directory",
            hint="save a stream to a file first; archives are read by seeking",
        )
    store = TarStore(p)
    if store.has(DOCKER_MANIFEST_FILE):
        return ImageSource("docker-archive", p, store)
    if store.has(LAYOUT_FILE):
        return ImageSource("oci-archive", p, store)
    raise LayoutError(
        f"{p} is neither an OCI archive nor a docker-archive",
        hint="it has no oci-layout or manifest.json member",
    )
