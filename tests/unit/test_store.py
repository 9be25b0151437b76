"""The blob store (derrick.store): verified files and their records, the locked partial
files a writer resumes, the lock between two processes, and filling the store from a
source (derrick.images.cachefeed.fill)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from derrick.digest import Digest
from derrick.errors import DerrickError, DigestMismatchError, Remedy
from derrick.images.cachefeed import fill
from derrick.manifest import Descriptor
from derrick.store.cache import BlobStore, CacheDiskError
from derrick.transport import RetryPolicy
from support.memory import MemorySource

NO_WAIT = RetryPolicy(retries=3, backoff=0.0)


def blob_of(data: bytes) -> Descriptor:
    return Descriptor("application/octet-stream", Digest.of(data), len(data))


def put(store: BlobStore, data: bytes) -> Path:
    desc = blob_of(data)
    partial = store.reserve(desc)
    assert partial is not None
    with partial:
        partial.write(data)
        return partial.commit()


def flip(path: Path, offset: int) -> None:
    """One byte changed in place: same inode and size, after the timestamp tick."""
    time.sleep(0.02)
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_committed_blob_is_found_by_its_record(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    data = os.urandom(3000)
    desc = blob_of(data)
    assert store.lookup(desc) is None
    path = put(store, data)
    assert path == store.path(desc.digest) and path.read_bytes() == data
    assert not store.partial_path(desc.digest).exists()
    assert store.lookup(desc) == path
    st = path.stat()
    line = f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"
    assert store.record_path(desc.digest).read_text().splitlines() == [line]
    # a second reservation finds the blob there: nothing to write
    assert store.reserve(desc) is None


def test_files_elsewhere_are_hashed_once_then_known_by_their_record(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    data = os.urandom(2000)
    desc = blob_of(data)
    copy = tmp_path / "copy"
    copy.write_bytes(data)
    assert store.verify_file(copy, desc)  # hashed, and recorded
    assert len(store.record_path(desc.digest).read_text().splitlines()) == 1
    flip(copy, 10)
    assert not store.verify_file(copy, desc)  # its stat no longer matches: hashed, wrong
    assert not store.verify_file(tmp_path / "missing", desc)
    other = tmp_path / "other"
    other.write_bytes(data)
    store.remember(other, desc)  # a copy just made of a good file
    stamps = store.records.stamps(desc.digest)
    assert (other.stat().st_ino, len(data)) in {(s[1], s[2]) for s in stamps}


def test_a_damaged_blob_is_not_trusted_and_is_dropped_when_reserved(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    data = os.urandom(5000)
    desc = blob_of(data)
    path = put(store, data)
    flip(path, 1234)
    assert store.lookup(desc) is None
    assert path.exists()  # left in place by a lookup
    partial = store.reserve(desc)
    assert partial is not None and partial.have == 0
    assert not path.exists()  # dropped under the lock
    partial.close()
    assert not store.partial_path(desc.digest).exists()  # nothing kept: the file goes


def test_an_interrupted_write_is_kept_and_resumed(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    data = os.urandom(10_000)
    desc = blob_of(data)
    partial = store.reserve(desc)
    assert partial is not None
    partial.write(data[:4321])
    with pytest.raises(DerrickError, match="cannot be committed"):
        partial.commit()
    with pytest.raises(DerrickError, match="gap"):
        partial.write_at(5000, b"x")
    partial.close()
    assert store.partial_path(desc.digest).stat().st_size == 4321

    again = store.reserve(desc)
    assert again is not None and again.have == 4321
    assert b"".join(bytes(c) for c in again.prefix()) == data[:4321]
    again.write(data[4321:])
    assert again.commit().read_bytes() == data
    assert store.lookup(desc) is not None

    gone = blob_of(b"wrong bytes")
    bad = store.reserve(gone)
    assert bad is not None
    bad.write(b"wrong")
    bad.discard()
    assert not store.partial_path(gone.digest).exists()


HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from derrick.digest import Digest
    from derrick.manifest import Descriptor
    from derrick.store.cache import BlobStore

    data = bytes.fromhex(sys.argv[2])
    desc = Descriptor("application/octet-stream", Digest.of(data), len(data))
    partial = BlobStore(Path(sys.argv[1])).reserve(desc)
    partial.write(data[:5])
    print("locked", flush=True)
    sys.stdin.readline()
    partial.write(data[5:])
    partial.commit()
    print("committed", flush=True)
    """
)


