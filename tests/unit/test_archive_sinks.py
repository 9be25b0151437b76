"""OCI archives and docker-archives as sinks and sources of the copy engine, in memory and on
disk: file and stream forms write the same bytes, what is written reads back as it went in,
an interrupted file write resumes where it stopped, and what a docker-archive cannot hold is
refused before anything is written."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from derrick import mediatypes as mt
from derrick.digest import Digest
from derrick.errors import (
    DerrickError,
    LayoutError,
    NotAnImageError,
    Remedy,
    TransportError,
    UsageError,
)
from derrick.images.dockerarchive import DockerArchiveSink, DockerArchiveSource, open_archive
from derrick.images.feed import Feed
from derrick.images.model import ImageName, Selection
from derrick.images.ociarchive import OCIArchiveSink, OCIArchiveSource
from derrick.images.plan import PlanItem
from derrick.manifest import Descriptor, Platform
from derrick.ops.transfer import copy, copy_many
from derrick.store.cache import BlobStore
from derrick.transport import RetryPolicy
from support.memory import MemorySink, MemorySource

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
NO_RETRY = RetryPolicy(retries=0, backoff=0.0)
NAME = ImageName("registry.example/team/app", "v1")


def image(
    src: MemorySource, layers: list[bytes], platform: Platform = AMD64, **kw: Any
) -> Descriptor:
    """An image whose config lists a diff ID per layer (as docker load wants)."""
    config = {
        "os": platform.os,
        "architecture": platform.architecture,
        "rootfs": {"type": "layers", "diff_ids": [str(Digest.of(x)) for x in layers]},
    }
    if platform.variant:
        config["variant"] = platform.variant
    return src.add_image(layers, platform, config=config, **kw)


def two_platforms(src: MemorySource) -> Descriptor:
    shared = os.urandom(3000)
    kids = [image(src, [shared, os.urandom(5000)], p) for p in (AMD64, ARM64)]
    return src.add_index(kids, tag="v1")


def members(data: bytes) -> dict[str, bytes | None]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: (f.read() if (f := tf.extractfile(m)) else None) for m in tf.getmembers()}


def index_names(data: bytes) -> list[dict[str, str]]:
    index = json.loads(members(data)["index.json"] or b"")
    return [m.get("annotations", {}) for m in index["manifests"]]


# -- OCI archives ----------------------------------------------------------------------------


def test_oci_archive_file_and_stream_hold_the_same_bytes(tmp_path: Path) -> None:
    src = MemorySource(chunk_size=700)
    top = two_platforms(src)
    out = tmp_path / "out" / "app.tar"
    stream = io.BytesIO()
    whole = Selection(all=True)
    result = copy(src, OCIArchiveSink(out), name="v1", selection=whole, names=[NAME], jobs=3)
    copy(src, OCIArchiveSink(stream), name="v1", selection=whole, names=[NAME])
    assert out.read_bytes() == stream.getvalue()
    assert sorted(p.name for p in out.parent.iterdir()) == ["app.tar"]  # no partial file left
    got = members(out.read_bytes())
    assert got["oci-layout"] == b'{"imageLayoutVersion": "1.0.0"}'
    for d, raw in result.plan.manifests:
        assert got[f"blobs/sha256/{d.digest.hex}"] == raw
    for d in result.plan.blobs:
        assert got[f"blobs/sha256/{d.digest.hex}"] == src.blob_data[d.digest]
    assert index_names(out.read_bytes()) == [
        {
            "org.opencontainers.image.ref.name": "v1",
            "io.containerd.image.name": "registry.example/team/app:v1",
        }
    ]

    # read back by the engine: the index byte for byte, named as it was written
    with open_archive(out) as back:
        assert isinstance(back, OCIArchiveSource)
        assert back.names() == ["v1"]
        assert back.image_name() == NAME
        sink = MemorySink()
        again = copy(back, sink, selection=whole)
        assert again.digest == top.digest and sink.tags == {"v1": top.digest}
        assert {d: sink.blobs[d] for d in src.blob_data} == src.blob_data


def test_oci_archive_of_one_platform_names_its_platform_and_several_names(
    tmp_path: Path,
) -> None:
    src = MemorySource()
    two_platforms(src)
    out = tmp_path / "arm.tar"
    names = [NAME, ImageName(None, "latest")]
    result = copy(src, OCIArchiveSink(out), name="v1", selection=Selection((ARM64,)), names=names)
    entries = json.loads(members(out.read_bytes())["index.json"] or b"")["manifests"]
    assert [e["digest"] for e in entries] == [str(result.digest)] * 2
    assert entries[0]["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert [e["annotations"] for e in entries] == [
        {
            "org.opencontainers.image.ref.name": "v1",
            "io.containerd.image.name": "registry.example/team/app:v1",
        },
        {"org.opencontainers.image.ref.name": "latest"},
    ]
    with open_archive(out) as back:
        assert back.resolve("latest").digest == result.digest
        assert back.image_name("latest") == ImageName(None, "latest")


# -- docker-archives -------------------------------------------------------------------------


def test_docker_archive_of_several_images_reads_back_as_each(tmp_path: Path) -> None:
    a, b = MemorySource("a"), MemorySource("b")
    shared = os.urandom(2000)
    one = image(a, [shared, os.urandom(100)], tag="one")
    two = image(b, [shared], ARM64, tag="two", media_type=mt.DOCKER_MANIFEST)
    items = [
        PlanItem(a, "one", names=(ImageName("docker.io/library/app", "1"),)),
        PlanItem(b, "two", names=(ImageName("reg.example:5000/x/y", "2"), ImageName(None, "t"))),
    ]
    out = tmp_path / "two.tar"
    stream = io.BytesIO()
    result = copy_many(items, DockerArchiveSink(out))
    copy_many(items, DockerArchiveSink(stream))
    assert out.read_bytes() == stream.getvalue()
    got = members(out.read_bytes())
    manifest_json = json.loads(got["manifest.json"] or b"")
    configs = [e.images[0].manifest.config.digest for e in result.plan.entries]
    assert manifest_json == [
        {
            "Config": f"blobs/sha256/{configs[0].hex}",
            "RepoTags": ["app:1"],
            "Layers": [f"blobs/sha256/{d.digest.hex}" for d in result.images[0].manifest.layers],
        },
        {
            "Config": f"blobs/sha256/{configs[1].hex}",
            "RepoTags": ["reg.example:5000/x/y:2"],
            "Layers": [f"blobs/sha256/{d.digest.hex}" for d in result.images[1].manifest.layers],
        },
    ]
    assert json.loads(got["repositories"] or b"") == {
        "app": {"1": result.images[0].manifest.layers[-1].digest.hex},
        "reg.example:5000/x/y": {"2": result.images[1].manifest.layers[-1].digest.hex},
    }
    assert got["oci-layout"] is not None

    # each image reads back by its RepoTag, with its own manifest (the OCI layout agrees)
    with open_archive(out) as back:
        assert isinstance(back, DockerArchiveSource)
        assert back.names() == ["app:1", "reg.example:5000/x/y:2"]
        for name, want, names in [
            ("app:1", one, ImageName("docker.io/library/app", "1")),
            ("reg.example:5000/x/y:2", two, ImageName("reg.example:5000/x/y", "2")),
        ]:
            assert back.resolve(name).digest == want.digest
            assert back.image_name(name) == names
            sink = MemorySink()
            copy(back, sink, name=name)
            assert want.digest in sink.manifests


def test_docker_archive_refuses_an_index_and_an_artifact_before_writing(tmp_path: Path) -> None:
    src = MemorySource()
    two_platforms(src)
    out = tmp_path / "x.tar"
    with pytest.raises(UsageError, match="holds one platform per image") as e:
        copy(src, DockerArchiveSink(out), name="v1", selection=Selection(all=True), names=[NAME])
    assert "registry.example/team/app:v1 is an index of 2 images" in str(e.value)
    assert e.value.remedy == Remedy("oci-archive")  # the CLI says how to write one
    src.add_image([b"{}"], None, tag="art", config={}, config_type="application/vnd.example+json")
    with pytest.raises(NotAnImageError, match="a docker-archive holds container images only"):
        copy(src, DockerArchiveSink(out), name="art")
    # a config that lists no layer for the one there is
    src.add_image([b"layer"], AMD64, tag="bad")
    with pytest.raises(LayoutError, match="its config lists 0"):
        copy(src, DockerArchiveSink(out), name="bad")
    stream = io.BytesIO()
    with pytest.raises(UsageError):
        copy(src, DockerArchiveSink(stream), name="v1", selection=Selection(all=True))
    assert list(tmp_path.iterdir()) == [] and stream.getvalue() == b""


# -- the file form: resume, and what is left behind ------------------------------------------


def test_a_broken_write_resumes_from_the_bytes_in_place(tmp_path: Path) -> None:
    src = MemorySource(chunk_size=1000)
    img = image(src, [os.urandom(20_000), os.urandom(30_000)], tag="v1")
    out = tmp_path / "app.tar"
    clean = io.BytesIO()
    plan = copy(src, DockerArchiveSink(clean), name="v1", names=[NAME]).plan
    first, second = plan.blobs[1], plan.blobs[2]
    src.breaks[second.digest] = [12_000]
    with pytest.raises(TransportError):
        copy(src, DockerArchiveSink(out), name="v1", names=[NAME], retry=NO_RETRY, jobs=1)
    part, state = tmp_path / ".app.tar.derrick-partial", tmp_path / ".app.tar.derrick-partial.json"
    assert sorted(tmp_path.iterdir()) == [part, state]
    assert json.loads(state.read_text())["done"][str(second.digest)] == 12_000

    src.opens.clear()
    result = copy(src, DockerArchiveSink(out), name="v1", names=[NAME], retry=NO_RETRY)
    assert src.opened(second.digest) == [12_000]  # only the rest was asked for
    assert src.opened(first.digest) == []  # complete, re-hashed from the file
    assert result.stats.copied_bytes == second.size - 12_000
    assert out.read_bytes() == clean.getvalue()
    assert sorted(tmp_path.iterdir()) == [out]
    assert img.digest == result.digest


def test_kept_bytes_that_are_wrong_are_written_again(tmp_path: Path) -> None:
    src = MemorySource(chunk_size=1000)
    image(src, [os.urandom(20_000)], tag="v1")
    out = tmp_path / "app.tar"
    layer = copy(src, MemorySink(), name="v1").plan.blobs[1]
    src.breaks[layer.digest] = [9_000]
    with pytest.raises(TransportError):
        copy(src, OCIArchiveSink(out), name="v1", retry=NO_RETRY)
    part = tmp_path / ".app.tar.derrick-partial"
    offset = json.loads((tmp_path / ".app.tar.derrick-partial.json").read_text())["holes"]
    with part.open("r+b") as f:
        f.seek(offset[str(layer.digest)] + 10)
        f.write(b"XX")
    src.opens.clear()
    copy(src, OCIArchiveSink(out), name="v1", retry=NO_RETRY)
    assert src.opened(layer.digest) == [9_000, 0]
    assert (
        members(out.read_bytes())[f"blobs/sha256/{layer.digest.hex}"] == src.blob_data[layer.digest]
    )


def test_a_failure_before_the_layout_leaves_nothing(tmp_path: Path) -> None:
    src = MemorySource()
    image(src, [b"layer"], tag="v1")
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    message = f"cannot write {blocked}/sub/app.tar: {blocked} is not a directory"
    with pytest.raises(DerrickError, match=message) as e:
        copy(src, OCIArchiveSink(blocked / "sub" / "app.tar"), name="v1")
    assert "nothing is left behind" in str(e.value)


def test_a_local_copy_of_a_blob_is_copied_into_its_hole(tmp_path: Path) -> None:
    src = MemorySource()
    image(src, [os.urandom(5000)], tag="v1")
    layer = copy(src, MemorySink(), name="v1").plan.blobs[1]
    store = BlobStore(tmp_path / "cache")
    partial = store.reserve(layer)
    assert partial is not None
    partial.write(src.blob_data[layer.digest])
    partial.commit()
    src.opens.clear()
    # the first copy takes the layer from the store and fills it with the config on the
    # way (a tee); the second takes both from it
    for out, linked in ((tmp_path / "a.tar", 1), (io.BytesIO(), 2)):
        result = copy(src, OCIArchiveSink(out), name="v1", cache=store)
        assert result.stats.linked == linked and layer.digest not in {d for d, _ in src.opens}
    assert (tmp_path / "a.tar").read_bytes() == out.getvalue()  # type: ignore[union-attr]


def test_an_ordered_archive_takes_its_blobs_in_plan_order_only() -> None:
    src = MemorySource()
    image(src, [b"one", b"two"], tag="v1")
    plan = copy(src, MemorySink(), name="v1").plan
    sink = OCIArchiveSink(io.BytesIO())
    assert sink.ordered
    sink.begin(plan)
    with pytest.raises(DerrickError, match="came before"):
        sink.put_blob(Feed(src, plan.blobs[2]))
    with pytest.raises(DerrickError, match="was never written"):
        sink.commit()
