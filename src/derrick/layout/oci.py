"""OCI image layout directories (image-spec ``image-layout.md``).

A layout is a directory holding an ``oci-layout`` marker file
(``{"imageLayoutVersion": "1.0.0"}``), an ``index.json`` image index whose
entries name the images it holds, and content-addressed blobs under
``blobs/<algorithm>/<encoded>``.

Every file is written under a temporary name in the same directory and moved
into place with ``os.replace``, so a final name never refers to a half-written
file.  Blobs are content-addressed, so writers never disagree about one; the
read-change-write of ``index.json`` is done holding an exclusive ``flock`` on the
layout directory itself (opened read-only), so concurrent derrick processes
adding images to one layout do not lose each other's entries.  The lock needs no
file of its own in the layout; tools that do not take it (skopeo, umoci) are not
coordinated with.

Naming follows skopeo and containerd: an index entry's
``org.opencontainers.image.ref.name`` is the tag (``v1``) and its
``io.containerd.image.name`` the full reference (``registry.example/team/app:v1``).
One layout may hold images of several repositories under the same tag; an entry
is replaced only by one with the same full name.

A blob added from a file elsewhere (:meth:`OCILayout.add_blob_file`, as pulls
do from derrick's blob cache) is a copy: a reflink where the filesystem can
clone (btrfs, XFS, bcachefs: the data is shared copy-on-write, nothing is
copied), else a copy made in the kernel (``copy_file_range``).  Never a hard
link: a write into a linked file would change the cache's file and every other
layout linked to it.  On a filesystem without reflinks the copy costs about a
quarter of a second of CPU time per GiB on the development machine, and the
disk space of a second copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from derrick import mediatypes as mt
from derrick.digest import Digest, Verifier
from derrick.errors import DerrickError, LayoutError
from derrick.manifest import MAX_MANIFEST_SIZE, Descriptor, Index, parse_manifest
from derrick.store.files import Region, copy_range

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
BLOBS_DIR = "blobs"
LAYOUT_VERSION = "1.0.0"

#: Annotation naming an index entry within a layout (the tag, e.g. ``v1``).
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
#: Annotation carrying the full image reference of an index entry.
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"

#: ioctl that makes a file share another's data, copy-on-write (linux/fs.h ``FICLONE``).
FICLONE = 0x40049409

#: Largest ``index.json`` read (bytes).
MAX_INDEX_SIZE = MAX_MANIFEST_SIZE

# image-spec annotations.md: grammar of org.opencontainers.image.ref.name
_REF_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME_RE = re.compile(rf"^{_REF_COMPONENT}(?:/{_REF_COMPONENT})*$")


def layout_file_bytes() -> bytes:
    """Content of the ``oci-layout`` marker file."""
    return json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()


def empty_index_bytes() -> bytes:
    """Content of an ``index.json`` with no entries."""
    return _dump({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []})


def blob_member(digest: Digest) -> str:
    """Relative path of a blob in a layout: ``blobs/<algorithm>/<hex>``."""
    return f"{BLOBS_DIR}/{digest.algorithm}/{digest.hex}"


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def check_ref_name(ref_name: str) -> str:
    """Validate ``ref_name`` against the image-spec ``ref.name`` grammar."""
    if not _REF_NAME_RE.match(ref_name):
        raise LayoutError(
            f"invalid OCI layout reference name {ref_name!r}",
            hint="use letters, digits and . _ - : @ + / (a tag such as v1.2 or latest)",
        )
    return ref_name


def index_json(
    entries: Sequence[Descriptor], annotations: Mapping[str, str] | None = None
) -> bytes:
    """Serialise an ``index.json`` holding ``entries``."""
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [d.to_json() for d in entries],
    }
    if annotations:
        obj["annotations"] = dict(annotations)
    return _dump(obj)


def named_descriptor(
    desc: Descriptor, ref_name: str | None = None, image_name: str | None = None
) -> Descriptor:
    """``desc`` with the layout naming annotations set (those given) on top of its own."""
    annotations = dict(desc.annotations or {})
    if ref_name is not None:
        annotations[ANNOTATION_REF_NAME] = check_ref_name(ref_name)
    if image_name is not None:
        annotations[ANNOTATION_IMAGE_NAME] = image_name
    return desc.with_annotations(annotations)


def check_layout_file(data: bytes, where: str) -> None:
    """Raise :class:`LayoutError` unless ``data`` is a valid ``oci-layout`` file."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LayoutError(f"{where}: oci-layout is not valid JSON: {e}") from None
    version = obj.get("imageLayoutVersion") if isinstance(obj, dict) else None
    if version != LAYOUT_VERSION:
        raise LayoutError(
            f"{where}: unsupported OCI layout version {version!r}",
            hint=f"derrick reads image layout version {LAYOUT_VERSION}",
        )


def parse_index_json(data: bytes, where: str) -> Index:
    """Parse an ``index.json``; raise :class:`LayoutError` if it is not an image index.

    ``"manifests": null`` is read as no entries: Docker 25.0.0 and 25.0.1 write
    it when they save only untagged images.
    """
    if len(data) > MAX_INDEX_SIZE:
        raise LayoutError(f"{where}: index.json is larger than {MAX_INDEX_SIZE} bytes")
    try:
        parsed = parse_manifest(data, null_manifests=True, what=INDEX_FILE)
    except DerrickError as e:
        problem = e.message  # "index.json is not valid JSON: ..." as it is
        if not problem.startswith(f"{INDEX_FILE} is "):
            problem = f"{INDEX_FILE} is malformed: {problem.removeprefix(INDEX_FILE + ': ')}"
        raise LayoutError(f"{where}: {problem}") from None
    if not isinstance(parsed, Index):
        raise LayoutError(f"{where}: index.json is not an image index")
    return parsed


