"""The test harness itself works: registries, token server, TLS, images and seeding.

Only plain httpx (and the harness's own helpers) are used here, never derrick.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import ssl
import tarfile
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from support.images import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    EMPTY_TAR_DIFF_ID,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    REF_NAME,
    LayoutImage,
    generate_all,
    make_big_image,
)
from support.rawclient import MANIFEST_ACCEPT, RawClient, parse_challenge
from support.registry import RegistryProcess, start_registry
from support.seed import SEEDED_NAMES, SeededRegistries
from support.tls import TLSMaterial
from support.tokenserver import TokenServer, decode_jwt, key_id

# -- helpers ---------------------------------------------------------------------------------


def get_token(
    server: TokenServer, scopes: list[str], auth: tuple[str, str] | None = None, **extra: str
) -> httpx.Response:
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("service", extra.pop("service", server.service))
    ]
    params += [("scope", s) for s in scopes]
    params += list(extra.items())
    return httpx.get(server.realm, params=params, auth=auth)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": MANIFEST_ACCEPT}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- registries answer -----------------------------------------------------------------------


def test_open_registry_answers_200(registry_open: RegistryProcess) -> None:
    with registry_open.client() as c:
        r = c.get("/v2/")
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert registry_open.url == f"http://{registry_open.host}"
    assert registry_open.host.startswith("127.0.0.1:")
    assert registry_open.ca_cert is None and registry_open.credentials is None


def test_token_registry_challenges_with_bearer(
    registry_token: RegistryProcess, token_server: TokenServer
) -> None:
    with registry_token.client() as c:
        r = c.get("/v2/")
        assert r.status_code == 401
        scheme, params = parse_challenge(r.headers["www-authenticate"])
        assert scheme == "bearer"
        assert params == {"realm": token_server.realm, "service": token_server.service}

        r = c.get("/v2/private/single/manifests/v1")
        scheme, params = parse_challenge(r.headers["www-authenticate"])
        assert r.status_code == 401
        assert params["scope"] == "repository:private/single:pull"


def test_basic_registry_requires_credentials(
    registry_basic: RegistryProcess, seeded_registries: SeededRegistries
) -> None:
    assert registry_basic.credentials == ("tester", "tester-secret")
    with registry_basic.client() as c:
        r = c.get("/v2/")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Basic realm="derrick-test"'
        assert c.get("/v2/", auth=("tester", "wrong")).status_code == 401
        assert c.get("/v2/", auth=("nobody", "tester-secret")).status_code == 401
        assert c.get("/v2/", auth=registry_basic.credentials).status_code == 200
        assert c.get("/v2/", auth=("other", "other-secret")).status_code == 200
        r = c.get(
            "/v2/test/single/manifests/v1",
            auth=registry_basic.credentials,
            headers={"Accept": MANIFEST_ACCEPT},
        )
    assert r.status_code == 200
    assert sha256(r.content) == seeded_registries.basic["test/single"].digest


def test_tls_registry_verifies_with_test_ca(
    registry_tls: RegistryProcess, tls_material: TLSMaterial
) -> None:
    assert registry_tls.scheme == "https"
    assert registry_tls.url == f"https://{registry_tls.host}"
    assert registry_tls.ca_cert == tls_material.ca_cert
    r = httpx.get(registry_tls.url + "/v2/", verify=tls_material.ssl_context())
    assert r.status_code == 200
    # localhost is in the certificate too
    r = httpx.get(f"https://localhost:{registry_tls.port}/v2/", verify=tls_material.ssl_context())
    assert r.status_code == 200
    # the system trust store does not know the test CA
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(registry_tls.url + "/v2/", verify=ssl.create_default_context())
    # and plain HTTP is not served on that port
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{registry_tls.host}/v2/").raise_for_status()

    cert = x509.load_pem_x509_certificate(tls_material.server_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sorted(p.name for p in tls_material.ca_dir.iterdir()) == ["ca.crt"]


def test_registry_log_is_captured(registry_open: RegistryProcess) -> None:
    offset = registry_open.log_size()
    with registry_open.client() as c:
        c.get("/v2/no/such/repo/manifests/latest", headers={"User-Agent": "harness-probe/1"})
    new = registry_open.log_since(offset)
    assert "harness-probe/1" in new
    assert "GET /v2/no/such/repo/manifests/latest" in new
    assert "listening on 127.0.0.1:" in registry_open.log_text()


# -- token server ----------------------------------------------------------------------------


def test_token_is_a_jwt_the_registry_accepts(
    registry_token: RegistryProcess,
    token_log: TokenServer,
    seeded_registries: SeededRegistries,
) -> None:
    r = get_token(token_log, ["repository:private/single:pull"], auth=("alice", "alice-secret"))
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == token_log.expires_in
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["issued_at"])

    header, claims = decode_jwt(body["token"])
    assert header["alg"] == "ES256"
    assert header["kid"] == token_log.kid
    assert re.fullmatch(r"([A-Z2-7]{4}:){11}[A-Z2-7]{4}", header["kid"])
    assert claims["aud"] == token_log.service
    assert claims["iss"] == token_log.issuer
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == token_log.expires_in
    assert claims["access"] == [
        {"type": "repository", "name": "private/single", "actions": ["pull"]}
    ]

    with registry_token.client() as c:
        m = c.get("/v2/private/single/manifests/v1", headers=bearer(body["token"]))
    assert m.status_code == 200
    assert sha256(m.content) == seeded_registries.token["private/single"].digest
    assert m.headers["docker-content-digest"] == seeded_registries.token["private/single"].digest

    [entry] = token_log.log
    assert entry.method == "GET" and entry.user == "alice" and entry.grant_type is None
    assert entry.service == token_log.service
    assert entry.scopes == ["repository:private/single:pull"]
    assert entry.granted == claims["access"]


def test_kid_is_derived_from_the_signing_certificate(token_server: TokenServer) -> None:
    cert = x509.load_pem_x509_certificate(token_server.cert_path.read_bytes())
    public = cert.public_key()
    assert key_id(public) == token_server.kid  # type: ignore[arg-type]
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import base64

    expected = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    assert len(expected) == 48 and "=" not in expected
    assert token_server.kid.replace(":", "") == expected


def test_oauth2_password_and_refresh_grants(
    registry_token: RegistryProcess,
    token_log: TokenServer,
    seeded_registries: SeededRegistries,
) -> None:
    r = httpx.post(
        token_log.realm,
        data={
            "grant_type": "password",
            "username": "alice",
            "password": "alice-secret",
            "scope": "repository:private/single:pull repository:private/multi:pull",
            "service": token_log.service,
            "client_id": "harness",
        },
    )
    assert r.status_code == 200
    body = r.json()
    assert {"access_token", "expires_in", "refresh_token"} <= set(body)
    assert "token" not in body
    refresh = body["refresh_token"]
    with registry_token.client() as c:
        m = c.get("/v2/private/single/manifests/v1", headers=bearer(body["access_token"]))
        assert m.status_code == 200
        assert sha256(m.content) == seeded_registries.token["private/single"].digest

        r = httpx.post(
            token_log.realm,
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh,
                "scope": "repository:private/eight:pull",
                "service": token_log.service,
                "client_id": "harness",
            },
        )
        assert r.status_code == 200
        body2 = r.json()
        assert "refresh_token" not in body2
        _, claims = decode_jwt(body2["access_token"])
        assert claims["sub"] == "alice"
        m = c.get("/v2/private/eight/manifests/v1", headers=bearer(body2["access_token"]))
        assert m.status_code == 200
        assert sha256(m.content) == seeded_registries.token["private/eight"].digest

    log = token_log.log_dicts()
    assert [(e["method"], e["grant_type"], e["user"]) for e in log] == [
        ("POST", "password", "alice"),
        ("POST", "refresh_token", "alice"),
    ]
    assert log[0]["scopes"] == ["repository:private/single:pull", "repository:private/multi:pull"]
    assert log[0]["client_id"] == "harness"
    assert log[0]["refresh_token_issued"] is True
    assert log[1]["granted"] == [
        {"type": "repository", "name": "private/eight", "actions": ["pull"]}
    ]


def test_offline_token_get_returns_refresh_token(token_log: TokenServer) -> None:
    scope = ["repository:private/single:pull"]
    r = get_token(
        token_log, scope, auth=("alice", "alice-secret"), offline_token="true", account="alice"
    )
    assert r.status_code == 200 and r.json()["refresh_token"].startswith("rt-")
    assert token_log.log[0].account == "alice" and token_log.log[0].offline_token
    # no refresh token for anonymous or online requests
    assert "refresh_token" not in get_token(token_log, scope, offline_token="true").json()
    assert "refresh_token" not in get_token(token_log, scope, auth=("alice", "alice-secret")).json()
    # the refresh token works for the refresh grant
    r = httpx.post(
        token_log.realm,
        data={
            "grant_type": "refresh_token",
            "refresh_token": r.json()["refresh_token"],
            "service": token_log.service,
            "client_id": "harness",
            "scope": "repository:private/single:pull,push",
        },
    )
    assert r.status_code == 200
    assert decode_jwt(r.json()["access_token"])[1]["access"][0]["actions"] == ["pull", "push"]


def test_anonymous_token_pulls_public_not_private(
    registry_token: RegistryProcess,
    token_log: TokenServer,
    seeded_registries: SeededRegistries,
) -> None:
    public = get_token(token_log, ["repository:public/single:pull"]).json()["token"]
    private = get_token(token_log, ["repository:private/single:pull"]).json()["token"]
    assert decode_jwt(public)[1]["sub"] == ""
    with registry_token.client() as c:
        m = c.get("/v2/public/single/manifests/v1", headers=bearer(public))
        assert m.status_code == 200
        assert sha256(m.content) == seeded_registries.token["public/single"].digest
        denied = c.get("/v2/private/single/manifests/v1", headers=bearer(private))
        assert denied.status_code == 401
        assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
        # a public token does not open other repositories either
        assert c.get("/v2/private/single/manifests/v1", headers=bearer(public)).status_code == 401
    log = token_log.log
    assert [e.user for e in log] == [None, None]
    assert log[0].granted_actions("public/single") == ["pull"]
    assert log[1].granted == []
    # anonymous push to public/ is not granted either
    push = get_token(token_log, ["repository:public/single:pull,push"]).json()["token"]
    assert decode_jwt(push)[1]["access"][0]["actions"] == ["pull"]


def test_reader_gets_only_pull(
    registry_token: RegistryProcess,
    token_log: TokenServer,
    seeded_registries: SeededRegistries,
) -> None:
    r = get_token(
        token_log, ["repository:private/scratch-reader:pull,push"], auth=("reader", "reader-secret")
    )
    assert r.status_code == 200
    [entry] = token_log.log
    assert entry.user == "reader"
    assert entry.scopes == ["repository:private/scratch-reader:pull,push"]
    assert entry.granted == [
        {"type": "repository", "name": "private/scratch-reader", "actions": ["pull"]}
    ]
    with registry_token.client() as c:
        up = c.post("/v2/private/scratch-reader/blobs/uploads/", headers=bearer(r.json()["token"]))
        assert up.status_code == 401
        # the registry names the actions in no fixed order
        [scope] = re.findall(r'scope="([^"]*)"', up.headers["www-authenticate"])
        kind, name, actions = scope.split(":")
        assert (kind, name, sorted(actions.split(","))) == (
            "repository",
            "private/scratch-reader",
            ["pull", "push"],
        )
    # alice gets both
    r = get_token(
        token_log, ["repository:private/scratch-reader:pull,push"], auth=("alice", "alice-secret")
    )
    assert token_log.log[-1].granted_actions("private/scratch-reader") == ["pull", "push"]
    with registry_token.client() as c:
        up = c.post("/v2/private/scratch-reader/blobs/uploads/", headers=bearer(r.json()["token"]))
        assert up.status_code == 202


def test_wrong_credentials_are_rejected(token_log: TokenServer) -> None:
    r = get_token(token_log, ["repository:private/single:pull"], auth=("alice", "nope"))
    assert r.status_code == 401
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    r = get_token(token_log, ["repository:private/single:pull"], auth=("mallory", "x"))
    assert r.status_code == 401
    r = httpx.post(
        token_log.realm,
        data={
            "grant_type": "password",
            "username": "alice",
            "password": "nope",
            "service": token_log.service,
            "client_id": "harness",
        },
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_grant"
    r = httpx.post(
        token_log.realm,
        data={"grant_type": "refresh_token", "refresh_token": "rt-bogus", "client_id": "x"},
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_grant"
    r = httpx.post(token_log.realm, data={"grant_type": "client_credentials", "client_id": "x"})
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    r = get_token(token_log, [], service="some-other-service")
    assert r.status_code == 400
    assert [e.status for e in token_log.log] == [401, 401, 401, 401, 400, 400]


def test_catalog_scope_for_admin_only(
    registry_token: RegistryProcess,
    token_log: TokenServer,
    seeded_registries: SeededRegistries,
) -> None:
    admin = get_token(token_log, ["registry:catalog:*"], auth=("admin", "admin-secret"))
    alice = get_token(token_log, ["registry:catalog:*"], auth=("alice", "alice-secret"))
    assert decode_jwt(admin.json()["token"])[1]["access"] == [
        {"type": "registry", "name": "catalog", "actions": ["*"]}
    ]
    assert decode_jwt(alice.json()["token"])[1]["access"] == []
    with registry_token.client() as c:
        r = c.get("/v2/_catalog", headers=bearer(admin.json()["token"]))
        assert r.status_code == 200
        repos = r.json()["repositories"]
        for name in SEEDED_NAMES:
            assert f"public/{name}" in repos and f"private/{name}" in repos
        assert c.get("/v2/_catalog", headers=bearer(alice.json()["token"])).status_code == 401


def test_x5c_tokens_are_accepted(tmp_path: Path) -> None:
    with TokenServer(tmp_path / "ts", include_x5c=True) as server:
        reg = start_registry(tmp_path / "reg", auth="token", token_server=server)
        try:
            token = get_token(server, [], auth=("alice", "alice-secret")).json()["token"]
            assert "x5c" in decode_jwt(token)[0]
            with reg.client() as c:
                assert c.get("/v2/", headers=bearer(token)).status_code == 200
                assert c.get("/v2/", headers=bearer(token + "x")).status_code == 401
        finally:
            reg.stop()
    assert not reg.is_running()


# -- seeded content --------------------------------------------------------------------------

SEEDED_CASES = [
    (label, f"{prefix}/{name}")
    for label, prefixes in [
        ("open", ["test"]),
        ("basic", ["test"]),
        ("tls", ["test"]),
        ("token", ["public", "private"]),
    ]
    for prefix in prefixes
    for name in SEEDED_NAMES
]


@pytest.mark.parametrize(("label", "repo"), SEEDED_CASES)
def test_seeded_digests_equal_layout_digests(
    seeded_registries: SeededRegistries, label: str, repo: str
) -> None:
    seeded = seeded_registries.all()[label]
    img = seeded[repo]
    assert img.reference == f"{seeded.registry.host}/{repo}:v1"
    with RawClient(seeded.registry) as client:
        r = client.get_manifest(repo, "v1")
        assert r.status_code == 200
        assert r.headers["content-type"] == img.layout.media_type
        assert r.content == img.layout.top_bytes
        assert client.manifest_digest(repo, "v1") == img.layout.digest
        assert client.tags(repo) == ["v1"]
        for child in img.layout.images:
            r = client.get_manifest(repo, child.digest)
            assert r.status_code == 200 and sha256(r.content) == child.digest
            for digest in child.blob_digests:
                blob = client.get_blob(repo, digest)
                assert blob.status_code == 200
                assert sha256(blob.content) == digest


def test_raw_client_push_to_unique_repo(
    registry_basic: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: object,
) -> None:
    repo = unique_repo()  # type: ignore[operator]
    assert re.fullmatch(r"scratch/test-raw-client-push-to-unique-repo-\d+", repo)
    img = test_images["single"].image
    with RawClient(registry_basic) as client:
        for digest in img.blob_digests:
            data = test_images["single"].blob_path(digest).read_bytes()
            assert client.push_blob(repo, data) == digest
        assert client.put_manifest(repo, "latest", img.manifest_bytes, OCI_MANIFEST) == img.digest
        assert client.tags(repo) == ["latest"]
    with RawClient(registry_basic, anonymous=True) as anon:
        assert anon.get_manifest(repo, "latest").status_code == 401
    multi = test_images["multi"]
    with RawClient(registry_basic) as client:
        assert client.push_layout(multi, repo, "multi") == multi.digest
        assert client.manifest_digest(repo, multi.images[1].digest) == multi.images[1].digest
        assert client.tags(repo) == ["latest", "multi"]


# -- generated images ------------------------------------------------------------------------


def _members(layout: LayoutImage, digest: str) -> list[tarfile.TarInfo]:
    data = layout.blob_path(digest).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def test_layouts_are_deterministic_and_well_formed(
    tmp_path: Path, test_images: dict[str, LayoutImage]
) -> None:
    again = generate_all(tmp_path / "again")
    assert {k: v.digest for k, v in again.items()} == {k: v.digest for k, v in test_images.items()}
    for name, layout in test_images.items():
        assert json.loads((layout.path / "oci-layout").read_text()) == {
            "imageLayoutVersion": "1.0.0"
        }
        index = json.loads((layout.path / "index.json").read_text())
        [entry] = index["manifests"]
        assert entry["digest"] == layout.digest
        assert entry["mediaType"] == layout.media_type
        assert entry["annotations"] == {REF_NAME: "v1"}
        for blob in (layout.path / "blobs" / "sha256").iterdir():
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, name
        for img in layout.images:
            config = img.config_json
            assert config["rootfs"]["diff_ids"] == img.diff_ids
            assert config["created"] == "2024-01-01T00:00:00Z"
            for layer in img.layers:
                raw = layout.blob_path(layer.digest).read_bytes()
                assert len(raw) == layer.size
                assert sha256(gzip.decompress(raw)) == layer.diff_id


def test_image_kinds(test_images: dict[str, LayoutImage]) -> None:
    single, multi, eight = test_images["single"], test_images["multi"], test_images["eight"]
    docker, dockerlist = test_images["docker"], test_images["dockerlist"]
    assert single.media_type == OCI_MANIFEST and single.platforms == ["linux/amd64"]
    assert multi.media_type == OCI_INDEX
    assert multi.platforms == ["linux/amd64", "linux/arm64/v8"]
    assert [m["platform"] for m in json.loads(multi.top_bytes)["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    amd, arm = multi.images
    assert amd.layer_digests[0] == arm.layer_digests[0]  # shared base layer
    assert amd.layer_digests[1] != arm.layer_digests[1]
    assert len(multi.layer_digests) == 3
    assert docker.media_type == DOCKER_MANIFEST
    assert docker.image.config.media_type == DOCKER_CONFIG
    assert [entry.descriptor.media_type for entry in docker.image.layers] == [DOCKER_LAYER_GZIP]
    assert dockerlist.media_type == DOCKER_MANIFEST_LIST
    assert dockerlist.platforms == ["linux/amd64", "linux/arm/v7"]
    assert all(i.media_type == DOCKER_MANIFEST for i in dockerlist.images)

    img = eight.image
    assert len(img.layers) == 8
    assert img.diff_ids[1] == EMPTY_TAR_DIFF_ID
    history = img.config_json["history"]
    assert len(history) == 9
    assert [h.get("empty_layer", False) for h in history].count(True) == 1
    assert all(h["created_by"] for h in history)
    names = [[m.name for m in _members(eight, d)] for d in img.layer_digests]
    assert names[1] == []
    assert "data/.wh.removed.txt" in names[2]
    assert "opq/.wh..wh..opq" in names[3]
    kinds = {m.name: m for d in img.layer_digests for m in _members(eight, d)}
    assert kinds["usr/share/doc/link.txt"].islnk()
    assert kinds["usr/share/doc/link.txt"].linkname == "usr/share/doc/original.txt"
    assert kinds["usr/bin/tool-link"].issym()
    assert kinds["bin/suid"].mode == 0o4755
    assert kinds["data/sticky"].mode == 0o1777
    assert kinds["home/user/owned.txt"].uid == 1000
    assert img.expected_rootfs is not None
    assert "data/removed.txt" not in img.expected_rootfs
    assert "opq/old-a" not in img.expected_rootfs
    assert img.expected_rootfs["etc/hostname"].content == b"eight-replaced\n"


def test_make_big_image_streams_layers(tmp_path: Path) -> None:
    size = 1024 * 1024 + 3
    big = make_big_image(tmp_path / "big", layers=3, layer_size=size)
    img = big.image
    assert len(img.layers) == 3 and big.tag == "big"
    assert len(set(img.layer_digests)) == 3
    for layer in img.layers:
        assert layer.descriptor.media_type == OCI_LAYER
        assert layer.digest == layer.diff_id  # uncompressed
        path = big.blob_path(layer.digest)
        assert path.stat().st_size == layer.size == layer.uncompressed_size
        assert sha256(path.read_bytes()) == layer.digest
        with tarfile.open(path) as tar:
            [member] = tar.getmembers()
            assert member.size == size
    assert make_big_image(tmp_path / "again", layers=3, layer_size=size).digest == big.digest
    gz = make_big_image(tmp_path / "gz", layers=1, layer_size=size, compression="gzip")
    layer = gz.image.layers[0]
    assert layer.digest != layer.diff_id
    assert sha256(gzip.decompress(gz.blob_path(layer.digest).read_bytes())) == layer.diff_id
