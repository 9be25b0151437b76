"""Authentication through the real CLI: login/logout, the token flow, where credentials go.

The test registries speak plain http on 127.0.0.1; derrick sends credentials over plain http
only to registries named ``--insecure``, so commands that log in pass it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from collections.abc import Iterator

import httpx
import pytest

from support.cli import Cli, Isolation, run_subprocess
from support.faultproxy import FaultProxy, RecordedRequest, Reply
from support.images import LayoutImage
from support.registry import RegistryProcess
from support.seed import SeededRegistries
from support.tokenserver import TokenServer


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def login_argv(reg: RegistryProcess, user: str) -> list[str]:
    return ["login", reg.host, "--insecure", "-u", user, "--password-stdin"]


# -- login / logout --------------------------------------------------------------------------


def test_login_basic_saves_config_and_logout_removes(
    cli: Cli, env: Isolation, seeded: SeededRegistries
) -> None:
    reg = seeded.basic.registry
    env.config_json.write_text(json.dumps({"auths": {}, "psFormat": "keep me"}))
    r = cli(*login_argv(reg, "tester"), stdin="tester-secret\n").ok()
    assert r.stdout == b""
    assert f"Login succeeded for {reg.host}" in r.err
    doc = json.loads(env.config_json.read_text())
    assert doc["auths"] == {reg.host: {"auth": b64("tester:tester-secret")}}
    assert doc["psFormat"] == "keep me"
    assert stat.S_IMODE(env.config_json.stat().st_mode) == 0o600
    assert not (env.home / ".docker").exists()

    r = cli("tag", "ls", f"{reg.host}/test/single", "--insecure").ok()
    assert r.out == "v1\n"

    r = cli("logout", reg.host).ok()
    assert f"Removed credentials for {reg.host}" in r.err
    doc = json.loads(env.config_json.read_text())
    assert doc == {"auths": {}, "psFormat": "keep me"}
    r = cli("logout", reg.host).ok()
    assert f"No saved credentials for {reg.host}" in r.err


def test_login_and_logout_answer_in_json(
    cli: Cli, env: Isolation, seeded: SeededRegistries
) -> None:
    reg = seeded.basic.registry
    r = cli(*login_argv(reg, "tester"), "--format", "json", stdin="tester-secret\n").ok()
    assert json.loads(r.out) == {"registry": reg.host, "saved": str(env.config_json)}
    assert r.err == ""
    for removed in (True, False):
        r = cli("logout", reg.host, "--format", "json").ok()
        assert json.loads(r.out) == {"registry": reg.host, "removed": removed}
        assert r.err == ""


def test_login_and_logout_take_the_registry_as_a_url_as_docker_login_does(
    cli: Cli, env: Isolation, seeded: SeededRegistries
) -> None:
    reg = seeded.basic.registry
    argv = login_argv(reg, "tester")
    argv[argv.index(reg.host)] = f"https://{reg.host}/v2/"
    r = cli(*argv, "--format", "json", stdin="tester-secret\n").ok()
    assert json.loads(r.out)["registry"] == reg.host
    assert set(json.loads(env.config_json.read_text())["auths"]) == {reg.host}
    r = cli("logout", f"http://{reg.host}", "--format", "json").ok()
    assert json.loads(r.out) == {"registry": reg.host, "removed": True}
    line = cli("logout", "ftp://host:5000").failed()
    assert line.startswith(
        'derrick: error: invalid registry "ftp://host:5000": a registry has no scheme'
    )


def test_a_user_name_without_a_password_is_refused_before_any_request(
    cli: Cli, env: Isolation, seeded: SeededRegistries
) -> None:
    reg = seeded.basic.registry
    offset = reg.log_size()
    ref = f"{reg.host}/test/single"
    for argv in (["tag", "ls", ref], ["manifest", "head", f"{ref}:v1"]):
        line = cli(*argv, "--insecure", "-u", "tester").failed()
        assert line == (
            "derrick: error: --username needs --password-stdin; "
            "pass the password or token on standard input"
        )
    line = cli("tag", "ls", ref, "--insecure", "--password-stdin", stdin="pw\n").failed()
    assert line == "derrick: error: --password-stdin needs --username"
    assert "/v2/" not in reg.log_since(offset)


def test_login_wrong_password_writes_nothing(
    cli: Cli, env: Isolation, seeded: SeededRegistries
) -> None:
    reg = seeded.basic.registry
    r = cli(*login_argv(reg, "tester"), stdin="wrong-password\n")
    line = r.failed()
    assert reg.host in line
    assert "wrong-password" not in r.err
    assert not env.config_json.exists()

    # nor is an existing entry replaced
    cli(*login_argv(reg, "tester"), stdin="tester-secret\n").ok()
    before = env.config_json.read_bytes()
    cli(*login_argv(reg, "other"), stdin="nope\n").failed()
    assert env.config_json.read_bytes() == before


def test_login_wrong_password_subprocess(env: Isolation, seeded: SeededRegistries) -> None:
    reg = seeded.basic.registry
    r = run_subprocess(*login_argv(reg, "tester"), stdin="wrong\n")
    line = r.failed()
    assert r.code == 1
    assert "credentials" in line or "authentication" in line
    assert not env.config_json.exists()


def test_login_token_registry_checks_with_token_service(
    cli: Cli, env: Isolation, seeded: SeededRegistries, token_log: TokenServer
) -> None:
    reg = seeded.token.registry
    cli(*login_argv(reg, "alice"), stdin="alice-secret\n").ok()
    log = token_log.log
    assert [(e.method, e.user, e.status) for e in log] == [("GET", "alice", 200)]
    doc = json.loads(env.config_json.read_text())
    assert doc["auths"][reg.host] == {"auth": b64("alice:alice-secret")}

    token_log.clear_log()
    env.config_json.unlink()
    line = cli(*login_argv(reg, "alice"), stdin="not-her-password\n").failed()
    assert "token service" in line and "refused" in line
    assert "derrick login" in line  # what to try
    assert [(e.user, e.status) for e in token_log.log] == [(None, 401)]
    assert not env.config_json.exists()


def test_login_over_plain_http_needs_insecure(
    cli: Cli, env: Isolation, seeded: SeededRegistries
) -> None:
    reg = seeded.basic.registry
    with FaultProxy(reg.url) as proxy:
        argv = ["login", proxy.host, "-u", "tester", "--password-stdin"]
        line = cli(*argv, stdin="tester-secret\n").failed()
        assert not any("authorization" in q.headers for q in proxy.requests)
    assert "--insecure" in line
    assert not env.config_json.exists()


@pytest.mark.parametrize("password", ["alice-secret", "WRONG"])
def test_login_token_registry_over_plain_http_needs_insecure(
    cli: Cli, env: Isolation, seeded: SeededRegistries, token_log: TokenServer, password: str
) -> None:
    """Held-back credentials prove nothing, even though an anonymous token opens ``/v2/``."""
    reg = seeded.token.registry
    argv = ["login", reg.host, "-u", "alice", "--password-stdin"]
    line = cli(*argv, stdin=password + "\n").failed()
    assert "not sent over plain http" in line
    assert "--insecure" in line
    assert password not in line
    assert not any(e.has_auth for e in token_log.log)
    assert not env.config_json.exists()


def test_login_token_registry_credentials_reach_token_service(
    cli: Cli, env: Isolation, seeded: SeededRegistries, token_log: TokenServer
) -> None:
    reg = seeded.token.registry
    r = cli(*login_argv(reg, "alice"), stdin="alice-secret\n").ok()
    assert f"Login succeeded for {reg.host}" in r.err
    assert [(e.has_auth, e.user, e.status) for e in token_log.log] == [(True, "alice", 200)]

    token_log.clear_log()
    env.config_json.unlink()
    r = cli(*login_argv(reg, "alice"), stdin="WRONG\n")
    line = r.failed()
    assert "refused the credentials" in line
    assert [(e.has_auth, e.user, e.status) for e in token_log.log] == [(True, None, 401)]
    assert not env.config_json.exists()


def test_login_basic_registry_credentials_answered_on_v2(
    cli: Cli, env: Isolation, seeded: SeededRegistries
) -> None:
    reg = seeded.basic.registry
    with FaultProxy(reg.url) as proxy:
        argv = ["login", proxy.host, "--insecure", "-u", "tester", "--password-stdin"]
        cli(*argv, stdin="tester-secret\n").ok()
        v2 = [(q.headers.get("authorization"), q.status) for q in proxy.requests_to("/v2/")]
        saved = proxy.host
    assert v2[-1] == ("Basic " + b64("tester:tester-secret"), 200)
    assert saved in json.loads(env.config_json.read_text())["auths"]

    with FaultProxy(reg.url) as proxy:
        argv = ["login", proxy.host, "--insecure", "-u", "tester", "--password-stdin"]
        line = cli(*argv, stdin="WRONG\n").failed()
        v2 = [(q.headers.get("authorization"), q.status) for q in proxy.requests_to("/v2/")]
        refused = proxy.host
    assert "rejected the credentials" in line
    assert v2[-1] == ("Basic " + b64("tester:WRONG"), 401)
    assert list(json.loads(env.config_json.read_text())["auths"]) == [saved]
    assert refused != saved


def test_login_to_a_registry_without_auth_fails(
    cli: Cli, env: Isolation, seeded: SeededRegistries
) -> None:
    """A registry that asks for no credentials cannot say whether they are right."""
    reg = seeded.open.registry
    line = cli(*login_argv(reg, "tester"), stdin="anything\n").failed()
    assert reg.host in line
    assert "no credentials" in line
    assert not env.config_json.exists()


def test_credentials_from_docker_auth_config(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, seeded: SeededRegistries
) -> None:
    reg = seeded.basic.registry
    doc = {"auths": {reg.host: {"auth": b64("other:other-secret")}}}
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", json.dumps(doc))
    r = cli("manifest", "head", seeded.basic["test/single"].reference, "--insecure").ok()
    assert r.out.strip() == seeded.basic["test/single"].digest


def test_identity_token_uses_refresh_grant(
    cli: Cli, env: Isolation, seeded: SeededRegistries, token_log: TokenServer
) -> None:
    reg = seeded.token.registry
    r = httpx.get(
        token_log.realm,
        params={"service": token_log.service, "offline_token": "true"},
        auth=("alice", "alice-secret"),
    )
    refresh = r.json()["refresh_token"]
    env.config_json.write_text(json.dumps({"auths": {reg.host: {"identitytoken": refresh}}}))
    token_log.clear_log()
    img = seeded.token["private/single"]
    r = cli("manifest", "head", img.reference, "--insecure").ok()
    assert r.out.strip() == img.digest
    (entry,) = token_log.log
    assert (entry.method, entry.grant_type, entry.user) == ("POST", "refresh_token", "alice")
    assert entry.client_id == "derrick"
    assert entry.scopes == ["repository:private/single:pull"]


# -- token scopes ----------------------------------------------------------------------------


def test_manifest_get_asks_for_pull_scope(
    cli: Cli, seeded: SeededRegistries, token_log: TokenServer
) -> None:
    img = seeded.token["private/single"]
    argv = ["manifest", "get", img.reference, "--format", "raw", "--insecure"]
    r = cli(*argv, "-u", "alice", "--password-stdin", stdin="alice-secret").ok()
    assert sha256(r.stdout) == img.digest
    assert token_log.requested_scopes() == ["repository:private/single:pull"]
    (entry,) = token_log.log
    assert entry.user == "alice" and entry.account == "alice"
    assert entry.service == token_log.service
    assert entry.granted_actions("private/single") == ["pull"]


def test_repo_ls_asks_for_catalog_scope(
    cli: Cli, seeded: SeededRegistries, token_log: TokenServer
) -> None:
    reg = seeded.token.registry
    argv = ["repo", "ls", reg.host, "--insecure", "-u", "admin", "--password-stdin"]
    r = cli(*argv, stdin="admin-secret").ok()
    assert "private/single" in r.out.split()
    assert token_log.requested_scopes() == ["registry:catalog:*"]


def test_catalog_denied_without_catalog_access(
    cli: Cli, seeded: SeededRegistries, token_log: TokenServer
) -> None:
    reg = seeded.token.registry
    argv = ["repo", "ls", reg.host, "--insecure", "-u", "alice", "--password-stdin"]
    line = cli(*argv, stdin="alice-secret").failed()
    assert line == (
        f"derrick: error: catalog of {reg.host}: access denied by {reg.host} (the credentials "
        "do not grant registry:catalog:*); the credentials in use lack that permission"
    )  # the catalog is no repository
    assert "registry:catalog:*" in token_log.requested_scopes()


def test_one_token_per_scope_within_a_command(
    cli: Cli, seeded: SeededRegistries, token_log: TokenServer, test_images: dict[str, LayoutImage]
) -> None:
    img = seeded.token["private/multi"]
    argv = ["image", "inspect", img.reference, "--platform", "linux/arm64", "--format", "json"]
    r = cli(*argv, "--insecure", "-u", "reader", "--password-stdin", stdin="reader-secret").ok()
    info = json.loads(r.out)
    assert info["manifestDigest"] == test_images["multi"].image_for("linux/arm64/v8").digest
    # index, child manifest and config blob: three registry calls, one token
    assert len(token_log.log) == 1
    assert token_log.requested_scopes() == ["repository:private/multi:pull"]
    assert token_log.log[0].user == "reader"

    token_log.clear_log()
    layer = test_images["multi"].image_for("linux/amd64").layers[1].digest
    r = cli("blob", "get", f"{img.registry.host}/public/multi", layer).ok()  # anonymous
    assert sha256(r.stdout) == layer
    assert [(e.user, e.scopes) for e in token_log.log] == [(None, ["repository:public/multi:pull"])]


def test_reader_gets_pull_only_token(
    cli: Cli, seeded: SeededRegistries, token_log: TokenServer
) -> None:
    img = seeded.token["private/docker"]
    argv = ["manifest", "head", img.reference, "--insecure", "-u", "reader", "--password-stdin"]
    r = cli(*argv, stdin="reader-secret").ok()
    assert r.out.strip() == img.digest
    (entry,) = token_log.log
    assert entry.user == "reader"
    assert entry.granted == [{"type": "repository", "name": "private/docker", "actions": ["pull"]}]


def test_anonymous_is_refused_on_private(
    cli: Cli, seeded: SeededRegistries, token_log: TokenServer
) -> None:
    img = seeded.token["private/single"]
    line = cli("manifest", "get", img.reference).failed()
    assert "private/single" in line
    assert "derrick login" in line
    assert [e.user for e in token_log.log] == [None]


def test_client_reuses_one_token_across_calls(
    seeded: SeededRegistries, token_log: TokenServer
) -> None:
    """One RegistryClient, several calls with the same scope: one token (library API)."""
    from derrick.auth.credentials import Credential, CredentialStore
    from derrick.reference import Reference
    from derrick.registry import RegistryClient

    reg = seeded.token.registry
    store = CredentialStore(overrides={reg.host: Credential("alice", "alice-secret")})
    with RegistryClient(credentials=store, insecure=True) as client:
        ref = Reference.parse(seeded.token["private/eight"].reference)
        assert client.list_tags(ref) == ["v1"]
        client.head_manifest(ref)
        assert client.auth.token_requests == [(reg.host, ("repository:private/eight:pull",))]
    tokens = [e for e in token_log.log if e.status == 200]
    assert len(tokens) == 1
    assert tokens[0].granted_actions("private/eight") == ["pull"]


# -- credentials never go elsewhere ----------------------------------------------------------


def _storage(layout: LayoutImage) -> FaultProxy:
    """A "storage" server that serves the layout's blobs at ``/blobs/<digest>``."""

    def route(req: RecordedRequest) -> Reply | None:
        digest = req.route.rsplit("/", 1)[-1]
        if req.route.startswith("/blobs/") and digest in layout.blob_digests:
            body = layout.blob_path(digest).read_bytes()
            return Reply(200, body, {"Content-Type": "application/octet-stream"})
        return Reply(404, b"no such blob")

    return FaultProxy(route=route)


