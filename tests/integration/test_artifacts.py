"""OCI artifacts (a Helm chart, an SBOM with the empty config) in a real registry.

They are not container images: no platform, no filesystem.  derrick pushes, copies and
pulls them to an OCI layout or OCI archive (which skopeo reads back), shows what they are
in ``inspect``, and refuses in one plain line what needs an image: a docker-archive,
unpack, export, layers and diff.  Artifacts are built here as OCI layouts and pushed with
``derrick image push``.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.cli import Cli
from support.images import (
    OCI_MANIFEST,
    LayoutWriter,
    build_tar,
    file,
    gzip_bytes,
    with_parents,
)
from support.images import _skopeo as skopeo
from support.registry import RegistryProcess

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
SBOM_TYPE = "application/vnd.example.sbom.v1"
_BLOB_GET = re.compile(r'"GET /v2/[^ "]+/blobs/(sha256:[0-9a-f]{64}) HTTP')


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Artifact:
    kind: str  #: what derrick should call its type
    config_media_type: str
    manifest: bytes
    blobs: dict[str, bytes]  #: config and layers, by digest
    layers: list[str]
    layout: Path
    tag: str

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


def _write(w: LayoutWriter, tag: str, manifest: dict[str, object]) -> tuple[bytes, str]:
    desc, raw = w.json_blob(manifest, OCI_MANIFEST)
    w.finish(tag, tag, desc, raw, [])
    return raw, desc.digest


def make_helm_chart(path: Path) -> Artifact:
    w = LayoutWriter(path)
    chart = gzip_bytes(
        build_tar(
            with_parents(
                [
                    file("mychart/Chart.yaml", "apiVersion: v2\nname: mychart\nversion: 0.1.0\n"),
                    file("mychart/values.yaml", "replicaCount: 1\n"),
                ]
            )
        )
    )
    config = json.dumps({"apiVersion": "v2", "name": "mychart", "version": "0.1.0"}).encode()
    cdesc = w.blob(config, HELM_CONFIG)
    ldesc = w.blob(chart, HELM_CHART)
    raw, _ = _write(
        w,
        "0.1.0",
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": cdesc.to_json(),
            "layers": [ldesc.to_json()],
        },
    )
    blobs = {cdesc.digest: config, ldesc.digest: chart}
    return Artifact(HELM_CONFIG, HELM_CONFIG, raw, blobs, [ldesc.digest], path, "0.1.0")


def make_sbom(path: Path) -> Artifact:
    w = LayoutWriter(path)
    doc = json.dumps({"spdxVersion": "SPDX-2.3", "name": "example"}).encode()
    cdesc = w.blob(b"{}", OCI_EMPTY)
    ldesc = w.blob(doc, "application/spdx+json")
    raw, _ = _write(
        w,
        "v1",
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SBOM_TYPE,
            "config": cdesc.to_json(),
            "layers": [ldesc.to_json()],
        },
    )
    blobs = {cdesc.digest: b"{}", ldesc.digest: doc}
    return Artifact(SBOM_TYPE, OCI_EMPTY, raw, blobs, [ldesc.digest], path, "v1")


@pytest.fixture(params=["helm", "sbom"])
def artifact(request: pytest.FixtureRequest, tmp_path: Path) -> Artifact:
    make = make_helm_chart if request.param == "helm" else make_sbom
    return make(tmp_path / "artifact-layout")


@pytest.fixture
def pushed(
    cli: Cli, registry_open: RegistryProcess, artifact: Artifact, unique_repo: Callable[..., str]
) -> str:
    ref = f"{registry_open.host}/{unique_repo()}:{artifact.tag}"
    cli("image", "push", f"{artifact.layout}:{artifact.tag}", ref).ok()
    r = cli("manifest", "get", ref, "--format", "raw").ok()
    assert r.stdout == artifact.manifest  # pushed byte for byte
    return ref


# -- what works ------------------------------------------------------------------------------


def test_inspect_says_what_it_is(cli: Cli, artifact: Artifact, pushed: str) -> None:
    text = cli("image", "inspect", pushed).ok().out
    assert f"Artifact:   {artifact.kind}" in text
    assert "not a container image" in text
    assert "Platform" not in text  # no "Platform: /"
    config_digest = next(iter(artifact.blobs))
    assert f"Config:     {config_digest} ({artifact.config_media_type})" in text
    for layer in artifact.layers:
        assert layer in text

    info = json.loads(cli("image", "inspect", pushed, "--format", "json").ok().out)
    assert info["artifactType"] == artifact.kind
    assert info["platform"] is None
    assert info["config"] == {
        "digest": config_digest,
        "size": len(artifact.blobs[config_digest]),
        "mediaType": artifact.config_media_type,
    }
    assert [x["digest"] for x in info["layers"]] == artifact.layers

    text = cli("manifest", "get", pushed).ok().out
    assert f"Artifact:   {artifact.kind} (not a container image)" in text
    raw = cli("image", "config", pushed, "--format", "raw").ok().stdout
    assert raw == artifact.blobs[config_digest]


def _check_skopeo_reads(source: str, artifact: Artifact, tmp_path: Path) -> None:
    """skopeo copies ``source`` to its dir: format: the manifest and every blob, intact."""
    out = tmp_path / "skopeo-dir"
    skopeo(["copy", "--quiet", source, f"dir:{out}"], tmp_path / "skopeo-home")
    assert (out / "manifest.json").read_bytes() == artifact.manifest
    for digest, data in artifact.blobs.items():
        assert (out / digest.split(":", 1)[1]).read_bytes() == data


def test_pull_to_a_layout_and_an_oci_archive(
    cli: Cli, artifact: Artifact, pushed: str, tmp_path: Path
) -> None:
    dest = tmp_path / "pulled"
    cli("image", "pull", pushed, "-o", dest).ok()
    index = json.loads((dest / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [artifact.digest]
    assert "platform" not in index["manifests"][0]
    for digest, data in artifact.blobs.items():
        assert (dest / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes() == data
    _check_skopeo_reads(f"oci:{dest}:{artifact.tag}", artifact, tmp_path / "a")

    archive = tmp_path / "pulled.tar"
    cli("image", "pull", pushed, "-o", archive, "--format", "oci-archive").ok()
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {f"blobs/sha256/{d.split(':', 1)[1]}" for d in artifact.blobs} <= names
    _check_skopeo_reads(f"oci-archive:{archive}:{artifact.tag}", artifact, tmp_path / "b")


def test_copy(cli: Cli, artifact: Artifact, pushed: str, unique_repo: Callable[..., str]) -> None:
    host = pushed.split("/", 1)[0]
    dst = f"{host}/{unique_repo()}:{artifact.tag}"
    cli("image", "copy", pushed, dst).ok()
    assert cli("manifest", "get", dst, "--format", "raw").ok().stdout == artifact.manifest


# -- what needs a container image ------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["image", "pull", "{ref}", "-o", "{out}.tar"],
        ["image", "pull", "{ref}", "-o", "-", "--format", "docker-archive"],
        ["image", "unpack", "{ref}", "{out}"],
        ["image", "export", "{ref}", "-o", "{out}.tar"],
        ["image", "layers", "{ref}"],
        ["image", "diff", "{ref}", "{ref}"],
    ],
    ids=lambda a: " ".join(x for x in a[:3] if not x.startswith("{")),
)
def test_what_needs_an_image_says_so(
    cli: Cli,
    registry_open: RegistryProcess,
    artifact: Artifact,
    pushed: str,
    tmp_path: Path,
    argv: list[str],
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    log = registry_open.log_size()
    line = cli(*(a.format(ref=pushed, out=work / "out") for a in argv)).failed()
    assert f"{pushed} is not a container image but an artifact of type {artifact.kind}" in line
    assert "OCI layout" in line and "oci-archive" in line and "image copy" in line
    assert list(work.iterdir()) == []
    assert not set(artifact.layers) & set(_BLOB_GET.findall(registry_open.log_since(log)))


def test_a_pulled_artifact_layout_is_no_image_either(
    cli: Cli, artifact: Artifact, pushed: str, tmp_path: Path
) -> None:
    dest = tmp_path / "pulled"
    cli("image", "pull", pushed, "-o", dest).ok()
    for argv in (["image", "unpack", dest, tmp_path / "rootfs"], ["image", "layers", dest]):
        line = cli(*argv).failed()
        assert f"{dest} is not a container image but an artifact of type {artifact.kind}" in line
    assert not (tmp_path / "rootfs").exists()


def test_platform_of_an_artifact(cli: Cli, artifact: Artifact, pushed: str, tmp_path: Path) -> None:
    for argv in (
        ["image", "inspect", pushed],
        ["image", "pull", pushed, "-o", tmp_path / "out"],
        ["manifest", "get", pushed],
    ):
        line = cli(*argv, "--platform", "linux/amd64").failed()
        assert "no image for platform linux/amd64" in line
        assert f"artifact of type {artifact.kind}, which has no platform" in line
    assert not (tmp_path / "out").exists()
