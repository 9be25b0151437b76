"""Credentials and TLS: where secrets go (and do not), certificates, outbound proxies.

Already covered elsewhere, and not repeated here: credentials are dropped on a redirect to
another host and never sent over plain http to a registry not named ``--insecure``, and
``config.json`` is written 0600 (``test_auth.py``); a registry with a certificate from an
unknown CA fails with a message naming ``--ca-cert`` (``test_auth.py``).

Here: ``--debug`` output of a token-registry pull holds neither the password nor any token the
token server issued (its log lists them) nor a storage URL's signature; a login replaces a
group-readable ``config.json`` with a private one; per-registry TLS files in
``$DERRICK_CERTS_DIR/HOST[:PORT]/`` (``ca.crt``, ``client.cert``, ``client.key``) against a
registry that requires a client certificate; ``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY``
with a recording :class:`~support.faultproxy.TunnelProxy`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.cli import Cli, Isolation, run_subprocess
from support.faultproxy import FaultProxy, RecordedRequest, Reply, TunnelProxy
from support.images import LayoutImage
from support.rawclient import RawClient
from support.registry import RegistryProcess, start_registry
from support.seed import SeededRegistries
from support.tls import TLSMaterial
from support.tokenserver import TokenServer


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def archive_manifest_digest(path: Path) -> str:
    """The digest of the one image manifest in a docker-archive written by derrick."""
    with tarfile.open(path) as tf:
        f = tf.extractfile("index.json")
        assert f is not None
        return str(json.loads(f.read())["manifests"][0]["digest"])


# -- secrets in --debug output and errors ----------------------------------------------------


def test_debug_pull_from_token_registry_shows_no_secret(
    seeded: SeededRegistries, token_log: TokenServer, tmp_path: Path
) -> None:
    img = seeded.token["private/eight"]
    out = tmp_path / "eight.tar"
    argv = ["image", "pull", img.reference, "-o", out, "--insecure", "--debug", "-u", "alice"]
    r = run_subprocess(*argv, "--password-stdin", stdin="alice-secret\n").ok()
    assert archive_manifest_digest(out) == img.digest
    assert "/blobs/sha256:" in r.err and "/token?" in r.err  # the requests are logged...
    issued = [t for e in token_log.log for t in e.issued]
    assert issued  # ...and tokens were issued, but none of them shows
    for secret in ["alice-secret", b64("alice:alice-secret"), *issued]:
        assert secret not in r.err
    assert "Bearer" not in r.err and "Basic " not in r.err


def test_debug_with_identity_token_shows_no_secret(
    seeded: SeededRegistries, token_log: TokenServer, env: Isolation
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
    res = run_subprocess("image", "inspect", img.reference, "--insecure", "--debug").ok()
    assert img.digest in res.out
    issued = [t for e in token_log.log for t in e.issued]
    assert [e.grant_type for e in token_log.log] == ["refresh_token"] and issued
    for secret in [refresh, *issued]:
        assert secret not in res.err


def test_wrong_password_with_debug_shows_no_secret(
    seeded: SeededRegistries, token_log: TokenServer, tmp_path: Path
) -> None:
    img = seeded.token["private/single"]
    argv = ["image", "pull", img.reference, "-o", tmp_path / "x.tar", "--insecure", "--debug"]
    r = run_subprocess(*argv, "-u", "alice", "--password-stdin", stdin="hunter2-wrong\n")
    assert r.code == 1 and "Traceback" not in r.err
    line = r.err_lines[-1]
    assert line.startswith("derrick: error: ") and "refused the credentials" in line
    assert "hunter2-wrong" not in r.err and b64("alice:hunter2-wrong") not in r.err
    assert [p.name for p in tmp_path.iterdir() if "x.tar" in p.name] == []


def test_debug_redirect_to_storage_hides_the_signature(
    seeded: SeededRegistries, test_images: dict[str, LayoutImage]
) -> None:
    layout = test_images["single"]
    layer = layout.image.layers[0].digest

    def storage_route(req: RecordedRequest) -> Reply | None:
        return Reply(200, layout.blob_path(layer).read_bytes())

    def registry_route(req: RecordedRequest) -> Reply | None:
        if req.method == "GET" and req.route.endswith(f"/blobs/{layer}"):
            if "authorization" not in req.headers:
                return None  # the registry challenges first
            query = "X-Amz-Credential=AKIDSECRETKEY&X-Amz-Signature=f00dfacesecret&x=1"
            return Reply.redirect(f"http://localhost:{storage.port}/b/{layer}?{query}")
        return None

    reg = seeded.basic.registry
    with (
        FaultProxy(route=storage_route) as storage,
        FaultProxy(reg.url, route=registry_route) as proxy,
    ):
        argv = ["blob", "get", f"{proxy.host}/test/single", layer, "--insecure", "--debug"]
        r = run_subprocess(*argv, "-u", "tester", "--password-stdin", stdin="tester-secret\n")
        r.ok()
        (got,) = storage.requests
    assert "sha256:" + hashlib.sha256(r.stdout).hexdigest() == layer
    assert "authorization" not in got.headers
    assert "X-Amz-Signature=REDACTED" in r.err and "X-Amz-Credential=REDACTED" in r.err
    for secret in ["f00dfacesecret", "AKIDSECRETKEY", "tester-secret", b64("tester:tester-secret")]:
        assert secret not in r.err


def test_login_makes_an_existing_config_private(
    cli: Cli, env: Isolation, seeded: SeededRegistries
) -> None:
    env.config_json.write_text(json.dumps({"auths": {}, "credsStore": ""}))
    env.config_json.chmod(0o644)
    reg = seeded.basic.registry
    argv = ["login", reg.host, "--insecure", "-u", "tester", "--password-stdin"]
    cli(*argv, stdin="tester-secret\n").ok()
    assert stat.S_IMODE(env.config_json.stat().st_mode) == 0o600
    assert [p.name for p in env.docker_config.iterdir()] == ["config.json"]  # no temp file


# -- TLS: certs.d, client certificates -------------------------------------------------------


@pytest.fixture(scope="module")
def client_cert_registry(
    tmp_path_factory: pytest.TempPathFactory,
    tls_material: TLSMaterial,
    test_images: dict[str, LayoutImage],
) -> Iterator[RegistryProcess]:
    """A TLS registry that requires a client certificate signed by the test CA."""
    reg = start_registry(
        tmp_path_factory.mktemp("registry-mtls"),
        name="registry-mtls",
        tls=tls_material,
        client_cas=True,
    )
    try:
        with RawClient(reg) as raw:
            raw.push_layout(test_images["single"], "mtls/single", "v1")
        yield reg
    finally:
        reg.stop()


def certs_dir_for(env: Isolation, host: str, *files: Path) -> Path:
    d = env.certs_dir / host
    d.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, d / f.name)
    return d


def test_client_certificate_required(
    cli: Cli,
    env: Isolation,
    client_cert_registry: RegistryProcess,
    tls_material: TLSMaterial,
    test_images: dict[str, LayoutImage],
    tmp_path: Path,
) -> None:
    reg = client_cert_registry
    ref = f"{reg.host}/mtls/single:v1"
    out = tmp_path / "out"
    out.mkdir()
    started = time.monotonic()
    line = cli("image", "pull", ref, "-o", out / "a.tar", "--ca-cert", reg.ca_cert).failed()
    assert time.monotonic() - started < 3  # a refused certificate is not retried
    assert f"{reg.host} refused the TLS connection: it asks for a client certificate" in line
    assert f"{env.certs_dir / reg.host}/client.cert and client.key" in line
    assert list(out.iterdir()) == []

    # Docker's convention: ca.crt, client.cert and client.key in the host's directory.
    certs_dir_for(env, reg.host, tls_material.ca_cert, tls_material.client_cert)
    shutil.copy(tls_material.client_key, env.certs_dir / reg.host / "client.key")
    cli("image", "pull", ref, "-o", out / "a.tar").ok()
    assert archive_manifest_digest(out / "a.tar") == test_images["single"].digest
    r = cli("manifest", "head", f"{reg.host}/mtls/single:v1").ok()
    assert r.out.strip() == test_images["single"].digest


def test_client_certificate_with_ca_cert_option(
    cli: Cli, env: Isolation, client_cert_registry: RegistryProcess, tls_material: TLSMaterial
) -> None:
    """The client key pair from the certs dir, the CA from --ca-cert."""
    reg = client_cert_registry
    d = certs_dir_for(env, reg.host, tls_material.client_cert, tls_material.client_key)
    assert sorted(p.name for p in d.iterdir()) == ["client.cert", "client.key"]
    ref = f"{reg.host}/mtls/single:v1"
    line = cli("manifest", "head", ref).failed()  # the CA is unknown without either
    assert "could not be verified" in line and f"{d}/ca.crt" in line and "--ca-cert" in line
    cli("manifest", "head", ref, "--ca-cert", reg.ca_cert).ok()


def test_certs_dir_ca_for_a_tls_registry(
    cli: Cli, env: Isolation, seeded: SeededRegistries, tls_material: TLSMaterial
) -> None:
    img = seeded.tls["test/single"]
    port = img.registry.port
    certs_dir_for(env, f"127.0.0.1:{port}", tls_material.ca_cert)
    assert cli("manifest", "head", img.reference).ok().out.strip() == img.digest
    # the directory is per host name: localhost:PORT is another one
    line = cli("manifest", "head", f"localhost:{port}/test/single:v1").failed()
    assert f"{env.certs_dir}/localhost:{port}/ca.crt" in line
    certs_dir_for(env, f"localhost:{port}", tls_material.ca_cert)
    cli("manifest", "head", f"localhost:{port}/test/single:v1").ok()


# -- outbound proxies ------------------------------------------------------------------------


@pytest.fixture
def tunnel() -> Iterator[TunnelProxy]:
    with TunnelProxy() as t:
        yield t


def test_https_proxy_is_used(
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    seeded: SeededRegistries,
    tunnel: TunnelProxy,
    tmp_path: Path,
) -> None:
    img = seeded.tls["test/eight"]
    monkeypatch.setenv("HTTPS_PROXY", tunnel.url)
    out = tmp_path / "eight.tar"
    cli("image", "pull", img.reference, "-o", out, "--ca-cert", img.registry.ca_cert).ok()
    assert archive_manifest_digest(out) == img.digest
    assert tunnel.targets and set(tunnel.targets) == {img.registry.host}
    assert all(line.startswith("CONNECT ") for line in tunnel.lines)


def test_no_proxy_bypasses_the_proxy(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, seeded: SeededRegistries, tunnel: TunnelProxy
) -> None:
    img = seeded.tls["test/single"]
    monkeypatch.setenv("HTTPS_PROXY", tunnel.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    r = cli("manifest", "head", img.reference, "--ca-cert", img.registry.ca_cert).ok()
    assert r.out.strip() == img.digest
    assert tunnel.lines == []


def test_http_proxy_for_a_plain_http_registry(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, seeded: SeededRegistries, tunnel: TunnelProxy
) -> None:
    img = seeded.open["test/single"]
    monkeypatch.setenv("HTTP_PROXY", tunnel.url)
    r = cli("manifest", "get", img.reference, "--format", "raw").ok()
    assert "sha256:" + hashlib.sha256(r.stdout).hexdigest() == img.digest
    assert set(tunnel.targets) == {img.registry.host}
    assert any(
        line.startswith(f"GET http://{img.registry.host}/v2/test/single/manifests/v1 ")
        for line in tunnel.lines
    )
