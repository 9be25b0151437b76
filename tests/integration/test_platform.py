"""``--platform`` on an image that is not in an index: its config names its platform.

Asking for another platform fails as it does for an index without that platform
(one line, ``no image for platform …``), in every command that takes ``--platform``, before
any layer is fetched or anything is written; asking for the image's own platform works.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from support.cli import Cli
from support.images import LayoutImage
from support.seed import SeededRegistries

_BLOB_GET = re.compile(r'"GET /v2/[^ "]+/blobs/(sha256:[0-9a-f]{64}) HTTP')

# {ref}: the image, {ref2}: a second image (diff), {out}: a path that does not exist yet,
# {dst}: a repository of the same registry to copy to
COMMANDS = {
    "pull layout": ["image", "pull", "{ref}", "-o", "{out}"],
    "pull docker-archive": ["image", "pull", "{ref}", "-o", "{out}.tar"],
    "pull oci-archive": ["image", "pull", "{ref}", "-o", "{out}.tar", "--format", "oci-archive"],
    "copy": ["image", "copy", "{ref}", "{dst}"],
    "inspect": ["image", "inspect", "{ref}"],
    "config": ["image", "config", "{ref}"],
    "manifest get": ["manifest", "get", "{ref}"],
    "unpack": ["image", "unpack", "{ref}", "{out}"],
    "export": ["image", "export", "{ref}", "-o", "{out}.tar"],
    "layers": ["image", "layers", "{ref}"],
    "diff": ["image", "diff", "{ref}", "{ref2}"],
}


def _argv(cmd: str, ref: str, ref2: str, out: Path, dst: str, platform: str) -> list[str]:
    fill = {"ref": ref, "ref2": ref2, "out": str(out), "dst": dst}
    return [a.format(**fill) for a in COMMANDS[cmd]] + ["--platform", platform]


@pytest.mark.parametrize("cmd", list(COMMANDS))
@pytest.mark.parametrize(
    ("image", "have", "want"),
    [("single", "linux/amd64", "linux/arm64"), ("docker", "linux/amd64", "linux/arm/v7")],
)
def test_another_platform_than_the_image_is_refused(
    cli: Cli,
    seeded: SeededRegistries,
    tmp_path: Path,
    cmd: str,
    image: str,
    have: str,
    want: str,
) -> None:
    img = seeded.open[f"test/{image}"]
    host = img.registry.host
    dst = f"{host}/scratch/platform-{image}-{cmd.replace(' ', '-')}:v1"
    work = tmp_path / "work"
    work.mkdir()
    log = img.registry.log_size()
    argv = _argv(cmd, img.reference, f"{host}/test/eight:v1", work / "out", dst, want)
    line = cli(*argv).failed()
    assert f"no image for platform {want}: " in line
    assert f"is a single-platform image for {have}" in line
    assert f"--platform {have}" in line  # what to do
    assert list(work.iterdir()) == []  # nothing written, not even a partial file
    requests = img.registry.log_since(log)
    layers = set(img.layout.layer_digests)
    assert not layers & set(_BLOB_GET.findall(requests))  # no layer was fetched
    assert f"/v2/scratch/platform-{image}" not in requests  # nothing was sent to copy


@pytest.mark.parametrize("cmd", list(COMMANDS))
def test_the_image_platform_is_accepted(
    cli: Cli, seeded: SeededRegistries, tmp_path: Path, cmd: str
) -> None:
    img = seeded.open["test/single"]
    host = img.registry.host
    dst = f"{host}/scratch/platform-ok-{cmd.replace(' ', '-')}:v1"
    # the variant is optional in a request, and arch aliases are understood
    for i, want in enumerate(["linux/amd64", "linux/x86_64"]):
        out = tmp_path / f"out{i}"
        argv = _argv(cmd, img.reference, f"{host}/test/eight:v1", out, dst, want)
        cli(*argv).ok()


def _docker_save(layout: LayoutImage, path: Path) -> None:
    """A ``docker save`` tar without OCI index: config, plain layer tars, manifest.json."""
    img = layout.image
    with tarfile.open(path, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("config.json", img.config_bytes)
        names = []
        for layer in img.layers:
            plain = gzip.decompress(layout.blob_path(layer.digest).read_bytes())
            name = f"{hashlib.sha256(plain).hexdigest()}/layer.tar"
            add(name, plain)
            names.append(name)
        manifest = [{"Config": "config.json", "RepoTags": ["example/x:1"], "Layers": names}]
        add("manifest.json", json.dumps(manifest).encode())


@pytest.mark.parametrize("cmd", ["unpack", "export", "layers"])
def test_local_images_are_checked_too(
    cli: Cli, test_images: dict[str, LayoutImage], tmp_path: Path, cmd: str
) -> None:
    layout = test_images["single"]
    archive = tmp_path / "in" / "saved.tar"
    archive.parent.mkdir()
    _docker_save(layout, archive)
    out = tmp_path / "out"
    for source in (str(layout.path), f"{layout.path}:v1", str(archive)):
        line = cli(*_argv(cmd, source, "", out, "", "linux/arm64")).failed()
        assert f"no image for platform linux/arm64: {source} is a single-platform image" in line
        assert "for linux/amd64" in line
        assert not out.exists() and not Path(f"{out}.tar").exists()
        cli(*_argv(cmd, source, "", out, "", "linux/amd64")).ok()
        for p in (out, Path(f"{out}.tar")):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
