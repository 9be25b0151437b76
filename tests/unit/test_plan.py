"""The one index walk and platform choice (derrick.images.plan), over an in-memory source."""

from __future__ import annotations

import json

import pytest

from derrick import mediatypes as mt
from derrick.digest import Digest
from derrick.errors import ManifestError, PlatformNotFoundError, UsageError
from derrick.images.model import ImageName, Selection
from derrick.images.plan import MAX_INDEX_DEPTH, PlanItem, plan
from derrick.manifest import Descriptor, Platform, parse_manifest
from support.memory import MemorySource

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
ARMV7 = Platform("linux", "arm", "v7")
S390X = Platform("linux", "s390x")


def three_platforms(src: MemorySource) -> tuple[Descriptor, list[Descriptor]]:
    shared = b"shared base layer"
    children = [src.add_image([shared, f"only {p}".encode()], p) for p in (AMD64, ARM64, S390X)]
    top = src.add_index(children, tag="v1", annotations={"org.example.note": "kept"})
    return top, children


def test_default_selection_takes_this_machines_platform_from_an_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Platform, "host", classmethod(lambda cls: ARM64))
    src = MemorySource()
    _, children = three_platforms(src)
    p = plan([PlanItem(src, "v1")])
    (entry,) = p.entries
    assert entry.top.digest == children[1].digest and entry.index is None
    assert entry.top.media_type == mt.OCI_MANIFEST
    assert [img.digest for img in entry.images] == [children[1].digest]
    assert [d.digest for d, _ in p.manifests] == [children[1].digest]
    assert entry.names == (ImageName("memory.example/app", "v1"),)
    assert entry.source is src


def test_one_explicit_platform_and_a_missing_one() -> None:
    src = MemorySource()
    _, children = three_platforms(src)
    p = plan([PlanItem(src, "v1", Selection(platforms=(Platform.parse("linux/s390x"),)))])
    assert p.entries[0].top.digest == children[2].digest
    with pytest.raises(PlatformNotFoundError) as info:
        plan([PlanItem(src, "v1", Selection(platforms=(ARMV7,)))])
    assert "linux/arm/v7" in str(info.value) and "linux/s390x" in str(info.value)


def test_all_keeps_the_index_byte_for_byte_children_first() -> None:
    src = MemorySource()
    top, children = three_platforms(src)
    p = plan([PlanItem(src, "v1", Selection(all=True))])
    (entry,) = p.entries
    assert entry.top == top and entry.index is not None
    assert [d.digest for d, _ in p.manifests] == [c.digest for c in children] + [top.digest]
    assert p.manifests[-1][1] == src.manifest_data[top.digest]
    assert len(entry.images) == 3
    # every blob once, per image: config then layers in manifest order
    want: list[Digest] = []
    for img in entry.images:
        for d in (img.manifest.config, *img.manifest.layers):
            if d.digest not in want:
                want.append(d.digest)
    assert [d.digest for d in p.blobs] == want
    assert len(want) == 3 + 1 + 3  # three configs, the shared layer once, three own layers


def test_two_platforms_make_a_new_index_of_just_those() -> None:
    src = MemorySource()
    top, children = three_platforms(src)
    p = plan([PlanItem(src, "v1", Selection(platforms=(S390X, AMD64)))])
    (entry,) = p.entries
    assert entry.top.digest != top.digest
    assert entry.top.media_type == mt.OCI_INDEX
    raw = p.manifests[-1][1]
    assert Digest.of(raw) == entry.top.digest and len(raw) == entry.top.size
    new = json.loads(raw)
    assert new["mediaType"] == mt.OCI_INDEX
    assert new["annotations"] == {"org.example.note": "kept"}
    assert [m["digest"] for m in new["manifests"]] == [
        str(children[0].digest),
        str(children[2].digest),
    ]  # in the source's order
    assert entry.index is not None and len(entry.index.manifests) == 2
    assert [d.digest for d, _ in p.manifests] == [
        children[0].digest,
        children[2].digest,
        entry.top.digest,
    ]
    assert {img.digest for img in entry.images} == {children[0].digest, children[2].digest}
    arm_only = parse_manifest(src.manifest_data[children[1].digest]).layers  # type: ignore[union-attr]
    assert arm_only[1].digest not in {d.digest for d in p.blobs}


def test_asking_for_every_platform_keeps_the_source_index() -> None:
    src = MemorySource()
    top, _ = three_platforms(src)
    p = plan([PlanItem(src, "v1", Selection(platforms=(AMD64, ARM64, S390X)))])
    assert p.entries[0].top.digest == top.digest


def test_a_docker_manifest_list_subset_stays_a_manifest_list() -> None:
    src = MemorySource()
    kids = [
        src.add_image([f"{p}".encode()], p, media_type=mt.DOCKER_MANIFEST)
        for p in (AMD64, ARMV7, ARM64)
    ]
    src.add_index(kids, tag="v1", media_type=mt.DOCKER_MANIFEST_LIST)
    p = plan([PlanItem(src, "v1", Selection(platforms=(AMD64, ARMV7)))])
    assert p.entries[0].top.media_type == mt.DOCKER_MANIFEST_LIST
    assert json.loads(p.manifests[-1][1])["mediaType"] == mt.DOCKER_MANIFEST_LIST


