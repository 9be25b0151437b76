"""Errors carry a neutral message and a machine-readable remedy; the CLI words the remedy
with its flags, in one place."""

from __future__ import annotations

import pytest

from derrick.cli.errors import REMEDIES, error_text, remedy_text
from derrick.errors import REMEDY_KINDS, DerrickError, Remedy, TransportError

PARAMS = {"host": "reg.test:5000", "registry": "reg.test:5000", "path": "/certs/reg.test/ca.crt"}


@pytest.mark.parametrize("kind", REMEDY_KINDS)
def test_every_remedy_is_worded_by_the_cli_and_the_library(kind: str) -> None:
    remedy = Remedy(kind, **PARAMS)  # type: ignore[arg-type]
    cli, lib = remedy_text(remedy), remedy.describe()
    assert kind in REMEDIES
    for text in (cli, lib):
        assert text and "{" not in text  # every placeholder filled
    assert "--" in cli or "derrick " in cli or kind in ("retry",)
    assert "--" not in lib and "derrick " not in lib


def test_an_error_with_a_remedy() -> None:
    e = TransportError(
        "refusing plain-http request to http://reg.test:5000/v2/",
        hint="the registry is not named insecure",
        remedy=Remedy("insecure", host="reg.test:5000"),
    )
    assert e.remedy == Remedy("insecure", host="reg.test:5000")
    assert e.remedy.params["host"] == "reg.test:5000"
    assert str(e) == (
        "refusing plain-http request to http://reg.test:5000/v2/; the registry is not named "
        "insecure; name reg.test:5000 insecure (plain http, unverified TLS) if you trust it"
    )
    assert error_text(e) == (
        "refusing plain-http request to http://reg.test:5000/v2/; the registry is not named "
        "insecure; pass --insecure if you trust reg.test:5000 over http"
    )
    assert error_text(DerrickError("plain")) == str(DerrickError("plain")) == "plain"


def test_remedies_are_values() -> None:
    a = Remedy("login", registry="r")
    assert a == Remedy("login", registry="r") and hash(a) == hash(Remedy("login", registry="r"))
    assert a != Remedy("login", registry="s") and a != Remedy("credentials", registry="r")
    assert repr(a) == "Remedy('login', registry='r')"
    with pytest.raises(AttributeError):
        a.kind = "tags"  # type: ignore[misc]
