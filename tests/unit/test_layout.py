"""Tests of derrick.layout.oci and derrick.layout.tarstream, plus the small image
builders the other layout tests import."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from derrick import mediatypes as mt
from derrick.digest import Digest
from derrick.errors import DigestMismatchError, LayoutError
from derrick.layout.archive import ArchiveImage, BlobFile
from derrick.layout.oci import OCILayout
from derrick.layout.ociindex import ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME
from derrick.layout.tarstream import RECORD_SIZE, TarStreamWriter
from derrick.manifest import Descriptor, ImageManifest, Index, Platform, parse_manifest
from derrick.store.files import Region, copy_range

# -- builders ------------------------------------------------------------------


def make_layer(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """A layer tarball: (uncompressed tar, gzip-compressed blob)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return raw, gzip.compress(raw, mtime=0)


@dataclass
class TestImage:
    __test__ = False  # not a pytest class

    layers: list[tuple[bytes, bytes]]
    config: bytes
    manifest: ImageManifest
    blobs: dict[Digest, bytes] = field(default_factory=dict)

    @property
    def diff_ids(self) -> list[Digest]:
        return [Digest.of(raw) for raw, _ in self.layers]

    @property
    def layer_digests(self) -> list[Digest]:
        return [d.digest for d in self.manifest.layers]

    def archive_image(
        self,
        ref_name: str | None = "v1",
        image_name: str | None = "127.0.0.1:5000/test/single:v1",
        repo_tags: Sequence[str] | None = None,
    ) -> ArchiveImage:
        if repo_tags is None:
            repo_tags = (image_name,) if image_name else ()
        return ArchiveImage(
            manifest=self.manifest,
            config=self.config,
            ref_name=ref_name,
            image_name=image_name,
            repo_tags=tuple(repo_tags),
        )


def make_image(
    layer_files: Sequence[dict[str, bytes]] = ({"hello.txt": b"hello\n"},),
    *,
    arch: str = "amd64",
    media_type: str = mt.OCI_MANIFEST,
    diff_ids: Sequence[Digest] | None = None,
    extra_layers: Iterable[tuple[bytes, bytes]] = (),
) -> TestImage:
    layers = [make_layer(f) for f in layer_files] + list(extra_layers)
    if diff_ids is None:
        diff_ids = [Digest.of(raw) for raw, _ in layers]
    oci = media_type == mt.OCI_MANIFEST
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [str(d) for d in diff_ids]},
            "history": [{"created_by": "test"} for _ in layers],
        }
    ).encode()
    manifest_raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": mt.OCI_CONFIG if oci else mt.DOCKER_CONFIG,
                "digest": str(Digest.of(config)),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": mt.OCI_LAYER_GZIP if oci else mt.DOCKER_LAYER_GZIP,
                    "digest": str(Digest.of(gz)),
                    "size": len(gz),
                }
                for _, gz in layers
            ],
        },
        indent=2,
    ).encode()
    manifest = parse_manifest(manifest_raw)
    assert isinstance(manifest, ImageManifest)
    blobs = {Digest.of(config): config, manifest.digest: manifest_raw}
    for _, gz in layers:
        blobs[Digest.of(gz)] = gz
    return TestImage(layers, config, manifest, blobs)


def make_index(images: Sequence[TestImage], platforms: Sequence[str]) -> Index:
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                img.manifest.descriptor(Platform.parse(p)).to_json()
                for img, p in zip(images, platforms, strict=True)
            ],
        }
    ).encode()
    index = parse_manifest(raw)
    assert isinstance(index, Index)
    return index


class BlobFiles:
    """A ``blob_file`` callback serving blobs from files under a directory."""

    def __init__(self, root: Path, *images: TestImage) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.calls: list[Digest] = []
        for img in images:
            for digest, data in img.blobs.items():
                (root / digest.hex).write_bytes(data)

    def __call__(self, digest: Digest) -> Path:
        self.calls.append(digest)
        return self.root / digest.hex


def as_blob_file(b: BlobFiles) -> BlobFile:
    return b


def store_in_layout(layout: OCILayout, img: TestImage) -> Descriptor:
    for digest, data in img.blobs.items():
        layout.write_blob(data, digest)
    return img.manifest.descriptor()


# -- tarstream -----------------------------------------------------------------


