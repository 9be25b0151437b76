"""The verified, resumable blob feed and the blob pool, over an in-memory source."""

from __future__ import annotations

import os
import threading
import time

import pytest

from derrick.errors import (
    BlobUnknownError,
    Cancelled,
    DerrickError,
    DigestMismatchError,
    ManifestError,
    TransportError,
)
from derrick.images.feed import Feed, read_small
from derrick.images.pool import BlobPool, ReadAhead
from derrick.manifest import Descriptor
from derrick.transport import RetryPolicy
from support.memory import MemoryBody, MemorySource

NO_WAIT = RetryPolicy(retries=3, backoff=0.0)


def blob(n: int = 1000) -> bytes:
    return os.urandom(n)


def feed_of(
    src: MemorySource, desc: Descriptor, progress: list[int] | None = None, **kw: object
) -> Feed:
    return Feed(
        src,
        desc,
        retry=NO_WAIT,
        progress=progress.append if progress is not None else None,
        **kw,  # type: ignore[arg-type]
    )


def test_feed_gives_out_the_blob_and_is_verified() -> None:
    src = MemorySource()
    data = blob()
    desc = src.blob(data)
    feed = feed_of(src, desc)
    assert b"".join(bytes(c) for c in feed.chunks()) == data
    assert feed.verified and feed.received == len(data)
    assert src.opened(desc.digest) == [0]


def test_wrong_content_fails_before_the_last_chunk_and_is_not_retried() -> None:
    src = MemorySource(chunk_size=100)
    data = blob()
    desc = src.blob(data)
    src.corrupt[desc.digest] = data[:-1] + bytes([data[-1] ^ 1])
    got: list[bytes] = []
    with pytest.raises(DigestMismatchError) as info:
        for chunk in feed_of(src, desc).chunks():
            got.append(bytes(chunk))
    assert str(desc.digest) in str(info.value)
    assert sum(map(len, got)) == len(data) - 100  # the last chunk never came out
    assert src.opened(desc.digest) == [0]


def test_content_longer_than_its_size_is_refused() -> None:
    src = MemorySource(chunk_size=100)
    data = blob()
    desc = src.blob(data)
    src.corrupt[desc.digest] = data + b"more"
    with pytest.raises(DigestMismatchError, match="larger than"):
        b"".join(feed_of(src, desc).chunks())


def test_a_body_that_ends_short_is_refused() -> None:
    src = MemorySource(chunk_size=100)
    data = blob()
    desc = src.blob(data)
    src.corrupt[desc.digest] = data[:500]
    with pytest.raises(DigestMismatchError, match="500 bytes, expected 1000"):
        b"".join(feed_of(src, desc).chunks())


def test_a_broken_body_is_asked_for_again_from_where_it_stopped() -> None:
    src = MemorySource(chunk_size=100)
    data = blob()
    desc = src.blob(data)
    src.breaks[desc.digest] = [250, 300]
    progress: list[int] = []
    feed = feed_of(src, desc, progress)
    assert b"".join(bytes(c) for c in feed.chunks()) == data
    assert src.opened(desc.digest) == [0, 250, 550]
    assert feed.received == len(data) and sum(progress) == len(data)


def test_a_source_that_ignores_the_offset_is_read_from_the_start_without_repeats() -> None:
    src = MemorySource(chunk_size=100)
    data = blob()
    desc = src.blob(data)
    src.breaks[desc.digest] = [250]
    src.ignore_offset.add(desc.digest)
    progress: list[int] = []
    feed = feed_of(src, desc, progress)
    assert b"".join(bytes(c) for c in feed.chunks()) == data
    assert src.opened(desc.digest) == [0, 250]  # asked from 250, served from 0
    assert feed.received == 1250
    assert sum(progress) == len(data) and -250 in progress


def test_a_source_that_starts_anywhere_else_is_refused() -> None:
    class Odd(MemorySource):
        def open_blob(self, desc: Descriptor, offset: int = 0) -> MemoryBody:
            body = super().open_blob(desc, offset)
            body.offset = 7 if offset else 0
            return body

    src = Odd(chunk_size=100)
    desc = src.blob(blob())
    src.breaks[desc.digest] = [250]
    with pytest.raises(DerrickError, match="started at byte 7, not 250"):
        b"".join(feed_of(src, desc).chunks())


def test_breaks_beyond_the_retry_limit_raise_the_transport_error() -> None:
    src = MemorySource(chunk_size=100)
    desc = src.blob(blob())
    src.breaks[desc.digest] = [100] * 10
    with pytest.raises(TransportError, match="broke off"):
        b"".join(feed_of(src, desc).chunks())
    assert len(src.opened(desc.digest)) == NO_WAIT.retries + 1


def test_a_missing_blob_is_not_retried() -> None:
    src = MemorySource()
    desc = src.blob(blob())
    src.missing.add(desc.digest)
    with pytest.raises(BlobUnknownError):
        b"".join(feed_of(src, desc).chunks())
    assert len(src.opened(desc.digest)) == 1


def test_start_without_prefix_reads_the_start_again_and_hashes_it() -> None:
    src = MemorySource(chunk_size=100)
    data = blob()
    desc = src.blob(data)
    feed = feed_of(src, desc)
    assert b"".join(bytes(c) for c in feed.chunks(start=420)) == data[420:]
    assert feed.verified and src.opened(desc.digest) == [0]
    # the bytes before start count towards the digest: a wrong one there is caught
    src.corrupt[desc.digest] = bytes([data[0] ^ 1]) + data[1:]
    with pytest.raises(DigestMismatchError):
        b"".join(feed_of(src, desc).chunks(start=420))


