"""Unpack an image's layers into a directory: a root filesystem, built safely.

:func:`unpack_image` applies the layers of an :class:`~derrick.images.view.Image` in order
onto a :class:`~derrick.layout.rootfs.RootTree`, which keeps every write inside the root
and applies the layer changesets (whiteouts, opaque directories) as the OCI image-spec
says.  Layers are read with :meth:`~derrick.images.view.Image.read_layers`: each blob is
verified against its digest, and its uncompressed stream against the config's diff_id.

The tree is built in a temporary directory beside the destination and renamed into place
when complete, so a failure leaves nothing at the destination.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from derrick.digest import Digest
from derrick.errors import DiskError, LayoutError, UsageError
from derrick.images.layers import Layer
from derrick.images.model import Progress
from derrick.images.view import Image
from derrick.layout.rootfs import RootTree, Warn
from derrick.layout.tarread import whiteout_of
from derrick.oserrors import reason, writing_failed

__all__ = ["UnpackResult", "apply_layers", "check_destination", "unpack_image"]

log = logging.getLogger("derrick.unpack")


@dataclass(frozen=True)
class UnpackResult:
    destination: Path
    layers: int
    files: int
    uncompressed_bytes: int
    diff_ids: tuple[Digest, ...]
    skipped: int  # entries not created (device nodes without permission)


def check_destination(dest: Path) -> None:
    """Raise :class:`UsageError` unless ``dest`` is missing or an empty directory."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{dest} exists and is not a directory")
    with os.scandir(dest) as entries:
        empty = next(entries, None) is None
    if not empty:
        raise UsageError(f"{dest} is not empty", hint="unpack into a new or empty directory")


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class _DiskFull(DiskError):
    """The disk filled up while a layer was applied: ``where`` is the layer and path."""

    def __init__(self, error: OSError, where: str) -> None:
        super().__init__(f"cannot unpack {where}: {reason(error)}", errno=error.errno)
        self.error = error
        self.where = where


def _force_rmtree(path: str) -> None:
    """Remove a tree, making directories writable where a layer made them read-only."""

    def retry(func: Callable[[str], object], p: str, exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def apply_layers(
    image: Image,
    root: str | Path,
    *,
    same_owner: bool | None = None,
    warn: Warn | None = None,
    on_layer: Callable[[Layer], None] | None = None,
    progress: Progress | None = None,
    threaded: bool = True,
) -> UnpackResult:
    """Apply every layer of ``image`` onto the existing directory ``root``, in place.

    ``progress`` hears of the bytes fetched from a registry; ``on_layer`` of each layer
    as it is applied."""
    layers = image.filesystem_layers()
    owner = os.geteuid() == 0 if same_owner is None else same_owner
    tree = RootTree(str(root), same_owner=owner, warn=warn or log.warning)
    total = 0
    diff_ids: list[Digest] = []
    try:
        with image.read_layers(layers, progress=progress) as reading:
            for layer in layers:
                if on_layer is not None:
                    on_layer(layer)
                tree.label = layer.label
                tree.layer_paths = set()
                with reading.tar(layer, threaded=threaded) as (reader, verifier):
                    for entry in reader:
                        try:
                            wo = whiteout_of(entry.path)
                            if wo is not None:
                                tree.whiteout(*wo)
                            else:
                                tree.apply(entry, reader)
                        except OSError as e:
                            where = entry.path or "/"
                            if e.errno in _DISK_FULL:
                                raise _DiskFull(e, f"{layer.label}: {where!r}") from None
                            raise LayoutError(
                                f"{layer.label}: cannot unpack {where!r}: {e.strerror or e}"
                            ) from None
                    reader.drain()
                    diff_ids.append(verifier.verify())
                    total += verifier.size
                if reader.skipped:
                    tree.warn(
                        f"{layer.label}: skipped {len(reader.skipped)} tar entries of unknown type"
                    )
        tree.finish()
    finally:
        tree.close()
    return UnpackResult(Path(root), len(layers), tree.files, total, tuple(diff_ids), tree.skipped)


def unpack_image(
    image: Image,
    dest: str | Path,
    *,
    same_owner: bool | None = None,
    warn: Warn | None = None,
    on_layer: Callable[[Layer], None] | None = None,
    progress: Progress | None = None,
    threaded: bool = True,
) -> UnpackResult:
    """Unpack ``image`` into ``dest``, which must be missing or an empty directory.

    The tree is built beside ``dest`` and renamed to it when every layer has
    been applied and verified; on any error nothing is left at ``dest``.
    ``same_owner`` (default: when running as root) applies the tar owners.
    ``warn`` receives messages about entries that could not be created.
    """
    target = Path(dest)
    check_destination(target)
    image.filesystem_layers()  # an artifact or another platform: refused before mkdir
    tmp = _unpacking_dir(target)
    try:
        result = apply_layers(
            image,
            tmp,
            same_owner=same_owner,
            warn=warn,
            on_layer=on_layer,
            progress=progress,
            threaded=threaded,
        )
        try:
            os.replace(tmp, target)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise UsageError(f"{target} was changed while unpacking into it") from None
            raise
    except _DiskFull as e:
        with contextlib.suppress(OSError):
            _force_rmtree(tmp)
        raise DiskError(
            f"{reason(e.error)} writing {target} ({e.where})",
            errno=e.error.errno,
            hint="nothing is left behind: make room and try again",
        ) from None
    except BaseException:
        with contextlib.suppress(OSError):
            _force_rmtree(tmp)
        raise
    return dataclasses.replace(result, destination=target)


def _unpacking_dir(target: Path) -> str:
    """A new hidden directory beside ``target`` for the tree to be built in."""
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".unpacking", dir=parent)
    except OSError as e:
        raise DiskError(
            writing_failed(e, str(target)),
            errno=e.errno,
            hint="nothing is left behind: fix that and try again",
        ) from None
