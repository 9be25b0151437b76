"""The peer tools the interop tests drive, each with state of its own: skopeo, umoci and podman
(private HOME, XDG directories and storage), and a Docker daemon of the test session's own.

:class:`Dockerd` runs the Debian ``docker.io`` daemon as root with the ``vfs`` storage driver,
no iptables and no bridge, its data, exec root, pid file and socket in a short temporary
directory (socket paths must stay short); ``docker -H unix://SOCK`` talks to it.  Nothing of
the machine's own Docker (``/var/lib/docker``, ``/run/docker.sock``) is used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .tools import require

PODMAN = shutil.which("podman") or "podman"


def run(args: list[str], env: dict[str, str], *, input: bytes | None = None) -> str:
    """Run a tool; fail the test with its output unless it succeeds.  Returns its stdout."""
    proc = subprocess.run(args, env=env, input=input, capture_output=True, timeout=120)
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, f"{args} failed:\n{out}\n{err}"
    return out


def tool_env(home: Path, tmp: Path) -> dict[str, str]:
    """The environment of a tool run with ``home`` as its home and ``tmp`` for temporary files:
    no registries configured, an empty auth file."""
    (home / ".config").mkdir(exist_ok=True)
    run_dir = home / "run"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    registries_conf = home / "registries.conf"
    registries_conf.write_text("")
    (home / "auth.json").write_text("{}")
    tmp.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_RUNTIME_DIR": str(run_dir),
        "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
        "REGISTRY_AUTH_FILE": str(home / "auth.json"),
        "TMPDIR": str(tmp),
    }


@contextmanager
def podman(env: dict[str, str]) -> Iterator[list[str]]:
    """The podman command line with private storage, as root; the runroot path must be short."""
    root = Path(tempfile.mkdtemp(prefix="dk-pm-", dir="/tmp"))
    storage = ["--root", str(root / "r"), "--runroot", str(root / "rr")]
    try:
        yield [
            PODMAN,
            *storage,
            "--tmpdir",
            str(root / "t"),
            "--storage-driver",
            "vfs",
            "--events-backend",
            "none",
            "--cgroup-manager",
            "cgroupfs",
        ]
    finally:
        subprocess.run(
            [PODMAN, *storage, "--storage-driver", "vfs", "system", "reset", "--force"],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


class Dockerd:
    """A running Docker daemon of its own (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "sock"
        self.log = root / "dockerd.log"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root / "home"),
            "DOCKER_CONFIG": str(root / "cli"),
        }
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Dockerd:
        dockerd = require("dockerd")
        for d in ("data", "exec", "home", "cli"):
            (self.root / d).mkdir()
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    dockerd,
                    "--storage-driver",
                    "vfs",
                    "--iptables=false",
                    "--bridge=none",
                    "--data-root",
                    str(self.root / "data"),
                    "--exec-root",
                    str(self.root / "exec"),
                    "--pidfile",
                    str(self.root / "pid"),
                    "-H",
                    f"unix://{self.sock}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dockerd did not start:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.2)
        return self

    def _answers(self) -> bool:
        if not self.sock.exists():
            return False
        proc = subprocess.run(
            [require("docker"), "-H", f"unix://{self.sock}", "version"],
            env=self.env,
            capture_output=True,
            timeout=30,
        )
        return proc.returncode == 0

    def docker(self, *args: str, input: bytes | None = None) -> str:
        """``docker -H unix://SOCK ARGS``; its stdout (the test fails unless it succeeds)."""
        return run([require("docker"), "-H", f"unix://{self.sock}", *args], self.env, input=input)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


@contextmanager
def docker_daemon() -> Iterator[Dockerd]:
    """A :class:`Dockerd` for the life of the block; its directory is removed after it."""
    root = Path(tempfile.mkdtemp(prefix="dk-d-", dir="/tmp"))
    daemon = Dockerd(root)
    try:
        yield daemon.start()
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
