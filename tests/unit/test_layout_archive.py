"""Tests of derrick.layout.archive (writers) and derrick.layout.reader."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from derrick import mediatypes as mt
from derrick.digest import Digest
from derrick.errors import DigestMismatchError, LayoutError
from derrick.layout.archive import (
    ArchiveImage,
    split_repo_tag,
    write_docker_archive,
    write_oci_archive,
)
from derrick.layout.oci import OCILayout
from derrick.layout.ociindex import ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME
from derrick.layout.reader import DockerArchiveEntry, open_image_source
from derrick.manifest import ImageManifest, parse_manifest

try:
    from .test_layout import BlobFiles, TestImage, make_image, make_index, make_layer
except ImportError:  # tests/unit is not a package
    from test_layout import (  # type: ignore[no-redef]
        BlobFiles,
        TestImage,
        make_image,
        make_index,
        make_layer,
    )

NAME = "127.0.0.1:5000/test/single:v1"


def _members(path: Path) -> list[str]:
    with tarfile.open(path) as t:
        return t.getnames()


def _member(path: Path, name: str) -> bytes:
    with tarfile.open(path) as t:
        f = t.extractfile(name)
        assert f is not None
        return f.read()


def _two_layer_image() -> TestImage:
    return make_image([{"hello.txt": b"hello\n"}, {"world.txt": b"world\n" * 1000}])


# -- OCI archive -----------------------------------------------------------------


def test_oci_archive_roundtrip(tmp_path: Path) -> None:
    img = _two_layer_image()
    blobs = BlobFiles(tmp_path / "dl", img)
    out = tmp_path / "image.tar"
    with open(out, "wb") as f:
        write_oci_archive(f, [img.archive_image()], blobs)

    assert blobs.calls == img.layer_digests  # layers only, in manifest order
    names = _members(out)
    assert names[:4] == ["oci-layout", "index.json", "blobs", "blobs/sha256"]
    blob_names = [f"blobs/sha256/{d.hex}" for d in img.layer_digests]
    assert names[-2:] == blob_names  # layers come last
    assert f"blobs/sha256/{img.manifest.digest.hex}" in names
    assert f"blobs/sha256/{img.manifest.config.digest.hex}" in names

    index = json.loads(_member(out, "index.json"))
    (entry,) = index["manifests"]
    assert entry["digest"] == str(img.manifest.digest)
    assert entry["mediaType"] == mt.OCI_MANIFEST
    assert entry["annotations"] == {ANNOTATION_REF_NAME: "v1", ANNOTATION_IMAGE_NAME: NAME}
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}

    with open_image_source(out) as src:
        assert src.kind == "oci-archive"
        assert src.names() == ["v1"]
        desc = src.resolve("v1")
        assert desc is not None and desc.digest == img.manifest.digest
        assert src.resolve(None) == desc
        assert src.resolve(NAME) == desc
        raw = src.read_blob(desc.digest)
        assert raw == img.manifest.raw
        m = parse_manifest(raw)
        assert isinstance(m, ImageManifest)
        assert src.read_blob(m.config.digest) == img.config
        for (_, gz), layer in zip(img.layers, m.layers, strict=True):
            assert src.blob_size(layer.digest) == len(gz)
            with src.open_blob(layer.digest) as f:
                assert f.read() == gz
            assert b"".join(src.iter_chunks(layer.digest, 7)) == gz
        with pytest.raises(LayoutError, match="no image named"):
            src.resolve("v2")
        with pytest.raises(LayoutError, match="not a docker-archive"):
            src.docker_images()


def test_oci_archive_shared_blobs_written_once(tmp_path: Path) -> None:
    base = {"base.txt": b"base"}
    one = make_image([base, {"a": b"1"}])
    two = make_image([base, {"b": b"2"}])
    blobs = BlobFiles(tmp_path / "dl", one, two)
    out = io.BytesIO()
    write_oci_archive(
        out,
        [
            one.archive_image("one", "reg/x:one"),
            two.archive_image("two", "reg/x:two"),
        ],
        blobs,
    )
    assert blobs.calls == [*one.layer_digests, two.layer_digests[1]]
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as t:
        names = t.getnames()
    assert len(names) == len(set(names))
    assert names.count(f"blobs/sha256/{one.layer_digests[0].hex}") == 1
    path = tmp_path / "two.tar"
    path.write_bytes(out.getvalue())
    with open_image_source(path) as src:
        assert src.names() == ["one", "two"]
        two_desc = src.resolve("two")
        assert two_desc is not None
        assert two_desc.digest == two.manifest.digest


def test_oci_archive_with_index(tmp_path: Path) -> None:
    amd = make_image([{"a": b"amd64"}], arch="amd64")
    arm = make_image([{"a": b"arm64"}], arch="arm64")
    index = make_index([amd, arm], ["linux/amd64", "linux/arm64/v8"])
    image = ArchiveImage(
        manifest=amd.manifest,
        config=amd.config,
        ref_name="v1",
        image_name=NAME,
        repo_tags=(),
        index=index,
        children=((arm.manifest, arm.config),),
    )
    blobs = BlobFiles(tmp_path / "dl", amd, arm)
    out = tmp_path / "multi.tar"
    with open(out, "wb") as f:
        write_oci_archive(f, [image], blobs)
    assert blobs.calls == amd.layer_digests + arm.layer_digests
    with open_image_source(out) as src:
        desc = src.resolve("v1")
        assert desc is not None
        assert desc.digest == index.digest and desc.media_type == mt.OCI_INDEX
        assert src.read_blob(index.digest) == index.raw
        for img in (amd, arm):
            assert src.read_blob(img.manifest.digest) == img.manifest.raw
            assert src.read_blob(img.manifest.config.digest) == img.config
            for d in img.layer_digests:
                assert src.has_blob(d)

    incomplete = ArchiveImage(amd.manifest, amd.config, "v1", NAME, (), index=index)
    with pytest.raises(LayoutError, match="not provided"):
        write_oci_archive(io.BytesIO(), [incomplete], blobs)


def test_archive_rejects_wrong_config(tmp_path: Path) -> None:
    img = make_image()
    bad = ArchiveImage(img.manifest, img.config + b" ", "v1", NAME, (NAME,))
    blobs = BlobFiles(tmp_path / "dl", img)
    for writer in (write_oci_archive, write_docker_archive):
        out = io.BytesIO()
        with pytest.raises(DigestMismatchError):
            writer(out, [bad], blobs)
        assert out.getvalue() == b""


def test_blob_file_size_mismatch(tmp_path: Path) -> None:
    img = make_image()
    blobs = BlobFiles(tmp_path / "dl", img)
    (tmp_path / "dl" / img.layer_digests[0].hex).write_bytes(b"short")
    with pytest.raises(LayoutError, match="expected"):
        write_oci_archive(io.BytesIO(), [img.archive_image()], blobs)


# -- docker-archive --------------------------------------------------------------


def test_docker_archive_structure(tmp_path: Path) -> None:
    img = _two_layer_image()
    blobs = BlobFiles(tmp_path / "dl", img)
    out = tmp_path / "docker.tar"
    with open(out, "wb") as f:
        write_docker_archive(f, [img.archive_image()], blobs)
    assert blobs.calls == img.layer_digests

    cfg_member = f"blobs/sha256/{img.manifest.config.digest.hex}"
    layer_members = [f"blobs/sha256/{d.hex}" for d in img.layer_digests]
    assert _members(out) == [
        "oci-layout",
        "blobs",
        "blobs/sha256",
        cfg_member,
        *layer_members,
        f"blobs/sha256/{img.manifest.digest.hex}",
        "index.json",
        "manifest.json",
        "repositories",
    ]
    manifest_json = json.loads(_member(out, "manifest.json"))
    assert manifest_json == [{"Config": cfg_member, "RepoTags": [NAME], "Layers": layer_members}]
    repositories = json.loads(_member(out, "repositories"))
    assert repositories == {"127.0.0.1:5000/test/single": {"v1": img.layer_digests[-1].hex}}
    # layers are stored exactly as the registry blobs (compressed)
    for (_, gz), name in zip(img.layers, layer_members, strict=True):
        assert _member(out, name) == gz
    assert _member(out, cfg_member) == img.config
    index = json.loads(_member(out, "index.json"))
    (entry,) = index["manifests"]
    assert entry["digest"] == str(img.manifest.digest)
    assert entry["annotations"] == {ANNOTATION_REF_NAME: "v1", ANNOTATION_IMAGE_NAME: NAME}

    with open_image_source(out) as src:
        assert src.kind == "docker-archive"
        assert src.names() == [NAME]
        assert src.docker_images() == [
            DockerArchiveEntry(cfg_member, (NAME,), tuple(layer_members))
        ]
        desc = src.resolve(NAME)
        assert desc is not None and desc.digest == img.manifest.digest
        assert src.resolve(None) == desc
        assert src.resolve("v1") == desc  # via the OCI index annotations
        assert src.read_blob(desc.digest) == img.manifest.raw
        entry_ = src.docker_image(NAME)
        assert src.read_file(entry_.config_path) == img.config
        with src.open_file(entry_.layer_paths[1]) as f:
            assert f.read() == img.layers[1][1]
        with pytest.raises(LayoutError, match="no image tagged"):
            src.docker_image("other:tag")


def test_docker_archive_multiple_images_and_tags(tmp_path: Path) -> None:
    base = {"base": b"base"}
    one = make_image([base, {"a": b"1"}], media_type=mt.DOCKER_MANIFEST)
    two = make_image([base])
    blobs = BlobFiles(tmp_path / "dl", one, two)
    out = tmp_path / "docker.tar"
    images = [
        one.archive_image("one", "reg/x:one", ("reg/x:one", "reg/y:latest")),
        two.archive_image(None, "reg/x@" + str(two.manifest.digest), ()),
    ]
    with open(out, "wb") as f:
        write_docker_archive(f, images, blobs)
    assert blobs.calls == one.layer_digests  # the shared base layer once
    manifest_json = json.loads(_member(out, "manifest.json"))
    assert [m["RepoTags"] for m in manifest_json] == [["reg/x:one", "reg/y:latest"], []]
    assert json.loads(_member(out, "repositories")) == {
        "reg/x": {"one": one.layer_digests[-1].hex},
        "reg/y": {"latest": one.layer_digests[-1].hex},
    }
    with open_image_source(out) as src:
        assert src.names() == ["reg/x:one", "reg/y:latest"]
        with pytest.raises(LayoutError, match="holds 2 images"):
            src.resolve(None)
        d = src.resolve("reg/y:latest")
        assert d is not None and d.digest == one.manifest.digest
        assert d.media_type == mt.DOCKER_MANIFEST
        assert len(src.docker_images()) == 2


def test_docker_archive_layer_count_mismatch(tmp_path: Path) -> None:
    extra = make_layer({"x": b"x"})
    img = make_image(
        [{"a": b"a"}],
        extra_layers=[extra],
        diff_ids=[Digest.of(make_layer({"a": b"a"})[0])],
    )
    blobs = BlobFiles(tmp_path / "dl", img)
    out = io.BytesIO()
    with pytest.raises(LayoutError, match=r"127\.0\.0\.1:5000/test/single:v1.*2 layers.*1"):
        write_docker_archive(out, [img.archive_image()], blobs)
    assert out.getvalue() == b""
    assert blobs.calls == []
    # an OCI archive does not need diff_ids to line up
    write_oci_archive(io.BytesIO(), [img.archive_image()], blobs)


def test_docker_archive_to_pipe_matches_file(tmp_path: Path) -> None:
    img = _two_layer_image()
    blobs = BlobFiles(tmp_path / "dl", img)
    r, w = os.pipe()
    received = bytearray()

    def drain() -> None:
        with os.fdopen(r, "rb") as f:
            while chunk := f.read(65536):
                received.extend(chunk)

    t = threading.Thread(target=drain)
    t.start()
    with os.fdopen(w, "wb") as pipe:
        write_docker_archive(pipe, [img.archive_image()], blobs)
    t.join()
    expected = io.BytesIO()
    write_docker_archive(expected, [img.archive_image()], blobs)
    assert bytes(received) == expected.getvalue()


def test_split_repo_tag() -> None:
    assert split_repo_tag("127.0.0.1:5000/test/single:v1") == ("127.0.0.1:5000/test/single", "v1")
    assert split_repo_tag("alpine:3") == ("alpine", "3")
    assert split_repo_tag("127.0.0.1:5000/test/single") is None
    assert split_repo_tag("x@sha256:" + "a" * 64) is None
    assert split_repo_tag("x:") is None


# -- reader: other sources ---------------------------------------------------------


def test_reader_oci_directory(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "l")
    img = make_image()
    for d, data in img.blobs.items():
        layout.write_blob(data, d)
    layout.add_manifest(img.manifest.descriptor(), ref_name="v1", image_name=NAME)
    with open_image_source(tmp_path / "l") as src:
        assert src.kind == "oci"
        assert src.names() == ["v1"]
        desc = src.resolve("v1")
        assert desc is not None
        assert src.read_blob(desc.digest) == img.manifest.raw
        layer = img.layer_digests[0]
        with src.open_blob(layer) as f:
            assert f.read() == img.blobs[layer]
        layout.blob_path(layer).write_bytes(b"x" * len(img.blobs[layer]))
        with pytest.raises(DigestMismatchError), src.open_blob(layer) as f:
            f.read()
        with pytest.raises(LayoutError, match="missing"):
            src.open_blob(Digest.of(b"nothing"))


def _tar(path: Path, members: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            else:
                t.addfile(info)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def test_reader_legacy_docker_archive(tmp_path: Path) -> None:
    """The docker save (pre-25) layout: <id>/layer.tar, <config hex>.json; repeated
    layers as in-archive symlinks, as docker and containers tooling write them."""
    img = make_image([{"a": b"a"}, {"b": b"b"}])
    raw0, raw1 = img.layers[0][0], img.layers[1][0]
    cfg_name = f"{img.manifest.config.digest.hex}.json"
    path = _tar(
        tmp_path / "legacy.tar",
        [
            _file("id0/layer.tar", raw0),
            _file("id0/VERSION", b"1.0"),
            _file("id1/layer.tar", raw1),
            _link("id2/layer.tar", "../id1/layer.tar"),
            _link("id3/layer.tar", "id0/layer.tar", tarfile.LNKTYPE),
            _file(cfg_name, img.config),
            _file(
                "manifest.json",
                json.dumps(
                    [
                        {
                            "Config": cfg_name,
                            "RepoTags": ["test/legacy:latest"],
                            "Layers": ["id0/layer.tar", "id1/layer.tar", "./id2/layer.tar"],
                        },
                        {"Config": cfg_name, "RepoTags": None, "Layers": ["id3/layer.tar"]},
                    ]
                ).encode(),
            ),
            _file("repositories", b'{"test/legacy":{"latest":"id1"}}'),
        ],
    )
    with open_image_source(path) as src:
        assert src.kind == "docker-archive"
        assert src.index is None
        assert src.names() == ["test/legacy:latest"]
        assert src.resolve("test/legacy:latest") is None  # no OCI manifest in it
        first, second = src.docker_images()
        assert first == DockerArchiveEntry(
            cfg_name, ("test/legacy:latest",), ("id0/layer.tar", "id1/layer.tar", "id2/layer.tar")
        )
        assert src.read_file(first.config_path) == img.config
        with src.open_file(first.layer_paths[2]) as f:  # through the symlink
            assert f.read() == raw1
        assert src.file_size(second.layer_paths[0]) == len(raw0)
        with src.open_file(second.layer_paths[0]) as f:  # through the hard link
            assert f.read() == raw0
        with pytest.raises(LayoutError, match="missing"):
            src.open_blob(img.manifest.digest)


def test_reader_reads_skopeo_style_oci_index_without_names(tmp_path: Path) -> None:
    img = make_image()
    index = {
        "schemaVersion": 2,
        "manifests": [img.manifest.descriptor().to_json()],
    }
    members = [
        _file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
        _file("index.json", json.dumps(index).encode()),
    ] + [_file(f"./blobs/sha256/{d.hex}", data) for d, data in img.blobs.items()]
    path = _tar(tmp_path / "x.tar", members)
    with open_image_source(path) as src:
        assert src.kind == "oci-archive"
        assert src.names() == []
        desc = src.resolve(None)
        assert desc is not None
        assert desc.digest == img.manifest.digest
        assert src.resolve(str(img.manifest.digest)) == desc


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_file("/etc/passwd", b"x"), "absolute path"),
        (_file("blobs/../../x", b"x"), r"contains '\.\.'"),
        (_link("blobs/sha256/x", "/etc/passwd"), "absolute path"),
        (_link("blobs/x", "../../etc/passwd"), "outside the archive"),
        (_link("x", "../y", tarfile.LNKTYPE), "outside the archive"),
    ],
)
def test_reader_rejects_unsafe_members(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str
) -> None:
    img = make_image()
    members = [
        _file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
        _file("index.json", json.dumps({"manifests": []}).encode()),
        member,
    ]
    path = _tar(tmp_path / "bad.tar", members)
    with pytest.raises(LayoutError, match="unsafe") as e:
        open_image_source(path)
    assert e.match(message)
    del img


def test_reader_rejects_device_members(tmp_path: Path) -> None:
    info = tarfile.TarInfo("dev")
    info.type = tarfile.CHRTYPE
    path = _tar(tmp_path / "dev.tar", [(info, None)])
    with pytest.raises(LayoutError, match="unsafe"):
        open_image_source(path)


def test_reader_rejects_manifest_json_paths_outside(tmp_path: Path) -> None:
    path = _tar(
        tmp_path / "x.tar",
        [
            _file(
                "manifest.json",
                json.dumps([{"Config": "../c.json", "RepoTags": [], "Layers": []}]).encode(),
            )
        ],
    )
    with pytest.raises(LayoutError, match="unsafe"):
        open_image_source(path)


def test_reader_detects_corrupt_blob_in_archive(tmp_path: Path) -> None:
    img = _two_layer_image()
    blobs = BlobFiles(tmp_path / "dl", img)
    out = tmp_path / "image.tar"
    with open(out, "wb") as f:
        write_oci_archive(f, [img.archive_image()], blobs)
    layer = img.layer_digests[1]
    data = bytearray(out.read_bytes())
    pos = data.find(img.blobs[layer])
    assert pos > 0
    data[pos + 20] ^= 0xFF  # same size, different content
    cfg = img.blobs[img.manifest.config.digest]
    cpos = data.find(cfg)
    data[cpos + 5] ^= 0x01
    out.write_bytes(bytes(data))
    with open_image_source(out) as src:
        blob = src.open_blob(layer)
        with pytest.raises(DigestMismatchError), blob:
            blob.read()
        with pytest.raises(DigestMismatchError):
            b"".join(src.iter_chunks(layer))
        with pytest.raises(DigestMismatchError):
            src.read_blob(img.manifest.config.digest)
        # the untouched blobs still verify
        assert src.read_blob(img.manifest.digest) == img.manifest.raw


def test_reader_refuses_non_archives(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="does not exist"):
        open_image_source(tmp_path / "nope")
    (tmp_path / "junk").write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(LayoutError, match="not a valid tar"):
        open_image_source(tmp_path / "junk")
    (tmp_path / "c.tar.gz").write_bytes(gzip.compress(b"x"))
    with pytest.raises(LayoutError, match="gzip-compressed"):
        open_image_source(tmp_path / "c.tar.gz")
    plain = _tar(tmp_path / "plain.tar", [_file("hello", b"x")])
    with pytest.raises(LayoutError, match="neither"):
        open_image_source(plain)
    with pytest.raises(LayoutError, match="no oci-layout"):
        open_image_source(tmp_path)


def test_docker_archive_writes_only_the_platform_manifest(tmp_path: Path) -> None:
    amd = make_image([{"a": b"amd64"}], arch="amd64")
    arm = make_image([{"a": b"arm64"}], arch="arm64")
    index = make_index([amd, arm], ["linux/amd64", "linux/arm64/v8"])
    image = ArchiveImage(
        amd.manifest, amd.config, "v1", NAME, (NAME,), index, ((arm.manifest, arm.config),)
    )
    blobs = BlobFiles(tmp_path / "dl", amd, arm)
    out = tmp_path / "docker.tar"
    with open(out, "wb") as f:
        write_docker_archive(f, [image], blobs)
    assert blobs.calls == amd.layer_digests
    names = _members(out)
    assert f"blobs/sha256/{arm.manifest.digest.hex}" not in names
    assert f"blobs/sha256/{index.digest.hex}" not in names
    with open_image_source(out) as src:
        desc = src.resolve(NAME)
        assert desc is not None
        assert desc.digest == amd.manifest.digest
        assert desc.platform is not None and str(desc.platform) == "linux/amd64"


@pytest.mark.parametrize("writer", [write_oci_archive, write_docker_archive])
def test_blob_file_is_called_lazily_while_downloads_finish(tmp_path: Path, writer: object) -> None:
    """Small members are out before the first layer is asked for, and each layer is
    requested only when it is about to be written, so downloads can overlap."""
    img = _two_layer_image()
    src = BlobFiles(tmp_path / "dl", img)
    ready = {d: threading.Event() for d in img.layer_digests}
    out = io.BytesIO()
    seen_at_call: list[int] = []

    def blob_file(digest: Digest) -> Path:
        seen_at_call.append(len(out.getvalue()))
        assert ready[digest].wait(10)
        return src(digest)

    def downloader() -> None:
        for d in reversed(img.layer_digests):  # finishes out of order
            ready[d].set()

    t = threading.Thread(target=downloader)
    t.start()
    writer(out, [img.archive_image()], blob_file)  # type: ignore[operator]
    t.join()
    assert src.calls == img.layer_digests
    assert seen_at_call[0] > 0
    head = out.getvalue()[: seen_at_call[0]]
    assert img.config in head
    if writer is write_oci_archive:
        assert img.manifest.raw in head and b"index.json" in head
