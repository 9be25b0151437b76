"""derrick image push against the real registry (open, basic and token modes).

Every generated image is pushed from every source format -- its OCI layout, an OCI archive
and a docker-archive written by derrick's layout writers, and a legacy ``docker save`` archive
built here -- then read back with derrick's pull, with RawClient and with skopeo, and the
manifest and blob digests are compared with the source's.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from derrick import mediatypes as mt
from derrick.auth.credentials import Credential
from derrick.digest import Digest
from derrick.errors import DeniedError, LayoutError
from derrick.layout.archive import ArchiveImage, write_docker_archive, write_oci_archive
from derrick.layout.oci import OCILayout
from derrick.manifest import ImageManifest, Index, parse_manifest
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore
from support.images import ImageInfo, LayoutImage, _skopeo, _tls_args
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.seed import SEEDED_NAMES, SeededRegistries, derrick_client
from support.transfers import pull, push

FORMATS = ("oci", "oci-archive", "docker-archive", "docker-save")
HOST_PLATFORM = "linux/amd64"  # every multi-platform test image has it


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- sources ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What a push of a source must produce in the registry."""

    digest: str  # the tag's manifest or index
    manifests: dict[str, bytes]  # every manifest (children and top) by digest
    blobs: list[str]  # every config and layer digest
    media_type: str


def _platform_image(layout: LayoutImage) -> ImageInfo:
    return layout.image_for(HOST_PLATFORM) if layout.is_index else layout.image


def _archive_image(layout: LayoutImage, *, whole: bool) -> ArchiveImage:
    if whole and layout.is_index:
        index = parse_manifest(layout.top_bytes)
        assert isinstance(index, Index)
        first, *rest = layout.images
        return ArchiveImage(
            manifest=_image_manifest(first.manifest_bytes),
            config=first.config_bytes,
            ref_name="v1",
            image_name=f"example.test/{layout.name}:v1",
            index=index,
            children=tuple((_image_manifest(i.manifest_bytes), i.config_bytes) for i in rest),
        )
    img = _platform_image(layout)
    return ArchiveImage(
        manifest=_image_manifest(img.manifest_bytes),
        config=img.config_bytes,
        ref_name="v1",
        image_name=f"example.test/{layout.name}:v1",
        repo_tags=(f"example.test/{layout.name}:v1",),
    )


def _image_manifest(raw: bytes) -> ImageManifest:
    m = parse_manifest(raw)
    assert isinstance(m, ImageManifest)
    return m


def _blob_file(layout: LayoutImage) -> Callable[[Digest], Path]:
    return lambda d: layout.blob_path(str(d))


def write_docker_save(layout: LayoutImage, path: Path) -> Expected:
    """A legacy ``docker save`` tar: ``<id>/layer.tar`` (uncompressed), ``<hex>.json``,
    ``manifest.json`` and ``repositories``; no OCI index.  Returns what a push must make
    of it: a Docker schema 2 manifest of the config as is and the plain tar layers."""
    img = _platform_image(layout)
    layers: list[tuple[str, bytes]] = []
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1704067200
            tar.addfile(info, io.BytesIO(data))

        config_name = f"{img.config.hex}.json"
        add(config_name, img.config_bytes)
        parent = ""
        for layer in img.layers:
            raw = layout.blob_path(layer.digest).read_bytes()
            plain = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
            assert sha256(plain) == layer.diff_id
            layer_id = hashlib.sha256(f"{parent}\n{layer.diff_id}".encode()).hexdigest()
            add(f"{layer_id}/VERSION", b"1.0")
            add(f"{layer_id}/json", json.dumps({"id": layer_id, "parent": parent}).encode())
            add(f"{layer_id}/layer.tar", plain)
            layers.append((f"{layer_id}/layer.tar", plain))
            parent = layer_id
        tag = f"example.test/{layout.name}:v1"
        manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [p for p, _ in layers]}]
        add("manifest.json", json.dumps(manifest).encode())
        add("repositories", json.dumps({tag.rsplit(":", 1)[0]: {"v1": parent}}).encode())
    raw_manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.DOCKER_MANIFEST,
            "config": {
                "mediaType": mt.DOCKER_CONFIG,
                "size": img.config.size,
                "digest": img.config.digest,
            },
            "layers": [
                {"mediaType": mt.DOCKER_LAYER, "size": len(data), "digest": sha256(data)}
                for _, data in layers
            ],
        },
        separators=(",", ":"),
    ).encode()
    return Expected(
        digest=sha256(raw_manifest),
        manifests={sha256(raw_manifest): raw_manifest},
        blobs=[img.config.digest, *dict.fromkeys(sha256(d) for _, d in layers)],
        media_type=mt.DOCKER_MANIFEST,
    )


def expected_whole(layout: LayoutImage) -> Expected:
    manifests = {i.digest: i.manifest_bytes for i in layout.images}
    manifests[layout.digest] = layout.top_bytes
    return Expected(layout.digest, manifests, layout.blob_digests, layout.media_type)


