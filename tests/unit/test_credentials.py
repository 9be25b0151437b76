"""Docker-compatible credential lookup, login and logout."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from derrick.auth.credentials import (
    DOCKER_HUB_KEY,
    Credential,
    CredentialStore,
    config_key,
    config_path,
    normalize_registry,
)
from derrick.errors import CredentialsError

SECRET = "s3cr3t:with:colons"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_config(directory: Path, doc: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def read_config(directory: Path) -> Any:
    return json.loads((directory / "config.json").read_text())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def cfgdir(tmp_path: Path) -> Path:
    return tmp_path / "docker"


@pytest.fixture
def store(cfgdir: Path) -> CredentialStore:
    return CredentialStore(env={"DOCKER_CONFIG": str(cfgdir)})


# -- a fake credential helper -------------------------------------------------------------

FAKE_HELPER = r"""
import json, os, sys

path = os.environ["FAKE_HELPER_DB"]
try:
    with open(path) as f:
        db = json.load(f)
except FileNotFoundError:
    db = {}
action = sys.argv[1]
request = sys.stdin.read()
if os.environ.get("FAKE_HELPER_FAIL"):
    print("helper exploded while handling " + request, file=sys.stderr)
    sys.exit(2)
if os.environ.get("FAKE_HELPER_GARBAGE"):
    print("not json " + request)
    sys.exit(0)
if action == "get":
    entry = db.get(request.strip())
    if entry is None:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps(entry))
elif action == "store":
    entry = json.loads(request)
    db[entry["ServerURL"]] = entry
elif action == "erase":
    if db.pop(request.strip(), None) is None:
        print("credentials not found in native keychain")
        sys.exit(1)
else:
    sys.exit(3)
with open(path, "w") as f:
    json.dump(db, f)
"""


class FakeHelper:
    def __init__(self, db: Path) -> None:
        self.db = db

    def load(self) -> dict[str, Any]:
        return json.loads(self.db.read_text()) if self.db.exists() else {}

    def put(self, server: str, username: str, secret: str) -> None:
        db = self.load()
        db[server] = {"ServerURL": server, "Username": username, "Secret": secret}
        self.db.write_text(json.dumps(db))


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHelper:
    """``docker-credential-test`` on PATH, keeping its secrets in a JSON file."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "fake_helper.py"
    script.write_text(FAKE_HELPER)
    exe = bindir / "docker-credential-test"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    db = tmp_path / "helper-db.json"
    monkeypatch.setenv("FAKE_HELPER_DB", str(db))
    return FakeHelper(db)


# -- names and paths ----------------------------------------------------------------------


def test_config_path(tmp_path: Path) -> None:
    assert config_path({"DOCKER_CONFIG": str(tmp_path)}) == tmp_path / "config.json"
    assert config_path({"HOME": str(tmp_path)}) == tmp_path / ".docker" / "config.json"
    assert config_path({"DOCKER_CONFIG": "", "HOME": "/h"}) == Path("/h/.docker/config.json")
    assert CredentialStore(config_path=tmp_path / "x.json").path == tmp_path / "x.json"


@pytest.mark.parametrize(
    ("registry", "key"),
    [
        ("docker.io", DOCKER_HUB_KEY),
        ("index.docker.io", DOCKER_HUB_KEY),
        ("registry-1.docker.io", DOCKER_HUB_KEY),
        ("https://index.docker.io/v1/", DOCKER_HUB_KEY),
        ("ghcr.io", "ghcr.io"),
        ("localhost:5000", "localhost:5000"),
        ("https://Registry.Example:5000/v2/", "registry.example:5000"),
        ("http://registry.example", "registry.example"),
    ],
)
def test_config_key(registry: str, key: str) -> None:
    assert config_key(registry) == key


def test_normalize_registry() -> None:
    assert normalize_registry("https://index.docker.io/v1") == "docker.io"
    assert normalize_registry("HTTPS://ghcr.io/v1/") == "ghcr.io"


