"""Failures of the read commands: one line on stderr, a non-zero exit, never a traceback.

Each message must say what failed and what to try.  Faults a real registry will not produce
(HTML where JSON belongs, broken manifests, wrong digests, 5xx) come from small loopback
servers in :mod:`support.faultproxy`.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.cli import Cli, run_subprocess
from support.faultproxy import FaultProxy, RecordedRequest, Reply
from support.images import OCI_MANIFEST, LayoutImage
from support.registry import free_port
from support.seed import SeededRegistries


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- not found -------------------------------------------------------------------------------


def test_wrong_tag(cli: Cli, seeded: SeededRegistries) -> None:
    host = seeded.open.registry.host
    for cmd in (["manifest", "get"], ["manifest", "head"], ["image", "inspect"]):
        line = cli(*cmd, f"{host}/test/single:nope").failed()
        assert f"{host}/test/single:nope" in line
        assert "not in the repository" in line
        assert "derrick tag ls" in line  # what to try


def test_wrong_digest(cli: Cli, seeded: SeededRegistries) -> None:
    host = seeded.open.registry.host
    missing = "sha256:" + "0" * 64
    line = cli("manifest", "get", f"{host}/test/single@{missing}").failed()
    assert missing in line and "not in the repository" in line
    line = cli("blob", "get", f"{host}/test/single", missing).failed()
    assert missing in line and "not found" in line


def test_unknown_repository(cli: Cli, seeded: SeededRegistries) -> None:
    host = seeded.open.registry.host
    line = cli("tag", "ls", f"{host}/no/such-repo").failed()
    assert "no/such-repo" in line
    assert "repository does not exist" in line
    assert "check the repository name" in line
    line = cli("manifest", "get", f"{host}/no/such-repo:v1").failed()
    assert "no/such-repo:v1" in line and "not found" in line


def test_platform_not_in_index(cli: Cli, seeded: SeededRegistries) -> None:
    img = seeded.open["test/multi"]
    line = cli("image", "inspect", img.reference, "--platform", "linux/s390x").failed()
    assert "linux/s390x" in line
    assert "linux/amd64" in line and "linux/arm64/v8" in line  # what there is
    assert "--platform" in line
    line = cli("manifest", "get", img.reference, "--platform", "linux").failed()
    assert "invalid platform" in line and "os/arch" in line


# -- credentials -----------------------------------------------------------------------------


def test_bad_credentials_basic(cli: Cli, seeded: SeededRegistries) -> None:
    img = seeded.basic["test/single"]
    argv = ["manifest", "get", img.reference, "--insecure", "-u", "tester", "--password-stdin"]
    r = cli(*argv, stdin="wrong-secret")
    line = r.failed()
    assert "rejected the credentials" in line
    assert "check the user name and password" in line
    assert "wrong-secret" not in r.err


def test_missing_credentials_basic(cli: Cli, seeded: SeededRegistries) -> None:
    img = seeded.basic["test/single"]
    line = cli("manifest", "get", img.reference).failed()
    assert "authentication required" in line
    assert f"derrick login {img.registry.host}" in line


def test_bad_credentials_token(cli: Cli, seeded: SeededRegistries) -> None:
    img = seeded.token["private/single"]
    argv = ["tag", "ls", f"{img.registry.host}/private/single", "--insecure"]
    r = cli(*argv, "-u", "alice", "--password-stdin", stdin="nope")
    line = r.failed()
    assert "token service" in line and "refused" in line and "HTTP 401" in line
    assert "check the user name and password" in line


def test_password_stdin_usage_errors(cli: Cli, seeded: SeededRegistries) -> None:
    img = seeded.basic["test/single"]
    r = cli("manifest", "head", img.reference, "--password-stdin", stdin="x")
    assert "--username" in r.failed()
    assert r.code == 2
    r = cli("manifest", "head", img.reference, "-u", "tester", "--password-stdin", stdin="")
    assert "standard input was empty" in r.failed()
    assert r.code == 2


# -- reaching the registry -------------------------------------------------------------------


def test_unreachable_registry(cli: Cli) -> None:
    host = f"127.0.0.1:{free_port()}"
    for argv in (
        ["tag", "ls", f"{host}/test/single"],
        ["manifest", "get", f"{host}/test/single:v1"],
        ["repo", "ls", host],
    ):
        line = cli(*argv, "--retries", "0").failed()
        assert f"cannot connect to registry {host}" in line
        assert "check the host name and port" in line


def test_a_host_name_that_does_not_resolve_fails_at_once() -> None:
    # .invalid never resolves (RFC 6761): a misspelt host, as a wrong port, will not mend
    r = run_subprocess("tag", "ls", "registry.invalid/team/app", "--debug")
    assert r.code == 1
    assert "GET https://registry.invalid/v2/team/app/tags/list" in r.err  # the log is on
    assert "retrying" not in r.err, r.err
    assert r.err_lines[-1].startswith(
        "derrick: error: cannot connect to registry registry.invalid: "
    ), r.err


def test_unreachable_registry_subprocess() -> None:
    host = f"127.0.0.1:{free_port()}"
    r = run_subprocess("manifest", "head", f"{host}/x/y:1")
    line = r.failed()
    assert r.code == 1
    assert host in line and "refused" in line.lower()
    assert r.stdout == b""


def _outward_address() -> str | None:
    """An address of this machine that is not loopback, if there is one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            addr = str(s.getsockname()[0])
    except OSError:
        return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def test_plain_http_registry_where_tls_is_expected(cli: Cli, seeded: SeededRegistries) -> None:
    """A registry that is not on loopback is spoken to over https only."""
    addr = _outward_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address")
    reg = seeded.open.registry
    with FaultProxy(reg.url, bind=addr) as proxy:
        ref = f"{proxy.host}/test/single:v1"
        line = cli("manifest", "head", ref).failed()
        assert proxy.host in line
        assert "TLS" in line
        assert "--insecure" in line
        assert not proxy.requests  # nothing was sent in the clear
        r = cli("manifest", "head", ref, "--insecure").ok()
        assert r.out.strip() == seeded.open["test/single"].digest


