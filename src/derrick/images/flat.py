"""An image's final filesystem as metadata by path, read from its layer streams.

:func:`flatten` applies the layers' changesets (whiteouts, opaque directories, the rule
that a whiteout only affects lower layers, as :mod:`derrick.layout.rootfs` applies them
on disk) to an in-memory listing, :class:`FlatImage`.  Only file metadata is kept, never
file contents, and no layer is written to disk.  Unlike unpacking it does not follow
symlinks in parent components: each path is taken as the tar names it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from derrick.errors import LayoutError
from derrick.images.layers import Layer
from derrick.images.model import Progress
from derrick.images.view import Image
from derrick.layout.tarread import Kind, TarEntry, TarReader, whiteout_of

__all__ = ["FileInfo", "FlatImage", "Slot", "flatten"]

Slot = tuple[int, int]  # (layer number, entry number within the layer)


@dataclass(slots=True)
class FileInfo:
    """One path of a flattened filesystem."""

    path: str
    kind: Kind  # never "hardlink": a hard link takes the kind of what it links to
    mode: int
    uid: int
    gid: int
    size: int
    mtime: float
    target: str = ""  # symlink target
    digest: str | None = None  # sha256 of a regular file's content, when hashed
    layer: int = -1  # number of the layer that wrote it (-1: implied parent directory)
    slot: Slot = (-1, -1)  # the entry whose content this path holds
    link_to: str | None = None  # for a hard link: the path it was linked to
    entry: TarEntry | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "type": self.kind,
            "size": self.size,
            "mode": f"{self.mode:04o}",
            "uid": self.uid,
            "gid": self.gid,
        }
        if self.kind == "symlink":
            out["target"] = self.target
        if self.digest:
            out["digest"] = f"sha256:{self.digest}"
        return out


class FlatImage:
    """The final filesystem of an image, as metadata by path."""

    def __init__(self) -> None:
        self.files: dict[str, FileInfo] = {}
        self.children: dict[str, set[str]] = {"": set()}
        self.layer_paths: set[str] = set()
        self.label = "layer"

    # -- changes ---------------------------------------------------------

    def _remove(self, path: str) -> None:
        info = self.files.pop(path, None)
        if info is None:
            return
        parent, _, name = path.rpartition("/")
        self.children.get(parent, set()).discard(name)
        kids = self.children.pop(path, None)
        if kids:
            for child in list(kids):
                self._remove(f"{path}/{child}")

    def _remove_lower(self, path: str) -> None:
        info = self.files.get(path)
        if info is None:
            return
        if path not in self.layer_paths:
            self._remove(path)
        elif info.kind == "dir":
            for child in list(self.children.get(path, ())):
                self._remove_lower(f"{path}/{child}")

    def whiteout(self, directory: str, name: str | None) -> None:
        if name == "":
            return
        if name is None:
            for child in list(self.children.get(directory, ())):
                self._remove_lower(f"{directory}/{child}" if directory else child)
        else:
            self._remove_lower(f"{directory}/{name}" if directory else name)

    def _parent(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        if parent and parent not in self.files:
            self._parent(parent)
            self.files[parent] = FileInfo(parent, "dir", 0o755, 0, 0, 0, 0.0)
            self.children[parent] = set()
        elif parent and self.files[parent].kind not in ("dir", "symlink"):
            raise LayoutError(
                f"{self.label}: cannot create {path!r}: {parent!r} is not a directory"
            )
        self.children.setdefault(parent, set()).add(name)

    def add(self, entry: TarEntry, slot: Slot, digest: str | None) -> None:
        path = entry.path
        if not path:
            return  # the root directory itself
        touched = path
        while touched and touched not in self.layer_paths:
            self.layer_paths.add(touched)
            touched = touched.rpartition("/")[0]
        old = self.files.get(path)
        if old is not None and not (old.kind == "dir" and entry.kind == "dir"):
            self._remove(path)
        self._parent(path)
        if entry.kind == "hardlink":
            target = self.files.get(entry.linkname)
            if target is None or target.kind == "dir":
                raise LayoutError(
                    f"{self.label}: hard link {path!r} points to {entry.linkname!r}, "
                    + ("a directory" if target else "which does not exist")
                )
            self.files[path] = FileInfo(
                path,
                target.kind,
                target.mode,
                target.uid,
                target.gid,
                target.size,
                target.mtime,
                target.target,
                target.digest,
                slot[0],
                target.slot,
                entry.linkname,
                target.entry,
            )
            return
        self.files[path] = FileInfo(
            path,
            entry.kind,
            entry.mode,
            entry.uid,
            entry.gid,
            entry.size,
            entry.mtime,
            entry.linkname if entry.kind == "symlink" else "",
            digest,
            slot[0],
            slot,
            None,
            entry,
        )
        if entry.kind == "dir":
            self.children.setdefault(path, set())

    # -- reading ---------------------------------------------------------

    def listing(self) -> list[FileInfo]:
        return [self.files[p] for p in sorted(self.files)]


def _hash_data(reader: TarReader) -> str:
    h = hashlib.sha256()
    for piece in reader.data():
        h.update(piece)
    return h.hexdigest()


def flatten(
    image: Image,
    *,
    hash_files: bool = False,
    on_layer: Callable[[Layer], None] | None = None,
    progress: Progress | None = None,
) -> FlatImage:
    """The final filesystem of ``image`` by path, read from its layer streams.

    ``hash_files`` computes each regular file's sha256 (for comparing contents).
    Each layer's blob digest and diff_id are verified.
    """
    flat = FlatImage()
    layers = image.filesystem_layers()
    with image.read_layers(layers, progress=progress) as reading:
        for layer in layers:
            if on_layer is not None:
                on_layer(layer)
            flat.label = layer.label
            flat.layer_paths = set()
            with reading.tar(layer) as (reader, verifier):
                for seq, entry in enumerate(reader):
                    wo = whiteout_of(entry.path)
                    if wo is not None:
                        flat.whiteout(*wo)
                        continue
                    digest = _hash_data(reader) if hash_files and entry.kind == "file" else None
                    flat.add(entry, (layer.number, seq), digest)
                reader.drain()
                verifier.verify()
    return flat
