"""Docker's ``config.json``: where it is, the keys that name registries in it, and the
document read (from the file, or from ``DOCKER_AUTH_CONFIG``), checked field by field, and
written back whole (mode 0600, renamed into place).

Every error names the file (or the variable) and the field, and says how to fix it; no
secret is ever part of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from derrick.errors import CredentialsError

__all__ = [
    "DOCKER_HUB_KEY",
    "ENV_SOURCE",
    "JSONObject",
    "auths_of",
    "config_key",
    "config_path",
    "cred_helpers",
    "creds_store",
    "helper_for",
    "load_config",
    "matching_keys",
    "normalize_registry",
    "parse_env_config",
    "write_config",
]

#: The key Docker uses for Docker Hub in config.json and with credential helpers.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
#: Names that all mean Docker Hub.
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
#: How messages name the environment variable's document.
ENV_SOURCE = "the DOCKER_AUTH_CONFIG environment variable"

JSONObject = dict[str, Any]


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``.

    ``env`` defaults to the process environment; its ``HOME`` is honoured too.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    directory = environ.get("DOCKER_CONFIG")
    if directory:
        return Path(directory) / "config.json"
    home = environ.get("HOME")
    base = Path(home) if home else Path.home()
    return base / ".docker" / "config.json"


def normalize_registry(name: str) -> str:
    """The registry host a config key or registry name stands for, for comparison.

    Strips a ``http://``/``https://`` scheme and any path, lowercases, and maps
    every Docker Hub alias to ``docker.io``:
    ``"https://index.docker.io/v1/"`` → ``"docker.io"``,
    ``"https://Registry.example:5000/v2/"`` → ``"registry.example:5000"``.
    """
    s = name.strip()
    low = s.lower()
    for prefix in ("https://", "http://"):
        if low.startswith(prefix):
            s = s[len(prefix) :]
            break
    s = s.split("/", 1)[0].lower()
    return "docker.io" if s in _HUB_ALIASES else s


def config_key(registry: str) -> str:
    """The key Docker uses for ``registry``: ``DOCKER_HUB_KEY`` for Docker Hub, else the host."""
    host = normalize_registry(registry)
    return DOCKER_HUB_KEY if host == "docker.io" else host


def matching_keys(keys: Iterable[str], registry: str) -> list[str]:
    """The keys that name ``registry``, the canonical one first, then in file order."""
    want = normalize_registry(registry)
    found = [k for k in keys if normalize_registry(k) == want]
    canonical = config_key(registry)
    found.sort(key=lambda k: (k != canonical, k != registry))  # stable: keeps file order
    return found


def load_config(path: Path) -> JSONObject | None:
    """The parsed config file; None if there is none."""
    fix = "fix it, or remove it and log in again"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CredentialsError(
            f"cannot read the Docker config {path}: {e.strerror or e}",
            hint="make it a readable file, or set DOCKER_CONFIG to another directory",
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CredentialsError(f"the Docker config {path} is not UTF-8 text", hint=fix) from None
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise CredentialsError(
            f"the Docker config {path} is not valid JSON "
            f"(line {e.lineno}, column {e.colno}: {e.msg})",
            hint=fix,
        ) from None
    if not isinstance(doc, dict):
        raise CredentialsError(f"the Docker config {path} is not a JSON object", hint=fix)
    return doc


def parse_env_config(raw: str) -> JSONObject:
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CredentialsError(
            f"{ENV_SOURCE} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})",
            hint='set it to a config.json document such as {"auths": {...}}, or unset it',
        ) from None
    if not isinstance(doc, dict):
        raise CredentialsError(
            f"{ENV_SOURCE} is not a JSON object",
            hint='set it to a config.json document such as {"auths": {...}}, or unset it',
        )
    return doc


def auths_of(cfg: JSONObject, where: str) -> JSONObject:
    auths = cfg.get("auths")
    if auths is None:
        return {}
    if not isinstance(auths, dict):
        raise CredentialsError(
            f'"auths" in {where} is not a JSON object', hint="fix or remove that field"
        )
    return auths


def cred_helpers(cfg: JSONObject, where: str) -> dict[str, str]:
    helpers = cfg.get("credHelpers")
    if helpers is None:
        return {}
    if not isinstance(helpers, dict) or not all(isinstance(v, str) for v in helpers.values()):
        raise CredentialsError(
            f'"credHelpers" in {where} is not an object of helper names',
            hint='it should look like {"registry.example": "helpername"}',
        )
    return {k: v for k, v in helpers.items() if v}


def creds_store(cfg: JSONObject, where: str) -> str | None:
    store = cfg.get("credsStore")
    if store is None or store == "":
        return None
    if not isinstance(store, str):
        raise CredentialsError(
            f'"credsStore" in {where} is not a helper name',
            hint='it should look like "credsStore": "helpername"',
        )
    return store


def helper_for(cfg: JSONObject, registry: str, where: str) -> str | None:
    """The helper that keeps ``registry``'s secret: its credHelpers entry, else credsStore."""
    helpers = cred_helpers(cfg, where)
    keys = matching_keys(helpers, registry)
    if keys:
        return helpers[keys[0]]
    return creds_store(cfg, where)


def write_config(path: Path, cfg: JSONObject) -> None:
    """Replace the config file atomically, mode 0600 (directory made 0700 if need be)."""
    target = Path(os.path.realpath(path))  # write through a symlinked config.json
    directory = target.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(cfg, f, indent="\t")
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)
    except OSError as e:
        raise CredentialsError(
            f"cannot write the Docker config {path}: {e.strerror or e}",
            hint=f"check the permissions of {directory}, or set DOCKER_CONFIG to another directory",
        ) from None


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable where the platform allows it (best effort)."""
    flags = getattr(os, "O_DIRECTORY", None)
    if flags is None:
        return
    try:
        fd = os.open(directory, os.O_RDONLY | flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
