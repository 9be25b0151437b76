"""Load: an image of 200 layers, and 20 images copied and pulled at once on one client.

The concurrent runs go through a :class:`~support.faultproxy.FaultProxy`, which counts the
client connections open at once: with ``RegistryClient(max_connections=N)`` it never sees more
than N, even when 20 threads start together on a fresh client (each would otherwise probe the
registry's scheme on a connection of its own).  A second round on a new client must not leave
file descriptors or memory behind.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import tarfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore
from support.cli import Cli
from support.faultproxy import FaultProxy
from support.images import AMD64, LayoutImage, LayoutWriter, file, with_parents
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.transfers import copy, pull

MANY = 200
IMAGES = 20
MAX_CONNECTIONS = 4
T = TypeVar("T")


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


# -- 200 layers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many_layers(
    registry_open: RegistryProcess, tmp_path_factory: pytest.TempPathFactory
) -> LayoutImage:
    w = LayoutWriter(tmp_path_factory.mktemp("many") / "layout")
    layers = [
        w.layer(with_parents([file(f"layers/{i:03d}/data", f"layer {i}\n" * (i + 1))]))
        for i in range(MANY)
    ]
    img = w.image(layers, AMD64, labels={"org.example.image": "many"})
    layout = w.finish("many", "v1", img.manifest, img.manifest_bytes, [img])
    with RawClient(registry_open) as raw:
        raw.push_layout(layout, "load/many", "v1")
    return layout


def test_pull_image_of_200_layers(
    cli: Cli, registry_open: RegistryProcess, many_layers: LayoutImage, tmp_path: Path
) -> None:
    ref = f"{registry_open.host}/load/many:v1"
    info = many_layers.image
    assert len(info.layers) == MANY

    cli("image", "pull", ref, "-o", tmp_path / "layout", "-j", "8", "-q").ok()
    blobs = tmp_path / "layout" / "blobs" / "sha256"
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [many_layers.digest]
    assert (blobs / info.manifest.hex).read_bytes() == info.manifest_bytes
    assert {f"sha256:{p.name}" for p in blobs.iterdir()} == {
        many_layers.digest,
        *info.blob_digests,
    }
    for p in blobs.iterdir():
        assert sha256_file(p) == f"sha256:{p.name}"

    out = tmp_path / "many.tar"
    r = cli("image", "pull", ref, "-o", out, "-j", "8", "-q", "--json").ok()
    assert json.loads(r.out)["downloadedBytes"] == 0  # every blob came from the cache
    with tarfile.open(out) as tf:
        (item,) = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert item["Layers"] == [f"blobs/sha256/{d.split(':')[1]}" for d in info.layer_digests]
        for name in item["Layers"]:
            data = tf.extractfile(name).read()  # type: ignore[union-attr]
            assert "sha256:" + hashlib.sha256(data).hexdigest() == "sha256:" + name.split("/")[-1]
        assert tf.extractfile(item["Config"]).read() == info.config_bytes  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# -- 20 at once ------------------------------------------------------------------------------


@dataclass
class Sources:
    layouts: list[LayoutImage]
    proxy: FaultProxy

    def ref(self, i: int, repo: str = "load/src") -> Reference:
        return Reference.parse(f"{self.proxy.host}/{repo}-{i}:v1")


@pytest.fixture(scope="module")
def sources(
    registry_open: RegistryProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sources]:
    """Twenty images of two 64 KiB layers each, all different, pushed once."""
    work = tmp_path_factory.mktemp("sources")
    layouts = []
    with RawClient(registry_open) as raw:
        for i in range(IMAGES):
            rnd = random.Random(i)
            w = LayoutWriter(work / f"src-{i}")
            layers = [
                w.layer(with_parents([file(f"data/{i}-{n}.bin", rnd.randbytes(64 * 1024))]))
                for n in range(2)
            ]
            img = w.image(layers, AMD64, labels={"org.example.image": f"src-{i}"})
            layout = w.finish(f"src-{i}", "v1", img.manifest, img.manifest_bytes, [img])
            raw.push_layout(layout, f"load/src-{i}", "v1")
            layouts.append(layout)
    with FaultProxy(registry_open.url) as proxy:
        yield Sources(layouts, proxy)


def at_once(n: int, fn: Callable[[int], T]) -> list[T]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(fn, range(n)))


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Measures:
    peak: int  #: most connections carrying requests open at once, over both rounds
    probes: list[int]  #: connections without a request (https probes), per round
    fds: int  #: file descriptors the second round left open
    left: int  #: bytes the second round left allocated


def settle(proxy: FaultProxy) -> None:
    """Wait for the proxy's connections to close (their threads close the sockets)."""
    proxy.wait_idle()
    time.sleep(0.05)
    gc.collect()


