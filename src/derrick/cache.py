"""The blob cache as the pull code of :mod:`derrick.ops.pull` uses it: a
:class:`~derrick.store.cache.BlobStore` filled from a registry on demand.

:class:`BlobCache` is the store (every method of it: :meth:`~BlobStore.lookup`,
:meth:`~BlobStore.verify_file`, :meth:`~BlobStore.remember`, :meth:`~BlobStore.reserve`,
…) plus :meth:`BlobCache.fetch` and :meth:`BlobCache.fetch_into`, which download into the
store's locked, resumable partial files with :func:`derrick.download.download`.  What
the cache holds and how it is trusted is described in :mod:`derrick.store.cache` and
:mod:`derrick.store.records`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from derrick.download import Progress, download
from derrick.errors import DigestMismatchError
from derrick.manifest import Descriptor
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore, PartialBlob, default_cache_dir
from derrick.store.files import Region, Tee, copy_range
from derrick.store.records import RECORDS_KEPT, Stamp

__all__ = ["RECORDS_KEPT", "BlobCache", "Stamp", "default_cache_dir"]


class BlobCache(BlobStore):
    """A directory of verified blobs, filled from a registry on demand."""

    def fetch(
        self,
        client: RegistryClient,
        ref: Reference,
        desc: Descriptor,
        *,
        progress: Progress | None = None,
        cancelled: threading.Event | None = None,
    ) -> Path:
        """The path of the verified blob, downloading (or resuming) it if needed."""
        return self.fetch_counted(client, ref, desc, progress=progress, cancelled=cancelled)[0]

    def fetch_counted(
        self,
        client: RegistryClient,
        ref: Reference,
        desc: Descriptor,
        *,
        progress: Progress | None = None,
        cancelled: threading.Event | None = None,
    ) -> tuple[Path, int]:
        """Like :meth:`fetch`, with the count of bytes received from the registry."""
        partial = self.reserve(desc)
        if partial is None:
            if progress:
                progress(desc.size)
            return self.path(desc.digest), 0
        with partial:
            received = _download(
                partial, client, ref, desc, partial.region, partial.have, progress, cancelled
            )
            return partial.commit(), received

    def fetch_into(
        self,
        client: RegistryClient,
        ref: Reference,
        desc: Descriptor,
        region: Region,
        *,
        have: int = 0,
        progress: Progress | None = None,
        cancelled: threading.Event | None = None,
        written: Progress | None = None,
    ) -> int:
        """Fill ``region`` (a hole in an archive) with blob ``desc``, and the cache with it.

        A blob the cache holds is copied from there.  Otherwise each chunk as it
        arrives is written both into ``region`` and into the cache's partial
        file, and the blob enters the cache when its digest matches: one
        download for both.  ``have`` bytes of ``region`` come from an earlier
        attempt; the partial file may hold more, which are then used too.
        ``written`` is told the count of bytes in place (for resume state).
        Returns the count of bytes received from the registry.
        """
        while True:
            partial = self.reserve(desc)
            if partial is not None:
                break
            src = self.open_verified(self.path(desc.digest), desc)
            if src is None:  # damaged since it was looked at: drop it, download it
                continue
            try:
                copy_range(Region(src, 0, desc.size), region, 0, desc.size)
            finally:
                os.close(src)
            if progress:
                progress(desc.size)
            if written:
                written(desc.size)
            return 0
        with partial:
            cached = partial.region
            in_part = partial.have
            have = min(max(have, 0), desc.size)
            # Both places start with the same bytes: the longer run is copied over the
            # other, and only the rest is downloaded.
            if in_part > have:
                copy_range(cached, region, 0, in_part)
                have = in_part
            elif have:
                copy_range(region, cached, 0, have)
            received = _download(
                partial,
                client,
                ref,
                desc,
                Tee(region, cached),
                have,
                progress,
                cancelled,
                written,
            )
            partial.commit()
            return received


def _download(
    partial: PartialBlob,
    client: RegistryClient,
    ref: Reference,
    desc: Descriptor,
    sink: Region | Tee,
    have: int,
    progress: Progress | None,
    cancelled: threading.Event | None,
    written: Progress | None = None,
) -> int:
    """Download into ``sink`` (which includes the partial file); the bytes received.

    After a failure the partial file keeps what a later pull can resume, unless the
    content turned out wrong (it is dropped then).
    """
    try:
        received = download(
            client,
            ref,
            desc,
            sink,
            have=have,
            progress=progress,
            cancelled=cancelled,
            written=written,
        )
    except DigestMismatchError:
        partial.discard()
        raise
    with contextlib.suppress(OSError):
        partial.have = os.fstat(partial.fd).st_size
    return received
