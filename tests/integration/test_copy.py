"""Copies between registries (the engine, :func:`support.transfers.copy`, and ``derrick image
copy``): mounts within a registry, streaming across two, one platform or the whole index (the
default), skipping what is there, and refusing content that does not match its digest (the
upload is never committed)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from derrick.auth.credentials import Credential
from derrick.digest import Digest
from derrick.errors import DeniedError, DigestMismatchError, RegistryError
from derrick.manifest import Platform
from derrick.reference import Reference
from derrick.registry import RegistryClient
from support.cli import Cli
from support.images import LayoutImage, _skopeo
from support.rawclient import RawClient
from support.registry import RegistryProcess, start_registry
from support.seed import SEEDED_NAMES, SeededRegistries, derrick_client
from support.tokenserver import TokenServer
from support.transfers import copy as copy_image
from support.transfers import push


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def registry_second(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """Another open registry, for copies from one registry to another."""
    reg = start_registry(tmp_path_factory.mktemp("registry-second"), name="registry-second")
    try:
        yield reg
    finally:
        reg.stop()


def client_for(*registries: RegistryProcess) -> RegistryClient:
    """A client with each registry's credentials (and plain http allowed for them)."""
    creds = {r.host: r.credentials for r in registries if r.credentials}

    def lookup(host: str) -> Credential | None:
        c = creds.get(host)
        return Credential(username=c[0], password=c[1]) if c else None

    return RegistryClient(credentials=lookup, insecure=True, certs_dir=None)


def check_copy(registry: RegistryProcess, repo: str, tag: str, layout: LayoutImage) -> None:
    """RawClient: the tag names the layout's index/manifest and every child and blob is there."""
    with RawClient(registry) as raw:
        assert raw.manifest_digest(repo, tag) == layout.digest
        for img in layout.images:
            assert raw.manifest_digest(repo, img.digest) == img.digest
            for digest in img.blob_digests:
                blob = raw.get_blob(repo, digest)
                assert blob.status_code == 200 and sha256(blob.content) == digest


def upload_lines(log: str, repo: str) -> list[str]:
    """Access-log lines of blob uploads (PATCH, or PUT of an upload) into ``repo``."""
    return re.findall(rf'"(?:PATCH|PUT) /v2/{re.escape(repo)}/blobs/uploads/[^"]*"', log)


def mount_lines(log: str, repo: str) -> list[str]:
    return re.findall(rf'"POST /v2/{re.escape(repo)}/blobs/uploads/\?mount=[^"]*" 201', log)


# -- within one registry: mounts -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["open", "basic", "token"])
def test_copy_within_a_registry_mounts_every_blob(
    mode: str,
    seeded_registries: SeededRegistries,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    token_log: TokenServer,
) -> None:
    seeded = seeded_registries.all()[mode]
    registry = seeded.registry
    prefix = "private" if mode == "token" else "test"
    src_repo = f"{prefix}/multi"
    dst_repo = unique_repo(f"{prefix}/scratch")
    layout = test_images["multi"]
    offset = registry.log_size()
    token_log.clear_log()
    with client_for(registry) as client:
        result = copy_image(
            client,
            Reference.parse(f"{registry.host}/{src_repo}:v1"),
            Reference.parse(f"{registry.host}/{dst_repo}:copied"),
            all_platforms=True,
        )
    assert str(result.digest) == layout.digest
    assert {str(d) for d in result.manifests} == {layout.digest, *layout.manifest_digests}
    assert result.stats.mounted == len(layout.blob_digests)
    assert result.stats.copied == result.stats.skipped == 0
    log = registry.log_since(offset)
    assert len(mount_lines(log, dst_repo)) == len(layout.blob_digests)
    assert f"from={src_repo}" in unquote(mount_lines(log, dst_repo)[0])
    assert upload_lines(log, dst_repo) == []
    check_copy(registry, dst_repo, "copied", layout)
    if mode == "token":
        # one token request grants pull,push on the destination and pull on the source
        both = [
            e
            for e in token_log.log
            if f"repository:{dst_repo}:pull,push" in e.scopes
            and f"repository:{src_repo}:pull" in e.scopes
        ]
        assert len(both) == 1
        assert both[0].granted_actions(dst_repo) == ["pull", "push"]
        assert both[0].granted_actions(src_repo) == ["pull"]