def test_repr_hides_secrets() -> None:
    cred = Credential("alice", SECRET, "refresh-token-value")
    for text in (repr(cred), str(cred), f"{cred}", repr([cred])):
        assert "alice" in text
        assert SECRET not in text and "refresh-token-value" not in text
    assert "password=None" in repr(Credential("bob"))


# -- reading ------------------------------------------------------------------------------


def test_missing_config_is_no_credentials(store: CredentialStore) -> None:
    assert store.get("ghcr.io") is None


def test_empty_config_file(cfgdir: Path, store: CredentialStore) -> None:
    write_config(cfgdir, "  \n")
    assert store.get("ghcr.io") is None


def test_base64_auth_with_colon_in_password(cfgdir: Path, store: CredentialStore) -> None:
    write_config(cfgdir, {"auths": {"ghcr.io": {"auth": b64(f"alice:{SECRET}")}}})
    assert store.get("ghcr.io") == Credential("alice", SECRET)
    assert store.get("quay.io") is None


def test_username_password_fields(cfgdir: Path, store: CredentialStore) -> None:
    write_config(cfgdir, {"auths": {"ghcr.io": {"username": "bob", "password": "pw"}}})
    assert store.get("ghcr.io") == Credential("bob", "pw")


def test_identity_token(cfgdir: Path, store: CredentialStore) -> None:
    write_config(cfgdir, {"auths": {"registry.example": {"auth": "", "identitytoken": "rt"}}})
    assert store.get("registry.example") == Credential(identity_token="rt")


def test_empty_entry_is_nothing(cfgdir: Path, store: CredentialStore) -> None:
    write_config(cfgdir, {"auths": {"ghcr.io": {}}})
    assert store.get("ghcr.io") is None


@pytest.mark.parametrize(
    "key",
    [
        "https://index.docker.io/v1/",
        "https://index.docker.io/v1",
        "index.docker.io",
        "docker.io",
        "registry-1.docker.io",
    ],
)
def test_docker_hub_key_variants(cfgdir: Path, store: CredentialStore, key: str) -> None:
    write_config(cfgdir, {"auths": {key: {"auth": b64("hub:pw")}}})
    assert store.get("docker.io") == Credential("hub", "pw")
    assert store.get("index.docker.io") == Credential("hub", "pw")


@pytest.mark.parametrize(
    "key",
    [
        "registry.example:5000",
        "https://registry.example:5000",
        "http://registry.example:5000",
        "https://registry.example:5000/v1/",
        "https://registry.example:5000/v2/",
    ],
)
def test_host_key_variants(cfgdir: Path, store: CredentialStore, key: str) -> None:
    write_config(cfgdir, {"auths": {key: {"auth": b64("u:p")}}})
    assert store.get("registry.example:5000") == Credential("u", "p")
    assert store.get("registry.example") is None


def test_canonical_key_wins_over_variant(cfgdir: Path, store: CredentialStore) -> None:
    write_config(
        cfgdir,
        {
            "auths": {
                "https://ghcr.io/v1/": {"auth": b64("old:x")},
                "ghcr.io": {"auth": b64("new:y")},
            }
        },
    )
    assert store.get("ghcr.io") == Credential("new", "y")


def test_docker_auth_config_takes_precedence(cfgdir: Path) -> None:
    write_config(
        cfgdir, {"auths": {"ghcr.io": {"auth": b64("file:pw")}, "quay.io": {"auth": b64("q:q")}}}
    )
    env_doc = json.dumps({"auths": {"https://ghcr.io": {"auth": b64("env:pw")}}})
    store = CredentialStore(env={"DOCKER_CONFIG": str(cfgdir), "DOCKER_AUTH_CONFIG": env_doc})
    assert store.get("ghcr.io") == Credential("env", "pw")
    assert store.get("quay.io") == Credential("q", "q")  # falls through to the file


