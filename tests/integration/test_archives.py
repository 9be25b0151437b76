"""OCI archives and docker-archives through the copy engine, against the real registry and
read by skopeo: registry to archive (file and stream), archive to registry, archive to
archive; a killed archive write resumed; a full disk under an archive.

The archive sinks are driven as a library (``derrick.ops.transfer.copy``); ``derrick image
push`` of an archive runs on the same engine and is driven through the CLI.
"""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from derrick.errors import DiskError
from derrick.images.archive import ArchiveSink
from derrick.images.dockerarchive import DockerArchiveSink, DockerArchiveSource, open_archive
from derrick.images.model import ImageName, Selection
from derrick.images.ociarchive import OCIArchiveSink
from derrick.images.plan import PlanItem
from derrick.images.remote import RegistryRepository
from derrick.manifest import Platform
from derrick.ops.transfer import copy, copy_many
from derrick.reference import Reference
from derrick.registry import RegistryClient
from support.cli import Cli
from support.disk import grow
from support.dockersave import SHAPES, Shape, saved_image, write_docker_save
from support.faultproxy import Fault, FaultProxy
from support.images import LayoutImage, _skopeo, make_big_image
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.seed import SeededRegistries

MiB = 1024 * 1024
AMD64 = Platform("linux", "amd64")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(credentials=lambda _host: None, certs_dir=None) as c:
        yield c


def source(client: RegistryClient, ref: str) -> RegistryRepository:
    return RegistryRepository(client, Reference.parse(ref))


def skopeo_json(tmp_path: Path, *args: str) -> Any:
    return json.loads(_skopeo(list(args), tmp_path / "skopeo"))


def skopeo_config(tmp_path: Path, target: str) -> str:
    return sha256(_skopeo(["inspect", "--config", "--raw", target], tmp_path / "skopeo"))


def both_forms(
    sink: Callable[..., ArchiveSink], out: Path, run: Callable[[ArchiveSink], object]
) -> None:
    """Write the archive to the file ``out`` and to a stream: the same bytes."""
    run(sink(out))
    stream = io.BytesIO()
    run(sink(stream))
    assert out.read_bytes() == stream.getvalue()
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # nothing else left


# -- registry to archive ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["single", "multi", "dockerlist"])
def test_registry_to_oci_archive_keeps_every_platform(
    name: str, seeded: SeededRegistries, client: RegistryClient, tmp_path: Path
) -> None:
    image = seeded.open[f"test/{name}"]
    out = tmp_path / "out" / "image.tar"
    (tmp_path / "out").mkdir()
    both_forms(
        OCIArchiveSink,
        out,
        lambda sink: copy(source(client, image.reference), sink, selection=Selection(all=True)),
    )
    # skopeo finds the tag among OCI media types only; the only image needs none
    target = f"oci-archive:{out}" + (":v1" if name != "dockerlist" else "")
    raw = _skopeo(["inspect", "--raw", target], tmp_path / "skopeo")
    assert sha256(raw) == image.digest
    copied = tmp_path / "copied"
    _skopeo(
        ["copy", "--quiet", "--all", "--preserve-digests", target, f"dir:{copied}"],
        tmp_path / "skopeo",
    )
    for digest in image.layout.blob_digests:
        assert file_sha256(copied / digest.split(":")[1]) == digest.split(":")[1]
    # what the archive calls it: the tag, and the full name of where it came from
    with open_archive(out) as back:
        assert back.names() == ["v1"]
        assert back.image_name() == ImageName(f"{image.registry.host}/{image.repo}", "v1")


def test_registry_to_docker_archive_of_several_images(
    seeded: SeededRegistries, client: RegistryClient, tmp_path: Path
) -> None:
    """As ``docker save a b c`` writes it: one manifest.json entry per image, each read back by
    skopeo by its position and by its name."""
    images = [seeded.open["test/single"], seeded.open["test/docker"], seeded.open["test/multi"]]
    items = [
        PlanItem(
            source(client, image.reference),
            selection=Selection((AMD64,)),
            names=(ImageName(f"example.test/{image.repo}", f"t{i}"),),
        )
        for i, image in enumerate(images)
    ]
    out = tmp_path / "out" / "three.tar"
    (tmp_path / "out").mkdir()
    both_forms(DockerArchiveSink, out, lambda sink: copy_many(items, sink))
    for i, image in enumerate(images):
        info = (
            image.layout.image_for("linux/amd64") if image.layout.is_index else image.layout.image
        )
        for target in (
            f"docker-archive:{out}:@{i}",
            f"docker-archive:{out}:example.test/{image.repo}:t{i}",
        ):
            # skopeo names docker-archive layers by their diff IDs (checked on copy)
            got = skopeo_json(tmp_path, "inspect", target)
            assert got["Layers"] == info.diff_ids
            assert skopeo_config(tmp_path, target) == info.config.digest
        copied = tmp_path / f"copied-{i}"
        _skopeo(["copy", "--quiet", target, f"oci:{copied}:x"], tmp_path / "skopeo")
        assert len(json.loads((copied / "index.json").read_text())["manifests"]) == 1
    with open_archive(out) as back:
        assert isinstance(back, DockerArchiveSource)
        assert back.names() == [f"example.test/{image.repo}:t{i}" for i, image in enumerate(images)]


