"""Push an image from disk to a registry, and the blob transfer engine push and copy share.

The source is an OCI layout directory, an OCI archive or a docker-archive
(see :func:`~derrick.layout.reader.open_image_source`).  Every blob goes up
first (those the registry already has, by ``HEAD``, are skipped), in parallel,
each read straight from the source file and checked against its digest on the
way; then each child manifest of an index by digest; then the index or
manifest under the tag.  Manifests are pushed byte for byte, so the registry's
digests equal the source's.

An archive is pushed by the copy engine (:func:`push_from`:
:func:`derrick.ops.transfer.copy` from its source in
:mod:`derrick.images.ociarchive` or :mod:`derrick.images.dockerarchive` to a
:class:`~derrick.images.remote.RegistryRepository`), the same way.  A legacy
``docker save`` archive (``<id>/layer.tar`` files and no OCI manifest) has no
registry manifest to preserve: the source writes one (see
:func:`~derrick.images.dockerarchive.read_legacy`), and so it does for a newer
archive whose OCI manifest is missing from ``index.json`` or disagrees with
``manifest.json``.  OCI layouts are pushed by :func:`push` itself.

A destination without tag or digest takes the tag the image has in the
source: the tag of its ``ref.name`` (or image name) in an OCI layout or
archive, its RepoTag in a docker-archive.  An image without one, or with
several, needs the tag named.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from derrick import mediatypes as mt
from derrick.digest import Digest, Verifier, hash_file
from derrick.download import Cancelled
from derrick.errors import DerrickError, LayoutError, ManifestError, UsageError
from derrick.images.dockerarchive import open_archive, read_legacy
from derrick.images.layout import LayoutDir
from derrick.images.model import BlobOutcome, CopyResult, ImageName, Progress, Selection
from derrick.images.model import TransferStats as CopyStats
from derrick.images.remote import RegistryRepository
from derrick.images.tarsource import TarSource
from derrick.layout.oci import blob_member
from derrick.layout.reader import (
    DockerArchiveEntry,
    ImageSource,
    SelectedImage,
)
from derrick.manifest import Descriptor, ImageManifest, Index, parse_manifest
from derrick.ops import transfer
from derrick.reference import Reference
from derrick.registry import RegistryClient, push_scope

#: Blobs up to this size go up in one request; larger ones in chunks of this size.
DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
DEFAULT_JOBS = 4
_READ_SIZE = 1 << 20
_MAX_INDEX_DEPTH = 4

#: Yields a blob's content from the given offset.
Opener = Callable[[int], Iterable[bytes]]


class TransferProgress(Protocol):
    """Receives progress of a push or copy; every method may be called from worker threads."""

    def planned(self, total_bytes: int) -> None: ...

    def blob_started(self, desc: Descriptor) -> None: ...

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None: ...

    def blob_finished(self, desc: Descriptor) -> None: ...


@dataclass(frozen=True)
class BlobSource:
    """A blob to transfer: its descriptor and how to read it."""

    desc: Descriptor
    open_at: Opener


@dataclass(frozen=True)
class ManifestBlob:
    """A manifest or index to push byte for byte."""

    raw: bytes
    media_type: str

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)


@dataclass
class TransferStats:
    """What happened to the blobs of a push or copy."""

    uploaded: int = 0
    uploaded_bytes: int = 0
    mounted: int = 0
    skipped: int = 0

    @property
    def blobs(self) -> int:
        return self.uploaded + self.mounted + self.skipped


@dataclass
class PushResult:
    source: str
    ref: Reference
    digest: Digest  # of what the tag now names (index or manifest), equal to the source's
    media_type: str
    manifests: list[Digest] = field(default_factory=list)  # every manifest pushed, top last
    stats: TransferStats = field(default_factory=TransferStats)


# -- the transfer engine ---------------------------------------------------------------------


class _Transfer:
    def __init__(
        self,
        client: RegistryClient,
        dst: Reference,
        *,
        jobs: int,
        chunk_size: int | None,
        progress: TransferProgress | None,
        scopes: Sequence[str],
        mount_from: str | None,
    ) -> None:
        self.client = client
        self.dst = dst
        self.jobs = max(1, jobs)
        self.chunk_size = chunk_size
        self.progress = progress
        self.scopes = list(scopes)
        self.mount_from = mount_from
        self.cancelled = threading.Event()
        self.stats = TransferStats()
        self._lock = threading.Lock()

    def run(self, blobs: Sequence[BlobSource]) -> TransferStats:
        if not blobs:
            return self.stats
        if self.progress is not None:
            self.progress.planned(sum(b.desc.size for b in blobs))
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="derrick-push")
        futures: list[Future[None]] = []
        failed = True
        try:
            for blob in blobs:
                futures.append(pool.submit(self._one, blob))
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            errors = [e for f in futures if f in done and (e := f.exception()) is not None]
            if errors:
                self.cancelled.set()
                real = [e for e in errors if not isinstance(e, Cancelled)]
                raise (real or errors)[0]
            failed = False
        finally:
            if failed:
                self.cancelled.set()
            pool.shutdown(wait=True, cancel_futures=failed)
        return self.stats

    def _one(self, blob: BlobSource) -> None:
        """Transfer one blob (workers start at once: the client asks for a token once)."""
        if self.cancelled.is_set():
            raise Cancelled("cancelled")
        desc = blob.desc
        if self.client.head_blob(self.dst, desc.digest, scopes=self.scopes) is not None:
            self._done_without_upload(desc, skipped=True)
            return
        if self.mount_from is not None and self.client.mount_blob(
            self.dst, desc.digest, self.mount_from
        ):
            self._done_without_upload(desc, skipped=False)
            return
        prog = self.progress
        if prog is not None:
            prog.blob_started(desc)

        def advance(n: int) -> None:
            if prog is not None:
                prog.blob_advanced(desc, n)

        self.client.upload_blob(
            self.dst,
            desc.digest,
            desc.size,
            self._cancellable(blob.open_at),
            chunk_size=self.chunk_size,
            progress=advance,
            scopes=self.scopes,
        )
        with self._lock:
            self.stats.uploaded += 1
            self.stats.uploaded_bytes += desc.size
        if prog is not None:
            prog.blob_finished(desc)

    def _done_without_upload(self, desc: Descriptor, *, skipped: bool) -> None:
        with self._lock:
            if skipped:
                self.stats.skipped += 1
            else:
                self.stats.mounted += 1
        if self.progress is not None:
            self.progress.blob_advanced(desc, desc.size)

    def _cancellable(self, open_at: Opener) -> Opener:
        cancelled = self.cancelled

        def opener(offset: int) -> Iterator[bytes]:
            for chunk in open_at(offset):
                if cancelled.is_set():
                    raise Cancelled("cancelled because another blob failed")
                yield chunk

        return opener


def transfer_blobs(
    client: RegistryClient,
    dst: Reference,
    blobs: Sequence[BlobSource],
    *,
    jobs: int = DEFAULT_JOBS,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    progress: TransferProgress | None = None,
    scopes: Sequence[str] | None = None,
    mount_from: str | None = None,
) -> TransferStats:
    """Make every blob present in ``dst``'s repository, ``jobs`` at a time.

    Blobs the repository has (``HEAD``) are skipped; with ``mount_from`` (a
    repository of the same registry) a cross-repository mount is tried before
    an upload.  The first failure cancels the rest and is raised.
    """
    unique: dict[Digest, BlobSource] = {}
    for b in blobs:
        unique.setdefault(b.desc.digest, b)
    return _Transfer(
        client,
        dst,
        jobs=jobs,
        chunk_size=chunk_size,
        progress=progress,
        scopes=list(scopes) if scopes else [push_scope(dst.repository)],
        mount_from=mount_from,
    ).run(list(unique.values()))


def put_manifests(
    client: RegistryClient,
    dst: Reference,
    manifests: Sequence[ManifestBlob],
    *,
    scopes: Sequence[str] | None = None,
) -> Digest:
    """Push every manifest but the last by digest, then the last under ``dst``.

    Children come before the index that lists them, as registries check that
    an index's manifests exist.  Returns the digest of the last one.
    """
    if not manifests:
        raise ManifestError("nothing to push: no manifest")
    *children, top = manifests
    pushed: set[Digest] = set()
    for m in children:
        if m.digest in pushed:
            continue
        pushed.add(m.digest)
        by_digest = Reference(dst.registry, dst.repository, digest=m.digest)
        client.put_manifest(by_digest, m.raw, m.media_type, scopes=scopes)
    _check_digest(dst, top.digest)
    return client.put_manifest(dst, top.raw, top.media_type, scopes=scopes)


def _check_digest(dst: Reference, digest: Digest) -> None:
    """Refuse to push the image ``digest`` to a destination named by another digest."""
    if dst.digest is not None and dst.digest != digest:
        raise UsageError(
            f"cannot push to {dst}: the image's digest is {digest}",
            hint="name the destination by tag, or by the image's own digest",
        )


# -- reading a source ------------------------------------------------------------------------


@dataclass
class _Plan:
    blobs: dict[Digest, BlobSource] = field(default_factory=dict)
    manifests: list[ManifestBlob] = field(default_factory=list)  # children first, top last


def verified_opener(open_file: Callable[[], BinaryIO], desc: Descriptor, what: str) -> Opener:
    """Reads a local file from an offset, checked against ``desc`` as it goes.

    The whole file is hashed (bytes before the offset too) and checked before
    its last bytes are given out, so an upload of a file that does not match
    its digest never completes.
    """

    def open_at(offset: int) -> Iterator[bytes]:
        v = Verifier(desc.digest, desc.size, what=what)
        pos = 0
        held = b""
        with open_file() as f:
            while chunk := f.read(_READ_SIZE):
                v.update(chunk)
                end = pos + len(chunk)
                piece = chunk[max(0, offset - pos) :] if end > offset else b""
                pos = end
                if held:
                    yield held
                held = piece
            v.verify()
            if held:
                yield held

    return open_at


def _source_opener(source: ImageSource, path: str, desc: Descriptor) -> Opener:
    return verified_opener(lambda: source.open_file(path), desc, f"{path} in {source.description}")


def _add_manifest(source: ImageSource, desc: Descriptor, plan: _Plan, depth: int = 0) -> None:
    if not source.has_blob(desc.digest):
        raise LayoutError(
            f"manifest {desc.digest} is missing from {source.description}",
            hint="a multi-platform image needs every platform: pull it with --all-platforms",
        )
    raw = source.read_blob(desc.digest)
    if len(raw) != desc.size:
        raise LayoutError(
            f"manifest {desc.digest} in {source.description} is {len(raw)} bytes, "
            f"its descriptor says {desc.size}"
        )
    try:
        m = parse_manifest(raw, desc.media_type)
    except ManifestError as e:
        raise ManifestError(
            f"manifest {desc.digest} in {source.description}: {e.message}"
        ) from None
    if isinstance(m, Index):
        if depth >= _MAX_INDEX_DEPTH:
            raise ManifestError(f"index {desc.digest} nests indexes too deeply")
        for child in m.manifests:
            _add_manifest(source, child, plan, depth + 1)
    else:
        _add_image_blobs(source, m, plan)
    if all(x.digest != desc.digest for x in plan.manifests):
        plan.manifests.append(ManifestBlob(raw, m.media_type))


def _add_image_blobs(source: ImageSource, m: ImageManifest, plan: _Plan) -> None:
    for d in (m.config, *m.layers):
        if d.digest in plan.blobs:
            continue
        if not source.has_blob(d.digest):
            if d.urls:
                continue  # a foreign layer, fetched by clients from its URLs
            raise LayoutError(f"blob {d.digest} is missing from {source.description}")
        size = source.blob_size(d.digest)
        if size != d.size:
            raise LayoutError(
                f"blob {d.digest} in {source.description} is {size} bytes, "
                f"its manifest says {d.size}"
            )
        plan.blobs[d.digest] = BlobSource(d, _source_opener(source, blob_member(d.digest), d))


def _plan_legacy_docker(source: ImageSource, entry: DockerArchiveEntry, jobs: int) -> _Plan:
    """A plan for a ``docker save`` image without a usable OCI manifest: write its manifest."""
    image = read_legacy(source, entry, jobs)
    plan = _Plan()
    config = image.config
    plan.blobs[image.config_desc.digest] = BlobSource(image.config_desc, lambda off: [config[off:]])
    for desc, path in image.layers:
        plan.blobs.setdefault(desc.digest, BlobSource(desc, _source_opener(source, path, desc)))
    plan.manifests.append(ManifestBlob(image.manifest, mt.DOCKER_MANIFEST))
    return plan


def plan_image(source: ImageSource, selected: SelectedImage, *, jobs: int = 1) -> _Plan:
    """The blobs and manifests of an image :meth:`ImageSource.select` chose."""
    if selected.desc is None:
        if selected.docker is None:  # pragma: no cover - select() always finds one
            raise LayoutError(f"no image to push in {source.description}")
        return _plan_legacy_docker(source, selected.docker, jobs)
    plan = _Plan()
    _add_manifest(source, selected.desc, plan)
    return plan


def plan_source(source: ImageSource, name: str | None = None, *, jobs: int = 1) -> _Plan:
    """The blobs and manifests of the image called ``name`` in ``source``."""
    return plan_image(source, source.select(name), jobs=jobs)


def destination(ref: Reference, selected: SelectedImage, shown: str) -> Reference:
    """``ref``, or, without tag and digest, ``ref`` with the tag the image has in its source.

    ``shown`` names the source in errors.  Raises :class:`UsageError` when the
    image has no tag, or several, to take.
    """
    if ref.tag is not None or ref.digest is not None:
        return ref
    if len(selected.tags) == 1:
        return ref.with_tag(selected.tags[0])
    if not selected.tags:
        raise UsageError(
            f"{shown} is not tagged, so {ref} needs a tag to push it as",
            hint=f"add one, e.g. {ref.name}:latest",
        )
    raise UsageError(
        f"{shown} is tagged {', '.join(selected.tags)}, so {ref} needs the tag to push it as",
        hint=f"add one, e.g. {ref.name}:{selected.tags[0]}",
    )


# -- push ------------------------------------------------------------------------------------


class EngineProgress:
    """A :class:`TransferProgress` told what the copy engine's progress says."""

    def __init__(self, progress: TransferProgress) -> None:
        self._progress = progress

    def planned(self, total_bytes: int) -> None:
        self._progress.planned(total_bytes)

    def blob_started(self, desc: Descriptor) -> None:
        self._progress.blob_started(desc)

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        self._progress.blob_advanced(desc, nbytes)

    def blob_finished(self, desc: Descriptor, outcome: BlobOutcome) -> None:
        self._progress.blob_finished(desc)


