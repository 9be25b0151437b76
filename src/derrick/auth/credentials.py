"""Registry credentials from the places Docker keeps them.

:class:`CredentialStore` reads (and, for ``derrick login``/``logout``, writes)
the same sources as the Docker CLI, so that a ``docker login`` works for
derrick and the other way round:

1. credentials given on the command line (``overrides``);
2. the ``DOCKER_AUTH_CONFIG`` environment variable, holding a config.json
   document (as CI systems set it);
3. ``$DOCKER_CONFIG/config.json`` (else ``~/.docker/config.json``):
   ``credHelpers`` for the registry, then ``auths``, then ``credsStore``.

Credential helpers are the ``docker-credential-NAME`` programs of the
docker-credential-helpers protocol: the action (``get``, ``store``, ``erase``)
is the argument, the request is on stdin and the answer on stdout.

The config document itself (where it is, its fields checked, written back) is
:mod:`derrick.auth.dockerconfig`.  Secrets never appear in exception messages or in a
:class:`Credential`'s repr.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from derrick.auth.dockerconfig import (
    DOCKER_HUB_KEY,
    ENV_SOURCE,
    JSONObject,
    auths_of,
    config_key,
    config_path,
    cred_helpers,
    creds_store,
    helper_for,
    load_config,
    matching_keys,
    normalize_registry,
    parse_env_config,
    write_config,
)
from derrick.errors import CredentialsError

__all__ = [
    "DOCKER_HUB_KEY",
    "Credential",
    "CredentialStore",
    "config_key",
    "config_path",
    "normalize_registry",
]

#: Prefix of credential helper programs.
HELPER_PREFIX = "docker-credential-"
#: The user name a helper reports when its secret is an identity token.
TOKEN_USERNAME = "<token>"
#: Seconds a credential helper may take (some ask the user to unlock a keyring).
HELPER_TIMEOUT = 120.0
#: What helpers print when they have nothing for a server.
_NOT_FOUND = "credentials not found"


@dataclass(frozen=True, repr=False)
class Credential:
    """A user name and password, and/or an identity token, for one registry.

    ``password`` also carries registry tokens used in place of a password.
    ``identity_token`` is Docker's ``identitytoken``: an OAuth2 refresh token.
    """

    username: str | None = None
    password: str | None = None
    identity_token: str | None = None

    def __repr__(self) -> str:
        pw = None if self.password is None else "<redacted>"
        tok = None if self.identity_token is None else "<redacted>"
        return f"Credential(username={self.username!r}, password={pw}, identity_token={tok})"

    __str__ = __repr__


class CredentialStore:
    """Looks credentials up (and saves them) the way the Docker CLI does.

    The config file is read on every call, so changes made meanwhile (by
    ``docker login``, say) are seen.  ``env`` replaces the process environment
    for finding the config (``DOCKER_CONFIG``, ``DOCKER_AUTH_CONFIG``,
    ``HOME``); credential helpers run with the process environment updated by
    ``env``.  ``overrides`` maps registry names to credentials that win over
    everything else (``--username``/``--password-stdin``).
    """

    def __init__(
        self,
        *,
        config_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Credential] | None = None,
    ) -> None:
        self._config_path = config_path
        self._env = env
        self._overrides = {normalize_registry(k): v for k, v in (overrides or {}).items()}

    @property
    def env(self) -> Mapping[str, str]:
        return os.environ if self._env is None else self._env

    @property
    def path(self) -> Path:
        """The config.json this store reads and writes."""
        if self._config_path is not None:
            return self._config_path
        return config_path(self.env)

    # -- public API ---------------------------------------------------------------------

    def get(self, registry: str) -> Credential | None:
        """The credentials for ``registry``, or None to go anonymous."""
        cred = self._overrides.get(normalize_registry(registry))
        if cred is not None:
            return cred
        raw = self.env.get("DOCKER_AUTH_CONFIG", "")
        if raw.strip():
            cred = self._lookup(parse_env_config(raw), registry, ENV_SOURCE)
            if cred is not None:
                return cred
        path = self.path
        cfg = load_config(path)
        if cfg is None:
            return None
        return self._lookup(cfg, registry, str(path))

    def store(self, registry: str, cred: Credential) -> Path:
        """Save ``cred`` for ``registry`` (``login``); the config file's path is returned.

        With a credential helper configured for the registry (``credHelpers``
        or ``credsStore``) the secret goes to the helper and config.json only
        keeps an empty ``auths`` entry as a marker, as Docker does; otherwise
        it is written to ``auths`` base64-encoded.  Other content of the file
        is preserved.
        """
        if cred.identity_token is None and (cred.username is None or cred.password is None):
            raise CredentialsError(
                f"nothing to save for {registry}",
                hint="give a user name and password, or an identity token",
            )
        path = self.path
        where = str(path)
        cfg = load_config(path) or {}
        auths = auths_of(cfg, where)
        key = config_key(registry)
        stale = matching_keys(auths, registry)
        helper = helper_for(cfg, registry, where)
        entry: JSONObject = {}
        if helper is not None:
            if cred.identity_token is not None:
                username, secret = TOKEN_USERNAME, cred.identity_token
            else:
                username, secret = cred.username or "", cred.password or ""
            payload = json.dumps({"ServerURL": key, "Username": username, "Secret": secret})
            proc = self._run_helper(helper, "store", payload, where=where)
            if proc.returncode != 0:
                raise CredentialsError(
                    f"{HELPER_PREFIX}{helper} could not save the credentials for {registry}: "
                    f"{_helper_message(proc, secret)}",
                    hint=f"check that {HELPER_PREFIX}{helper} works, or remove it from {where}",
                )
        else:
            if cred.username is not None and ":" in cred.username:
                raise CredentialsError(
                    f"the user name for {registry} contains ':', which config.json cannot hold",
                    hint="use a user name without ':', or configure a credential helper",
                )
            if cred.username is not None and cred.password is not None:
                raw = f"{cred.username}:{cred.password}".encode()
                entry["auth"] = base64.b64encode(raw).decode("ascii")
            if cred.identity_token is not None:
                entry["identitytoken"] = cred.identity_token
        if stale == [key] and auths[key] == entry and "auths" in cfg:
            return path  # the file already says exactly this
        new_auths = {k: v for k, v in auths.items() if k not in stale}
        new_auths[key] = entry
        cfg["auths"] = new_auths
        write_config(path, cfg)
        return path

    def erase(self, registry: str) -> bool:
        """Forget the credentials for ``registry`` (``logout``); True if any were removed."""
        path = self.path
        where = str(path)
        cfg = load_config(path)
        if cfg is None:
            return False
        removed = False
        helper = helper_for(cfg, registry, where)
        if helper is not None:
            proc = self._run_helper(helper, "erase", config_key(registry), where=where)
            if proc.returncode == 0:
                removed = True
            elif not _is_not_found(proc):
                raise CredentialsError(
                    f"{HELPER_PREFIX}{helper} could not remove the credentials for {registry}: "
                    f"{_helper_message(proc)}",
                    hint=f"check that {HELPER_PREFIX}{helper} works, or remove it from {where}",
                )
        auths = auths_of(cfg, where)
        stale = matching_keys(auths, registry)
        if stale:
            # A bare marker left by a helper login is not itself a credential.
            removed = removed or any(auths[k] for k in stale)
            cfg["auths"] = {k: v for k, v in auths.items() if k not in stale}
            write_config(path, cfg)
        return removed

    # -- lookup -------------------------------------------------------------------------

    def _lookup(self, cfg: JSONObject, registry: str, where: str) -> Credential | None:
        """Look ``registry`` up in one config document: credHelpers, auths, credsStore."""
        helpers = cred_helpers(cfg, where)
        keys = matching_keys(helpers, registry)
        if keys:
            cred = self._helper_get(helpers[keys[0]], registry, where)
            if cred is not None:
                return cred
        auths = auths_of(cfg, where)
        for k in matching_keys(auths, registry):
            cred = _from_auth_entry(auths[k], k, where)
            if cred is not None:
                return cred
        store = creds_store(cfg, where)
        if store:
            return self._helper_get(store, registry, where)
        return None

    def _helper_get(self, helper: str, registry: str, where: str) -> Credential | None:
        exe = HELPER_PREFIX + helper
        proc = self._run_helper(helper, "get", config_key(registry), where=where)
        if proc.returncode != 0:
            if _is_not_found(proc):
                return None
            raise CredentialsError(
                f"{exe} could not get the credentials for {registry}: {_helper_message(proc)}",
                hint=f"check that {exe} works, or remove it from {where}",
            )
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            # The output may hold a secret: do not quote it.
            raise CredentialsError(
                f"{exe} get answered something other than a JSON object for {registry}",
                hint=f"check that {exe} is a Docker credential helper",
            )
        username = data.get("Username")
        secret = data.get("Secret")
        username = username if isinstance(username, str) else ""
        secret = secret if isinstance(secret, str) else ""
        if not username and not secret:
            return None
        if username == TOKEN_USERNAME:
            return Credential(identity_token=secret)
        return Credential(username=username, password=secret)

    def _run_helper(
        self, helper: str, action: str, payload: str, *, where: str
    ) -> subprocess.CompletedProcess[str]:
        exe = HELPER_PREFIX + helper
        child_env = dict(os.environ)
        if self._env is not None:
            child_env.update(self._env)
        found = shutil.which(exe, path=child_env.get("PATH", os.defpath))
        if found is None:
            raise CredentialsError(
                f"credential helper {exe} (named in {where}) was not found on PATH",
                hint=f"install {exe}, or remove it from {where}",
            )
        try:
            return subprocess.run(
                [found, action],
                input=payload,
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                env=child_env,
                timeout=HELPER_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CredentialsError(
                f"{exe} {action} did not finish within {HELPER_TIMEOUT:g} seconds",
                hint=f"check that {exe} works on its own (it may be waiting for a prompt)",
            ) from None
        except OSError as e:
            raise CredentialsError(
                f"could not run {exe}: {e.strerror or e}",
                hint=f"check that {found} is an executable program",
            ) from None


def _from_auth_entry(entry: object, key: str, where: str) -> Credential | None:
    """The credential in one ``auths`` entry; None for an empty entry (a helper's marker)."""
    if not isinstance(entry, dict):
        raise CredentialsError(
            f'auths["{key}"] in {where} is not a JSON object', hint="fix or remove that entry"
        )
    username: str | None = None
    password: str | None = None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth.strip():
        bad = CredentialsError(
            f'auths["{key}"].auth in {where} is not base64 of "user:password"',
            hint=f"log in to {key} again, or fix that entry",
        )
        compact = "".join(auth.split())
        compact += "=" * (-len(compact) % 4)
        try:
            decoded = base64.b64decode(compact, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise bad from None
        user, sep, pw = decoded.partition(":")
        if not sep:
            raise bad
        if user or pw:
            username, password = user, pw
    else:
        u, p = entry.get("username"), entry.get("password")
        username = u if isinstance(u, str) and u else None
        password = p if isinstance(p, str) and p else None
    token = entry.get("identitytoken")
    identity_token = token if isinstance(token, str) and token else None
    if username is None and password is None and identity_token is None:
        return None
    return Credential(username=username, password=password, identity_token=identity_token)


# -- helper output -----------------------------------------------------------------------


def _is_not_found(proc: subprocess.CompletedProcess[str]) -> bool:
    return _NOT_FOUND in f"{proc.stdout}\n{proc.stderr}".lower()


def _helper_message(proc: subprocess.CompletedProcess[str], secret: str | None = None) -> str:
    """A short reason from a failed helper run, with the secret it was given removed."""
    for text in (proc.stderr, proc.stdout):
        for line in text.splitlines():
            line = line.strip()
            if line:
                if secret:
                    line = line.replace(secret, "<redacted>")
                return line[:200]
    return f"exit status {proc.returncode}"