def test_malformed_docker_auth_config(cfgdir: Path) -> None:
    store = CredentialStore(env={"DOCKER_CONFIG": str(cfgdir), "DOCKER_AUTH_CONFIG": "{" + SECRET})
    with pytest.raises(CredentialsError) as ei:
        store.get("ghcr.io")
    assert "DOCKER_AUTH_CONFIG" in str(ei.value)
    assert SECRET not in str(ei.value)


def test_overrides_win(cfgdir: Path) -> None:
    write_config(cfgdir, {"auths": {"ghcr.io": {"auth": b64("file:pw")}}})
    store = CredentialStore(
        env={"DOCKER_CONFIG": str(cfgdir), "DOCKER_AUTH_CONFIG": '{"auths": {}}'},
        overrides={"https://ghcr.io/": Credential("cli", "pw2"), "docker.io": Credential("h", "p")},
    )
    assert store.get("ghcr.io") == Credential("cli", "pw2")
    assert store.get("index.docker.io") == Credential("h", "p")


@pytest.mark.parametrize(
    "content",
    [
        '{"auths": {"ghcr.io": {"auth": "' + b64("alice:" + SECRET) + '"}',  # truncated
        "[1, 2]",
        '{"auths": []}',
        '{"auths": {"ghcr.io": "' + SECRET + '"}}',
        '{"auths": {"ghcr.io": {"auth": "!!' + SECRET + '"}}}',
        '{"auths": {"ghcr.io": {"auth": "' + b64("no-colon-at-all") + '"}}}',
        '{"credHelpers": {"ghcr.io": 5}}',
        '{"credsStore": ["x"]}',
    ],
)
def test_malformed_config(cfgdir: Path, store: CredentialStore, content: str) -> None:
    path = write_config(cfgdir, content)
    with pytest.raises(CredentialsError) as ei:
        store.get("ghcr.io")
    msg = str(ei.value)
    assert str(path) in msg
    assert ei.value.hint
    assert SECRET not in msg
    assert b64("alice:" + SECRET) not in msg


def test_malformed_config_is_not_overwritten(cfgdir: Path, store: CredentialStore) -> None:
    path = write_config(cfgdir, "{oops")
    with pytest.raises(CredentialsError, match="not valid JSON"):
        store.store("ghcr.io", Credential("u", "p"))
    assert path.read_text() == "{oops"


def test_unreadable_config(cfgdir: Path, store: CredentialStore) -> None:
    (cfgdir / "config.json").mkdir(parents=True)
    with pytest.raises(CredentialsError, match="cannot read"):
        store.get("ghcr.io")


# -- writing ------------------------------------------------------------------------------


def test_store_creates_private_file(tmp_path: Path) -> None:
    cfgdir = tmp_path / "a" / "docker"
    store = CredentialStore(env={"DOCKER_CONFIG": str(cfgdir)})
    path = store.store("docker.io", Credential("alice", SECRET))
    assert path == cfgdir / "config.json"
    assert mode(path) == 0o600
    assert mode(cfgdir) == 0o700
    assert read_config(cfgdir) == {"auths": {DOCKER_HUB_KEY: {"auth": b64(f"alice:{SECRET}")}}}
    assert store.get("docker.io") == Credential("alice", SECRET)
    assert sorted(p.name for p in cfgdir.iterdir()) == ["config.json"]  # no temp files left


def test_store_preserves_other_content(cfgdir: Path, store: CredentialStore) -> None:
    path = write_config(
        cfgdir,
        {
            "auths": {
                "quay.io": {"auth": b64("q:q")},
                "https://ghcr.io/v2/": {"auth": b64("stale:x")},
                "ghcr.io": {"auth": b64("stale:y")},
            },
            "psFormat": "table {{.ID}}",
            "proxies": {"default": {"httpProxy": "http://proxy:3128"}},
        },
    )
    path.chmod(0o644)
    store.store("ghcr.io", Credential("alice", SECRET))
    doc = read_config(cfgdir)
    assert doc["psFormat"] == "table {{.ID}}"
    assert doc["proxies"] == {"default": {"httpProxy": "http://proxy:3128"}}
    assert doc["auths"] == {
        "quay.io": {"auth": b64("q:q")},
        "ghcr.io": {"auth": b64(f"alice:{SECRET}")},
    }
    assert mode(path) == 0o600


