"""Where the CLI's output goes: a reader that stops early, a terminal, a local path.

* A pipe whose reader has gone (``derrick tag ls … | head -1``): derrick stops quietly with
  status 141, as ``ls | head`` does, with nothing on stderr.
* An archive to standard output that is a terminal is refused before anything is fetched.
* ``image copy`` to or from a local path writes or reads it, instead of reading the path as
  a Docker Hub repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from derrick.ops.blobs import put_blob
from derrick.reference import Reference
from support.cli import Cli, Isolation
from support.images import LayoutImage
from support.registry import RegistryProcess
from support.seed import SeededRegistries, derrick_client

DERRICK = [sys.executable, "-m", "derrick.cli.main"]


def _into_closed_pipe(*argv: Any) -> tuple[int, str]:
    """Run derrick with standard output a pipe whose reader has already gone."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(
            [*DERRICK, *(str(a) for a in argv)],
            stdin=subprocess.DEVNULL,
            stdout=w,
            stderr=subprocess.PIPE,
            env=dict(os.environ),
            timeout=60,
            check=False,
        )
    finally:
        os.close(w)
    return proc.returncode, proc.stderr.decode(errors="replace")


# -- a reader that stops early ---------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["tag", "ls", "{repo}"],
        ["tag", "ls", "{repo}", "--format", "json"],
        ["manifest", "get", "{ref}"],
        ["manifest", "get", "{ref}", "--format", "raw"],
        ["image", "config", "{ref}"],
        ["image", "inspect", "{ref}"],
        ["image", "pull", "{ref}", "-o", "-", "--format", "oci-archive"],
        ["image", "export", "{ref}", "-o", "-"],
        ["image", "pull", "--help"],
    ],
    ids=lambda a: " ".join(x for x in a if not x.startswith("{")),
)
def test_reader_gone_before_the_first_byte(seeded: SeededRegistries, argv: list[str]) -> None:
    img = seeded.open["test/single"]
    repo = f"{img.registry.host}/{img.repo}"
    code, err = _into_closed_pipe(*(a.format(repo=repo, ref=img.reference) for a in argv))
    assert err == ""  # no traceback, no "Exception ignored", no error line
    assert code == 141


def test_reader_stops_mid_blob(
    registry_open: RegistryProcess,
    unique_repo: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``derrick blob get REPO DIGEST | head -c 100``: a blob far larger than a pipe holds."""
    blob = tmp_path / "big.bin"
    blob.write_bytes(os.urandom(4 * 1024 * 1024))
    ref = Reference.parse(f"{registry_open.host}/{unique_repo()}")
    with derrick_client(registry_open) as client:
        desc, _ = put_blob(client, ref, blob)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    with (tmp_path / "stderr").open("w+b") as err:
        proc = subprocess.Popen(
            [*DERRICK, "blob", "get", str(ref), str(desc.digest)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=dict(os.environ),
        )
        assert proc.stdout is not None
        head = proc.stdout.read(100)
        proc.stdout.close()
        code = proc.wait(timeout=60)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    assert head == blob.read_bytes()[:100]
    assert stderr == ""
    assert code == 141
    assert list(scratch.iterdir()) == []  # the verified copy is gone too


def _with_stdout_closed(*argv: str, fd: int = 1) -> tuple[int, str]:
    """derrick ARGV started with no standard output (``>&-``, as cron may), or without
    the standard stream ``fd``."""
    proc = subprocess.run(
        [*DERRICK, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if fd != 1 else None,
        stderr=subprocess.PIPE if fd != 2 else None,
        env=dict(os.environ),
        preexec_fn=lambda: os.close(fd),
        timeout=60,
        check=False,
    )
    return proc.returncode, (proc.stderr or proc.stdout or b"").decode(errors="replace")


def test_no_standard_output_is_one_line_where_data_was_to_go(
    seeded: SeededRegistries, tmp_path: Path
) -> None:
    img = seeded.open["test/single"]
    for argv in (["tag", "ls", f"{img.registry.host}/{img.repo}"], ["--version"]):
        code, err = _with_stdout_closed(*argv)
        assert (code, err) == (
            2,
            "derrick: error: standard output is closed, and this command writes to it; "
            "give it somewhere to go (>/dev/null to discard it)\n",
        ), argv
    # no standard input: --password-stdin finds it empty; no standard error: the status
    argv = ["tag", "ls", f"{img.registry.host}/{img.repo}", "-u", "x", "--password-stdin"]
    code, err = _with_stdout_closed(*argv, fd=0)
    assert (code, err) == (
        2,
        "derrick: error: --password-stdin was given but standard input was empty\n",
    )
    code, out = _with_stdout_closed("tag", "ls", "127.0.0.1:1/x", fd=2)
    assert (code, out) == (1, "")
    # a command whose output goes to a file does not need it
    code, err = _with_stdout_closed("image", "pull", img.reference, "-o", str(tmp_path / "a.tar"))
    assert (code, err) == (
        0,
        f"Pulled {img.reference} ({img.digest}) to {tmp_path / 'a.tar'} "
        "as docker-archive, 817 B downloaded\n",
    )


# -- a terminal ------------------------------------------------------------------------------


def _on_terminal(*argv: Any) -> tuple[int, str]:
    """Run derrick with stdout and stderr a terminal (a pty); return its status and screen."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [*DERRICK, *(str(a) for a in argv)],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            env={**os.environ, "TERM": "xterm", "COLUMNS": "120"},
        )
        os.close(slave)
        slave = -1
        screen = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not data:
                break
            screen += data
        code = proc.wait(timeout=60)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return code, screen.decode(errors="replace")


