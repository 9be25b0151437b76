"""``derrick image save A B -o FILE``: several images, from any place, in one archive, loaded
by Docker's own daemon and by podman with every RepoTag.

The images are a registry image, a Docker schema 2 image and an OCI layout on disk (so the
sources differ in kind); the archive is a file, a stream into ``docker load``, and an OCI
archive (``-o oci-archive:FILE``, whose ``index.json`` names each image: podman loads OCI
archives of one image only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from support.cli import Cli
from support.images import LayoutImage
from support.peers import Dockerd, run
from support.seed import SeededRegistry
from support.tools import require


def test_docker_loads_a_save_of_several_images(
    cli: Cli, seeded: SeededRegistry, dockerd: Dockerd, tmp_path: Path
) -> None:
    single, docker = seeded["test/single"], seeded["test/docker"]
    out = tmp_path / "two.tar"
    r = cli("image", "save", single.reference, docker.reference, "-o", out).ok()
    assert r.err.startswith(f"Saved 2 images to {out} as docker-archive")
    loaded = dockerd.docker("load", "-i", str(out))
    # -o - streams the same archive straight into docker load
    save = subprocess.Popen(
        [sys.executable, "-m", "derrick.cli.main", "image", "save", docker.reference, "-o", "-"],
        stdout=subprocess.PIPE,
        env=dict(os.environ),
    )
    load = subprocess.run(
        [require("docker"), "-H", f"unix://{dockerd.sock}", "load"],
        env=dockerd.env,
        stdin=save.stdout,
        capture_output=True,
        timeout=120,
    )
    assert save.wait(timeout=120) == 0 and load.returncode == 0, load.stderr.decode()
    for image in (single, docker):
        assert f"Loaded image: {image.reference}" in loaded
        (found,) = json.loads(dockerd.docker("image", "inspect", image.reference))
        assert found["Id"] == image.layout.image.config.digest
        assert image.reference in found["RepoTags"]
    assert f"Loaded image: {docker.reference}" in load.stdout.decode()


def test_podman_loads_a_save_of_several_images_from_several_places(
    cli: Cli,
    seeded: SeededRegistry,
    test_images: dict[str, LayoutImage],
    podman: list[str],
    tool_env: dict[str, str],
    tmp_path: Path,
) -> None:
    single, docker = seeded["test/single"], seeded["test/docker"]
    eight = tmp_path / "eight"
    # a layout on disk whose image has a full name (the registry's), as a pull names it
    cli("image", "copy", "-q", seeded["test/eight"].reference, f"oci:{eight}").ok()
    names = [single.reference, docker.reference, seeded["test/eight"].reference]
    for fmt, out in [
        ("docker-archive", tmp_path / "images.tar"),
        ("oci-archive", tmp_path / "images.oci.tar"),
    ]:
        dest = str(out) if fmt == "docker-archive" else f"oci-archive:{out}"
        r = cli("image", "save", *names[:2], f"oci:{eight}", "-o", dest, "--format", "json")
        summary = json.loads(r.ok().out)
        assert summary["format"] == fmt
        assert [i["names"] for i in summary["images"]] == [[n] for n in names]
        if fmt == "oci-archive":  # podman loads an OCI archive of one image only
            with tarfile.open(out) as tar:
                member = tar.extractfile("index.json")
                assert member is not None
                index = json.loads(member.read())
            full = [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]]
            assert full == names
            continue
        said = run([*podman, "load", "-i", str(out)], tool_env)
        for name in names:
            assert name in said, said
    images = json.loads(run([*podman, "images", "--format", "json"], tool_env))
    loaded = {n for i in images for n in i.get("Names") or []}
    assert set(names) <= loaded
    for image in (single, docker):
        (found,) = json.loads(run([*podman, "image", "inspect", image.reference], tool_env))
        assert found["Id"] == image.layout.image.config.hex