def test_store_identity_token(cfgdir: Path, store: CredentialStore) -> None:
    store.store("registry.example", Credential(identity_token="refresh"))
    assert read_config(cfgdir)["auths"] == {"registry.example": {"identitytoken": "refresh"}}
    assert store.get("registry.example") == Credential(identity_token="refresh")


def test_store_rejects_incomplete_or_colon_user(store: CredentialStore) -> None:
    with pytest.raises(CredentialsError, match="nothing to save"):
        store.store("ghcr.io", Credential("alice"))
    with pytest.raises(CredentialsError, match="':'"):
        store.store("ghcr.io", Credential("a:b", SECRET))


def test_store_through_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    write_config(real, {"auths": {}})
    cfgdir = tmp_path / "docker"
    cfgdir.mkdir()
    (cfgdir / "config.json").symlink_to(real / "config.json")
    CredentialStore(env={"DOCKER_CONFIG": str(cfgdir)}).store("ghcr.io", Credential("u", "p"))
    assert (cfgdir / "config.json").is_symlink()
    assert read_config(real)["auths"] == {"ghcr.io": {"auth": b64("u:p")}}


def test_erase_removes_every_variant(cfgdir: Path, store: CredentialStore) -> None:
    path = write_config(
        cfgdir,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("a:b")},
                "docker.io": {"auth": b64("c:d")},
                "quay.io": {"auth": b64("q:q")},
            },
            "detachKeys": "ctrl-x",
        },
    )
    assert store.erase("docker.io") is True
    assert read_config(cfgdir) == {
        "auths": {"quay.io": {"auth": b64("q:q")}},
        "detachKeys": "ctrl-x",
    }
    assert mode(path) == 0o600
    assert store.get("docker.io") is None
    assert store.erase("docker.io") is False


def test_erase_without_config(store: CredentialStore, cfgdir: Path) -> None:
    assert store.erase("ghcr.io") is False
    assert not cfgdir.exists()


# -- credential helpers -------------------------------------------------------------------


def test_cred_helpers_get(cfgdir: Path, store: CredentialStore, helper: FakeHelper) -> None:
    write_config(cfgdir, {"credHelpers": {"https://ghcr.io": "test"}})
    helper.put("ghcr.io", "alice", SECRET)
    assert store.get("ghcr.io") == Credential("alice", SECRET)
    assert store.get("quay.io") is None  # no helper and no entry


def test_helper_not_found_falls_through(
    cfgdir: Path, store: CredentialStore, helper: FakeHelper
) -> None:
    write_config(
        cfgdir, {"credHelpers": {"ghcr.io": "test"}, "auths": {"ghcr.io": {"auth": b64("u:p")}}}
    )
    assert store.get("ghcr.io") == Credential("u", "p")


def test_helper_identity_token(cfgdir: Path, store: CredentialStore, helper: FakeHelper) -> None:
    write_config(cfgdir, {"credsStore": "test"})
    helper.put(DOCKER_HUB_KEY, "<token>", "refresh")
    assert store.get("docker.io") == Credential(identity_token="refresh")


def test_creds_store_after_auths(cfgdir: Path, store: CredentialStore, helper: FakeHelper) -> None:
    write_config(
        cfgdir, {"credsStore": "test", "auths": {"quay.io": {"auth": b64("q:q")}, "ghcr.io": {}}}
    )
    helper.put("quay.io", "fromhelper", "x")
    helper.put("ghcr.io", "alice", SECRET)
    assert store.get("quay.io") == Credential("q", "q")
    assert store.get("ghcr.io") == Credential("alice", SECRET)
    assert store.get("registry.example") is None


