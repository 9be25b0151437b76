"""What the copy engine's archive sinks write, loaded by Docker's own daemon and by podman; and
what ``docker save`` writes, pushed with ``derrick image push``.

A Docker daemon of the session's own (``dockerd``, see :mod:`support.peers`) loads a
docker-archive of two images written as a file and one written as a stream into its
``docker load`` (the image IDs are the config digests, the RepoTags the names the copy gave,
the layers the configs' diff IDs); then ``docker save`` writes them back out (Docker 20.10:
the legacy shape) and derrick pushes that archive to the registry, where the image is the one
Docker had.  podman loads OCI archives and docker-archives written by the engine.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from derrick.images.dockerarchive import DockerArchiveSink
from derrick.images.model import ImageName, Selection
from derrick.images.ociarchive import OCIArchiveSink
from derrick.images.plan import PlanItem
from derrick.images.remote import RegistryRepository
from derrick.manifest import ImageManifest, Platform
from derrick.ops.transfer import copy, copy_many
from derrick.reference import Reference
from derrick.registry import RegistryClient
from support.cli import Cli
from support.images import ImageInfo
from support.peers import Dockerd, run
from support.seed import SeededImage, SeededRegistry
from support.tools import require

AMD64 = Platform("linux", "amd64")


def info_of(image: SeededImage) -> ImageInfo:
    layout = image.layout
    return layout.image_for("linux/amd64") if layout.is_index else layout.image


def items(client: RegistryClient, images: list[SeededImage], prefix: str) -> list[PlanItem]:
    """Copy items of the amd64 image of each, named ``PREFIX/<repo>:t<i>``."""
    return [
        PlanItem(
            RegistryRepository(client, Reference.parse(image.reference)),
            selection=Selection((AMD64,)),
            names=(ImageName(f"{prefix}/{image.repo}", f"t{i}"),),
        )
        for i, image in enumerate(images)
    ]


def docker_image(dockerd: Dockerd, name: str) -> Any:
    (found,) = json.loads(dockerd.docker("image", "inspect", name))
    return found


def test_docker_loads_docker_archives_and_saves_what_derrick_pushes(
    seeded: SeededRegistry,
    dockerd: Dockerd,
    cli: Cli,
    tmp_path: Path,
    unique_repo: Callable[..., str],
) -> None:
    images = [seeded["test/single"], seeded["test/docker"], seeded["test/multi"]]
    with RegistryClient(credentials=lambda _host: None, certs_dir=None) as client:
        out = tmp_path / "two.tar"
        copy_many(items(client, images[:2], "example.test/file"), DockerArchiveSink(out))
        loaded = dockerd.docker("load", "-i", str(out))
        # a stream straight into docker load
        load = subprocess.Popen(
            [require("docker"), "-H", f"unix://{dockerd.sock}", "load"],
            env=dockerd.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert load.stdin is not None and load.stdout is not None and load.stderr is not None
        with load.stdin:
            copy_many(items(client, images, "example.test/stream"), DockerArchiveSink(load.stdin))
        streamed, err = load.stdout.read(), load.stderr.read()
        assert load.wait(timeout=120) == 0, err.decode()
    for prefix, names, said in [
        ("example.test/file", images[:2], loaded),
        ("example.test/stream", images, streamed.decode()),
    ]:
        for i, image in enumerate(names):
            tag = f"{prefix}/{image.repo}:t{i}"
            assert f"Loaded image: {tag}" in said
            found = docker_image(dockerd, tag)
            info = info_of(image)
            assert found["Id"] == info.config.digest
            assert tag in found["RepoTags"]
            assert found["RootFS"]["Layers"] == info.diff_ids

    # docker save of two loaded images, pushed back with derrick: the image Docker had
    saved = tmp_path / "saved.tar"
    tags = [f"example.test/stream/{image.repo}:t{i}" for i, image in enumerate(images[1:], 1)]
    dockerd.docker("save", "-o", str(saved), *tags)
    host = seeded.registry.host
    for tag, image in zip(tags, images[1:], strict=True):
        repo = unique_repo()
        cli("image", "push", "-q", f"{saved}:{tag}", f"{host}/{repo}").ok()
        with RegistryClient(credentials=lambda _host: None, certs_dir=None) as client:
            ref = Reference.parse(f"{host}/{repo}:{tag.rsplit(':', 1)[1]}")
            manifest = client.get_manifest(ref).manifest
        assert isinstance(manifest, ImageManifest)
        info = info_of(image)
        assert str(manifest.config.digest) == info.config.digest
        assert [str(d.digest) for d in manifest.layers] == info.diff_ids  # as Docker saves them


def test_podman_loads_oci_and_docker_archives(
    seeded: SeededRegistry, podman: list[str], tool_env: dict[str, str], tmp_path: Path
) -> None:
    images = [seeded["test/eight"], seeded["test/dockerlist"]]
    with RegistryClient(credentials=lambda _host: None, certs_dir=None) as client:
        for kind, sink in [("oci", OCIArchiveSink), ("docker", DockerArchiveSink)]:
            for i, item in enumerate(items(client, images, f"example.test/{kind}")):
                out = tmp_path / f"{kind}-{i}.tar"
                copy(item.source, sink(out), selection=item.selection, names=item.names)
                said = run([*podman, "load", "-i", str(out)], tool_env)
                assert f"example.test/{kind}/{images[i].repo}:t{i}" in said
    for i, image in enumerate(images):
        info = info_of(image)
        for kind in ("oci", "docker"):
            name = f"example.test/{kind}/{image.repo}:t{i}"
            (found,) = json.loads(run([*podman, "image", "inspect", name], tool_env))
            assert found["Id"] == info.config.hex
            assert found["RootFS"]["Layers"] == info.diff_ids
