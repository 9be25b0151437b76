"""Run the real ``derrick`` CLI from tests, in-process or as a child process.

:func:`isolate` points ``DOCKER_CONFIG``, ``HOME``, ``DERRICK_CACHE_DIR`` and
``DERRICK_CERTS_DIR`` at fresh directories under the test's ``tmp_path`` (and drops
``DOCKER_AUTH_CONFIG``), so nothing reads or writes the user's ``~/.docker`` or
``/etc/docker/certs.d``.  Every CLI test calls it (the test modules do so through an
autouse fixture).

:class:`Cli` runs ``derrick.cli.main.main(argv)`` in-process, capturing stdout and stderr as
bytes with pytest's ``capsysbinary``; :func:`run_subprocess` runs ``python -m
derrick.cli.main`` to see real exit codes and stderr.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from derrick.cli.main import main


@dataclass(frozen=True)
class Isolation:
    docker_config: Path  #: the DOCKER_CONFIG directory
    home: Path
    cache: Path
    certs_dir: Path  #: DERRICK_CERTS_DIR (per-registry CAs, client certificates): not created

    @property
    def config_json(self) -> Path:
        return self.docker_config / "config.json"


def isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Isolation:
    home = tmp_path / "home"
    iso = Isolation(tmp_path / "docker-config", home, tmp_path / "cache", home / "certs.d")
    for d in (iso.docker_config, iso.home, iso.cache):
        d.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("DOCKER_CONFIG", str(iso.docker_config))
    monkeypatch.setenv("HOME", str(iso.home))
    monkeypatch.setenv("DERRICK_CACHE_DIR", str(iso.cache))
    monkeypatch.setenv("DERRICK_CERTS_DIR", str(iso.certs_dir))
    monkeypatch.delenv("DOCKER_AUTH_CONFIG", raising=False)
    monkeypatch.delenv("DERRICK_INSECURE", raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    return iso


@dataclass(frozen=True)
class Result:
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode()

    @property
    def err(self) -> str:
        return self.stderr.decode()

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def ok(self) -> Result:
        """Assert success (showing stderr when not) and return self."""
        assert self.code == 0, f"exit {self.code}; stderr:\n{self.err}"
        return self

    def failed(self) -> str:
        """Assert a clean failure: non-zero, one stderr line, no traceback; return that line."""
        assert self.code != 0, f"expected failure; stdout:\n{self.out}"
        assert "Traceback" not in self.err, self.err
        lines = self.err_lines
        assert len(lines) == 1, f"expected one line on stderr, got:\n{self.err}"
        assert lines[0].startswith("derrick: error: "), lines[0]
        return lines[0]


class Cli:
    """``cli(*argv, stdin=...)`` runs derrick in-process and returns a :class:`Result`."""

    def __init__(self, capsys: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch):
        self._capsys = capsys
        self._monkeypatch = monkeypatch

    def __call__(self, *argv: Any, stdin: str | None = None) -> Result:
        self._capsys.readouterr()  # drop anything printed before
        self._monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        code = main([str(a) for a in argv])
        captured = self._capsys.readouterr()
        return Result(code, captured.out, captured.err)


def run_subprocess(*argv: Any, stdin: str | None = None, timeout: float = 60) -> Result:
    """``python -m derrick.cli.main ARGV`` with the (isolated) environment of the test."""
    proc = subprocess.run(
        [sys.executable, "-m", "derrick.cli.main", *(str(a) for a in argv)],
        input=(stdin or "").encode(),
        capture_output=True,
        env=dict(os.environ),
        timeout=timeout,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