def test_insecure_still_speaks_tls_to_a_tls_registry(cli: Cli, seeded: SeededRegistries) -> None:
    """--insecure on a TLS registry still talks TLS (unverified), not plain http."""
    img = seeded.tls["test/single"]
    r = cli("manifest", "head", img.reference, "--insecure").ok()
    assert r.out.strip() == img.digest


# -- malformed input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "bad_part"),
    [
        (["manifest", "get", "127.0.0.1:5000/Test/single:v1"], "lowercase"),
        (["manifest", "get", "127.0.0.1:5000/test/single:bad!tag"], "bad!tag"),
        (["manifest", "get", "127.0.0.1:5000/test//single:v1"], "//"),
        (["manifest", "get", "https://127.0.0.1:5000/test/single:v1"], "https://"),
        (["manifest", "get", "127.0.0.1:5000/test/single@sha256:abc"], "sha256:abc"),
        (["tag", "ls", "127.0.0.1:5000/test/-single"], "-single"),
        (["repo", "ls", "127.0.0.1:5000/test"], "host[:port]"),
        (["repo", "ls", "127.0.0.1:port"], "port"),
        (["blob", "get", "127.0.0.1:5000/test/single", "sha256:xyz"], "sha256:xyz"),
        (["blob", "get", "127.0.0.1:5000/test/single", "md5:" + "0" * 32], "md5"),
    ],
)
def test_malformed_input_names_the_bad_part(cli: Cli, argv: list[str], bad_part: str) -> None:
    line = cli(*argv).failed()
    assert "invalid" in line or "unsupported" in line
    assert bad_part in line


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["imag"], "no such command 'imag'. Did you mean 'image'?; see 'derrick --help'"),
        (
            ["image", "pull"],
            "missing argument 'REFERENCE'; see 'derrick image pull --help'",
        ),
        (
            ["image", "pull", "a", "-o", "x", "--jobs", "0"],
            "invalid value for '-j' / '--jobs': 0 is not in the range 1<=x<=64; "
            "see 'derrick image pull --help'",
        ),
        (
            ["tag", "ls", "a", "b"],
            "got unexpected extra argument (b); see 'derrick tag ls --help'",
        ),
        (
            ["tag", "ls", "a", "--frmat", "json"],
            "no such option '--frmat'. Did you mean '--format'?; see 'derrick tag ls --help'",
        ),
    ],
)
def test_usage_errors_are_one_line(cli: Cli, argv: list[str], said: str) -> None:
    r = cli(*argv)
    assert r.code == 2
    assert r.failed() == f"derrick: error: {said}"


