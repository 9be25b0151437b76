"""One blob by digest: :func:`get_blob` downloads it to a file, :func:`put_blob` uploads one.

Both go through the copy engine's parts, not a path of their own.  A download is the one
verified, resumable stream (:class:`~derrick.images.feed.Feed` over a
:class:`~derrick.images.remote.RegistryRepository`): every byte is hashed, a body that
breaks off is asked for again with ``Range`` from where it stopped, and the file gets its
name only once the blob matched its digest.  Until then it is a hidden partial file
beside the destination (``.NAME.derrick-partial``, made with the umask's mode, locked with
``flock`` while written); a run that fails keeps it, and the next one re-hashes its bytes
and asks the registry only for the rest.  An upload is what the registry sink does with
a blob of a copy: ``HEAD`` first, then the upload (chunked above the chunk size) from a
feed that verifies the file as it is read.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from derrick.digest import Digest, hash_file
from derrick.errors import DerrickError, DigestMismatchError, DiskError, LayoutError
from derrick.images.archivefile import check_regular, describe_os_error, kept_hint
from derrick.images.feed import Feed, FileOpener
from derrick.images.model import Plan
from derrick.images.remote import DEFAULT_CHUNK_SIZE, RegistryRepository
from derrick.manifest import Descriptor
from derrick.oserrors import writing_failed
from derrick.reference import Reference
from derrick.registry import RegistryClient, push_scope
from derrick.store.files import Region, lock_partial, read_range

__all__ = ["GotBlob", "get_blob", "put_blob"]

_BLOB = "application/octet-stream"
_READ_SIZE = 1 << 20


@dataclass(frozen=True)
class GotBlob:
    """What :func:`get_blob` did: the blob, and the bytes received (resumed ones not)."""

    descriptor: Descriptor
    received: int


def _size(client: RegistryClient, ref: Reference, digest: Digest) -> int:
    """The blob's size, from a ``HEAD`` (a ``GET`` opened and closed when the registry
    does not say it there; its errors, e.g. not found, are the registry's own)."""
    size = client.head_blob(ref, digest)
    if size:
        return size
    with client.open_blob(ref, digest) as stream:
        if stream.total is None:
            raise DerrickError(f"blob {digest} of {ref.name}: the registry does not say its size")
        return stream.total


def get_blob(
    client: RegistryClient,
    ref: Reference,
    digest: Digest,
    dest: Path,
    *,
    resume: bool = True,
    cancel: threading.Event | None = None,
) -> GotBlob:
    """Download blob ``digest`` of ``ref``'s repository to the file ``dest``, verified.

    With ``resume`` the bytes a failed run left in the partial file are re-hashed and
    kept (when they turn out wrong, the blob is downloaded again from its first byte);
    without, they are dropped.  Raises the registry's errors, a
    :class:`DigestMismatchError` (nothing kept), or a :class:`DiskError` naming ``dest``;
    the hint says what is kept.
    """
    check_regular(dest, str(dest))
    part = dest.parent / f".{dest.name}.derrick-partial"
    try:  # the destination first: nothing is asked of the registry for a path that fails
        fd, _ = lock_partial(part)
    except OSError as e:
        raise _disk_error(e, dest, None) from None
    try:
        try:
            desc = Descriptor(_BLOB, digest, _size(client, ref, digest))
        except DerrickError as e:
            _say_kept(e, part)
            raise
        retry = client.transport.retry
        feed = Feed(RegistryRepository(client, ref), desc, retry=retry, cancel=cancel)
        _fill(feed, fd, part, dest, resume)
        return GotBlob(desc, feed.received)
    finally:
        os.close(fd)


def _fill(feed: Feed, fd: int, part: Path, dest: Path, resume: bool) -> None:
    """Fill the locked partial file ``fd`` from ``feed`` and rename it to ``dest``."""
    size = feed.desc.size
    region = Region(fd, 0, size)
    try:
        have = os.fstat(fd).st_size if resume else 0
        if have > size or not resume:
            os.ftruncate(fd, 0)
            have = 0
        for start in (have, 0) if have else (0,):
            try:
                pos = start
                prefix = read_range(fd, 0, start) if start else None
                for chunk in feed.chunks(start, prefix):
                    region.write_at(pos, chunk)
                    pos += len(chunk)
                break
            except DigestMismatchError as e:
                os.ftruncate(fd, 0)  # the kept bytes may be what was wrong
                if not start:
                    _drop(part)
                    e.hint = f"{e.hint}; nothing was kept" if e.hint else "nothing was kept"
                    raise
        os.replace(part, dest)
    except OSError as e:
        raise _disk_error(e, dest, part) from None
    except DerrickError as e:
        if not isinstance(e, DigestMismatchError):
            _say_kept(e, part)
        raise


def _drop(part: Path) -> None:
    with contextlib.suppress(OSError):
        part.unlink()


def _say_kept(e: DerrickError, part: Path) -> None:
    """Add to ``e``'s hint that the partial file is kept (or gone, when empty)."""
    try:
        empty = part.stat().st_size == 0
    except OSError:
        return
    if empty:
        _drop(part)
        return
    said = kept_hint([str(part)], 1, "try again")
    e.hint = f"{e.hint}; {said}" if e.hint else said


def _disk_error(e: OSError, dest: Path, part: Path | None) -> DiskError:
    _, again = describe_os_error(e)
    hint = f"nothing is left behind: {again}"
    if part is not None:
        try:
            if part.stat().st_size:
                hint = kept_hint([str(part)], 1, again)
            else:
                _drop(part)
        except OSError:
            pass
    return DiskError(writing_failed(e, str(dest)), errno=e.errno, hint=hint)


def put_blob(
    client: RegistryClient,
    ref: Reference,
    path: str | Path,
    *,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> tuple[Descriptor, bool]:
    """Upload the file ``path`` as a blob of ``ref``'s repository, as a copy to a registry
    uploads a blob (nothing sent when the repository has it).

    Returns its descriptor and whether it was uploaded (False: the repository had it).
    The size the registry then reports is checked.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            digest, size = hash_file(f, chunk=_READ_SIZE)
    except OSError as e:
        raise LayoutError(f"cannot read {p}: {e.strerror or e}") from None
    desc = Descriptor(_BLOB, digest, size)
    sink = RegistryRepository(client, ref, chunk_size=chunk_size)
    sink.begin(Plan((), (), (desc,)))
    uploaded = not sink.has_blob(desc)
    if uploaded:
        source = FileOpener(p, f"file {p}")
        sink.put_blob(Feed(source, desc, retry=client.transport.retry))
    have = client.head_blob(ref, digest, scopes=[push_scope(ref.repository)])
    if have != size:
        raise DerrickError(
            f"blob {digest} was uploaded but {ref.registry}/{ref.repository} reports "
            f"{'no such blob' if have is None else f'{have} bytes'}, not {size}",
            hint="the registry did not store the blob as sent; try again",
        )
    return desc, uploaded
