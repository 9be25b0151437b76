"""``derrick image pull`` and the copy it runs (:func:`support.transfers.pull`) against a real
registry.

Every seeded image in every output format (OCI layout, OCI archive, docker-archive, standard
output), platform choice, adding to an existing layout, the blob cache, what a failure leaves
behind, and the progress display.  What derrick wrote is checked by reading it back with the
standard library only: JSON files, tar members and sha256 of every blob.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from derrick.cli.progress import BlobProgress
from derrick.digest import Digest
from derrick.errors import PlatformNotFoundError, UsageError
from derrick.images.locations import parse_location
from derrick.images.open import open_sink
from derrick.manifest import Descriptor, Platform
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore
from support.cli import Cli, Isolation, run_subprocess
from support.faultproxy import Fault, FaultProxy
from support.images import (
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    ImageInfo,
    LayoutImage,
    push_with_skopeo,
)
from support.locks import take_turns
from support.registry import RegistryProcess, free_port
from support.seed import SEEDED_NAMES, SeededRegistries, SeededRegistry
from support.transfers import pull

REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"
FORMATS = ("oci", "oci-archive", "docker-archive")
_BLOB_GET = re.compile(r'"GET /v2/[^ "]+/blobs/(sha256:[0-9a-f]{64}) HTTP')
# docker's tag grammar; the name part is checked by parsing it back as a reference
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def seeded(seeded_registries: SeededRegistries) -> SeededRegistry:
    return seeded_registries.open


@pytest.fixture
def reg(seeded: SeededRegistry) -> RegistryProcess:
    return seeded.registry


# -- reading back what was written -----------------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


@dataclass
class Store:
    """The files of an OCI layout (a directory or a tar), by relative path."""

    files: dict[str, bytes]

    @classmethod
    def from_dir(cls, root: Path) -> Store:
        files = {}
        for p in sorted(root.rglob("*")):
            if p.is_file():
                files[p.relative_to(root).as_posix()] = p.read_bytes()
        return cls(files)

    @classmethod
    def from_tar(cls, data: bytes) -> Store:
        files = {}
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar.getmembers():
                assert not m.name.startswith("/") and ".." not in m.name.split("/"), m.name
                if m.isfile():
                    f = tar.extractfile(m)
                    assert f is not None
                    assert m.name not in files, f"duplicate member {m.name}"
                    files[m.name] = f.read()
        return cls(files)

    def json(self, name: str) -> Any:
        return json.loads(self.files[name])

    def blob(self, digest: str) -> bytes:
        data = self.files[f"blobs/{digest.replace(':', '/')}"]
        assert sha256(data) == digest, f"blob {digest} does not match its content"
        return data

    def blob_digests(self) -> set[str]:
        return {
            name[len("blobs/") :].replace("/", ":", 1)
            for name in self.files
            if name.startswith("blobs/")
        }

    def check_blobs(self) -> None:
        """Every blob hashes to its name."""
        for d in self.blob_digests():
            self.blob(d)

    def index_entries(self) -> list[dict[str, Any]]:
        assert json.loads(self.files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
        index = self.json("index.json")
        assert index["schemaVersion"] == 2
        return list(index["manifests"])


def check_image(store: Store, info: ImageInfo) -> None:
    """The image's manifest, config and layers are all in ``store``, byte for byte."""
    assert store.blob(info.digest) == info.manifest_bytes
    assert store.blob(info.config.digest) == info.config_bytes
    for layer in info.layers:
        assert len(store.blob(layer.digest)) == layer.size


def check_oci(
    store: Store,
    layout: LayoutImage,
    ref: str,
    *,
    platform: str | None = None,
    all_platforms: bool = False,
) -> dict[str, Any]:
    """``store`` is an OCI layout naming exactly the pulled image; returns its index entry."""
    store.check_blobs()
    entries = store.index_entries()
    assert len(entries) == 1, entries
    entry = entries[0]
    tag = Reference.parse(ref).tag
    assert entry["annotations"][IMAGE_NAME] == ref
    assert entry["annotations"].get(REF_NAME) == tag
    if all_platforms or not layout.is_index:
        assert entry["digest"] == layout.digest
        assert entry["size"] == len(layout.top_bytes)
        assert store.blob(layout.digest) == layout.top_bytes
        for info in layout.images:
            check_image(store, info)
        expected = {layout.digest} | set(layout.manifest_digests) | set(layout.blob_digests)
    else:
        info = layout.image_for(platform or "linux/amd64")
        assert entry["digest"] == info.digest
        assert entry["mediaType"] == info.media_type
        want_platform = {"os": info.platform.os, "architecture": info.platform.architecture}
        if info.platform.variant:
            want_platform["variant"] = info.platform.variant
        assert entry["platform"] == want_platform
        check_image(store, info)
        expected = {info.digest, *info.blob_digests}
    assert store.blob_digests() == expected
    return entry


