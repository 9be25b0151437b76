"""An OCI image layout as the destination of a sync (``oci:DIR``).

Several repositories share one layout: each image is named by its full name,
``repository:tag``, in both ``org.opencontainers.image.ref.name`` (what skopeo and umoci
look up: ``oci:DIR:registry.example/team/app:v1``) and ``io.containerd.image.name`` (what
containerd and derrick read), so tags that several repositories have do not clash.  An
image stored by digest is named ``repository@digest`` in ``io.containerd.image.name``
only.  An entry is replaced only by one of the same full name (see
:mod:`derrick.images.layout`).

:class:`LayoutDestination` reads ``index.json`` once per sync: the checks of every item
look a name up in that (no request to any registry).  An image the layout names is taken
as there only when it is whole: its manifest (and an index's every child) read and hashed,
and every blob an image manifest lists present and verified (a record of the blob store,
else hashed).  Copies into the layout are :class:`~derrick.images.layout.LayoutDir` sinks
through the blob store, which keeps the blobs for later runs.
"""

from __future__ import annotations

import threading
from pathlib import Path

from derrick import mediatypes as mt
from derrick.digest import Digest
from derrick.errors import DerrickError, LayoutError
from derrick.images.layout import LayoutDir
from derrick.images.layoutwrite import file_holds
from derrick.images.plan import FOREIGN_LAYERS, MAX_INDEX_DEPTH
from derrick.layout.oci import OCILayout, blob_file
from derrick.layout.ociindex import ANNOTATION_IMAGE_NAME, LAYOUT_FILE
from derrick.manifest import MAX_MANIFEST_SIZE, Descriptor, ImageManifest, Index, parse_manifest
from derrick.store.cache import BlobStore

__all__ = ["LayoutDestination"]


class LayoutDestination:
    """The OCI layout at ``path`` as a sync writes into it; ``store`` keeps blobs (and
    records of verified files) across runs, when given."""

    def __init__(self, path: Path, store: BlobStore | None = None) -> None:
        self.path = path
        self.shown = f"oci:{path}"
        self.store = store
        self._names = self._read()
        self._whole: dict[Digest, bool] = {}
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Descriptor]:
        """The full names ``index.json`` gives its entries; nothing for a new layout."""
        path = self.path
        try:
            if not (path / LAYOUT_FILE).exists():
                if path.is_dir() and any(path.iterdir()):
                    raise LayoutError(
                        f"{self.shown}: {path} is not empty and is not an OCI image layout",
                        hint="choose a new or empty directory",
                    )
                if path.exists() and not path.is_dir():
                    raise LayoutError(f"{self.shown}: {path} exists and is not a directory")
                return {}
            entries = OCILayout.open(path).index().manifests
        except OSError as e:
            raise LayoutError(f"cannot read the OCI layout {path}: {e.strerror or e}") from None
        names: dict[str, Descriptor] = {}
        for desc in entries:
            name = (desc.annotations or {}).get(ANNOTATION_IMAGE_NAME)
            if name:
                names[name] = desc
        return names

    def named(self, name: str) -> Descriptor | None:
        """What the full name ``name`` pointed at when the sync began, if the image is
        whole in the layout."""
        desc = self._names.get(name)
        if desc is None or not self.holds(desc):
            return None
        return desc

    def holds(self, desc: Descriptor) -> bool:
        """Whether the manifest or index ``desc`` and everything under it are in the
        layout, intact (see the module docstring)."""
        with self._lock:
            known = self._whole.get(desc.digest)
        if known is None:
            try:
                known = self._holds(desc, 0)
            except (DerrickError, OSError):
                known = False
            with self._lock:
                self._whole[desc.digest] = known
        return known

    def _holds(self, desc: Descriptor, depth: int) -> bool:
        raw = self._manifest(desc)
        if raw is None or depth > MAX_INDEX_DEPTH:
            return False
        m = parse_manifest(raw, desc.media_type)
        if isinstance(m, Index):
            return all(self._holds(child, depth + 1) for child in m.manifests)
        if not isinstance(m, ImageManifest):
            return False
        for blob in (m.config, *m.layers):
            if blob.urls and blob.media_type in FOREIGN_LAYERS:
                continue  # not copied: clients fetch it from its URLs
            if not self._blob(blob):
                return False
        return True

    def _file(self, digest: Digest) -> Path | None:
        """The blob's file, if it is a regular file inside the layout."""
        return blob_file(self.path, digest)

    def _manifest(self, desc: Descriptor) -> bytes | None:
        """The manifest's bytes if its file holds them (checked against the digest)."""
        if desc.size > MAX_MANIFEST_SIZE or not (
            mt.is_index(desc.media_type) or mt.is_image_manifest(desc.media_type)
        ):
            return None
        path = self._file(desc.digest)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_MANIFEST_SIZE + 1)
        except OSError:
            return None
        if len(raw) != desc.size or Digest.of(raw, desc.digest.algorithm) != desc.digest:
            return None
        return raw

    def _blob(self, desc: Descriptor) -> bool:
        path = self._file(desc.digest)
        if path is None:
            return False
        if self.store is not None:
            return self.store.verify_file(path, desc)
        return file_holds(path, desc)

    def sink(self) -> LayoutDir:
        """A sink for one copy into the layout."""
        return LayoutDir(self.path, store=self.store, shown=self.shown, full_ref_names=True)
