"""Pull an image from a registry onto disk: OCI layout, OCI archive or docker-archive.

Blobs download in parallel, each streamed to disk while it is hashed, so memory
stays flat whatever the image size, and nothing unverified gets a final name.
Every pull fills the shared :class:`~derrick.cache.BlobCache`, and takes from it
only blobs it knows to be good (see :mod:`derrick.store.cache`: a record of each
verified file, else a re-hash; a damaged blob is downloaded again).

* OCI layout: a copy by the engine (:func:`derrick.ops.transfer.copy`) from the
  registry repository to a :class:`~derrick.images.layout.LayoutDir`.  Blobs go into
  the cache first and are copied into the layout (reflinks where the filesystem can
  clone files; never hard links); a new layout is assembled in a hidden directory
  beside the destination and renamed into place, an existing one gets its blobs first
  and its ``index.json`` entries last (see :mod:`derrick.images.layout`).
* Archive file: the tar is laid out with a hole for each layer not in the cache,
  and workers ``pwrite`` each layer into its hole as it arrives (one pass, no
  temporary copy), writing the same bytes into the cache's partial file, which
  enters the cache when the digest matches.  The file is hidden
  (``.NAME.derrick-partial``) until complete; after a failure it stays, with a
  JSON resume state beside it, for the next run.
* Standard output: layers go through the cache and are written in order.

An interrupted download resumes with a ``Range`` request, after re-hashing the
bytes already there (see :mod:`derrick.download`).  An OS error (a full disk, say)
is reported as a :class:`~derrick.errors.DiskError` naming the destination as
given, or the blob cache, and what is kept to resume.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from derrick.cache import BlobCache
from derrick.digest import Digest
from derrick.download import Region
from derrick.errors import (
    DigestMismatchError,
    DiskError,
    ManifestError,
    UsageError,
)
from derrick.images.archivefile import ResumeState, describe_os_error, kept_hint, lay_out
from derrick.images.layout import LayoutDir
from derrick.images.model import BlobOutcome, ImageName, Selection
from derrick.images.remote import RegistryRepository
from derrick.layout.archive import (
    ArchiveImage,
    BlobFile,
    write_docker_archive,
    write_oci_archive,
)
from derrick.manifest import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageConfig,
    ImageManifest,
    Index,
    Platform,
)
from derrick.ops import transfer
from derrick.oserrors import writing_failed
from derrick.platform import check_platform, require_image
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.store.cache import CacheDiskError

Format = Literal["oci", "oci-archive", "docker-archive"]
DEFAULT_JOBS = 4


class PullProgress(Protocol):
    """Receives progress of a pull; every method may be called from worker threads."""

    def planned(self, total_bytes: int) -> None: ...

    def blob_started(self, desc: Descriptor) -> None: ...

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None: ...

    def blob_finished(self, desc: Descriptor) -> None: ...


@dataclass(frozen=True)
class PulledImage:
    manifest: ImageManifest
    descriptor: Descriptor
    config: bytes


@dataclass
class PullResult:
    ref: Reference
    destination: str
    format: Format
    digest: Digest  # digest of what was stored at the top (index or manifest)
    images: list[PulledImage] = field(default_factory=list)
    downloaded_bytes: int = 0
    #: OCI layout: when the layout now holds more than one image under the pull's tag (of
    #: different repositories), the full names of all of them; the tag alone is then
    #: ambiguous and an image is picked by its full name or digest
    same_tag: list[str] = field(default_factory=list)


def infer_format(dest: str, fmt: str | None) -> Format:
    """The output format: as given, else from DEST (``.tar`` → docker-archive, else OCI dir)."""
    if fmt:
        if fmt not in ("oci", "oci-archive", "docker-archive"):
            raise UsageError(
                f"unknown format {fmt!r}", hint="use oci, oci-archive or docker-archive"
            )
        return fmt  # type: ignore[return-value]
    if dest == "-":
        raise UsageError(
            "cannot guess the format of standard output",
            hint="pass --format oci-archive or --format docker-archive",
        )
    p = Path(dest)
    if p.is_dir():
        return "oci"
    if p.suffix == ".tgz" or p.name.endswith(".tar.gz"):
        raise UsageError(
            f"derrick writes uncompressed archives, not {p.name}",
            hint="name it .tar, or pipe '-o -' through gzip",
        )
    if p.suffix == ".tar":
        return "docker-archive"
    return "oci"


def output_format(dest: str, fmt: str | None, *, all_platforms: bool = False) -> Format:
    """The format of a pull to ``dest`` (see :func:`infer_format`), refusing what cannot
    be: every platform in a docker-archive, an OCI layout on standard output."""
    out = infer_format(dest, fmt)
    if all_platforms and out == "docker-archive":
        raise UsageError(
            "a docker-archive holds one platform; --all-platforms needs --format oci or oci-archive"
        )
    if dest == "-" and out == "oci":
        raise UsageError(
            "an OCI layout is a directory and cannot go to standard output",
            hint="use --format oci-archive",
        )
    return out


def repo_tag(ref: Reference) -> str:
    """A ``name:tag`` for docker manifest.json; a digest-only reference gets a tag from it."""
    tag = ref.tag or (f"sha256-{ref.digest.hex[:12]}" if ref.digest else "latest")
    return f"{ref.familiar_name}:{tag}"


class _Fetcher:
    """Downloads blobs into the cache with a pool of workers; one future per digest."""

    def __init__(
        self,
        client: RegistryClient,
        ref: Reference,
        cache: BlobCache,
        jobs: int,
        progress: PullProgress | None,
    ) -> None:
        self.client = client
        self.ref = ref
        self.cache = cache
        self.progress = progress
        self.jobs = max(1, jobs)
        self.pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="derrick-pull")
        self.futures: dict[Digest, Future[Path]] = {}
        self.cancelled = threading.Event()
        self.downloaded = 0
        self._lock = threading.Lock()

    def plan(self, blobs: Sequence[Descriptor]) -> None:
        """Tell the progress display how many bytes the blobs about to be fetched hold."""
        if self.progress is not None:
            self.progress.planned(sum(b.size for b in blobs))

    def count(self, nbytes: int) -> None:
        with self._lock:
            self.downloaded += nbytes

    def submit(self, desc: Descriptor) -> None:
        """Fetch ``desc`` into the cache."""
        if desc.digest not in self.futures:
            self.futures[desc.digest] = self.pool.submit(self._fetch, desc)

    def submit_region(
        self, desc: Descriptor, region: Region, have: int, written: Callable[[int], None]
    ) -> None:
        """Fetch ``desc`` straight into ``region`` of an output file."""
        self.futures[desc.digest] = self.pool.submit(self._fill, desc, region, have, written)

    def _advance(self, desc: Descriptor) -> Callable[[int], None]:
        prog = self.progress

        def advance(n: int) -> None:
            if prog:
                prog.blob_advanced(desc, n)

        return advance

    def _fill(
        self, desc: Descriptor, region: Region, have: int, written: Callable[[int], None]
    ) -> Path:
        if self.progress:
            self.progress.blob_started(desc)
        received = self.cache.fetch_into(
            self.client,
            self.ref,
            desc,
            region,
            have=have,
            progress=self._advance(desc),
            cancelled=self.cancelled,
            written=written,
        )
        self.count(received)
        if self.progress:
            self.progress.blob_finished(desc)
        return Path()

    def _fetch(self, desc: Descriptor) -> Path:
        if self.progress:
            self.progress.blob_started(desc)
        path, received = _from_cache(
            self.cache,
            self.client,
            self.ref,
            desc,
            progress=self._advance(desc),
            cancelled=self.cancelled,
        )
        self.count(received)
        if self.progress:
            self.progress.blob_finished(desc)
        return path

    def get(self, desc: Descriptor) -> Path:
        """The cached blob ``desc``, fetched now if it was not submitted."""
        self.submit(desc)
        return self.wait(desc.digest)

    def wait(self, digest: Digest) -> Path:
        return self.futures[digest].result()

    def failures(self) -> dict[Digest, BaseException]:
        """The error of each finished fetch that failed."""
        out: dict[Digest, BaseException] = {}
        for digest, f in self.futures.items():
            if f.done() and not f.cancelled():
                e = f.exception()
                if e is not None:
                    out[digest] = e
        return out

    def abort(self) -> None:
        """Stop: pending fetches are dropped, running ones stop at their next chunk.

        Returns once no worker is running, so a file they write into may be closed.
        """
        self.cancelled.set()
        for f in self.futures.values():
            f.cancel()
        wait(list(self.futures.values()))

    def close(self, *, failed: bool) -> None:
        if failed:
            self.cancelled.set()
        self.pool.shutdown(wait=True, cancel_futures=failed)


def _select_images(
    client: RegistryClient,
    ref: Reference,
    platform: Platform | None,
    all_platforms: bool,
) -> tuple[Index | None, Descriptor, list[tuple[ImageManifest, Descriptor]]]:
    top = client.get_manifest(ref)
    m = top.manifest
    if isinstance(m, ImageManifest):
        if platform is not None and not all_platforms:  # the platform is in the config
            check_platform(
                str(ref), m, _fetch_config(client, ref, m) if m.is_image else None, platform
            )
        return None, top.descriptor, [(m, top.descriptor)]
    if all_platforms:
        images = []
        for d in m.manifests:
            images.append((_fetch_child(client, ref, d), d))
        return m, top.descriptor, images
    d = m.select(platform or Platform.host())
    child = _fetch_child(client, ref, d)
    return None, Descriptor(child.media_type, d.digest, d.size), [(child, d)]


def _config(
    client: RegistryClient,
    ref: Reference,
    cache: BlobCache,
    m: ImageManifest,
    fetcher_count: Callable[[int], None],
) -> bytes:
    if m.config.size > MAX_MANIFEST_SIZE:  # refused before a byte of it is downloaded
        raise ManifestError(
            f"config {m.config.digest} of {ref} is {m.config.size} bytes, "
            f"more than the {MAX_MANIFEST_SIZE} byte limit"
        )
    path, received = _from_cache(cache, client, ref, m.config)
    fetcher_count(received)
    data = path.read_bytes()
    if not m.is_image:
        return data  # an artifact's config: whatever its type says
    try:
        ImageConfig.parse(data)  # refuse a config that is not one before writing anything
    except ManifestError as e:
        raise ManifestError(f"config {m.config.digest} of {ref}: {e.message}") from None
    return data


def pull(
    client: RegistryClient,
    ref: Reference,
    dest: str | Path,
    *,
    format: Format | None = None,
    platform: Platform | None = None,
    all_platforms: bool = False,
    jobs: int = DEFAULT_JOBS,
    cache: BlobCache | None = None,
    progress: PullProgress | None = None,
    stdout: BinaryIO | None = None,
) -> PullResult:
    """Pull ``ref`` to ``dest`` (a directory, a tar file, or ``"-"`` for ``stdout``).

    Nothing is written under the final name unless the pull succeeds: a new OCI
    layout is built in a hidden directory beside it and renamed at the end (an
    existing one gets its blobs first and its ``index.json`` entry last), and an
    archive file is written as a hidden partial file (kept after a failure, to
    resume; see :func:`_write_archive_file`).
    """
    dest_s = str(dest)
    fmt = output_format(dest_s, format, all_platforms=all_platforms)
    if dest_s == "-" and stdout is None:
        raise UsageError("a pull to - writes to a stream, and none was given (stdout=)")
    cache = cache or BlobCache()
    if fmt == "oci":
        return _pull_layout(client, ref, dest_s, platform, all_platforms, jobs, cache, progress)
    index, top_desc, images = _select_images(client, ref, platform, all_platforms)
    if fmt == "docker-archive":
        for m, _ in images:
            require_image(str(ref), m, "a docker-archive holds container images only")
    fetcher = _Fetcher(client, ref, cache, jobs, progress)
    failed = True
    try:
        pulled = [
            PulledImage(m, d, _config(client, ref, cache, m, fetcher.count)) for m, d in images
        ]
        layers = _unique_layers(pulled)
        images_ = _archive_images(ref, pulled, index)
        writer = write_oci_archive if fmt == "oci-archive" else write_docker_archive
        if dest_s == "-":
            # A pipe cannot seek: layers go through the cache, written in order.
            fetcher.plan(layers)
            for layer in layers:
                fetcher.submit(layer)
            assert stdout is not None
            out = stdout
            writer(out, images_, fetcher.wait)
            out.flush()
        else:
            _write_archive_file(Path(dest_s), writer, images_, layers, fetcher)
        failed = False
    except (_CacheFailure, OSError) as e:
        if dest_s == "-" and not isinstance(e, _CacheFailure):
            raise  # a closed pipe and the like: the caller's to report
        fetcher.close(failed=True)  # no worker may still be writing what is reported on
        raise _disk_error(e, dest_s, cache, images) from None
    finally:
        fetcher.close(failed=failed)
    return PullResult(
        ref=ref,
        destination=dest_s,
        format=fmt,
        digest=top_desc.digest,
        images=pulled,
        downloaded_bytes=fetcher.downloaded,
    )


class _CacheFailure(Exception):
    """An OS error writing the blob cache, told apart from one writing the destination."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _from_cache(
    cache: BlobCache,
    client: RegistryClient,
    ref: Reference,
    desc: Descriptor,
    *,
    progress: Callable[[int], None] | None = None,
    cancelled: threading.Event | None = None,
) -> tuple[Path, int]:
    """:meth:`BlobCache.fetch_counted`, its OS errors marked as the cache's."""
    try:
        return cache.fetch_counted(client, ref, desc, progress=progress, cancelled=cancelled)
    except OSError as e:
        raise _CacheFailure(e) from e