def check_docker_archive(
    store: Store, layout: LayoutImage, ref: str, platform: str | None = None
) -> dict[str, Any]:
    """``store`` is a docker-archive of the pulled image; returns its manifest.json item."""
    info = layout.image_for(platform or "linux/amd64") if layout.is_index else layout.image
    store.check_blobs()
    manifest = store.json("manifest.json")
    assert len(manifest) == 1
    item = manifest[0]
    assert item["Config"] == f"blobs/sha256/{info.config.hex}"
    assert item["Layers"] == [f"blobs/sha256/{d.split(':')[1]}" for d in info.layer_digests]
    assert len(item["Layers"]) == len(info.config_json["rootfs"]["diff_ids"])
    assert store.files[item["Config"]] == info.config_bytes
    (repo_tag,) = item["RepoTags"]
    name, _, tag = repo_tag.rpartition(":")
    assert _TAG.match(tag), repo_tag
    assert Reference.parse(repo_tag).name == Reference.parse(ref).name
    repositories = store.json("repositories")
    assert repositories == {name: {tag: info.layer_digests[-1].split(":")[1]}}
    # the same tar is an OCI layout of that one image
    (entry,) = store.index_entries()
    assert entry["digest"] == info.digest
    check_image(store, info)
    return dict(item)


def blob_gets(reg: RegistryProcess, offset: int) -> list[str]:
    """Digests of the blob GETs the registry logged since ``offset``."""
    return _BLOB_GET.findall(reg.log_since(offset))


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def ref_of(seeded: SeededRegistry, name: str) -> str:
    return seeded[f"test/{name}"].reference


# -- every image, every format ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", SEEDED_NAMES)
def test_pull_every_image_in_every_format(
    cli: Cli, seeded: SeededRegistry, tmp_path: Path, name: str, fmt: str
) -> None:
    layout = seeded[f"test/{name}"].layout
    ref = ref_of(seeded, name)
    dest = tmp_path / ("out" if fmt == "oci" else "out.tar")
    r = cli("image", "pull", ref, "-o", dest, "--format", fmt).ok()
    assert r.out == ""
    (summary,) = r.err_lines  # stderr is no terminal: the summary line only
    assert summary.startswith(f"Pulled {ref} (sha256:") and fmt in summary
    store = Store.from_dir(dest) if fmt == "oci" else Store.from_tar(dest.read_bytes())
    if fmt == "docker-archive":
        check_docker_archive(store, layout, ref)
    else:
        check_oci(store, layout, ref)
    assert listing(tmp_path) == sorted(["out" if fmt == "oci" else "out.tar", *_iso_dirs()])


def _iso_dirs() -> list[str]:
    return ["cache", "docker-config", "home"]


def test_format_is_inferred_from_the_destination(
    cli: Cli, seeded: SeededRegistry, tmp_path: Path
) -> None:
    layout = seeded["test/single"].layout
    ref = ref_of(seeded, "single")
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    cli("image", "pull", ref, "-o", empty).ok()
    check_oci(Store.from_dir(empty), layout, ref)
    cli("image", "pull", ref, "-o", tmp_path / "new" / "layout").ok()
    check_oci(Store.from_dir(tmp_path / "new" / "layout"), layout, ref)
    r = cli("image", "pull", ref, "-o", tmp_path / "single.tar", "--json").ok()
    summary = json.loads(r.out)
    assert summary["format"] == "docker-archive"
    assert summary["digest"] == layout.digest
    assert summary["manifests"] == [layout.digest]
    check_docker_archive(Store.from_tar((tmp_path / "single.tar").read_bytes()), layout, ref)

    line = cli("image", "pull", ref, "-o", tmp_path / "x.tar.gz").failed()
    assert "uncompressed" in line
    line = cli("image", "pull", ref, "-o", "-").failed()
    assert "oci-archive:-" in line
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("keep me")
    line = cli("image", "pull", ref, "-o", tmp_path / "junk").failed()
    assert "not empty" in line
    assert listing(tmp_path / "junk") == ["file"]
    assert not list(tmp_path.glob(".*"))


