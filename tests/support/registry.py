"""Run the CNCF distribution registry (``/usr/bin/docker-registry``) as a child process.

:func:`start_registry` writes a config file (JSON, which the registry's YAML parser accepts) into
a work directory, starts ``docker-registry serve CONFIG`` on ``127.0.0.1`` with a free port,
sends stdout and stderr to ``registry.log`` and waits until ``GET /v2/`` answers 200 or 401.

Modes: ``auth="none"`` | ``"htpasswd"`` | ``"token"``, each with or without TLS (and with TLS,
optionally requiring a client certificate: ``client_cas=True``).
Storage is the filesystem driver under ``<workdir>/storage`` with deletes enabled.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from .tls import TLSMaterial
from .tokenserver import TokenServer

REGISTRY_BINARY = os.environ.get("DERRICK_TEST_REGISTRY_BINARY", "/usr/bin/docker-registry")

AuthMode = Literal["none", "htpasswd", "token"]

DEFAULT_BASIC_USERS: dict[str, str] = {"tester": "tester-secret", "other": "other-secret"}


class RegistryStartError(RuntimeError):
    pass


#: Every registry started and not yet stopped; stopped at interpreter exit as a safety net.
_LIVE: dict[int, RegistryProcess] = {}


@atexit.register
def _stop_all() -> None:
    for reg in list(_LIVE.values()):
        reg.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def registry_version() -> str:
    out = subprocess.run(
        [REGISTRY_BINARY, "--version"], capture_output=True, text=True, check=True
    ).stdout
    return out.strip()


def write_htpasswd(path: Path, users: dict[str, str]) -> None:
    """Write a bcrypt htpasswd file (the registry accepts bcrypt entries only)."""
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        raise RegistryStartError("htpasswd (apache2-utils) is required for basic-auth registries")
    lines = []
    for user, password in users.items():
        out = subprocess.run(
            [htpasswd, "-Bbn", "-C", "4", user, password],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        lines.append(out.strip())
    path.write_text("\n".join(lines) + "\n")


@dataclass
class RegistryProcess:
    name: str
    auth: AuthMode
    host: str  #: "127.0.0.1:PORT"
    port: int
    scheme: str  #: "http" or "https"
    workdir: Path
    storage_dir: Path
    config_path: Path
    log_path: Path
    ca_cert: Path | None = None  #: the test CA when serving TLS
    tls: TLSMaterial | None = None
    username: str | None = None  #: a user with full access (htpasswd and token modes)
    password: str | None = None
    users: dict[str, str] = field(default_factory=dict)  #: every known user -> password
    token_server: TokenServer | None = None
    #: the registry asks for a client certificate signed by the test CA (``http.tls.clientcas``)
    client_auth: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def tls_enabled(self) -> bool:
        return self.scheme == "https"

    @property
    def credentials(self) -> tuple[str, str] | None:
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    def verify(self) -> Any:
        """A value for httpx's ``verify=``: an SSL context trusting the test CA (with the test
        client certificate when the registry asks for one), or True."""
        if self.tls is not None:
            return self.tls.ssl_context(client=self.client_auth)
        return True

    def client(self, **kwargs: Any) -> httpx.Client:
        """A plain httpx client with ``base_url`` and TLS trust set up (no auth)."""
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, verify=self.verify(), **kwargs)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        """Current size of the log; pass to :meth:`log_since` to see only newer lines."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        _LIVE.pop(id(self), None)
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.process = None


