"""How a copy names its source image and its destination: null lists in index.json, source
names with colons, and the tag a registry destination without one takes (image push)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from derrick import mediatypes as mt
from derrick.digest import Digest
from derrick.errors import LayoutError, ManifestError, UsageError
from derrick.images.layout import LayoutDir
from derrick.images.locations import parse_location
from derrick.images.open import copy_names
from derrick.layout.ociindex import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    empty_index_bytes,
    layout_file_bytes,
    parse_index_json,
)
from derrick.layout.reader import tag_in
from derrick.manifest import Descriptor, Index, parse_manifest


def test_index_json_with_null_manifests_has_no_entries() -> None:
    raw = b'{"schemaVersion":2,"mediaType":"%s","manifests":null}' % mt.OCI_INDEX.encode()
    index = parse_index_json(raw, "x.tar")
    assert isinstance(index, Index) and index.manifests == () and index.raw == raw
    # a registry's index must still list its manifests
    with pytest.raises(ManifestError, match="'manifests' has the wrong type"):
        parse_manifest(raw)
    with pytest.raises(LayoutError, match=r"index\.json is malformed"):
        parse_index_json(b'{"schemaVersion":2,"manifests":"none"}', "x.tar")


def test_source_names_may_hold_colons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app.tar").write_bytes(b"")
    (tmp_path / "a:b.tar").write_bytes(b"")

    def split(text: str) -> tuple[str | None, str | None]:
        loc = parse_location(text, local=True)
        return loc.path, loc.name

    assert split("app.tar") == ("app.tar", None)
    assert split("app.tar:app:1.0") == ("app.tar", "app:1.0")
    assert split("docker-archive:app.tar:reg.example:5000/app:1") == (
        "app.tar",
        "reg.example:5000/app:1",
    )
    assert split("a:b.tar") == ("a:b.tar", None)
    assert split("a:b.tar:x") == ("a:b.tar", "x")
    with pytest.raises(UsageError, match=r"missing\.tar does not exist"):
        split("missing.tar:app:1.0")


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("v1", "v1"),
        ("app:v1", "v1"),
        ("docker.io/library/app:1.0", "1.0"),
        ("reg.example:5000/team/app:rc-2", "rc-2"),
        ("reg.example:5000/team/app", None),
        ("app@sha256:" + "a" * 64, None),
        ("not a name", None),
    ],
)
def test_the_tag_a_name_carries(name: str, tag: str | None) -> None:
    assert tag_in(name) == tag


def _layout(root: Path, entries: list[dict[str, str]]) -> tuple[LayoutDir, list[str]]:
    """A layout whose index.json lists one manifest per entry of ``entries`` (its
    annotations); the digests of those manifests."""
    root.mkdir()
    (root / "oci-layout").write_bytes(layout_file_bytes())
    index = json.loads(empty_index_bytes())
    digests = []
    for n, ann in enumerate(entries):
        digest = Digest.of(b"{}" + b" " * n)
        desc = Descriptor(mt.OCI_MANIFEST, digest, 2 + n, annotations=ann or None)
        index["manifests"].append(desc.to_json())
        digests.append(str(digest))
    (root / "index.json").write_text(json.dumps(index))
    return LayoutDir(root), digests


def test_a_registry_destination_takes_the_source_tag_or_asks_for_one(tmp_path: Path) -> None:
    layout, (one, none, two) = _layout(
        tmp_path / "layout",
        [
            {ANNOTATION_REF_NAME: "v1"},
            {},
            {ANNOTATION_REF_NAME: "v1", ANNOTATION_IMAGE_NAME: "reg.example:5000/app:v2"},
        ],
    )
    repo = parse_location("reg.example:5000/app", destination=True)
    names = copy_names(repo, layout, one, "src")
    assert names is not None and [str(n) for n in names] == ["reg.example:5000/app:v1"]
    tagged = parse_location("reg.example:5000/app:given", destination=True)
    assert [str(n) for n in copy_names(tagged, layout, two, "src") or ()] == [
        "reg.example:5000/app:given"
    ]
    pinned = parse_location(f"reg.example:5000/app@{one}", destination=True)
    assert copy_names(pinned, layout, none, "src") == ()  # by digest: no tag
    with pytest.raises(UsageError) as info:
        copy_names(repo, layout, none, "app.tar")
    assert str(info.value) == (
        "app.tar is not tagged, so reg.example:5000/app needs a tag to copy it as; "
        "add one, e.g. reg.example:5000/app:latest"
    )
    with pytest.raises(UsageError, match=r"app.tar is tagged v1, v2, so .* needs the tag"):
        copy_names(repo, layout, two, "app.tar")
    # a local destination keeps the source's names
    assert (
        copy_names(parse_location(str(tmp_path / "x.tar"), destination=True), layout, one, "s")
        is None
    )