def _read_tar(data: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
        for m in t:
            f = t.extractfile(m) if m.isreg() else None
            out.append((m, f.read() if f else None))
    return out


def _write_sample(out: io.BufferedIOBase | io.BytesIO, src: Path, **kw: object) -> None:
    w = TarStreamWriter(out, **kw)  # type: ignore[arg-type]
    w.add_dir("blobs")
    w.add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    w.add_file("blobs/big", src, src.stat().st_size)
    w.add_stream("blobs/streamed", 5, [b"ab", b"", b"cde"])
    w.add_bytes("empty", b"")
    w.close()


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    p = tmp_path / "big.bin"
    p.write_bytes(os.urandom(3 * (1 << 20) + 123))
    return p


def test_tarstream_members_and_headers(big_file: Path) -> None:
    out = io.BytesIO()
    _write_sample(out, big_file)
    data = out.getvalue()
    assert len(data) % RECORD_SIZE == 0
    assert data[-1024:] == bytes(1024)
    members = _read_tar(data)
    assert [m.name for m, _ in members] == [
        "blobs",
        "oci-layout",
        "blobs/big",
        "blobs/streamed",
        "empty",
    ]
    for m, content in members:
        assert m.uid == m.gid == 0
        assert m.uname == m.gname == ""
        assert m.mtime == 0
        assert m.mode == (0o755 if m.isdir() else 0o644)
        if m.name == "blobs/big":
            assert content == big_file.read_bytes()
    assert members[3][1] == b"abcde"
    assert members[4][1] == b""
    # the directory is written with a trailing slash, as tar tools do
    assert data[:6] == b"blobs/"


def test_tarstream_is_deterministic_and_sendfile_matches_copy_loop(
    tmp_path: Path, big_file: Path
) -> None:
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    with open(a, "wb") as f:
        _write_sample(f, big_file, mtime=1234)
        assert f.tell() == a.stat().st_size  # the buffered file's position is kept in step
    with open(b, "wb") as f:
        _write_sample(f, big_file, mtime=1234, use_sendfile=False)
    assert a.read_bytes() == b.read_bytes()
    bio = io.BytesIO()
    _write_sample(bio, big_file, mtime=1234)
    assert bio.getvalue() == a.read_bytes()
    assert all(m.mtime == 1234 for m, _ in _read_tar(bio.getvalue()))


def test_tarstream_to_a_pipe(big_file: Path) -> None:
    r, w = os.pipe()
    received = bytearray()

    def drain() -> None:
        with os.fdopen(r, "rb") as f:
            while chunk := f.read(65536):
                received.extend(chunk)

    t = threading.Thread(target=drain)
    t.start()
    with os.fdopen(w, "wb") as out:
        _write_sample(out, big_file)
    t.join()
    expected = io.BytesIO()
    _write_sample(expected, big_file)
    assert bytes(received) == expected.getvalue()


def test_tarstream_long_names_use_pax() -> None:
    name = "blobs/sha512/" + "a" * 128
    out = io.BytesIO()
    with TarStreamWriter(out) as w:
        w.add_bytes(name, b"x")
    (m, content), *_ = _read_tar(out.getvalue())
    assert m.name == name
    assert content == b"x"


def test_tarstream_size_mismatches_raise(tmp_path: Path) -> None:
    w = TarStreamWriter(io.BytesIO())
    with pytest.raises(LayoutError, match="larger"):
        w.add_stream("x", 2, [b"abc"])
    w = TarStreamWriter(io.BytesIO())
    with pytest.raises(LayoutError, match="1 bytes, expected 2"):
        w.add_stream("x", 2, [b"a"])
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    with pytest.raises(LayoutError, match="expected 4"):
        TarStreamWriter(io.BytesIO()).add_file("f", p, 4)


@pytest.mark.parametrize("name", ["/abs", "a/../b", "..", "", "a//b"])
def test_tarstream_rejects_bad_names(name: str) -> None:
    with pytest.raises(LayoutError):
        TarStreamWriter(io.BytesIO()).add_bytes(name, b"")


# -- OCILayout -----------------------------------------------------------------


def test_create_and_open(tmp_path: Path) -> None:
    root = tmp_path / "new" / "layout"
    layout = OCILayout.create(root)
    assert json.loads((root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_bytes())
    assert index == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
    assert (root / "blobs").is_dir()
    assert layout.index().manifests == ()
    assert OCILayout.open(root).root == root
    # an existing layout is accepted by create
    OCILayout.create(root)


def test_create_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    with pytest.raises(LayoutError, match="not empty"):
        OCILayout.create(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(LayoutError):
        OCILayout.create(tmp_path / "file")


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="no oci-layout"):
        OCILayout.open(tmp_path)
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(LayoutError, match=r"version '2\.0\.0'"):
        OCILayout.open(tmp_path)
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    with pytest.raises(LayoutError, match=r"index\.json is missing"):
        OCILayout.open(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(LayoutError, match=r"index\.json is not valid JSON"):
        OCILayout.open(tmp_path)
    (tmp_path / "index.json").write_text('{"schemaVersion": 2, "manifests": [{"size": 1}]}')
    with pytest.raises(LayoutError, match="malformed"):
        OCILayout.open(tmp_path)


def _no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_write_and_read_blobs(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "l")
    d = layout.write_blob(b"hello")
    assert d == Digest.of(b"hello")
    assert layout.blob_path(d) == tmp_path / "l" / "blobs" / "sha256" / d.hex
    assert layout.has_blob(d) and layout.has_blob(d, 5) and not layout.has_blob(d, 6)
    assert layout.read_blob(d) == b"hello"
    with layout.open_blob(d) as f:
        assert f.read() == b"hello"
    with pytest.raises(DigestMismatchError):
        layout.write_blob(b"other", d)
    assert layout.read_blob(d) == b"hello"
    # write is idempotent
    assert layout.write_blob(b"hello", d) == d
    with pytest.raises(LayoutError, match="larger"):
        layout.read_blob(d, max_size=4)
    missing = Digest.of(b"missing")
    assert not layout.has_blob(missing)
    with pytest.raises(LayoutError, match="missing"):
        layout.open_blob(missing)
    assert list(layout.iter_blobs()) == [d]
    assert _no_temp_files(tmp_path)


def test_read_blob_detects_corruption(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "l")
    d = layout.write_blob(b"hello")
    layout.blob_path(d).write_bytes(b"jello")
    with pytest.raises(DigestMismatchError):
        layout.read_blob(d)


def test_add_blob_file_copies(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "l")
    src = tmp_path / "download"
    src.write_bytes(b"layer data")
    d = Digest.of(b"layer data")
    dest = layout.add_blob_file(src, d)
    assert dest.read_bytes() == b"layer data"
    # a file of its own, never a hard link: writing one cannot change the other
    assert dest.stat().st_ino != src.stat().st_ino
    assert src.stat().st_nlink == 1
    assert oct(dest.stat().st_mode & 0o777) == oct(0o644)
    assert layout.add_blob_file(src, d) == dest  # idempotent

    # a damaged blob in the layout is kept unless replaced
    dest.write_bytes(b"layer dat!")
    assert layout.add_blob_file(src, d).read_bytes() == b"layer dat!"
    assert layout.add_blob_file(src, d, replace=True).read_bytes() == b"layer data"
    assert _no_temp_files(tmp_path)
    with pytest.raises(LayoutError, match="does not exist"):
        layout.add_blob_file(tmp_path / "nope", Digest.of(b"nope"))


@pytest.mark.parametrize("in_kernel", [True, False])
def test_copies_with_and_without_copy_file_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_kernel: bool
) -> None:
    """Between filesystems copy_file_range may refuse (EXDEV): the bytes go through a buffer."""
    if not in_kernel:

        def refuse(*args: object) -> int:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "download"
    src.write_bytes(data)
    layout = OCILayout.create(tmp_path / "l")
    assert layout.add_blob_file(src, Digest.of(data)).read_bytes() == data

    # a region of one file into a region of another, at other offsets
    out = tmp_path / "out"
    out.write_bytes(b"x" * 100)
    with src.open("rb") as a, out.open("r+b") as b:
        copy_range(Region(a.fileno(), 5, 1000), Region(b.fileno(), 11, 1000), 10, 1000)
    got = out.read_bytes()
    assert got[:21] == b"x" * 21
    assert got[21:1011] == data[15:1005]


def test_write_blob_replaces_a_damaged_blob_of_the_same_size(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "l")
    d = layout.write_blob(b"config")
    layout.blob_path(d).write_bytes(b"cOnfig")
    assert layout.write_blob(b"config", d) == d
    assert layout.read_blob(d) == b"config"


def test_blob_path_must_stay_inside(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "l")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "l" / "blobs" / "sha256").symlink_to(outside)
    with pytest.raises(LayoutError, match="outside"):
        layout.blob_path(Digest.of(b""))


def test_add_manifest_and_resolve(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "l")
    one = make_image()
    two = make_image([{"other.txt": b"2"}])
    d1 = store_in_layout(layout, one)
    d2 = store_in_layout(layout, two)

    layout.add_manifest(d1, ref_name="v1", image_name="reg.example/test/single:v1")
    assert layout.resolve() == layout.index().manifests[0]
    entry = layout.resolve("v1")
    assert entry.digest == one.manifest.digest
    assert entry.annotations == {
        ANNOTATION_REF_NAME: "v1",
        ANNOTATION_IMAGE_NAME: "reg.example/test/single:v1",
    }
    assert layout.resolve("reg.example/test/single:v1") == entry
    assert layout.resolve(str(one.manifest.digest)) == entry

    layout.add_manifest(d2, ref_name="v2", image_name="reg.example/test/single:v2")
    assert layout.names() == ["v1", "v2"]
    with pytest.raises(LayoutError, match="choose one of: v1, v2"):
        layout.resolve(None)
    with pytest.raises(LayoutError, match=r"no image named 'v3'.*v1, v2"):
        layout.resolve("v3")

    # re-pulling v1 with different content replaces the v1 entry, keeps v2
    layout.add_manifest(d2, ref_name="v1", image_name="reg.example/test/single:v1")
    index = json.loads((tmp_path / "l" / "index.json").read_bytes())
    assert [(m["annotations"][ANNOTATION_REF_NAME], m["digest"]) for m in index["manifests"]] == [
        ("v2", str(two.manifest.digest)),
        ("v1", str(two.manifest.digest)),
    ]
    assert layout.resolve("v1").digest == two.manifest.digest
    # adding the same thing again does not duplicate it
    layout.add_manifest(d2, ref_name="v1", image_name="reg.example/test/single:v1")
    assert len(layout.index().manifests) == 2
    assert _no_temp_files(tmp_path)


def test_add_manifest_keeps_unknown_fields(tmp_path: Path) -> None:
    root = tmp_path / "l"
    layout = OCILayout.create(root)
    img = make_image()
    desc = store_in_layout(layout, img)
    (root / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "annotations": {"x": "y"},
                "manifests": [dict(desc.to_json(), annotations={"custom": "1"}, extra=True)],
            }
        )
    )
    layout.add_manifest(desc, ref_name="v1")
    index = json.loads((root / "index.json").read_bytes())
    assert index["annotations"] == {"x": "y"}
    assert index["manifests"][0]["extra"] is True
    assert index["manifests"][1]["annotations"] == {ANNOTATION_REF_NAME: "v1"}


