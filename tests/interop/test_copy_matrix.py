"""``derrick image copy`` between every pair of {registry, OCI layout, OCI archive,
docker-archive}, in both directions, for a multi-platform index (``multi``), an image of eight
layers (``eight``) and a Docker schema 2 image (``docker``); each output read by a peer tool.

The sources are made once per image (the seeded registry image, and copies of it into a
layout and the two archive kinds); each case copies one source into a fresh destination and
checks that the digest it holds is the one the format can keep:

* between a registry, an OCI layout and an OCI archive, the source's digest, index and all
  (copies to disk are made with ``--all-platforms``; to a registry that is the default);
* anything through a docker-archive, which holds one platform per image: the image manifest
  of this machine's platform, byte for byte (the tar is an OCI layout too, and derrick keeps
  the manifest there).

Every output is then read by skopeo (``inspect --raw`` of the registry, layout or archive,
its sha256 compared; for a docker-archive also the config skopeo reads from
``manifest.json``), every OCI layout of OCI media types is unpacked by umoci, and podman
loads the archives of each image.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from derrick.cli.main import main
from support.cli import Cli, isolate
from support.images import LayoutImage
from support.peers import run
from support.seed import SeededRegistries

SKOPEO = shutil.which("skopeo") or "skopeo"
UMOCI = shutil.which("umoci") or "umoci"
NAMES = ["multi", "eight", "docker"]
KINDS = ["registry", "oci", "oci-archive", "docker-archive"]
PAIRS = [(a, b) for a in KINDS for b in KINDS if a != b]
HOST = "linux/amd64"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Sources:
    """The image ``name`` in each kind of place (made once for the module)."""

    layout: LayoutImage
    registry_host: str
    where: dict[str, str]  # kind -> location as image copy takes it

    def expected(self, src: str, dst: str) -> str:
        """The digest the destination holds: the index, unless a docker-archive was on
        the way (then this machine's image of it)."""
        through_docker = "docker-archive" in (src, dst)
        if self.layout.is_index and through_docker:
            return self.layout.image_for(HOST).digest
        return self.layout.digest


@pytest.fixture(scope="module")
def sources(
    seeded_registries: SeededRegistries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Sources]]:
    work = tmp_path_factory.mktemp("matrix-sources")
    out: dict[str, Sources] = {}
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, work)
        for name in NAMES:
            seeded = seeded_registries.open[f"test/{name}"]
            where = {
                "registry": seeded.reference,
                "oci": f"oci:{work / name / 'layout'}",
                "oci-archive": f"oci-archive:{work / name / 'oci.tar'}",
                "docker-archive": f"docker-archive:{work / name / 'docker.tar'}",
            }
            for kind in KINDS[1:]:
                extra = ["--all-platforms"] if kind != "docker-archive" else []
                argv = ["image", "copy", "-q", seeded.reference, where[kind], *extra]
                assert main(argv) == 0, argv
            out[name] = Sources(seeded.layout, seeded.registry.host, where)
    yield out


def skopeo(env: dict[str, str], *args: str) -> str:
    return run([SKOPEO, "--insecure-policy", *args], env)


def raw_digest(env: dict[str, str], ref: str) -> str:
    """The sha256 of the manifest (or index) skopeo reads at ``ref``."""
    return sha256(skopeo(env, "inspect", "--raw", "--tls-verify=false", ref).encode())


def _destination(kind: str, tmp_path: Path, repo: str) -> str:
    return {
        "registry": repo,
        "oci": f"oci:{tmp_path / 'out-layout'}",
        "oci-archive": f"oci-archive:{tmp_path / 'out.tar'}",
        "docker-archive": f"docker-archive:{tmp_path / 'out.tar'}",
    }[kind]


def _peer_reads(
    env: dict[str, str], kind: str, dest: str, want: str, layout: LayoutImage, tmp_path: Path
) -> None:
    """A peer tool reads ``dest`` and finds the image ``want`` there."""
    info = layout.image_for(HOST) if layout.is_index else layout.image
    if kind == "registry":
        assert raw_digest(env, f"docker://{dest}") == want
    elif kind == "oci":
        # skopeo finds a tag only among entries of OCI media types: read the only entry
        assert raw_digest(env, dest) == want
        image = dest.removeprefix("oci:")
        (entry,) = json.loads(Path(image, "index.json").read_text())["manifests"]
        # umoci reads OCI media types only, and an image (it finds an index's tag ambiguous)
        if entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json":
            bundle = tmp_path / "bundle"
            tag = entry["annotations"]["org.opencontainers.image.ref.name"]
            run([UMOCI, "unpack", "--rootless", "--image", f"{image}:{tag}", str(bundle)], env)
            assert {p.name for p in (bundle / "rootfs").iterdir()} == {
                p.split("/")[0] for p in info.expected_rootfs or {}
            }
    elif kind == "oci-archive":
        assert raw_digest(env, dest) == want
    else:
        path = dest.removeprefix("docker-archive:")
        config = json.loads(skopeo(env, "inspect", "--config", "--raw", f"docker-archive:{path}"))
        assert config == info.config_json
        assert raw_digest(env, f"oci-archive:{path}") == want  # the same tar, as a layout


@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
@pytest.mark.parametrize("name", NAMES)
def test_copy_between_every_pair_of_places(
    cli: Cli,
    sources: dict[str, Sources],
    tool_env: dict[str, str],
    unique_repo: Callable[..., str],
    tmp_path: Path,
    name: str,
    src: str,
    dst: str,
) -> None:
    image = sources[name]
    repo = f"{image.registry_host}/{unique_repo('matrix')}:v1"
    dest = _destination(dst, tmp_path, repo)
    extra = ["--all-platforms"] if dst in ("oci", "oci-archive") else []
    r = cli("image", "copy", image.where[src], dest, "--format", "json", *extra).ok()
    summary: dict[str, Any] = json.loads(r.out)
    want = image.expected(src, dst)
    assert summary["digest"] == want
    _peer_reads(tool_env, dst, dest, want, image.layout, tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_podman_loads_the_copied_archives(
    sources: dict[str, Sources], tool_env: dict[str, str], podman: list[str], name: str
) -> None:
    image = sources[name]
    info = image.layout.image_for(HOST) if image.layout.is_index else image.layout.image
    for kind in ("docker-archive", "oci-archive"):
        path = image.where[kind].split(":", 1)[1]
        run([*podman, "load", "-q", "-i", path], tool_env)
    ids = {i["Id"] for i in json.loads(run([*podman, "images", "--format", "json"], tool_env))}
    assert info.config.hex in ids
