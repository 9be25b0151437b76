"""Start-up: ``import derrick`` and ``derrick --version``/``--help`` load no HTTP stack, and
every command is found where the lazy command table says."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

import derrick
from derrick.cli.groups import COMMANDS, GROUPS, LazyGroup
from derrick.cli.main import cli

HEAVY = (
    "httpx",
    "httpcore",
    "h11",
    "ssl",
    "rich",
    "derrick.registry",
    "derrick.ops",
    "derrick.layout",
)


def _loaded_after(code: str) -> list[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    script = (
        f"{code}\nimport json, sys\n"
        "print(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    return list(json.loads(out.splitlines()[-1]))


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY)]


def test_import_derrick_is_light_and_lazy() -> None:
    assert _heavy(_loaded_after("import derrick")) == []
    for name in derrick.__all__:
        assert getattr(derrick, name) is not None
        assert name in dir(derrick)
    assert derrick.RegistryClient.__module__ == "derrick.registry.client"
    with pytest.raises(AttributeError):
        derrick.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_load_no_http_stack(flag: str) -> None:
    code = (
        f"import sys\nfrom derrick.cli.main import main\nsys.argv = ['derrick', '{flag}']\nmain()"
    )
    loaded = _loaded_after(code)
    assert _heavy(loaded) == []
    assert not [
        m
        for m in loaded
        if m.startswith("derrick.cli.")
        and m.split(".")[2] in ("read", "write", "transfer", "fs", "progress")
    ]


def test_group_help_lists_commands_without_loading_them() -> None:
    code = (
        "import sys, contextlib, io\nfrom derrick.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['image', '--help'])\n    main(['tag', '--help'])"
    )
    assert _heavy(_loaded_after(code)) == []


def _all_commands() -> dict[str, dict[str, click.Command]]:
    """Every command each group has once every command module is loaded."""
    ctx = click.Context(cli)
    out: dict[str, dict[str, click.Command]] = {"": {}}
    for name, group in [("", cli), *((g.name or "", g) for g in GROUPS)]:
        assert isinstance(group, LazyGroup)
        found = out.setdefault(name, {})
        for cmd in group.list_commands(ctx):
            command = group.get_command(ctx, cmd)
            assert command is not None, f"{name} {cmd}"
            if not isinstance(command, click.Group):
                found[cmd] = command
    return out


def test_the_command_table_is_true() -> None:
    """Each listed command is the function named, with the help sentence listed; and no
    module registers a command the table does not list."""
    for module in ("read", "write", "transfer", "fs", "sync"):
        __import__(f"derrick.cli.{module}")
    commands = _all_commands()
    for group, table in COMMANDS.items():
        assert set(commands[group]) - {"login", "logout"} == set(table), group
        for name, (module, function, sentence) in table.items():
            command = commands[group][name]
            assert command.callback is not None
            assert (command.callback.__module__, command.callback.__name__) == (module, function)
            first = (command.help or "").split("\n\n")[0].replace("\n", " ").strip()
            assert first == sentence, f"{group} {name}"