def test_copy_one_platform_copies_that_child(
    seeded_registries: SeededRegistries,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
) -> None:
    layout = test_images["multi"]
    arm = layout.image_for("linux/arm64/v8")
    repo = unique_repo()
    with client_for(registry_open) as client:
        result = copy_image(
            client,
            Reference.parse(seeded_registries.open["test/multi"].reference),
            Reference.parse(f"{registry_open.host}/{repo}:arm"),
            platform=Platform.parse("linux/arm64"),
        )
    assert str(result.digest) == arm.digest
    assert result.media_type == arm.media_type
    assert result.stats.mounted == len(arm.blob_digests)
    with RawClient(registry_open) as raw:
        r = raw.get_manifest(repo, "arm")
        assert r.content == arm.manifest_bytes
        assert r.headers["content-type"] == arm.media_type
        other = layout.image_for("linux/amd64")
        only_amd = set(other.blob_digests) - set(arm.blob_digests)
        assert only_amd and not any(raw.blob_exists(repo, d) for d in only_amd)


def test_copy_without_platform_keeps_the_whole_index_and_the_source_tag(
    cli: Cli,
    seeded_registries: SeededRegistries,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
) -> None:
    """To a registry, ``image copy`` copies every platform unless --platform narrows it (as
    mirroring tools do: a mirror must not lose platforms)."""
    layout = test_images["dockerlist"]
    repo = unique_repo()
    src = seeded_registries.open["test/dockerlist"].reference
    cli("image", "copy", src, f"{registry_open.host}/{repo}", "-q").ok()  # the source's tag
    check_copy(registry_open, repo, "v1", layout)
    amd64 = layout.image_for("linux/amd64")
    cli(
        "image", "copy", src, f"{registry_open.host}/{repo}:amd64", "--platform", "linux/amd64"
    ).ok()
    with RawClient(registry_open) as raw:
        assert raw.manifest_digest(repo, "amd64") == amd64.digest


# -- across registries: streaming --------------------------------------------------------------


