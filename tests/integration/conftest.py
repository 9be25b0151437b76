"""Fixtures every integration test module shares.

``env`` (autouse) isolates each test from the user's Docker config, home and
blob cache; ``cli`` runs derrick's CLI in-process; ``seeded`` is the session's
seeded registries; ``medium`` an image of two incompressible 1 MiB layers in the
open registry, more than ``small_disk`` (a 1 MiB tmpfs mounted for the test) holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cli import Cli, Isolation, isolate
from support.disk import small_tmpfs
from support.images import make_big_image
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.seed import SeededRegistries

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Isolation:
    return isolate(monkeypatch, tmp_path)


@pytest.fixture
def cli(capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(capsysbinary, monkeypatch)


@pytest.fixture
def seeded(seeded_registries: SeededRegistries) -> SeededRegistries:
    return seeded_registries


@pytest.fixture(scope="session")
def medium(registry_open: RegistryProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The reference of an image of two incompressible 1 MiB layers in the open registry."""
    layout = make_big_image(tmp_path_factory.mktemp("medium") / "layout", layers=2, layer_size=MiB)
    with RawClient(registry_open) as raw:
        raw.push_layout(layout, "disk/medium", "v1")
    return f"{registry_open.host}/disk/medium:v1"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test."""
    with small_tmpfs(tmp_path / "small") as mnt:
        yield mnt
