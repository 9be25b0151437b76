"""What OCI archives and docker-archives share as sources: blobs read by seeking into the tar.

An archive is opened with :func:`derrick.layout.reader.open_image_source`, which indexes
its members once and refuses an unsafe one (an absolute name or ``..``, a link out of the
archive, a device or FIFO); nothing is ever extracted.  :class:`TarSource` serves its
manifests (verified, capped) and blobs (from any offset, as they are: the engine's
:class:`~derrick.images.feed.Feed` verifies them) by the member that holds each; the two
kinds add how images are named in them and, for legacy docker-archives, the manifest they
never held.

Before any blob moves, each image manifest served is checked against the archive: every
blob it lists must be there with the size it says (a foreign layer, fetched by clients from
its URLs, may be missing).  So a damaged archive is refused while the copy is planned, and
nothing of it reaches a registry.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from derrick.closing import Closing
from derrick.digest import Digest, Verifier
from derrick.errors import DerrickError, LayoutError, ManifestError, Remedy
from derrick.images.model import Chunk, ImageName
from derrick.layout.ociindex import ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, blob_member
from derrick.layout.reader import ImageSource as Archive
from derrick.layout.reader import SelectedImage, tag_in
from derrick.manifest import MAX_MANIFEST_SIZE, Descriptor, ImageManifest, parse_manifest
from derrick.reference import Reference
from derrick.store.files import CHUNK

__all__ = ["MemberBody", "TarSource", "image_name_of"]


class MemberBody(Closing):
    """``left`` bytes of a member of an archive, from ``offset`` (a
    :class:`~derrick.images.model.BlobBody`); a member that ends early just ends."""

    def __init__(self, f: io.FileIO, offset: int, left: int) -> None:
        self.offset = offset
        self._f = f
        self._left = left

    def chunks(self) -> Iterator[Chunk]:
        buf = bytearray(min(CHUNK, max(self._left, 1)))
        view = memoryview(buf)
        while self._left > 0:
            n = self._f.readinto(view[: min(len(buf), self._left)])
            if not n:
                return
            self._left -= n
            yield view[:n]

    def close(self) -> None:
        self._f.close()


def image_name_of(*names: str | None) -> ImageName:
    """What an image called by ``names`` (full names or tags, best first) is called: the
    first full name with a tag (``registry.example/app:v1``), else the first tag."""
    for name in names:
        if not name or ":" not in name:
            continue
        try:
            ref = Reference.parse(name, default_tag=None)
        except DerrickError:
            continue
        if ref.tag is not None and ref.digest is None:
            return ImageName(ref.name, ref.tag)
    for name in names:
        tag = tag_in(name) if name else None
        if tag is not None:
            return ImageName(None, tag)
    return ImageName()


class TarSource(Closing):
    """The images of ``archive`` (opened by :func:`~derrick.layout.reader.open_image_source`)
    as an :class:`~derrick.images.model.ImageSource`, less the naming its kind adds."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.path = archive.path
        self.description = archive.description
        #: Blobs held under a name of their own (docker-archive files), by digest.
        self._paths: dict[Digest, str] = {}
        #: Manifests the source wrote itself (legacy docker-archive images), by digest.
        self._made: dict[Digest, bytes] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    # -- naming --------------------------------------------------------------------------

    def resolve(self, name: str | None = None) -> Descriptor:
        raise NotImplementedError  # each kind names its images its own way

    def image_name(self, name: str | None = None) -> ImageName:
        raise NotImplementedError

    def names(self) -> list[str]:
        return self.archive.names()

    def select(self, name: str | None = None) -> SelectedImage:
        """The image called ``name`` (None: the only one) and the tags it carries."""
        return self.archive.select(name)

    def _entry_name(self, desc: Descriptor) -> ImageName:
        ann = desc.annotations or {}
        return image_name_of(ann.get(ANNOTATION_IMAGE_NAME), ann.get(ANNOTATION_REF_NAME))

    # -- manifests and blobs -------------------------------------------------------------

    def _member(self, digest: Digest) -> str:
        return self._paths.get(digest) or blob_member(digest)

    def manifest(self, desc: Descriptor) -> bytes:
        what = f"manifest {desc.digest} of {self.description}"
        raw = self._made.get(desc.digest)
        if raw is None:
            if not self.archive.has_blob(desc.digest):
                index = self.archive.index
                if index is not None and any(d.digest == desc.digest for d in index.manifests):
                    raise LayoutError(
                        f"manifest {desc.digest}, which its index.json names, is missing "
                        f"from {self.description}",
                        hint="the file is incomplete; write or download it again",
                    )
                raise LayoutError(
                    f"manifest {desc.digest} is missing from {self.description}",
                    hint="a multi-platform image needs every platform",
                    remedy=Remedy("all-platforms"),
                )
            if desc.size > MAX_MANIFEST_SIZE:
                raise ManifestError(
                    f"{what} is {desc.size} bytes, more than the {MAX_MANIFEST_SIZE} byte limit"
                )
            raw = self.archive.read_blob(desc.digest)  # capped and verified
        verifier = Verifier(desc.digest, desc.size, what=what)
        verifier.update(raw)
        verifier.verify()
        self._check_blobs(desc, raw)
        return raw

    def _check_blobs(self, desc: Descriptor, raw: bytes) -> None:
        """Refuse an image manifest whose blobs are not all there, each of its size."""
        try:
            m = parse_manifest(raw, desc.media_type)
        except ManifestError:
            return  # the plan says what is wrong with it
        if not isinstance(m, ImageManifest):
            return
        for d in (m.config, *m.layers):
            if d.urls and self.archive.size_of(self._member(d.digest)) is None:
                continue  # a foreign layer, fetched by clients from its URLs
            self._size(d)

    def _size(self, desc: Descriptor) -> int:
        size = self.archive.size_of(self._member(desc.digest))
        if size is None:
            raise LayoutError(f"blob {desc.digest} is missing from {self.description}")
        if size != desc.size:
            raise LayoutError(
                f"blob {desc.digest} in {self.description} is {size} bytes, "
                f"its manifest says {desc.size}"
            )
        return size

    def has_blob(self, desc: Descriptor) -> bool:
        return self.archive.size_of(self._member(desc.digest)) == desc.size

    def open_blob(self, desc: Descriptor, offset: int = 0) -> MemberBody:
        size = self._size(desc)
        offset = offset if 0 <= offset <= size else 0
        f = self.archive.open_at(self._member(desc.digest), offset)
        return MemberBody(f, offset, size - offset)

    def local_blob(self, desc: Descriptor) -> None:
        return None  # a member of a tar is no file of its own

    def close(self) -> None:
        self.archive.close()
