"""``derrick image push`` of ``docker save`` archives in every shape Docker has written.

The archives come from :mod:`support.dockersave` (legacy, Docker 25.0.0/25.0.1 and Docker
25.0.2+), each with a tagged image, an untagged one (saved by ID: ``"RepoTags": null``, and
``"manifests": null`` in 25.0.0's ``index.json``) and three images in one tar.  Every image is
pushed through the CLI to the real registry; what arrives is read back with RawClient, with
derrick's own client and with skopeo, and compared with what skopeo reads from the archive
itself: the same config and the same layers, in order.

A destination without a tag takes the image's tag in the source, for docker-archives and OCI
layouts alike; an untagged image needs one given.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from derrick import mediatypes as mt
from derrick.manifest import ImageManifest
from derrick.reference import Reference
from support.cli import Cli
from support.dockersave import SHAPES, DockerSave, SavedImage, Shape, saved_image
from support.dockersave import write_docker_save as write_save
from support.images import LayoutImage, _skopeo
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.seed import derrick_client
from support.transfers import push


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


#: The images of each case: (test image, platform or None, RepoTags).
CASES: dict[str, list[tuple[str, str | None, tuple[str, ...]]]] = {
    "tagged": [("eight", None, ("app:v1",))],
    "untagged": [("single", None, ())],
    "three": [
        ("multi", "linux/amd64", ("multi:amd64",)),
        ("multi", "linux/arm64/v8", ()),  # shares its base layer with the one before
        ("docker", None, ("docker:v1", "example.test/team/docker:v2")),
    ],
}


@pytest.fixture(scope="module")
def archives(
    tmp_path_factory: pytest.TempPathFactory, test_images: dict[str, LayoutImage]
) -> Callable[[Shape, str], DockerSave]:
    root = tmp_path_factory.mktemp("docker-save")
    made: dict[tuple[Shape, str], DockerSave] = {}

    def get(shape: Shape, case: str) -> DockerSave:
        if (shape, case) not in made:
            images = []
            for name, platform, tags in CASES[case]:
                layout = test_images[name]
                info = layout.image_for(platform) if platform else layout.image
                images.append(saved_image(layout, info, *tags))
            made[(shape, case)] = write_save(root / f"{shape}-{case}.tar", shape, images)
        return made[(shape, case)]

    return get


def uses_oci_manifest(image: SavedImage) -> bool:
    """Whether the archive holds an OCI manifest of the image that push can keep: listed in
    index.json, with the config's layers in order."""
    if image.oci_manifest is None or not image.indexed:
        return False
    layers = [d["digest"] for d in json.loads(image.oci_manifest)["layers"]]
    return layers == image.diff_ids