@pytest.mark.parametrize("name", SEEDED_NAMES)
def test_copy_across_registries_preserves_digests(
    name: str,
    seeded_registries: SeededRegistries,
    registry_second: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    layout = test_images[name]
    src = seeded_registries.open[f"test/{name}"]
    repo = unique_repo()
    dst = Reference.parse(f"{registry_second.host}/{repo}:v1")
    offset = registry_second.log_size()
    with client_for(src.registry, registry_second) as client:
        result = copy_image(client, Reference.parse(src.reference), dst, all_platforms=True, jobs=4)
    assert str(result.digest) == layout.digest
    assert result.stats.copied == len(layout.blob_digests) and result.stats.mounted == 0
    assert result.stats.copied_bytes == sum(
        layout.blob_path(d).stat().st_size for d in layout.blob_digests
    )
    log = registry_second.log_since(offset)
    assert "mount=" not in log
    assert len(upload_lines(log, repo)) == len(layout.blob_digests)
    check_copy(registry_second, repo, "v1", layout)
    raw = _skopeo(["inspect", "--raw", "--tls-verify=false", f"docker://{dst}"], tmp_path)
    assert sha256(raw) == layout.digest

    # again: every blob is there already, so nothing is uploaded at all
    offset = registry_second.log_size()
    with client_for(src.registry, registry_second) as client:
        again = copy_image(client, Reference.parse(src.reference), dst, all_platforms=True)
    assert again.stats.skipped == len(layout.blob_digests) and again.stats.copied == 0
    assert "/blobs/uploads/" not in registry_second.log_since(offset)


def test_copy_from_a_token_registry_to_an_open_one_in_chunks(
    seeded_registries: SeededRegistries,
    registry_second: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
) -> None:
    layout = test_images["eight"]
    src = seeded_registries.token["private/eight"]
    repo = unique_repo()
    offset = registry_second.log_size()
    with client_for(src.registry, registry_second) as client:
        result = copy_image(
            client,
            Reference.parse(src.reference),
            Reference.parse(f"{registry_second.host}/{repo}:v1"),
            chunk_size=256,
        )
    assert str(result.digest) == layout.digest
    log = registry_second.log_since(offset)
    big = [d for d in layout.blob_digests if layout.blob_path(d).stat().st_size > 256]
    assert big
    assert len(re.findall(rf'"PATCH /v2/{re.escape(repo)}/blobs/uploads/', log)) > len(big)
    check_copy(registry_second, repo, "v1", layout)


def _storage_blob(registry: RegistryProcess, digest: str) -> Path:
    hex_ = digest.split(":", 1)[1]
    return registry.storage_dir / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


@pytest.mark.parametrize("chunk_size", [None, 200])
def test_copy_refuses_a_blob_that_does_not_match_its_digest(
    chunk_size: int | None,
    registry_second: RegistryProcess,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
) -> None:
    """A source serving wrong bytes for a layer: the copy fails and nothing is committed."""
    layout = test_images["single"]
    src_repo = unique_repo("corrupt")
    src = Reference.parse(f"{registry_second.host}/{src_repo}:v1")
    # a layer only this source has (a fresh digest), so corrupting it harms no other test
    with derrick_client(registry_second) as client:
        push(client, layout.path, src)
    layer = layout.image.layers[0].digest
    data = _storage_blob(registry_second, layer)
    original = data.read_bytes()
    data.write_bytes(original[:-10] + bytes(10))  # same size, different content
    dst_repo = unique_repo()
    offset = registry_open.log_size()
    try:
        with client_for(registry_open) as client, pytest.raises(DigestMismatchError) as info:
            copy_image(
                client,
                src,
                Reference.parse(f"{registry_open.host}/{dst_repo}:v1"),
                chunk_size=chunk_size,
            )
    finally:
        data.write_bytes(original)
    assert layer in str(info.value) and "\n" not in str(info.value)
    log = registry_open.log_since(offset)
    # no upload of the layer was completed, and the upload session was cancelled
    hex_ = layer.split(":")[1]
    assert not re.search(
        rf'"PUT /v2/{re.escape(dst_repo)}/blobs/uploads/[^"]*{hex_}[^"]*" 201', log
    )
    assert re.search(rf'"DELETE /v2/{re.escape(dst_repo)}/blobs/uploads/[^"]*" 204', log)
    with RawClient(registry_open) as raw:
        assert not raw.blob_exists(dst_repo, layer)
        assert raw.get_manifest(dst_repo, "v1").status_code == 404


def test_the_registry_refuses_an_upload_that_does_not_match_its_digest(
    registry_open: RegistryProcess, unique_repo: Callable[..., str]
) -> None:
    """The second line of defence: content sent unchecked is refused by PUT ?digest=."""
    good, bad = b"the right content", b"the wrong content"
    repo = Reference.parse(f"{registry_open.host}/{unique_repo()}")
    digest = Digest.of(good)
    with client_for(registry_open) as client:
        with pytest.raises(RegistryError) as info:
            client.upload_blob(repo, digest, len(bad), lambda off: [bad[off:]])
        assert "DIGEST_INVALID" in info.value.codes
        assert client.head_blob(repo, digest) is None
        client.upload_blob(repo, digest, len(good), lambda off: [good[off:]])
        assert client.head_blob(repo, digest) == len(good)


def test_copy_to_a_repository_the_reader_cannot_push_to_is_denied(
    seeded_registries: SeededRegistries,
    registry_token: RegistryProcess,
    unique_repo: Callable[..., str],
) -> None:
    reader = Credential(username="reader", password="reader-secret")
    dst_repo = unique_repo("private/scratch")
    with (
        RegistryClient(credentials=lambda _r: reader, insecure=True, certs_dir=None) as client,
        pytest.raises(DeniedError) as info,
    ):
        copy_image(
            client,
            Reference.parse(seeded_registries.token["private/single"].reference),
            Reference.parse(f"{registry_token.host}/{dst_repo}:v1"),
        )
    assert "denied" in str(info.value) and dst_repo in str(info.value)
