"""The copy engine with a blob store, between an in-memory source and in-memory sinks that
say they are local: blobs filled into the store once and then taken from it, the tee that
fills the store while a sink streams (resuming a partial file, or the sink's own bytes),
files first for a sink that prefers them, and an ordered sink fed in plan order while
later blobs are read ahead."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from derrick.digest import Digest
from derrick.errors import DigestMismatchError
from derrick.images.model import BlobFeed, Chunk, Selection
from derrick.manifest import Descriptor, Platform
from derrick.ops.transfer import copy
from derrick.store.cache import BlobStore
from derrick.transport import RetryPolicy
from support.memory import MemorySink, MemorySource

AMD64 = Platform("linux", "amd64")
NO_WAIT = RetryPolicy(retries=3, backoff=0.0)


def image(src: MemorySource, layers: int = 3, size: int = 2000) -> list[Descriptor]:
    """An image tagged v1; its blobs in plan order (config first)."""
    src.add_image([os.urandom(size) for _ in range(layers)], AMD64, tag="v1")
    return list(copy(src, MemorySink(), name="v1").plan.blobs)


def stored(store: BlobStore, blobs: list[Descriptor]) -> set[Digest]:
    return {d.digest for d in blobs if store.lookup(d) is not None}


def test_a_streaming_local_sink_fills_the_store_and_then_takes_from_it(tmp_path: Path) -> None:
    src = MemorySource(chunk_size=300)
    blobs = image(src)
    store = BlobStore(tmp_path / "cache")
    src.opens.clear()
    sink = MemorySink(local=True)
    result = copy(src, sink, name="v1", cache=store, retry=NO_WAIT)
    assert result.stats.copied == len(blobs) and result.stats.linked == 0
    assert result.stats.copied_bytes == sum(d.size for d in blobs)
    assert stored(store, blobs) == {d.digest for d in blobs}  # filled on the way
    assert all(sink.blobs[d.digest] == src.blob_data[d.digest] for d in blobs)
    assert not list((tmp_path / "cache" / "blobs" / "sha256").glob("*.partial"))
    # each read once (the config while planning; its feed gave out the planned bytes)
    assert sorted(d for d, _ in src.opens) == sorted(d.digest for d in blobs)

    src.opens.clear()
    again = MemorySink(local=True)
    result = copy(src, again, name="v1", cache=store)
    assert result.stats.linked == len(blobs) and result.stats.copied_bytes == 0
    assert src.opens == []  # the config too came from the store while planning
    assert again.blobs == sink.blobs


def test_the_tee_resumes_a_partial_file_of_the_store(tmp_path: Path) -> None:
    src = MemorySource(chunk_size=250)
    blobs = image(src, layers=1, size=5000)
    layer = blobs[1]
    store = BlobStore(tmp_path / "cache")
    partial = store.reserve(layer)
    assert partial is not None
    partial.write(src.blob_data[layer.digest][:1800])
    partial.close()
    src.opens.clear()
    sink = MemorySink(local=True)
    result = copy(src, sink, name="v1", cache=store, retry=NO_WAIT)
    assert src.opened(layer.digest) == [1800]
    assert result.stats.copied_bytes == blobs[0].size + 5000 - 1800
    assert sink.blobs[layer.digest] == src.blob_data[layer.digest]
    assert store.path(layer.digest).read_bytes() == src.blob_data[layer.digest]


class Resuming(MemorySink):
    """A streaming sink that holds the first ``kept`` bytes of every blob already (as an
    archive does after an interrupted run) and asks for the rest only."""

    def __init__(self, kept: int) -> None:
        super().__init__(local=True)
        self.kept = kept
        self.first: dict[Digest, bytes] = {}

    def put_blob(self, feed: BlobFeed) -> None:
        have = self.first.get(feed.desc.digest, b"")

        def prefix() -> Iterator[Chunk]:
            yield have

        rest = b"".join(bytes(c) for c in feed.chunks(len(have), prefix()))
        with self.lock:
            self.blobs[feed.desc.digest] = have + rest


@pytest.mark.parametrize(("in_sink", "in_store"), [(3000, 1000), (1000, 3000), (2000, 0)])
def test_the_tee_takes_the_longer_run_of_bytes_the_sink_and_the_store_hold(
    tmp_path: Path, in_sink: int, in_store: int
) -> None:
    src = MemorySource(chunk_size=400)
    blobs = image(src, layers=1, size=6000)
    layer = blobs[1]
    data = src.blob_data[layer.digest]
    store = BlobStore(tmp_path / "cache")
    if in_store:
        partial = store.reserve(layer)
        assert partial is not None
        partial.write(data[:in_store])
        partial.close()
    sink = Resuming(in_sink)
    sink.first[layer.digest] = data[:in_sink]
    src.opens.clear()
    result = copy(src, sink, name="v1", cache=store, retry=NO_WAIT)
    assert src.opened(layer.digest) == [max(in_sink, in_store)]
    assert sink.blobs[layer.digest] == data
    assert store.path(layer.digest).read_bytes() == data  # the store holds it all
    assert result.stats.copied_bytes == blobs[0].size + 6000 - max(in_sink, in_store)


def test_a_corrupt_blob_leaves_nothing_in_the_store(tmp_path: Path) -> None:
    src = MemorySource(chunk_size=500)
    blobs = image(src, layers=2)
    bad = blobs[2]
    src.corrupt[bad.digest] = os.urandom(bad.size)
    store = BlobStore(tmp_path / "cache")
    sink = MemorySink(local=True)
    with pytest.raises(DigestMismatchError, match=str(bad.digest)):
        copy(src, sink, name="v1", cache=store, retry=NO_WAIT)
    assert sink.aborted
    assert not store.path(bad.digest).exists() and not store.partial_path(bad.digest).exists()


class FileTaker(MemorySink):
    """A sink that prefers files; notes what the store held when the first blob came."""

    def __init__(self, store: BlobStore, blobs: list[Descriptor]) -> None:
        super().__init__(local=True, prefers_files=True)
        self.store = store
        self.all = blobs
        self.at_first_put: set[Digest] | None = None

    def put_blob(self, feed: BlobFeed) -> None:
        with self.lock:
            if self.at_first_put is None:
                self.at_first_put = stored(self.store, self.all)
        super().put_blob(feed)


def test_a_sink_that_prefers_files_gets_them_once_every_blob_is_in_the_store(
    tmp_path: Path,
) -> None:
    src = MemorySource(chunk_size=300)
    blobs = image(src, layers=4)
    store = BlobStore(tmp_path / "cache")
    sink = FileTaker(store, blobs)
    result = copy(src, sink, name="v1", cache=store, jobs=3)
    assert sink.at_first_put == {d.digest for d in blobs}
    assert sink.from_files == {d.digest for d in blobs}
    assert result.stats.copied == len(blobs)
    assert result.stats.copied_bytes == sum(d.size for d in blobs)


def test_an_ordered_sink_gets_blobs_in_order_while_later_ones_are_read_ahead(
    tmp_path: Path,
) -> None:
    src = MemorySource(chunk_size=200)
    blobs = image(src, layers=7)
    first = blobs[1]  # the first layer is slow: the ones after it are read meanwhile
    gate = threading.Event()
    src.gates[first.digest] = gate
    store = BlobStore(tmp_path / "cache")
    sink = MemorySink(ordered=True, local=True)
    done: list[object] = []
    worker = threading.Thread(
        target=lambda: done.append(copy(src, sink, name="v1", cache=store, jobs=2))
    )
    worker.start()
    try:
        # jobs=2 reads at most 4 blobs ahead of the one being waited for (blob 1, once
        # the config was written): blobs 2 to 4, not 5 and after
        deadline = time.monotonic() + 10
        ahead = {d.digest for d in blobs[2:5]}
        while not ahead <= stored(store, blobs):
            assert time.monotonic() < deadline, "later blobs were not read ahead"
            time.sleep(0.01)
        time.sleep(0.2)
        assert stored(store, blobs) == {blobs[0].digest, *ahead}  # no further: bounded
        assert sink.named("put_blob") == [blobs[0].digest]
    finally:
        gate.set()
        worker.join(10)
    assert done and not worker.is_alive()
    assert sink.named("put_blob") == [d.digest for d in blobs]
    assert sink.put_threads == {worker.name}  # one at a time, in the copy's thread
    assert all(sink.blobs[d.digest] == src.blob_data[d.digest] for d in blobs)


def test_an_ordered_sink_without_a_cache_spools_into_a_store_removed_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    src = MemorySource()
    blobs = image(src, layers=3)
    sink = MemorySink(ordered=True)
    result = copy(src, sink, name="v1", selection=Selection(), jobs=3)
    assert sink.named("put_blob") == [d.digest for d in blobs]
    assert result.stats.copied == len(blobs)
    assert result.stats.copied_bytes == sum(d.size for d in blobs)
    assert list(tmp_path.iterdir()) == []