def test_a_second_process_waits_for_the_lock_and_takes_the_first_ones_blob(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    data = os.urandom(64)
    desc = blob_of(data)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), data.hex()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "locked"
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(BlobStore(root).reserve(desc)))
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive()  # blocked on the child's lock
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "committed"
        waiter.join(10)
        assert not waiter.is_alive()
        assert got == [None]  # the blob is there now: nothing for this writer to do
    finally:
        child.kill()
        child.wait()
    assert BlobStore(root).lookup(desc) == root / "blobs" / "sha256" / desc.digest.hex


def test_fill_resumes_the_partial_file_and_refetches_when_the_kept_bytes_are_wrong(
    tmp_path: Path,
) -> None:
    src = MemorySource(chunk_size=100)
    data = os.urandom(1000)
    desc = src.blob(data)
    store = BlobStore(tmp_path / "store")
    partial = store.reserve(desc)
    assert partial is not None
    partial.write(data[:300])
    partial.close()

    progress: list[int] = []
    got = fill(store, src, desc, retry=NO_WAIT, progress=progress.append)
    assert got.stored and got.received == 700 and got.path.read_bytes() == data
    assert src.opened(desc.digest) == [300]
    assert sum(progress) == 1000
    assert fill(store, src, desc).received == 0  # there now

    # kept bytes that are wrong: read again from the first byte, then kept
    other = os.urandom(1000)
    odesc = src.blob(other)
    partial = store.reserve(odesc)
    assert partial is not None
    partial.write(b"\0" * 200)
    partial.close()
    got = fill(store, src, odesc, retry=NO_WAIT)
    assert got.path.read_bytes() == other
    assert src.opened(odesc.digest) == [200, 0]

    # a source serving wrong content: nothing is kept
    bad = src.blob(os.urandom(500))
    src.corrupt[bad.digest] = os.urandom(500)
    with pytest.raises(DigestMismatchError):
        fill(store, src, bad, retry=NO_WAIT)
    assert not store.partial_path(bad.digest).exists()
    assert not store.path(bad.digest).exists()


def test_a_store_that_cannot_be_written_is_named(tmp_path: Path) -> None:
    src = MemorySource()
    desc = src.blob(os.urandom(100))
    root = tmp_path / "store"
    root.write_text("a file where the store's directory should be")
    with pytest.raises(CacheDiskError) as info:
        fill(BlobStore(root), src, desc)
    assert f"writing the blob cache {root}" in str(info.value)
    said = info.value.pulling_to("out")
    assert f"writing the blob cache {root} (pulling to out)" in str(said)
    assert said.remedy == Remedy("cache-dir")
    assert str(said).endswith("; choose another blob cache")


# -- pruning ---------------------------------------------------------------------------------


def test_a_store_in_use_is_not_pruned_and_one_pruned_waits_for_the_prune(tmp_path: Path) -> None:
    import fcntl

    from derrick.store.upkeep import LOCK_NAME, StoreBusyError, prune, usage

    data = b"kept while in use"
    desc = blob_of(data)
    store = BlobStore(tmp_path / "cache")
    put(store, data)
    with pytest.raises(StoreBusyError, match="in use by another derrick process"):
        prune(store.root)  # this very store holds it (shared) since its first use
    assert store.lookup(desc) is not None
    store.use.release()
    assert prune(store.root).blobs == 1
    assert usage(store.root).blobs == 0

    # a store that starts to be used while a prune holds the lock waits for it
    put(store, data)
    store.use.release()
    fd = os.open(store.root / LOCK_NAME, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    other = BlobStore(store.root)
    found: list[Path | None] = []
    waiting = threading.Thread(target=lambda: found.append(other.lookup(desc)))
    waiting.start()
    time.sleep(0.3)
    assert waiting.is_alive() and not found
    os.close(fd)  # the prune is done
    waiting.join(10)
    assert found == [other.path(desc.digest)]