# -- platforms -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "platform"),
    [("multi", "linux/arm64"), ("multi", "linux/amd64"), ("dockerlist", "linux/arm/v7")],
)
def test_platform_choice(
    cli: Cli, seeded: SeededRegistry, tmp_path: Path, name: str, platform: str
) -> None:
    layout = seeded[f"test/{name}"].layout
    ref = ref_of(seeded, name)
    full = next(p for p in layout.platforms if p.startswith(platform))
    cli("image", "pull", ref, "-o", tmp_path / "oci", "--platform", platform).ok()
    check_oci(Store.from_dir(tmp_path / "oci"), layout, ref, platform=full)
    cli("image", "pull", ref, "-o", tmp_path / "d.tar", "--platform", platform).ok()
    check_docker_archive(Store.from_tar((tmp_path / "d.tar").read_bytes()), layout, ref, full)


@pytest.mark.parametrize("name", ["multi", "dockerlist"])
def test_all_platforms_keeps_the_index(
    cli: Cli, seeded: SeededRegistry, tmp_path: Path, name: str
) -> None:
    layout = seeded[f"test/{name}"].layout
    ref = ref_of(seeded, name)
    r = cli("image", "pull", ref, "-o", tmp_path / "oci", "--all-platforms", "--json").ok()
    assert json.loads(r.out)["digest"] == layout.digest
    entry = check_oci(Store.from_dir(tmp_path / "oci"), layout, ref, all_platforms=True)
    assert entry["mediaType"] == (OCI_INDEX if name == "multi" else DOCKER_MANIFEST_LIST)
    assert "platform" not in entry

    out = tmp_path / "all.tar"
    cli("image", "pull", ref, "-o", out, "--format", "oci-archive", "--all-platforms").ok()
    check_oci(Store.from_tar(out.read_bytes()), layout, ref, all_platforms=True)

    line = cli("image", "pull", ref, "-o", tmp_path / "d.tar", "--all-platforms").failed()
    assert "one platform" in line
    assert not (tmp_path / "d.tar").exists()


# -- standard output -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
def test_pull_to_stdout(cli: Cli, seeded: SeededRegistry, fmt: str) -> None:
    layout = seeded["test/eight"].layout
    ref = ref_of(seeded, "eight")
    r = cli("image", "pull", ref, "-o", "-", "--format", fmt).ok()
    assert r.err == ""
    assert len(r.stdout) % 10240 == 0  # whole tar records
    store = Store.from_tar(r.stdout)
    if fmt == "oci-archive":
        check_oci(store, layout, ref)
    else:
        check_docker_archive(store, layout, ref)


def test_stdout_of_a_subprocess_is_the_same_tar(seeded: SeededRegistry, tmp_path: Path) -> None:
    ref = ref_of(seeded, "multi")
    r = run_subprocess("image", "pull", ref, "-o", "-", "--format", "oci-archive", "-q").ok()
    assert r.stderr == b""
    out = tmp_path / "file.tar"
    run_subprocess("image", "pull", ref, "-o", out, "--format", "oci-archive").ok()
    assert r.stdout == out.read_bytes()  # the writers are deterministic


# -- the library call ------------------------------------------------------------------------


def test_library_pull(seeded: SeededRegistry, env: Isolation, tmp_path: Path) -> None:
    layout = seeded["test/multi"].layout
    ref = Reference.parse(ref_of(seeded, "multi"))
    cache = BlobStore(tmp_path / "lib-cache")
    with RegistryClient() as client:
        result = pull(client, ref, tmp_path / "arm", platform=Platform.parse("linux/arm64"))
        info = layout.image_for("linux/arm64/v8")
        assert str(result.digest) == info.digest
        assert [str(p.descriptor.digest) for p in result.images] == [info.digest]
        assert result.images[0].config == info.config_bytes
        # the default cache is DERRICK_CACHE_DIR
        assert (env.cache / "blobs" / "sha256" / info.layers[0].digest.split(":")[1]).exists()
        assert result.stats.copied_bytes == info.config.size + sum(x.size for x in info.layers)

        result = pull(client, ref, tmp_path / "all", all_platforms=True, cache=cache)
        assert str(result.digest) == layout.digest
        assert len(result.images) == 2
        check_oci(Store.from_dir(tmp_path / "all"), layout, str(ref), all_platforms=True)

        # every layer is in that cache now: an archive file takes them from there
        result = pull(
            client, ref, tmp_path / "all.tar", all_platforms=True, cache=cache, format="oci-archive"
        )
        assert result.stats.copied_bytes == 0
        check_oci(
            Store.from_tar((tmp_path / "all.tar").read_bytes()),
            layout,
            str(ref),
            all_platforms=True,
        )

        buf = io.BytesIO()
        result = pull(client, ref, buf, format="docker-archive", cache=cache)
        assert result.stats.copied_bytes == 0  # all in the cache already
        check_docker_archive(Store.from_tar(buf.getvalue()), layout, str(ref))
        # the library writes only where it is told to: a stream location needs its stream
        with pytest.raises(UsageError, match="no stream to write to was given"):
            open_sink(parse_location("docker-archive:-", destination=True))
        assert not Path("-").exists()

        with pytest.raises(PlatformNotFoundError, match="s390x"):
            pull(client, ref, tmp_path / "none", platform=Platform.parse("linux/s390x"))
    assert not (tmp_path / "none").exists()