def entry_name(desc: Descriptor) -> str:
    """How an index entry is named to users: its ref.name, image name or digest."""
    ann = desc.annotations or {}
    return ann.get(ANNOTATION_REF_NAME) or ann.get(ANNOTATION_IMAGE_NAME) or str(desc.digest)


def full_name(desc: Descriptor) -> str:
    """An index entry's full image name (``io.containerd.image.name``), else its digest."""
    return (desc.annotations or {}).get(ANNOTATION_IMAGE_NAME) or str(desc.digest)


def entry_names(entries: Sequence[Descriptor], *, unnamed: bool = False) -> list[str]:
    """Names that pick each entry, each once, in index order.

    An entry's ref.name (tag) when no other image has it, else its full name (or
    its digest when it has none); an entry without a ref.name by its full name,
    and by its digest only when ``unnamed``.
    """
    images_by_tag: dict[str, set[Digest]] = {}
    for d in entries:
        tag = (d.annotations or {}).get(ANNOTATION_REF_NAME)
        if tag:
            images_by_tag.setdefault(tag, set()).add(d.digest)
    out: list[str] = []
    for d in entries:
        ann = d.annotations or {}
        tag = ann.get(ANNOTATION_REF_NAME)
        name: str | None
        if tag:
            name = tag if len(images_by_tag[tag]) == 1 else full_name(d)
        else:
            name = ann.get(ANNOTATION_IMAGE_NAME) or (str(d.digest) if unnamed else None)
        if name and name not in out:
            out.append(name)
    return out


def _listing(entries: Sequence[Descriptor]) -> str:
    """``full-name (digest)`` of each entry, or the digest alone when it has no full name."""
    out: list[str] = []
    for d in entries:
        name = full_name(d)
        item = name if name == str(d.digest) else f"{name} ({d.digest})"
        if item not in out:
            out.append(item)
    return ", ".join(out)


def resolve_entry(entries: Sequence[Descriptor], name: str | None, where: str) -> Descriptor:
    """Find the index entry called ``name``: its ref.name (tag), full name or digest.

    With ``name`` None the index must hold exactly one entry.  A tag that names
    different images (of different repositories) picks none of them: the error
    lists their full names and digests, either of which picks one.
    """
    if name is None:
        if len(entries) == 1:
            return entries[0]
        if not entries:
            raise LayoutError(f"{where} holds no images")
        raise LayoutError(
            f"{where} holds {len(entries)} images; choose one of: "
            + ", ".join(entry_names(entries, unnamed=True))
        )
    for key, what, by in (
        (ANNOTATION_REF_NAME, "tagged", "its full name or digest"),
        (ANNOTATION_IMAGE_NAME, "named", "its digest"),
    ):
        found = [d for d in entries if (d.annotations or {}).get(key) == name]
        if found and len({d.digest for d in found}) == 1:
            return found[0]
        if found:
            raise LayoutError(
                f"{where} has {len({d.digest for d in found})} different images {what} "
                f"{name!r}: {_listing(found)}",
                hint=f"pick one by {by} instead of {name!r}",
            )
    found = [d for d in entries if str(d.digest) == name]
    if found:
        return found[0]
    names = ", ".join(entry_names(entries, unnamed=True)) or "none"
    raise LayoutError(f"no image named {name!r} in {where} (it has: {names})")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _clone_or_copy(src_fd: int, dst_fd: int) -> None:
    """Make the (empty) file ``dst_fd`` a copy of ``src_fd``: a reflink if possible."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return
    except OSError:
        pass  # no reflinks here (or another filesystem): copy the bytes
    size = os.fstat(src_fd).st_size
    copy_range(Region(src_fd, 0, size), Region(dst_fd, 0, size), 0, size)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a synced temporary file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def read_verified(f: BinaryIO, digest: Digest, max_size: int, what: str = "blob") -> bytes:
    """Read all of ``f`` (at most ``max_size`` bytes) and check it against ``digest``."""
    data = f.read(max_size + 1)
    if len(data) > max_size:
        raise LayoutError(f"{what} {digest} is larger than the {max_size} byte limit")
    v = Verifier(digest, what=what)
    v.update(data)
    v.verify()
    return data


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
        blob_dir = self._blob_dir(digest)
        try:
            src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LayoutError(f"cannot add blob {digest}: {src} does not exist") from None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{digest.hex[:16]}.", suffix=".tmp", dir=blob_dir)
            try:
                try:
                    _clone_or_copy(src_fd, fd)
                finally:
                    os.close(fd)
                os.chmod(tmp, 0o644)
                # No fsync, as for the cache's files and archive files: a pull that
                # is interrupted leaves no final name behind, and a GiB forced to disk
                # would double the time of a pull.
                os.replace(tmp, dest)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
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
            atomic_write(self.root / INDEX_FILE, _dump(obj))
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
