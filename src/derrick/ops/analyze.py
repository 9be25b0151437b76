"""Look into images without unpacking them: what differs between two, and what each
layer holds.

:func:`diff_images` compares the flattened filesystems of two images
(:func:`~derrick.images.flat.flatten`) and their layers; :func:`layer_report` describes
each layer (the history entry that made it, sizes, largest files).  Layers are streamed
and verified, never written to disk; only file metadata is kept in memory.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from derrick.digest import Digest
from derrick.images.flat import FileInfo, flatten
from derrick.images.layers import Layer
from derrick.images.model import Progress
from derrick.images.view import Image
from derrick.layout.tarread import whiteout_of

__all__ = ["LayerInfo", "diff_images", "layer_report"]

_COMPARED = ("kind", "size", "mode", "uid", "gid", "digest", "target")


def _changes(a: FileInfo, b: FileInfo) -> list[str]:
    out = []
    for name in _COMPARED:
        if getattr(a, name) != getattr(b, name):
            out.append("type" if name == "kind" else "content" if name == "digest" else name)
    return out


def _layer_json(x: Layer) -> dict[str, Any]:
    return {
        "digest": str(x.digest),
        "diffId": str(x.diff_id) if x.diff_id else None,
        "size": x.size,
    }


def _layers_diff(a: Sequence[Layer], b: Sequence[Layer]) -> dict[str, Any]:
    """The layers two images share (each once, in the first's order), and the others."""
    shared = {x.digest for x in a} & {x.digest for x in b}
    first: dict[Digest, Layer] = {}
    for x in a:
        first.setdefault(x.digest, x)
    return {
        "sharedLayers": [_layer_json(x) for d, x in first.items() if d in shared],
        "layersOnlyIn1": [_layer_json(x) for x in a if x.digest not in shared],
        "layersOnlyIn2": [_layer_json(x) for x in b if x.digest not in shared],
    }


def _files_diff(fa: dict[str, FileInfo], fb: dict[str, FileInfo]) -> dict[str, Any]:
    """Files added, removed and changed from ``fa`` to ``fb``, and a summary."""
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


def diff_images(
    a: Image,
    b: Image,
    *,
    on_layer: Callable[[Layer], None] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Layers and files that differ between two images, as JSON-ready data.

    Files are compared by type, size, mode, owner, content (sha256) and symlink target;
    modification times are ignored.
    """
    la, lb = a.filesystem_layers(), b.filesystem_layers()  # both refused before a layer moves
    fa = flatten(a, hash_files=True, on_layer=on_layer, progress=progress).files
    fb = flatten(b, hash_files=True, on_layer=on_layer, progress=progress).files
    return {
        "image1": {"name": a.shown, "digest": str(a.digest)},
        "image2": {"name": b.shown, "digest": str(b.digest)},
        **_layers_diff(la, lb),
        **_files_diff(fa, fb),
    }


# == layers ===========================================================================


@dataclass(frozen=True)
class LayerInfo:
    number: int  # from 1, base layer first
    digest: str
    media_type: str
    size: int  # compressed (as stored)
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
            "index": self.number - 1,
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


@dataclass
class _Tally:
    """What one layer's tar holds."""

    top: int
    entries: int = 0
    files: int = 0
    whiteouts: int = 0
    file_bytes: int = 0
    largest: list[tuple[int, str]] = field(default_factory=list)

    def add(self, path: str, kind: str, size: int) -> None:
        self.entries += 1
        if whiteout_of(path) is not None:
            self.whiteouts += 1
            return
        if kind != "file":
            return
        self.files += 1
        self.file_bytes += size
        if self.top > 0:
            item = (size, path)
            if len(self.largest) < self.top:
                heapq.heappush(self.largest, item)
            elif item > self.largest[0]:
                heapq.heapreplace(self.largest, item)


def layer_report(
    image: Image,
    *,
    top: int = 5,
    on_layer: Callable[[Layer], None] | None = None,
    progress: Progress | None = None,
) -> list[LayerInfo]:
    """Per layer: the history entry that made it, sizes and its ``top`` largest files.

    History entries marked ``empty_layer`` made no layer and are skipped when
    matching history to layers.
    """
    layers = image.filesystem_layers()
    history = [h for h in image.config.history if not h.empty_layer]
    out = []
    with image.read_layers(layers, progress=progress) as reading:
        for layer in layers:
            if on_layer is not None:
                on_layer(layer)
            h = history[layer.number - 1] if layer.number <= len(history) else None
            tally = _Tally(top)
            with reading.tar(layer) as (reader, verifier):
                for entry in reader:
                    tally.add(entry.path, entry.kind, entry.size)
                reader.drain()
                diff_id = verifier.verify()
            out.append(
                LayerInfo(
                    number=layer.number,
                    digest=str(layer.digest),
                    media_type=layer.media_type,
                    size=layer.size,
                    uncompressed_size=verifier.size,
                    diff_id=str(diff_id),
                    created_by=h.created_by if h else None,
                    created=h.created if h else None,
                    comment=h.comment if h else None,
                    entries=tally.entries,
                    files=tally.files,
                    whiteouts=tally.whiteouts,
                    file_bytes=tally.file_bytes,
                    largest=[(p, s) for s, p in sorted(tally.largest, reverse=True)],
                )
            )
    return out