def test_start_with_prefix_reads_only_the_rest() -> None:
    src = MemorySource(chunk_size=100)
    data = blob()
    desc = src.blob(data)
    feed = feed_of(src, desc)
    kept = iter([data[:300], data[300:420] + b"ignored beyond start"])
    assert b"".join(bytes(c) for c in feed.chunks(start=420, prefix=kept)) == data[420:]
    assert feed.verified and src.opened(desc.digest) == [420]
    assert feed.received == len(data) - 420


def test_a_wrong_prefix_fails_the_digest_and_a_short_one_at_once() -> None:
    src = MemorySource(chunk_size=100)
    data = blob()
    desc = src.blob(data)
    bad = iter([bytes(420)])
    with pytest.raises(DigestMismatchError, match="does not match"):
        b"".join(feed_of(src, desc).chunks(start=420, prefix=bad))
    with pytest.raises(DigestMismatchError, match="end after 100 of the 420"):
        b"".join(feed_of(src, desc).chunks(start=420, prefix=iter([data[:100]])))


def test_a_whole_prefix_needs_no_source() -> None:
    src = MemorySource()
    data = blob()
    desc = src.blob(data)
    feed = feed_of(src, desc)
    assert list(feed.chunks(start=len(data), prefix=iter([data]))) == []
    assert feed.verified and src.opens == []


def test_each_pass_starts_the_progress_again() -> None:
    src = MemorySource(chunk_size=100)
    data = blob()
    desc = src.blob(data)
    progress: list[int] = []
    feed = feed_of(src, desc, progress)
    it = feed.chunks()
    next(it)
    next(it)
    it.close()  # e.g. an upload that starts over
    assert b"".join(bytes(c) for c in feed.chunks(start=100)) == data[100:]
    assert sum(progress) == len(data)
    assert progress[2] == -200


def test_cancel_stops_the_feed_at_the_next_chunk() -> None:
    src = MemorySource(chunk_size=100)
    desc = src.blob(blob())
    cancel = threading.Event()
    it = feed_of(src, desc, cancel=cancel).chunks()
    next(it)
    cancel.set()
    with pytest.raises(Cancelled):
        next(it)


def test_cancel_cuts_a_retry_wait_short() -> None:
    src = MemorySource(chunk_size=100)
    desc = src.blob(blob())
    src.breaks[desc.digest] = [100]
    cancel = threading.Event()
    slow = RetryPolicy(retries=3, backoff=60.0, max_backoff=60.0)
    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        b"".join(Feed(src, desc, retry=slow, cancel=cancel).chunks())
    assert time.monotonic() - started < 10


def test_read_small_refuses_a_large_config_before_reading() -> None:
    src = MemorySource()
    desc = src.blob(blob(2000))
    assert read_small(src, desc, limit=2000) == src.blob_data[desc.digest]
    with pytest.raises(ManifestError, match="more than the 1999 byte limit"):
        read_small(src, desc, limit=1999)
    assert len(src.opens) == 1


# -- the pool ------------------------------------------------------------------------------


def test_pool_runs_every_task_and_counts_bytes() -> None:
    pool = BlobPool(3)
    seen: list[int] = []
    lock = threading.Lock()

    def task(n: int) -> int:
        with lock:
            seen.append(n)
        return n

    assert pool.run(range(10), task) == 45
    assert sorted(seen) == list(range(10)) and pool.bytes == 45
    assert pool.run([], task) == 0


def test_pool_cancels_on_the_first_error_and_waits_for_every_worker() -> None:
    pool = BlobPool(3)
    started: list[int] = []
    stopped: list[int] = []
    lock = threading.Lock()
    running = threading.Barrier(3, timeout=10)

    def task(n: int) -> int:
        with lock:
            started.append(n)
        if n == 0:
            running.wait()
            raise BlobUnknownError("blob 0 is missing", status=404, url="x")
        if n in (1, 2):
            running.wait()
            # a running task: stops at its next chunk, after the error
            while not pool.cancel.wait(0.01):
                pass
            time.sleep(0.2)
            with lock:
                stopped.append(n)
            raise Cancelled("stopped")
        return 1

    with pytest.raises(BlobUnknownError):
        pool.run(range(20), task)
    assert pool.cancel.is_set()
    assert sorted(started) == [0, 1, 2]  # tasks not started never start
    assert sorted(stopped) == [1, 2]  # run() returned only after the workers stopped


def test_pool_cancelled_from_outside_raises_cancelled() -> None:
    cancel = threading.Event()
    pool = BlobPool(2, cancel)

    def task(n: int) -> int:
        if n == 3:
            cancel.set()
        return 1

    with pytest.raises(Cancelled):
        pool.run(range(100), task)


def test_read_ahead_raises_the_failure_not_the_cancellation_it_caused() -> None:
    """A fetch fails while an earlier one is still running: the reader waiting for the
    earlier one gets that failure once the workers stopped, not a bare ``Cancelled``."""
    release = threading.Event()

    def fetch(item: int) -> int:
        if item == 1:
            raise ValueError("item 1 is broken")
        release.wait(5)  # item 0 ends a moment after item 1 failed
        return item

    threading.Timer(0.3, release.set).start()
    with (
        ReadAhead([0, 1], fetch, jobs=2, window=2, cancel=threading.Event()) as ahead,
        pytest.raises(ValueError, match="item 1 is broken"),
    ):
        ahead.take()
        ahead.take()
