"""What the CLI says in the corners a new user finds: a login with no terminal, an
interrupt, a command missing an argument, a layout holding one tag twice, a broken
``index.json``, a file where a directory should be, a repository with no tags, and the
progress display.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.cli import Cli, Isolation, run_subprocess
from support.faultproxy import Fault, FaultProxy
from support.registry import RegistryProcess
from support.seed import SeededRegistries
from support.terminal import Terminal, interruptible
from support.tools import require

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
        preexec_fn=interruptible,
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


# -- a missing argument ----------------------------------------------------------------------


def test_tag_without_a_new_tag_says_what_is_missing(cli: Cli, seeded: SeededRegistries) -> None:
    img = seeded.open["test/single"]
    for argv in (["tag", img.reference], ["tag", "add", img.reference]):
        r = cli(*argv)
        line = r.failed()
        assert r.code == 2
        assert f"no new tag given for {img.reference}" in line
        assert f"derrick tag {img.reference} NEWTAG" in line
        assert "--help" not in line


# -- local paths -----------------------------------------------------------------------------


def test_a_layout_holding_one_tag_twice_says_how_to_name_each(
    cli: Cli, seeded: SeededRegistries, tmp_path: Path, unique_repo: Callable[..., str]
) -> None:
    first, second = seeded.open["test/single"], seeded.open["test/eight"]
    layout = tmp_path / "both"
    cli("image", "pull", first.reference, "-o", layout, "-q").ok()
    r = cli("image", "pull", second.reference, "-o", layout, "-q").ok()
    warning = r.err_lines[-1]
    assert warning.startswith(f"derrick: warning: {layout} now holds 2 images tagged 'v1'")
    by_name = f"oci:{layout}:{second.reference}"
    by_digest = f"oci:{layout}:{second.digest}"
    assert by_name in warning and by_digest in warning
    assert f"skopeo reads only the tag (oci:{layout}:v1)" in warning
    assert "first in index.json" in warning

    # derrick takes both forms it suggests, and each names the image just pulled
    host = first.registry.host
    for location in (by_name, by_digest):
        target = f"{host}/{unique_repo()}:v1"
        cli("image", "push", location, target, "-q").ok()
        assert cli("manifest", "head", target).ok().out.strip() == second.digest
    # skopeo: the full name is not a name it knows, and the tag gives the first image
    skopeo = require("skopeo")
    by_tag = subprocess.run(
        [skopeo, "inspect", "--raw", f"oci:{layout}:v1"], capture_output=True, check=True
    )
    assert "sha256:" + hashlib.sha256(by_tag.stdout).hexdigest() == first.digest
    named = subprocess.run([skopeo, "inspect", "--raw", by_name], capture_output=True)
    assert named.returncode != 0


def test_a_broken_index_json_is_named(
    cli: Cli, seeded: SeededRegistries, tmp_path: Path, unique_repo: Callable[..., str]
) -> None:
    img = seeded.open["test/single"]
    layout = tmp_path / "layout"
    cli("image", "pull", img.reference, "-o", layout, "-q").ok()
    (layout / "index.json").write_text('{"schemaVersion": 2, "manif')
    target = f"{img.registry.host}/{unique_repo()}:v1"
    for argv in (["image", "push", layout, target], ["image", "unpack", layout, tmp_path / "u"]):
        line = cli(*argv).failed()
        assert f"{layout}: index.json is not valid JSON" in line
        assert "manifest" not in line


@pytest.fixture
def blocker(tmp_path: Path) -> Iterator[Path]:
    """A file, where the tests want a directory."""
    path = tmp_path / "f.txt"
    path.write_text("a file\n")
    yield path
    assert path.read_text() == "a file\n"


def test_a_file_where_the_destination_directory_should_be(
    cli: Cli, seeded: SeededRegistries, blocker: Path
) -> None:
    img = seeded.open["test/single"]
    repo = f"{img.registry.host}/{img.repo}"
    for argv in (
        ["image", "pull", img.reference, "-o", blocker / "sub", "-q"],
        ["image", "pull", img.reference, "-o", blocker / "sub.tar", "-q"],
        ["image", "pull", img.reference, "-o", blocker / "a" / "b", "-q"],
        ["image", "pull", img.reference, "-o", blocker / "x", "--format", "oci-archive", "-q"],
        ["blob", "get", repo, img.layout.image.layers[0].digest, "-o", blocker / "blob"],
    ):
        line = cli(*argv).failed()
        assert f"{blocker} is not a directory" in line, line
        assert "file exists" not in line.lower()
        assert ".partial" not in line and ".derrick-" not in line  # no temporary names


def test_a_file_where_a_directory_should_be_is_named_not_a_temporary_file(
    cli: Cli, seeded: SeededRegistries, blocker: Path
) -> None:
    img = seeded.open["test/single"]
    for argv, said in (
        (
            ["image", "unpack", img.reference, blocker / "rootfs", "-q"],
            f"cannot write in {blocker}: it is not a directory",
        ),
        (  # as image pull says it
            ["image", "export", img.reference, "-o", blocker / "fs.tar", "-q"],
            f"cannot write {blocker / 'fs.tar'}: {blocker} is not a directory",
        ),
    ):
        line = cli(*argv).failed()
        assert said in line, line
        assert ".partial" not in line and ".derrick-" not in line  # no temporary names


# -- a repository with no tags ---------------------------------------------------------------


def test_a_repository_of_untagged_manifests_exists_and_has_no_tags(
    cli: Cli, seeded: SeededRegistries, unique_repo: Callable[..., str]
) -> None:
    img = seeded.open["test/single"]
    host = img.registry.host
    repo = f"{host}/{unique_repo()}"
    cli("image", "copy", img.reference, f"{repo}@{img.digest}", "-q").ok()
    r = cli("tag", "ls", repo).ok()
    assert r.out == ""
    assert r.err.strip() == f"{repo} has no tags"
    assert json.loads(cli("tag", "ls", repo, "--format", "json").ok().out) == []
    # one that does not exist still does not
    line = cli("tag", "ls", f"{host}/{unique_repo()}").failed()
    assert "repository does not exist" in line


def test_no_tags_and_no_catalog_to_ask(seeded: SeededRegistries, cli: Cli) -> None:
    """Without access to the catalog, derrick cannot tell a repository of untagged
    manifests from none: it says both."""
    reg = seeded.token.registry
    argv = ["tag", "ls", f"{reg.host}/private/none/such", "--insecure", "-u", "alice"]
    line = cli(*argv, "--password-stdin", stdin="alice-secret").failed()
    assert "private/none/such" in line
    assert "does not exist, or holds only untagged manifests" in line


# -- progress --------------------------------------------------------------------------------

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_DECIMAL_SPEED = re.compile(r"[0-9.]+ ?[kMGT]?B/s")


def test_progress_speaks_binary_units(medium: str, tmp_path: Path) -> None:
    with Terminal("image", "pull", medium, "-o", tmp_path / "image") as term:
        code, screen = term.finish()
    shown = _ESCAPES.sub("", screen)
    assert code == 0, shown
    assert re.search(r"[0-9.]+ MiB ", shown), shown  # sizes in MiB
    assert re.search(r"[0-9.]+ (KiB|MiB|GiB)/s", shown), shown  # and a speed in MiB/s
    assert not _DECIMAL_SPEED.search(shown), shown


def test_progress_shows_no_speed_for_blobs_that_did_not_move(
    seeded: SeededRegistries, unique_repo: Callable[..., str]
) -> None:
    """Every blob mounted: no byte moved, so no speed."""
    img = seeded.open["test/single"]
    target = f"{img.registry.host}/{unique_repo()}:v1"
    with Terminal("image", "copy", img.reference, target) as term:
        code, screen = term.finish()
    shown = _ESCAPES.sub("", screen)
    assert code == 0, shown
    assert "mounted" in shown and "B/s" not in shown, shown
