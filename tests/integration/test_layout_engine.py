"""The copy engine from the real registry into OCI layouts (derrick.images.layout.LayoutDir)
and other local sinks, through the blob cache (derrick.store).

A warm cache moves no byte (every blob ``linked``); a damaged cache blob is downloaded
again; a copy killed mid-blob resumes from the cache's partial files; two processes add
their images to one new layout; an ordered sink (a stream) gets the blobs in plan order
while later ones are downloaded ahead.  Requests are seen in the registry's log, or
through a :class:`~support.faultproxy.FaultProxy` that stalls a blob mid-body.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from derrick.digest import Digest
from derrick.images.layout import LayoutDir
from derrick.images.model import CopyResult, Selection
from derrick.images.remote import RegistryRepository
from derrick.ops.transfer import copy
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore
from support.faultproxy import Fault, FaultProxy
from support.images import LayoutImage, make_big_image
from support.memory import MemorySink
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.seed import SeededRegistries

MiB = 1024 * 1024
IMAGE_NAME = "io.containerd.image.name"
_BLOB_GET = re.compile(r'"GET /v2/[^ "]+/blobs/(sha256:[0-9a-f]{64}) HTTP')

#: A copy from a registry reference to an OCI layout, through a cache, in a process of its
#: own: ``python -c COPY REF DEST CACHE``.
COPY = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from derrick.images.layout import LayoutDir
    from derrick.images.remote import RegistryRepository
    from derrick.ops.transfer import copy
    from derrick.reference import Reference
    from derrick.registry import RegistryClient
    from derrick.store.cache import BlobStore

    ref, dest, cache = Reference.parse(sys.argv[1]), sys.argv[2], BlobStore(Path(sys.argv[3]))
    with RegistryClient(credentials=lambda registry: None, certs_dir=None) as client:
        copy(RegistryRepository(client, ref), LayoutDir(dest, store=cache), cache=cache)
    """
)


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(credentials=lambda registry: None, certs_dir=None) as c:
        yield c


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def blob_gets(reg: RegistryProcess, offset: int) -> list[str]:
    return _BLOB_GET.findall(reg.log_since(offset))


def pull(client: RegistryClient, ref: str, dest: Path, cache: BlobStore) -> CopyResult:
    sink = LayoutDir(dest, store=cache)
    return copy(RegistryRepository(client, Reference.parse(ref)), sink, cache=cache)


def check_layout(dest: Path, image: LayoutImage, ref: str) -> None:
    (entry,) = json.loads((dest / "index.json").read_text())["manifests"]
    assert entry["digest"] == image.digest and entry["annotations"][IMAGE_NAME] == ref
    for digest in image.blob_digests:
        assert sha256_file(dest / "blobs" / "sha256" / digest.split(":")[1]) == digest


