"""What to do about an error, as the library hands it over: a remedy with its parameters
(the CLI words it with its flags; see tests/unit/test_remedies.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from derrick.auth.credentials import Credential
from derrick.errors import DerrickError, Remedy
from derrick.reference import Reference
from derrick.registry import RegistryClient
from support.seed import SeededRegistries


def _error(client: RegistryClient, reference: str) -> DerrickError:
    with client, pytest.raises(DerrickError) as info:
        client.list_tags(Reference.parse(reference))
    e = info.value
    assert "--" not in str(e) and "derrick " not in str(e)  # library words only
    return e


def test_credentials_held_back_over_http(seeded: SeededRegistries) -> None:
    img = seeded.basic["test/single"]
    host = img.registry.host
    client = RegistryClient(credentials=lambda r: Credential("tester", "tester-secret"))
    e = _error(client, img.reference)
    assert "not sent over plain http" in e.message
    assert e.remedy == Remedy("insecure", host=host)


def test_no_credentials_for_a_private_repository(seeded: SeededRegistries) -> None:
    img = seeded.token["private/single"]
    e = _error(RegistryClient(credentials=lambda r: None, insecure=True), img.reference)
    assert e.remedy == Remedy("login", registry=img.registry.host)


def test_wrong_credentials(seeded: SeededRegistries) -> None:
    img = seeded.basic["test/single"]
    client = RegistryClient(credentials=lambda r: Credential("tester", "wrong"), insecure=True)
    e = _error(client, img.reference)
    assert e.remedy == Remedy("credentials", registry=img.registry.host)


def test_unknown_certificate_authority(seeded: SeededRegistries, tmp_path: Path) -> None:
    img = seeded.tls["test/single"]
    host = img.registry.host
    e = _error(RegistryClient(certs_dir=tmp_path), img.reference)
    assert e.remedy == Remedy("ca-cert", host=host, path=str(tmp_path / host / "ca.crt"))
