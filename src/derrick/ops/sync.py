"""Mirror many images: :func:`sync`, incremental, within rate limits, one shard of many.

For every item of the plan (:mod:`derrick.ops.syncplan`), ``jobs`` at a time:

1. **Check** (:mod:`derrick.ops.synccheck`): ``HEAD`` the destination name and the source
   tag (its digest; ``ratelimit-*`` headers read).  When the destination already names what
   a copy would store, the item is *unchanged* and nothing else is asked.  What a copy
   stores is the source digest, except for an index copied with a platform selection: then
   a record of an earlier run (:class:`~derrick.ops.syncparts.Records`) or the index itself
   (one ``GET``) says.
2. **Budget**: the pulls the copy costs (see :mod:`derrick.ops.syncreport`) are taken from
   ``max_pulls`` and from the source registry's remaining count before any ``GET``; when
   either would run out the sync stops starting copies, checks the rest, and reports what
   is left undone and the registry's window.  A 429 the transport could not wait out
   stops it the same way.
3. **Copy**: :func:`derrick.images.engine.copy` of the digest the check found (so a tag
   that moves meanwhile is not half-copied), the destination tag put last.  Into a
   registry: blobs the destination has are skipped, blobs another repository of the
   destination registry holds are mounted, and the rest stream through verified.  Into an
   OCI layout (:mod:`derrick.ops.synclayout`): blobs go through the blob store, which keeps
   them for later runs, and the image is named in ``index.json`` last.
4. **Signatures** (``digest_tags``): cosign's ``sha256-<hex>.sig``, ``.att`` and ``.sbom``
   tags of the digest the destination names and of every manifest copied are mirrored too,
   when the source has them.

One image's failure does not stop the others.  Re-running after an interrupt or a failure
redoes only what is unfinished: finished images are unchanged, and blobs already stored are
skipped.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from derrick.errors import (
    Cancelled,
    DerrickError,
    TooManyRequestsError,
    UsageError,
)
from derrick.images.model import ImageName, ImageSink, Selection
from derrick.ops.synccheck import Checker, Found
from derrick.ops.syncconfig import SyncConfig, load_config
from derrick.ops.syncparts import (
    BlobMap,
    Meter,
    MirrorRepository,
    OutOfPulls,
    Records,
    needs_index,
)
from derrick.ops.syncplan import Shard, SyncItem, SyncPlan, plan_sync
from derrick.ops.syncqueue import WorkQueue
from derrick.ops.syncreport import (
    Budget,
    BytesMoved,
    ImageOutcome,
    SyncInterrupted,
    SyncProgress,
    SyncReport,
    reason_of,
)
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore

if TYPE_CHECKING:
    from derrick.ops.synclayout import LayoutDestination

__all__ = ["DEFAULT_JOBS", "SyncProgress", "sync"]

DEFAULT_JOBS = 4
#: Blobs of one image that move at once.
BLOB_JOBS = 4
_SIGNATURE_SUFFIXES = ("sig", "att", "sbom")


def sync(
    config_or_plan: SyncConfig | SyncPlan | str | Path,
    *,
    client: RegistryClient | None = None,
    jobs: int = DEFAULT_JOBS,
    max_pulls: int | None = None,
    shard: Shard | None = None,
    dry_run: bool = False,
    cache_dir: str | Path | None = None,
    progress: SyncProgress | None = None,
    chunk_size: int | None = 64 * 1024 * 1024,
) -> SyncReport:
    """Mirror what ``config_or_plan`` names; the :class:`SyncReport`.

    ``config_or_plan`` is a configuration file's path, a :class:`SyncConfig`, or a
    :class:`SyncPlan` made by :func:`~derrick.ops.syncplan.plan_sync` (``shard`` then does
    not apply).  ``client`` (default: one with the usual credentials, closed at the end)
    reaches every registry (:func:`derrick.sync` also takes a :class:`derrick.Client`).
    ``jobs`` images copy at once.  ``max_pulls`` caps the pulls spent (see
    :mod:`derrick.ops.syncreport`).  ``dry_run`` checks and reports without
    copying.  ``cache_dir`` is derrick's blob cache (see :mod:`derrick.store.cache`): copies
    into an OCI layout keep their blobs there for later runs, and what an index copied
    with a platform selection became is recorded there, so later checks need no ``GET``.
    Raises only for a bad configuration, an OCI layout destination that cannot be one, or
    an interrupt (:class:`~derrick.ops.syncreport.SyncInterrupted`, a
    ``KeyboardInterrupt`` holding the report so far): what fails for an image is in the
    report.
    """
    started = time.monotonic()
    config_or_plan = _checked(config_or_plan, client, max_pulls)
    if cache_dir is not None:
        cache_dir = Path(cache_dir).expanduser()
    store = BlobStore(cache_dir) if cache_dir is not None else None
    layouts = _layouts(config_or_plan, store)
    own = client is None
    client = client if client is not None else RegistryClient()
    try:
        if isinstance(config_or_plan, SyncConfig):
            the_plan = plan_sync(config_or_plan, client, shard=shard)
        else:
            the_plan = config_or_plan
        runner = _Runner(
            client,
            the_plan,
            _Settings(jobs, dry_run, progress, chunk_size, store, layouts),
            Budget(max_pulls),
            Records(cache_dir),
        )
        try:
            report = runner.run()
        except SyncInterrupted as e:
            e.report.seconds = time.monotonic() - started
            raise
        report.seconds = time.monotonic() - started
        return report
    finally:
        if store is not None:
            store.close()
        if own:
            client.close()


def _checked(
    config_or_plan: SyncConfig | SyncPlan | str | Path,
    client: RegistryClient | None,
    max_pulls: int | None,
) -> SyncConfig | SyncPlan:
    """The configuration (read from its file) or plan, once :func:`sync`'s arguments are
    known to be of the kinds it takes."""
    if max_pulls is not None and max_pulls < 0:
        raise UsageError("the pull budget cannot be negative")
    if isinstance(config_or_plan, str | Path):
        config_or_plan = load_config(Path(config_or_plan))
    if not isinstance(config_or_plan, SyncConfig | SyncPlan):
        raise UsageError(
            "sync takes a configuration file's path, a SyncConfig or a SyncPlan, not "
            f"{type(config_or_plan).__name__} {config_or_plan!r}"
        )
    if client is not None and not isinstance(client, RegistryClient):
        raise UsageError(
            "sync's client must be a derrick.Client or a RegistryClient, not "
            f"{type(client).__name__} {client!r}"
        )
    return config_or_plan


def _layouts(
    config_or_plan: SyncConfig | SyncPlan, store: BlobStore | None
) -> dict[Path, LayoutDestination]:
    """The OCI layouts a sync writes into, each read once (checked before any request)."""
    if isinstance(config_or_plan, SyncConfig):
        named = [s.destination.layout for s in config_or_plan.sources]
    else:
        named = [i.destination.layout for i in config_or_plan.items]
    paths = [p for p in named if p is not None]
    if not paths:
        return {}
    from derrick.ops.synclayout import LayoutDestination  # what only layouts need

    return {p: LayoutDestination(p, store) for p in dict.fromkeys(paths)}


@dataclass(frozen=True)
class _Settings:
    """How a sync runs (see :func:`sync`)."""

    jobs: int
    dry_run: bool
    progress: SyncProgress | None
    chunk_size: int | None
    store: BlobStore | None
    layouts: dict[Path, LayoutDestination]


class _Runner:
    def __init__(
        self,
        client: RegistryClient,
        the_plan: SyncPlan,
        settings: _Settings,
        budget: Budget,
        records: Records,
    ) -> None:
        self.client = client
        self.plan = the_plan
        self.settings = settings
        self.budget = budget
        self.records = records
        self.progress = settings.progress
        self.blobs = BlobMap()
        self.stopped: str | None = None
        self.outcomes: list[tuple[int, ImageOutcome]] = []
        self.queue = WorkQueue(the_plan.items, _key)
        self._lock = threading.Lock()
        self._tags_lock = threading.Lock()
        self._followed: set[str] = set()  # source tags queued as signature tags
        self.checker = Checker(
            client,
            budget,
            records,
            dry_run=settings.dry_run,
            stopped=lambda: self.stopped,
            layouts=settings.layouts,
        )

    def run(self) -> SyncReport:
        if self.progress is not None:
            self.progress.planned(self.queue.total)
        try:
            self.queue.run(self.settings.jobs, lambda item: self._finish(item, self._one(item)))
        except KeyboardInterrupt as e:
            self._interrupted()
            raise SyncInterrupted(self._report()) from e
        return self._report()

    def _interrupted(self) -> None:
        """After an interrupt: the images never started are left, and the sync stopped."""
        with self._lock:
            self.stopped = "interrupted"
            for item in self.queue.pending():
                out = ImageOutcome(str(item.source), item.describe_destination(), "left")
                out.reason = "interrupted"
                self.outcomes.append((self.queue.position(item), out))

    def _report(self) -> SyncReport:
        return SyncReport(
            images=[o for _, o in sorted(self.outcomes, key=lambda pair: pair[0])],
            filtered=[f for f in self.plan.filtered if f not in self._followed],
            source_errors=list(self.plan.failed),
            other_shards=self.plan.other_shards,
            stopped=self.stopped,
            max_pulls=self.budget.max_pulls,
            pulls=self.budget.spent,
            rate_limits=dict(self.budget.states),
            dry_run=self.settings.dry_run,
            clashes=list(self.plan.clashes),
        )

    def _finish(self, item: SyncItem, out: tuple[ImageOutcome, Found | None]) -> None:
        outcome, found = out
        with self._lock:
            self.outcomes.append((self.queue.position(item), outcome))
        if self.progress is not None:
            self.progress.image_finished(outcome)
        if item.digest_tags and found is not None and outcome.status in ("copied", "unchanged"):
            try:
                self._follow(item, found)
            except DerrickError as e:
                failed = ImageOutcome(
                    f"{item.source.name} (signature tags)", outcome.destination, "failed"
                )
                failed.failed_with(e)
                with self._lock:
                    self.outcomes.append((self.queue.position(item), failed))

    # -- one image -----------------------------------------------------------------------

    def _one(self, item: SyncItem) -> tuple[ImageOutcome, Found | None]:
        started = time.monotonic()
        out = ImageOutcome(str(item.source), item.describe_destination(), "failed")
        found: Found | None = None
        meter = Meter(self.budget, item.source.registry)
        try:
            found = self.checker.check(item, meter)
            out.digest = str(found.expected.digest) if found.expected else None
            self._decide(item, found, out, meter)
        except OutOfPulls as e:
            self._stop(out, str(e))
        except TooManyRequestsError as e:
            self.budget.retry_after(item.source.registry, e.retry_after)
            self._stop(out, reason_of(e))
        except Cancelled as e:
            out.failed_with(e)
            if self.queue.cancel.is_set():
                out.status = "left"
        except DerrickError as e:
            out.failed_with(e)
        except OSError as e:
            out.reason = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
        finally:
            meter.settle()
        out.manifest_gets = meter.gets
        out.seconds = time.monotonic() - started
        return out, found

    def _stop(self, out: ImageOutcome, why: str) -> None:
        out.status = "left"
        out.reason = why
        with self._lock:
            if self.stopped is None:
                self.stopped = why

    def _decide(self, item: SyncItem, found: Found, out: ImageOutcome, meter: Meter) -> None:
        expected = found.expected
        if (
            expected is not None
            and found.there is not None
            and found.there.digest == expected.digest
        ):
            out.status = "unchanged"
            return
        if self.stopped is not None:
            out.status, out.reason = "left", self.stopped
            return
        if self.settings.dry_run:
            out.status = "planned"
            return
        meter.reserve(self.checker.gets(item, found))
        self._copy(item, found, out)

    def _copy(self, item: SyncItem, found: Found, out: ImageOutcome) -> None:
        from derrick.images import engine  # loaded when a sync copies

        sink, names = self._sink(item)
        with self.queue.stoppable() as event:
            result = engine.copy(
                found.source,
                sink,
                name=str(found.head.digest),
                selection=item.selection,
                names=names,
                jobs=BLOB_JOBS,
                progress=BytesMoved(self.progress.bytes_moved) if self.progress else None,
                cancel=event,
                retry=self.client.transport.retry,
                cache=self.settings.store,
            )
        out.status = "copied"
        out.digest = str(result.digest)
        out.bytes = result.stats.copied_bytes
        out.blobs = result.stats.copied
        out.mounted = result.stats.mounted
        found.copied = [str(d) for d in result.manifests]
        if needs_index(found.head, item.selection):
            self.records.put(found.head.digest, item.selection, result.digest)

    def _sink(self, item: SyncItem) -> tuple[ImageSink, tuple[ImageName, ...]]:
        """Where ``item`` is copied to, and what it is called there."""
        if item.destination.layout is not None:
            # named by its full name, or repository@digest without a tag
            return self.settings.layouts[item.destination.layout].sink(), (item.name,)
        target = item.target
        assert target is not None
        sink = MirrorRepository(
            self.client, target, self.blobs, chunk_size=self.settings.chunk_size
        )
        return sink, (item.name,) if item.tag else ()

    # -- signature tags ------------------------------------------------------------------

    def _follow(self, item: SyncItem, found: Found) -> None:
        digests = {str(found.head.digest), *found.copied}
        if found.expected is not None:
            digests.add(str(found.expected.digest))
        tags = set(self._source_tags(item.source))
        added = []
        for d in sorted(digests):
            alg, _, hex_ = d.partition(":")
            for suffix in _SIGNATURE_SUFFIXES:
                tag = f"{alg}-{hex_}.{suffix}"
                if tag not in tags:
                    continue
                follow = SyncItem(
                    item.source.with_tag(tag),
                    item.destination,
                    item.repository,
                    tag,
                    Selection(all=True),
                    False,
                )
                added.append(follow)
        with self._lock:
            self._followed.update(f"{follow.source.name}:{follow.tag}" for follow in added)
        total = self.queue.add(added)
        if added and self.progress is not None:
            self.progress.planned(total)

    def _source_tags(self, ref: Reference) -> list[str]:
        with self._tags_lock:
            tags = self.plan.tags.get(ref.name)
            if tags is None:
                tags = self.plan.tags[ref.name] = self.client.list_tags(ref)
            return tags


def _key(item: SyncItem) -> str:
    return item.key + "\0" + item.describe_destination()
