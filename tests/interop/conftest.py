"""Fixtures the interop tests share: isolation from the user's configuration, the CLI, the
open registry's seeded images, and the peer tools with state of their own (see
:mod:`support.peers`): ``tool_env`` (skopeo, umoci, podman), ``podman`` (its command line, with
private storage) and ``dockerd`` (a Docker daemon for the session)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cli import Cli, Isolation, isolate
from support.peers import Dockerd, docker_daemon
from support.peers import podman as podman_storage
from support.peers import tool_env as make_tool_env
from support.seed import SeededRegistries, SeededRegistry


@pytest.fixture(autouse=True)
def iso(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Isolation:
    return isolate(monkeypatch, tmp_path)


@pytest.fixture
def tool_env(iso: Isolation, tmp_path: Path) -> dict[str, str]:
    return make_tool_env(iso.home, tmp_path / "tool-tmp")


@pytest.fixture
def cli(capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(capsysbinary, monkeypatch)


@pytest.fixture
def podman(tool_env: dict[str, str]) -> Iterator[list[str]]:
    with podman_storage(tool_env) as cmd:
        yield cmd


@pytest.fixture
def seeded(seeded_registries: SeededRegistries) -> SeededRegistry:
    return seeded_registries.open


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    with docker_daemon() as daemon:
        yield daemon
