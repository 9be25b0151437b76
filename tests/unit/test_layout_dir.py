"""An OCI layout directory as an image source and sink (derrick.images.layout.LayoutDir),
filled and read by the copy engine from and into in-memory images."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from derrick.errors import DiskError, LayoutError
from derrick.images.layout import LayoutDir
from derrick.images.model import ImageName, Selection
from derrick.layout.oci import OCILayout
from derrick.manifest import Descriptor, Platform
from derrick.ops.transfer import copy
from derrick.store.cache import BlobStore
from support.memory import MemorySink, MemorySource

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"


def entries(path: Path) -> list[dict[str, Any]]:
    return list(json.loads((path / "index.json").read_text())["manifests"])


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def flip(path: Path, offset: int) -> None:
    time.sleep(0.02)  # past the timestamp tick of the file's verification
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def source_with_index() -> tuple[MemorySource, Descriptor, list[Descriptor]]:
    src = MemorySource(chunk_size=256)
    kids = [src.add_image([os.urandom(900), os.urandom(700)], p) for p in (AMD64, ARM64)]
    return src, src.add_index(kids, tag="v1"), kids


def test_a_layout_written_by_a_copy_is_read_back_as_a_source(tmp_path: Path) -> None:
    src, top, _ = source_with_index()
    dest = tmp_path / "layout"
    store = BlobStore(tmp_path / "cache")
    sink = LayoutDir(dest, store=store)
    result = copy(src, sink, name="v1", selection=Selection(all=True), cache=store)
    (entry,) = entries(dest)
    assert entry["digest"] == str(top.digest)
    assert entry["annotations"] == {REF_NAME: "v1", IMAGE_NAME: "memory.example/app:v1"}
    assert hidden(tmp_path) == [] and sink.same_tag == []

    layout = LayoutDir(dest, store=store)
    assert layout.resolve("v1").digest == top.digest
    assert layout.resolve("memory.example/app:v1").digest == top.digest
    assert layout.resolve(str(top.digest)).digest == top.digest
    assert layout.resolve().digest == top.digest  # the only one
    assert layout.names() == ["v1"] and layout.tags() == ("v1",)
    assert layout.image_name() == ImageName("memory.example/app", "v1")
    with pytest.raises(LayoutError, match="no image named 'v2'"):
        layout.resolve("v2")
    layer = result.plan.blobs[-1]
    data = src.blob_data[layer.digest]
    with layout.open_blob(layer, 100) as body:
        assert b"".join(bytes(c) for c in body.chunks()) == data[100:]
    assert layout.local_blob(layer) == dest / "blobs" / "sha256" / layer.digest.hex
    assert LayoutDir(dest).local_blob(layer) is None  # no store: not known intact

    # copied out again whole, digests kept; the layout's files offered to a local sink
    out = MemorySink(local=True, prefers_files=True)
    again = copy(layout, out, selection=Selection(all=True))
    assert again.digest == top.digest and again.stats.linked == len(result.plan.blobs)
    assert all(out.blobs[d.digest] == src.blob_data[d.digest] for d in again.plan.blobs)

    flip(dest / "blobs" / "sha256" / layer.digest.hex, 10)
    assert layout.local_blob(layer) is None  # damaged: not offered


def test_a_layout_missing_a_blob_fails_before_anything_is_copied(tmp_path: Path) -> None:
    src, _, kids = source_with_index()
    dest = tmp_path / "layout"
    result = copy(src, LayoutDir(dest), name="v1", selection=Selection(all=True))
    layer = result.plan.blobs[-1]
    (dest / "blobs" / "sha256" / layer.digest.hex).unlink()
    sink = MemorySink()
    with pytest.raises(LayoutError, match=f"blob {layer.digest} is missing from the OCI layout"):
        copy(LayoutDir(dest), sink, selection=Selection(all=True))
    assert sink.named("put_blob") == []
    # one platform pulled, then the whole index asked for: every manifest is needed
    one = tmp_path / "one"
    copy(src, LayoutDir(one), name="v1", selection=Selection(platforms=(AMD64,)))
    (entry,) = entries(one)
    assert entry["digest"] == str(kids[0].digest)
    assert entry["platform"] == {"os": "linux", "architecture": "amd64"}


class Racing(LayoutDir):
    """A sink that, just before its commit, lets another copy put its layout in place."""

    def __init__(self, path: Path, other: MemorySource, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.other = other

    def commit(self) -> None:
        copy(self.other, LayoutDir(self.path), name="v2")
        super().commit()


def test_a_new_layout_appears_at_commit_and_the_loser_of_a_race_adds_to_the_winner(
    tmp_path: Path,
) -> None:
    a = MemorySource()
    ia = a.add_image([os.urandom(500), os.urandom(600)], AMD64, tag="v1")
    b = MemorySource()
    b.repository = "memory.example/other"
    ib = b.add_image([os.urandom(400)], ARM64, tag="v2")
    dest = tmp_path / "new"
    store = BlobStore(tmp_path / "cache")
    copy(a, Racing(dest, b, store=store), name="v1", cache=store)
    got = {e["annotations"][IMAGE_NAME]: e["digest"] for e in entries(dest)}
    assert got == {
        "memory.example/other:v2": str(ib.digest),
        "memory.example/app:v1": str(ia.digest),
    }
    layout = OCILayout.open(dest)
    for d in layout.iter_blobs():  # every blob of both images, each intact
        assert store.verify_file(
            layout.blob_path(d), Descriptor("x", d, layout.blob_path(d).stat().st_size)
        )
    assert len(list(layout.iter_blobs())) == 2 * 2 + 3
    assert hidden(tmp_path) == []


def test_an_existing_layout_keeps_other_entries_and_mends_a_damaged_blob(tmp_path: Path) -> None:
    src = MemorySource()
    img = src.add_image([os.urandom(3000)], AMD64, tag="v1")
    dest = tmp_path / "layout"
    store = BlobStore(tmp_path / "cache")
    first = copy(src, LayoutDir(dest, store=store), name="v1", cache=store)
    layer = first.plan.blobs[-1]
    flip(dest / "blobs" / "sha256" / layer.digest.hex, 1000)
    src.opens.clear()
    again = copy(src, LayoutDir(dest, store=store), name="v1", names=[ImageName(tag="v2")])
    assert again.stats.copied == 1 and again.stats.skipped == 1  # the layer, from the source
    assert (dest / "blobs" / "sha256" / layer.digest.hex).read_bytes() == src.blob_data[
        layer.digest
    ]
    assert [(e["digest"], e["annotations"]) for e in entries(dest)] == [
        (str(img.digest), {REF_NAME: "v1", IMAGE_NAME: "memory.example/app:v1"}),
        (str(img.digest), {REF_NAME: "v2"}),
    ]
    # by digest: the full name says so, and no tag is set
    copy(src, LayoutDir(dest), name=str(img.digest))
    assert entries(dest)[-1]["annotations"] == {IMAGE_NAME: f"memory.example/app@{img.digest}"}
    assert hidden(dest) == [] and hidden(dest / "blobs" / "sha256") == []


@pytest.mark.parametrize("existing", [False, True])
def test_a_full_disk_names_the_destination_and_what_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    src = MemorySource()
    src.add_image([os.urandom(300)], AMD64, tag="v1")
    dest = tmp_path / "out"
    if existing:
        OCILayout.create(dest)

    def full(*args: object, **kw: object) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(OCILayout, "write_blob", full)
    with pytest.raises(DiskError) as info:
        copy(src, LayoutDir(dest, shown="./out"), name="v1")
    kept = (
        "its index.json is unchanged (blobs copied into it are kept)"
        if existing
        else "the unfinished layout was removed"
    )
    assert str(info.value) == (
        f"no space left on device writing ./out; {kept}: make room and try again"
    )
    assert hidden(tmp_path) == []
    assert entries(dest) == [] if existing else not dest.exists()


def test_a_hidden_directory_is_swept_only_when_its_writer_is_gone(tmp_path: Path) -> None:
    import subprocess
    import sys

    from derrick.images.layoutwrite import OWNER, HiddenDir

    def hidden() -> set[str]:
        return {p.name for p in tmp_path.glob(".app.derrick-tmp-*") if p.is_dir()}

    alive = HiddenDir(tmp_path, ".app")
    (alive.path / "blob").write_bytes(b"being written")
    # a writer that was killed: its directory and its (unlocked) owner file stay
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from derrick.images.layoutwrite import HiddenDir\n"
        "h = HiddenDir(Path(sys.argv[1]), '.app')\n"
        "(h.path / 'blob').write_bytes(b'half')\n"
        "print(h.path, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert killed.returncode == -9, killed.stderr
    dead = Path(killed.stdout.strip())
    # one left without an owner file (not known to be dead) is left alone
    orphan = tmp_path / ".app.derrick-tmp-0000abcd"
    orphan.mkdir()
    assert hidden() == {alive.path.name, dead.name, orphan.name}
    assert Path(f"{dead}{OWNER}").exists()

    third = HiddenDir(tmp_path, ".app")
    assert hidden() == {alive.path.name, orphan.name, third.path.name}
    assert not Path(f"{dead}{OWNER}").exists()
    assert (alive.path / "blob").read_bytes() == b"being written"
    third.remove()
    alive.remove()
    third.remove()  # again: nothing happens
    assert hidden() == {orphan.name}
    assert not list(tmp_path.glob(f"*{OWNER}"))