def expected_platform(layout: LayoutImage) -> Expected:
    img = _platform_image(layout)
    return Expected(img.digest, {img.digest: img.manifest_bytes}, img.blob_digests, img.media_type)


@pytest.fixture(scope="module")
def sources(
    tmp_path_factory: pytest.TempPathFactory, test_images: dict[str, LayoutImage]
) -> dict[tuple[str, str], tuple[Path, Expected]]:
    """(image, format) -> (source path, what pushing it must produce)."""
    root = tmp_path_factory.mktemp("push-sources")
    out: dict[tuple[str, str], tuple[Path, Expected]] = {}
    for name, layout in test_images.items():
        out[(name, "oci")] = (layout.path, expected_whole(layout))
        oci_tar = root / f"{name}.oci.tar"
        with oci_tar.open("wb") as f:
            write_oci_archive(f, [_archive_image(layout, whole=True)], _blob_file(layout))
        out[(name, "oci-archive")] = (oci_tar, expected_whole(layout))
        docker_tar = root / f"{name}.docker.tar"
        with docker_tar.open("wb") as f:
            write_docker_archive(f, [_archive_image(layout, whole=False)], _blob_file(layout))
        out[(name, "docker-archive")] = (docker_tar, expected_platform(layout))
        save_tar = root / f"{name}.docker-save.tar"
        out[(name, "docker-save")] = (save_tar, write_docker_save(layout, save_tar))
    return out


# -- checks ----------------------------------------------------------------------------------


def skopeo_raw(registry: RegistryProcess, ref: str, home: Path) -> bytes:
    creds = registry.credentials
    return _skopeo(
        [
            "inspect",
            "--raw",
            *_tls_args("", registry),
            *([f"--creds={creds[0]}:{creds[1]}"] if creds else ["--no-creds"]),
            f"docker://{ref}",
        ],
        home,
    )


def check_registry(
    registry: RegistryProcess, repo: str, tag: str, want: Expected, *, media_type: bool = True
) -> None:
    """Independently (RawClient): the tag, every manifest and every blob are as expected."""
    with RawClient(registry) as raw:
        r = raw.get_manifest(repo, tag)
        assert r.status_code == 200, r.text
        assert sha256(r.content) == want.digest
        assert r.content == want.manifests[want.digest]
        if media_type:
            assert r.headers["content-type"] == want.media_type
        for digest, body in want.manifests.items():
            got = raw.get_manifest(repo, digest)
            assert got.status_code == 200 and got.content == body
        for digest in want.blobs:
            blob = raw.get_blob(repo, digest)
            assert blob.status_code == 200 and sha256(blob.content) == digest


def pull_back(client: RegistryClient, ref: Reference, dest: Path, want: Expected) -> None:
    """Pull with derrick and compare the layout it writes with what was pushed."""
    is_index = mt.is_index(want.media_type)
    result = pull(client, ref, dest, all_platforms=is_index, cache=BlobStore(dest.parent / "c"))
    assert str(result.digest) == want.digest
    layout = OCILayout.open(dest)
    [entry] = layout.index().manifests
    assert str(entry.digest) == want.digest
    stored = {str(d) for d in layout.iter_blobs()}
    assert set(want.manifests) <= stored
    assert set(want.blobs) <= stored
    for d in layout.iter_blobs():
        assert sha256(layout.blob_path(d).read_bytes()) == str(d)


# -- the push matrix -------------------------------------------------------------------------


@pytest.fixture
def registry_for(request: pytest.FixtureRequest) -> Callable[[str], RegistryProcess]:
    def get(mode: str) -> RegistryProcess:
        return request.getfixturevalue(f"registry_{mode}")  # type: ignore[no-any-return]

    return get


def _repo(unique_repo: Callable[..., str], mode: str) -> str:
    return unique_repo("private/scratch" if mode == "token" else "scratch")


#: Every image from every format on the open registry; with basic and token auth every image
#: from its layout and every other format once (a Docker list: the hardest for archives).
PUSH_CASES = [("open", name, fmt) for name in SEEDED_NAMES for fmt in FORMATS] + [
    (mode, name, fmt)
    for mode in ("basic", "token")
    for name, fmt in [(n, "oci") for n in SEEDED_NAMES]
    + [("dockerlist", f) for f in FORMATS if f != "oci"]
]