@pytest.fixture
def storage(test_images: dict[str, LayoutImage]) -> Iterator[FaultProxy]:
    with _storage(test_images["single"]) as server:
        yield server


def _redirecting_proxy(reg: RegistryProcess, storage_base: str) -> FaultProxy:
    def route(req: RecordedRequest) -> Reply | None:
        if req.method == "GET" and "/blobs/sha256:" in req.route:
            # answer only once authorised, as a real registry would
            if "authorization" not in req.headers and reg.auth != "none":
                return None
            digest = req.route.rsplit("/", 1)[-1]
            return Reply.redirect(f"{storage_base}/blobs/{digest}?X-Amz-Signature=abc123")
        return None

    return FaultProxy(reg.url, route=route)


@pytest.mark.parametrize("storage_host", ["localhost", "127.0.0.1"])
@pytest.mark.parametrize("mode", ["basic", "token"])
def test_blob_redirect_drops_authorization(
    cli: Cli,
    seeded: SeededRegistries,
    storage: FaultProxy,
    test_images: dict[str, LayoutImage],
    storage_host: str,
    mode: str,
) -> None:
    label, repo, user, password = {
        "basic": ("basic", "test/single", "tester", "tester-secret"),
        "token": ("token", "private/single", "alice", "alice-secret"),
    }[mode]
    reg = seeded.all()[label].registry
    layer = test_images["single"].image.layers[0].digest
    # 127.0.0.1 on another port is another origin too
    with _redirecting_proxy(reg, f"http://{storage_host}:{storage.port}") as proxy:
        argv = ["blob", "get", f"{proxy.host}/{repo}", layer, "--insecure"]
        r = cli(*argv, "-u", user, "--password-stdin", stdin=password).ok()
        assert sha256(r.stdout) == layer
        blob_requests = [q for q in proxy.requests if "/blobs/" in q.route]
    # the registry saw the credentials...
    scheme = "basic" if mode == "basic" else "bearer"
    assert any(q.headers.get("authorization", "").lower().startswith(scheme) for q in blob_requests)
    # ...the storage host did not
    (got,) = storage.requests
    assert got.route == f"/blobs/{layer}"
    assert "authorization" not in got.headers
    assert password not in json.dumps(got.headers)


