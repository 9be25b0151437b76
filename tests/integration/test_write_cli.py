"""The write commands end to end: image push, image copy, tag, manifest delete, blob put and
blob delete, run through ``derrick.cli.main.main`` against the real registries."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from derrick.cli.main import main
from derrick.cli.options import parse_size
from derrick.errors import UsageError
from derrick.reference import Reference
from support.images import LayoutImage
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.seed import SeededRegistries, derrick_client
from support.transfers import copy as copy_image


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing from the user's Docker configuration; no saved credentials."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.delenv("DOCKER_AUTH_CONFIG", raising=False)
    monkeypatch.setenv("DERRICK_CACHE_DIR", str(tmp_path / "cache"))


def login_env(monkeypatch: pytest.MonkeyPatch, registry: RegistryProcess, user: str) -> None:
    """Credentials of ``user`` for ``registry`` the way CI passes them (DOCKER_AUTH_CONFIG)."""
    auth = base64.b64encode(f"{user}:{registry.users[user]}".encode()).decode()
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", json.dumps({"auths": {registry.host: {"auth": auth}}}))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def scratch_copy(seeded: SeededRegistries, label: str, name: str, repo: str) -> Reference:
    """A copy of a seeded image in a scratch repository (a mount: quick), to modify freely."""
    img = seeded.all()[label][f"{'private' if label == 'token' else 'test'}/{name}"]
    dst = Reference.parse(f"{img.registry.host}/{repo}:v1")
    with derrick_client(img.registry) as client:
        copy_image(client, Reference.parse(img.reference), dst, all_platforms=True)
    return dst


# -- push and copy ---------------------------------------------------------------------------


def test_image_push_and_copy_print_json_summaries(
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout = test_images["multi"]
    repo = unique_repo()
    ref = f"{registry_open.host}/{repo}:v1"
    code, out, err = run(
        capsys, "image", "push", f"{layout.path}:v1", ref, "--format", "json", "-j", "2"
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["digest"] == layout.digest
    assert summary["mediaType"] == layout.media_type
    assert summary["manifests"][-1] == layout.digest
    assert summary["uploadedBlobs"] == len(layout.blob_digests)
    assert summary["skippedBlobs"] == summary["mountedBlobs"] == 0

    copy_repo = unique_repo()
    code, out, err = run(
        capsys,
        "image",
        "copy",
        "-q",
        "--jobs",
        "3",
        "--all-platforms",
        ref,
        f"{registry_open.host}/{copy_repo}",
        "--format",
        "json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["digest"] == layout.digest
    assert summary["destination"] == f"{registry_open.host}/{copy_repo}:v1"
    assert summary["mountedBlobs"] == len(layout.blob_digests)
    with RawClient(registry_open) as raw:
        assert raw.manifest_digest(copy_repo, "v1") == layout.digest


def test_image_push_text_output_and_source_naming(
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout = test_images["single"]
    ref = f"{registry_open.host}/{unique_repo()}:v1"
    code, out, err = run(capsys, "image", "push", str(layout.path), ref, "--tag", "v1")
    assert code == 0 and out == ""
    assert err.startswith(f"Pushed {layout.path} to {ref} ({layout.digest})")
    code, out, err = run(capsys, "image", "push", "-q", f"oci:{layout.path}:v1", ref)
    assert (code, out, err) == (0, "", "")
    code, out, err = run(capsys, "image", "push", f"{layout.path}:v1", ref, "--tag", "v1")
    assert code == 2 and "named twice" in err
    code, out, err = run(capsys, "image", "push", f"{layout.path}:nope", ref)
    assert code == 1 and "no image named 'nope'" in err and err.count("\n") == 1


def test_image_copy_refuses_platform_with_all_platforms(
    registry_open: RegistryProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = f"{registry_open.host}/test/multi:v1"
    code, _, err = run(
        capsys, "image", "copy", "--all-platforms", "--platform", "linux/amd64", ref, ref + "x"
    )
    assert code == 2 and "exclude each other" in err


def test_push_by_a_reader_is_denied_with_one_line(
    registry_token: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    login_env(monkeypatch, registry_token, "reader")
    repo = unique_repo("private/scratch")
    code, out, err = run(
        capsys,
        "image",
        "push",
        "--insecure",
        str(test_images["single"].path),
        f"{registry_token.host}/{repo}:v1",
    )
    assert code == 1 and out == ""
    assert err.startswith("derrick: error: ") and err.count("\n") == 1
    assert "access denied" in err and repo in err


# -- tag -------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["basic", "token"])
def test_tag_puts_new_tags_without_touching_blobs(
    label: str,
    seeded_registries: SeededRegistries,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = seeded_registries.all()[label].registry
    login_env(monkeypatch, registry, registry.username or "")
    repo = unique_repo("private/scratch" if label == "token" else "scratch")
    ref = scratch_copy(seeded_registries, label, "dockerlist", repo)
    offset = registry.log_size()
    code, out, err = run(capsys, "tag", "--insecure", str(ref), "stable", "2024")
    assert code == 0, err
    assert err.splitlines() == [
        f"Tagged {ref.with_tag(t)} ({test_images['dockerlist'].digest})" for t in ("stable", "2024")
    ]
    log = registry.log_since(offset)
    assert "/blobs/" not in log
    assert len(re.findall(rf'"PUT /v2/{re.escape(repo)}/manifests/[^"]*" 201', log)) == 2
    code, out, err = run(capsys, "tag", "add", "--insecure", str(ref), "--format", "json", "x")
    assert code == 0 and json.loads(out)["tagged"] == [str(ref.with_tag("x"))]
    code, out, err = run(capsys, "tag", "ls", "--insecure", f"{registry.host}/{repo}")
    assert code == 0 and sorted(out.split()) == ["2024", "stable", "v1", "x"]
    with RawClient(registry) as raw:
        for tag in ("stable", "2024", "x"):
            assert raw.manifest_digest(repo, tag) == test_images["dockerlist"].digest


# -- deletes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["open", "token"])
def test_manifest_delete(
    label: str,
    seeded_registries: SeededRegistries,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = seeded_registries.all()[label].registry
    if registry.username:
        login_env(monkeypatch, registry, registry.username)
    repo = unique_repo("private/scratch" if label == "token" else "scratch")
    ref = scratch_copy(seeded_registries, label, "single", repo)
    code, _, err = run(capsys, "manifest", "delete", "--insecure", str(ref))
    assert code == 0, err
    assert err == f"Deleted manifest {test_images['single'].digest} from {ref.name}\n"
    with RawClient(registry) as raw:
        assert raw.get_manifest(repo, "v1").status_code == 404
        assert raw.get_manifest(repo, test_images["single"].digest).status_code == 404
    code, _, err = run(capsys, "manifest", "delete", "--insecure", str(ref))
    assert code == 1 and "not found" in err and err.count("\n") == 1


def test_blob_put_and_delete(
    registry_basic: RegistryProcess,
    unique_repo: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    login_env(monkeypatch, registry_basic, "tester")
    data = bytes(range(256)) * 100 + b"derrick"
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    repo = f"{registry_basic.host}/{unique_repo()}"
    offset = registry_basic.log_size()
    code, out, err = run(
        capsys, "blob", "put", "--insecure", "--chunk-size", "10KiB", repo, str(path)
    )
    assert code == 0, err
    assert out == sha256(data) + "\n"
    assert registry_basic.log_since(offset).count('"PATCH ') == 3  # 10 KiB chunks of 25.6 KB
    with RawClient(registry_basic) as raw:
        blob = raw.get_blob(repo.split("/", 1)[1], sha256(data))
        assert blob.status_code == 200 and blob.content == data
    code, out, err = run(capsys, "blob", "put", "--insecure", repo, str(path), "--format", "json")
    assert code == 0 and json.loads(out) == {
        "digest": sha256(data),
        "size": len(data),
        "uploaded": False,  # it was there already
    }
    code, out, err = run(capsys, "blob", "put", "--insecure", repo, str(path))
    code, out, err = run(
        capsys, "blob", "delete", "--insecure", repo, sha256(data), "--format", "json"
    )
    assert code == 0, err
    assert json.loads(out) == {"deleted": f"{repo}@{sha256(data)}", "digest": sha256(data)}
    assert err == ""
    with RawClient(registry_basic) as raw:
        assert not raw.blob_exists(repo.split("/", 1)[1], sha256(data))
    code, out, err = run(capsys, "blob", "put", "--insecure", repo, str(path))
    assert code == 0, err
    code, out, err = run(capsys, "blob", "delete", "--insecure", repo, sha256(data))
    assert code == 0 and err == f"Deleted blob {sha256(data)} from {repo}\n"
    with RawClient(registry_basic) as raw:
        assert not raw.blob_exists(repo.split("/", 1)[1], sha256(data))


def test_sizes_parse_in_binary_units(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_size("123") == 123
    assert parse_size("64K") == parse_size("64KiB") == parse_size("64kb") == 64 * 1024
    assert parse_size("64MiB") == 64 * 1024 * 1024
    assert parse_size("1G") == 1 << 30
    with pytest.raises(UsageError):
        parse_size("lots")
    code, _, err = run(capsys, "blob", "put", "--chunk-size", "lots", "localhost:5000/x", __file__)
    assert code == 2 and "invalid size" in err