def test_a_single_image_default_is_taken_whatever_its_platform() -> None:
    src = MemorySource()
    img = src.add_image([b"layer"], S390X, tag="v1")
    p = plan([PlanItem(src, "v1")])
    assert p.entries[0].top.digest == img.digest
    assert p.entries[0].images[0].config == src.blob_data[p.blobs[0].digest]


def test_a_single_image_is_checked_against_explicit_platforms() -> None:
    src = MemorySource()
    src.add_image([b"layer"], ARM64, tag="v1")
    ok = plan([PlanItem(src, "v1", Selection(platforms=(Platform.parse("linux/arm64"),)))])
    assert len(ok.entries) == 1
    ok2 = plan([PlanItem(src, "v1", Selection(platforms=(AMD64, ARM64)))])
    assert ok2.entries[0].index is None  # a single image stays one
    with pytest.raises(PlatformNotFoundError) as info:
        plan([PlanItem(src, "v1", Selection(platforms=(AMD64,)))])
    assert "linux/arm64/v8" in str(info.value) and "linux/amd64" in str(info.value)


def test_an_artifact_copies_but_has_no_platform() -> None:
    src = MemorySource()
    art = src.add_image(
        [b"a signature"],
        None,
        tag="sig",
        config={},
        config_type="application/vnd.example.signature.config+json",
    )
    p = plan([PlanItem(src, "sig")])
    assert p.entries[0].top.digest == art.digest and len(p.blobs) == 2
    with pytest.raises(PlatformNotFoundError, match="has no platform"):
        plan([PlanItem(src, "sig", Selection(platforms=(AMD64,)))])


def test_foreign_layers_are_not_planned_as_blobs() -> None:
    src = MemorySource()
    foreign = Descriptor(
        mt.DOCKER_LAYER_FOREIGN,
        Digest.of(b"windows base"),
        12,
        urls=("https://example.invalid/base",),
    )
    src.add_image([foreign, b"own layer"], AMD64, tag="v1", media_type=mt.DOCKER_MANIFEST)
    p = plan([PlanItem(src, "v1")])
    assert foreign.digest not in {d.digest for d in p.blobs}
    assert len(p.blobs) == 2
    assert p.entries[0].images[0].manifest.layers[0].digest == foreign.digest


def test_resolve_once_and_each_manifest_and_config_once_across_items() -> None:
    src = MemorySource()
    top, children = three_platforms(src)
    src.tags["amd"] = Descriptor(mt.OCI_MANIFEST, children[0].digest, children[0].size)
    p = plan(
        [
            PlanItem(src, "amd"),
            PlanItem(src, "v1", Selection(all=True)),
            PlanItem(src, "v1", Selection(all=True), names=()),
        ]
    )
    assert len(p.entries) == 3 and p.entries[2].names == ()
    digests = [d.digest for d, _ in p.manifests]
    assert digests == [c.digest for c in children] + [top.digest]
    assert sorted(src.manifest_reads) == sorted(digests)  # each read once
    configs = [d for d, _ in src.opens]
    assert len(configs) == len(set(configs)) == 3  # each config read once


def test_nested_indexes_are_walked_to_the_depth_limit() -> None:
    src = MemorySource()
    leaf = src.add_image([b"deep"], AMD64)
    inner = src.add_index([leaf])
    for _ in range(MAX_INDEX_DEPTH - 1):
        inner = src.add_index([inner])
    src.tags["ok"] = inner
    p = plan([PlanItem(src, "ok", Selection(all=True))])
    assert [img.digest for img in p.entries[0].images] == [leaf.digest]
    assert p.manifests[0][0].digest == leaf.digest and p.manifests[-1][0].digest == inner.digest
    src.tags["deep"] = src.add_index([inner])
    with pytest.raises(ManifestError, match="nests indexes more than"):
        plan([PlanItem(src, "deep", Selection(all=True))])


def test_a_config_too_large_is_refused_before_it_is_read() -> None:
    src = MemorySource()
    img = src.add_image([b"layer"], AMD64, tag="v1")
    m = parse_manifest(src.manifest_data[img.digest])
    config = m.config  # type: ignore[union-attr]
    raw = src.manifest_data[img.digest].replace(f'"size":{config.size}'.encode(), b'"size":5000000')
    src.manifest_of(raw, mt.OCI_MANIFEST, tag="big")
    with pytest.raises(ManifestError, match="byte limit"):
        plan([PlanItem(src, "big")])
    assert src.opens == []


def test_a_selection_of_all_and_some_platforms_is_refused() -> None:
    with pytest.raises(UsageError, match="not both"):
        Selection(all=True, platforms=(AMD64,))