def _config(
    *,
    port: int,
    storage_dir: Path,
    auth: AuthMode,
    htpasswd_path: Path | None,
    token_server: TokenServer | None,
    tls: TLSMaterial | None,
    client_cas: bool = False,
) -> dict[str, Any]:
    http: dict[str, Any] = {
        "addr": f"127.0.0.1:{port}",
        "secret": "derrick-test-http-secret",
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    if tls is not None:
        http["tls"] = {"certificate": str(tls.server_cert), "key": str(tls.server_key)}
        if client_cas:
            http["tls"]["clientcas"] = [str(tls.ca_cert)]
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {
            "level": "info",
            "formatter": "text",
            "accesslog": {"disabled": False},
            "fields": {"service": "registry"},
        },
        "storage": {
            "filesystem": {"rootdirectory": str(storage_dir)},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
        "health": {"storagedriver": {"enabled": False}},
    }
    if auth == "htpasswd":
        assert htpasswd_path is not None
        config["auth"] = {"htpasswd": {"realm": "derrick-test", "path": str(htpasswd_path)}}
    elif auth == "token":
        assert token_server is not None
        config["auth"] = {
            "token": {
                "realm": token_server.realm,
                "service": token_server.service,
                "issuer": token_server.issuer,
                "rootcertbundle": str(token_server.cert_path),
            }
        }
    return config


def start_registry(
    workdir: Path,
    *,
    name: str = "registry",
    auth: AuthMode = "none",
    tls: TLSMaterial | None = None,
    token_server: TokenServer | None = None,
    users: dict[str, str] | None = None,
    client_cas: bool = False,
    timeout: float = 15.0,
) -> RegistryProcess:
    """Start a registry and wait for it to answer ``GET /v2/``. Call ``stop()`` when done.

    ``client_cas`` (with ``tls``): the registry requires a client certificate signed by the
    test CA, such as ``tls.client_cert``.
    """
    if client_cas and tls is None:
        raise ValueError("client_cas needs tls")
    if not Path(REGISTRY_BINARY).exists():
        raise RegistryStartError(f"{REGISTRY_BINARY} not found (apt-get install docker-registry)")
    workdir.mkdir(parents=True, exist_ok=True)
    storage_dir = workdir / "storage"
    storage_dir.mkdir(exist_ok=True)

    username = password = None
    known_users: dict[str, str] = {}
    htpasswd_path: Path | None = None
    if auth == "htpasswd":
        known_users = dict(users or DEFAULT_BASIC_USERS)
        htpasswd_path = workdir / "htpasswd"
        write_htpasswd(htpasswd_path, known_users)
        username, password = next(iter(known_users.items()))
    elif auth == "token":
        if token_server is None:
            raise ValueError("auth='token' needs a running token_server")
        known_users = dict(token_server.policy.users)
        username, password = next(iter(known_users.items()))

    last_error = ""
    for _attempt in range(3):
        port = free_port()
        config_path = workdir / "config.yml"
        config_path.write_text(
            json.dumps(
                _config(
                    port=port,
                    storage_dir=storage_dir,
                    auth=auth,
                    htpasswd_path=htpasswd_path,
                    token_server=token_server,
                    tls=tls,
                    client_cas=client_cas,
                ),
                indent=2,
            )
        )
        log_path = workdir / "registry.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir)},
            )
        reg = RegistryProcess(
            name=name,
            auth=auth,
            host=f"127.0.0.1:{port}",
            port=port,
            scheme="https" if tls else "http",
            workdir=workdir,
            storage_dir=storage_dir,
            config_path=config_path,
            log_path=log_path,
            ca_cert=tls.ca_cert if tls else None,
            tls=tls,
            username=username,
            password=password,
            users=known_users,
            token_server=token_server,
            client_auth=client_cas,
            process=proc,
        )
        _LIVE[id(reg)] = reg
        try:
            _wait_ready(reg, timeout)
            return reg
        except RegistryStartError as e:
            reg.stop()
            last_error = str(e)
            if "address already in use" not in last_error:
                break
    raise RegistryStartError(last_error)


def _wait_ready(reg: RegistryProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(verify=reg.verify(), timeout=2) as client:
        while True:
            if reg.process is None or reg.process.poll() is not None:
                raise RegistryStartError(
                    f"registry {reg.name} exited early:\n{reg.log_text()[-4000:]}"
                )
            try:
                r = client.get(reg.url + "/v2/")
                if r.status_code in (200, 401):
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RegistryStartError(
                    f"registry {reg.name} not ready after {timeout}s:\n{reg.log_text()[-4000:]}"
                )
            time.sleep(0.05)
