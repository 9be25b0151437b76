"""The read commands, run as the real CLI against real registries.

``tag ls``, ``repo ls``, ``manifest get|head``, ``blob get``, ``image config|inspect`` and
``ratelimit``: output checked against what the harness seeded (digests, sizes, platforms),
in every auth mode the harness offers.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from support.cli import Cli, Isolation, run_subprocess
from support.faultproxy import FaultProxy, paginate_tags
from support.images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    LayoutImage,
)
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.seed import SEEDED_NAMES, SeededRegistries

# -- fixtures --------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def field(text: str, name: str) -> str:
    """The value of a ``Name:  value`` line of text output."""
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name!r} line in:\n{text}")


# -- tag ls ----------------------------------------------------------------------------------


def test_tag_ls_text_and_json(cli: Cli, seeded: SeededRegistries) -> None:
    host = seeded.open.registry.host
    r = cli("tag", "ls", f"{host}/test/single").ok()
    assert lines(r.out) == ["v1"]
    assert r.err == ""
    r = cli("tag", "ls", f"{host}/test/multi", "--format", "json").ok()
    assert json.loads(r.out) == ["v1"]


def test_tag_ls_follows_link_pagination(
    cli: Cli,
    seeded: SeededRegistries,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
) -> None:
    reg = seeded.open.registry
    repo = unique_repo()
    layout = test_images["single"]
    tags = ["v1", "v2", "v3", "beta", "latest"]
    with RawClient(reg) as raw:
        raw.push_layout(layout, repo, tags[0])
        for t in tags[1:]:
            raw.put_manifest(repo, t, layout.top_bytes, layout.media_type)
        assert sorted(raw.tags(repo)) == sorted(tags)

    # The registry (2.8) does not page tags itself; the proxy cuts pages as the spec says.
    with FaultProxy(reg.url) as proxy:
        proxy.route = paginate_tags(proxy)
        r = cli("tag", "ls", f"{proxy.host}/{repo}", "--limit", "1", "--format", "json").ok()
        pages = [q for q in proxy.requests if q.route == f"/v2/{repo}/tags/list"]
        assert json.loads(r.out) == sorted(tags)  # every page, each once, in order
        assert len(pages) == len(tags)
        queries = [parse_qs(urlsplit(p.path).query) for p in pages]
        assert all(q.get("n") == ["1"] for q in queries), [p.path for p in pages]
        assert "last" not in queries[0]
        assert [q["last"][0] for q in queries[1:]] == sorted(tags)[:-1]

        proxy.clear()
        r = cli("tag", "ls", f"{proxy.host}/{repo}", "--limit", "2").ok()
        assert lines(r.out) == sorted(tags)
        assert len(proxy.requests_to(f"/v2/{repo}/tags/list")) == 3

    r = cli("tag", "ls", f"{reg.host}/{repo}").ok()
    assert sorted(lines(r.out)) == sorted(tags)


# -- repo ls ---------------------------------------------------------------------------------


def test_repo_ls_open_registry(cli: Cli, seeded: SeededRegistries) -> None:
    host = seeded.open.registry.host
    r = cli("repo", "ls", host).ok()
    listed = lines(r.out)
    assert {f"test/{n}" for n in SEEDED_NAMES} <= set(listed)
    assert listed == sorted(listed)
    r = cli("repo", "ls", host, "--format", "json").ok()
    assert json.loads(r.out) == listed


def test_repo_ls_follows_catalog_pagination(cli: Cli, seeded: SeededRegistries) -> None:
    reg = seeded.open.registry
    with FaultProxy(reg.url) as proxy:
        everything = lines(cli("repo", "ls", proxy.host).ok().out)
        assert len(proxy.requests_to("/v2/_catalog")) == 1
        proxy.clear()
        r = cli("repo", "ls", proxy.host, "--limit", "2", "--format", "json").ok()
        assert json.loads(r.out) == everything
        pages = proxy.requests_to("/v2/_catalog")
    assert len(pages) >= (len(everything) + 1) // 2
    assert all("n=2" in p.path for p in pages)


def test_repo_ls_token_registry_admin(
    cli: Cli, seeded: SeededRegistries, token_log: object
) -> None:
    from support.tokenserver import TokenServer

    assert isinstance(token_log, TokenServer)
    host = seeded.token.registry.host
    # credentials go over plain http only to a registry named --insecure
    argv = ["repo", "ls", host, "--insecure", "-u", "admin", "--password-stdin"]
    r = cli(*argv, stdin="admin-secret\n").ok()
    want = {f"{p}/{n}" for p in ("public", "private") for n in SEEDED_NAMES}
    assert want <= set(lines(r.out))
    assert "registry:catalog:*" in token_log.requested_scopes()
    granted = [e for e in token_log.log if e.user == "admin" and e.status == 200]
    assert any(e.granted_actions("catalog", "registry") == ["*"] for e in granted)


# -- manifest get / head -----------------------------------------------------------------


def test_manifest_get_text_json_raw(
    cli: Cli, seeded: SeededRegistries, test_images: dict[str, LayoutImage]
) -> None:
    img = seeded.open["test/single"]
    info = test_images["single"].image
    r = cli("manifest", "get", img.reference).ok()
    assert field(r.out, "Name") == img.reference
    assert field(r.out, "MediaType") == OCI_MANIFEST
    assert field(r.out, "Digest") == img.digest
    assert field(r.out, "Config") == info.config.digest
    for layer in info.layers:
        assert layer.digest in r.out

    r = cli("manifest", "get", img.reference, "--format", "json").ok()
    assert json.loads(r.out) == info.manifest_json

    r = cli("manifest", "get", img.reference, "--format", "raw").ok()
    assert r.stdout == info.manifest_bytes
    assert sha256(r.stdout) == img.digest

    r = cli("manifest", "get", img.digest_reference, "--format", "raw").ok()
    assert sha256(r.stdout) == img.digest


@pytest.mark.parametrize("platform", ["linux/arm64", "linux/amd64", "linux/arm64/v8"])
def test_manifest_get_index_platform(
    cli: Cli, seeded: SeededRegistries, test_images: dict[str, LayoutImage], platform: str
) -> None:
    img = seeded.open["test/multi"]
    layout = test_images["multi"]
    child = layout.image_for("linux/amd64" if "amd64" in platform else "linux/arm64/v8")
    r = cli("manifest", "get", img.reference, "--platform", platform).ok()
    assert field(r.out, "Digest") == child.digest
    assert field(r.out, "MediaType") == OCI_MANIFEST
    assert field(r.out, "Config") == child.config.digest
    r = cli("manifest", "get", img.reference, "--platform", platform, "--format", "raw").ok()
    assert r.stdout == child.manifest_bytes


def test_manifest_get_index_lists_platforms(
    cli: Cli, seeded: SeededRegistries, test_images: dict[str, LayoutImage]
) -> None:
    img = seeded.open["test/multi"]
    layout = test_images["multi"]
    r = cli("manifest", "get", img.reference).ok()
    assert field(r.out, "MediaType") == OCI_INDEX
    assert field(r.out, "Digest") == layout.digest
    rows = {line.split()[0]: line.split()[1] for line in lines(r.out) if line.startswith("linux/")}
    assert rows == {
        "linux/amd64": layout.image_for("linux/amd64").digest,
        "linux/arm64/v8": layout.image_for("linux/arm64/v8").digest,
    }
    r = cli("manifest", "get", img.reference, "--format", "raw").ok()
    assert sha256(r.stdout) == layout.digest


def test_manifest_get_docker_manifest_list(
    cli: Cli, seeded: SeededRegistries, test_images: dict[str, LayoutImage]
) -> None:
    img = seeded.open["test/dockerlist"]
    layout = test_images["dockerlist"]
    r = cli("manifest", "get", img.reference).ok()
    assert field(r.out, "MediaType") == DOCKER_MANIFEST_LIST
    assert field(r.out, "Digest") == layout.digest
    assert "linux/arm/v7" in r.out and "linux/amd64" in r.out
    r = cli("manifest", "get", img.reference, "--format", "json").ok()
    doc = json.loads(r.out)
    assert doc["mediaType"] == DOCKER_MANIFEST_LIST
    assert [m["digest"] for m in doc["manifests"]] == layout.manifest_digests
    child = layout.image_for("linux/arm/v7")
    r = cli("manifest", "get", img.reference, "--platform", "linux/arm/v7").ok()
    assert field(r.out, "Digest") == child.digest
    assert field(r.out, "MediaType") == DOCKER_MANIFEST

    docker = seeded.open["test/docker"]
    r = cli("manifest", "get", docker.reference, "--format", "raw").ok()
    assert sha256(r.stdout) == docker.digest


def test_manifest_head(
    cli: Cli, seeded: SeededRegistries, test_images: dict[str, LayoutImage]
) -> None:
    for name in ("single", "multi", "dockerlist"):
        img = seeded.open[f"test/{name}"]
        r = cli("manifest", "head", img.reference).ok()
        assert lines(r.out) == [img.digest]
        r = cli("manifest", "head", img.reference, "--format", "json").ok()
        layout = test_images[name]
        assert json.loads(r.out) == {
            "digest": img.digest,
            "mediaType": layout.media_type,
            "size": len(layout.top_bytes),
        }


# -- blob get --------------------------------------------------------------------------------


def test_blob_get_to_file(
    cli: Cli, seeded: SeededRegistries, test_images: dict[str, LayoutImage], tmp_path: Path
) -> None:
    img = seeded.open["test/eight"]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for digest in test_images["eight"].blob_digests[:4]:
        target = out_dir / digest.split(":")[1][:12]
        r = cli("blob", "get", f"{img.registry.host}/test/eight", digest, "-o", target).ok()
        assert r.stdout == b""
        data = target.read_bytes()
        assert sha256(data) == digest
        assert data == test_images["eight"].blob_path(digest).read_bytes()
    assert len(list(out_dir.iterdir())) == 4  # no temporary files left behind


def test_blob_get_to_stdout(
    cli: Cli,
    seeded: SeededRegistries,
    test_images: dict[str, LayoutImage],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    img = seeded.open["test/single"]
    layer = test_images["single"].image.layers[0].digest
    r = cli("blob", "get", f"{img.registry.host}/test/single", layer).ok()
    assert sha256(r.stdout) == layer
    assert list(scratch.iterdir()) == []

    config = test_images["single"].image.config
    r = cli("blob", "get", f"{img.registry.host}/test/single", config.digest).ok()
    assert r.stdout == test_images["single"].image.config_bytes


def test_blob_get_subprocess(seeded: SeededRegistries, test_images: dict[str, LayoutImage]) -> None:
    img = seeded.open["test/single"]
    layer = test_images["single"].image.layers[0].digest
    r = run_subprocess("blob", "get", f"{img.registry.host}/test/single", layer).ok()
    assert sha256(r.stdout) == layer
    assert r.stderr == b""


# -- image config / inspect ----------------------------------------------------------------


def test_image_config(
    cli: Cli, seeded: SeededRegistries, test_images: dict[str, LayoutImage]
) -> None:
    img = seeded.open["test/single"]
    info = test_images["single"].image
    r = cli("image", "config", img.reference).ok()
    assert json.loads(r.out) == info.config_json
    r = cli("image", "config", img.reference, "--format", "raw").ok()
    assert r.stdout == info.config_bytes
    assert sha256(r.stdout) == info.config.digest

    multi = seeded.open["test/multi"]
    arm = test_images["multi"].image_for("linux/arm64/v8")
    r = cli("image", "config", multi.reference, "--platform", "linux/arm64").ok()
    cfg = json.loads(r.out)
    assert cfg == arm.config_json
    assert (cfg["architecture"], cfg["variant"]) == ("arm64", "v8")


def test_image_inspect_json(
    cli: Cli, seeded: SeededRegistries, test_images: dict[str, LayoutImage]
) -> None:
    img = seeded.open["test/multi"]
    layout = test_images["multi"]
    arm = layout.image_for("linux/arm64/v8")
    r = cli("image", "inspect", img.reference, "--platform", "linux/arm64", "--format", "json")
    info = json.loads(r.ok().out)
    assert info["digest"] == layout.digest
    assert info["mediaType"] == OCI_INDEX
    assert info["manifestDigest"] == arm.digest
    assert info["platform"] == "linux/arm64/v8"
    assert [p["platform"] for p in info["platforms"]] == ["linux/amd64", "linux/arm64/v8"]
    assert [p["digest"] for p in info["platforms"]] == layout.manifest_digests
    assert [p["size"] for p in info["platforms"]] == [len(i.manifest_bytes) for i in layout.images]
    assert [(x["digest"], x["size"]) for x in info["layers"]] == [
        (la.digest, la.size) for la in arm.layers
    ]
    assert info["config"]["digest"] == arm.config.digest
    assert info["config"]["labels"] == arm.config_json["config"]["Labels"]
    assert info["totalSize"] == sum(la.size for la in arm.layers) + arm.config.size

    eight = seeded.open["test/eight"]
    info = json.loads(cli("image", "inspect", eight.reference, "--format", "json").ok().out)
    e = test_images["eight"].image
    assert info["platforms"] == []
    assert info["digest"] == info["manifestDigest"] == e.digest
    assert len(info["layers"]) == 8
    assert info["config"]["diffIds"] == e.diff_ids
    assert info["config"]["historyCount"] == 9


def test_image_inspect_text(
    cli: Cli, seeded: SeededRegistries, test_images: dict[str, LayoutImage]
) -> None:
    img = seeded.open["test/dockerlist"]
    layout = test_images["dockerlist"]
    amd = layout.image_for("linux/amd64")
    r = cli("image", "inspect", img.reference, "--platform", "linux/amd64").ok()
    assert field(r.out, "Digest") == layout.digest
    assert field(r.out, "Platforms") == "linux/amd64, linux/arm/v7"
    assert field(r.out, "Manifest") == f"{amd.digest} (linux/amd64)"
    assert field(r.out, "Config") == amd.config.digest
    assert "Label:      org.example.platform=linux/amd64" in r.out
    for la in amd.layers:
        assert la.digest in r.out

    single = seeded.open["test/single"]
    r = cli("image", "inspect", single.reference).ok()
    assert field(r.out, "Platform") == "linux/amd64"
    assert field(r.out, "Cmd") == '["/bin/hello"]'
    assert field(r.out, "Created") == "2024-01-01T00:00:00Z"


# -- ratelimit -------------------------------------------------------------------------------

RATE_HEADERS = {
    "ratelimit-limit": "100;w=21600",
    "ratelimit-remaining": "76;w=21600",
    "docker-ratelimit-source": "1.2.3.4",
}


def test_ratelimit_reported(cli: Cli, seeded: SeededRegistries) -> None:
    reg = seeded.open.registry
    with FaultProxy(reg.url, extra_headers=RATE_HEADERS) as proxy:
        ref = f"{proxy.host}/test/single:v1"
        r = cli("ratelimit", ref).ok()
        assert field(r.out, "Limit") == "100"
        assert field(r.out, "Remaining") == "76"
        assert field(r.out, "Window") == "21600s"
        assert field(r.out, "Source") == "1.2.3.4"
        r = cli("ratelimit", ref, "--format", "json").ok()
        assert json.loads(r.out) == {
            "registry": proxy.host,
            "limit": 100,
            "remaining": 76,
            "windowSeconds": 21600,
            "source": "1.2.3.4",
        }
        # a HEAD, which Docker Hub does not count as a pull
        manifest_requests = [q for q in proxy.requests if "/manifests/" in q.path]
        assert manifest_requests and all(q.method == "HEAD" for q in manifest_requests)


def test_ratelimit_none(cli: Cli, seeded: SeededRegistries) -> None:
    host = seeded.open.registry.host
    r = cli("ratelimit", f"{host}/test/single:v1").ok()
    assert lines(r.out) == [f"{host} reports no rate limit"]
    r = cli("ratelimit", f"{host}/test/single:v1", "--format", "json").ok()
    assert json.loads(r.out)["limit"] is None


# -- every read command in every auth mode -------------------------------------------------


def _read_commands(
    reg: RegistryProcess, repo: str, layout: LayoutImage
) -> list[tuple[list[str], Callable[[bytes], None]]]:
    """(argv, check of stdout) for each read command on ``repo`` (a ``single`` image)."""
    ref = f"{reg.host}/{repo}:v1"
    info = layout.image
    layer = info.layers[0].digest

    def eq(expected: bytes) -> Callable[[bytes], None]:
        def check(out: bytes) -> None:
            assert out == expected

        return check

    def has_config(out: bytes) -> None:
        assert json.loads(out) == info.config_json

    def inspected(out: bytes) -> None:
        doc = json.loads(out)
        assert doc["digest"] == layout.digest
        assert [x["digest"] for x in doc["layers"]] == info.layer_digests

    def blob(out: bytes) -> None:
        assert sha256(out) == layer

    def no_limit(out: bytes) -> None:
        assert out.decode().strip() == f"{reg.host} reports no rate limit"

    return [
        (["tag", "ls", f"{reg.host}/{repo}"], eq(b"v1\n")),
        (["manifest", "get", ref, "--format", "raw"], eq(layout.top_bytes)),
        (["manifest", "head", ref], eq(layout.digest.encode() + b"\n")),
        (["blob", "get", f"{reg.host}/{repo}", layer], blob),
        (["image", "config", ref], has_config),
        (["image", "inspect", ref, "--format", "json"], inspected),
        (["ratelimit", ref], no_limit),
    ]


# (registry label, repository, extra arguments, stdin).  The test registries speak plain
# http, so credentials need --insecure (derrick sends none over http otherwise).
AUTH_MODES: dict[str, tuple[str, str, list[str], str | None]] = {
    "open": ("open", "test/single", [], None),
    "basic-stdin": (
        "basic",
        "test/single",
        ["--insecure", "-u", "tester", "--password-stdin"],
        "tester-secret",
    ),
    "token-anonymous-public": ("token", "public/single", [], None),
    "token-alice-private": (
        "token",
        "private/single",
        ["--insecure", "-u", "alice", "--password-stdin"],
        "alice-secret\n",
    ),
    "token-reader-private": (
        "token",
        "private/single",
        ["--insecure", "--username", "reader", "--password-stdin"],
        "reader-secret",
    ),
    "tls-ca-cert": ("tls", "test/single", ["--ca-cert", "CA"], None),
}


@pytest.mark.parametrize("mode", list(AUTH_MODES))
def test_read_commands_in_every_auth_mode(
    cli: Cli, seeded: SeededRegistries, test_images: dict[str, LayoutImage], mode: str
) -> None:
    label, repo, extra, stdin = AUTH_MODES[mode]
    reg = seeded.all()[label].registry
    extra = [str(reg.ca_cert) if a == "CA" else a for a in extra]
    for argv, check in _read_commands(reg, repo, test_images["single"]):
        r = cli(*argv, *extra, stdin=stdin)
        assert r.code == 0, f"{argv}: {r.err}"
        check(r.stdout)
        assert r.err == "", f"{argv}: {r.err}"


def test_read_commands_after_login(
    cli: Cli, env: Isolation, seeded: SeededRegistries, test_images: dict[str, LayoutImage]
) -> None:
    reg = seeded.basic.registry
    argv = ["login", reg.host, "--insecure", "-u", "tester", "--password-stdin"]
    r = cli(*argv, stdin="tester-secret\n").ok()
    assert "Login succeeded" in r.err
    for argv, check in _read_commands(reg, "test/single", test_images["single"]):
        r = cli(*argv, "--insecure")
        assert r.code == 0, f"{argv}: {r.err}"
        check(r.stdout)
    cli("logout", reg.host).ok()
    line = cli("tag", "ls", f"{reg.host}/test/single", "--insecure").failed()
    assert "authentication required" in line and "derrick login" in line


def test_token_read_commands_after_login(
    cli: Cli, seeded: SeededRegistries, test_images: dict[str, LayoutImage]
) -> None:
    reg = seeded.token.registry
    argv = ["login", reg.host, "--insecure", "-u", "reader", "--password-stdin"]
    cli(*argv, stdin="reader-secret").ok()
    for argv, check in _read_commands(reg, "private/single", test_images["single"]):
        r = cli(*argv, "--insecure")
        assert r.code == 0, f"{argv}: {r.err}"
        check(r.stdout)


def test_tls_registry_via_subprocess(seeded: SeededRegistries) -> None:
    reg = seeded.tls.registry
    img = seeded.tls["test/multi"]
    r = run_subprocess("manifest", "head", img.reference, "--ca-cert", reg.ca_cert).ok()
    assert r.out.strip() == img.digest
    assert r.err == ""
