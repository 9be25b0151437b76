"""The copy engine (derrick.ops.transfer) between an in-memory source and sink."""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from derrick import mediatypes as mt
from derrick.errors import BlobUnknownError, DerrickError
from derrick.images.cachefeed import fill
from derrick.images.model import BlobFeed, BlobOutcome, ImageName, Selection
from derrick.images.plan import PlanItem
from derrick.manifest import Descriptor, Platform
from derrick.ops.transfer import copy, copy_many
from derrick.store.cache import BlobStore
from derrick.transport import RetryPolicy
from support.memory import MemorySink, MemorySource

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
NO_WAIT = RetryPolicy(retries=3, backoff=0.0)


class Recorder:
    """A Progress that checks its calls add up."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total: int | None = None
        self.advanced: Counter[str] = Counter()
        self.started: list[str] = []
        self.finished: dict[str, BlobOutcome] = {}

    def planned(self, total_bytes: int) -> None:
        self.total = total_bytes

    def blob_started(self, desc: Descriptor) -> None:
        with self.lock:
            self.started.append(str(desc.digest))

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        with self.lock:
            self.advanced[str(desc.digest)] += nbytes

    def blob_finished(self, desc: Descriptor, outcome: BlobOutcome) -> None:
        with self.lock:
            assert str(desc.digest) not in self.finished
            self.finished[str(desc.digest)] = outcome


def multi(src: MemorySource, layers: int = 3) -> tuple[Descriptor, list[Descriptor]]:
    shared = os.urandom(500)
    kids = [
        src.add_image([shared, *(os.urandom(700) for _ in range(layers - 1))], p)
        for p in (AMD64, ARM64)
    ]
    return src.add_index(kids, tag="v1"), kids


def test_copy_moves_everything_in_order_and_commits() -> None:
    src = MemorySource(chunk_size=128)
    top, kids = multi(src)
    sink = MemorySink()
    progress = Recorder()
    result = copy(src, sink, name="v1", selection=Selection(all=True), progress=progress)
    assert result.digest == top.digest and result.media_type == top.media_type
    assert result.manifests == [kids[0].digest, kids[1].digest, top.digest]
    names = [n for n, _ in sink.calls]
    assert names[0] == "begin" and names[-1] == "commit"
    assert names.index("put_manifest") > max(i for i, n in enumerate(names) if n == "put_blob")
    # children first, each once; the top last, with the source's tag
    assert sink.named("put_manifest") == [
        (kids[0].digest, ()),
        (kids[1].digest, ()),
        (top.digest, (ImageName("memory.example/app", "v1"),)),
    ]
    assert sink.tags == {"v1": top.digest}
    for d in result.plan.blobs:
        assert sink.blobs[d.digest] == src.blob_data[d.digest]
    assert result.stats.copied == len(result.plan.blobs) == 1 + 2 + 2 * 2
    assert result.stats.copied_bytes == sum(d.size for d in result.plan.blobs)
    # progress adds up: planned = every blob's size, each advanced by its size and finished
    assert progress.total == sum(d.size for d in result.plan.blobs)
    assert sum(progress.advanced.values()) == progress.total
    assert all(progress.advanced[str(d.digest)] == d.size for d in result.plan.blobs)
    assert set(progress.finished.values()) == {"copied"}
    assert sorted(progress.started) == sorted(str(d.digest) for d in result.plan.blobs)
    assert sink.committed and not sink.aborted


def test_configs_come_from_the_plan_and_layers_from_the_source() -> None:
    src = MemorySource()
    multi(src)
    result = copy(src, MemorySink(), name="v1", selection=Selection(all=True))
    read = Counter(d for d, _ in src.opens)
    for img in result.images:
        assert read[img.manifest.config.digest] == 1  # while planning only
        for layer in img.manifest.layers:
            assert read[layer.digest] == 1


def test_blobs_the_sink_has_are_skipped_and_mountable_ones_mounted() -> None:
    src = MemorySource()
    multi(src)
    planned = copy(src, MemorySink(), name="v1", selection=Selection(all=True)).plan
    have, mount = planned.blobs[1].digest, planned.blobs[2].digest
    sink = MemorySink(have=[have], mountable=[mount])
    progress = Recorder()
    src.opens.clear()
    result = copy(src, sink, name="v1", selection=Selection(all=True), progress=progress, jobs=2)
    assert (result.stats.skipped, result.stats.mounted) == (1, 1)
    assert result.stats.copied == len(planned.blobs) - 2
    assert sink.named("put_blob").count(have) == sink.named("put_blob").count(mount) == 0
    assert have not in sink.named("mount_blob")  # not asked: it was there
    assert progress.finished[str(have)] == "skipped"
    assert progress.finished[str(mount)] == "mounted"
    assert str(have) not in progress.started and str(mount) not in progress.started
    assert sum(progress.advanced.values()) == progress.total
    assert not {have, mount} & {d for d, _ in src.opens}


def test_an_ordered_sink_gets_blobs_one_at_a_time_in_plan_order() -> None:
    src = MemorySource()
    multi(src)
    sink = MemorySink(ordered=True)
    result = copy(src, sink, name="v1", selection=Selection(all=True), jobs=8)
    assert sink.named("put_blob") == [d.digest for d in result.plan.blobs]
    assert sink.put_threads == {threading.current_thread().name}


def test_a_broken_body_resumes_inside_the_engine() -> None:
    src = MemorySource(chunk_size=100)
    multi(src)
    result = copy(src, MemorySink(), name="v1", selection=Selection(all=True), retry=NO_WAIT)
    layer = result.plan.blobs[-1]
    src.breaks[layer.digest] = [250]
    src.opens.clear()
    sink = MemorySink()
    again = copy(src, sink, name="v1", selection=Selection(all=True), retry=NO_WAIT)
    assert src.opened(layer.digest) == [0, 250]
    assert sink.blobs[layer.digest] == src.blob_data[layer.digest]
    assert again.stats.copied_bytes == sum(d.size for d in again.plan.blobs)


def test_a_missing_blob_cancels_the_others_aborts_and_raises() -> None:
    src = MemorySource(chunk_size=50)
    multi(src, layers=6)
    planned = copy(src, MemorySink(), name="v1", selection=Selection(all=True)).plan
    layers = [d for d in planned.blobs if d.media_type != mt.OCI_CONFIG]
    slow, missing = layers[:2], layers[2]
    # two slow blobs are running when the missing one fails; they stop at their next chunk
    gate = threading.Event()
    for d in slow:
        src.gates[d.digest] = gate
    src.missing.add(missing.digest)
    sink = MemorySink()
    src.opens.clear()
    cancel = threading.Event()
    threading.Thread(target=lambda: cancel.wait(10) and gate.set(), daemon=True).start()
    with pytest.raises(BlobUnknownError):
        copy(
            src,
            sink,
            name="v1",
            selection=Selection(all=True),
            jobs=3,
            cancel=cancel,
            retry=NO_WAIT,
        )
    assert sink.aborted and not sink.committed
    assert sink.named("put_manifest") == []
    assert not any(d.digest in sink.blobs for d in slow)
    later = {d.digest for d in planned.blobs[planned.blobs.index(missing) + 1 :]}
    assert later and not later & set(sink.named("has_blob"))  # the blobs after never started
    assert not later & {d.digest for d in layers} & {d for d, _ in src.opens}
    assert not [t for t in threading.enumerate() if t.name.startswith("derrick-blob")]


def test_an_interrupt_aborts_the_sink_and_is_raised() -> None:
    src = MemorySource()
    src.add_image([b"one", b"two"], AMD64, tag="v1")
    first = copy(src, MemorySink(), name="v1").plan.blobs[1]
    sink = MemorySink(fail={first.digest: KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        copy(src, sink, name="v1")
    assert sink.aborted and not sink.committed


def test_a_sink_that_does_not_read_the_whole_feed_fails_the_copy() -> None:
    class Lazy(MemorySink):
        def put_blob(self, feed: BlobFeed) -> None:
            next(iter(feed.chunks()))

    src = MemorySource(chunk_size=2)
    src.add_image([b"a layer of some bytes"], AMD64, tag="v1")
    sink = Lazy()
    with pytest.raises(DerrickError, match="did not take all of blob"):
        copy(src, sink, name="v1")
    assert sink.aborted


def test_a_cached_blob_is_offered_to_a_local_sink_as_its_file(tmp_path: Path) -> None:
    src = MemorySource()
    src.add_image([b"cached layer", b"fetched layer"], AMD64, tag="v1")
    cached = copy(src, MemorySink(), name="v1").plan.blobs[1]
    store = BlobStore(tmp_path / "cache")
    fill(store, src, cached)
    sink = MemorySink(local=True, prefers_files=True)
    progress = Recorder()
    src.opens.clear()
    result = copy(src, sink, name="v1", cache=store, progress=progress)
    assert result.stats.linked == 1 and result.stats.copied == 2
    assert sink.from_files == {d.digest for d in result.plan.blobs}  # all as files
    assert sink.blobs[cached.digest] == src.blob_data[cached.digest]
    assert progress.finished[str(cached.digest)] == "linked"
    assert sum(progress.advanced.values()) == progress.total
    assert cached.digest not in {d for d, _ in src.opens}

    # A sink that is not local (a registry) streams from the source: no cache.
    src.opens.clear()
    result = copy(src, MemorySink(), name="v1", cache=store)
    assert result.stats.linked == 0 and result.stats.copied == 3
    assert cached.digest in {d for d, _ in src.opens}


def test_default_names_keep_the_source_tag_and_empty_names_give_none() -> None:
    src = MemorySource()
    img = src.add_image([b"x"], AMD64, tag="v1")
    src.default = "v1"
    sink = MemorySink()
    copy(src, sink)
    assert sink.tags == {"v1": img.digest}
    sink = MemorySink()
    copy(src, sink, names=())
    assert sink.tags == {} and img.digest in sink.manifests
    sink = MemorySink()
    copy(src, sink, names=[ImageName(tag="a"), ImageName(tag="b")])
    assert sink.tags == {"a": img.digest, "b": img.digest}
    sink = MemorySink()
    copy(src, sink, name=str(img.digest))
    assert sink.named("put_manifest") == [(img.digest, (ImageName("memory.example/app"),))]


def test_copy_many_reads_each_blob_once_from_the_first_source_that_has_it() -> None:
    a, b = MemorySource("a"), MemorySource("b")
    shared = b"a layer both have"
    ia = a.add_image([shared, b"only in a"], AMD64, tag="one")
    ib = b.add_image([shared, b"only in b"], ARM64, tag="two")
    sink = MemorySink()
    result = copy_many([PlanItem(a, "one"), PlanItem(b, "two")], sink)
    assert result.source == "a, b"
    assert sink.tags == {"one": ia.digest, "two": ib.digest}
    shared_digest = next(d for d in a.blob_data if a.blob_data[d] == shared)
    assert sink.named("put_blob").count(shared_digest) == 1
    assert (shared_digest, 0) in a.opens and shared_digest not in {d for d, _ in b.opens}
    assert [e.source for e in result.plan.entries] == [a, b]
