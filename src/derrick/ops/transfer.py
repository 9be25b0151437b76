"""The one engine that moves images: :func:`copy` from an :class:`ImageSource` to an
:class:`ImageSink`, and :func:`copy_many` for several entries into one sink.

How an image moves (see ``ARCHITECTURE.md``):

1. **Plan** (:func:`derrick.images.plan.plan`): names resolved, indexes walked,
   platforms chosen, manifests and configs fetched and verified, blobs collected once.
2. **Begin**: ``sink.begin(plan)``.
3. **Blobs**, in one :class:`~derrick.images.pool.BlobPool` (the first failure cancels
   the rest): each is skipped when ``sink.has_blob``, else mounted when
   ``sink.mount_blob`` can, else handed to ``sink.put_blob`` as a
   :class:`~derrick.images.feed.Feed` (verified, resumable).  An ``ordered`` sink gets
   them one at a time, in plan order.  Configs were read whole while planning: their
   feeds give out those (verified) bytes rather than reading the source again.
4. **Manifests**, children before the indexes listing them, each once; each entry's top
   with its names.
5. **Commit**; after any failure (or an interrupt) **abort**, and the error is raised.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from derrick.digest import Digest
from derrick.errors import Cancelled, DerrickError
from derrick.images.feed import BytesBody, Feed
from derrick.images.model import (
    BlobBody,
    BlobOutcome,
    CopyResult,
    ImageName,
    ImageSink,
    ImageSource,
    Plan,
    Progress,
    Selection,
    TransferStats,
)
from derrick.images.plan import PlanItem, plan
from derrick.images.pool import BlobPool
from derrick.manifest import Descriptor
from derrick.transport import RetryPolicy

__all__ = ["DEFAULT_JOBS", "BlobCacheHook", "PlanItem", "copy", "copy_many"]

DEFAULT_JOBS = 4


class BlobCacheHook(Protocol):
    """A local store of verified blobs the engine may consult (the hook for a blob cache).

    For now the engine only asks it for a verified copy to offer sinks as
    :attr:`BlobFeed.local`; reading remote blobs through it (filled once, then reused)
    comes with the cache that implements it.
    """

    def lookup(self, desc: Descriptor) -> Path | None:
        """A file holding exactly the blob, known intact; None when there is none."""
        ...


def copy(
    source: ImageSource,
    sink: ImageSink,
    *,
    name: str | None = None,
    selection: Selection | None = None,
    names: Sequence[ImageName] | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    retry: RetryPolicy | None = None,
    cache: BlobCacheHook | None = None,
) -> CopyResult:
    """Copy the image ``name`` of ``source`` (None: its default) into ``sink``.

    ``selection`` says which platforms of an index (see
    :class:`~derrick.images.model.Selection`; None: this machine's).  ``names`` is what
    the copy is called in the sink (None keeps the source's name, its tag; ``()`` none:
    a registry stores it by digest only).  ``jobs`` blobs move at once.  ``cancel``,
    when given, stops the copy when set (and the copy sets it when it fails).
    ``retry`` is how often and how patiently a blob body that breaks off is asked for
    again (default :class:`~derrick.transport.RetryPolicy`; pass
    ``client.transport.retry`` to follow a client's).  ``cache`` is consulted for
    verified local copies (see :class:`BlobCacheHook`).  Raises the first error; the
    sink was then aborted.
    """
    item = PlanItem(
        source,
        name,
        selection if selection is not None else Selection(),
        None if names is None else tuple(names),
    )
    return copy_many(
        [item],
        sink,
        jobs=jobs,
        progress=progress,
        cancel=cancel,
        retry=retry,
        cache=cache,
    )


def copy_many(
    items: Iterable[PlanItem],
    sink: ImageSink,
    *,
    jobs: int = DEFAULT_JOBS,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    retry: RetryPolicy | None = None,
    cache: BlobCacheHook | None = None,
) -> CopyResult:
    """Copy every item into ``sink`` as one plan (each blob moves once); see :func:`copy`."""
    items = list(items)
    cancel = cancel if cancel is not None else threading.Event()
    the_plan = plan(items, retry=retry, cancel=cancel)
    mover = _Mover(the_plan, sink, jobs, progress, cancel, retry, cache)
    try:
        sink.begin(the_plan)
        mover.blobs()
        mover.manifests()
        sink.commit()
    except BaseException:
        cancel.set()
        with contextlib.suppress(Exception):
            sink.abort()  # best effort: the error that stopped the copy is the one to see
        raise
    sources = list(dict.fromkeys(item.source.description for item in items))
    return CopyResult(
        source=", ".join(sources),
        destination=sink.description,
        plan=the_plan,
        stats=mover.stats,
    )


class _Planned:
    """The config bytes a plan already holds, served as a source serves blobs."""

    def __init__(self, description: str, data: bytes) -> None:
        self.description = description
        self._data = data

    def open_blob(self, desc: Descriptor, offset: int = 0) -> BlobBody:
        return BytesBody(self._data, offset)


class _Mover:
    """Steps 3 and 4 of a copy: the blobs, then the manifests."""

    def __init__(
        self,
        the_plan: Plan,
        sink: ImageSink,
        jobs: int,
        progress: Progress | None,
        cancel: threading.Event,
        retry: RetryPolicy | None,
        cache: BlobCacheHook | None,
    ) -> None:
        self.plan = the_plan
        self.sink = sink
        self.jobs = jobs
        self.progress = progress
        self.cancel = cancel
        self.retry = retry
        self.cache = cache
        self.stats = TransferStats()
        self._lock = threading.Lock()
        # Where each blob is read from: the first entry that has it.
        self._sources: dict[Digest, ImageSource] = {}
        self._configs: dict[Digest, bytes] = {}
        for entry in the_plan.entries:
            for img in entry.images:
                if entry.source is None:
                    raise DerrickError(f"plan entry {entry.top.digest} has no source")
                for d in (img.manifest.config, *img.manifest.layers):
                    self._sources.setdefault(d.digest, entry.source)
                self._configs.setdefault(img.manifest.config.digest, img.config)

    # -- blobs ---------------------------------------------------------------------------

    def blobs(self) -> None:
        blobs = self.plan.blobs
        if self.progress is not None:
            self.progress.planned(sum(d.size for d in blobs))
        if self.sink.ordered:
            for desc in blobs:
                if self.cancel.is_set():
                    raise Cancelled("cancelled")
                self._one(desc)
            return
        BlobPool(self.jobs, self.cancel).run(blobs, self._one)

    def _one(self, desc: Descriptor) -> int:
        """Make the sink hold blob ``desc``; the bytes read from the source."""
        if self.cancel.is_set():
            raise Cancelled(f"blob {desc.digest}: cancelled")
        source = self._sources[desc.digest]
        if self.sink.has_blob(desc):
            self._finished(desc, "skipped")
            return 0
        if self.sink.mount_blob(desc, source):
            self._finished(desc, "mounted")
            return 0
        feed = self._feed(desc, source)
        if self.progress is not None:
            self.progress.blob_started(desc)
        self.sink.put_blob(feed)
        outcome: BlobOutcome
        if feed.verified:
            outcome = "copied"
        elif feed.local is not None:
            outcome = "linked"
        else:
            raise DerrickError(
                f"{self.sink.description} did not take all of blob {desc.digest}: "
                "it was not verified"
            )
        with self._lock:
            if outcome == "copied":
                self.stats.copied += 1
                self.stats.copied_bytes += feed.received
            else:
                self.stats.linked += 1
        if outcome == "linked" and self.progress is not None:
            self.progress.blob_advanced(desc, desc.size)
        if self.progress is not None:
            self.progress.blob_finished(desc, outcome)
        return feed.received

    def _feed(self, desc: Descriptor, source: ImageSource) -> Feed:
        prog = self.progress

        def advance(n: int) -> None:
            if prog is not None:
                prog.blob_advanced(desc, n)

        local = self.cache.lookup(desc) if self.cache is not None else None
        config = self._configs.get(desc.digest)
        opener = source if config is None else _Planned(source.description, config)
        return Feed(
            opener, desc, retry=self.retry, cancel=self.cancel, progress=advance, local=local
        )

    def _finished(self, desc: Descriptor, outcome: BlobOutcome) -> None:
        with self._lock:
            if outcome == "skipped":
                self.stats.skipped += 1
            else:
                self.stats.mounted += 1
        if self.progress is not None:
            self.progress.blob_advanced(desc, desc.size)
            self.progress.blob_finished(desc, outcome)

    # -- manifests -----------------------------------------------------------------------

    def manifests(self) -> None:
        """Every manifest once, in plan order (children first); tops with their names."""
        names: dict[Digest, list[ImageName]] = {}
        for entry in self.plan.entries:
            have = names.setdefault(entry.top.digest, [])
            have.extend(n for n in entry.names if n not in have)
        for desc, raw in self.plan.manifests:
            if self.cancel.is_set():
                raise Cancelled("cancelled")
            self.sink.put_manifest(desc, raw, names.get(desc.digest, ()))
