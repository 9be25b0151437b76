"""Fixtures every integration test module shares.

``env`` (autouse) isolates each test from the user's Docker config, home and
blob cache; ``cli`` runs derrick's CLI in-process; ``seeded`` is the session's
seeded registries.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.cli import Cli, Isolation, isolate
from support.seed import SeededRegistries


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Isolation:
    return isolate(monkeypatch, tmp_path)


@pytest.fixture
def cli(capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(capsysbinary, monkeypatch)


@pytest.fixture
def seeded(seeded_registries: SeededRegistries) -> SeededRegistries:
    return seeded_registries
