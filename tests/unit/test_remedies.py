"""Errors carry a neutral message and a machine-readable remedy; the CLI words the remedy
with its flags, in one place."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import httpx
import pytest

import derrick
from derrick import mediatypes as mt
from derrick.cli.errors import REMEDIES, error_text, remedy_text
from derrick.errors import (
    REMEDY_KINDS,
    DerrickError,
    NotAnImageError,
    PlatformNotFoundError,
    Remedy,
    TransportError,
)
from derrick.manifest import Descriptor, ImageConfig, ImageManifest, Index, Platform
from derrick.platform import check_platform, choose_in_index, require_image
from derrick.registry.errors import RULES, map_error

PARAMS = {
    "host": "reg.test:5000",
    "registry": "reg.test:5000",
    "path": "/certs/reg.test/ca.crt",
    "platform": "linux/amd64",
}


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


def _answer(status: int, body: object = None, **headers: str) -> httpx.Response:
    request = httpx.Request("GET", "https://reg.test/v2/team/app/manifests/v1")
    if body is None:
        return httpx.Response(status, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "code", "held", "kind", "cli_words"),
    [
        (401, "UNAUTHORIZED", {}, "login", "derrick login reg.test"),
        (401, "UNAUTHORIZED", {"sent": True}, "credentials", "(derrick login reg.test)"),
        (401, "UNAUTHORIZED", {"withheld": True}, "insecure", "pass --insecure"),
        (403, "DENIED", {"withheld": True}, "insecure", "pass --insecure"),
        (403, "DENIED", {}, "login", "--password-stdin"),
        (404, "MANIFEST_UNKNOWN", {}, "tags", "derrick tag ls"),
    ],
)
def test_registry_errors_carry_remedies(
    status: int, code: str, held: dict[str, bool], kind: str, cli_words: str
) -> None:
    e = map_error(
        _answer(status, {"errors": [{"code": code}]}),
        registry="reg.test",
        what="manifest reg.test/team/app:v1",
        subject="manifest",
        **held,
    )
    assert e.remedy is not None and e.remedy.kind == kind
    assert cli_words in error_text(e)
    assert "--" not in str(e) and "derrick " not in str(e)


def test_the_table_ends_with_a_rule_for_everything() -> None:
    last = RULES[-1]
    assert not last.codes and not last.statuses and last.when is None
    e = map_error(_answer(418), registry="reg.test", what="manifest x")
    assert type(e).__name__ == "ProtocolError" and "unexpected HTTP 418" in e.message


def test_platform_and_artifact_errors_speak_library_and_the_cli_names_its_flags() -> None:
    digest = "sha256:" + "a" * 64
    config = ImageConfig.parse(b'{"os": "linux", "architecture": "amd64"}')
    image = ImageManifest(
        b"{}",
        mt.OCI_MANIFEST,
        Descriptor.from_json({"mediaType": mt.OCI_CONFIG, "digest": digest, "size": 2}),
        (),
    )
    chart = ImageManifest(
        b"{}",
        mt.OCI_MANIFEST,
        Descriptor.from_json({"mediaType": "application/x.chart", "digest": digest, "size": 2}),
        (),
    )
    arm = Platform.parse("linux/arm64")
    entry = Descriptor.from_json(
        {
            "mediaType": mt.OCI_MANIFEST,
            "digest": digest,
            "size": 2,
            "platform": {"os": "linux", "architecture": "amd64"},
        }
    )
    index = Index(b"{}", mt.OCI_INDEX, (entry,))
    raised: list[DerrickError] = []
    for call in (
        lambda: check_platform("app:1", image, config, arm),
        lambda: check_platform("chart:1", chart, None, arm),
        lambda: choose_in_index(index, [arm], "app:1"),
        lambda: index.select(arm),
        lambda: require_image("chart:1", chart, "it has no filesystem"),
    ):
        with pytest.raises((PlatformNotFoundError, NotAnImageError)) as info:
            call()
        raised.append(info.value)
    kinds = [e.remedy.kind if e.remedy else None for e in raised]
    assert kinds == ["platform", "no-platform", "platforms", "platforms", "not-an-image"]
    for e in raised:
        assert "--" not in str(e) and "derrick " not in str(e), str(e)
    assert "use --platform linux/amd64, or leave --platform out" in error_text(raised[0])
    assert "derrick image copy" in error_text(raised[4])


#: How a message names the command line: a long flag, or one of derrick's commands.
CLI_WORDS = re.compile(
    r"(?<![\w-])--[a-z][a-z-]*"
    r"|\bderrick (?:image|tag|blob|manifest|repo|sync|login|logout|ratelimit)\b"
)


def cli_words_in(text: str, name: str) -> list[str]:
    """``name:line: words`` for each string of the Python source ``text`` that is not a
    docstring and names a CLI flag or command."""
    tree = ast.parse(text)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        f"{name}:{node.lineno}: {m.group(0)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        for m in CLI_WORDS.finditer(node.value)
    ]


def test_the_check_finds_cli_words_in_messages_not_in_docstrings() -> None:
    text = (
        '"""Used by ``derrick image pull --platform``."""\n'
        "def f(x):\n"
        '    """Docs may say --insecure."""\n'
        '    raise UsageError(f"{x}: pass --insecure", hint="run derrick login first")\n'
    )
    assert cli_words_in(text, "m.py") == ["m.py:4: --insecure", "m.py:4: derrick login"]


def test_the_library_names_no_cli_flag_or_command_in_its_messages() -> None:
    """Outside ``derrick.cli`` what the user can do is a remedy, worded by the CLI."""
    root = Path(derrick.__file__).parent
    found = [
        hit
        for path in sorted(root.rglob("*.py"))
        if path.relative_to(root).parts[0] != "cli"
        for hit in cli_words_in(path.read_text(), str(path.relative_to(root)))
    ]
    assert found == []