def expected_manifest(image: SavedImage) -> bytes:
    """The manifest the push must leave: the archive's OCI manifest byte for byte when it can,
    else the Docker schema 2 manifest derrick writes of the config and the plain layers."""
    if uses_oci_manifest(image):
        assert image.oci_manifest is not None
        return image.oci_manifest
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {
            "mediaType": mt.DOCKER_CONFIG,
            "size": len(image.config),
            "digest": image.image_id,
        },
        "layers": [
            {"mediaType": mt.DOCKER_LAYER, "size": len(data), "digest": diff_id}
            for data, diff_id in zip(image.layers, image.diff_ids, strict=True)
        ],
    }
    return json.dumps(manifest, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SkopeoView:
    digest: str  # of the manifest (skopeo's own for an archive)
    layers: list[str]
    config: str  # digest of the config


def skopeo_view(target: str, home: Path) -> SkopeoView:
    tls = ["--tls-verify=false"] if target.startswith("docker://") else []
    info = json.loads(_skopeo(["inspect", *tls, target], home))
    config = _skopeo(["inspect", *tls, "--config", "--raw", target], home)
    return SkopeoView(info["Digest"], info["Layers"], sha256(config))


def source_name(archive: DockerSave, image: SavedImage) -> str | None:
    """How the CLI names the image in its archive: not at all when it is the only one, else by
    its last RepoTag, or by its short image ID when it has none."""
    if len(archive.images) == 1:
        return None
    return image.repo_tags[-1] if image.repo_tags else image.image_id.split(":")[1][:12]


# -- every shape, every image ----------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("shape", SHAPES)
def test_push_each_docker_save_shape(
    shape: Shape,
    case: str,
    archives: Callable[[Shape, str], DockerSave],
    registry_open: RegistryProcess,
    unique_repo: Callable[..., str],
    cli: Cli,
    tmp_path: Path,
) -> None:
    archive = archives(shape, case)
    repo = unique_repo()
    for i, image in enumerate(archive.images):
        name = source_name(archive, image)
        src = f"{archive.path}:{name}" if name else str(archive.path)
        # a tagged image keeps its tag (the one it was chosen by); an untagged one is given one
        tag = image.tags[-1] if image.tags else f"given{i}"
        dest = f"{registry_open.host}/{repo}" + ("" if image.tags else f":{tag}")
        summary = json.loads(cli("image", "push", "-q", "--format", "json", src, dest).ok().out)
        ref = f"{registry_open.host}/{repo}:{tag}"
        want = expected_manifest(image)
        assert summary["reference"] == ref
        assert summary["digest"] == sha256(want)

        with RawClient(registry_open) as raw:
            got = raw.get_manifest(repo, tag)
            assert got.status_code == 200 and got.content == want
            assert "latest" not in raw.tags(repo)
        with derrick_client(registry_open) as client:
            manifest = client.get_manifest(Reference.parse(ref)).manifest
        assert isinstance(manifest, ImageManifest)
        assert str(manifest.config.digest) == image.image_id
        assert [str(d.digest) for d in manifest.layers] == image.diff_ids

        pushed = skopeo_view(f"docker://{ref}", tmp_path / "sk")
        assert pushed == SkopeoView(sha256(want), image.diff_ids, image.image_id)
        # skopeo reads the same image out of the archive (by its position when there are several)
        at = f":@{i}" if len(archive.images) > 1 else ""
        local = skopeo_view(f"docker-archive:{archive.path}{at}", tmp_path / "sk")
        assert (local.layers, local.config) == (pushed.layers, pushed.config)


def test_layers_out_of_order_in_a_docker_25_0_0_manifest_are_not_pushed(
    archives: Callable[[Shape, str], DockerSave],
    registry_open: RegistryProcess,
    unique_repo: Callable[..., str],
) -> None:
    """Docker 25.0.0 listed an image's layers in its OCI manifest in random order: pushing
    that manifest would make an image whose layers do not match its config."""
    archive = archives("moby-25.0.0", "tagged")
    [image] = archive.images
    assert image.oci_manifest is not None and image.indexed
    ref = Reference.parse(f"{registry_open.host}/{unique_repo()}:v1")
    with derrick_client(registry_open) as client:
        result = push(client, archive.path, ref)
        manifest = client.get_manifest(ref).manifest
    assert isinstance(manifest, ImageManifest)
    assert [str(d.digest) for d in manifest.layers] == image.diff_ids
    assert str(result.digest) == sha256(expected_manifest(image)) != sha256(image.oci_manifest)
    # named the way index.json names it, the image is still read as manifest.json says
    with derrick_client(registry_open) as client:
        for name in ("v1", "docker.io/library/app:v1"):
            assert push(client, archive.path, ref, name).digest == result.digest


def test_docker_25_archives_hold_what_docker_wrote(
    archives: Callable[[Shape, str], DockerSave],
) -> None:
    """The builders' facts the push tests rely on: null lists where Docker wrote them, and
    which OCI manifests agree with manifest.json."""
    for shape in SHAPES:
        untagged = archives(shape, "untagged")
        assert untagged.manifest_json()[0]["RepoTags"] is None
        assert "repositories" not in untagged.members
    old = archives("moby-25.0.0", "untagged")
    assert not old.images[0].indexed
    assert [uses_oci_manifest(i) for i in archives("moby-25.0.0", "three").images] == [
        False,  # two layers, listed the other way round
        False,  # untagged
        True,  # one layer: no order to get wrong
    ]
    assert [uses_oci_manifest(i) for i in archives("moby-25.0.2", "three").images] == [
        True,
        False,  # untagged, and an earlier image already gave index.json an entry
        True,
    ]
    assert not any(i.oci_manifest for i in archives("legacy", "three").images)


# -- what cannot be pushed without more words ------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_push_docker_save_needs_a_tag_or_a_choice(
    shape: Shape,
    archives: Callable[[Shape, str], DockerSave],
    registry_open: RegistryProcess,
    unique_repo: Callable[..., str],
    cli: Cli,
) -> None:
    repo = unique_repo()
    dest = f"{registry_open.host}/{repo}"
    untagged = archives(shape, "untagged")
    line = cli("image", "push", untagged.path, dest).failed()
    assert f"{untagged.path} is not tagged" in line and f"{dest}:latest" in line

    three = archives(shape, "three")
    line = cli("image", "push", three.path, dest + ":x").failed()
    short_id = three.images[1].image_id.split(":")[1][:12]
    assert "holds 3 images" in line
    assert f"multi:amd64, {short_id} (untagged), docker:v1, example.test/team/docker:v2" in line

    # the image with two tags, chosen by its ID, does not say which tag to take
    image_id = three.images[2].image_id
    line = cli("image", "push", f"{three.path}:{image_id}", dest).failed()
    assert "is tagged v1, v2" in line and "needs the tag" in line

    line = cli("image", "push", f"{three.path}:nope:v1", dest).failed()
    assert "no image tagged 'nope:v1'" in line and f"{short_id} (untagged)" in line
    with RawClient(registry_open) as raw:
        assert raw.request("GET", f"/v2/{repo}/tags/list", repo=repo).status_code == 404


