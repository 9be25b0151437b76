"""Push an image from disk to a registry, and the blob transfer engine push and copy share.

The source is an OCI layout directory, an OCI archive or a docker-archive
(see :func:`~derrick.layout.reader.open_image_source`).  Every blob goes up
first (those the registry already has, by ``HEAD``, are skipped), in parallel,
each read straight from the source file and checked against its digest on the
way; then each child manifest of an index by digest; then the index or
manifest under the tag.  Manifests are pushed byte for byte, so the registry's
digests equal the source's.

A legacy ``docker save`` archive (``<id>/layer.tar`` files and no OCI
manifest) has no registry manifest to preserve: one is written for it, a
Docker schema 2 manifest with the config as is and each layer as stored
(``application/vnd.docker.image.rootfs.diff.tar`` for plain tars).  So is
one for a newer archive whose OCI manifest is missing from ``index.json`` or
disagrees with ``manifest.json``.  Such an image's config must list as many
layers as ``manifest.json`` does, each plain tar layer must be the one its
config names (its digest is its diff ID), and files named by their digest
(``blobs/sha256/<hex>``, ``<hex>.json``) must hash to it.

A destination without tag or digest takes the tag the image has in the
source: the tag of its ``ref.name`` (or image name) in an OCI layout or
archive, its RepoTag in a docker-archive.  An image without one, or with
several, needs the tag named.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from derrick import mediatypes as mt
from derrick.api import push_scope
from derrick.digest import Digest, Verifier, hash_file
from derrick.download import Cancelled
from derrick.errors import DerrickError, LayoutError, ManifestError, UsageError
from derrick.images.layout import LayoutDir
from derrick.images.model import BlobOutcome, ImageName, Selection
from derrick.images.remote import RegistryRepository
from derrick.layout.oci import blob_member
from derrick.layout.reader import (
    DockerArchiveEntry,
    ImageSource,
    SelectedImage,
    open_image_source,
)
from derrick.manifest import Descriptor, ImageConfig, ImageManifest, Index, parse_manifest
from derrick.ops import transfer
from derrick.reference import Reference
from derrick.registry import RegistryClient

#: Blobs up to this size go up in one request; larger ones in chunks of this size.
DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
DEFAULT_JOBS = 4
_READ_SIZE = 1 << 20
_MAX_INDEX_DEPTH = 4
#: docker-archive paths that name their content's sha256: ``blobs/sha256/<hex>``, ``<hex>.json``.
_NAMED_BY_DIGEST = re.compile(r"^(?:blobs/sha256/([0-9a-f]{64})|([0-9a-f]{64})\.json)$")

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
        # One request first, so the workers find a token (or basic auth) already known.
        first = self.client.head_blob(self.dst, blobs[0].desc.digest, scopes=self.scopes)
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="derrick-push")
        futures: list[Future[None]] = []
        failed = True
        try:
            for i, blob in enumerate(blobs):
                futures.append(pool.submit(self._one, blob, first if i == 0 else -1))
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

    def _one(self, blob: BlobSource, known: int | None) -> None:
        """Transfer one blob; ``known`` is a HEAD answer already had (-1: not asked yet)."""
        if self.cancelled.is_set():
            raise Cancelled("cancelled")
        desc = blob.desc
        have = (
            self.client.head_blob(self.dst, desc.digest, scopes=self.scopes)
            if known == -1
            else known
        )
        if have is not None:
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
    if dst.digest is not None and dst.digest != top.digest:
        raise UsageError(
            f"cannot push to {dst}: the image's digest is {top.digest}",
            hint="name the destination by tag, or by the image's own digest",
        )
    return client.put_manifest(dst, top.raw, top.media_type, scopes=scopes)


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


def _layer_media_type(source: ImageSource, path: str) -> str:
    with source.open_file(path) as f:
        head = f.read(4)
    if head.startswith(b"\x1f\x8b"):
        return mt.DOCKER_LAYER_GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return mt.DOCKER_LAYER_ZSTD
    return mt.DOCKER_LAYER


def _hash_path(source: ImageSource, path: str) -> tuple[Digest, int]:
    with source.open_file(path) as f:
        return hash_file(f, chunk=_READ_SIZE)


def docker_manifest_for(config: bytes, layers: Sequence[Descriptor]) -> bytes:
    """The Docker schema 2 manifest of a config and its layers (compact JSON)."""
    obj = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {
            "mediaType": mt.DOCKER_CONFIG,
            "size": len(config),
            "digest": str(Digest.of(config)),
        },
        "layers": [
            {"mediaType": d.media_type, "size": d.size, "digest": str(d.digest)} for d in layers
        ],
    }
    return json.dumps(obj, separators=(",", ":")).encode()


def _check_named(source: ImageSource, path: str, digest: Digest) -> None:
    """A file named by its digest must have that digest."""
    m = _NAMED_BY_DIGEST.match(path)
    named = (m.group(1) or m.group(2)) if m else None
    if named is not None and (digest.algorithm != "sha256" or digest.hex != named):
        raise LayoutError(
            f"{path} in {source.description} does not match its name: its content is {digest}",
            hint="the archive is damaged; save the image again",
        )


def _plan_legacy_docker(source: ImageSource, entry: DockerArchiveEntry, jobs: int) -> _Plan:
    """A plan for a ``docker save`` image without a usable OCI manifest: write its manifest."""
    config = source.read_file(entry.config_path)
    config_desc = Descriptor(mt.DOCKER_CONFIG, Digest.of(config), len(config))
    _check_named(source, entry.config_path, config_desc.digest)
    where = f"the image {entry.config_path} of {source.description}"
    try:
        diff_ids = ImageConfig.parse(config).diff_ids
    except ManifestError as e:
        raise LayoutError(f"{where}: {e.message}") from None
    if len(diff_ids) != len(entry.layer_paths):
        raise LayoutError(
            f"{where} has {len(entry.layer_paths)} layers in manifest.json but its config "
            f"lists {len(diff_ids)} (rootfs.diff_ids)",
            hint="the archive is damaged; save the image again",
        )
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="derrick-hash") as pool:
        hashed = list(pool.map(lambda p: _hash_path(source, p), entry.layer_paths))
    plan = _Plan()
    plan.blobs[config_desc.digest] = BlobSource(config_desc, lambda off: [config[off:]])
    layers: list[Descriptor] = []
    for i, (path, (digest, size)) in enumerate(zip(entry.layer_paths, hashed, strict=True)):
        _check_named(source, path, digest)
        desc = Descriptor(_layer_media_type(source, path), digest, size)
        if desc.media_type == mt.DOCKER_LAYER and digest != diff_ids[i]:
            raise LayoutError(
                f"layer {path} of {where} is {digest}, but its config names {diff_ids[i]} "
                f"(rootfs.diff_ids[{i}])",
                hint="the archive is damaged; save the image again",
            )
        layers.append(desc)
        plan.blobs.setdefault(digest, BlobSource(desc, _source_opener(source, path, desc)))
    plan.manifests.append(ManifestBlob(docker_manifest_for(config, layers), mt.DOCKER_MANIFEST))
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
    With ``chunk_size`` None every blob goes up in one request.  An OCI layout directory
    is pushed by the engine (:func:`derrick.ops.transfer.copy`).
    """
    if Path(source_path).is_dir():
        return _push_layout(client, source_path, ref, name, jobs, chunk_size, progress)
    with open_image_source(source_path) as source:
        selected = source.select(name)
        ref = destination(ref, selected, f"{source_path}:{name}" if name else str(source_path))
        plan = plan_image(source, selected, jobs=jobs)
        stats = transfer_blobs(
            client,
            ref,
            list(plan.blobs.values()),
            jobs=jobs,
            chunk_size=chunk_size,
            progress=progress,
        )
        digest = put_manifests(client, ref, plan.manifests)
    top = plan.manifests[-1]
    return PushResult(
        source=str(source_path),
        ref=ref,
        digest=digest,
        media_type=top.media_type,
        manifests=[m.digest for m in plan.manifests],
        stats=stats,
    )


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