def _disk_error(
    error: BaseException,
    dest: str,
    cache: BlobCache,
    images: Sequence[tuple[ImageManifest, Descriptor]],
) -> DiskError:
    """What to say of an OS error during a pull: it names the path the user gave (or the
    blob cache), not an internal name, and what is left behind to resume, if anything."""
    e = error.error if isinstance(error, _CacheFailure) else error
    assert isinstance(e, OSError)
    reason, again = describe_os_error(e)
    kept: list[str] = []  # what is left behind, for a re-run to resume
    files = 0
    plural = False
    if isinstance(error, _CacheFailure):
        blobs = [b for m, _ in images for b in (m.config, *m.layers)]
        partial = sorted({p for b in blobs if (p := cache.partial_path(b.digest)).exists()})
        if len(partial) == 1:
            kept.append(f"the partial download {partial[0]}")
        elif partial:
            where = partial[0].parent if len({p.parent for p in partial}) == 1 else cache.root
            kept.append(f"{len(partial)} partial downloads in {where} (*.partial)")
            plural = True
        files += len(partial)
    if dest != "-":
        target = Path(dest)
        part = target.parent / f".{target.name}.derrick-partial"
        if part.exists() and part.with_name(part.name + ".json").exists():
            kept.append(f"{part} (and its .json resume state)")
            files += 2
        elif part.exists():
            kept.append(str(part))
            files += 1
    if kept:
        hint = kept_hint(kept, files, again, plural=plural)
    else:
        hint = f"nothing is left behind: {again}"
    if isinstance(error, _CacheFailure):
        shown = "standard output" if dest == "-" else dest
        return DiskError(
            f"{reason} writing the blob cache {cache.root} (pulling to {shown})",
            errno=e.errno,
            hint=f"{hint}; --cache-dir or DERRICK_CACHE_DIR chooses another cache",
        )
    return DiskError(writing_failed(e, dest), errno=e.errno, hint=hint)