def test_a_group_without_its_command_shows_its_help(cli: Cli) -> None:
    r = cli("image")
    assert r.code == 2 and "Commands:" in r.err and "pull" in r.err


@pytest.mark.parametrize(
    "argv",
    [
        ["manifest", "head", "oci:{dir}"],
        ["manifest", "head", "{dir}:v1"],
        ["tag", "ls", "./layout"],
        ["tag", "add", "oci-archive:{dir}/a.tar:v1", "v2"],
        ["manifest", "delete", "docker-archive:{dir}/a.tar"],
        ["blob", "get", "oci:{dir}", "sha256:" + "0" * 64],
        ["ratelimit", "{dir}"],
    ],
)
def test_an_image_on_disk_given_to_a_registry_command_is_named_so(
    cli: Cli, argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [a.format(dir=tmp_path) for a in argv]
    line = cli(*argv).failed()
    command = " ".join(argv[:2] if argv[0] != "ratelimit" else argv[:1])
    place = next(a for a in argv[1:] if str(tmp_path) in a or a.startswith("./"))
    assert line == (
        f"derrick: error: {place} is a place on disk, and 'derrick {command}' takes a registry "
        "reference; give REGISTRY/REPOSITORY[:TAG] (docker://REF for a name that looks like a path)"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["image", "pull", "oci:{dir}:v1", "-o", "{dir}/out.tar"],
        ["image", "pull", "docker-archive:{dir}/a.tar", "-o", "{dir}/out"],
        ["image", "pull", "./layout", "-o", "{dir}/out"],
        ["image", "push", "{dir}/layout", "oci:{dir}/out"],
    ],
)
def test_an_image_on_disk_where_pull_or_push_takes_a_registry_is_named_so(
    cli: Cli, argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read as a reference, ``oci:DIR:v1`` was an invalid port and ``docker-archive:a.tar``
    the Docker Hub image ``docker-archive``; either is said to be on disk, as the registry
    commands say it, with the command that copies from disk."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layout").mkdir()
    argv = [a.format(dir=tmp_path) for a in argv]
    res = cli(*argv)
    place = argv[2] if argv[1] == "pull" else argv[3]
    assert res.code == 2
    assert res.failed() == (
        f"derrick: error: {place} is a place on disk, and 'derrick image {argv[1]}' takes a "
        "registry reference; give REGISTRY/REPOSITORY[:TAG] (docker://REF for a name that "
        "looks like a path); 'derrick image copy SRC DST' copies between any two places"
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tar").exists()


def test_a_sync_from_disk_is_named_so(cli: Cli, tmp_path: Path) -> None:
    for source in (f"oci:{tmp_path}", "./layout"):
        line = cli("sync", source, "127.0.0.1:5000/mirror/app").failed()
        assert line == (
            f"derrick: error: {source} is a place on disk, and a sync copies from a registry "
            "repository; give REGISTRY/REPOSITORY; an image on disk is copied, not synced"
        )


def test_a_registry_with_a_path_names_the_path_once(cli: Cli) -> None:
    for argv in (["login", "127.0.0.1:5000/team"], ["repo", "ls", "127.0.0.1:5000/team"]):
        line = cli(*argv).failed()
        assert line == (
            'derrick: error: invalid registry "127.0.0.1:5000/team": a registry has no path '
            "(/team); a registry is host[:port], e.g. docker.io, ghcr.io or localhost:5000"
        )


@pytest.mark.parametrize(
    "argv",
    [
        ["tag", "ls", "localhost:5000"],
        ["manifest", "head", "127.0.0.1:5000"],
        ["image", "inspect", "registry.example:443"],
        ["image", "copy", "localhost:5000/team/app:1", "localhost:5001"],
        ["image", "pull", "localhost:5000", "-o", "app.tar"],
    ],
)
def test_a_registry_where_an_image_belongs_is_named_so(
    cli: Cli, argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Docker's grammar reads localhost:5000 as the Hub image library/localhost tagged 5000,
    # which is never what was meant: no request may go to Docker Hub for it.
    monkeypatch.chdir(tmp_path)
    bare = next(a for a in argv[2:] if "/" not in a and a[:1].isalnum() and ":" in a)
    line = cli(*argv).failed()
    assert line == (
        f"derrick: error: {bare} is a registry (host:port), not an image; write "
        f"{bare}/REPOSITORY[:TAG] (docker://{bare} for the Docker Hub image "
        f"{bare.split(':')[0]}, tagged {bare.split(':')[1]})"
    )


def test_a_location_prefix_without_a_path_says_so(cli: Cli) -> None:
    for text, kind in (("oci::", "oci"), ("oci-archive::v1", "oci-archive")):
        line = cli("image", "inspect", text).failed()
        assert line == f"derrick: error: {text!r} names no path; write {kind}:PATH"


def test_malformed_reference_subprocess() -> None:
    r = run_subprocess("manifest", "get", "127.0.0.1:5000/UPPER/case:v1")
    line = r.failed()
    assert r.code == 1
    assert "UPPER/case" in line and "lowercase" in line


# -- a registry answering garbage ------------------------------------------------------------

HTML = "<!doctype html><html><head><title>Welcome</title></head><body>Hello</body></html>"


def _garbage_route(single: LayoutImage) -> Callable[[RecordedRequest], Reply | None]:
    manifest = single.top_bytes
    deep = b"[" * 200_000 + b"]" * 200_000

    def route(req: RecordedRequest) -> Reply | None:
        p = req.route
        if p == "/v2/":
            return Reply(200, b"{}", {"Content-Type": "application/json"})
        if p == "/v2/html/repo/tags/list":
            return Reply.text(HTML)
        if p == "/v2/notalist/repo/tags/list":
            return Reply(200, b'{"name": "x", "tags": "v1"}', {"Content-Type": "application/json"})
        if p == "/v2/loop/repo/tags/list":
            headers = {"Link": '</v2/loop/repo/tags/list?n=1>; rel="next"'}
            return Reply(200, b'{"name": "loop/repo", "tags": ["a"]}', headers)
        if p == "/v2/deep/repo/tags/list":
            return Reply(200, deep, {"Content-Type": "application/json"})
        if p == "/v2/html/repo/manifests/v1":
            return Reply.text(HTML)
        if p == "/v2/broken/repo/manifests/v1":
            return Reply(200, manifest[:-7], {"Content-Type": OCI_MANIFEST})
        if p == "/v2/deep/repo/manifests/v1":
            return Reply(200, deep, {"Content-Type": OCI_MANIFEST})
        if p == "/v2/notmanifest/repo/manifests/v1":
            return Reply(200, b'{"hello": "world"}', {"Content-Type": "application/json"})
        if p == "/v2/lying/repo/manifests/v1":
            headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": "sha256:" + "1" * 64}
            return Reply(200, manifest, headers)
        if p.startswith("/v2/lying/repo/manifests/sha256:"):
            return Reply(200, manifest + b" ", {"Content-Type": OCI_MANIFEST})
        if p.startswith("/v2/lying/repo/blobs/"):
            return Reply(200, b"not the blob you asked for")
        if p.startswith("/v2/short/repo/"):
            # promises more than it sends, then hangs up
            headers = {
                "Content-Length": "100000",
                "Connection": "close",
                "Content-Type": OCI_MANIFEST,
            }
            return Reply(200, manifest[:20], headers)
        if p.startswith("/v2/slow/"):
            time.sleep(1.5)
            return Reply(200, manifest, {"Content-Type": OCI_MANIFEST})
        if p.startswith("/v2/errors/"):
            return Reply(500, b"[" * 100_000, {"Content-Type": "application/json"})
        return Reply(404, b"<html>404 Not Found</html>", {"Content-Type": "text/html"})

    return route


@pytest.fixture
def garbage(test_images: dict[str, LayoutImage]) -> Iterator[FaultProxy]:
    with FaultProxy(route=_garbage_route(test_images["single"])) as server:
        yield server


def test_html_instead_of_tag_list(cli: Cli, garbage: FaultProxy) -> None:
    line = cli("tag", "ls", f"{garbage.host}/html/repo").failed()
    assert "html/repo" in line
    assert "not JSON" in line
    assert "really a container registry" in line


def test_tag_list_of_the_wrong_shape(cli: Cli, garbage: FaultProxy) -> None:
    line = cli("tag", "ls", f"{garbage.host}/notalist/repo").failed()
    assert "no list of strings under 'tags'" in line
    line = cli("tag", "ls", f"{garbage.host}/loop/repo", "--limit", "1").failed()
    assert "pagination loops" in line


def test_deeply_nested_json(cli: Cli, garbage: FaultProxy) -> None:
    line = cli("tag", "ls", f"{garbage.host}/deep/repo").failed()
    assert "deep/repo" in line
    line = cli("manifest", "get", f"{garbage.host}/deep/repo:v1").failed()
    assert "deep/repo:v1" in line and "manifest" in line
    line = cli("manifest", "get", f"{garbage.host}/errors/repo:v1", "--retries", "0").failed()
    assert "HTTP 500" in line


def test_invalid_manifests(cli: Cli, garbage: FaultProxy) -> None:
    line = cli("manifest", "get", f"{garbage.host}/broken/repo:v1").failed()
    assert "broken/repo:v1" in line and "not valid JSON" in line
    line = cli("image", "inspect", f"{garbage.host}/html/repo:v1").failed()
    assert "html/repo:v1" in line and "not valid JSON" in line
    line = cli("manifest", "get", f"{garbage.host}/notmanifest/repo:v1").failed()
    assert "unsupported manifest media type" in line


def test_content_not_matching_its_digest(
    cli: Cli, garbage: FaultProxy, test_images: dict[str, LayoutImage], tmp_path: Path
) -> None:
    single = test_images["single"]
    line = cli("manifest", "get", f"{garbage.host}/lying/repo:v1").failed()
    assert "Docker-Content-Digest" in line and "does not match" in line
    line = cli("manifest", "get", f"{garbage.host}/lying/repo@{single.digest}").failed()
    assert "not the one asked for" in line

    layer = single.image.layers[0].digest
    out = tmp_path / "out"
    out.mkdir()
    target = out / "layer"
    line = cli("blob", "get", f"{garbage.host}/lying/repo", layer, "-o", target).failed()
    assert layer in line and "does not match" in line
    assert list(out.iterdir()) == []  # neither the file nor a temporary one
    r = cli("blob", "get", f"{garbage.host}/lying/repo", layer)
    r.failed()
    assert r.stdout == b""  # nothing unverified reached stdout


def test_web_server_that_is_not_a_registry(cli: Cli, garbage: FaultProxy) -> None:
    line = cli("manifest", "head", f"{garbage.host}/some/thing:v1").failed()
    assert "some/thing:v1" in line and "not found" in line
    line = cli("repo", "ls", garbage.host).failed()
    assert garbage.host in line


def test_server_errors_are_retried_then_reported(cli: Cli, seeded: SeededRegistries) -> None:
    reg = seeded.open.registry

    def route(req: RecordedRequest) -> Reply | None:
        if "/manifests/" in req.route:
            body = {"errors": [{"code": "UNKNOWN", "message": "storage backend on fire"}]}
            return Reply(503, json.dumps(body).encode(), {"Content-Type": "application/json"})
        return None

    with FaultProxy(reg.url, route=route) as proxy:
        ref = f"{proxy.host}/test/single:v1"
        line = cli("manifest", "get", ref, "--retries", "1").failed()
        assert len(proxy.requests_to("/v2/test/single/manifests/v1")) == 2
    assert "HTTP 503" in line and "storage backend on fire" in line
    assert "try again later" in line


def test_rate_limited(cli: Cli, seeded: SeededRegistries) -> None:
    reg = seeded.open.registry

    def route(req: RecordedRequest) -> Reply | None:
        if "/manifests/" in req.route:
            body = {"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}
            headers = {
                "Content-Type": "application/json",
                "Retry-After": "3600",
                "ratelimit-limit": "100;w=21600",
                "ratelimit-remaining": "0;w=21600",
            }
            return Reply(429, json.dumps(body).encode(), headers)
        return None

    with FaultProxy(reg.url, route=route) as proxy:
        line = cli("manifest", "get", f"{proxy.host}/test/single:v1").failed()
        # a Retry-After longer than derrick will wait is not waited for
        assert len(proxy.requests_to("/v2/test/single/manifests/v1")) == 1
    assert "rate limited" in line
    assert "0 of 100 pulls left per 6h" in line
    assert "try again in 3600 seconds" in line


def test_output_directory_missing(cli: Cli, seeded: SeededRegistries, tmp_path: Path) -> None:
    img = seeded.open["test/single"]
    target = tmp_path / "no" / "such" / "dir" / "blob"
    line = cli("blob", "get", f"{img.registry.host}/test/single", img.digest, "-o", target).failed()
    assert str(target.parent) in line


def test_connection_broken_mid_body(
    cli: Cli, garbage: FaultProxy, test_images: dict[str, LayoutImage], tmp_path: Path
) -> None:
    layer = test_images["single"].image.layers[0].digest
    out = tmp_path / "out"
    out.mkdir()
    line = cli("blob", "get", f"{garbage.host}/short/repo", layer, "-o", out / "layer").failed()
    assert "broke off" in line and "run the command again" in line
    # what arrived is kept beside the output, for the next run to resume, and said so
    kept = [p.name for p in out.iterdir()]
    assert kept in ([], [".layer.derrick-partial"])
    assert (f"{out / '.layer.derrick-partial'} is kept" in line) == bool(kept)
    line = cli("manifest", "get", f"{garbage.host}/short/repo:v1").failed()
    assert "broke off" in line


def test_timeout(cli: Cli, garbage: FaultProxy) -> None:
    argv = ["manifest", "get", f"{garbage.host}/slow/repo:v1", "--timeout", "0.3", "--retries", "0"]
    line = cli(*argv).failed()
    assert "timed out" in line and garbage.host in line
    assert "--timeout" in line


def test_unreadable_ca_cert(cli: Cli, seeded: SeededRegistries, tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("this is not a certificate\n")
    img = seeded.tls["test/single"]
    line = cli("manifest", "head", img.reference, "--ca-cert", bogus).failed()
    assert str(bogus) in line
    assert "--ca-cert" in line
