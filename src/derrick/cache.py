"""The blob cache as commands that read layers from a registry use it: a
:class:`~derrick.store.cache.BlobStore` filled from a registry on demand.

:class:`BlobCache` is the store (every method of it: :meth:`~BlobStore.lookup`,
:meth:`~BlobStore.verify_file`, :meth:`~BlobStore.remember`, :meth:`~BlobStore.reserve`,
…) plus :meth:`BlobCache.fetch`, which puts a blob of a registry into the store through
the one verified, resumable blob stream (:func:`derrick.images.cachefeed.fill`).  What
the cache holds and how it is trusted is described in :mod:`derrick.store.cache` and
:mod:`derrick.store.records`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from derrick.manifest import Descriptor
from derrick.store.cache import BlobStore, default_cache_dir
from derrick.store.records import RECORDS_KEPT, Stamp

if TYPE_CHECKING:
    from derrick.reference import Reference
    from derrick.registry import RegistryClient

__all__ = ["RECORDS_KEPT", "BlobCache", "Stamp", "default_cache_dir"]


class BlobCache(BlobStore):
    """A directory of verified blobs, filled from a registry on demand."""

    def fetch(
        self,
        client: RegistryClient,
        ref: Reference,
        desc: Descriptor,
        *,
        progress: Callable[[int], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> Path:
        """The path of the verified blob, downloading (or resuming) it if needed.

        An error writing the cache is a :class:`~derrick.store.cache.CacheDiskError`.
        """
        from derrick.images.cachefeed import fill
        from derrick.images.remote import RegistryRepository

        got = fill(
            self,
            RegistryRepository(client, ref),
            desc,
            retry=client.transport.retry,
            cancel=cancelled,
            progress=progress,
        )
        if not got.stored and progress is not None:
            progress(desc.size)  # there already: all of it is done
        return got.path