def _unique_layers(pulled: Sequence[PulledImage]) -> list[Descriptor]:
    seen: dict[Digest, Descriptor] = {}
    for p in pulled:
        for layer in p.manifest.layers:
            seen.setdefault(layer.digest, layer)
    return list(seen.values())


#: What a pull says of a full blob cache: how to choose another one.
CACHE_REMEDY = "--cache-dir or DERRICK_CACHE_DIR chooses another cache"


class _EngineProgress:
    """A :class:`PullProgress` as the engine's :class:`~derrick.images.model.Progress`."""

    def __init__(self, progress: PullProgress) -> None:
        self._progress = progress

    def planned(self, total_bytes: int) -> None:
        self._progress.planned(total_bytes)

    def blob_started(self, desc: Descriptor) -> None:
        self._progress.blob_started(desc)

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        self._progress.blob_advanced(desc, nbytes)

    def blob_finished(self, desc: Descriptor, outcome: BlobOutcome) -> None:
        self._progress.blob_finished(desc)


def _pull_layout(
    client: RegistryClient,
    ref: Reference,
    dest: str,
    platform: Platform | None,
    all_platforms: bool,
    jobs: int,
    cache: BlobCache,
    progress: PullProgress | None,
) -> PullResult:
    """Pull into the OCI layout ``dest``: a copy by the engine, through ``cache``."""
    if all_platforms:
        selection = Selection(all=True)
    else:
        selection = Selection(platforms=(platform,) if platform is not None else ())
    sink = LayoutDir(dest, store=cache)
    try:
        result = transfer.copy(
            RegistryRepository(client, ref),
            sink,
            selection=selection,
            names=(ImageName(ref.name, ref.tag),),
            jobs=jobs,
            progress=_EngineProgress(progress) if progress is not None else None,
            retry=client.transport.retry,
            cache=cache,
        )
    except CacheDiskError as e:
        raise e.pulling_to(dest, remedy=CACHE_REMEDY) from None
    return PullResult(
        ref=ref,
        destination=dest,
        format="oci",
        digest=result.digest,
        images=[PulledImage(img.manifest, img.descriptor, img.config) for img in result.images],
        downloaded_bytes=result.stats.copied_bytes,
        same_tag=sink.same_tag,
    )