def test_manifest_redirect_to_same_origin_keeps_authorization(
    cli: Cli, seeded: SeededRegistries
) -> None:
    """A redirect within the registry's own origin still carries the credentials."""
    reg = seeded.basic.registry
    img = seeded.basic["test/single"]

    def route(req: RecordedRequest) -> Reply | None:
        if req.route == "/v2/test/single/manifests/moved":
            return Reply.redirect("/v2/test/single/manifests/v1")
        return None

    with FaultProxy(reg.url, route=route) as proxy:
        argv = ["manifest", "head", f"{proxy.host}/test/single:moved", "--insecure"]
        r = cli(*argv, "-u", "tester", "--password-stdin", stdin="tester-secret").ok()
        assert r.out.strip() == img.digest
        followed = proxy.requests_to("/v2/test/single/manifests/v1")
    # the first try goes without credentials (no challenge seen yet); the retry carries them
    assert len(followed) == 2
    assert "authorization" in followed[-1].headers


def test_credentials_not_sent_over_plain_http_without_insecure(
    cli: Cli, seeded: SeededRegistries
) -> None:
    reg = seeded.basic.registry
    with FaultProxy(reg.url) as proxy:
        argv = ["tag", "ls", f"{proxy.host}/test/single", "-u", "tester", "--password-stdin"]
        line = cli(*argv, stdin="tester-secret").failed()
        assert proxy.requests
        assert not any("authorization" in q.headers for q in proxy.requests)
    assert "--insecure" in line