# -- archive to registry ---------------------------------------------------------------------


def test_oci_archive_is_pushed_back_byte_for_byte(
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    client: RegistryClient,
    cli: Cli,
    unique_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    multi = seeded.open["test/multi"]
    out = tmp_path / "multi.tar"
    copy(source(client, multi.reference), OCIArchiveSink(out), selection=Selection(all=True))
    repo = unique_repo()
    summary = json.loads(
        cli("image", "push", "-q", "--format", "json", out, f"{registry_open.host}/{repo}").ok().out
    )
    assert summary["reference"] == f"{registry_open.host}/{repo}:v1"  # the archive's tag
    assert summary["digest"] == multi.digest
    assert summary["manifests"][-1] == multi.digest
    assert summary["uploadedBlobs"] == len(multi.layout.blob_digests)
    with RawClient(registry_open) as raw:
        assert raw.manifest_digest(repo, "v1") == multi.digest
        for img in multi.layout.images:
            assert raw.get_manifest(repo, img.digest).content == img.manifest_bytes
            assert all(raw.blob_exists(repo, d) for d in img.blob_digests)

    # named by its own digest it goes; by another, nothing moves
    other = unique_repo()
    cli("image", "push", "-q", out, f"{registry_open.host}/{other}@{multi.digest}").ok()
    wrong = f"{registry_open.host}/{unique_repo()}@{seeded.open['test/single'].digest}"
    line = cli("image", "push", out, wrong).failed()
    assert f"cannot copy to {wrong}: the image's digest is {multi.digest}" in line
    with RawClient(registry_open) as raw:
        assert raw.get_manifest(other, multi.digest).status_code == 200
        assert not raw.blob_exists(
            wrong.split("/", 1)[1].split("@")[0], multi.layout.blob_digests[0]
        )


# -- archive to archive ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_docker_save_shapes_to_oci_and_docker_archives(
    shape: Shape, test_images: dict[str, LayoutImage], tmp_path: Path
) -> None:
    """Every docker save shape, copied by the engine into the other kind and into its own,
    reads in skopeo as the image it was: the same config, the same layers."""
    eight, single = test_images["eight"], test_images["single"]
    saved = [saved_image(eight, eight.image, "app:v1"), saved_image(single, single.image)]
    archive = write_docker_save(tmp_path / "saved.tar", shape, saved)
    short_id = saved[1].image_id.split(":")[1][:12]
    for image, name in [(saved[0], "app:v1"), (saved[1], short_id)]:
        for kind, sink in [("oci-archive", OCIArchiveSink), ("docker-archive", DockerArchiveSink)]:
            out = tmp_path / f"{kind}-{name.replace(':', '-')}.tar"
            with open_archive(archive.path) as src:
                result = copy(src, sink(out), name=name, names=[ImageName("example.test/x", "y")])
            target = f"{kind}:{out}"
            got = skopeo_json(tmp_path, "inspect", target)
            assert got["Layers"] == image.diff_ids
            assert skopeo_config(tmp_path, target) == image.image_id
            assert str(result.images[0].manifest.config.digest) == image.image_id


# -- a killed write resumes ------------------------------------------------------------------

COPY_TO_ARCHIVE = """
import sys
from derrick.images.dockerarchive import DockerArchiveSink
from derrick.images.remote import RegistryRepository
from derrick.ops.transfer import copy
from derrick.reference import Reference
from derrick.registry import RegistryClient

ref, out = sys.argv[1:3]
with RegistryClient(credentials=lambda _host: None, certs_dir=None) as client:
    copy(RegistryRepository(client, Reference.parse(ref)), DockerArchiveSink(out))
"""


@dataclass
class Big:
    layout: LayoutImage
    proxy: FaultProxy
    clean: str  #: sha256 of the archive written without a fault

    @property
    def ref(self) -> str:
        return f"{self.proxy.host}/archives/big:big"


@pytest.fixture(scope="module")
def big(registry_open: RegistryProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Big]:
    work = tmp_path_factory.mktemp("big")
    layout = make_big_image(work / "layout", layers=2, layer_size=24 * MiB)
    with RawClient(registry_open) as raw:
        raw.push_layout(layout, "archives/big", "big")
    with FaultProxy(registry_open.url) as proxy:
        big = Big(layout, proxy, "")
        with RegistryClient(credentials=lambda _host: None, certs_dir=None) as client:
            copy(source(client, big.ref), DockerArchiveSink(work / "clean.tar"))
        big.clean = file_sha256(work / "clean.tar")
        proxy.clear()
        yield big


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def saved_done(state: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in json.loads(state.read_text())["done"].items()}
    except (OSError, ValueError):
        return {}


