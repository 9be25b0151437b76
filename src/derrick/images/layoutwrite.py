"""Writing an OCI layout for :class:`~derrick.images.layout.LayoutDir`: the hidden
directory a new layout is assembled in, blobs written from a stream, index entries
named from a copy's names, and the one-line error of a failed write."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from derrick.errors import DiskError
from derrick.images.model import BlobFeed, ImageName
from derrick.layout.atomic import replacing
from derrick.layout.oci import OCILayout
from derrick.layout.ociindex import full_name
from derrick.manifest import Descriptor
from derrick.oserrors import try_again, writing_failed
from derrick.store.records import hashes_to

__all__ = ["HiddenDir", "add_entries", "disk_error", "file_holds", "write_stream"]

#: Beside a hidden directory ``D``, ``D + OWNER``: the file its writer holds locked.
OWNER = ".owner"


class HiddenDir:
    """A new hidden directory ``<prefix>.derrick-tmp-<random>`` in ``parent``, owned by
    this process until :meth:`remove`: its writer holds an exclusive ``flock`` on the file
    ``<dir>.owner`` beside it, made and locked before the directory is.

    A process killed while writing leaves both behind; the next :class:`HiddenDir` of the
    same prefix removes every such directory whose owner file it can lock (its owner is
    gone), and leaves alone one whose owner is alive, and one without an owner file.
    """

    def __init__(self, parent: Path, prefix: str) -> None:
        _sweep(parent, prefix)
        while True:
            path = parent / f"{prefix}.derrick-tmp-{secrets.token_hex(4)}"
            owner = Path(f"{path}{OWNER}")
            try:
                fd = os.open(owner, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except FileExistsError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                path.mkdir(0o777)
            except BaseException:
                os.close(fd)
                owner.unlink(missing_ok=True)
                raise
            self.path, self._owner = path, owner
            self._fd: int | None = fd
            return

    def remove(self) -> None:
        """Remove the directory (if still there), then the owner file; idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            self._owner.unlink()
        os.close(fd)


def _sweep(parent: Path, prefix: str) -> None:
    """Remove the hidden directories of ``prefix`` whose writers are gone (see
    :class:`HiddenDir`); nothing of a writer that is alive."""
    with contextlib.suppress(OSError):
        for owner in parent.glob(f"{prefix}.derrick-tmp-*{OWNER}"):
            try:
                fd = os.open(owner, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # its writer is at work
            try:
                shutil.rmtree(str(owner)[: -len(OWNER)], ignore_errors=True)
                owner.unlink(missing_ok=True)
            finally:
                os.close(fd)


def write_stream(layout: OCILayout, feed: BlobFeed) -> Path:
    """Write the feed's chunks as the blob, under a temporary name until the last one
    (given out only once the feed verified the blob)."""
    digest = feed.desc.digest
    dest = layout.blob_path(digest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dest, digest.hex[:16]) as fd, os.fdopen(fd, "wb", closefd=False) as f:
        for chunk in feed.chunks():
            f.write(chunk)
    return dest


def file_holds(path: Path, desc: Descriptor) -> bool:
    """Whether the file at ``path`` hashes to blob ``desc``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.fstat(fd).st_size == desc.size and hashes_to(fd, desc)
    finally:
        os.close(fd)


def entry_image_name(name: ImageName, desc: Descriptor) -> str | None:
    """The full name of an entry: ``repository:tag``, or ``repository@digest`` when the
    copy has no tag (an image named by digest); None without a repository."""
    if not name.repository:
        return None
    return f"{name.repository}:{name.tag}" if name.tag else f"{name.repository}@{desc.digest}"


def add_entries(
    layout: OCILayout,
    tops: Iterable[Sequence[tuple[Descriptor, tuple[ImageName, ...]]]],
    *,
    full_ref_names: bool = False,
) -> list[str]:
    """Add an ``index.json`` entry for each top manifest under each of its names (one
    without names when it has none).  ``full_ref_names`` puts an image's full name
    (``repository:tag``), not its tag, in ``org.opencontainers.image.ref.name``.  Returns
    the full names of the images under a ref name used here when that name now names
    more than one image."""
    refs: list[str] = []
    for entries in tops:
        for desc, names in entries:
            entry = Descriptor(
                desc.media_type,
                desc.digest,
                desc.size,
                platform=desc.platform,
                artifact_type=desc.artifact_type,
            )
            if not names:
                layout.add_manifest(entry)
            for n in names:
                image_name = entry_image_name(n, desc)
                ref = image_name if full_ref_names and n.tag and image_name else n.tag
                layout.add_manifest(entry, ref_name=ref, image_name=image_name)
                if ref and ref not in refs:
                    refs.append(ref)
    same: list[str] = []
    for ref in refs:
        tagged = layout.tagged(ref)
        if len({d.digest for d in tagged}) > 1:
            same.extend(n for n in dict.fromkeys(full_name(d) for d in tagged) if n not in same)
    return same


def disk_error(e: OSError, shown: str, kept: str) -> DiskError:
    """``<reason> writing <shown>; <kept>: <what to do>``."""
    again = try_again(e)
    return DiskError(writing_failed(e, shown), errno=e.errno, hint=f"{kept}: {again}")