@pytest.mark.parametrize("how", ["login", "flags"])
@pytest.mark.parametrize("command", ["tag ls", "manifest head"])
def test_token_registry_says_credentials_held_back(
    cli: Cli,
    env: Isolation,
    seeded: SeededRegistries,
    token_log: TokenServer,
    how: str,
    command: str,
) -> None:
    """Not "lack permission": no credentials went anywhere, so none were judged."""
    reg = seeded.token.registry
    img = seeded.token["private/single"]
    target = img.reference if command == "manifest head" else f"{reg.host}/private/single"
    argv = [*command.split(), target]
    stdin = None
    if how == "login":
        env.config_json.write_text(json.dumps({"auths": {reg.host: {"auth": b64("alice:x")}}}))
    else:
        argv += ["-u", "alice", "--password-stdin"]
        stdin = "alice-secret"
    line = cli(*argv, stdin=stdin).failed()
    assert "not sent over plain http" in line
    assert "--insecure" in line
    assert "permission" not in line and "do not grant" not in line
    assert token_log.log and not any(e.has_auth for e in token_log.log)


def test_credentials_that_cannot_be_sent_are_not_blamed(
    seeded: SeededRegistries, token_log: TokenServer
) -> None:
    """A user name without a password answers no token request: that is no lack of access."""
    from derrick.auth.credentials import Credential
    from derrick.errors import UnauthorizedError
    from derrick.reference import Reference
    from derrick.registry import RegistryClient

    ref = Reference.parse(seeded.token["private/single"].reference)
    client = RegistryClient(credentials=lambda _: Credential("alice"), insecure=True)
    with client, pytest.raises(UnauthorizedError) as info:
        client.list_tags(ref)
    assert "authentication required" in str(info.value)
    assert "permission" not in str(info.value)
    assert [(e.has_auth, e.user) for e in token_log.log] == [(False, None)]


