"""Images on disk: OCI image layouts, OCI archives and docker-archive tarballs.

- :mod:`derrick.layout.oci` -- :class:`OCILayout`, an OCI image layout directory.
- :mod:`derrick.layout.tarstream` -- :class:`TarStreamWriter`, a sequential tar writer.
- :mod:`derrick.layout.archive` -- one-pass OCI archive and docker-archive writers.
- :mod:`derrick.layout.reader` -- :func:`open_image_source` for all three formats.
"""

from __future__ import annotations

from derrick.layout.archive import (
    ArchiveImage,
    BlobFile,
    write_docker_archive,
    write_oci_archive,
)
from derrick.layout.oci import OCILayout
from derrick.layout.ociindex import ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME
from derrick.layout.reader import DockerArchiveEntry, ImageSource, open_image_source
from derrick.layout.tarstream import TarStreamWriter

__all__ = [
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_REF_NAME",
    "ArchiveImage",
    "BlobFile",
    "DockerArchiveEntry",
    "ImageSource",
    "OCILayout",
    "TarStreamWriter",
    "open_image_source",
    "write_docker_archive",
    "write_oci_archive",
]