def test_a_killed_archive_write_resumes_and_ends_byte_identical(
    big: Big, client: RegistryClient, tmp_path: Path
) -> None:
    proxy = big.proxy
    stall = 20 * MiB + 4321
    layers = big.layout.image.layers
    for x in layers:
        proxy.add_fault(Fault(x.digest, stall_after=stall))
    (tmp_path / "w").mkdir()
    out = tmp_path / "w" / "big.tar"
    state = out.with_name(".big.tar.derrick-partial.json")
    proc = subprocess.Popen(
        [sys.executable, "-c", COPY_TO_ARCHIVE, big.ref, str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        proxy.wait_stalled(len(layers))
        # the state is saved every 32 MiB written: once here, with both layers well begun
        wait_for("the resume state", lambda: sum(saved_done(state).values()) >= 32 * MiB)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proxy.clear()
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in out.parent.iterdir()) == [".big.tar.derrick-partial", state.name]
    done = saved_done(state)
    assert all(0 < done[x.digest] <= stall for x in layers), done

    result = copy(source(client, big.ref), DockerArchiveSink(out))
    for x in layers:  # each asked for from where the state says it stopped, no earlier
        assert proxy.ranges(x.digest) == [f"bytes={done[x.digest]}-"]
    assert result.stats.copied_bytes == sum(x.size - done[x.digest] for x in layers)
    assert sorted(p.name for p in out.parent.iterdir()) == ["big.tar"]
    assert file_sha256(out) == big.clean


# -- a full disk -----------------------------------------------------------------------------


def test_a_full_disk_under_an_archive_names_it_and_what_is_kept(
    medium: str, client: RegistryClient, small_disk: Path
) -> None:
    out = small_disk / "app.tar"
    with pytest.raises(DiskError) as e:
        copy(source(client, medium), OCIArchiveSink(out))
    kept = [".app.tar.derrick-partial", ".app.tar.derrick-partial.json"]
    assert sorted(p.name for p in small_disk.iterdir()) == kept
    assert str(e.value) == (
        f"no space left on device writing {out}; "
        f"{small_disk / kept[0]} (and its .json resume state) is kept: "
        "make room and try again to resume, or delete them"
    )
    grow(small_disk)
    result = copy(source(client, medium), OCIArchiveSink(out))
    assert result.stats.copied_bytes < 2 * MiB  # resumed, not started over
    assert sorted(p.name for p in small_disk.iterdir()) == ["app.tar"]


# -- a truncated archive ---------------------------------------------------------------------


def test_a_truncated_archive_is_named_so_and_nothing_reaches_the_registry(
    cli: Cli,
    medium: str,
    registry_open: RegistryProcess,
    unique_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    whole = tmp_path / "whole.tar"
    cli("image", "pull", "-q", medium, "-o", whole).ok()
    data = whole.read_bytes()
    with tarfile.open(whole) as tar:
        members = tar.getmembers()
    layer = max(members, key=lambda m: m.size)
    last = members[-1]
    cuts = {
        "in a layer": layer.offset_data + layer.size // 2,
        "in a header": last.offset + 100,
    }
    repo = unique_repo()
    offset = registry_open.log_size()
    for where, cut in cuts.items():
        cut_file = tmp_path / f"cut-{cut}.tar"
        cut_file.write_bytes(data[:cut])
        for argv in (
            ["image", "push", str(cut_file), f"{registry_open.host}/{repo}:cut"],
            ["image", "inspect", str(cut_file)],
        ):
            line = cli(*argv).failed()
            assert line.startswith(f"derrick: error: {cut_file} is truncated"), (where, line)
            assert "write or download it again" in line, (where, line)
    # a block that is no header after the last member: damaged, not quietly shorter
    end = last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(data[:end] + b"x" * tarfile.BLOCKSIZE)
    line = cli("image", "push", str(damaged), f"{registry_open.host}/{repo}:cut").failed()
    assert line == (
        f"derrick: error: {damaged} is damaged: what follows its last readable member is "
        "not a tar header; write or download it again"
    )
    # cut between two members: index.json names a manifest the file no longer holds
    first_blob = next(m for m in members if m.isfile() and m.name.startswith("blobs/"))
    short = tmp_path / "short.tar"
    short.write_bytes(data[: first_blob.offset])
    line = cli("image", "push", str(short), f"{registry_open.host}/{repo}:cut").failed()
    hexdigest = first_blob.name.rsplit("/", 1)[1]
    assert line == (
        f"derrick: error: manifest sha256:{hexdigest}, which its index.json names, is missing from "
        f"the archive {short}; the file is incomplete; write or download it again"
    )
    log = registry_open.log_since(offset)
    assert f"/v2/{repo}/" not in log  # refused before anything was sent