@pytest.mark.parametrize(
    "argv",
    [
        ["image", "pull", "{ref}", "-o", "-", "--format", "docker-archive"],
        ["image", "pull", "{ref}", "-o", "oci-archive:-"],
        ["image", "copy", "{ref}", "docker-archive:-"],
        ["image", "save", "{ref}", "{ref}", "-o", "-"],
    ],
    ids=lambda a: " ".join(x for x in a if x != "{ref}"),
)
def test_archives_are_not_written_to_a_terminal(
    seeded: SeededRegistries, env: Isolation, argv: list[str]
) -> None:
    img = seeded.open["test/eight"]
    log = img.registry.log_size()
    code, screen = _on_terminal(*(a.format(ref=img.reference) for a in argv))
    lines = [line for line in screen.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1, screen  # no progress display, no tar
    assert lines[0].startswith("derrick: error: refusing to write an archive to a terminal")
    assert "-o FILE" in lines[0]
    assert "/v2/" not in img.registry.log_since(log)  # nothing was asked of the registry
    assert list(env.cache.iterdir()) == []  # nor fetched into the cache


# -- image copy and local paths --------------------------------------------------------------


@pytest.mark.parametrize(
    ("dest", "path", "kind"),
    [
        ("{tmp}/out", "{tmp}/out", "oci"),
        ("{tmp}/work/mydir", "mydir", "oci"),  # an existing (empty) directory
        ("./x", "x", "oci"),
        ("../x", "../x", "oci"),
        ("x.tar", "x.tar", "docker-archive"),
        ("oci:layout", "layout", "oci"),
        ("oci-archive:img.tar", "img.tar", "oci-archive"),
        ("docker-archive:img", "img", "docker-archive"),
    ],
)
def test_copy_to_a_local_path_writes_it(
    cli: Cli,
    seeded: SeededRegistries,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dest: str,
    path: str,
    kind: str,
) -> None:
    """A path (or a transport prefix) is a place on disk, never a Docker Hub repository."""
    img = seeded.open["test/single"]
    work = tmp_path / "work"
    (work / "mydir").mkdir(parents=True)
    monkeypatch.chdir(work)
    dest, path = dest.format(tmp=tmp_path), path.format(tmp=tmp_path)
    cli("image", "copy", img.reference, dest, "-q").ok()
    out = work / path
    if kind == "oci":
        index = json.loads((out / "index.json").read_text())
    else:
        with tarfile.open(out) as tar:
            names = tar.getnames()
            assert ("manifest.json" in names) == (kind == "docker-archive")
            member = tar.extractfile("index.json")
            assert member is not None
            index = json.loads(member.read())
    assert [m["digest"] for m in index["manifests"]] == [img.digest]


def test_copy_from_a_local_path_pushes_it(
    cli: Cli,
    seeded: SeededRegistries,
    test_images: dict[str, LayoutImage],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layout = test_images["single"]
    monkeypatch.chdir(layout.path.parent)
    host = seeded.open.registry.host
    for n, src in enumerate(
        (str(layout.path), f"./{layout.path.name}:v1", f"oci:{layout.path}:v1")
    ):
        dst = f"{host}/scratch/from-disk:v{n}"
        cli("image", "copy", src, dst, "-q").ok()
        assert cli("manifest", "head", dst).ok().out.strip() == layout.digest
    # and from a path to a path
    cli("image", "copy", f"./{layout.path.name}", str(tmp_path / "b.tar"), "-q").ok()
    # a name that is both a directory here and a reference is refused, not guessed
    line = cli("image", "copy", layout.path.name, f"{host}/scratch/ambiguous:v1").failed()
    assert "both a path here and an image reference" in line
    assert f"./{layout.path.name}" in line and f"docker://{layout.path.name}" in line
    with tarfile.open(tmp_path / "b.tar") as tar:
        assert "manifest.json" in tar.getnames()


def test_copy_docker_prefix_means_a_registry(
    cli: Cli, seeded: SeededRegistries, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = seeded.open["test/single"]
    host = img.registry.host
    monkeypatch.chdir(tmp_path)
    Path(host).mkdir()  # a directory that looks like the registry's name is no local path here
    cli("image", "copy", f"docker://{img.reference}", f"docker://{host}/scratch/copy.tar").ok()
    r = cli("manifest", "head", f"{host}/scratch/copy.tar:{img.tag}").ok()
    assert r.out.strip() == img.digest
