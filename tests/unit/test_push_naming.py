"""How image push names its source image and its destination: null lists in index.json, SRC
names with colons, and the tag a destination without one takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from derrick import mediatypes as mt
from derrick.cli.write import _split_source
from derrick.digest import Digest
from derrick.errors import LayoutError, ManifestError, UsageError
from derrick.layout.oci import parse_index_json
from derrick.layout.reader import SelectedImage, tag_in
from derrick.manifest import Descriptor, Index, parse_manifest
from derrick.ops.push import destination
from derrick.reference import Reference


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
    assert _split_source("app.tar", None) == ("app.tar", None)
    assert _split_source("app.tar:app:1.0", None) == ("app.tar", "app:1.0")
    assert _split_source("docker-archive:app.tar:reg.example:5000/app:1", None) == (
        "app.tar",
        "reg.example:5000/app:1",
    )
    assert _split_source("a:b.tar", None) == ("a:b.tar", None)
    assert _split_source("a:b.tar:x", None) == ("a:b.tar", "x")
    assert _split_source("app.tar", "app:1.0") == ("app.tar", "app:1.0")
    assert _split_source("missing.tar:app:1.0", None) == ("missing.tar:app:1.0", None)
    with pytest.raises(UsageError, match="named twice"):
        _split_source("app.tar:app:1.0", "app:2.0")


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


def test_destination_takes_the_source_tag_or_asks_for_one() -> None:
    desc = Descriptor(mt.OCI_MANIFEST, Digest.of(b"{}"), 2)

    def selected(*tags: str) -> SelectedImage:
        return SelectedImage(desc, None, tags)

    repo = Reference.parse("reg.example:5000/app", default_tag=None)
    assert destination(repo, selected("v1"), "src") == repo.with_tag("v1")
    tagged = Reference.parse("reg.example:5000/app:given")
    assert destination(tagged, selected("v1", "v2"), "src") == tagged
    pinned = repo.with_digest(desc.digest)
    assert destination(pinned, selected(), "src") == pinned
    with pytest.raises(UsageError) as info:
        destination(repo, selected(), "app.tar")
    assert str(info.value) == (
        "app.tar is not tagged, so reg.example:5000/app needs a tag to push it as; "
        "add one, e.g. reg.example:5000/app:latest"
    )
    with pytest.raises(UsageError, match=r"app.tar is tagged v1, v2, so .* needs the tag"):
        destination(repo, selected("v1", "v2"), "app.tar")