@pytest.mark.parametrize(("mode", "name", "fmt"), PUSH_CASES)
def test_push_each_image_from_each_format(
    mode: str,
    name: str,
    fmt: str,
    sources: dict[tuple[str, str], tuple[Path, Expected]],
    registry_for: Callable[[str], RegistryProcess],
    unique_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    registry = registry_for(mode)
    path, want = sources[(name, fmt)]
    repo = _repo(unique_repo, mode)
    ref = Reference.parse(f"{registry.host}/{repo}:pushed")
    with derrick_client(registry) as client:
        result = push(client, path, ref, jobs=3)
        assert str(result.digest) == want.digest
        assert result.media_type == want.media_type
        assert [str(d) for d in result.manifests][-1] == want.digest
        assert {str(d) for d in result.manifests} == set(want.manifests)
        assert result.stats.copied == len(want.blobs) and result.stats.skipped == 0
        check_registry(registry, repo, "pushed", want)
        pull_back(client, ref, tmp_path / "back", want)
        assert sha256(skopeo_raw(registry, str(ref), tmp_path / "sk")) == want.digest
        if mode == "open":
            # pushing again uploads nothing: every blob is found by HEAD
            again = push(client, path, ref.with_tag("again"), jobs=3)
            assert str(again.digest) == want.digest
            assert again.stats.copied == 0 and again.stats.skipped == len(want.blobs)


@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
@pytest.mark.parametrize("name", ["multi", "docker"])
def test_push_archives_made_by_derrick_pull(
    name: str,
    fmt: str,
    seeded_registries: SeededRegistries,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    """derrick image pull --format … writes an archive that derrick image push takes back."""
    from derrick.cli.main import main

    seeded = seeded_registries.open[f"test/{name}"]
    layout = test_images[name]
    archive = tmp_path / "image.tar"
    args = ["image", "pull", "-q", seeded.reference, "-o", str(archive), "--format", fmt]
    if fmt == "oci-archive":
        args.append("--all-platforms")
    else:
        args += ["--platform", HOST_PLATFORM]
    assert main([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    want = expected_whole(layout) if fmt == "oci-archive" else expected_platform(layout)
    repo = unique_repo()
    ref = Reference.parse(f"{registry_open.host}/{repo}:back")
    with derrick_client(registry_open) as client:
        assert str(push(client, archive, ref).digest) == want.digest
    check_registry(registry_open, repo, "back", want)
    # skopeo copies it out again, digests intact
    out = tmp_path / "skopeo-oci"
    _skopeo(
        [
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            f"docker://{ref}",
            f"oci:{out}:x",
        ],
        tmp_path / "sk",
    )
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == want.digest
    for digest in [*want.blobs, *want.manifests]:
        blob = out / "blobs" / "sha256" / digest.split(":", 1)[1]
        assert sha256(blob.read_bytes()) == digest


def test_chunked_push_uses_patch_and_keeps_digests(
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
) -> None:
    layout = test_images["eight"]
    repo = unique_repo()
    offset = registry_open.log_size()
    with derrick_client(registry_open) as client:
        result = push(
            client, layout.path, Reference.parse(f"{registry_open.host}/{repo}:v1"), chunk_size=300
        )
    assert str(result.digest) == layout.digest
    log = registry_open.log_since(offset)
    big = [d for d in layout.blob_digests if layout.blob_path(d).stat().st_size > 300]
    assert big and log.count(f'"PATCH /v2/{repo}/blobs/uploads/') >= len(big) * 2
    check_registry(registry_open, repo, "v1", expected_whole(layout))


def test_push_picks_the_image_by_name(
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    seeded_registries: SeededRegistries,
    unique_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    layout_dir = tmp_path / "two"
    with derrick_client(registry_open) as client:
        for name, tag in (("single", "one"), ("docker", "two")):
            src = Reference.parse(seeded_registries.open[f"test/{name}"].reference)
            pull(client, src, layout_dir, cache=BlobStore(tmp_path / "cache"))
            # pull names the entry by the source tag; rename to tell them apart
            layout = OCILayout.open(layout_dir)
            entry = next(
                d for d in layout.index().manifests if str(d.digest) == test_images[name].digest
            )
            layout.add_manifest(entry.with_annotations(None), ref_name=tag)
        ref = Reference.parse(f"{registry_open.host}/{unique_repo()}:x")
        with pytest.raises(LayoutError, match="choose one of"):
            push(client, layout_dir, ref)
        assert str(push(client, layout_dir, ref, "two").digest) == test_images["docker"].digest
        with pytest.raises(LayoutError, match="no image named 'three'"):
            push(client, layout_dir, ref, "three")


def test_push_without_push_access_is_denied(
    registry_token: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
) -> None:
    repo = unique_repo("private/scratch")
    ref = Reference.parse(f"{registry_token.host}/{repo}:v1")
    reader = Credential(username="reader", password="reader-secret")
    with (
        RegistryClient(credentials=lambda _r: reader, insecure=True, certs_dir=None) as client,
        pytest.raises(DeniedError) as info,
    ):
        push(client, test_images["single"].path, ref)
    msg = str(info.value)
    assert "denied" in msg and "\n" not in msg
    assert repo in msg
    with RawClient(registry_token) as raw:
        for digest in test_images["single"].blob_digests:
            assert not raw.blob_exists(repo, digest)
