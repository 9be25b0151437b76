"""``derrick image unpack / export / diff / layers`` against real registries and layouts.

The unpacked ``eight`` image is compared with what ``umoci unpack --rootless`` makes of
the same layout and with the hand-written ``expected_rootfs``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from derrick.cli.main import main
from derrick.errors import LayoutError
from derrick.layout.tarread import TarReader
from support.images import (
    AMD64,
    FIXED_MTIME,
    OCI_LAYER_GZIP,
    Expected,
    Layer,
    LayoutImage,
    LayoutWriter,
    build_tar,
    directory,
    file,
    gzip_bytes,
    hardlink,
    make_zstd,
    sha256_digest,
    whiteout,
    with_parents,
)
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.seed import SeededRegistries
from support.tools import require

# -- helpers ---------------------------------------------------------------------------------


class Ran:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def derrick(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Ran]:
    """Run the CLI in-process with a private cache and Docker config."""
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    monkeypatch.setenv("DERRICK_CACHE_DIR", str(tmp_path / "cache"))

    def run(*argv: str) -> Ran:
        capsys.readouterr()
        code = main(list(argv))
        got = capsys.readouterr()
        return Ran(code, got.out, got.err)

    return run


Snapshot = dict[str, tuple[Any, ...]]


def snapshot(root: Path, *, owners: bool = False) -> Snapshot:
    """Every path under ``root``: kind, permission bits, content or target, link group."""
    out: Snapshot = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            own = (st.st_uid, st.st_gid) if owners else ()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(p), *own)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), *own)
            else:
                first = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None
                out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes(), first, *own)
    # a hard link group is named by its first path in sorted order
    groups: dict[str, str] = {}
    for rel in sorted(out):
        v = out[rel]
        if v[0] == "file" and v[3] is not None:
            groups.setdefault(v[3], rel)
    return {
        k: ((*v[:3], groups.get(v[3]) if v[3] else None, *v[4:])) if v[0] == "file" else v
        for k, v in out.items()
    }


def expected_snapshot(expected: dict[str, Expected], *, owners: bool = False) -> Snapshot:
    out: Snapshot = {}
    groups: dict[str, list[str]] = {}
    for path, e in expected.items():
        if e.kind == "hardlink":
            assert e.target is not None
            groups.setdefault(e.target, [e.target]).append(path)
    first_of = {p: min(members) for members in groups.values() for p in members}
    for path, e in expected.items():
        own = (e.uid, e.gid) if owners else ()
        if e.kind == "dir":
            out[path] = ("dir", e.mode, *own)
        elif e.kind == "symlink":
            out[path] = ("symlink", e.target, *own)
        else:
            src = expected[e.target] if e.kind == "hardlink" and e.target else e
            out[path] = ("file", src.mode, src.content, first_of.get(path), *own)
    return out


def umoci_rootfs(layout: LayoutImage, work: Path) -> Path:
    require("umoci")
    bundle = work / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--rootless", "--image", f"{layout.path}:{layout.tag}", str(bundle)],
        check=True,
        capture_output=True,
    )
    return bundle / "rootfs"


def push(registry: RegistryProcess, layout: LayoutImage, repo: str) -> str:
    with RawClient(registry) as c:
        c.push_layout(layout, repo, layout.tag)
    return f"{registry.host}/{repo}:{layout.tag}"


def is_root() -> bool:
    return os.geteuid() == 0


# -- unpack ----------------------------------------------------------------------------------


def test_unpack_eight_from_registry_matches_umoci_and_expected(
    derrick: Callable[..., Ran], seeded_registries: SeededRegistries, tmp_path: Path
) -> None:
    image = seeded_registries.open["test/eight"]
    dest = tmp_path / "rootfs"
    r = derrick("image", "unpack", image.reference, str(dest), "--format", "json")
    assert r.code == 0, r.err
    summary = r.json()
    assert summary["layers"] == 8
    assert summary["diffIds"] == image.layout.image.diff_ids

    ours = snapshot(dest)
    theirs = snapshot(umoci_rootfs(image.layout, tmp_path))
    assert ours == theirs
    expected = image.layout.image.expected_rootfs
    assert expected is not None
    assert ours == expected_snapshot(expected)
    # hard link identity, not just equal content
    doc = dest / "usr/share/doc"
    assert (doc / "link.txt").stat().st_ino == (doc / "original.txt").stat().st_ino
    # owners are applied when running as root
    if is_root():
        assert snapshot(dest, owners=True) == expected_snapshot(expected, owners=True)
    # every entry carries the layer's mtime, directories included (set after their content)
    for p in [dest / "data", dest / "opq", dest / "data/sticky", dest / "etc/hostname"]:
        assert p.lstat().st_mtime == FIXED_MTIME
    assert os.lstat(dest / "etc/abs-link").st_mtime == FIXED_MTIME
    # nothing but DIR was left beside it
    assert sorted(x.name for x in tmp_path.iterdir() if x.name.startswith(".")) == []


def test_unpack_downloads_a_damaged_cache_blob_again(
    derrick: Callable[..., Ran], seeded_registries: SeededRegistries, tmp_path: Path
) -> None:
    """Layers read from the blob cache are known good first (written to, times put back)."""
    seeded = seeded_registries.open
    image = seeded["test/eight"]
    assert derrick("image", "unpack", image.reference, str(tmp_path / "a")).code == 0
    victim = image.layout.image.layers[3]
    cached = tmp_path / "cache" / "blobs" / "sha256" / victim.descriptor.hex
    time.sleep(0.02)  # past the timestamp tick of its verification (see derrick.store.records)
    before = cached.stat()
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with cached.open("r+b") as f:
        f.write(data)
    os.utime(cached, ns=(before.st_atime_ns, before.st_mtime_ns))

    offset = seeded.registry.log_size()
    r = derrick("image", "unpack", image.reference, str(tmp_path / "b"))
    assert r.code == 0, r.err
    assert snapshot(tmp_path / "b") == snapshot(tmp_path / "a")
    log = seeded.registry.log_since(offset)
    gets = re.findall(r'"GET /v2/[^ "]+/blobs/(sha256:[0-9a-f]{64}) HTTP', log)
    # the config (read from the registry each time) and the damaged layer, no other layer
    assert sorted(gets) == sorted([image.layout.image.config.digest, victim.digest])
    assert sha256_digest(cached.read_bytes()) == victim.digest


def test_unpack_local_layout_and_docker_archive(
    derrick: Callable[..., Ran],
    test_images: dict[str, LayoutImage],
    seeded_registries: SeededRegistries,
    tmp_path: Path,
) -> None:
    eight = test_images["eight"]
    expected = expected_snapshot(eight.image.expected_rootfs or {})
    r = derrick("image", "unpack", f"{eight.path}:v1", str(tmp_path / "a"))
    assert r.code == 0, r.err
    assert snapshot(tmp_path / "a") == expected
    # a docker-archive written by derrick pull, read back (DIR exists and is empty: allowed)
    archive = tmp_path / "eight.tar"
    assert (
        derrick(
            "image",
            "pull",
            seeded_registries.open["test/eight"].reference,
            "-o",
            str(archive),
            "-q",
        ).code
        == 0
    )
    (tmp_path / "b").mkdir()
    r = derrick("image", "unpack", str(archive), str(tmp_path / "b"))
    assert r.code == 0, r.err
    assert snapshot(tmp_path / "b") == expected


def test_unpack_refuses_a_directory_that_is_not_empty(
    derrick: Callable[..., Ran], test_images: dict[str, LayoutImage], tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    r = derrick("image", "unpack", str(test_images["single"].path), str(dest))
    assert r.code == 2
    assert "not empty" in r.err
    assert [p.name for p in dest.iterdir()] == ["keep"]


def test_unpack_picks_the_platform_of_an_index(
    derrick: Callable[..., Ran], seeded_registries: SeededRegistries, tmp_path: Path
) -> None:
    image = seeded_registries.open["test/multi"]
    r = derrick(
        "image", "unpack", image.reference, str(tmp_path / "arm"), "--platform", "linux/arm64"
    )
    assert r.code == 0, r.err
    assert (tmp_path / "arm/etc/arch").read_text() == "linux/arm64/v8\n"
    expected = image.layout.image_for("linux/arm64/v8").expected_rootfs or {}
    assert snapshot(tmp_path / "arm") == expected_snapshot(expected)


def test_zstd_image_pulled_through_the_registry_and_unpacked(
    derrick: Callable[..., Ran], registry_open: RegistryProcess, tmp_path: Path
) -> None:
    layout = make_zstd(tmp_path / "zstd-layout")
    types = [layer.descriptor.media_type for layer in layout.image.layers]
    assert types[:2] == ["application/vnd.oci.image.layer.v1.tar+zstd"] * 2
    ref = push(registry_open, layout, "unpack/zstd")
    dest = tmp_path / "rootfs"
    r = derrick("image", "unpack", ref, str(dest), "--format", "json")
    assert r.code == 0, r.err
    assert r.json()["diffIds"] == layout.image.diff_ids
    assert snapshot(dest) == expected_snapshot(layout.image.expected_rootfs or {})
    assert (dest / "usr/lib/big.bin").read_bytes() == bytes(range(256)) * 4096
    assert not (dest / "etc/remove-me").exists()
    # the layers went through the blob cache
    cache = tmp_path / "cache" / "blobs" / "sha256"
    for layer in layout.image.layers:
        assert (cache / layer.descriptor.hex).is_file()
    # layers of a zstd image: uncompressed sizes come from the decompressed streams
    r = derrick("image", "layers", ref, "--format", "json", "--top", "1")
    assert r.code == 0, r.err
    layers = r.json()["layers"]
    assert [x["uncompressedSize"] for x in layers] == [
        layer.uncompressed_size for layer in layout.image.layers
    ]
    assert layers[0]["largestFiles"] == [{"path": "usr/lib/big.bin", "size": 1 << 20}]
    assert [x["whiteouts"] for x in layers] == [0, 1, 0]


def _bad_diff_id_layout(path: Path) -> LayoutImage:
    w = LayoutWriter(path)
    good = w.layer(with_parents([file("etc/ok", "ok\n")]))
    tar = build_tar(with_parents([file("etc/tampered", "not what the config says\n")]))
    wrong = sha256_digest(b"something else")
    bad = Layer(w.blob(gzip_bytes(tar), OCI_LAYER_GZIP), wrong, len(tar))
    img = w.image([good, bad], AMD64)
    return w.finish("bad", "v1", img.manifest, img.manifest_bytes, [img])


def test_diff_id_mismatch_is_an_error_and_leaves_nothing(
    derrick: Callable[..., Ran], registry_open: RegistryProcess, tmp_path: Path
) -> None:
    layout = _bad_diff_id_layout(tmp_path / "bad-layout")
    ref = push(registry_open, layout, "unpack/bad-diff-id")
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "rootfs"
    r = derrick("image", "unpack", ref, str(dest))
    assert r.code == 1
    assert "diff_id" in r.err and "layer 2" in r.err
    assert not dest.exists()
    assert list(out.iterdir()) == []  # the temporary tree is gone too
    # the same check guards export, layers and diff
    assert derrick("image", "export", ref, "-o", str(out / "x.tar")).code == 1
    assert list(out.iterdir()) == []
    assert derrick("image", "layers", ref).code == 1


# -- export ----------------------------------------------------------------------------------


def _tar_snapshot(data: bytes) -> Snapshot:
    out: Snapshot = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
        names = [m.name.rstrip("/") for m in members]
        assert len(names) == len(set(names)), "a path appears twice"
        for m in members:
            name = m.name.rstrip("/")
            if m.isdir():
                out[name] = ("dir", m.mode)
            elif m.issym():
                out[name] = ("symlink", m.linkname)
            elif m.islnk():
                target = next(x for x in members if x.name == m.linkname)
                assert names.index(m.linkname) < names.index(name), "link before its target"
                f = tf.extractfile(target)
                assert f is not None
                first = min(name, m.linkname)
                out[name] = ("file", target.mode, f.read(), first)
                out[m.linkname] = (*out[m.linkname][:3], first)
            else:
                f = tf.extractfile(m)
                assert f is not None
                out[name] = ("file", m.mode, f.read(), out.get(name, (None,) * 4)[3])
    return out


def test_export_eight_is_the_flattened_filesystem(
    derrick: Callable[..., Ran], seeded_registries: SeededRegistries, tmp_path: Path
) -> None:
    image = seeded_registries.open["test/eight"]
    target = tmp_path / "eight.tar"
    r = derrick("image", "export", image.reference, "-o", str(target))
    assert r.code == 0, r.err
    got = _tar_snapshot(target.read_bytes())
    assert got == expected_snapshot(image.layout.image.expected_rootfs or {})
    with tarfile.open(target) as tf:
        owned = tf.getmember("home/user/owned.txt")
        assert (owned.uid, owned.gid) == (1000, 1000)
        assert all(m.mtime == FIXED_MTIME for m in tf.getmembers())
        assert not any(".wh." in m.name for m in tf.getmembers())
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_export_keeps_a_hard_link_whose_original_was_deleted(
    derrick: Callable[..., Ran], tmp_path: Path
) -> None:
    w = LayoutWriter(tmp_path / "layout")
    layers = [
        w.layer(with_parents([file("a/orig", "shared content\n", 0o640)])),
        w.layer([directory("a"), hardlink("a/one", "a/orig"), hardlink("a/two", "a/orig")]),
        w.layer([directory("a"), whiteout("a/orig")]),
    ]
    img = w.image(layers, AMD64)
    w.finish("links", "v1", img.manifest, img.manifest_bytes, [img])
    target = tmp_path / "out.tar"
    r = derrick("image", "export", str(tmp_path / "layout"), "-o", str(target))
    assert r.code == 0, r.err
    got = _tar_snapshot(target.read_bytes())
    assert got == {
        "a": ("dir", 0o755),
        "a/one": ("file", 0o640, b"shared content\n", "a/one"),
        "a/two": ("file", 0o640, b"shared content\n", "a/one"),
    }
    # and unpack agrees
    dest = tmp_path / "rootfs"
    assert derrick("image", "unpack", str(tmp_path / "layout"), str(dest)).code == 0
    assert snapshot(dest) == got


def test_a_full_disk_under_export_and_unpack_is_named_and_nothing_is_left(
    derrick: Callable[..., Ran], medium: str, small_disk: Path
) -> None:
    # two incompressible 1 MiB layers do not fit on the 1 MiB tmpfs
    out = small_disk / "flat.tar"
    r = derrick("image", "export", medium, "-o", str(out))
    assert r.code == 1
    assert r.err == (
        f"derrick: error: no space left on device writing {out}; nothing is left behind: "
        "make room and try again\n"
    )
    rootfs = small_disk / "rootfs"
    r = derrick("image", "unpack", medium, str(rootfs))
    assert r.code == 1
    assert r.err.startswith(f"derrick: error: no space left on device writing {rootfs} (")
    assert r.err.endswith("; nothing is left behind: make room and try again\n")
    assert list(small_disk.iterdir()) == []

    # a place that cannot be written is named as the user gave it, not a temporary name
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for argv in (["export", medium, "-o", str(out)], ["unpack", medium, str(rootfs)]):
        r = derrick("image", *argv)
        assert (r.code, r.err) == (
            1,
            f"derrick: error: read-only file system writing {argv[-1]}; nothing is left "
            "behind: fix that and try again\n",
        )


def test_export_never_overwrites_a_file_that_is_no_tar(
    derrick: Callable[..., Ran], seeded_registries: SeededRegistries, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    r = derrick("image", "export", seeded_registries.open["test/single"].reference, "-o", notes)
    assert (r.code, r.err) == (
        2,
        f"derrick: error: {notes} exists and is not a tar archive; derrick does not overwrite "
        "it: delete it or name another file\n",
    )
    assert notes.read_text() == "my notes\n"


# -- diff ------------------------------------------------------------------------------------


def test_diff_single_and_eight(
    derrick: Callable[..., Ran], seeded_registries: SeededRegistries
) -> None:
    single = seeded_registries.open["test/single"]
    eight = seeded_registries.open["test/eight"]
    r = derrick("image", "diff", single.reference, eight.reference, "--format", "json")
    assert r.code == 0, r.err
    d = r.json()
    assert d["sharedLayers"] == []
    assert len(d["layersOnlyIn1"]) == 1 and len(d["layersOnlyIn2"]) == 8
    added = {f["path"]: f for f in d["added"]}
    removed = {f["path"]: f for f in d["removed"]}
    changed = {c["path"]: c for c in d["changed"]}
    assert added["bin/tool"]["size"] == len(b"#!/bin/sh\necho tool\n")
    assert added["bin/suid"]["mode"] == "4755"
    assert added["etc/abs-link"] == {
        "path": "etc/abs-link",
        "type": "symlink",
        "size": 0,
        "mode": "0777",
        "uid": 0,
        "gid": 0,
        "target": "/etc/hostname",
    }
    assert "data/removed.txt" not in added  # whited out
    assert "opq/old-a" not in added  # hidden by the opaque directory
    assert set(removed) == {
        "bin/hello",
        "etc/os-release",
        "usr/share/single",
        "usr/share/single/README",
    }
    assert set(changed) == {"etc/hostname"}
    assert changed["etc/hostname"]["changes"] == ["size", "content"]
    assert changed["etc/hostname"]["sizeDelta"] == len("eight-replaced\n") - len("single\n")
    s = d["summary"]
    assert (s["added"], s["removed"], s["changed"]) == (len(added), 4, 1)
    assert s["removedBytes"] == sum(f["size"] for f in d["removed"])
    # text output names the same paths
    r = derrick("image", "diff", single.reference, eight.reference)
    assert r.code == 0
    assert "bin/hello" in r.out and "etc/hostname" in r.out and "1 changed" in r.out


def test_diff_of_images_sharing_a_base_layer(derrick: Callable[..., Ran], tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path / "layout")
    base = w.layer(with_parents([file("etc/base", "base\n"), file("etc/conf", "v1\n")]))
    one = w.layer(with_parents([file("app/one", "1\n"), file("app/both", "x\n")]))
    two = w.layer(
        [
            *with_parents([file("app/two", "22\n"), file("app/both", "y\n", 0o755)]),
            directory("etc"),
            file("etc/conf", "v2\n"),
        ]
    )
    img1 = w.image([base, one], AMD64)
    img2 = w.image([base, two], AMD64)
    w.finish("one", "v1", img1.manifest, img1.manifest_bytes, [img1])
    second = LayoutWriter(tmp_path / "layout2")
    for layer in (base, two):
        second.blob(
            w.path.joinpath("blobs/sha256", layer.descriptor.hex).read_bytes(),
            layer.descriptor.media_type,
        )
    img2 = second.image([base, two], AMD64)
    second.finish("two", "v1", img2.manifest, img2.manifest_bytes, [img2])
    r = derrick(
        "image", "diff", str(tmp_path / "layout"), str(tmp_path / "layout2"), "--format", "json"
    )
    assert r.code == 0, r.err
    d = r.json()
    assert [x["digest"] for x in d["sharedLayers"]] == [base.digest]
    assert [x["digest"] for x in d["layersOnlyIn1"]] == [one.digest]
    assert [x["digest"] for x in d["layersOnlyIn2"]] == [two.digest]
    assert [f["path"] for f in d["added"]] == ["app/two"]
    assert [f["path"] for f in d["removed"]] == ["app/one"]
    changed = {c["path"]: c["changes"] for c in d["changed"]}
    assert changed == {"app/both": ["mode", "content"], "etc/conf": ["content"]}


# -- layers ----------------------------------------------------------------------------------


def test_layers_of_eight(derrick: Callable[..., Ran], seeded_registries: SeededRegistries) -> None:
    image = seeded_registries.open["test/eight"]
    r = derrick("image", "layers", image.reference, "--format", "json", "--top", "2")
    assert r.code == 0, r.err
    layers = r.json()["layers"]
    info = image.layout.image
    assert len(layers) == 8
    assert [x["digest"] for x in layers] == info.layer_digests
    assert [x["size"] for x in layers] == [layer.size for layer in info.layers]
    assert [x["uncompressedSize"] for x in layers] == [
        layer.uncompressed_size for layer in info.layers
    ]
    history = [h for h in info.config_json["history"] if not h.get("empty_layer")]
    assert [x["createdBy"] for x in layers] == [h["created_by"] for h in history]
    # the ENV entry (empty_layer) is skipped: layer 4 is the opaque-directory RUN
    assert layers[3]["createdBy"].startswith("/bin/sh -c RUN rm -rf /opq")
    assert layers[0]["largestFiles"] == [
        {"path": "bin/tool", "size": 20},
        {"path": "data/removed.txt", "size": 14},
    ]
    assert layers[1]["entries"] == 0 and layers[1]["uncompressedSize"] == 1024
    assert layers[2]["whiteouts"] == 1 and layers[3]["whiteouts"] == 1
    r = derrick("image", "layers", image.reference)
    assert r.code == 0
    assert "RUN rm -rf /opq" in r.out and "/bin/tool" in r.out


# -- layers other tools write ----------------------------------------------------------------


def test_layers_without_end_of_archive_blocks_as_umoci_insert_writes_them(
    derrick: Callable[..., Ran], tmp_path: Path
) -> None:
    """umoci 0.4.7 ``insert`` ends its layer tar after the last member's data: no padding
    to a whole block, no end-of-archive blocks.  umoci and ``docker load`` read it; so
    does derrick (a stream that ends inside a member is still refused)."""
    umoci = require("umoci")
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "a.txt").write_text("hello")
    (src / "b").write_text("abc")
    layout = tmp_path / "lay"
    for argv in (
        ["init", "--layout", str(layout)],
        ["new", "--image", f"{layout}:v1"],
        ["insert", "--rootless", "--image", f"{layout}:v1", str(src), "/x"],
    ):
        subprocess.run([umoci, *argv], check=True, capture_output=True)
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    (layer,) = manifest["layers"]
    tar = gzip.decompress((blobs / layer["digest"].split(":")[1]).read_bytes())
    assert len(tar) % 512 != 0 and not tar.endswith(bytes(1024))  # what makes it special

    r = derrick("image", "unpack", f"{layout}:v1", str(tmp_path / "rootfs"))
    assert r.code == 0, r.err
    bundle = tmp_path / "bundle"
    subprocess.run(
        [umoci, "unpack", "--rootless", "--image", f"{layout}:v1", str(bundle)],
        check=True,
        capture_output=True,
    )
    assert snapshot(tmp_path / "rootfs") == snapshot(bundle / "rootfs")
    assert (tmp_path / "rootfs/x/dir/a.txt").read_text() == "hello"

    r = derrick("image", "export", f"{layout}:v1", "-o", str(tmp_path / "flat.tar"))
    assert r.code == 0, r.err
    with tarfile.open(tmp_path / "flat.tar") as tf:
        assert {m.name for m in tf.getmembers()} >= {"x/b", "x/dir/a.txt"}
    r = derrick("image", "layers", f"{layout}:v1", "--format", "json")
    assert r.code == 0, r.err
    assert r.json()["layers"][0]["files"] == 2

    cut = tar[: tar.index(b"hello") + 2]  # a stream that ends inside a member's data
    assert "truncated" in _read_tar_error(cut)


def _read_tar_error(data: bytes) -> str:
    reader = TarReader([data])
    try:
        for _ in reader:
            for _ in reader.data():
                pass
    except LayoutError as e:
        return str(e)
    return ""
