"""The one engine that moves images: :func:`copy` from an :class:`ImageSource` to an
:class:`ImageSink`, and :func:`copy_many` for several entries into one sink.

How an image moves (see ``ARCHITECTURE.md``):

1. **Plan** (:func:`derrick.images.plan.plan`): names resolved, indexes walked,
   platforms chosen, manifests and configs fetched and verified (a config from a
   verified local copy when there is one: the cache's, or the destination's own), blobs
   collected once.
2. **Begin**: ``sink.begin(plan)``.
3. **Blobs** (:class:`~derrick.images.handover.BlobMover`), in one
   :class:`~derrick.images.pool.BlobPool` (the first failure cancels the rest): each is
   skipped when ``sink.has_blob``, else mounted when ``sink.mount_blob`` can, else
   handed to ``sink.put_blob`` as a :class:`~derrick.images.feed.Feed` (verified,
   resumable), straight from the source, as a verified local file, or through the
   cache; an ``ordered`` sink gets them one at a time, in plan order.  Configs were
   read whole while planning: their feeds give out those (verified) bytes rather than
   reading the source again.
4. **Manifests**, children before the indexes listing them, each once; each entry's top
   with its names.
5. **Commit**; after any failure (or an interrupt) **abort**, and the error is raised.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from derrick.digest import Digest
from derrick.errors import Cancelled, DerrickError, DigestMismatchError, DiskError
from derrick.images.archivefile import kept_hint
from derrick.images.handover import BlobMover
from derrick.images.model import (
    CopyResult,
    ImageName,
    ImageSink,
    ImageSource,
    KeepsPartials,
    Kept,
    Plan,
    Progress,
    Selection,
)
from derrick.images.plan import LocalBlobs, PlanItem, plan
from derrick.manifest import Descriptor
from derrick.store.cache import BlobStore, CacheDiskError, partials_phrase
from derrick.transport import RetryPolicy

__all__ = ["DEFAULT_JOBS", "PlanItem", "copy", "copy_many"]

DEFAULT_JOBS = 4


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
    cache: BlobStore | None = None,
) -> CopyResult:
    """Copy the image ``name`` of ``source`` (None: its default) into ``sink``.

    ``selection`` says which platforms of an index (see
    :class:`~derrick.images.model.Selection`; None: this machine's).  ``names`` is what
    the copy is called in the sink (None keeps the source's name, its tag; ``()`` none:
    a registry stores it by digest only).  ``jobs`` blobs move at once.  ``cancel``,
    when given, stops the copy when set (and the copy sets it when it fails).
    ``retry`` is how often and how patiently a blob body that breaks off is asked for
    again (default :class:`~derrick.transport.RetryPolicy`; pass
    ``client.transport.retry`` to follow a client's).  ``cache`` is the blob store a
    copy into a local sink keeps blobs of a remote source in (see the module
    docstring).  Raises the first error; the sink was then aborted.  An error writing
    the cache is a :class:`~derrick.store.cache.CacheDiskError` naming the partial
    files kept.
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
    cache: BlobStore | None = None,
) -> CopyResult:
    """Copy every item into ``sink`` as one plan (each blob moves once); see :func:`copy`."""
    items = list(items)
    cancel = cancel if cancel is not None else threading.Event()
    store = cache if sink.local else None  # a copy to a registry keeps nothing locally
    the_plan = plan(items, retry=retry, cancel=cancel, local=_local_copies(sink, store))
    mover = BlobMover(the_plan, sink, jobs=jobs, progress=progress, cancel=cancel, retry=retry)
    began = False
    try:
        sink.begin(the_plan)
        began = True
        mover.run(store)
        _manifests(the_plan, sink, cancel)
        sink.commit()
    except BaseException as e:
        cancel.set()
        with contextlib.suppress(Exception):
            sink.abort()  # best effort: the error that stopped the copy is the one to see
        if isinstance(e, CacheDiskError) and store is not None:
            also = _kept(sink, None, the_plan)
            raise e.with_partials(store.partials(the_plan.blobs), also) from e.error
        if began and isinstance(e, DerrickError) and not isinstance(e, DiskError):
            _say_kept(e, _kept(sink, store, the_plan))
        raise
    sources = list(dict.fromkeys(item.source.description for item in items))
    return CopyResult(
        source=", ".join(sources),
        destination=sink.description,
        plan=the_plan,
        stats=mover.stats,
    )


def _kept(sink: ImageSink, store: BlobStore | None, the_plan: Plan) -> list[Kept]:
    """What a failed copy left behind for a later run: the sink's partial files, and the
    partial downloads of the plan's blobs in the cache."""
    kept: list[Kept] = []
    with contextlib.suppress(OSError):
        if isinstance(sink, KeepsPartials):
            kept.extend(sink.kept())
        if store is not None:
            partials = store.partials(the_plan.blobs)
            phrase = partials_phrase(partials, store.root)
            if phrase is not None:
                kept.append((phrase, len(partials)))
    return kept


def _say_kept(e: DerrickError, kept: Sequence[Kept]) -> None:
    """Add to the error's hint what is left behind (and, for content that did not match
    its digest, that nothing is when nothing is)."""
    said: str | None = None
    if kept:
        again = "try again"
        said = kept_hint([k for k, _ in kept], sum(n for _, n in kept), again)
    elif isinstance(e, DigestMismatchError):
        said = "nothing was kept"
    if said is not None:
        e.hint = f"{e.hint}; {said}" if e.hint else said


def _local_copies(sink: ImageSink, store: BlobStore | None) -> LocalBlobs | None:
    """Where the plan finds verified local copies of configs: the cache, and a local
    sink that is also a source (an existing layout's own blobs)."""
    finders: list[LocalBlobs] = []
    if store is not None:
        finders.append(store.lookup)
    if sink.local and isinstance(sink, ImageSource):
        finders.append(sink.local_blob)
    if not finders:
        return None

    def find(desc: Descriptor) -> Path | None:
        for finder in finders:
            with contextlib.suppress(OSError, DerrickError):
                found = finder(desc)
                if found is not None:
                    return found
        return None

    return find


def _manifests(the_plan: Plan, sink: ImageSink, cancel: threading.Event) -> None:
    """Step 4: every manifest once, in plan order (children first); tops with their names."""
    names: dict[Digest, list[ImageName]] = {}
    for entry in the_plan.entries:
        have = names.setdefault(entry.top.digest, [])
        have.extend(n for n in entry.names if n not in have)
    for desc, raw in the_plan.manifests:
        if cancel.is_set():
            raise Cancelled("cancelled")
        sink.put_manifest(desc, raw, names.get(desc.digest, ()))