def measured(proxy: FaultProxy, run: Callable[[str], None]) -> Measures:
    """Run round "warm", then round "again" under tracemalloc, each on a fresh client."""
    proxy.clear()
    run("warm")
    settle(proxy)
    peak, probes = proxy.peak_connections, [proxy.stray_connections]
    fds = fd_count()
    tracemalloc.start()
    try:
        proxy.clear()
        run("again")
        settle(proxy)
        peak = max(peak, proxy.peak_connections)
        probes.append(proxy.stray_connections)
        left, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return Measures(peak, probes, fd_count() - fds, left)


def check(m: Measures) -> None:
    assert 1 <= m.peak <= MAX_CONNECTIONS, m
    assert m.probes == [1, 1], m  # one scheme probe per client, not one per thread
    assert m.fds <= 0, m
    assert m.left < 2 * 1024 * 1024, m


def client(max_connections: int = MAX_CONNECTIONS) -> RegistryClient:
    return RegistryClient(
        credentials=lambda registry: None, certs_dir=None, max_connections=max_connections
    )


def test_twenty_copies_at_once_on_bounded_connections(
    sources: Sources, registry_open: RegistryProcess
) -> None:
    def run(tag: str) -> None:
        with client() as c:
            results = at_once(
                IMAGES,
                lambda i: copy(
                    c, sources.ref(i), sources.ref(i, "load/dst").with_tag(tag), all_platforms=False
                ),
            )
        assert [str(r.digest) for r in results] == [lay.digest for lay in sources.layouts]

    check(measured(sources.proxy, run))
    with RawClient(registry_open) as raw:
        for i, layout in enumerate(sources.layouts):
            for tag in ("warm", "again"):
                assert raw.manifest_digest(f"load/dst-{i}", tag) == layout.digest
            for digest in layout.blob_digests:
                assert raw.blob_exists(f"load/dst-{i}", digest)


def test_twenty_pulls_at_once_on_bounded_connections(sources: Sources, tmp_path: Path) -> None:
    def run(tag: str) -> None:
        cache = BlobStore(tmp_path / f"cache-{tag}")
        with client() as c:

            def one(i: int) -> None:
                fmt = "oci" if i % 2 else "docker-archive"
                dest = tmp_path / tag / (f"{i}" if fmt == "oci" else f"{i}.tar")
                pull(c, sources.ref(i), dest, format=fmt, cache=cache, jobs=4)

            (tmp_path / tag).mkdir()
            at_once(IMAGES, one)

    check(measured(sources.proxy, run))
    for i, layout in enumerate(sources.layouts):
        if i % 2:
            index = json.loads((tmp_path / "again" / f"{i}" / "index.json").read_text())
            assert index["manifests"][0]["digest"] == layout.digest
            for digest in layout.blob_digests:
                blob = tmp_path / "again" / f"{i}" / "blobs" / "sha256" / digest.split(":")[1]
                assert sha256_file(blob) == digest
        else:
            with tarfile.open(tmp_path / "again" / f"{i}.tar") as tf:
                (item,) = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
                layers = [tf.extractfile(n).read() for n in item["Layers"]]  # type: ignore[union-attr]
            got = ["sha256:" + hashlib.sha256(d).hexdigest() for d in layers]
            assert got == layout.image.layer_digests
    assert sorted(p.name for p in (tmp_path / "again").iterdir() if p.name.startswith(".")) == []
