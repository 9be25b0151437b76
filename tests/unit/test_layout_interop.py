"""Interoperability of derrick's layouts and archives with skopeo, umoci and podman.

Each tool is optional: its tests are skipped when it is not installed.  Tools run
with a temporary HOME and never touch the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from derrick.digest import Digest
from derrick.layout.archive import ArchiveImage, write_docker_archive, write_oci_archive
from derrick.layout.oci import OCILayout
from derrick.layout.reader import open_image_source
from derrick.manifest import ImageConfig, ImageManifest, parse_manifest
from support.tools import require

try:
    from .test_layout import BlobFiles, TestImage, make_image, make_index
except ImportError:  # tests/unit is not a package
    from test_layout import BlobFiles, TestImage, make_image, make_index  # type: ignore[no-redef]


NAME = "127.0.0.1:5000/test/single:v1"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    e = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG")}
    e["HOME"] = str(home)
    e["XDG_RUNTIME_DIR"] = str(home)
    e["XDG_CONFIG_HOME"] = str(home / ".config")
    e["TMPDIR"] = str(tmp_path)
    return e


def run(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def skopeo(env: dict[str, str], *args: str) -> str:
    return run([require("skopeo"), "--insecure-policy", *args], env)


def inspect(env: dict[str, str], ref: str, *extra: str) -> Any:
    return json.loads(skopeo(env, "inspect", *extra, ref))


@pytest.fixture
def image() -> TestImage:
    # a repeated layer on purpose: loaders must cope with the same blob twice
    return make_image(
        [
            {"hello.txt": b"hello\n"},
            {"etc/motd": b"welcome\n" * 500},
            {"etc/motd": b"welcome\n" * 500},
        ]
    )


@pytest.fixture
def oci_dir(tmp_path: Path, image: TestImage) -> Path:
    layout = OCILayout.create(tmp_path / "oci")
    for d, data in image.blobs.items():
        layout.write_blob(data, d)
    layout.add_manifest(image.manifest.descriptor(), ref_name="v1", image_name=NAME)
    return layout.root


@pytest.fixture
def oci_archive(tmp_path: Path, image: TestImage) -> Path:
    out = tmp_path / "oci-archive.tar"
    with open(out, "wb") as f:
        write_oci_archive(f, [image.archive_image()], BlobFiles(tmp_path / "dl", image))
    return out


@pytest.fixture
def docker_archive(tmp_path: Path, image: TestImage) -> Path:
    out = tmp_path / "docker-archive.tar"
    with open(out, "wb") as f:
        write_docker_archive(f, [image.archive_image()], BlobFiles(tmp_path / "dl", image))
    return out


def _manifest(raw: str) -> ImageManifest:
    m = parse_manifest(raw.encode())
    assert isinstance(m, ImageManifest)
    return m


def test_skopeo_inspects_oci_layout(env: dict[str, str], oci_dir: Path, image: TestImage) -> None:
    info = inspect(env, f"oci:{oci_dir}:v1")
    assert info["Digest"] == str(image.manifest.digest)
    assert info["Layers"] == [str(d) for d in image.layer_digests]
    assert info["Architecture"] == "amd64"
    raw = skopeo(env, "inspect", "--raw", f"oci:{oci_dir}:v1")
    assert raw.encode() == image.manifest.raw
    config = skopeo(env, "inspect", "--config", "--raw", f"oci:{oci_dir}:v1")
    assert config.encode() == image.config


def test_skopeo_inspects_oci_archive(
    env: dict[str, str], oci_archive: Path, image: TestImage
) -> None:
    for ref in (f"oci-archive:{oci_archive}:v1", f"oci-archive:{oci_archive}"):
        info = inspect(env, ref)
        assert info["Digest"] == str(image.manifest.digest)
        assert info["Layers"] == [str(d) for d in image.layer_digests]


def test_skopeo_reads_docker_archive(
    env: dict[str, str], tmp_path: Path, docker_archive: Path, image: TestImage
) -> None:
    # docker-archive sources describe layers by their uncompressed digests
    for ref in (f"docker-archive:{docker_archive}", f"docker-archive:{docker_archive}:{NAME}"):
        info = inspect(env, ref)
        assert info["Layers"] == [str(d) for d in image.diff_ids]
        assert info["Architecture"] == "amd64"
    config = skopeo(env, "inspect", "--config", "--raw", f"docker-archive:{docker_archive}")
    assert Digest.of(config.encode()) == image.manifest.config.digest

    out = tmp_path / "copied"
    skopeo(env, "copy", f"docker-archive:{docker_archive}", f"oci:{out}:v1")
    with open_image_source(out) as src:
        desc = src.resolve("v1")
        assert desc is not None
        m = _manifest(src.read_blob(desc.digest).decode())
        copied = ImageConfig.parse(src.read_blob(m.config.digest))
        assert list(copied.diff_ids) == image.diff_ids
        assert len(m.layers) == len(image.layers)
        for layer in m.layers:
            with src.open_blob(layer.digest) as f:
                f.read()  # verified


def test_skopeo_reads_docker_archive_as_oci_layout(
    env: dict[str, str], tmp_path: Path, docker_archive: Path, image: TestImage
) -> None:
    """The docker-archive is also an OCI layout (like newer docker save output)."""
    info = inspect(env, f"oci-archive:{docker_archive}:v1")
    assert info["Digest"] == str(image.manifest.digest)
    assert info["Layers"] == [str(d) for d in image.layer_digests]


def test_skopeo_copy_oci_archive_keeps_digests(
    env: dict[str, str], tmp_path: Path, oci_archive: Path, image: TestImage
) -> None:
    out = tmp_path / "copied"
    skopeo(env, "copy", f"oci-archive:{oci_archive}:v1", f"oci:{out}:v1")
    with open_image_source(out) as src:
        desc = src.resolve("v1")
        assert desc is not None
        assert desc.digest == image.manifest.digest


def test_skopeo_copies_multi_platform_oci_archive(env: dict[str, str], tmp_path: Path) -> None:
    amd = make_image([{"a": b"amd64"}], arch="amd64")
    arm = make_image([{"a": b"arm64"}], arch="arm64")
    index = make_index([amd, arm], ["linux/amd64", "linux/arm64/v8"])
    img = ArchiveImage(
        amd.manifest, amd.config, "v1", NAME, (), index, ((arm.manifest, arm.config),)
    )
    archive = tmp_path / "multi.tar"
    with open(archive, "wb") as f:
        write_oci_archive(f, [img], BlobFiles(tmp_path / "dl", amd, arm))
    raw = skopeo(env, "inspect", "--raw", f"oci-archive:{archive}:v1")
    assert raw.encode() == index.raw
    out = tmp_path / "copied"
    skopeo(env, "copy", "--all", f"oci-archive:{archive}:v1", f"oci:{out}:v1")
    with open_image_source(out) as src:
        desc = src.resolve("v1")
        assert desc is not None and desc.digest == index.digest
        for m in (amd, arm):
            assert src.read_blob(m.manifest.digest) == m.manifest.raw


def test_reader_reads_skopeo_outputs(
    env: dict[str, str], tmp_path: Path, oci_dir: Path, image: TestImage
) -> None:
    docker_out = tmp_path / "skopeo-docker.tar"
    skopeo(env, "copy", f"oci:{oci_dir}:v1", f"docker-archive:{docker_out}:test/x:v1")
    with open_image_source(docker_out) as src:
        assert src.kind == "docker-archive"
        assert src.names() == ["docker.io/test/x:v1"]  # skopeo writes normalised names
        entry = src.docker_image("docker.io/test/x:v1")
        cfg = ImageConfig.parse(src.read_file(entry.config_path))
        assert list(cfg.diff_ids) == image.diff_ids
        for path, diff_id in zip(entry.layer_paths, image.diff_ids, strict=True):
            with src.open_file(path) as f:
                assert Digest.of(f.read()) == diff_id
        with tarfile.open(docker_out) as t:
            has_links = any(m.issym() for m in t.getmembers())
        assert has_links  # skopeo writes legacy <id>/layer.tar symlinks; they are accepted

    oci_out = tmp_path / "skopeo-oci.tar"
    skopeo(env, "copy", f"oci:{oci_dir}:v1", f"oci-archive:{oci_out}:v1")
    with open_image_source(oci_out) as src:
        assert src.kind == "oci-archive"
        desc = src.resolve("v1")
        assert desc is not None and desc.digest == image.manifest.digest


def test_umoci_unpacks_oci_layout(env: dict[str, str], tmp_path: Path, oci_dir: Path) -> None:
    bundle = tmp_path / "bundle"
    run([require("umoci"), "unpack", "--rootless", "--image", f"{oci_dir}:v1", str(bundle)], env)
    assert (bundle / "rootfs" / "hello.txt").read_bytes() == b"hello\n"
    assert (bundle / "rootfs" / "etc" / "motd").read_bytes() == b"welcome\n" * 500
    assert json.loads((bundle / "config.json").read_bytes())["process"]["args"] == ["/bin/sh"]


def test_umoci_unpacks_extracted_oci_archive(
    env: dict[str, str], tmp_path: Path, oci_archive: Path
) -> None:
    extracted = tmp_path / "extracted"
    with tarfile.open(oci_archive) as t:
        # the archive is derrick's own; Python before 3.11.4 has no extraction filters
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        t.extractall(extracted, **safe)  # type: ignore[arg-type]
    bundle = tmp_path / "bundle"
    run([require("umoci"), "unpack", "--rootless", "--image", f"{extracted}:v1", str(bundle)], env)
    assert (bundle / "rootfs" / "hello.txt").read_bytes() == b"hello\n"


@pytest.fixture
def podman_root(env: dict[str, str]) -> Iterator[Path]:
    """A short private directory for podman's storage (its runroot must be < 50 chars)."""
    require("podman")
    root = Path(tempfile.mkdtemp(prefix="derrick-podman-", dir="/tmp"))
    try:
        proc = subprocess.run(
            [require("podman"), *_podman_args(root), "info"],
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert proc.returncode == 0, (
            f"podman cannot run: {proc.stderr.decode(errors='replace')[-300:]}"
        )
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _podman_args(root: Path) -> list[str]:
    return [
        "--root",
        str(root / "storage"),
        "--runroot",
        str(root / "run"),
        "--storage-driver",
        "vfs",
        "--events-backend",
        "none",
    ]


@pytest.mark.parametrize("kind", ["docker", "oci"])
def test_podman_loads_archives(
    env: dict[str, str],
    podman_root: Path,
    docker_archive: Path,
    oci_archive: Path,
    image: TestImage,
    kind: str,
) -> None:
    archive = docker_archive if kind == "docker" else oci_archive
    out = run([require("podman"), *_podman_args(podman_root), "load", "-i", str(archive)], env)
    assert NAME in out
    images = json.loads(
        run([require("podman"), *_podman_args(podman_root), "images", "--format", "json"], env)
    )
    assert any(i["Id"] == image.manifest.config.digest.hex for i in images)


def test_docker_archive_tar_is_readable_by_python_tarfile(docker_archive: Path) -> None:
    """Sanity check that does not need any tool: a plain tar with no extensions needed."""
    with tarfile.open(docker_archive) as t:
        members = t.getmembers()
    assert all(m.isfile() or m.isdir() for m in members)
