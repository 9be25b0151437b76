"""Every command that reads an image takes any location, as ``image copy`` does.

``image config``, ``image inspect`` and ``manifest get`` read OCI layouts, OCI archives and
docker-archives as well as registries; a word that is both a path here and a reference is
refused before anything is read; layers are numbered from 1 in every command; the platform
shown for an image of an index is its entry's.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import click
import pytest

from derrick.cli.groups import COMMANDS
from support.cli import Cli
from support.dockersave import saved_image, write_docker_save
from support.images import (
    AMD64,
    ARM64,
    LayoutImage,
    LayoutWriter,
    Platform,
    file,
    with_parents,
)
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.seed import SeededRegistries


def field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name!r} line in:\n{text}")


@pytest.fixture
def here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_images: dict[str, LayoutImage]
) -> Path:
    """A working directory holding ``good-oci`` (the single image), ``multi-oci``,
    ``good.tar`` (a legacy docker save of the single image) and ``good-oci.tar`` (an OCI
    archive of it)."""
    work = tmp_path / "here"
    work.mkdir()
    monkeypatch.chdir(work)
    single, multi = test_images["single"], test_images["multi"]
    shutil.copytree(single.path, work / "good-oci")
    shutil.copytree(multi.path, work / "multi-oci")
    write_docker_save(
        work / "good.tar", "legacy", [saved_image(single, single.image, "example/good:1")]
    )
    with tarfile.open(work / "good-oci.tar", "w") as tar:
        for p in sorted((work / "good-oci").rglob("*")):
            tar.add(p, arcname=str(p.relative_to(work / "good-oci")), recursive=False)
    return work


def test_image_config_inspect_and_manifest_get_read_images_on_disk(
    cli: Cli, here: Path, test_images: dict[str, LayoutImage]
) -> None:
    single = test_images["single"]
    info = single.image
    for location in ("good.tar", "docker-archive:good.tar", "./good-oci", "good-oci.tar"):
        assert json.loads(cli("image", "config", location).ok().out) == info.config_json
        assert cli("image", "config", location, "--raw").ok().stdout == info.config_bytes
        doc = json.loads(cli("image", "inspect", location, "--format", "json").ok().out)
        assert doc["reference"] == location
        assert doc["config"]["digest"] == info.config.digest
        assert doc["config"]["diffIds"] == info.diff_ids
        assert len(doc["layers"]) == len(info.layers)  # a docker save holds them uncompressed
    # a layout and an OCI archive keep the manifest byte for byte (a legacy docker save has none)
    for location in ("./good-oci", "oci:good-oci:v1", "oci-archive:good-oci.tar:v1"):
        r = cli("manifest", "get", location, "--format", "raw").ok()
        assert r.stdout == single.top_bytes
        r = cli("manifest", "get", location).ok()
        assert field(r.out, "Name") == location
        assert field(r.out, "Digest") == single.digest

    multi = test_images["multi"]
    arm = multi.image_for("linux/arm64/v8")
    r = cli("manifest", "get", "./multi-oci", "--format", "raw").ok()
    assert r.stdout == multi.top_bytes  # the index
    r = cli("manifest", "get", "./multi-oci", "--platform", "linux/arm64", "--format", "raw")
    assert r.ok().stdout == arm.manifest_bytes
    r = cli("image", "config", "oci:multi-oci", "--platform", "linux/arm64").ok()
    assert json.loads(r.out) == arm.config_json


def test_a_word_that_is_a_path_and_a_reference_is_refused_before_anything_is_read(
    cli: Cli, here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``good-oci:v1`` names the layout here and the Docker Hub repository ``good-oci``: it
    is refused, naming both spellings, and nothing is asked of any registry (a proxy that
    answers nothing would make any request fail otherwise)."""
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for argv in (
        ["image", "diff", "good-oci:v1", "nosuch"],
        ["image", "diff", "./good-oci:v1", "good-oci:v1"],
        ["image", "inspect", "good-oci:v1"],
        ["image", "unpack", "good-oci:v1", "rootfs"],
    ):
        line = cli(*argv).failed()
        assert "'good-oci:v1' is both a path here and an image reference" in line, argv
        assert "./good-oci:v1" in line and "docker://good-oci:v1" in line
    assert not (here / "rootfs").exists()