def _ref_name(ref: Reference) -> str | None:
    return ref.tag if ref.tag else None


def _archive_images(
    ref: Reference, pulled: Sequence[PulledImage], index: Index | None
) -> list[ArchiveImage]:
    first = pulled[0]
    children = tuple((p.manifest, p.config) for p in pulled[1:])
    return [
        ArchiveImage(
            manifest=first.manifest,
            config=first.config,
            ref_name=_ref_name(ref),
            image_name=str(ref),
            repo_tags=(repo_tag(ref),),
            index=index,
            children=children if index is not None else (),
        )
    ]


def _write_archive_file(
    target: Path,
    writer: Callable[[BinaryIO, Sequence[ArchiveImage], BlobFile], dict[Digest, int]],
    images: Sequence[ArchiveImage],
    layers: Sequence[Descriptor],
    fetcher: _Fetcher,
) -> None:
    """Write an archive to a file in one pass, layers downloaded in parallel into place.

    The tar is laid out first: small members are written and each layer not in
    the cache gets a hole of its exact size.  Workers then fill the holes with
    ``pwrite`` as the bytes arrive, so every byte is downloaded once, and write
    the same bytes into the cache (:meth:`BlobCache.fetch_into`).  The file
    is a hidden partial file until all is verified, then renamed to ``target``.
    After a failure the partial file and its resume state stay, and the next
    run resumes them.
    """
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    part = parent / f".{target.name}.derrick-partial"
    state = ResumeState(parent / f".{target.name}.derrick-partial.json")
    by_digest = {layer.digest: layer for layer in layers}

    def blob_file(digest: Digest) -> Path | None:
        return fetcher.cache.lookup(by_digest[digest])

    created = not part.exists()
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o666)
    holes: dict[Digest, int] = {}
    started = ok = False
    try:
        # The layout is deterministic, so rewriting the small members over an
        # earlier partial file leaves the bytes already downloaded in place.
        holes = lay_out(fd, lambda out: writer(out, images, blob_file))
        have = {d: state.resumable(d, off) for d, off in holes.items()}
        state.start(holes, have)
        started = True
        fetcher.plan([by_digest[d] for d in holes])
        for digest, offset in holes.items():
            desc = by_digest[digest]
            fetcher.submit_region(
                desc, Region(fd, offset, desc.size), have[digest], state.progress(digest)
            )
        for digest in holes:
            fetcher.wait(digest)
        # No fsync: the rename guards against interrupted and failed pulls, as for
        # OCI layouts; forcing a GiB to disk here would double the time of a pull.
        os.replace(part, target)
        ok = True
        state.remove()
    finally:
        if not ok:
            # Workers write into fd: stop them all before it is closed.
            fetcher.abort()
            for digest, error in fetcher.failures().items():
                if digest in holes and isinstance(error, DigestMismatchError):
                    state.forget(digest)
            if started:
                state.save()
            elif created:
                with contextlib.suppress(OSError):
                    part.unlink()
        os.close(fd)


def _fetch_config(client: RegistryClient, ref: Reference, manifest: ImageManifest) -> ImageConfig:
    """The image config of ``manifest``, read whole and verified."""
    raw = client.get_blob_bytes(ref, manifest.config)
    try:
        return ImageConfig.parse(raw)
    except ManifestError as e:
        raise ManifestError(f"config {manifest.config.digest} of {ref}: {e.message}") from None


def _fetch_child(client: RegistryClient, ref: Reference, desc: Descriptor) -> ImageManifest:
    """An index entry's image manifest, verified against the entry's digest and size."""
    got = client.get_manifest(ref.with_digest(desc.digest))
    if len(got.raw) != desc.size:
        raise ManifestError(
            f"manifest {desc.digest} of {ref.name} is {len(got.raw)} bytes "
            f"but the index says {desc.size}"
        )
    if not isinstance(got.manifest, ImageManifest):
        raise ManifestError(f"index entry {desc.digest} of {ref} is not an image manifest")
    return got.manifest