def test_a_warm_cache_moves_no_byte_and_a_damaged_blob_is_downloaded_again(
    client: RegistryClient, seeded: SeededRegistries, tmp_path: Path
) -> None:
    image = seeded.open["test/eight"]
    reg = image.registry
    cache = BlobStore(tmp_path / "cache")
    offset = reg.log_size()
    first = pull(client, image.reference, tmp_path / "first", cache)
    blobs = image.layout.image.blob_digests
    assert first.stats.copied == len(blobs) and first.stats.linked == 0
    assert first.stats.copied_bytes == sum(d.size for d in first.plan.blobs)
    assert sorted(blob_gets(reg, offset)) == sorted(blobs)
    check_layout(tmp_path / "first", image.layout, image.reference)

    offset = reg.log_size()
    second = pull(client, image.reference, tmp_path / "second", cache)
    assert second.stats.linked == len(blobs) and second.stats.copied == 0
    assert second.stats.copied_bytes == 0
    assert blob_gets(reg, offset) == []  # the config too came from the cache
    check_layout(tmp_path / "second", image.layout, image.reference)
    layer = image.layout.image.layers[3]
    in_layout = tmp_path / "second" / "blobs" / "sha256" / layer.descriptor.hex
    cached = cache.path(Digest.parse(layer.digest))
    assert in_layout.stat().st_ino != cached.stat().st_ino  # a copy, not a link

    time.sleep(0.02)  # past the timestamp tick of its verification
    with cached.open("r+b") as f:
        f.seek(layer.size // 2)
        f.write(b"\0\1\2")
    offset = reg.log_size()
    third = pull(client, image.reference, tmp_path / "third", cache)
    assert blob_gets(reg, offset) == [layer.digest]
    assert third.stats.copied == 1 and third.stats.copied_bytes == layer.size
    assert third.stats.linked == len(blobs) - 1
    assert sha256_file(cached) == layer.digest
    check_layout(tmp_path / "third", image.layout, image.reference)


@pytest.fixture(scope="module")
def medium(registry_open: RegistryProcess, tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    """An image of two incompressible 3 MiB layers."""
    layout = make_big_image(
        tmp_path_factory.mktemp("medium") / "layout", layers=2, layer_size=3 * MiB, tag="v1"
    )
    with RawClient(registry_open) as raw:
        raw.push_layout(layout, "engine/medium", "v1")
    return layout


def test_a_killed_copy_resumes_from_the_partial_files_of_the_cache(
    client: RegistryClient, registry_open: RegistryProcess, medium: LayoutImage, tmp_path: Path
) -> None:
    stall = MiB + 1234
    cache = BlobStore(tmp_path / "cache")
    dest = tmp_path / "layout"
    with FaultProxy(registry_open.url) as proxy:
        ref = f"{proxy.host}/engine/medium:v1"
        for layer in medium.image.layers:
            proxy.add_fault(Fault(layer.digest, stall_after=stall))
        child = subprocess.Popen(
            [sys.executable, "-c", COPY, ref, str(dest), str(cache.root)],
            stderr=subprocess.PIPE,
        )
        try:
            proxy.wait_stalled(2)
            deadline = time.monotonic() + 30
            partials = [cache.partial_path(Digest.parse(x.digest)) for x in medium.image.layers]
            while not all(p.exists() and p.stat().st_size == stall for p in partials):
                assert time.monotonic() < deadline, "the partial files were not written"
                time.sleep(0.02)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
            proxy.clear()
        assert child.returncode == -signal.SIGKILL
        assert not dest.exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

        result = pull(client, ref, dest, cache)
        for layer in medium.image.layers:
            assert proxy.ranges(layer.digest) == [f"bytes={stall}-"]
        assert result.stats.copied_bytes == sum(x.size - stall for x in medium.image.layers)
    check_layout(dest, medium, ref)
    assert not list((cache.root / "blobs" / "sha256").glob("*.partial"))


def test_two_processes_add_their_images_to_one_new_layout(
    seeded: SeededRegistries, tmp_path: Path
) -> None:
    refs = {name: seeded.open[f"test/{name}"] for name in ("single", "eight")}
    dest = tmp_path / "new" / "layout"
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", COPY, img.reference, str(dest), str(cache)],
            stderr=subprocess.PIPE,
        )
        for img in refs.values()
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    got = {
        e["annotations"][IMAGE_NAME]: e["digest"]
        for e in json.loads((dest / "index.json").read_text())["manifests"]
    }
    assert got == {img.reference: img.layout.digest for img in refs.values()}
    for img in refs.values():
        for digest in img.layout.image.blob_digests:
            assert sha256_file(dest / "blobs" / "sha256" / digest.split(":")[1]) == digest
    assert os.listdir(dest.parent) == ["layout"]


def test_an_ordered_sink_gets_blobs_in_order_while_later_ones_download_ahead(
    client: RegistryClient, seeded: SeededRegistries, registry_open: RegistryProcess, tmp_path: Path
) -> None:
    image = seeded.open["test/eight"].layout
    first = image.image.layers[0]
    cache = BlobStore(tmp_path / "cache")
    sink = MemorySink(ordered=True, local=True)
    with FaultProxy(registry_open.url) as proxy:
        proxy.add_fault(Fault(first.digest, stall_after=first.size // 2))
        source = RegistryRepository(client, Reference.parse(f"{proxy.host}/test/eight:v1"))
        done: list[Any] = []
        worker = threading.Thread(
            target=lambda: done.append(
                copy(source, sink, cache=cache, jobs=2, selection=Selection())
            )
        )
        worker.start()
        try:
            proxy.wait_stalled(1)
            later = [Digest.parse(x.digest) for x in image.image.layers[1:4]]  # in the window
            config = Digest.parse(image.image.config.digest)
            deadline = time.monotonic() + 30
            while not all(cache.path(d).exists() for d in later) or not sink.named("put_blob"):
                assert time.monotonic() < deadline, "later blobs were not downloaded ahead"
                time.sleep(0.02)
            # the config was planned and put; the first layer, stalled, is still awaited
            assert sink.named("put_blob") == [config]
        finally:
            proxy.release()
            worker.join(60)
    assert done, "the copy failed"
    result: CopyResult = done[0]
    assert sink.named("put_blob") == [d.digest for d in result.plan.blobs]
    for d in result.plan.blobs:
        assert "sha256:" + hashlib.sha256(sink.blobs[d.digest]).hexdigest() == str(d.digest)
    assert result.stats.copied_bytes == sum(d.size for d in result.plan.blobs)
