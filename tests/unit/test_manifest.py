"""Manifest parsing: property tests (hypothesis) and a few fixed cases.

* :func:`~derrick.manifest.parse_manifest` never raises anything but
  :class:`~derrick.errors.ManifestError`, whatever bytes or JSON it is given.
* Valid manifests and indexes, however they are serialised, parse to models that keep the
  exact bytes (so digests round trip) and whose descriptors serialise back to the input.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from derrick import mediatypes as mt
from derrick.digest import Digest
from derrick.errors import ManifestError, PlatformNotFoundError
from derrick.manifest import (
    MAX_MANIFEST_SIZE,
    ImageConfig,
    ImageManifest,
    Index,
    Platform,
    parse_manifest,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MANIFEST_KEYS = [
    "schemaVersion",
    "mediaType",
    "config",
    "layers",
    "manifests",
    "digest",
    "size",
    "platform",
    "annotations",
    "urls",
    "os",
    "architecture",
    "variant",
    "os.version",
    "os.features",
    "subject",
    "artifactType",
]
MEDIA_TYPES = [
    *sorted(mt.MANIFESTS),
    mt.DOCKER_SCHEMA1,
    mt.DOCKER_SCHEMA1_SIGNED,
    mt.OCI_CONFIG,
    "application/json",
    "",
]

# -- arbitrary JSON-ish input ----------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(MEDIA_TYPES)
    | st.sampled_from(["sha256:" + "a" * 64, "sha512:" + "b" * 128, "sha256:xyz", "md5:00"])
)
keys = st.sampled_from(MANIFEST_KEYS) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=6),
    max_leaves=30,
)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


@FAST
@given(
    obj=json_values, content_type=st.none() | st.sampled_from(MEDIA_TYPES) | st.text(max_size=30)
)
def test_parse_arbitrary_json_raises_only_manifest_error(
    obj: Any, content_type: str | None
) -> None:
    raw = _dumps(obj)
    try:
        m = parse_manifest(raw, content_type)
    except ManifestError as e:
        assert str(e) and "\n" not in e.message
        return
    assert isinstance(m, ImageManifest | Index)
    assert m.raw == raw


@FAST
@given(raw=st.binary(max_size=200))
def test_parse_arbitrary_bytes_raises_only_manifest_error(raw: bytes) -> None:
    with contextlib.suppress(ManifestError):
        parse_manifest(raw)


# -- valid manifests -------------------------------------------------------------------------

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
digests = st.binary(max_size=16).map(lambda b: "sha256:" + hashlib.sha256(b).hexdigest())
str_maps = st.dictionaries(st.text(max_size=10), st.text(max_size=10), min_size=1, max_size=3)


@st.composite
def platforms(draw: st.DrawFn) -> dict[str, Any]:
    p: dict[str, Any] = {
        "os": draw(st.sampled_from(["linux", "windows"])),
        "architecture": draw(st.sampled_from(["amd64", "arm64", "arm", "s390x", "ppc64le"])),
    }
    if draw(st.booleans()):
        p["variant"] = draw(st.sampled_from(["v6", "v7", "v8"]))
    if draw(st.booleans()):
        p["os.version"] = draw(names)
    if draw(st.booleans()):
        p["os.features"] = draw(st.lists(names, min_size=1, max_size=2))
    return p


@st.composite
def descriptors(
    draw: st.DrawFn, media_type: st.SearchStrategy[str] | None = None
) -> dict[str, Any]:
    if media_type is None:
        media_type = st.sampled_from(sorted(mt.GZIP_LAYERS | mt.PLAIN_LAYERS))
    d: dict[str, Any] = {
        "mediaType": draw(media_type),
        "digest": draw(digests),
        "size": draw(st.integers(min_value=0, max_value=2**40)),
    }
    if draw(st.booleans()):
        d["annotations"] = draw(str_maps)
    if draw(st.booleans()):
        d["urls"] = draw(st.lists(names.map(lambda n: f"https://{n}.example/blob"), min_size=1))
    if draw(st.booleans()):
        d["artifactType"] = draw(names.map(lambda n: f"application/vnd.{n}"))
    return d


@st.composite
def image_manifests(draw: st.DrawFn) -> dict[str, Any]:
    docker = draw(st.booleans())
    m: dict[str, Any] = {"schemaVersion": 2}
    if docker or draw(st.booleans()):
        m["mediaType"] = mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
    m["config"] = draw(descriptors(st.just(mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG)))
    m["layers"] = draw(st.lists(descriptors(), max_size=5))
    if draw(st.booleans()):
        m["annotations"] = draw(str_maps)
    if not docker and draw(st.booleans()):
        m["subject"] = draw(descriptors(st.just(mt.OCI_MANIFEST)))
    return m


@st.composite
def indexes(draw: st.DrawFn) -> dict[str, Any]:
    docker = draw(st.booleans())
    child_type = st.just(mt.DOCKER_MANIFEST) if docker else st.sampled_from(sorted(mt.MANIFESTS))
    children = []
    for _ in range(draw(st.integers(0, 4))):
        d = draw(descriptors(child_type))
        if draw(st.booleans()):
            d["platform"] = draw(platforms())
        children.append(d)
    m: dict[str, Any] = {"schemaVersion": 2, "manifests": children}
    if docker or draw(st.booleans()):
        m["mediaType"] = mt.DOCKER_MANIFEST_LIST if docker else mt.OCI_INDEX
    if draw(st.booleans()):
        m["annotations"] = draw(str_maps)
    return m


@st.composite
def serialised(draw: st.DrawFn, doc: dict[str, Any]) -> bytes:
    """``doc`` as a registry might serve it: any indentation, key order and escaping."""
    indent = draw(st.sampled_from([None, 0, 2, "\t"]))
    seps = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    return json.dumps(
        doc,
        indent=indent,
        separators=seps,
        sort_keys=draw(st.booleans()),
        ensure_ascii=draw(st.booleans()),
    ).encode()


@FAST
@given(data=st.data())
def test_image_manifest_round_trip(data: st.DataObject) -> None:
    doc = data.draw(image_manifests())
    raw = data.draw(serialised(doc))
    m = parse_manifest(raw)
    assert isinstance(m, ImageManifest)
    assert m.raw is raw
    assert m.digest == Digest.of(raw)
    assert str(m.digest) == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert m.media_type == doc.get("mediaType", mt.OCI_MANIFEST)
    assert m.config.to_json() == doc["config"]
    assert [d.to_json() for d in m.layers] == doc["layers"]
    assert (dict(m.annotations) if m.annotations else None) == doc.get("annotations")
    assert (m.subject.to_json() if m.subject else None) == doc.get("subject")
    desc = m.descriptor()
    assert (desc.digest, desc.size, desc.media_type) == (m.digest, len(raw), m.media_type)
    # the same document served differently has another digest, never the same model bytes
    again = parse_manifest(json.dumps(doc, indent=3).encode())
    assert again.raw != raw or again.digest == m.digest


@FAST
@given(data=st.data())
def test_index_round_trip(data: st.DataObject) -> None:
    doc = data.draw(indexes())
    raw = data.draw(serialised(doc))
    m = parse_manifest(raw)
    assert isinstance(m, Index)
    assert m.digest == Digest.of(raw)
    assert m.descriptor().size == len(raw)
    assert m.media_type == doc.get("mediaType", mt.OCI_INDEX)
    assert [d.to_json() for d in m.manifests] == doc["manifests"]
    for d in m.manifests:
        if d.platform is not None and mt.is_image_manifest(d.media_type):
            want = Platform(d.platform.os, d.platform.architecture, d.platform.variant)
            chosen = m.select(want)
            assert chosen.platform is not None and chosen.platform.matches(want)


@FAST
@given(data=st.data())
def test_mutated_manifests_raise_only_manifest_error(data: st.DataObject) -> None:
    doc = data.draw(image_manifests() | indexes())
    # replace one value somewhere in the document with anything at all
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append((node, k))
                walk(v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                paths.append((node, i))
                walk(v)

    walk(doc)
    parent, key = data.draw(st.sampled_from(paths))
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[key]
    else:
        parent[key] = data.draw(json_values)
    raw = _dumps(doc)
    try:
        m = parse_manifest(raw, data.draw(st.none() | st.sampled_from(MEDIA_TYPES)))
    except ManifestError:
        return
    assert m.digest == Digest.of(raw)


# -- fixed cases -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # deeper than Python's recursion limit
        b'{"schemaVersion": 2, "layers": [], "config": {"size": ' + b"9" * 5000 + b"}}",
        b'{"mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": NaN}',
        b"\xef\xbb\xbf{}",
        b"",
        b"null",
        b'"a string"',
        b" " * (MAX_MANIFEST_SIZE + 1),
    ],
    ids=["deep", "long-number", "nan", "bom", "empty", "null", "string", "too-large"],
)
def test_hostile_documents(raw: bytes) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(raw)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"schemaVersion": 1, "name": "x"}, "schema 1"),
        ({"mediaType": mt.OCI_MANIFEST, "layers": []}, "'config' is missing"),
        ({"mediaType": mt.OCI_INDEX, "manifests": [{"digest": "sha256:x"}]}, "manifests[0]"),
        (
            {
                "mediaType": mt.OCI_MANIFEST,
                "config": {"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": -1},
                "layers": [],
            },
            "negative",
        ),
        ({"mediaType": 5}, "mediaType"),
        ({"hello": "world"}, "unsupported manifest media type"),
    ],
)
def test_errors_name_the_field(doc: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ManifestError, match=None) as info:
        parse_manifest(json.dumps(doc).encode())
    assert fragment in str(info.value)


def test_media_type_from_content_type_and_shape() -> None:
    body = {
        "config": {"mediaType": mt.DOCKER_CONFIG, "digest": "sha256:" + "a" * 64, "size": 1},
        "layers": [],
    }
    raw = json.dumps(body).encode()
    assert (
        parse_manifest(raw, mt.DOCKER_MANIFEST + "; charset=utf-8").media_type == mt.DOCKER_MANIFEST
    )
    assert parse_manifest(raw).media_type == mt.OCI_MANIFEST
    assert parse_manifest(b'{"manifests": []}').media_type == mt.OCI_INDEX


def test_select_reports_available_platforms() -> None:
    doc = {
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": "sha256:" + "a" * 64,
                "size": 1,
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
            },
        ],
    }
    idx = parse_manifest(json.dumps(doc).encode())
    assert isinstance(idx, Index)
    assert idx.select(Platform.parse("linux/arm64")).digest.hex == "a" * 64
    assert idx.select(Platform.parse("linux/aarch64/v8")).digest.hex == "a" * 64
    with pytest.raises(PlatformNotFoundError, match="it has: linux/arm64/v8"):
        idx.select(Platform.parse("linux/amd64"))


@FAST
@given(obj=json_values)
def test_image_config_parse_raises_only_manifest_error(obj: Any) -> None:
    with contextlib.suppress(ManifestError):
        ImageConfig.parse(_dumps(obj))
