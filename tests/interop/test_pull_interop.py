"""What ``derrick image pull`` writes, read by skopeo, umoci and podman.

The tools are installed by ``scripts/test.sh``; these tests never skip.  Each runs with a
private HOME (and XDG directories) under the test's tmp dir, skopeo with
``--insecure-policy``, podman with its own storage under a short temporary directory (its
runroot path must stay under 50 characters).

skopeo 1.9 finds a tag in an OCI layout only among entries with OCI media types, and umoci
reads OCI media types only; images with Docker media types (kept byte for byte, so their
digests stay the registry's) are read from the layout without a tag by skopeo.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from support.cli import Cli
from support.images import ImageInfo, LayoutImage
from support.peers import run
from support.seed import SeededRegistry

SKOPEO = shutil.which("skopeo") or "skopeo"
UMOCI = shutil.which("umoci") or "umoci"

OCI_NAMES = ["single", "eight", "multi"]
DOCKER_NAMES = ["docker", "dockerlist"]


def skopeo(env: dict[str, str], *args: str) -> str:
    return run([SKOPEO, "--insecure-policy", *args], env)


def inspect(env: dict[str, str], ref: str, *extra: str) -> Any:
    return json.loads(skopeo(env, "inspect", *extra, ref))


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def image_of(layout: LayoutImage, platform: str = "linux/amd64") -> ImageInfo:
    return layout.image_for(platform) if layout.is_index else layout.image


def check_dir_copy(target: Path, info: ImageInfo) -> None:
    """skopeo's ``dir:`` output holds the image's config and layers, each intact."""
    assert (target / "manifest.json").exists()
    for digest in info.blob_digests:
        blob = target / digest.split(":")[1]
        assert sha256_file(blob) == digest


def pull(cli: Cli, seeded: SeededRegistry, name: str, dest: Path, *args: str) -> str:
    ref = seeded[f"test/{name}"].reference
    cli("image", "pull", ref, "-o", dest, *args).ok()
    return ref


# -- OCI layout ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OCI_NAMES)
def test_skopeo_reads_the_oci_layout(
    cli: Cli, seeded: SeededRegistry, tool_env: dict[str, str], tmp_path: Path, name: str
) -> None:
    layout = seeded[f"test/{name}"].layout
    info = image_of(layout)
    dest = tmp_path / "layout"
    pull(cli, seeded, name, dest)
    got = inspect(tool_env, f"oci:{dest}:v1")
    assert got["Digest"] == info.digest
    assert got["Layers"] == info.layer_digests
    assert got["Labels"]["org.example.image"] == name
    config = inspect(tool_env, f"oci:{dest}:v1", "--config", "--raw")
    assert config == info.config_json
    raw = skopeo(tool_env, "inspect", "--raw", f"oci:{dest}:v1")
    assert raw.encode() == info.manifest_bytes
    skopeo(tool_env, "copy", "--quiet", f"oci:{dest}:v1", f"dir:{tmp_path / 'copy'}")
    check_dir_copy(tmp_path / "copy", info)
    assert (tmp_path / "copy" / "manifest.json").read_bytes() == info.manifest_bytes


@pytest.mark.parametrize("name", DOCKER_NAMES)
def test_skopeo_reads_the_oci_layout_of_docker_media_types(
    cli: Cli, seeded: SeededRegistry, tool_env: dict[str, str], tmp_path: Path, name: str
) -> None:
    info = image_of(seeded[f"test/{name}"].layout)
    dest = tmp_path / "layout"
    pull(cli, seeded, name, dest)
    got = inspect(tool_env, f"oci:{dest}")
    assert got["Digest"] == info.digest
    assert got["Layers"] == info.layer_digests
    skopeo(tool_env, "copy", "--quiet", f"oci:{dest}", f"dir:{tmp_path / 'copy'}")
    check_dir_copy(tmp_path / "copy", info)


def test_skopeo_reads_an_all_platforms_layout(
    cli: Cli, seeded: SeededRegistry, tool_env: dict[str, str], tmp_path: Path
) -> None:
    layout = seeded["test/multi"].layout
    dest = tmp_path / "layout"
    pull(cli, seeded, "multi", dest, "--all-platforms")
    raw = skopeo(tool_env, "inspect", "--raw", f"oci:{dest}:v1")
    assert raw.encode() == layout.top_bytes
    for platform, arch in [("linux/amd64", "amd64"), ("linux/arm64/v8", "arm64")]:
        got = inspect(tool_env, f"oci:{dest}:v1", "--override-arch", arch)
        assert got["Digest"] == layout.digest  # skopeo names the index
        assert got["Architecture"] == arch
        assert got["Layers"] == layout.image_for(platform).layer_digests
    copy = tmp_path / "copy"
    skopeo(tool_env, "copy", "--quiet", "--all", f"oci:{dest}:v1", f"dir:{copy}")
    assert (copy / "manifest.json").read_bytes() == layout.top_bytes
    for info in layout.images:
        check_dir_copy(copy, info)


@pytest.mark.parametrize("name", OCI_NAMES)
def test_umoci_unpacks_the_oci_layout(
    cli: Cli, seeded: SeededRegistry, tool_env: dict[str, str], tmp_path: Path, name: str
) -> None:
    info = image_of(seeded[f"test/{name}"].layout)
    dest = tmp_path / "layout"
    pull(cli, seeded, name, dest)
    bundle = tmp_path / "bundle"
    run([UMOCI, "unpack", "--rootless", "--image", f"{dest}:v1", str(bundle)], tool_env)
    rootfs = bundle / "rootfs"
    expected = info.expected_rootfs
    assert expected is not None
    for path, want in expected.items():
        p = rootfs / path
        if want.kind == "symlink":
            assert os.readlink(p) == want.target, path
        elif want.kind == "dir":
            assert p.is_dir() and not p.is_symlink(), path
        else:
            assert p.read_bytes() == want.content, path
            if want.kind == "file" and want.mode is not None:
                assert stat.S_IMODE(p.stat().st_mode) & 0o777 == want.mode & 0o777, path
    # nothing more than expected: whiteouts and opaque directories were applied
    found = {p.relative_to(rootfs).as_posix() for p in rootfs.rglob("*")}
    assert found == set(expected)
    assert json.loads((bundle / "config.json").read_bytes())["root"]["path"] == "rootfs"


# -- docker-archive --------------------------------------------------------------------------


@pytest.mark.parametrize("name", OCI_NAMES + DOCKER_NAMES)
def test_skopeo_reads_the_docker_archive(
    cli: Cli, seeded: SeededRegistry, tool_env: dict[str, str], tmp_path: Path, name: str
) -> None:
    info = image_of(seeded[f"test/{name}"].layout)
    out = tmp_path / "image.tar"
    ref = pull(cli, seeded, name, out)
    archive = f"docker-archive:{out}"
    config = inspect(tool_env, archive, "--config", "--raw")
    assert config == info.config_json
    got = inspect(tool_env, archive)
    # skopeo names docker-archive layers by their uncompressed digests (checked on copy)
    assert got["Layers"] == info.diff_ids
    assert got["RepoTags"] == [] or got["RepoTags"] == [ref.rsplit(":", 1)[1]]
    assert inspect(tool_env, f"{archive}:{ref}", "--config", "--raw") == info.config_json

    oci = tmp_path / "converted"
    skopeo(tool_env, "copy", "--quiet", archive, f"oci:{oci}:v1")
    manifest = json.loads(skopeo(tool_env, "inspect", "--raw", f"oci:{oci}:v1"))
    assert len(manifest["layers"]) == len(info.layers)
    # skopeo may re-serialise the config (so its digest), never change it
    assert inspect(tool_env, f"oci:{oci}:v1", "--config", "--raw") == info.config_json

    # The same tar is an OCI layout too (as newer docker save writes them).
    as_oci = inspect(tool_env, f"oci-archive:{out}")
    assert as_oci["Digest"] == info.digest
    assert as_oci["Layers"] == info.layer_digests


@pytest.mark.parametrize("name", ["single", "multi"])
def test_skopeo_reads_the_oci_archive(
    cli: Cli, seeded: SeededRegistry, tool_env: dict[str, str], tmp_path: Path, name: str
) -> None:
    layout = seeded[f"test/{name}"].layout
    out = tmp_path / "image.tar"
    pull(cli, seeded, name, out, "--format", "oci-archive", "--all-platforms")
    raw = skopeo(tool_env, "inspect", "--raw", f"oci-archive:{out}:v1")
    assert raw.encode() == layout.top_bytes
    got = inspect(tool_env, f"oci-archive:{out}:v1")
    assert got["Digest"] == layout.digest
    assert got["Layers"] == image_of(layout).layer_digests  # the host's platform


# -- podman ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["load", "docker-archive"])
@pytest.mark.parametrize("name", ["single", "docker", "dockerlist"])
def test_podman_loads_the_docker_archive(
    cli: Cli,
    seeded: SeededRegistry,
    tool_env: dict[str, str],
    podman: list[str],
    tmp_path: Path,
    name: str,
    how: str,
) -> None:
    info = image_of(seeded[f"test/{name}"].layout)
    out = tmp_path / "image.tar"
    ref = pull(cli, seeded, name, out)
    if how == "load":  # podman picks the reader (this tar is also an OCI archive)
        loaded = run([*podman, "load", "-i", str(out)], tool_env)
        assert ref in loaded
    else:  # manifest.json and RepoTags, as docker load reads them
        run([*podman, "pull", "-q", f"docker-archive:{out}"], tool_env)
    images = json.loads(run([*podman, "images", "--format", "json"], tool_env))
    (image,) = images
    assert image["Id"] == info.config.hex
    assert ref in image["Names"]
    inspected = json.loads(run([*podman, "image", "inspect", ref], tool_env))
    assert inspected[0]["RootFS"]["Layers"] == info.config_json["rootfs"]["diff_ids"]


def test_podman_reads_the_repo_tag_of_a_digest_pull(
    cli: Cli, seeded: SeededRegistry, tool_env: dict[str, str], podman: list[str], tmp_path: Path
) -> None:
    image = seeded["test/single"]
    out = tmp_path / "image.tar"
    cli("image", "pull", image.digest_reference, "-o", out).ok()
    run([*podman, "pull", "-q", f"docker-archive:{out}"], tool_env)
    (found,) = json.loads(run([*podman, "images", "--format", "json"], tool_env))
    (name,) = found["Names"]
    assert name.startswith(f"{image.registry.host}/{image.repo}:")
    assert found["Id"] == image.layout.image.config.hex
