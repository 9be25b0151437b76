"""What the CLI says in the corners a new user finds: a login with no terminal, an
interrupt, a command missing an argument, a layout holding one tag twice, a broken
``index.json``, a file where a directory should be, a repository with no tags, and the
progress display.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from support.cli import Isolation, run_subprocess
from support.faultproxy import Fault, FaultProxy
from support.registry import RegistryProcess
from support.seed import SeededRegistries
from support.terminal import Terminal

# -- login without a terminal ----------------------------------------------------------------


def test_login_without_a_terminal_says_which_options_to_pass(
    seeded: SeededRegistries, env: Isolation
) -> None:
    host = seeded.basic.registry.host
    r = run_subprocess("login", host, "--insecure")  # standard input: an empty pipe
    line = r.failed()
    assert r.code == 2
    assert "user name" in line and "not a terminal" in line
    assert "--username" in line and "--password-stdin" in line
    assert "interrupted" not in r.err and "Warning" not in r.err

    r = run_subprocess("login", host, "--insecure", "-u", "tester")
    line = r.failed()
    assert r.code == 2
    assert "password" in line and "--password-stdin" in line
    assert "Warning" not in r.err and "Password:" not in r.err
    assert not env.config_json.exists()


def test_login_at_the_end_of_terminal_input_is_not_an_interrupt(
    seeded: SeededRegistries, env: Isolation
) -> None:
    host = seeded.basic.registry.host
    with Terminal("login", host, "--insecure") as term:
        term.expect("Username: ")
        term.type("\x04")  # Ctrl-D
        code, screen = term.finish()
    assert code == 2, screen
    assert "derrick: error: login needs a user name, and the input ended" in screen
    assert "--username and --password-stdin" in screen
    assert "interrupted" not in screen

    with Terminal("login", host, "--insecure") as term:
        term.expect("Username: ")
        term.type("tester\n")
        term.expect("Password: ")
        term.type("\x04")
        code, screen = term.finish()
    assert code == 2, screen
    assert "login needs a password, and the input ended" in screen
    assert not env.config_json.exists()


def test_login_on_a_terminal(seeded: SeededRegistries, env: Isolation) -> None:
    reg = seeded.basic.registry
    with Terminal("login", reg.host, "--insecure") as term:
        term.expect("Username: ")
        term.type(f"{reg.username}\n")
        term.expect("Password: ")
        term.type(f"{reg.password}\n")
        code, screen = term.finish()
    assert code == 0, screen
    assert f"Login succeeded for {reg.host}" in screen
    assert str(reg.password) not in screen  # not echoed
    assert reg.host in json.loads(env.config_json.read_text())["auths"]

    with Terminal("login", reg.host, "--insecure") as term:
        term.expect("Username: ")
        term.type("\x03")  # Ctrl-C
        code, screen = term.finish()
    assert code == 130
    assert screen.rstrip().endswith("derrick: interrupted")


# -- interrupts ------------------------------------------------------------------------------


@pytest.fixture
def slow_tags(registry_open: RegistryProcess) -> Iterator[FaultProxy]:
    """The open registry, whose tag lists take 30 s to come."""
    fault = Fault(path=r"/v2/.*/tags/list", times=None, delay=30, status=200, body=b"{}")
    with FaultProxy(registry_open.url, [fault]) as proxy:
        yield proxy


def _wait_for(proxy: FaultProxy, route: str) -> None:
    deadline = time.monotonic() + 30
    while not proxy.requests_to(route):
        assert time.monotonic() < deadline, f"{route} was not asked for"
        time.sleep(0.02)


def test_an_interrupt_is_one_line(slow_tags: FaultProxy) -> None:
    route = "/v2/test/single/tags/list"
    proc = subprocess.Popen(
        [sys.executable, "-m", "derrick.cli.main", "tag", "ls", f"{slow_tags.host}/test/single"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(slow_tags, route)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert err == b"derrick: interrupted\n"  # no blank line before it
    assert out == b""

    slow_tags.clear()
    slow_tags.add_fault(
        Fault(path=r"/v2/.*/tags/list", times=None, delay=30, status=200, body=b"{}")
    )
    with Terminal("tag", "ls", f"{slow_tags.host}/test/single") as term:
        _wait_for(slow_tags, route)
        term.interrupt()
        code, screen = term.finish()
    assert code == 130
    assert [line for line in screen.split("\n") if line] == ["\rderrick: interrupted"]