def test_helper_store_and_erase(cfgdir: Path, store: CredentialStore, helper: FakeHelper) -> None:
    path = write_config(
        cfgdir,
        {
            "credsStore": "test",
            "auths": {"ghcr.io": {"auth": b64("plain:text")}, "quay.io": {"auth": b64("q:q")}},
            "currentContext": "default",
        },
    )
    assert store.store("ghcr.io", Credential("alice", SECRET)) == path
    assert helper.load() == {
        "ghcr.io": {"ServerURL": "ghcr.io", "Username": "alice", "Secret": SECRET}
    }
    doc = read_config(cfgdir)
    # the plain-text secret is gone; an empty marker remains, the rest is kept
    assert doc == {
        "credsStore": "test",
        "auths": {"ghcr.io": {}, "quay.io": {"auth": b64("q:q")}},
        "currentContext": "default",
    }
    assert mode(path) == 0o600
    assert store.get("ghcr.io") == Credential("alice", SECRET)

    assert store.erase("ghcr.io") is True
    assert helper.load() == {}
    assert read_config(cfgdir)["auths"] == {"quay.io": {"auth": b64("q:q")}}
    assert store.get("ghcr.io") is None
    assert store.erase("ghcr.io") is False


def test_helper_store_identity_token(
    cfgdir: Path, store: CredentialStore, helper: FakeHelper
) -> None:
    write_config(cfgdir, {"credHelpers": {"docker.io": "test"}})
    store.store("docker.io", Credential(identity_token="refresh"))
    assert helper.load()[DOCKER_HUB_KEY]["Username"] == "<token>"
    assert store.get("docker.io") == Credential(identity_token="refresh")


def test_cred_helpers_beat_creds_store(
    cfgdir: Path, store: CredentialStore, helper: FakeHelper
) -> None:
    write_config(cfgdir, {"credsStore": "missing", "credHelpers": {"ghcr.io": "test"}})
    store.store("ghcr.io", Credential("alice", SECRET))
    assert store.get("ghcr.io") == Credential("alice", SECRET)
    assert store.erase("ghcr.io") is True


def test_missing_helper_executable(
    cfgdir: Path, store: CredentialStore, helper: FakeHelper
) -> None:
    write_config(cfgdir, {"credsStore": "nope"})
    for call in (
        lambda: store.get("ghcr.io"),
        lambda: store.store("ghcr.io", Credential("u", SECRET)),
        lambda: store.erase("ghcr.io"),
    ):
        with pytest.raises(CredentialsError, match="docker-credential-nope") as ei:
            call()
        assert SECRET not in str(ei.value)


def test_failing_helper_does_not_leak_secret(
    cfgdir: Path, helper: FakeHelper, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(cfgdir, {"credsStore": "test"})
    store = CredentialStore(env={"DOCKER_CONFIG": str(cfgdir), "FAKE_HELPER_FAIL": "1"})
    with pytest.raises(CredentialsError, match="helper exploded") as ei:
        store.store("ghcr.io", Credential("alice", SECRET))
    assert SECRET not in str(ei.value)
    assert "docker-credential-test" in str(ei.value)
    with pytest.raises(CredentialsError, match="helper exploded"):
        store.get("ghcr.io")


def test_helper_garbage_output(cfgdir: Path, helper: FakeHelper) -> None:
    write_config(cfgdir, {"credsStore": "test"})
    store = CredentialStore(env={"DOCKER_CONFIG": str(cfgdir), "FAKE_HELPER_GARBAGE": "1"})
    with pytest.raises(CredentialsError, match="JSON object") as ei:
        store.get("ghcr.io")
    assert "not json" not in str(ei.value)