def _rewrite(src: Path, dst: Path, change: Callable[[str, bytes], bytes]) -> None:
    """Copy the tar ``src`` to ``dst`` with each regular file's content passed through
    ``change(name, data)``."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as tout:
        for m in tin:
            f = tin.extractfile(m) if m.isreg() else None
            if f is None:
                tout.addfile(m)
                continue
            data = change(m.name, f.read())
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))


def test_damaged_docker_save_is_refused_before_anything_is_pushed(
    archives: Callable[[Shape, str], DockerSave],
    test_images: dict[str, LayoutImage],
    registry_open: RegistryProcess,
    unique_repo: Callable[..., str],
    cli: Cli,
    tmp_path: Path,
) -> None:
    """An image written from manifest.json alone must be the image its config describes, and a
    file named by its digest must have that digest."""
    repo = unique_repo()
    dest = f"{registry_open.host}/{repo}:v1"
    single = saved_image(test_images["single"], test_images["single"].image)
    other = saved_image(test_images["docker"], test_images["docker"].image)

    # a layer that is not the one the config names (its diff ID)
    wrong_layer = replace(single, layers=other.layers)
    bad = write_save(tmp_path / "wrong-layer.tar", "legacy", [wrong_layer]).path
    line = cli("image", "push", bad, dest).failed()
    assert "layer " in line and f"its config names {single.diff_ids[0]}" in line

    # one layer more in manifest.json than in the config
    extra = replace(single, layers=(*single.layers, *other.layers))
    bad = write_save(tmp_path / "extra-layer.tar", "legacy", [extra]).path
    line = cli("image", "push", bad, dest).failed()
    assert "has 2 layers in manifest.json but its config lists 1" in line

    # a Docker 25.0.0 blob whose content is not what its name says (the image is untagged, so
    # it is read from manifest.json)
    layer_blob = "blobs/sha256/" + single.diff_ids[0].split(":")[1]
    bad = tmp_path / "renamed.tar"
    _rewrite(
        archives("moby-25.0.0", "untagged").path,
        bad,
        lambda name, data: other.layers[0] if name == layer_blob else data,
    )
    line = cli("image", "push", bad, dest).failed()
    assert f"{layer_blob} in the archive {bad} does not match its name" in line
    with RawClient(registry_open) as raw:
        assert raw.request("GET", f"/v2/{repo}/tags/list", repo=repo).status_code == 404
        assert not any(raw.blob_exists(repo, d) for d in [*single.diff_ids, single.image_id])


# -- OCI layouts keep their tag too ----------------------------------------------------------


def test_push_to_a_repository_keeps_the_layout_tag(
    test_images: dict[str, LayoutImage],
    registry_open: RegistryProcess,
    unique_repo: Callable[..., str],
    cli: Cli,
    tmp_path: Path,
) -> None:
    single = test_images["single"]
    layout = tmp_path / "layout"
    shutil.copytree(single.path, layout)
    entry = {"mediaType": single.media_type, "digest": single.digest, "size": single.top.size}
    names = [
        {"org.opencontainers.image.ref.name": "t1"},
        {"org.opencontainers.image.ref.name": "t2"},
        {"io.containerd.image.name": "example.test/app:t3"},
    ]
    index = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [dict(entry, annotations=a) for a in names],
    }
    (layout / "index.json").write_text(json.dumps(index))
    repo = unique_repo()
    dest = f"{registry_open.host}/{repo}"

    out = cli("image", "push", "-q", "--format", "json", f"{layout}:t2", dest).ok().out
    assert json.loads(out)["reference"] == f"{dest}:t2"
    err = cli("image", "push", f"oci:{layout}:example.test/app:t3", dest).ok().err
    assert err.startswith(f"Pushed {layout} to {dest}:t3 ({single.digest})")
    cli("image", "push", "-q", single.path, dest).ok()  # its only image is named v1
    with RawClient(registry_open) as raw:
        assert sorted(raw.tags(repo)) == ["t2", "t3", "v1"]
        assert raw.manifest_digest(repo, "t2") == single.digest

    # an unnamed entry, as skopeo writes one, has no tag to give
    index["manifests"] = [entry]
    (layout / "index.json").write_text(json.dumps(index))
    line = cli("image", "push", layout, dest).failed()
    assert f"{layout} is not tagged, so {dest} needs a tag" in line
    cli("image", "push", "-q", layout, f"{dest}:named").ok()
    with RawClient(registry_open) as raw:
        assert sorted(raw.tags(repo)) == ["named", "t2", "t3", "v1"]
