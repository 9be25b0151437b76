"""The lazy image view and its layer reader, on an in-memory source.

The view plans with the engine's planner (one index walk, one platform matcher) and reads
nothing until asked; layers are verified against their digests and diff_ids; a registry's
layers go through a blob store ahead of the reader when there is one, and nothing is
written anywhere when there is none.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import threading
import time
from pathlib import Path

import pytest

from derrick.digest import Digest
from derrick.errors import DigestMismatchError, NotAnImageError, PlatformNotFoundError
from derrick.images.layers import LayerReader
from derrick.images.view import Image
from derrick.manifest import Platform
from derrick.store.cache import BlobStore
from support.memory import AMD64, MemorySource

ARM64 = Platform("linux", "arm64", "v8")


def tar_of(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_source(count: int = 3, platform: Platform = AMD64) -> tuple[MemorySource, list[bytes]]:
    """A source whose tag ``v1`` is an image of ``count`` gzip layers (file ``fN``)."""
    src = MemorySource(chunk_size=1024)
    tars = [tar_of(f"f{i}", bytes([i]) * 5000) for i in range(count)]
    config = {
        "os": platform.os,
        "architecture": platform.architecture,
        "rootfs": {"type": "layers", "diff_ids": [str(Digest.of(t)) for t in tars]},
    }
    src.add_image([gzip.compress(t) for t in tars], platform, tag="v1", config=config)
    return src, tars


def test_nothing_is_read_until_asked_and_then_once() -> None:
    src, _ = image_source()
    image = Image(src, "v1")
    assert src.manifest_reads == [] and src.opens == []
    assert image.platform == AMD64
    assert len(image.layers) == 3
    assert image.size == image.manifest.config.size + sum(d.size for d in image.layers)
    assert image.index is None and image.top == image.descriptor
    reads, opens = list(src.manifest_reads), list(src.opens)
    assert len(reads) == 1 and [d for d, _ in opens] == [image.manifest.config.digest]
    image.config  # noqa: B018
    assert src.manifest_reads == reads and src.opens == opens  # planned once


def test_an_index_gives_the_platform_asked_for_with_its_entry() -> None:
    src, _ = image_source()
    amd = src.tags.pop("v1")
    amd = amd.__class__(amd.media_type, amd.digest, amd.size, platform=AMD64)
    arm_src, _ = image_source(platform=Platform("linux", "arm64"))
    arm = arm_src.tags["v1"]
    src.manifest_data.update(arm_src.manifest_data)
    src.blob_data.update(arm_src.blob_data)
    arm = arm.__class__(arm.media_type, arm.digest, arm.size, platform=ARM64)
    top = src.add_index([amd, arm], tag="v1")
    image = Image(src, "v1", platform="linux/arm64")
    assert image.digest == arm.digest
    assert image.top.digest == top.digest
    assert image.index is not None and len(image.index.manifests) == 2
    assert str(image.platform) == "linux/arm64/v8"  # the entry's, not the config's
    with pytest.raises(PlatformNotFoundError, match=r"s390x.*it has: linux/amd64, linux/arm64/v8"):
        Image(src, "v1", platform="linux/s390x").digest  # noqa: B018
    with pytest.raises(
        PlatformNotFoundError, match="v1 is a single-platform image for linux/amd64"
    ):
        Image(image_source()[0], "v1", platform="linux/arm64", shown="v1").digest  # noqa: B018


def _read_all(reader: LayerReader, image: Image) -> list[bytes]:
    out = []
    for layer in image.filesystem_layers():
        with reader.tar(layer) as (tar, verifier):
            for _entry in tar:
                out.append(b"".join(bytes(p) for p in tar.data()))
            tar.drain()
            verifier.verify()
    return out


def test_layers_of_a_registry_go_through_the_store_ahead_of_the_reader(tmp_path: Path) -> None:
    src, _ = image_source(count=4)
    image = Image(src, "v1", store=BlobStore(tmp_path / "cache"), jobs=2)
    layers = image.filesystem_layers()
    gate = threading.Event()
    src.gates[layers[0].digest] = gate  # the first layer is slow
    with LayerReader(src, layers, remote=True, store=image.store, jobs=2) as reader:
        deadline = time.monotonic() + 10
        while not all(image.store.has(la.descriptor) for la in layers[1:]):  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "later layers were not fetched ahead"
            time.sleep(0.01)
        gate.set()
        assert _read_all(reader, image) == [bytes([i]) * 5000 for i in range(4)]
    opened = [d for d, _ in src.opens]
    assert sorted(opened[1:]) == sorted(la.digest for la in layers)  # each layer once

    # the next reader finds them all in the store: the source is not asked again
    src.opens.clear()
    with LayerReader(src, layers, remote=True, store=image.store) as reader:
        assert len(_read_all(reader, image)) == 4
    assert src.opens == []


def test_without_a_store_layers_stream_and_nothing_is_written(tmp_path: Path) -> None:
    src, _ = image_source(count=2)
    image = Image(src, "v1")
    before = set(tmp_path.rglob("*"))
    with LayerReader(src, image.filesystem_layers(), remote=True) as reader:
        assert _read_all(reader, image) == [bytes([0]) * 5000, bytes([1]) * 5000]
    assert set(tmp_path.rglob("*")) == before


def test_a_layer_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    src, _ = image_source(count=2)
    image = Image(src, "v1", store=BlobStore(tmp_path / "cache"))
    layers = image.filesystem_layers()
    bad = bytearray(src.blob_data[layers[1].digest])
    bad[-9] ^= 0xFF
    src.corrupt[layers[1].digest] = bytes(bad)
    for store in (image.store, None):
        with (
            pytest.raises(DigestMismatchError, match=str(layers[1].digest)),
            LayerReader(src, layers, remote=True, store=store) as reader,
        ):
            _read_all(reader, image)
    assert not (tmp_path / "cache" / "blobs" / "sha256" / layers[1].digest.hex).exists()


def test_an_artifact_has_no_filesystem() -> None:
    src = MemorySource()
    src.add_image([b"chart"], None, tag="v1", config={}, config_type="application/x.chart")
    image = Image(src, "v1", shown="chart:v1")
    assert image.platform is None and not image.is_image
    with pytest.raises(NotAnImageError, match="chart:v1 is not a container image"):
        image.filesystem_layers()
    with pytest.raises(NotAnImageError):
        image.config  # noqa: B018
