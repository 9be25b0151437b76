"""Parsing of image locations: references, transport prefixes, plain paths, streams."""

from __future__ import annotations

import pytest

from derrick.errors import UsageError
from derrick.images.locations import Location, parse_location

DIRS = {"layout", "/data/layout", "./rel", "with:colon", "Some Dir"}
FILES = {"app.tar", "/data/app.tar", "/data/oci.tar", "plainfile"}


def exists(p: str) -> bool:
    return p in DIRS or p in FILES


def isdir(p: str) -> bool:
    return p in DIRS


def parse(text: str, **kw: object) -> Location:
    return parse_location(text, exists=exists, isdir=isdir, **kw)  # type: ignore[arg-type]


def test_references() -> None:
    loc = parse("registry.example/team/app:1.0")
    assert loc.kind == "registry" and loc.reference is not None
    assert str(loc.reference) == "registry.example/team/app:1.0"
    assert parse("alpine").reference == parse("docker.io/library/alpine:latest").reference
    assert parse("docker://layout").reference is not None  # docker:// wins over the directory
    # a destination without tag keeps none (the source's is used)
    dst = parse("registry.example/team/app", destination=True)
    assert dst.reference is not None and dst.reference.tag is None
    assert parse("registry.example/team/app").reference.tag == "latest"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "kind", "path", "name"),
    [
        ("oci:layout", "oci", "layout", None),
        ("oci:layout:v1", "oci", "layout", "v1"),
        (
            "oci:/data/layout:registry:5000/team/app:v1",
            "oci",
            "/data/layout",
            "registry:5000/team/app:v1",
        ),
        ("oci:layout:sha256:" + "a" * 64, "oci", "layout", "sha256:" + "a" * 64),
        ("oci:with:colon", "oci", "with:colon", None),
        ("oci:with:colon:v2", "oci", "with:colon", "v2"),
        ("oci-archive:/data/oci.tar:v1", "oci-archive", "/data/oci.tar", "v1"),
        ("docker-archive:app.tar:team/app:1.0", "docker-archive", "app.tar", "team/app:1.0"),
        ("/data/layout:v1", "oci", "/data/layout", "v1"),
        ("./rel", "oci", "./rel", None),
        ("app.tar", "archive", "app.tar", None),
        ("app.tar:app:1.0", "archive", "app.tar", "app:1.0"),
        ("/data/app.tar", "archive", "/data/app.tar", None),
    ],
)
def test_local_sources(text: str, kind: str, path: str, name: str | None) -> None:
    loc = parse(text)
    assert (loc.kind, loc.path, loc.name) == (kind, path, name)
    assert loc.reference is None


@pytest.mark.parametrize(
    ("text", "kind", "path", "name"),
    [
        ("oci:new-dir", "oci", "new-dir", None),
        ("oci:new-dir:v1", "oci", "new-dir", "v1"),
        ("oci:/data/new/dir:v1", "oci", "/data/new/dir", "v1"),
        ("docker-archive:out.tar:team/app:1.0", "docker-archive", "out.tar", "team/app:1.0"),
        ("oci-archive:out.tar", "oci-archive", "out.tar", None),
        ("out.tar", "docker-archive", "out.tar", None),
        ("./out", "oci", "./out", None),
        ("/data/out:v3", "oci", "/data/out", "v3"),
        ("/data/out.tar:app:v3", "docker-archive", "/data/out.tar", "app:v3"),
        ("/data/layout:v9", "oci", "/data/layout", "v9"),  # an existing layout gets a new name
    ],
)
def test_local_destinations(text: str, kind: str, path: str, name: str | None) -> None:
    loc = parse(text, destination=True)
    assert (loc.kind, loc.path, loc.name) == (kind, path, name)


def test_streams() -> None:
    assert parse("oci-archive:-", destination=True).is_stream
    loc = parse("docker-archive:-:app:1", destination=True)
    assert (loc.kind, loc.path, loc.name) == ("docker-archive", "-", "app:1")
    assert parse("-", destination=True, stream_kind="oci-archive").kind == "oci-archive"
    with pytest.raises(UsageError, match="needs an archive kind"):
        parse("-", destination=True)
    with pytest.raises(UsageError, match="cannot be a stream"):
        parse("oci:-", destination=True)


def test_missing_sources_and_ambiguity() -> None:
    with pytest.raises(UsageError, match="the OCI layout nothing-here does not exist"):
        parse("oci:nothing-here:v1")
    with pytest.raises(UsageError, match="does not exist"):
        parse("./nothing-here")
    with pytest.raises(UsageError, match="both a path here and an image reference") as e:
        parse("layout:v1")
    assert "./layout:v1" in str(e.value) and "docker://layout:v1" in str(e.value)
    # an existing path that is no valid reference is just a path
    assert parse("Some Dir:v1").name == "v1"
    with pytest.raises(UsageError, match="both a path"):
        parse("with:colon")  # docker.io/library/with:colon
    with pytest.raises(UsageError, match="empty"):
        parse("")


def test_destination_names() -> None:
    from derrick.images.model import ImageName
    from derrick.images.open import destination_names

    def names(text: str) -> tuple[ImageName, ...] | None:
        return destination_names(parse(text, destination=True))

    assert names("registry.example/app:1.0") == (ImageName("registry.example/app", "1.0"),)
    assert names("registry.example/app") is None  # keeps the source's tag
    assert names("registry.example/app@sha256:" + "b" * 64) == ()
    assert names("oci:new:v1") == (ImageName(None, "v1"),)
    assert names("oci:new:registry.example/app:v2") == (ImageName("registry.example/app", "v2"),)
    assert names("docker-archive:out.tar:app:1.0") == (ImageName("docker.io/library/app", "1.0"),)
    assert names("out.tar") is None
    with pytest.raises(UsageError, match="by a tag, not by a digest"):
        names("oci:new:app@sha256:" + "c" * 64)
