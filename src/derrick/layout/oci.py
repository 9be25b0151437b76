"""OCI image layout directories (image-spec ``image-layout.md``): :class:`OCILayout`.

A layout is a directory holding an ``oci-layout`` marker file
(``{"imageLayoutVersion": "1.0.0"}``), an ``index.json`` image index whose
entries name the images it holds, and content-addressed blobs under
``blobs/<algorithm>/<encoded>``.  What those files say and how a name picks an entry
is :mod:`derrick.layout.ociindex`; this module reads and writes the directory.

Every file is written under a temporary name in the same directory and moved
into place with ``os.replace`` (:mod:`derrick.layout.atomic`), so a final name never
refers to a half-written file.  Blobs are content-addressed, so writers never disagree
about one; the read-change-write of ``index.json`` is done holding an exclusive
``flock`` on the layout directory itself (opened read-only), so concurrent derrick
processes adding images to one layout do not lose each other's entries.  The lock needs
no file of its own in the layout; tools that do not take it (skopeo, umoci) are not
coordinated with.  One layout may hold images of several repositories under the same
tag; an entry is replaced only by one with the same full name.

A blob added from a file elsewhere (:meth:`OCILayout.add_blob_file`, as pulls
do from derrick's blob cache) is a copy: a reflink where the filesystem can
clone, else a copy made in the kernel; never a hard link, as a write into a linked
file would change the cache's file and every other layout linked to it.  On a
filesystem without reflinks the copy costs about a quarter of a second of CPU time per
GiB on the development machine, and the disk space of a second copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from derrick.digest import Digest, Verifier
from derrick.errors import DerrickError, LayoutError
from derrick.layout.atomic import FICLONE, atomic_write, clone_or_copy, read_verified, replacing
from derrick.layout.ociindex import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    BLOBS_DIR,
    INDEX_FILE,
    LAYOUT_FILE,
    LAYOUT_VERSION,
    MAX_INDEX_SIZE,
    blob_member,
    check_layout_file,
    check_ref_name,
    dump_json,
    empty_index_bytes,
    entry_name,
    entry_names,
    full_name,
    index_json,
    layout_file_bytes,
    named_descriptor,
    parse_index_json,
    resolve_entry,
)
from derrick.manifest import MAX_MANIFEST_SIZE, Descriptor, Index

#: The layout's own class and :func:`blob_file`; the names of
#: :mod:`derrick.layout.ociindex` and :mod:`derrick.layout.atomic` it is built on are here
#: too, for code that imports them from this module, where they were defined before.
__all__ = [
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_REF_NAME",
    "BLOBS_DIR",
    "FICLONE",
    "INDEX_FILE",
    "LAYOUT_FILE",
    "LAYOUT_VERSION",
    "MAX_INDEX_SIZE",
    "OCILayout",
    "atomic_write",
    "blob_file",
    "blob_member",
    "check_layout_file",
    "check_ref_name",
    "empty_index_bytes",
    "entry_name",
    "entry_names",
    "full_name",
    "index_json",
    "layout_file_bytes",
    "named_descriptor",
    "parse_index_json",
    "read_verified",
    "resolve_entry",
]


def blob_file(root: Path, digest: Digest) -> Path | None:
    """The file of blob ``digest`` in the layout at ``root`` when it is a regular file
    inside the layout (not through a link out of it), else None."""
    path = root / BLOBS_DIR / digest.algorithm / digest.hex
    try:
        if not path.resolve().is_relative_to(root.resolve()):
            return None
        if not stat.S_ISREG(path.stat().st_mode):
            return None
    except OSError:
        return None
    return path


class OCILayout:
    """An OCI image layout directory."""

    def __init__(self, root: Path) -> None:
        """Use :meth:`open` or :meth:`create`; this does not check the directory."""
        self.root = Path(root)
        self._real_root = self.root.resolve()

    def __repr__(self) -> str:
        return f"OCILayout({str(self.root)!r})"

    # -- opening ---------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str) -> OCILayout:
        """Open an existing layout; raise :class:`LayoutError` if ``path`` is not one."""
        root = Path(path)
        if not root.is_dir():
            raise LayoutError(
                f"{root} is not a directory",
                hint="an OCI layout is a directory with oci-layout and index.json",
            )
        try:
            marker = (root / LAYOUT_FILE).read_bytes()
        except FileNotFoundError:
            raise LayoutError(
                f"{root} is not an OCI image layout: it has no {LAYOUT_FILE} file"
            ) from None
        except OSError as e:
            raise LayoutError(f"cannot read {root / LAYOUT_FILE}: {e.strerror}") from None
        check_layout_file(marker, str(root))
        layout = cls(root)
        layout.index()
        return layout

    @classmethod
    def create(cls, path: Path | str) -> OCILayout:
        """Create a layout at ``path`` (making the directory), or open the one there.

        A directory that exists, is not empty and is not a layout is refused.
        """
        root = Path(path)
        if (root / LAYOUT_FILE).exists():
            check_layout_file((root / LAYOUT_FILE).read_bytes(), str(root))
            if not (root / INDEX_FILE).exists():
                with cls(root).locked():
                    if not (root / INDEX_FILE).exists():
                        atomic_write(root / INDEX_FILE, empty_index_bytes())
            layout = cls.open(root)
            (root / BLOBS_DIR).mkdir(exist_ok=True)
            return layout
        try:
            root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise LayoutError(f"{root} exists and is not a directory") from None
        except OSError as e:
            raise LayoutError(f"cannot create {root}: {e.strerror}") from None
        if any(root.iterdir()):
            raise LayoutError(
                f"{root} is not empty and is not an OCI image layout",
                hint="choose a new or empty directory",
            )
        (root / BLOBS_DIR).mkdir(exist_ok=True)
        atomic_write(root / INDEX_FILE, empty_index_bytes())
        # the marker last: a directory with oci-layout is a complete layout
        atomic_write(root / LAYOUT_FILE, layout_file_bytes())
        return cls(root)

    # -- blobs -----------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        """Where the blob ``digest`` lives (whether or not it exists)."""
        path = self.root / BLOBS_DIR / digest.algorithm / digest.hex
        real = path.resolve()
        if not real.is_relative_to(self._real_root):
            raise LayoutError(
                f"blob path {path} resolves outside the layout {self.root}",
                hint="the layout's blobs directory is a link to elsewhere",
            )
        return path

    def has_blob(self, digest: Digest, size: int | None = None) -> bool:
        """Whether the blob exists (and, if ``size`` is given, has that size)."""
        try:
            st = self.blob_path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def _blob_dir(self, digest: Digest) -> Path:
        d = self.root / BLOBS_DIR / digest.algorithm
        d.mkdir(parents=True, exist_ok=True)
        return d

    def add_blob_file(self, src: Path | str, digest: Digest, *, replace: bool = False) -> Path:
        """Put the already-verified file ``src`` into the layout as blob ``digest``.

        A copy of it: a reflink where the filesystem can clone, else a copy in the
        kernel; never a hard link (see the module docstring).  A blob already
        present is kept, unless ``replace`` (the one there is damaged).  Returns
        the blob's path.
        """
        dest = self.blob_path(digest)
        if not replace and dest.exists():
            return dest
        self._blob_dir(digest)
        try:
            src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LayoutError(f"cannot add blob {digest}: {src} does not exist") from None
        try:
            # No fsync, as for the cache's files and archive files: a pull that is
            # interrupted leaves no final name behind, and a GiB forced to disk would
            # double the time of a pull.
            with replacing(dest, digest.hex[:16]) as fd:
                clone_or_copy(src_fd, fd)
        finally:
            os.close(src_fd)
        return dest

    def write_blob(self, data: bytes, digest: Digest | None = None) -> Digest:
        """Store ``data`` as a blob, checking it against ``digest`` when given."""
        if digest is None:
            digest = Digest.of(data)
        else:
            v = Verifier(digest, len(data))
            v.update(data)
            v.verify()
        dest = self.blob_path(digest)
        with contextlib.suppress(OSError):
            if dest.stat().st_size == len(data) and dest.read_bytes() == data:
                return digest  # already there, and intact
        self._blob_dir(digest)
        atomic_write(dest, data)
        return digest

    def open_blob(self, digest: Digest) -> BinaryIO:
        """Open a blob for reading (not verified; see :meth:`read_blob`)."""
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise LayoutError(f"blob {digest} is missing from the layout {self.root}") from None

    def read_blob(self, digest: Digest, max_size: int = MAX_MANIFEST_SIZE) -> bytes:
        """Read and verify a small blob (a manifest, index or config)."""
        with self.open_blob(digest) as f:
            return read_verified(f, digest, max_size)

    def iter_blobs(self) -> Iterator[Digest]:
        """The digests of all blobs stored (temporary files skipped)."""
        base = self.root / BLOBS_DIR
        if not base.is_dir():
            return
        for alg_dir in sorted(base.iterdir()):
            if not alg_dir.is_dir():
                continue
            for f in sorted(alg_dir.iterdir()):
                try:
                    yield Digest(alg_dir.name, f.name)
                except DerrickError:
                    continue

    # -- index -----------------------------------------------------------

    def _index_bytes(self) -> bytes:
        path = self.root / INDEX_FILE
        try:
            with open(path, "rb") as f:
                return f.read(MAX_INDEX_SIZE + 1)
        except FileNotFoundError:
            raise LayoutError(
                f"{self.root} is not a complete OCI layout: index.json is missing"
            ) from None
        except OSError as e:
            raise LayoutError(f"cannot read {path}: {e.strerror}") from None

    def index(self) -> Index:
        """The parsed ``index.json``."""
        return parse_index_json(self._index_bytes(), str(self.root))

    def names(self) -> list[str]:
        """Names of the index entries (ref.name, else image name), in index order."""
        return entry_names(self.index().manifests)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the layout's exclusive lock, which every change of ``index.json`` takes.

        The lock is a ``flock`` on the layout directory itself, opened read-only,
        so it needs no file in the layout and goes away with the process.
        """
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # also releases the lock

    def add_manifest(
        self,
        desc: Descriptor,
        *,
        ref_name: str | None = None,
        image_name: str | None = None,
    ) -> Descriptor:
        """Add ``desc`` (a manifest or index stored as a blob) to ``index.json``.

        An entry with the same full ``image_name`` is replaced (a reference names
        one image); without an ``image_name``, an entry with the same ``ref_name``
        and no full name either.  Entries of other images keep their place, even
        under the same tag, and an identical entry is not duplicated.  The index
        is read, changed and rewritten holding the layout's lock
        (:meth:`locked`).  Returns the descriptor as written.
        """
        if not self.has_blob(desc.digest, desc.size):
            raise LayoutError(
                f"cannot add {desc.digest} to the index of {self.root}: "
                "its blob is missing or has the wrong size",
                hint="write the manifest blob first",
            )
        new = named_descriptor(desc, ref_name, image_name)
        new_ann = new.annotations or {}
        with self.locked():
            raw = self._index_bytes()
            index = parse_index_json(raw, str(self.root))
            obj = json.loads(raw)
            kept: list[Any] = []
            for item, parsed in zip(obj["manifests"], index.manifests, strict=True):
                ann = parsed.annotations or {}
                if image_name is not None and ann.get(ANNOTATION_IMAGE_NAME) == image_name:
                    continue
                if (
                    image_name is None
                    and ref_name is not None
                    and ann.get(ANNOTATION_REF_NAME) == ref_name
                    and ANNOTATION_IMAGE_NAME not in ann
                ):
                    continue
                if parsed.digest == new.digest and ann == new_ann:
                    continue
                kept.append(item)
            kept.append(new.to_json())
            obj["manifests"] = kept
            obj.setdefault("schemaVersion", 2)
            atomic_write(self.root / INDEX_FILE, dump_json(obj))
        return new

    def tagged(self, ref_name: str) -> list[Descriptor]:
        """The index entries whose ref.name is ``ref_name``, in index order."""
        return [
            d
            for d in self.index().manifests
            if (d.annotations or {}).get(ANNOTATION_REF_NAME) == ref_name
        ]

    def resolve(self, name: str | None = None) -> Descriptor:
        """The index entry called ``name`` (ref.name, image name or digest).

        With ``name`` None the layout must hold exactly one entry.
        """
        return resolve_entry(self.index().manifests, name, f"the OCI layout {self.root}")