def test_layers_are_numbered_from_1_in_every_command(
    cli: Cli, seeded: SeededRegistries, test_images: dict[str, LayoutImage]
) -> None:
    eight = seeded.open["test/eight"]
    digests = test_images["eight"].image.layer_digests

    def numbered(text: str) -> dict[int, str]:
        """Table rows ``N  …digest…`` -> the 12-digit short digest they show."""
        rows = {}
        for line in text.splitlines():
            m = re.match(r"^\s*(\d+)\s+(?:sha256:)?([0-9a-f]{12})", line)
            if m:
                rows[int(m.group(1))] = m.group(2)
        return rows

    want = {i: d.split(":")[1][:12] for i, d in enumerate(digests, 1)}
    assert numbered(cli("image", "inspect", eight.reference).ok().out) == want
    assert numbered(cli("image", "layers", eight.reference, "--top", "0").ok().out) == want
    assert numbered(cli("manifest", "get", eight.reference).ok().out) == want


def _entry_v8_config_without_variant(path: Path) -> tuple[LayoutImage, str]:
    """An index whose arm64 entry says ``linux/arm64/v8`` while the image's config names
    no variant (as many published images have it); the arm64 image's digest."""
    w = LayoutWriter(path)
    layer = w.layer(with_parents([file("etc/x", "x\n")]))
    amd = w.image([layer], AMD64)
    arm = w.image([layer], Platform("linux", "arm64"))
    arm = replace(arm, manifest=replace(arm.manifest, platform=ARM64))
    top, top_bytes = w.index([amd, arm])
    return w.finish("variant", "v1", top, top_bytes, [amd, arm]), arm.digest


def test_inspect_shows_the_platform_of_the_index_entry(
    cli: Cli,
    registry_open: RegistryProcess,
    unique_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    layout, arm = _entry_v8_config_without_variant(tmp_path / "layout")
    repo = unique_repo()
    with RawClient(registry_open) as raw:
        raw.push_layout(layout, repo, "v1")
    ref = f"{registry_open.host}/{repo}:v1"
    for image in (ref, f"oci:{layout.path}:v1"):
        r = cli("image", "inspect", image, "--platform", "linux/arm64").ok()
        assert field(r.out, "Manifest") == f"{arm} (linux/arm64/v8)"
        doc = json.loads(
            cli("image", "inspect", image, "--platform", "linux/arm64", "--format", "json").ok().out
        )
        assert (doc["manifestDigest"], doc["platform"]) == (arm, "linux/arm64/v8")
        assert doc["config"]["variant"] is None  # the config says none


# -- --format text|json -------------------------------------------------------------------------

READ_MODULES = ("derrick.cli.read", "derrick.cli.fs")


def _read_commands() -> list[tuple[str, click.Command]]:
    out = []
    for group, commands in COMMANDS.items():
        for name, (module, function, _) in commands.items():
            if module in READ_MODULES:
                command = getattr(importlib.import_module(module), function)
                out.append((f"{group} {name}".strip(), command))
    return out


def test_every_command_that_reads_takes_format_text_and_json() -> None:
    commands = _read_commands()
    assert len(commands) >= 12
    for name, command in commands:
        (fmt,) = [p for p in command.params if isinstance(p, click.Option) and "--format" in p.opts]
        assert isinstance(fmt.type, click.Choice), name
        assert {"text", "json"} <= set(fmt.type.choices), name


def test_json_and_text_of_the_commands_with_data_output(
    cli: Cli, here: Path, seeded: SeededRegistries, test_images: dict[str, LayoutImage]
) -> None:
    single = test_images["single"]
    r = cli("image", "config", "./good-oci", "--format", "text").ok()
    assert field(r.out, "Platform") == "linux/amd64"
    assert field(r.out, "Cmd") == '["/bin/hello"]'
    assert field(r.out, "Config").startswith(single.image.config.digest)

    doc = json.loads(cli("image", "unpack", "./good-oci", "rootfs", "--format", "json").ok().out)
    assert (doc["digest"], doc["layers"], doc["diffIds"]) == (
        single.digest,
        1,
        single.image.diff_ids,
    )
    r = cli("image", "export", "./good-oci", "-o", "flat.tar", "--format", "json").ok()
    doc = json.loads(r.out)
    with tarfile.open("flat.tar") as tar:
        assert doc["entries"] == len(tar.getmembers())
    assert doc["bytes"] == Path("flat.tar").stat().st_size
    line = cli("image", "export", "./good-oci", "-o", "-", "--format", "json").failed()
    assert "-o -" in line and "-o FILE" in line

    img = seeded.open["test/single"]
    repo = f"{img.registry.host}/test/single"
    layer = single.image.layers[0]
    r = cli("blob", "get", repo, layer.digest, "-o", "layer.bin", "--format", "json").ok()
    assert json.loads(r.out) == {"digest": layer.digest, "size": layer.size, "file": "layer.bin"}
    line = cli("blob", "get", repo, layer.digest, "--format", "json").failed()
    assert "-o FILE" in line
