"""An OCI archive -- a tar of an OCI image layout -- as an image source and sink.

As a source (:class:`OCIArchiveSource`), the archive is indexed once and read by seeking
(see :mod:`derrick.images.tarsource`).  An image is named as in a layout: by the tag in
its ``index.json`` entry's ``org.opencontainers.image.ref.name``, its full name
(``io.containerd.image.name``) or its digest; the only one needs no name.

As a sink (:class:`OCIArchiveSink`), the archive is the layout of the copy's plan:
``oci-layout``, ``index.json`` (an entry per name of each image: the tag as
``org.opencontainers.image.ref.name``, ``repository:tag`` as ``io.containerd.image.name``;
a whole index, copied with every platform, is one entry), the directories, every manifest,
then every blob, in plan order.  It is written to a file in one pass with holes, or to a
stream in order (see :mod:`derrick.images.archive`).
"""

from __future__ import annotations

from derrick.errors import LayoutError
from derrick.images.archive import (
    ArchiveSink,
    Member,
    blob_members,
    directories,
    index_entries,
    manifest_members,
)
from derrick.images.model import ImageName, Plan
from derrick.images.tarsource import TarSource
from derrick.layout.ociindex import INDEX_FILE, LAYOUT_FILE, layout_file_bytes
from derrick.manifest import Descriptor

__all__ = ["OCIArchiveSink", "OCIArchiveSource", "oci_members"]


class OCIArchiveSource(TarSource):
    """The images of an OCI archive (open it with
    :func:`derrick.images.dockerarchive.open_archive`)."""

    def resolve(self, name: str | None = None) -> Descriptor:
        desc = self.select(name).desc
        if desc is None:  # pragma: no cover - an OCI archive always names a manifest
            raise LayoutError(f"no image named {name!r} in {self.description}")
        return desc

    def image_name(self, name: str | None = None) -> ImageName:
        desc = self.select(name).desc
        if desc is None or (name is not None and name == str(desc.digest)):
            return ImageName()
        return self._entry_name(desc)


def oci_members(plan: Plan) -> list[Member]:
    """The members of the OCI archive of ``plan``, in order."""
    return [
        Member(LAYOUT_FILE, layout_file_bytes()),
        Member(INDEX_FILE, index_entries(plan)),
        *directories(plan),
        *manifest_members(plan),
        *blob_members(plan),
    ]


class OCIArchiveSink(ArchiveSink):
    """An OCI archive written to a file or a stream (see :class:`ArchiveSink`)."""

    kind = "OCI archive"

    def members(self, plan: Plan) -> list[Member]:
        return oci_members(plan)
