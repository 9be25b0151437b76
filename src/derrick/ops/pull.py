"""Pull an image from a registry onto disk: OCI layout, OCI archive or docker-archive.

Blobs download in parallel into the shared :class:`~derrick.cache.BlobCache`,
each streamed to disk while it is hashed, so memory stays flat whatever the
image size.  Sinks take verified blobs from the cache: an OCI layout hard-links
them (no copy on the same filesystem); the archive writers stream them into one
tar in a single pass, each layer as soon as it and those before it are done.
Output files are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from derrick.cache import BlobCache
from derrick.digest import Digest
from derrick.errors import ManifestError, UsageError
from derrick.layout.archive import ArchiveImage, write_docker_archive, write_oci_archive
from derrick.layout.oci import OCILayout
from derrick.manifest import Descriptor, ImageConfig, ImageManifest, Index, Platform
from derrick.ops.resolve import fetch_child
from derrick.reference import Reference
from derrick.registry import RegistryClient

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
    if p.suffix in (".tar", ".tgz") or p.name.endswith(".tar.gz"):
        return "docker-archive"
    return "oci"


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
        self.pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="derrick-pull")
        self.futures: dict[Digest, Future[Path]] = {}
        self.cancelled = threading.Event()
        self.downloaded = 0
        self._lock = threading.Lock()

    def submit(self, desc: Descriptor) -> None:
        if desc.digest not in self.futures:
            self.futures[desc.digest] = self.pool.submit(self._fetch, desc)

    def _fetch(self, desc: Descriptor) -> Path:
        prog = self.progress
        if prog:
            prog.blob_started(desc)
        cached = self.cache.has(desc)

        def advance(n: int) -> None:
            if prog:
                prog.blob_advanced(desc, n)

        path = self.cache.fetch(
            self.client, self.ref, desc, progress=advance, cancelled=self.cancelled
        )
        if not cached:
            with self._lock:
                self.downloaded += desc.size
        if prog:
            prog.blob_finished(desc)
        return path

    def wait(self, digest: Digest) -> Path:
        return self.futures[digest].result()

    def wait_all(self) -> None:
        for f in list(self.futures.values()):
            f.result()

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
        return None, top.descriptor, [(m, top.descriptor)]
    if all_platforms:
        images = []
        for d in m.manifests:
            images.append((fetch_child(client, ref, d), d))
        return m, top.descriptor, images
    d = m.select(platform or Platform.host())
    child = fetch_child(client, ref, d)
    return None, Descriptor(child.media_type, d.digest, d.size), [(child, d)]


def _config(client: RegistryClient, ref: Reference, cache: BlobCache, m: ImageManifest) -> bytes:
    path = cache.fetch(client, ref, m.config)
    data = path.read_bytes()
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
    """Pull ``ref`` to ``dest`` (a directory, a tar file, or ``"-"`` for ``stdout``)."""
    dest_s = str(dest)
    fmt = infer_format(dest_s, format)
    if all_platforms and fmt == "docker-archive":
        raise UsageError(
            "a docker-archive holds one platform; --all-platforms needs --format oci or oci-archive"
        )
    if dest_s == "-" and fmt == "oci":
        raise UsageError(
            "an OCI layout is a directory and cannot go to standard output",
            hint="use --format oci-archive",
        )
    cache = cache or BlobCache()
    index, top_desc, images = _select_images(client, ref, platform, all_platforms)
    pulled = [PulledImage(m, d, _config(client, ref, cache, m)) for m, d in images]

    if progress is not None:
        progress.planned(sum(layer.size for p in pulled for layer in p.manifest.layers))
    fetcher = _Fetcher(client, ref, cache, jobs, progress)
    failed = True
    try:
        layout: OCILayout | None = None
        if fmt == "oci":
            layout = OCILayout.create(Path(dest_s))
        for p in pulled:
            for layer in p.manifest.layers:
                if layout is not None and layout.has_blob(layer.digest, layer.size):
                    continue
                fetcher.submit(layer)
        if layout is not None:
            _write_layout(layout, ref, fetcher, cache, pulled, index, top_desc)
        else:
            archive_images = _archive_images(ref, pulled, index)
            writer = write_oci_archive if fmt == "oci-archive" else write_docker_archive

            def blob_file(digest: Digest) -> Path:
                if digest in fetcher.futures:
                    return fetcher.wait(digest)
                return cache.path(digest)

            with _output(dest_s, stdout) as out:
                writer(out, archive_images, blob_file)
        failed = False
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


def _write_layout(
    layout: OCILayout,
    ref: Reference,
    fetcher: _Fetcher,
    cache: BlobCache,
    pulled: Sequence[PulledImage],
    index: Index | None,
    top_desc: Descriptor,
) -> None:
    for p in pulled:
        layout.write_blob(p.config, p.manifest.config.digest)
        for layer in p.manifest.layers:
            if layout.has_blob(layer.digest, layer.size):
                continue
            layout.add_blob_file(fetcher.wait(layer.digest), layer.digest)
        layout.write_blob(p.manifest.raw, p.descriptor.digest)
    if index is not None:
        layout.write_blob(index.raw, index.digest)
    desc = top_desc
    if index is None and pulled and pulled[0].descriptor.platform is not None:
        desc = Descriptor(
            pulled[0].manifest.media_type,
            pulled[0].descriptor.digest,
            pulled[0].descriptor.size,
            platform=pulled[0].descriptor.platform,
        )
    layout.add_manifest(desc, ref_name=_ref_name(ref), image_name=str(ref))


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


@contextlib.contextmanager
def _output(dest: str, stdout: BinaryIO | None) -> Iterator[BinaryIO]:
    """A file to write an archive to: a temp file renamed over DEST on success, or stdout."""
    if dest == "-":
        out = stdout or sys.stdout.buffer
        yield out
        out.flush()
        return
    target = Path(dest)
    parent = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
