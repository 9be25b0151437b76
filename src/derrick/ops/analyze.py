"""Look into images without unpacking them: flatten, export, diff and per-layer views.

Everything here streams layers (see :func:`derrick.ops.images.layer_stream`)
and keeps only file metadata in memory, never file contents, and never writes
a layer to disk.

:func:`flatten` applies the layers' changesets (whiteouts, opaque directories,
same-layer rules as in :mod:`derrick.ops.unpack`) to an in-memory listing of
the final filesystem, by path.  Unlike unpacking it does not follow symlinks
in parent components: each path is taken as the tar names it.

:func:`export_image` writes the flattened filesystem as one tar in two passes
over the layers: the first decides which entry of which layer survives at
each path, the second streams those entries out.  Directories come first;
hard links follow the file they share content with, and a hard link whose
original path a later layer deleted carries the content itself.

:func:`diff_images` compares two flattened listings; :func:`layer_report`
describes each layer (history, sizes, largest files).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import os
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from derrick.errors import LayoutError
from derrick.layout.tarread import Kind, TarEntry, TarReader, whiteout_of
from derrick.ops.images import ImageLayers, LayerBlob, layer_stream

__all__ = [
    "FileInfo",
    "FlatImage",
    "LayerInfo",
    "diff_images",
    "export_image",
    "flatten",
    "layer_report",
]

Slot = tuple[int, int]  # (layer index, entry number within the layer)


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
    layer: int = -1  # index of the layer that wrote it (-1: implied parent directory)
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
    image: ImageLayers,
    *,
    hash_files: bool = False,
    on_layer: Callable[[LayerBlob], None] | None = None,
) -> FlatImage:
    """The final filesystem of ``image`` by path, read from its layer streams.

    ``hash_files`` computes each regular file's sha256 (for comparing contents).
    Each layer's diff_id is verified.
    """
    flat = FlatImage()
    for layer in image.layers:
        if on_layer is not None:
            on_layer(layer)
        flat.label = layer.label
        flat.layer_paths = set()
        with layer_stream(layer) as (reader, verifier):
            for seq, entry in enumerate(reader):
                wo = whiteout_of(entry.path)
                if wo is not None:
                    flat.whiteout(*wo)
                    continue
                digest = _hash_data(reader) if hash_files and entry.kind == "file" else None
                flat.add(entry, (layer.index, seq), digest)
            reader.drain()
            verifier.verify()
    return flat


# == export ===========================================================================

_TAR_TYPES: dict[str, bytes] = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}
_RECORD = 20 * 512


def _header(entry: TarEntry, name: str, *, link_to: str | None = None) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if link_to is not None else _TAR_TYPES[entry.kind]
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.uname, info.gname = entry.uname, entry.gname
    info.mtime = entry.mtime
    info.size = entry.size if link_to is None and entry.kind == "file" else 0
    info.linkname = link_to if link_to is not None else entry.linkname
    info.devmajor, info.devminor = entry.devmajor, entry.devminor
    if entry.xattrs:
        info.pax_headers = {
            f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
            for k, v in entry.xattrs.items()
        }
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class _Out:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.n = 0

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.n += len(data)

    def pad(self) -> None:
        if self.n % 512:
            self.write(bytes(512 - self.n % 512))


@dataclass(frozen=True)
class ExportResult:
    destination: str
    entries: int
    bytes_written: int


def write_flat_tar(
    image: ImageLayers,
    out: BinaryIO,
    *,
    on_layer: Callable[[LayerBlob], None] | None = None,
) -> tuple[int, int]:
    """Write the flattened filesystem of ``image`` to ``out`` as a tar.

    Returns the number of entries and of bytes written.
    """
    flat = flatten(image, on_layer=on_layer)
    # Which surviving paths each content-bearing entry must produce.
    groups: dict[Slot, list[FileInfo]] = {}
    dirs: list[FileInfo] = []
    for info in flat.listing():
        if info.kind == "dir":
            dirs.append(info)
        else:
            groups.setdefault(info.slot, []).append(info)
    for members in groups.values():
        # The entry's own path first when it survives; hard links after it.
        members.sort(key=lambda m: (m.link_to is not None, m.path))
    w = _Out(out)
    count = 0
    for d in dirs:
        entry = d.entry or TarEntry(d.path, "dir", d.mode, d.uid, d.gid, d.mtime, 0, "")
        w.write(_header(entry, d.path))
        count += 1
    if groups:
        for layer in image.layers:
            if not any(slot[0] == layer.index for slot in groups):
                continue
            with layer_stream(layer) as (reader, verifier):
                for seq, entry in enumerate(reader):
                    group = groups.get((layer.index, seq))
                    if not group:
                        continue
                    first = group[0].path
                    w.write(_header(entry, first))
                    if entry.kind == "file":
                        for piece in reader.data():
                            w.write(piece)
                        w.pad()
                    for m in group[1:]:
                        w.write(_header(entry, m.path, link_to=first))
                    count += len(group)
                reader.drain()
                verifier.verify()
    w.write(bytes(1024))
    if w.n % _RECORD:
        w.write(bytes(_RECORD - w.n % _RECORD))
    return count, w.n


@contextlib.contextmanager
def _atomic_output(dest: str, stdout: BinaryIO | None) -> Iterator[BinaryIO]:
    if dest == "-":
        f = stdout or sys.stdout.buffer
        yield f
        f.flush()
        return
    target = Path(dest)
    parent = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=parent)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            yield f
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o644 & ~mask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def export_image(
    image: ImageLayers,
    dest: str | Path,
    *,
    stdout: BinaryIO | None = None,
    on_layer: Callable[[LayerBlob], None] | None = None,
) -> ExportResult:
    """Write the flattened filesystem of ``image`` as one tar to ``dest`` (``"-"``: stdout).

    A file is written under a temporary name and renamed when complete.
    """
    with _atomic_output(str(dest), stdout) as f:
        entries, size = write_flat_tar(image, f, on_layer=on_layer)
    return ExportResult(str(dest), entries, size)


# == diff =============================================================================

_COMPARED = ("kind", "size", "mode", "uid", "gid", "digest", "target")


def _changes(a: FileInfo, b: FileInfo) -> list[str]:
    out = []
    for name in _COMPARED:
        if getattr(a, name) != getattr(b, name):
            out.append("type" if name == "kind" else "content" if name == "digest" else name)
    return out


def _unique(layers: tuple[LayerBlob, ...], key: Callable[[LayerBlob], str]) -> list[LayerBlob]:
    seen: dict[str, LayerBlob] = {}
    for x in layers:
        seen.setdefault(key(x), x)
    return list(seen.values())


def diff_images(
    a: ImageLayers,
    b: ImageLayers,
    *,
    on_layer: Callable[[LayerBlob], None] | None = None,
) -> dict[str, Any]:
    """Layers and files that differ between two images, as JSON-ready data."""

    def key(x: LayerBlob) -> str:
        return str(x.digest) if x.digest else str(x.diff_id)

    def layer_json(x: LayerBlob) -> dict[str, Any]:
        return {
            "digest": str(x.digest) if x.digest else None,
            "diffId": str(x.diff_id) if x.diff_id else None,
            "size": x.size,
        }

    b_keys = {key(x) for x in b.layers}
    shared_keys = {key(x) for x in a.layers if key(x) in b_keys}
    shared = [layer_json(x) for x in _unique(a.layers, key) if key(x) in shared_keys]
    fa = flatten(a, hash_files=True, on_layer=on_layer).files
    fb = flatten(b, hash_files=True, on_layer=on_layer).files
    added = [fb[p].to_json() for p in sorted(fb.keys() - fa.keys())]
    removed = [fa[p].to_json() for p in sorted(fa.keys() - fb.keys())]
    changed: list[dict[str, Any]] = []
    for p in sorted(fa.keys() & fb.keys()):
        fields = _changes(fa[p], fb[p])
        if fields:
            changed.append(
                {
                    "path": p,
                    "changes": fields,
                    "before": fa[p].to_json(),
                    "after": fb[p].to_json(),
                    "sizeDelta": fb[p].size - fa[p].size,
                }
            )
    added_bytes = sum(x["size"] for x in added)
    removed_bytes = sum(x["size"] for x in removed)
    changed_delta = sum(x["sizeDelta"] for x in changed)
    return {
        "image1": {"name": a.name, "digest": str(a.digest) if a.digest else None},
        "image2": {"name": b.name, "digest": str(b.digest) if b.digest else None},
        "sharedLayers": shared,
        "layersOnlyIn1": [layer_json(x) for x in a.layers if key(x) not in shared_keys],
        "layersOnlyIn2": [layer_json(x) for x in b.layers if key(x) not in shared_keys],
        "added": added,
        "removed": removed,
        "changed": changed,
        "summary": {
            "added": len(added),
            "removed": len(removed),
            "changed": len(changed),
            "addedBytes": added_bytes,
            "removedBytes": removed_bytes,
            "sizeDelta": added_bytes - removed_bytes + changed_delta,
        },
    }


# == layers ===========================================================================


@dataclass(frozen=True)
class LayerInfo:
    index: int
    digest: str | None
    media_type: str | None
    size: int | None  # compressed (as stored)
    uncompressed_size: int
    diff_id: str
    created_by: str | None
    created: str | None
    comment: str | None
    entries: int
    files: int
    whiteouts: int
    file_bytes: int
    largest: list[tuple[str, int]]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "digest": self.digest,
            "mediaType": self.media_type,
            "size": self.size,
            "uncompressedSize": self.uncompressed_size,
            "diffId": self.diff_id,
            "createdBy": self.created_by,
            "created": self.created,
            "comment": self.comment,
            "entries": self.entries,
            "files": self.files,
            "whiteouts": self.whiteouts,
            "fileBytes": self.file_bytes,
            "largestFiles": [{"path": p, "size": s} for p, s in self.largest],
        }


def layer_report(
    image: ImageLayers,
    *,
    top: int = 5,
    on_layer: Callable[[LayerBlob], None] | None = None,
) -> list[LayerInfo]:
    """Per layer: the history entry that made it, sizes and its ``top`` largest files.

    History entries marked ``empty_layer`` made no layer and are skipped when
    matching history to layers.
    """
    history = [h for h in image.config.history if not h.empty_layer]
    out = []
    for layer in image.layers:
        if on_layer is not None:
            on_layer(layer)
        h = history[layer.index] if layer.index < len(history) else None
        largest: list[tuple[int, str]] = []
        entries = files = whiteouts = file_bytes = 0
        with layer_stream(layer) as (reader, verifier):
            for entry in reader:
                entries += 1
                if whiteout_of(entry.path) is not None:
                    whiteouts += 1
                    continue
                if entry.kind != "file":
                    continue
                files += 1
                file_bytes += entry.size
                if top > 0:
                    item = (entry.size, entry.path)
                    if len(largest) < top:
                        heapq.heappush(largest, item)
                    elif item > largest[0]:
                        heapq.heapreplace(largest, item)
            reader.drain()
            diff_id = verifier.verify()
        out.append(
            LayerInfo(
                index=layer.index,
                digest=str(layer.digest) if layer.digest else None,
                media_type=layer.media_type,
                size=layer.size,
                uncompressed_size=verifier.size,
                diff_id=str(diff_id),
                created_by=h.created_by if h else None,
                created=h.created if h else None,
                comment=h.comment if h else None,
                entries=entries,
                files=files,
                whiteouts=whiteouts,
                file_bytes=file_bytes,
                largest=[(p, s) for s, p in sorted(largest, reverse=True)],
            )
        )
    return out
