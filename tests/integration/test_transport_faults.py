"""What derrick says and does when the other end is not what it should be: a registry that
restarts mid-transfer, a web server that is not a registry, a server that does not speak
HTTP, a proxy that is not there, and host names as users write them.

The registries are real (the seeded ones, or one behind a :class:`FaultProxy` that stops
and starts again on its port), and so are the web server (``python3 -m http.server``) and
the outbound proxy settings (``HTTP_PROXY``, ``HTTPS_PROXY``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cli import Cli, Isolation, run_subprocess
from support.faultproxy import Fault, FaultProxy
from support.rawclient import RawClient
from support.registry import RegistryProcess, free_port
from support.seed import SeededRegistries

CUT = 300 * 1024 + 7  # inside the second 1 MiB layer of ``medium``


def _wait_listening(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- a registry that restarts ----------------------------------------------------------------


def test_a_registry_restarting_mid_pull_is_waited_for(
    medium: str, registry_open: RegistryProcess, tmp_path: Path
) -> None:
    """The registry goes away while a layer streams (the connection is cut and new ones are
    refused for a second): the pull waits with backoff, within --retries, and resumes the
    layer from where it broke off."""
    repo, _, tag = medium.partition("/")[2].rpartition(":")
    with RawClient(registry_open) as raw:
        victim = raw.get_manifest(repo, tag).json()["layers"][1]["digest"]
    port = free_port()
    dest = tmp_path / "image"
    stall = Fault(digest=victim, stall_after=CUT, cut_after=CUT, stall_for=None)
    first = FaultProxy(registry_open.url, [stall], port=port).start()
    ref = f"127.0.0.1:{port}/{repo}:{tag}"
    argv = ["image", "pull", ref, "-o", str(dest), "-q", "--retries", "5"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "derrick.cli.main", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        first.wait_stalled(1)
        first.stop()  # no new connections, then the stalled layer's is cut
        time.sleep(1.0)
        second = FaultProxy(registry_open.url, port=port).start()
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            second.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert second.ranges(victim) == [f"bytes={CUT}-"]  # resumed where it broke off
    blob = dest / "blobs" / "sha256" / victim.split(":")[1]
    assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == victim


def test_a_port_that_never_answered_is_not_retried(cli: Cli) -> None:
    """A refused connection to a host that has not answered in this run fails at once."""
    host = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    line = cli("tag", "ls", f"{host}/x", "--retries", "5").failed()
    assert time.monotonic() - started < 1.5  # no backoff: 5 retries would take seconds
    assert f"cannot connect to registry {host}" in line
    assert "check the host name and port" in line


# -- servers that are not registries ---------------------------------------------------------


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[str]:
    """``python3 -m http.server`` serving an empty directory: ``127.0.0.1:PORT``."""
    port = free_port()
    root = tmp_path / "www"
    root.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_web_server_is_not_taken_for_a_registry(
    cli: Cli, web_server: str, tmp_path: Path, env: Isolation
) -> None:
    layout = tmp_path / "layout"
    for argv in (
        ["tag", "ls", f"{web_server}/x"],
        ["manifest", "head", f"{web_server}/x:v1"],
        ["image", "pull", f"{web_server}/x:v1", "-o", layout],
        ["blob", "get", f"{web_server}/x", "sha256:" + "0" * 64],
        ["repo", "ls", web_server],
    ):
        line = cli(*argv).failed()
        assert f"{web_server} does not speak the registry API" in line, line
        assert "HTTP 404" in line and "/v2/" in line
        assert "not found" not in line and "does not exist" not in line
    assert not layout.exists()
    r = cli("login", web_server, "-u", "someone", "--password-stdin", stdin="secret\n")
    assert f"{web_server} does not speak the registry API" in r.failed()
    assert not env.config_json.exists()


class _Babbler:
    """A TCP server that answers every connection with ``payload`` and closes it."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.host = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(1)
                try:
                    conn.recv(65536)
                    conn.sendall(self.payload)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\xff\x13\x37" * 64 + b"\r\n\r\n",  # binary noise
        b"SSH-2.0-OpenSSH_9.6\r\nInvalid SSH identification string.\r\n",  # another protocol
    ],
    ids=["binary", "ssh"],
)
def test_a_server_that_does_not_speak_http(cli: Cli, payload: bytes) -> None:
    server = _Babbler(payload)
    try:
        line = cli("tag", "ls", f"{server.host}/x", "--retries", "3").failed()
    finally:
        server.close()
    assert f"{server.host} does not speak HTTP" in line, line
    assert "not an HTTP response" in line
    assert "bytearray" not in line and "\\x" not in line  # no Python reprs
    assert "--retries" not in line and "run the command again" not in line
    # the https probe and one plain-http request: a protocol error is not retried
    assert server.connections == 2


# -- proxies ---------------------------------------------------------------------------------


def test_a_dead_proxy_is_named(
    cli: Cli, seeded: SeededRegistries, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    host = seeded.open.registry.host
    monkeypatch.setenv("HTTP_PROXY", f"http://user:hunter2@{dead}")
    r = cli("tag", "ls", f"{host}/test/single", "--retries", "0")
    line = r.failed()
    assert f"cannot reach {host}" in line
    assert f"the proxy http://{dead}" in line and "refused" in line
    assert "HTTP_PROXY" in line
    assert "cannot connect to registry" not in line
    assert "hunter2" not in r.err

    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.setenv("HTTPS_PROXY", f"http://{dead}")
    tls = seeded.tls.registry
    line = cli("tag", "ls", f"{tls.host}/test/single", "--ca-cert", tls.ca_cert).failed()
    assert f"cannot reach {tls.host}" in line and f"the proxy http://{dead}" in line


# -- host names and ports --------------------------------------------------------------------


def test_host_names_are_case_insensitive(
    cli: Cli, seeded: SeededRegistries, env: Isolation
) -> None:
    """LOCALHOST is this machine (plain http allowed), and a certs.d directory is found
    whatever the case of its name or of the reference."""
    open_port = seeded.open.registry.port
    r = cli("tag", "ls", f"LOCALHOST:{open_port}/test/single").ok()
    assert r.out.split() == ["v1"]

    tls = seeded.tls.registry
    assert tls.ca_cert is not None
    hostdir = env.certs_dir / f"localhost:{tls.port}"
    hostdir.mkdir(parents=True)
    shutil.copy(tls.ca_cert, hostdir / "ca.crt")
    r = cli("tag", "ls", f"LocalHost:{tls.port}/test/single").ok()
    assert r.out.split() == ["v1"]
    hostdir.rename(env.certs_dir / f"LOCALHOST:{tls.port}")
    r = cli("tag", "ls", f"localhost:{tls.port}/test/single").ok()
    assert r.out.split() == ["v1"]


@pytest.mark.parametrize("port", ["99999", "0", "65536"])
def test_an_invalid_port_is_refused_before_connecting(port: str) -> None:
    for argv in (["tag", "ls", f"localhost:{port}/x"], ["repo", "ls", f"localhost:{port}"]):
        r = run_subprocess(*argv)
        line = r.failed()
        assert f"invalid port {port}" in line and "1 to 65535" in line
        assert "connect" not in line
