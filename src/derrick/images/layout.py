"""An OCI image layout directory as an :class:`ImageSource` and an :class:`ImageSink`.

Built on :class:`~derrick.layout.oci.OCILayout`, whose rules it keeps: ``index.json``
changes are made holding the layout's lock, an entry's
``org.opencontainers.image.ref.name`` is the tag (the full name, for a sink made with
``full_ref_names``) and its ``io.containerd.image.name`` the full name
(``registry.example/team/app:v1``; ``…/app@sha256:…`` for an image named by digest),
and an entry is replaced only by one of the same full name.  Blobs from
files elsewhere (the blob cache) are copies, reflinked where the filesystem can: never
hard links.

As a **source**, :class:`LayoutDir` resolves a tag (ref name), a full name or a digest
(:func:`~derrick.layout.oci.resolve_entry`: a tag that names images of several
repositories picks none), serves manifests verified, and blobs from any offset.  Only
blobs inside the layout are read.  With a blob store, a blob whose file the store has
a record of (or which hashes right) is offered as that file (:meth:`LayoutDir.local_blob`).
Before any blob moves, the blobs each image manifest lists are checked to be there with
the right size, so a copy of an incomplete layout fails before it writes anything.

As a **sink** (``local``, ``prefers_files``: it takes the cache's files):

* a **new** layout is assembled in a hidden directory beside the destination
  (``.NAME.derrick-tmp-XXXXXXXX``), made when the first blob is placed (with a cache
  that is once every blob is in the cache, so an interrupted copy leaves nothing beside
  the destination), and renamed into place at commit.  Another copy that moved its
  layout there first wins: this one's blobs and entries are added to that layout.  A
  copy killed meanwhile leaves its hidden directory; the next copy to the same
  destination removes it, once its owner file shows the writer is gone
  (:class:`~derrick.images.layoutwrite.HiddenDir`);
* an **existing** layout gets its blobs first and its ``index.json`` entries last; a
  blob it has is trusted only when verified (a record of the store, else a re-hash)
  and replaced when damaged.  After a failure its ``index.json`` is as it was.

``OSError``\\ s become a :class:`~derrick.errors.DiskError` naming the destination as
the user gave it (``shown``) and what is kept.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from derrick import mediatypes as mt
from derrick.digest import Digest
from derrick.errors import (
    DerrickError,
    DigestMismatchError,
    DiskError,
    LayoutError,
    ManifestError,
    Remedy,
)
from derrick.images.feed import FileBody
from derrick.images.layoutwrite import (
    HiddenDir,
    add_entries,
    disk_error,
    file_holds,
    write_stream,
)
from derrick.images.model import BlobFeed, ImageName, ImageSource, Kept, Plan, PlannedImage
from derrick.layout.oci import OCILayout, blob_file
from derrick.layout.ociindex import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    BLOBS_DIR,
    LAYOUT_FILE,
    entry_names,
    resolve_entry,
)
from derrick.layout.reader import tag_in
from derrick.manifest import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageConfig,
    ImageManifest,
    Index,
    parse_manifest,
)
from derrick.reference import Reference
from derrick.store.cache import BlobStore

__all__ = ["LayoutDir"]


class LayoutDir:
    """The OCI layout at ``path``; ``name`` is the image :meth:`resolve` takes by default.

    ``store`` is the blob store whose records say which blobs are intact (without one a
    blob is hashed to be trusted); ``shown`` is how the user named the directory (for
    messages; default: ``path``).  ``full_ref_names`` names images written here by their
    full name in ``org.opencontainers.image.ref.name`` too (a mirror of several
    repositories, whose tags would clash for tools that look only at that annotation).
    """

    ordered = False
    local = True
    prefers_files = True

    def __init__(
        self,
        path: Path | str,
        *,
        name: str | None = None,
        store: BlobStore | None = None,
        shown: str | None = None,
        full_ref_names: bool = False,
    ) -> None:
        self.path = Path(path)
        self.full_ref_names = full_ref_names
        self.shown = shown if shown is not None else str(path)
        self.description = f"the OCI layout {self.shown}"
        self.default = name
        self.store = store
        #: after a commit: the full names of the images the layout holds under a tag this
        #: copy used, when that tag names more than one image (then it picks none)
        self.same_tag: list[str] = []
        self._index: Index | None = None
        self._lock = threading.Lock()
        self._plan: Plan | None = None
        self._existing: OCILayout | None = None
        self._work: OCILayout | None = None
        self._hidden: HiddenDir | None = None
        self._tops: dict[Digest, list[tuple[Descriptor, tuple[ImageName, ...]]]] = {}
        self._placed = 0  # blobs put into an existing layout

    def __repr__(self) -> str:
        return f"LayoutDir({str(self.path)!r})"

    # -- reading -------------------------------------------------------------------------

    def _entries(self) -> list[Descriptor]:
        if self._index is None:
            self._index = OCILayout.open(self.path).index()
        return list(self._index.manifests)

    def _blob_file(self, digest: Digest, root: Path | None = None) -> Path | None:
        """The blob's file if it is a regular file inside the layout, else None."""
        return blob_file(root if root is not None else self.path, digest)

    def resolve(self, name: str | None = None) -> Descriptor:
        return resolve_entry(self._entries(), name or self.default, self.description)

    def names(self) -> list[str]:
        return entry_names(self._entries())

    def tags(self, name: str | None = None) -> tuple[str, ...]:
        """The tags the image ``name`` carries here (its ref name, its full name's), each
        once."""
        ann = self.resolve(name).annotations or {}
        out: list[str] = []
        for value in (ann.get(ANNOTATION_REF_NAME), ann.get(ANNOTATION_IMAGE_NAME)):
            tag = tag_in(value) if value else None
            if tag is not None and tag not in out:
                out.append(tag)
        return tuple(out)

    def image_name(self, name: str | None = None) -> ImageName:
        full = (self.resolve(name).annotations or {}).get(ANNOTATION_IMAGE_NAME)
        repository = None
        if full:
            try:
                repository = Reference.parse(full, default_tag=None).name
            except DerrickError:
                repository = None
        tags = self.tags(name)
        return ImageName(repository, tags[0] if len(tags) == 1 else None)

    def manifest(self, desc: Descriptor) -> bytes:
        path = self._blob_file(desc.digest)
        if path is None:
            raise LayoutError(
                f"manifest {desc.digest} is missing from {self.description}",
                hint="a multi-platform image needs every platform",
                remedy=Remedy("all-platforms"),
            )
        what = f"manifest {desc.digest} in {self.description}"
        if desc.size > MAX_MANIFEST_SIZE:
            raise ManifestError(
                f"{what} is {desc.size} bytes, more than the {MAX_MANIFEST_SIZE} byte limit"
            )
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_MANIFEST_SIZE + 1)
        except OSError as e:
            raise LayoutError(f"cannot read {what}: {e.strerror or e}") from None
        if len(raw) != desc.size:
            raise LayoutError(f"{what} is {len(raw)} bytes, its descriptor says {desc.size}")
        if Digest.of(raw, desc.digest.algorithm) != desc.digest:
            raise DigestMismatchError(
                f"{what} does not match its content",
                hint="the layout is damaged; pull or save the image again",
            )
        if mt.is_image_manifest(desc.media_type):
            self._check_blobs(raw, desc)
        return raw

    def _check_blobs(self, raw: bytes, desc: Descriptor) -> None:
        """Every blob the image manifest lists is here with its size (foreign ones may not
        be): checked before anything is copied."""
        try:
            m = parse_manifest(raw, desc.media_type)
        except ManifestError:
            return  # the plan parses it again, and says what is wrong
        if not isinstance(m, ImageManifest):
            return
        for d in (m.config, *m.layers):
            path = self._blob_file(d.digest)
            if path is None:
                if d.urls:
                    continue  # a foreign layer, fetched by clients from its URLs
                raise LayoutError(f"blob {d.digest} is missing from {self.description}")
            size = path.stat().st_size
            if size != d.size:
                raise LayoutError(
                    f"blob {d.digest} in {self.description} is {size} bytes, "
                    f"its manifest says {d.size}"
                )

    def has_blob(self, desc: Descriptor) -> bool:
        """As a source: the blob's file is there, of its size.  As a sink (after
        :meth:`begin`): the existing layout holds it, verified."""
        if self._plan is not None:
            return self._holds(desc)
        path = self._blob_file(desc.digest)
        return path is not None and path.stat().st_size == desc.size

    def open_blob(self, desc: Descriptor, offset: int = 0) -> FileBody:
        path = self._blob_file(desc.digest)
        if path is None:
            raise LayoutError(f"blob {desc.digest} is missing from {self.description}")
        try:
            return FileBody(path, offset)
        except OSError as e:
            raise LayoutError(f"cannot read {path}: {e.strerror or e}") from None

    def local_blob(self, desc: Descriptor) -> Path | None:
        path = self._blob_file(desc.digest)
        if path is None or self.store is None or not self.store.verify_file(path, desc):
            return None
        return path

    def close(self) -> None:
        pass

    # -- writing -------------------------------------------------------------------------

    def begin(self, plan: Plan) -> None:
        """Refuse an image whose config is not one; open the existing layout, or check
        the destination can become one."""
        for entry in plan.entries:
            shown = str(entry.names[0]) if entry.names and entry.names[0].repository else None
            for img in entry.images:
                if img.manifest.is_image:
                    _check_config(img, shown or (entry.source.description if entry.source else ""))
        self._plan = plan
        self._existing = None
        self._placed = 0
        self._tops = {entry.top.digest: [] for entry in plan.entries}
        self.same_tag = []
        dest = self.path
        try:
            if (dest / LAYOUT_FILE).exists():
                self._existing = OCILayout.create(dest)
            elif dest.exists() or dest.is_symlink():
                if not dest.is_dir():
                    raise LayoutError(f"{self.shown} exists and is not a directory")
                if any(dest.iterdir()):
                    raise LayoutError(
                        f"{self.shown} is not empty and is not an OCI image layout",
                        hint="choose a new or empty directory",
                    )
        except OSError as e:
            raise DiskError(
                f"cannot write to the OCI layout {self.shown}: {e.strerror or e}", errno=e.errno
            ) from None

    def _holds(self, desc: Descriptor) -> bool:
        """Whether the existing layout has the blob, verified (a record, else a hash)."""
        if self._existing is None:
            return False
        path = self._blob_file(desc.digest)
        return path is not None and self._verified(path, desc)

    def _verified(self, path: Path, desc: Descriptor) -> bool:
        if self.store is not None:
            return self.store.verify_file(path, desc)
        return file_holds(path, desc)

    def mount_blob(self, desc: Descriptor, source: ImageSource) -> bool:
        return False

    def _target(self) -> OCILayout:
        """The layout blobs go into: the existing one, else the hidden new one."""
        if self._existing is not None:
            return self._existing
        with self._lock:
            if self._work is None:
                parent = self.path.parent
                parent.mkdir(parents=True, exist_ok=True)
                self._hidden = HiddenDir(parent, f".{self.path.name}")
                try:
                    self._work = OCILayout.create(self._hidden.path)
                except BaseException:
                    # the directory was made, its index.json not (a full disk): it goes
                    self._release_hidden()
                    raise
            return self._work

    def put_blob(self, feed: BlobFeed) -> None:
        desc = feed.desc
        try:
            layout = self._target()
            if feed.local is not None:
                placed = layout.add_blob_file(feed.local, desc.digest, replace=True)
            else:
                placed = write_stream(layout, feed)
        except OSError as e:
            raise self._disk_error(e) from None
        if self.store is not None:
            self.store.remember(placed, desc)
        if self._existing is not None:
            with self._lock:
                self._placed += 1

    def put_manifest(self, desc: Descriptor, raw: bytes, names: Sequence[ImageName] = ()) -> None:
        try:
            self._target().write_blob(raw, desc.digest)
        except OSError as e:
            raise self._disk_error(e) from None
        if desc.digest in self._tops:
            self._tops[desc.digest].append((desc, tuple(names)))

    def commit(self) -> None:
        try:
            if self._existing is not None:
                self._name(self._existing)
                return
            work = self._target()
            self._name(work)
            try:
                os.rename(work.root, self.path)  # an empty directory there is replaced
                self._work = None
                return
            except OSError as e:
                if (
                    e.errno not in (errno.ENOTEMPTY, errno.EEXIST)
                    or not (self.path / LAYOUT_FILE).exists()
                ):
                    raise LayoutError(
                        f"cannot move the new layout into place at {self.shown}: {e.strerror}",
                        hint="choose a new or empty directory",
                    ) from None
            # Another copy moved its layout there first: add this one's images to it.
            self._merge_into(OCILayout.create(self.path), work)
        except OSError as e:
            raise self._disk_error(e) from None
        finally:
            self.abort()

    def abort(self) -> None:
        self._work = None
        self._release_hidden()

    def _release_hidden(self) -> None:
        """The hidden directory removed (if not renamed into place), and its owner file."""
        hidden, self._hidden = self._hidden, None
        if hidden is not None:
            hidden.remove()

    def kept(self) -> list[Kept]:
        """After an abort: blobs put into an existing layout (a new one's directory is gone)."""
        if self._existing is None or not self._placed:
            return []
        return [(f"the {self._placed} blobs copied into {self.shown} (unnamed in its index)", 2)]

    def _name(self, layout: OCILayout) -> None:
        """Add the index entries (the last step: until then the layout does not name the
        images); note tags that now name several images."""
        self.same_tag = add_entries(layout, self._tops.values(), full_ref_names=self.full_ref_names)

    def _merge_into(self, dest: OCILayout, work: OCILayout) -> None:
        """Move the blobs ``dest`` lacks (or holds damaged) from ``work``; then name."""
        known = {d.digest: d for d in self._plan.blobs} if self._plan else {}
        if self._plan:
            known.update({d.digest: d for d, _ in self._plan.manifests})
        for digest in work.iter_blobs():
            desc = known.get(digest)
            there = self._blob_file(digest, dest.root)
            if desc is not None and there is not None and self._verified(there, desc):
                continue
            target = dest.root / BLOBS_DIR / digest.algorithm / digest.hex
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(work.root / BLOBS_DIR / digest.algorithm / digest.hex, target)
            if desc is not None and self.store is not None:
                self.store.remember(target, desc)
        self._name(dest)

    def _disk_error(self, e: OSError) -> DiskError:
        if self._existing is not None:
            kept = "its index.json is unchanged (blobs copied into it are kept)"
        elif self.store is not None:
            kept = (
                "the unfinished layout was removed and the downloaded blobs stay in "
                f"the blob cache {self.store.root}"
            )
        else:
            kept = "the unfinished layout was removed"
        return disk_error(e, self.shown, kept)


def _check_config(image: PlannedImage, where: str) -> None:
    """An image's config must parse as one: refused before anything is written."""
    try:
        ImageConfig.parse(image.config)
    except ManifestError as e:
        raise ManifestError(
            f"config {image.manifest.config.digest} of {where}: {e.message}"
        ) from None
