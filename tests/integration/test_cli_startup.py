"""A read command loads the HTTP stack and the registry client, and nothing for pulling,
pushing, unpacking or drawing: not rich, not httpx's own command-line client."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.seed import SeededRegistries

NOT_FOR_READS = (
    "rich",
    "pygments",
    "httpx._main",
    "derrick.ops.transfer",
    "derrick.ops.blobs",
    "derrick.images",
    "derrick.ops.unpack",
    "derrick.layout",
    "derrick.store",
    "derrick.compression",
    "derrick.cli.progress",
)


def _run(argv: list[str]) -> tuple[str, list[str]]:
    """Run the CLI in a fresh interpreter: its output, and the modules it loaded."""
    script = (
        "import contextlib, io, json, sys\nfrom derrick.cli.main import main\n"
        "out = io.StringIO()\nwith contextlib.redirect_stdout(out):\n"
        f"    code = main({argv!r})\n"
        "print(json.dumps([code, out.getvalue(), "
        "sorted(k for k, v in sys.modules.items() if v is not None)]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ)
    )
    code, out, modules = json.loads(proc.stdout.splitlines()[-1])
    assert code == 0, proc.stderr
    return out, modules


@pytest.mark.parametrize("command", ["tag ls", "manifest head"])
def test_read_commands_load_only_what_they_use(command: str, seeded: SeededRegistries) -> None:
    img = seeded.open["test/single"]
    target = img.reference if command == "manifest head" else img.reference.rsplit(":", 1)[0]
    out, modules = _run([*command.split(), target])
    assert out.strip() == (img.digest if command == "manifest head" else "v1")
    assert "httpx" in modules and "derrick.registry" in modules
    assert [m for m in modules if m.startswith(NOT_FOR_READS)] == []