# -- TLS -------------------------------------------------------------------------------------


def test_tls_with_ca_cert(cli: Cli, seeded: SeededRegistries) -> None:
    reg = seeded.tls.registry
    img = seeded.tls["test/single"]
    r = cli("manifest", "get", img.reference, "--format", "raw", "--ca-cert", reg.ca_cert).ok()
    assert sha256(r.stdout) == img.digest
    r = cli("tag", "ls", f"localhost:{reg.port}/test/single", "--ca-cert", reg.ca_cert).ok()
    assert r.out == "v1\n"


def test_tls_without_ca_cert_fails(cli: Cli, seeded: SeededRegistries) -> None:
    img = seeded.tls["test/single"]
    for argv in (
        ["manifest", "get", img.reference],
        ["tag", "ls", f"{img.registry.host}/test/single"],
        ["repo", "ls", img.registry.host],
    ):
        line = cli(*argv).failed()
        assert "--ca-cert" in line
        assert "certificate" in line
        assert img.registry.host in line


def test_tls_without_ca_cert_subprocess(seeded: SeededRegistries) -> None:
    img = seeded.tls["test/single"]
    r = run_subprocess("manifest", "head", img.reference)
    line = r.failed()
    assert r.code == 1
    assert "--ca-cert" in line
    assert r.stdout == b""


def test_debug_log_shows_no_secrets(seeded: SeededRegistries, token_log: TokenServer) -> None:
    img = seeded.token["private/single"]
    argv = ["image", "inspect", img.reference, "--insecure", "--debug", "-u", "alice"]
    r = run_subprocess(*argv, "--password-stdin", stdin="alice-secret\n").ok()
    assert f"Digest:     {img.digest}" in r.out
    assert "> GET" in r.err  # the requests are logged...
    assert "/token?" in r.err
    assert "alice-secret" not in r.err  # ...without the password
    assert b64("alice:alice-secret") not in r.err
    assert "Bearer" not in r.err and "eyJ" not in r.err  # nor the token
    assert len(token_log.log) == 1