# -- OCI layout: adding, replacing, reusing --------------------------------------------------


def test_layout_adds_tags_and_reuses_blobs(
    cli: Cli,
    seeded: SeededRegistry,
    reg: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    env: Isolation,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    single = test_images["single"]
    repo = unique_repo()
    push_with_skopeo(single, single.tag, reg, repo, dest_tag="one")
    push_with_skopeo(single, single.tag, reg, repo, dest_tag="two")
    dest = tmp_path / "layout"
    cli("image", "pull", f"{reg.host}/{repo}:one", "-o", dest).ok()

    # A second tag of the same image: nothing to download, even with an empty cache.
    monkeypatch.setenv("DERRICK_CACHE_DIR", str(tmp_path / "other-cache"))
    offset = reg.log_size()
    r = cli("image", "pull", f"{reg.host}/{repo}:two", "-o", dest, "--json").ok()
    assert json.loads(r.out)["downloadedBytes"] == 0
    assert blob_gets(reg, offset) == []
    store = Store.from_dir(dest)
    store.check_blobs()
    entries = store.index_entries()
    assert [(e["annotations"][REF_NAME], e["digest"]) for e in entries] == [
        ("one", single.digest),
        ("two", single.digest),
    ]
    assert entries[1]["annotations"][IMAGE_NAME] == f"{reg.host}/{repo}:two"

    # Another image sharing a layer: only what the layout lacks is downloaded.
    multi = seeded["test/multi"].layout
    arm, amd = multi.image_for("linux/arm64/v8"), multi.image_for("linux/amd64")
    shared = set(arm.layer_digests) & set(amd.layer_digests)
    assert len(shared) == 1
    cli("image", "pull", ref_of(seeded, "multi"), "-o", dest).ok()
    offset = reg.log_size()
    ref = f"{reg.host}/test/multi:v1"
    r = cli("image", "pull", ref, "-o", dest, "--platform", "linux/arm64", "--json").ok()
    got = sorted(blob_gets(reg, offset))
    assert got == sorted([arm.config.digest, *(set(arm.layer_digests) - shared)])
    assert (
        json.loads(r.out)["downloadedBytes"]
        == sum(x.size for x in arm.layers if x.digest not in shared) + arm.config.size
    )

    # Pulling tag v1 again replaced its entry: arm64 now, amd64 gone from the index.
    store = Store.from_dir(dest)
    store.check_blobs()
    entries = store.index_entries()
    assert [(e["annotations"][REF_NAME], e["digest"]) for e in entries] == [
        ("one", single.digest),
        ("two", single.digest),
        ("v1", arm.digest),
    ]
    assert not [p for p in dest.rglob("*") if p.name.startswith(".")]


# -- docker-archive specifics ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["single", "docker"])
def test_docker_archive_of_a_digest_reference(
    cli: Cli, seeded: SeededRegistry, tmp_path: Path, name: str
) -> None:
    image = seeded[f"test/{name}"]
    ref = image.digest_reference
    out = tmp_path / "by-digest.tar"
    cli("image", "pull", ref, "-o", out).ok()
    item = check_docker_archive(Store.from_tar(out.read_bytes()), image.layout, ref)
    (repo_tag,) = item["RepoTags"]
    assert "@" not in repo_tag
    assert repo_tag.startswith(f"{image.registry.host}/test/{name}:")

    cli("image", "pull", ref, "-o", tmp_path / "oci").ok()
    (entry,) = Store.from_dir(tmp_path / "oci").index_entries()
    assert entry["annotations"] == {IMAGE_NAME: ref}


# -- the cache -------------------------------------------------------------------------------


def test_second_pull_comes_from_the_cache(
    cli: Cli, seeded: SeededRegistry, reg: RegistryProcess, env: Isolation, tmp_path: Path
) -> None:
    layout = seeded["test/eight"].layout
    ref = ref_of(seeded, "eight")
    offset = reg.log_size()
    r = cli("image", "pull", ref, "-o", tmp_path / "first", "--json").ok()
    assert json.loads(r.out)["downloadedBytes"] == sum(
        (tmp_path / "first" / "blobs" / "sha256" / d.split(":")[1]).stat().st_size
        for d in layout.image.blob_digests
    )
    assert sorted(blob_gets(reg, offset)) == sorted(layout.image.blob_digests)

    offset = reg.log_size()
    for dest, fmt in [
        ("second", "oci"),
        ("second.tar", "docker-archive"),
        ("3.tar", "oci-archive"),
    ]:
        r = cli("image", "pull", ref, "-o", tmp_path / dest, "--format", fmt, "--json").ok()
        assert json.loads(r.out)["downloadedBytes"] == 0, dest
    buf = cli("image", "pull", ref, "-o", "-", "--format", "oci-archive").ok().stdout
    assert blob_gets(reg, offset) == []
    assert Store.from_dir(tmp_path / "second").files == Store.from_dir(tmp_path / "first").files
    assert buf == (tmp_path / "3.tar").read_bytes()

    # The cache holds verified blobs only, and nothing half-done.
    cached = sorted((env.cache / "blobs" / "sha256").iterdir())
    assert {f"sha256:{p.name}" for p in cached} == set(layout.image.blob_digests)
    for p in cached:
        assert file_sha256(p) == f"sha256:{p.name}"
    # the layout's blobs are copies of the cache's, not links to them
    layer = layout.image.layers[0].descriptor.hex
    in_layout = (tmp_path / "first" / "blobs" / "sha256" / layer).stat()
    assert in_layout.st_ino != (env.cache / "blobs" / "sha256" / layer).stat().st_ino
    assert in_layout.st_nlink == 1


@pytest.mark.parametrize("corrupt", [False, True])
def test_two_pulls_share_one_download(
    seeded: SeededRegistry, tmp_path: Path, corrupt: bool
) -> None:
    """Two pulls (each with its own BlobStore object, as two processes would have) at once.

    The second waits for the first's download of a blob; if that one turns out corrupt
    (and is dropped), the second downloads the blob itself.
    """
    layout = seeded["test/eight"].layout
    victim = layout.image.layers[2]
    cache_root = tmp_path / "shared-cache"
    with FaultProxy(seeded.registry.url) as proxy:
        proxy.add_fault(
            Fault(victim.digest, stall_after=victim.size // 2, flip_at=0 if corrupt else None)
        )
        ref = Reference.parse(f"{proxy.host}/test/eight:v1")
        errors: list[BaseException] = []

        def run(dest: str) -> None:
            try:
                with RegistryClient(credentials=lambda registry: None) as client:
                    pull(client, ref, tmp_path / dest, cache=BlobStore(cache_root))
            except BaseException as e:
                errors.append(e)

        first = threading.Thread(target=run, args=("a",))
        first.start()
        proxy.wait_stalled(1)
        second = threading.Thread(target=run, args=("b",))
        second.start()
        time.sleep(0.5)  # the second pull now waits for the blob's lock
        assert second.is_alive()
        proxy.release()
        first.join(30)
        second.join(30)
        if corrupt:
            assert [type(e).__name__ for e in errors] == ["DigestMismatchError"]
            assert len(proxy.blob_gets(victim.digest)) == 2
            assert not (tmp_path / "a").exists()
        else:
            assert errors == []
            assert len(proxy.blob_gets(victim.digest)) == 1
            assert Store.from_dir(tmp_path / "a").files == Store.from_dir(tmp_path / "b").files
    check_oci(Store.from_dir(tmp_path / "b"), layout, str(ref))
    assert not list((cache_root / "blobs" / "sha256").glob("*.partial"))


def damage(path: Path, offset: int, *, keep_times: bool = False) -> None:
    """Flip one byte of ``path`` in place (the same file), its times put back if asked.

    A change within the same timestamp tick as the file's verification is not seen on
    kernels with coarse file timestamps (a documented limit of :mod:`derrick.store.records`): the
    short pause keeps this test about what derrick promises, on any kernel.
    """
    time.sleep(0.02)
    before = path.stat()
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    if keep_times:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert path.stat().st_ino == before.st_ino
    assert file_sha256(path) != f"sha256:{path.name}"


def downloaded(r: Any) -> int:
    return int(json.loads(r.out)["downloadedBytes"])


def test_damaged_layout_blob_is_not_trusted_or_spread(
    cli: Cli, seeded: SeededRegistry, reg: RegistryProcess, env: Isolation, tmp_path: Path
) -> None:
    layout = seeded["test/eight"].layout
    ref = ref_of(seeded, "eight")
    victim = layout.image.layers[2]
    first = tmp_path / "first"
    in_first = first / "blobs" / "sha256" / victim.descriptor.hex
    cached = env.cache / "blobs" / "sha256" / victim.descriptor.hex
    cli("image", "pull", ref, "-o", first).ok()
    damage(in_first, victim.size // 2)

    # The cache's file is another file: intact, and what the next pulls take.
    assert file_sha256(cached) == victim.digest
    offset = reg.log_size()
    assert downloaded(cli("image", "pull", ref, "-o", tmp_path / "second", "--json").ok()) == 0
    out = tmp_path / "second.tar"
    assert downloaded(cli("image", "pull", ref, "-o", out, "--json").ok()) == 0
    assert blob_gets(reg, offset) == []
    check_oci(Store.from_dir(tmp_path / "second"), layout, ref)
    check_docker_archive(Store.from_tar(out.read_bytes()), layout, ref)

    # Pulling into the damaged layout again mends it, from the cache...
    assert downloaded(cli("image", "pull", ref, "-o", first, "--json").ok()) == 0
    check_oci(Store.from_dir(first), layout, ref)
    assert blob_gets(reg, offset) == []

    # ... or, with an empty cache, from the registry: the damaged blob only.
    damage(in_first, 0)
    other = tmp_path / "other-cache"
    r = cli("image", "pull", ref, "-o", first, "--json", "--cache-dir", other).ok()
    assert downloaded(r) == victim.size
    assert blob_gets(reg, offset) == [victim.digest]
    check_oci(Store.from_dir(first), layout, ref)
    assert file_sha256(other / "blobs" / "sha256" / victim.descriptor.hex) == victim.digest
    assert file_sha256(cached) == victim.digest


@pytest.mark.parametrize("keep_times", [False, True], ids=["in-place", "mtime-restored"])
def test_damaged_cache_blob_is_downloaded_again(
    cli: Cli,
    seeded: SeededRegistry,
    reg: RegistryProcess,
    env: Isolation,
    tmp_path: Path,
    keep_times: bool,
) -> None:
    """A cached blob written to, even with its modification time put back, is not trusted.

    Its record names the change time too, which ``utime`` cannot set back.
    """
    layout = seeded["test/eight"].layout
    ref = ref_of(seeded, "eight")
    victim = layout.image.layers[5]
    cached = env.cache / "blobs" / "sha256" / victim.descriptor.hex
    cli("image", "pull", ref, "-o", tmp_path / "first").ok()

    for dest in ["second", "second.tar"]:
        damage(cached, victim.size // 3, keep_times=keep_times)
        offset = reg.log_size()
        r = cli("image", "pull", ref, "-o", tmp_path / dest, "--json").ok()
        assert downloaded(r) == victim.size, dest
        assert blob_gets(reg, offset) == [victim.digest], dest
        assert file_sha256(cached) == victim.digest  # the cache holds the right bytes again
    check_oci(Store.from_dir(tmp_path / "second"), layout, ref)
    check_docker_archive(Store.from_tar((tmp_path / "second.tar").read_bytes()), layout, ref)
    assert Store.from_dir(tmp_path / "first").files == Store.from_dir(tmp_path / "second").files
    assert not list((env.cache / "blobs" / "sha256").glob("*.partial"))


def test_archive_pulls_fill_the_cache(
    cli: Cli, seeded: SeededRegistry, reg: RegistryProcess, env: Isolation, tmp_path: Path
) -> None:
    layout = seeded["test/eight"].layout
    ref = ref_of(seeded, "eight")
    offset = reg.log_size()
    r = cli("image", "pull", ref, "-o", tmp_path / "a.tar", "--json").ok()
    assert sorted(blob_gets(reg, offset)) == sorted(layout.image.blob_digests)
    assert downloaded(r) == layout.image.config.size + sum(x.size for x in layout.image.layers)

    offset = reg.log_size()
    for dest, fmt in [("b.tar", "docker-archive"), ("c.tar", "oci-archive"), ("d", "oci")]:
        r = cli("image", "pull", ref, "-o", tmp_path / dest, "--format", fmt, "--json").ok()
        assert downloaded(r) == 0, dest
    assert blob_gets(reg, offset) == []
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    check_docker_archive(Store.from_tar((tmp_path / "b.tar").read_bytes()), layout, ref)
    check_oci(Store.from_tar((tmp_path / "c.tar").read_bytes()), layout, ref)
    check_oci(Store.from_dir(tmp_path / "d"), layout, ref)
    cached = sorted((env.cache / "blobs" / "sha256").iterdir())
    assert {f"sha256:{p.name}" for p in cached} == set(layout.image.blob_digests)
    for p in cached:
        assert file_sha256(p) == f"sha256:{p.name}"


@pytest.mark.parametrize(("first", "second"), [("a.tar", "b.tar"), ("a.tar", "b"), ("a", "b.tar")])
def test_two_processes_share_the_cache(
    seeded: SeededRegistry, env: Isolation, tmp_path: Path, first: str, second: str
) -> None:
    """Two derrick processes pulling one image at once, one cache: each blob downloaded once.

    The first stalls in the middle of a layer; the second, once it waits for that layer's
    lock, is let go, and takes the layer from the cache when the first has put it there.
    """
    layout = seeded["test/eight"].layout
    victim = layout.image.layers[4]
    partial = env.cache / "blobs" / "sha256" / f"{victim.descriptor.hex}.partial"
    with FaultProxy(seeded.registry.url) as proxy:
        proxy.add_fault(Fault(victim.digest, stall_after=victim.size // 2))
        ref = f"{proxy.host}/test/eight:v1"

        def start(dest: str) -> subprocess.Popen[bytes]:
            cmd = [sys.executable, "-m", "derrick.cli.main", "image", "pull", ref]
            return subprocess.Popen(
                [*cmd, "-o", str(tmp_path / dest), "-q"],
                env=dict(os.environ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )

        take_turns(lambda: start(first), lambda: start(second), proxy, partial)
        for digest in layout.image.blob_digests:
            assert len(proxy.blob_gets(digest)) == 1, digest
    for dest in (first, second):
        if dest.endswith(".tar"):
            check_docker_archive(Store.from_tar((tmp_path / dest).read_bytes()), layout, ref)
        else:
            check_oci(Store.from_dir(tmp_path / dest), layout, ref)
    cached = sorted((env.cache / "blobs" / "sha256").iterdir())
    assert {f"sha256:{p.name}" for p in cached} == set(layout.image.blob_digests)
    for p in cached:
        assert file_sha256(p) == f"sha256:{p.name}"


# -- failures leave nothing behind -----------------------------------------------------------


def _leftovers(parent: Path, names: list[str]) -> list[str]:
    return sorted(set(listing(parent)) - set(names) - set(_iso_dirs()))


@pytest.mark.parametrize(
    ("case", "args"),
    [
        ("platform", ["--platform", "linux/s390x"]),
        ("tag", []),
        ("unreachable", ["--retries", "0", "--timeout", "5"]),
    ],
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_failure_leaves_no_output(
    cli: Cli, seeded: SeededRegistry, tmp_path: Path, case: str, args: list[str], fmt: str
) -> None:
    ref = {
        "platform": ref_of(seeded, "multi"),
        "tag": f"{seeded.registry.host}/test/single:no-such-tag",
        "unreachable": f"127.0.0.1:{free_port()}/test/single:v1",
    }[case]
    dest = tmp_path / ("out" if fmt == "oci" else "out.tar")
    line = cli("image", "pull", ref, "-o", dest, "--format", fmt, *args).failed()
    assert {"platform": "s390x", "tag": "not found", "unreachable": "127.0.0.1"}[case] in line
    assert _leftovers(tmp_path, []) == []


def test_failure_keeps_an_existing_layout_as_it_was(
    cli: Cli, seeded: SeededRegistry, tmp_path: Path
) -> None:
    dest = tmp_path / "layout"
    cli("image", "pull", ref_of(seeded, "single"), "-o", dest).ok()
    before = Store.from_dir(dest).files
    cli("image", "pull", ref_of(seeded, "multi"), "-o", dest, "--platform", "linux/mips").failed()
    assert Store.from_dir(dest).files == before


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_blob_is_refused(
    cli: Cli, seeded: SeededRegistry, env: Isolation, tmp_path: Path, fmt: str
) -> None:
    layout = seeded["test/eight"].layout
    victim = layout.image.layers[3]
    with FaultProxy(seeded.registry.url) as proxy:
        proxy.add_fault(Fault(victim.digest, flip_at=victim.size // 2, times=None))
        ref = f"{proxy.host}/test/eight:v1"
        dest = tmp_path / ("out" if fmt == "oci" else "out.tar")
        line = cli("image", "pull", ref, "-o", dest, "--format", fmt, "--retries", "1").failed()
        assert victim.digest in line
        assert f"blob {victim.digest} does not match its content" in line
        assert len(proxy.blob_gets(victim.digest)) >= 1
    if fmt == "oci":
        assert _leftovers(tmp_path, []) == []
    else:
        # the documented partial file and its resume state, nothing else
        assert _leftovers(tmp_path, []) == [
            ".out.tar.derrick-partial",
            ".out.tar.derrick-partial.json",
        ]
        state = json.loads((tmp_path / ".out.tar.derrick-partial.json").read_text())
        assert state["done"][victim.digest] == 0  # the bad bytes are not resumed
    cache_dir = env.cache / "blobs" / "sha256"
    assert not (cache_dir / victim.descriptor.hex).exists()
    assert not (cache_dir / f"{victim.descriptor.hex}.partial").exists()
    for p in cache_dir.glob("*.partial"):  # other layers, cancelled: kept to resume
        assert p.stat().st_size > 0

    # Without the fault the same command succeeds, and the leftovers are gone.
    proxy_free = ref_of(seeded, "eight")
    cli("image", "pull", proxy_free, "-o", dest, "--format", fmt).ok()
    assert _leftovers(tmp_path, []) == [dest.name]


# -- progress --------------------------------------------------------------------------------


def test_quiet_and_non_terminal_print_only_the_summary(
    cli: Cli, seeded: SeededRegistry, tmp_path: Path
) -> None:
    ref = ref_of(seeded, "multi")
    r = run_subprocess("image", "pull", ref, "-o", tmp_path / "a.tar").ok()
    assert r.stdout == b""
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith(f"Pulled {ref}")
    r = cli("image", "pull", ref, "-o", tmp_path / "b", "-q").ok()
    assert r.err_lines == [line for line in r.err_lines if line.startswith("Pulled ")]
    assert len(r.err_lines) == 1
    r = cli("image", "pull", ref, "-o", tmp_path / "c", "--json").ok()
    assert r.err == ""
    assert json.loads(r.out)["format"] == "oci"


def test_progress_shows_on_a_terminal(seeded: SeededRegistry, tmp_path: Path) -> None:
    layout = seeded["test/eight"].layout
    ref = ref_of(seeded, "eight")
    cmd = f"{sys.executable} -m derrick.cli.main image pull {ref} -o {tmp_path / 'tty.tar'}"
    out = subprocess.run(
        ["script", "-qefc", cmd, "/dev/null"],
        capture_output=True,
        env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
        timeout=60,
        check=True,
    ).stdout.decode(errors="replace")
    assert "Pulled " in out
    assert Reference.parse(ref).familiar() in out  # the total bar's label
    assert "\u2501" in out  # the bars
    assert re.search(r"[\d.]+/[\d.]+ KiB", out)  # and their byte counts
    check_docker_archive(Store.from_tar((tmp_path / "tty.tar").read_bytes()), layout, ref)

    out = subprocess.run(
        ["script", "-qefc", cmd.replace("tty.tar", "quiet.tar") + " -q", "/dev/null"],
        capture_output=True,
        env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
        timeout=60,
        check=True,
    ).stdout.decode(errors="replace")
    assert [line for line in out.splitlines() if line.strip()] == [
        next(line for line in out.splitlines() if line.startswith("Pulled "))
    ]


def test_blob_progress_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    a = Descriptor("application/x", Digest.of(b"a"), 100)
    b = Descriptor("application/x", Digest.of(b"b"), 50)
    with BlobProgress(0, label="img") as bar:
        bar.planned(150)
        bar.blob_started(a)
        bar.blob_started(a)  # once per blob
        bar.blob_started(b)
        bar.blob_advanced(a, 60)
        bar.blob_advanced(b, 50)
        bar.blob_advanced(a, -20)  # a download that starts over
        bar.blob_advanced(a, 60)
        tasks = {t.description: t for t in bar._progress.tasks}
        shown = {name for name, task in tasks.items() if task.visible}
        assert shown == {"img", a.digest.short, b.digest.short}
        assert tasks["streamed"].completed == 170  # what came, going back or not
        assert tasks["img"].total == 150 and tasks["img"].completed == 150
        assert tasks[a.digest.short].completed == 100
        bar.blob_finished(a)
        bar.blob_finished(b)
        assert not tasks[a.digest.short].visible
        assert tasks["img"].finished
