"""Step 3 of a copy: how each blob reaches the sink (see :mod:`derrick.ops.transfer`).

:class:`BlobMover` skips what the sink has, mounts what it can, and hands the rest over
as feeds:

* to a sink that is not ``local`` (a registry) every blob streams straight from the
  source; nothing is kept on the way;
* a ``local`` sink is offered a blob the source holds as a verified local file
  (``source.local_blob``) as that file (:attr:`BlobFeed.local`);
* other blobs go through the blob store (the cache) when there is one: a blob it holds
  is offered as its file (no source read: ``linked``); a sink that ``prefers_files``
  gets every blob put into the store first (resuming its partial file) and then as its
  file, and only once every blob is there; a sink that streams gets a
  :class:`~derrick.images.cachefeed.TeeFeed` whose chunks also fill the store;
* an ``ordered`` sink (a stream) gets blobs one at a time in plan order, each as a file,
  while later ones are read ahead into the store (or, without one, a temporary store
  removed at the end) by the pool, at most twice ``jobs`` ahead.

Bytes read from the source are counted once (:attr:`TransferStats.copied_bytes`); a
blob taken from a local file without reading the source is ``linked``.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from derrick.digest import Digest
from derrick.errors import Cancelled, DerrickError, DigestMismatchError
from derrick.images.cachefeed import TeeFeed, fill, store_errors
from derrick.images.feed import BlobOpener, BytesBody, Feed, FileOpener
from derrick.images.model import (
    BlobBody,
    BlobOutcome,
    ImageSink,
    ImageSource,
    Plan,
    Progress,
    TransferStats,
)
from derrick.images.pool import BlobPool, ReadAhead
from derrick.manifest import Descriptor
from derrick.store.cache import BlobStore
from derrick.transport import RetryPolicy

__all__ = ["BlobMover"]


class _Planned:
    """The config bytes a plan already holds, served as a source serves blobs."""

    def __init__(self, description: str, data: bytes) -> None:
        self.description = description
        self._data = data

    def open_blob(self, desc: Descriptor, offset: int = 0) -> BlobBody:
        return BytesBody(self._data, offset)


@dataclass(frozen=True)
class _Got:
    """A blob made ready for a sink: the local file to offer (None: stream the source),
    the bytes read from the source for it, and whether the file is the cache's
    (``outcome`` is then what happened: copied into the cache now, or found there)."""

    desc: Descriptor
    path: Path | None = None
    received: int = 0
    outcome: BlobOutcome | None = None  # None: the feed tells (copied, or linked)


class BlobMover:
    """Step 3 of a copy: every blob of ``the_plan`` into ``sink`` (see :meth:`run`)."""

    def __init__(
        self,
        the_plan: Plan,
        sink: ImageSink,
        *,
        jobs: int,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.plan = the_plan
        self.sink = sink
        self.jobs = jobs
        self.progress = progress
        self.cancel = cancel if cancel is not None else threading.Event()
        self.retry = retry
        self.store: BlobStore | None = None
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

    def run(self, store: BlobStore | None = None) -> None:
        """Move the blobs, through ``store`` where the module docstring says; raises the
        first error (the other blobs stopped)."""
        self.store = store if self.sink.local else None
        blobs = self.plan.blobs
        if self.progress is not None:
            self.progress.planned(sum(d.size for d in blobs))
        if self.sink.ordered:
            self._ordered(blobs)
        elif self.store is not None and self.sink.prefers_files:
            self._files_first(blobs, self.store)
        else:
            BlobPool(self.jobs, self.cancel).run(blobs, self._one)

    def _one(self, desc: Descriptor) -> int:
        """Make the sink hold blob ``desc``; the bytes read from the source."""
        if not self._needed(desc):
            return 0
        local = self._source_local(desc)
        if self.store is not None and local is None:
            return self._through(desc, self.store)
        return self._put(_Got(desc, local))

    def _files_first(self, blobs: Sequence[Descriptor], store: BlobStore) -> None:
        """Every blob the sink lacks into the cache, then each to the sink as a file."""
        wanted: dict[Digest, _Got] = {}

        def get(desc: Descriptor) -> int:
            if not self._needed(desc):
                return 0
            got = self._get(desc, store)
            with self._lock:
                wanted[desc.digest] = got
            return got.received

        BlobPool(self.jobs, self.cancel).run(blobs, get)
        todo = [d for d in blobs if d.digest in wanted]
        BlobPool(self.jobs, self.cancel).run(todo, lambda d: self._put(wanted[d.digest]))

    def _ordered(self, blobs: Sequence[Descriptor]) -> None:
        """One blob at a time in plan order; later ones read ahead into a store."""
        temporary = self.store is None
        store = self.store or BlobStore(Path(tempfile.mkdtemp(prefix="derrick-spool-")))
        try:
            with ReadAhead(
                blobs,
                lambda d: self._get(d, store),
                jobs=self.jobs,
                window=2 * self.jobs,
                cancel=self.cancel,
            ) as ahead:
                for desc in blobs:
                    got = ahead.take()
                    if self._needed(desc):
                        self._put(got)
                    if temporary and got.outcome is not None and got.path is not None:
                        got.path.unlink(missing_ok=True)  # written: no longer needed
        finally:
            if temporary:
                store.close()
                shutil.rmtree(store.root, ignore_errors=True)

    def _needed(self, desc: Descriptor) -> bool:
        """False when the sink has the blob or mounted it (both counted here)."""
        if self.cancel.is_set():
            raise Cancelled(f"blob {desc.digest}: cancelled")
        if self.sink.has_blob(desc):
            self._finished(desc, "skipped")
            return False
        if self.sink.mount_blob(desc, self._sources[desc.digest]):
            self._finished(desc, "mounted")
            return False
        return True

    def _source_local(self, desc: Descriptor) -> Path | None:
        """A verified local file of the source, for a local sink (None for others)."""
        if not self.sink.local:
            return None
        return self._sources[desc.digest].local_blob(desc)

    def _opener(self, desc: Descriptor) -> BlobOpener:
        source = self._sources[desc.digest]
        config = self._configs.get(desc.digest)
        return source if config is None else _Planned(source.description, config)

    def _get(self, desc: Descriptor, store: BlobStore) -> _Got:
        """The blob as a local file: the source's, else the store's (filled if need be)."""
        local = self._source_local(desc)
        if local is not None:
            return _Got(desc, local)
        with store_errors(store):
            found = store.lookup(desc)
        if found is not None:
            return _Got(desc, found, 0, "linked")
        self._started(desc)
        filled = fill(
            store,
            self._opener(desc),
            desc,
            retry=self.retry,
            cancel=self.cancel,
            progress=self._advance(desc),
        )
        return _Got(desc, filled.path, filled.received, "copied" if filled.stored else "linked")

    def _through(self, desc: Descriptor, store: BlobStore) -> int:
        """Stream the blob to the sink through the store: from its file when it has the
        blob, else from the source while the same bytes fill its partial file."""
        while True:
            with store_errors(store):
                found = store.lookup(desc)
                partial = None if found is not None else store.reserve(desc)
            if found is not None:
                return self._put(_Got(desc, found, 0, "linked"))
            if partial is not None:
                break
        with partial:
            self._started(desc)
            tee = TeeFeed(
                self._opener(desc),
                desc,
                partial,
                retry=self.retry,
                cancel=self.cancel,
                progress=self._advance(desc),
            )
            try:
                self.sink.put_blob(tee)
            except DigestMismatchError:
                partial.discard()
                raise
            if not tee.verified:
                raise self._not_taken(desc)
            with store_errors(store):
                partial.commit()
        self._count(desc, "copied", tee.received)
        return tee.received

    def _put(self, got: _Got) -> int:
        """Hand the blob to the sink: as the file ``got`` offers, else streamed."""
        desc = got.desc
        if got.outcome is not None and got.path is not None:  # the store's verified file
            feed = Feed(
                FileOpener(got.path), desc, retry=self.retry, cancel=self.cancel, local=got.path
            )
        else:
            self._started(desc)
            feed = Feed(
                self._opener(desc),
                desc,
                retry=self.retry,
                cancel=self.cancel,
                progress=self._advance(desc),
                local=got.path,
            )
        self.sink.put_blob(feed)
        outcome: BlobOutcome
        received = got.received
        if got.outcome is not None:
            outcome = got.outcome
        elif feed.verified:
            outcome, received = "copied", feed.received
        elif feed.local is not None:
            outcome = "linked"
        else:
            raise self._not_taken(desc)
        self._count(desc, outcome, received)
        return received

    def _not_taken(self, desc: Descriptor) -> DerrickError:
        return DerrickError(
            f"{self.sink.description} did not take all of blob {desc.digest}: it was not verified"
        )

    # -- counting ------------------------------------------------------------------------

    def _started(self, desc: Descriptor) -> None:
        if self.progress is not None:
            self.progress.blob_started(desc)

    def _advance(self, desc: Descriptor) -> Callable[[int], None]:
        prog = self.progress

        def advance(n: int) -> None:
            if prog is not None:
                prog.blob_advanced(desc, n)

        return advance

    def _count(self, desc: Descriptor, outcome: BlobOutcome, received: int) -> None:
        """A blob the sink took: counted, and finished on the progress display."""
        with self._lock:
            if outcome == "copied":
                self.stats.copied += 1
                self.stats.copied_bytes += received
            else:
                self.stats.linked += 1
        if self.progress is not None:
            if outcome == "linked":
                self.progress.blob_advanced(desc, desc.size)
            self.progress.blob_finished(desc, outcome)

    def _finished(self, desc: Descriptor, outcome: BlobOutcome) -> None:
        with self._lock:
            if outcome == "skipped":
                self.stats.skipped += 1
            else:
                self.stats.mounted += 1
        if self.progress is not None:
            self.progress.blob_advanced(desc, desc.size)
            self.progress.blob_finished(desc, outcome)