def test_add_manifest_requires_blob_and_valid_name(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "l")
    img = make_image()
    with pytest.raises(LayoutError, match="blob is missing"):
        layout.add_manifest(img.manifest.descriptor(), ref_name="v1")
    desc = store_in_layout(layout, img)
    with pytest.raises(LayoutError, match="invalid OCI layout reference name"):
        layout.add_manifest(desc, ref_name="bad name")


def test_resolve_empty_layout(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "l")
    with pytest.raises(LayoutError, match="holds no images"):
        layout.resolve()


def test_create_completes_a_layout_missing_its_index(tmp_path: Path) -> None:
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    layout = OCILayout.create(tmp_path)
    assert layout.index().manifests == ()
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "9"}')
    with pytest.raises(LayoutError, match="unsupported OCI layout version"):
        OCILayout.create(tmp_path)


def test_sha512_blobs(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "l")
    d = Digest.of(b"data", "sha512")
    assert layout.write_blob(b"data", d) == d
    assert layout.blob_path(d).parent.name == "sha512"
    assert layout.read_blob(d) == b"data"


def test_add_manifest_waits_for_the_layout_lock(tmp_path: Path) -> None:
    """index.json changes under a flock on the layout directory, which another process (here:
    another open file description) holding it delays; no lock file appears in the layout."""
    import fcntl

    root = tmp_path / "l"
    layout = OCILayout.create(root)
    desc = store_in_layout(layout, make_image())
    before = sorted(p.name for p in root.iterdir())
    fd = os.open(root, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    adder = threading.Thread(target=layout.add_manifest, args=(desc,), kwargs={"ref_name": "v1"})
    try:
        adder.start()
        adder.join(0.5)
        assert adder.is_alive(), "add_manifest did not wait for the layout's lock"
        assert layout.index().manifests == ()
    finally:
        os.close(fd)
    adder.join(10)
    assert not adder.is_alive()
    assert [d.annotations for d in layout.index().manifests] == [{ANNOTATION_REF_NAME: "v1"}]
    assert sorted(p.name for p in root.iterdir()) == before