def push_from(
    client: RegistryClient,
    source: TarSource,
    ref: Reference,
    name: str | None = None,
    *,
    shown: str,
    jobs: int = DEFAULT_JOBS,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> tuple[Reference, CopyResult]:
    """Push the image called ``name`` (or the only one) of an archive to ``ref`` with the
    copy engine: the image whole (every platform of an index), byte for byte.

    ``ref`` without tag or digest takes the image's tag in the source (see
    :func:`destination`; ``shown`` names the source there).  Returns the reference
    pushed to and what the copy did.
    """
    ref = destination(ref, source.select(name), shown)
    _check_digest(ref, source.resolve(name).digest)
    result = transfer.copy(
        source,
        RegistryRepository(client, ref, chunk_size=chunk_size),
        name=name,
        selection=Selection(all=True),
        names=() if ref.tag is None else (ImageName(ref.name, ref.tag),),
        jobs=jobs,
        progress=progress,
        retry=client.transport.retry,
    )
    return ref, result


def push_stats(stats: CopyStats) -> TransferStats:
    """A copy's stats, counted as a push counts them."""
    return TransferStats(
        uploaded=stats.copied,
        uploaded_bytes=stats.copied_bytes,
        mounted=stats.mounted,
        skipped=stats.skipped,
    )


def push_result(source: str, ref: Reference, result: CopyResult) -> PushResult:
    """What :func:`push_from` did, as :func:`push` says it."""
    return PushResult(
        source=source,
        ref=ref,
        digest=result.digest,
        media_type=result.media_type,
        manifests=result.manifests,
        stats=push_stats(result.stats),
    )


def push(
    client: RegistryClient,
    source_path: str | Path,
    ref: Reference,
    name: str | None = None,
    *,
    jobs: int = DEFAULT_JOBS,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    progress: TransferProgress | None = None,
) -> PushResult:
    """Push the image called ``name`` (or the only one) of ``source_path`` to ``ref``.

    ``ref`` names the destination by tag (or by the image's own digest); without
    either, the image's tag in the source is used (see :func:`destination`).
    With ``chunk_size`` None every blob goes up in one request.  Both OCI layout
    directories and archives are pushed by the engine (:func:`derrick.ops.transfer.copy`).
    """
    if Path(source_path).is_dir():
        return _push_layout(client, source_path, ref, name, jobs, chunk_size, progress)
    with open_archive(source_path, jobs=jobs) as archive:
        pushed, result = push_from(
            client,
            archive,
            ref,
            name,
            shown=f"{source_path}:{name}" if name else str(source_path),
            jobs=jobs,
            chunk_size=chunk_size,
            progress=EngineProgress(progress) if progress is not None else None,
        )
    return push_result(str(source_path), pushed, result)


class _EngineProgress:
    """A :class:`TransferProgress` as the engine's :class:`~derrick.images.model.Progress`."""

    def __init__(self, progress: TransferProgress) -> None:
        self._progress = progress

    def planned(self, total_bytes: int) -> None:
        self._progress.planned(total_bytes)

    def blob_started(self, desc: Descriptor) -> None:
        self._progress.blob_started(desc)

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        self._progress.blob_advanced(desc, nbytes)

    def blob_finished(self, desc: Descriptor, outcome: BlobOutcome) -> None:
        self._progress.blob_finished(desc)


def layout_destination(
    source: LayoutDir, ref: Reference, name: str | None, shown: str
) -> Reference:
    """Where the image ``name`` of the layout ``source`` goes: ``ref``, with the image's
    tag when it has neither tag nor digest (see :func:`destination`).  A digest must be
    the image's own."""
    top = source.resolve(name)
    ref = destination(ref, SelectedImage(top, None, source.tags(name)), shown)
    if ref.digest is not None and ref.digest != top.digest:
        raise UsageError(
            f"cannot push to {ref}: the image's digest is {top.digest}",
            hint="name the destination by tag, or by the image's own digest",
        )
    return ref


def push_names(ref: Reference) -> tuple[ImageName, ...]:
    """What a push to ``ref`` calls the image: its tag, or nothing (by digest only)."""
    return () if ref.digest is not None else (ImageName(ref.name, ref.tag),)


def _push_layout(
    client: RegistryClient,
    path: str | Path,
    ref: Reference,
    name: str | None,
    jobs: int,
    chunk_size: int | None,
    progress: TransferProgress | None,
) -> PushResult:
    """Push the image ``name`` of the OCI layout ``path``: a copy by the engine, every
    platform of an index (the layout must hold them all)."""
    source = LayoutDir(path, name=name)
    ref = layout_destination(source, ref, name, f"{path}:{name}" if name else str(path))
    result = transfer.copy(
        source,
        RegistryRepository(client, ref, chunk_size=chunk_size),
        name=name,
        selection=Selection(all=True),
        names=push_names(ref),
        jobs=jobs,
        progress=_EngineProgress(progress) if progress is not None else None,
        retry=client.transport.retry,
    )
    return PushResult(
        source=str(path),
        ref=ref,
        digest=result.digest,
        media_type=result.media_type,
        manifests=result.manifests,
        stats=TransferStats(
            uploaded=result.stats.copied,
            uploaded_bytes=result.stats.copied_bytes,
            mounted=result.stats.mounted,
            skipped=result.stats.skipped,
        ),
    )


def put_blob(
    client: RegistryClient,
    ref: Reference,
    path: str | Path,
    *,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    progress: TransferProgress | None = None,
) -> tuple[Descriptor, bool]:
    """Upload the file ``path`` as a blob of ``ref``'s repository.

    Returns its descriptor and whether it was uploaded (False: the repository
    had it).  The size the registry then reports is checked.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            digest, size = hash_file(f, chunk=_READ_SIZE)
    except OSError as e:
        raise LayoutError(f"cannot read {p}: {e.strerror or e}") from None
    desc = Descriptor("application/octet-stream", digest, size)

    stats = transfer_blobs(
        client,
        ref,
        [BlobSource(desc, verified_opener(lambda: p.open("rb"), desc, f"file {p}"))],
        jobs=1,
        chunk_size=chunk_size,
        progress=progress,
    )
    have = client.head_blob(ref, digest, scopes=[push_scope(ref.repository)])
    if have != size:
        raise DerrickError(
            f"blob {digest} was uploaded but {ref.registry}/{ref.repository} reports "
            f"{'no such blob' if have is None else f'{have} bytes'}, not {size}",
            hint="the registry did not store the blob as sent; try again",
        )
    return desc, stats.uploaded == 1
