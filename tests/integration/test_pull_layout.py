"""Several pulls into one OCI layout, images of several repositories in one layout, and
what a pull reports when the disk fails it.

* Concurrent ``derrick image pull … -o L`` processes into one layout (existing, or new and
  created by whichever finishes first) all succeed and every image is named in
  ``index.json`` afterwards; skopeo reads each one back by its tag.
* ``org.opencontainers.image.ref.name`` holds the tag, ``io.containerd.image.name`` the full
  name: pulling ``a:v1`` then ``b:v1`` keeps both, and a lookup by the shared tag is refused
  with a message listing the full names; the full name or the digest picks one.
* Out of space on the destination (a small tmpfs mounted by the test) or on the blob cache:
  one line naming the path the user gave and what is kept to resume.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from derrick.layout.oci import OCILayout
from support.cli import Cli, Isolation
from support.disk import grow
from support.images import LayoutImage
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.seed import SeededRegistries

REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"
SKOPEO = shutil.which("skopeo") or "skopeo"


@pytest.fixture
def reg(seeded_registries: SeededRegistries) -> RegistryProcess:
    return seeded_registries.open.registry


def index_entries(layout: Path) -> list[dict[str, Any]]:
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    return list(json.loads((layout / "index.json").read_text())["manifests"])


def skopeo_env(home: Path) -> dict[str, str]:
    (home / "run").mkdir(parents=True, mode=0o700, exist_ok=True)
    (home / "registries.conf").write_text("")
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "CONTAINERS_REGISTRIES_CONF": str(home / "registries.conf"),
        "TMPDIR": str(home),
    }


def skopeo_inspect(env: dict[str, str], ref: str) -> dict[str, Any]:
    proc = subprocess.run(
        [SKOPEO, "--insecure-policy", "inspect", ref],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"skopeo inspect {ref} failed:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def start_pull(ref: str, dest: Path) -> subprocess.Popen[bytes]:
    """``python -m derrick.cli.main image pull REF -o DEST -q`` as a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "derrick.cli.main", "image", "pull", ref, "-o", str(dest), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )


def finish(procs: list[subprocess.Popen[bytes]]) -> list[str]:
    """Wait for every process; the stderr of those that failed."""
    failures = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        if p.returncode != 0:
            failures.append(f"exit {p.returncode}: {err.decode()}")
    return failures


# -- concurrent pulls into one layout --------------------------------------------------------


@pytest.fixture
def six_refs(
    reg: RegistryProcess, test_images: dict[str, LayoutImage], unique_repo: Callable[..., str]
) -> dict[str, str]:
    """Six tags of three images in a fresh repository: tag -> manifest digest as pulled."""
    repo = unique_repo()
    tags: dict[str, str] = {}
    with RawClient(reg) as raw:
        for name in ("single", "eight", "multi"):
            image = test_images[name]
            digest = image.image_for("linux/amd64").digest if image.is_index else image.digest
            for n in (1, 2):
                raw.push_layout(image, repo, f"{name}-{n}")
                tags[f"{name}-{n}"] = digest
    return {f"{reg.host}/{repo}:{tag}": digest for tag, digest in tags.items()}


def check_layout_names(layout: Path, refs: dict[str, str], env: dict[str, str]) -> None:
    """``layout`` names exactly ``refs`` (full name -> digest), each readable by skopeo."""
    entries = index_entries(layout)
    got = {e["annotations"][IMAGE_NAME]: e["digest"] for e in entries}
    assert got == refs, f"index.json of {layout}: {json.dumps(entries, indent=1)}"
    assert len(entries) == len(refs)
    for ref, digest in refs.items():
        tag = ref.rsplit(":", 1)[1]
        assert skopeo_inspect(env, f"oci:{layout}:{tag}")["Digest"] == digest
    assert not [p.name for p in layout.parent.iterdir() if ".derrick-tmp" in p.name]


ROUNDS = 3


def test_concurrent_pulls_into_an_existing_layout_keep_every_tag(
    six_refs: dict[str, str], env: Isolation, tmp_path: Path
) -> None:
    """Six processes add an image each to one existing layout at once, several times."""
    tool_env = skopeo_env(tmp_path / "skopeo")
    for n in range(ROUNDS):
        layout = tmp_path / f"existing-{n}"
        OCILayout.create(layout)
        failures = finish([start_pull(ref, layout) for ref in six_refs])
        assert failures == []
        check_layout_names(layout, six_refs, tool_env)


def test_concurrent_pulls_into_a_new_directory_all_succeed(
    six_refs: dict[str, str], env: Isolation, tmp_path: Path
) -> None:
    """Six processes pull into one directory that does not exist yet: the first to finish
    creates the layout, the others add their images to it."""
    tool_env = skopeo_env(tmp_path / "skopeo")
    for n in range(ROUNDS):
        layout = tmp_path / f"round-{n}" / "new"
        failures = finish([start_pull(ref, layout) for ref in six_refs])
        assert failures == []
        check_layout_names(layout, six_refs, tool_env)


# -- one tag, several repositories -----------------------------------------------------------


def names_in(layout: Path) -> list[tuple[str, str, str]]:
    return [
        (e["annotations"][REF_NAME], e["annotations"][IMAGE_NAME], e["digest"])
        for e in index_entries(layout)
    ]


def test_same_tag_of_two_repositories_keeps_both_images(
    cli: Cli,
    reg: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    single, eight, multi = test_images["single"], test_images["eight"], test_images["multi"]
    repo_a, repo_b = unique_repo(), unique_repo()
    with RawClient(reg) as raw:
        raw.push_layout(single, repo_a, "v1")
        raw.push_layout(eight, repo_b, "v1")
        a, b = f"{reg.host}/{repo_a}:v1", f"{reg.host}/{repo_b}:v1"
        layout = tmp_path / "layout"

        assert "warning" not in cli("image", "pull", a, "-o", layout).ok().err
        r = cli("image", "pull", b, "-o", layout).ok()
        assert names_in(layout) == [("v1", a, single.digest), ("v1", b, eight.digest)]
        (warning,) = [line for line in r.err_lines if line.startswith("derrick: warning:")]
        assert f"2 images tagged 'v1' ({a}, {b})" in warning
        assert "full name" in warning and "digest" in warning

        # The tag alone is ambiguous: refused, naming both images and how to pick one.
        for argv in (
            ["image", "layers", f"oci:{layout}:v1"],
            ["image", "push", "-q", f"{layout}:v1", f"{reg.host}/{unique_repo()}:x"],
        ):
            line = cli(*argv).failed()
            assert "2 different images tagged 'v1'" in line, line
            assert f"{a} ({single.digest})" in line and f"{b} ({eight.digest})" in line, line
            assert "full name or digest" in line, line

        # A full name or a digest picks one.
        for src, want in [
            (f"oci:{layout}:{a}", single.digest),
            (f"{layout}:{b}", eight.digest),
            (f"{layout}:{eight.digest}", eight.digest),
            (f"oci:{layout}:{single.digest}", single.digest),
        ]:
            repo = unique_repo()
            cli("image", "push", "-q", src, f"{reg.host}/{repo}:x").ok()
            assert raw.manifest_digest(repo, "x") == want, src
        cli("image", "layers", f"oci:{layout}:{a}").ok()
        cli("image", "layers", f"{layout}:{b}").ok()

        # Pulling a full reference again replaces its own entry only, and never duplicates it.
        raw.push_layout(multi, repo_a, "v1")
        amd64 = multi.image_for("linux/amd64").digest
        for _ in range(2):
            cli("image", "pull", a, "-o", layout).ok()
            assert names_in(layout) == [("v1", b, eight.digest), ("v1", a, amd64)]


# -- the disk fails the pull -----------------------------------------------------------------

MiB = 1024 * 1024


def test_full_disk_under_an_archive_names_it_and_what_is_kept(
    cli: Cli, medium: str, small_disk: Path
) -> None:
    out = small_disk / "app.tar"
    line = cli("image", "pull", medium, "-o", out, "-q").failed()
    kept = [".app.tar.derrick-partial", ".app.tar.derrick-partial.json"]
    assert sorted(p.name for p in small_disk.iterdir()) == kept
    assert line == (
        f"derrick: error: no space left on device writing {out}; "
        f"{small_disk / kept[0]} (and its .json resume state) is kept: "
        "make room and try again to resume, or delete them"
    )
    grow(small_disk)
    r = cli("image", "pull", medium, "-o", out, "--json").ok()
    assert json.loads(r.out)["downloadedBytes"] < 2 * MiB  # resumed, not started over
    assert sorted(p.name for p in small_disk.iterdir()) == ["app.tar"]


def test_full_disk_under_a_layout_names_it(
    cli: Cli, medium: str, small_disk: Path, env: Isolation
) -> None:
    out = small_disk / "layout"
    line = cli("image", "pull", medium, "-o", out, "-q").failed()
    assert list(small_disk.iterdir()) == []
    assert line == (
        f"derrick: error: no space left on device writing {out}; the unfinished layout was "
        f"removed and the downloaded blobs stay in the blob cache {env.cache}: "
        "make room and try again"
    )

    # an existing layout keeps its index as it was
    existing = small_disk / "existing"
    OCILayout.create(existing)
    line = cli("image", "pull", medium, "-o", existing, "-q").failed()
    assert line == (
        f"derrick: error: no space left on device writing {existing}; its index.json is "
        "unchanged (blobs copied into it are kept): make room and try again"
    )
    assert index_entries(existing) == []
    assert not [p for p in existing.rglob("*") if p.name.startswith(".")]

    grow(small_disk)
    for dest in (out, existing):
        r = cli("image", "pull", medium, "-o", dest, "--json").ok()
        assert json.loads(r.out)["downloadedBytes"] == 0
        assert [e["annotations"][IMAGE_NAME] for e in index_entries(dest)] == [medium]


def test_disk_already_full_leaves_no_hidden_layout_behind(
    cli: Cli, medium: str, small_disk: Path, env: Isolation
) -> None:
    # The disk is full before the pull begins: the hidden directory a new layout is
    # assembled in can be made (a directory takes no data block on tmpfs), but not the
    # layout's index.json inside it.
    filler = small_disk / "filler"
    with open(filler, "wb") as f, pytest.raises(OSError):
        while True:
            f.write(bytes(64 * 1024))
            f.flush()
    out = small_disk / "layout"
    line = cli("image", "pull", medium, "-o", out, "-q").failed()
    assert line.startswith(f"derrick: error: no space left on device writing {out}; ")
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_full_disk_under_the_cache_names_it_and_the_destination(
    cli: Cli, medium: str, small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = small_disk / "cache"
    monkeypatch.setenv("DERRICK_CACHE_DIR", str(cache))
    out = tmp_path / "layout"
    line = cli("image", "pull", medium, "-o", out, "-q").failed()
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "derrick" in p.name]
    partial = sorted((cache / "blobs" / "sha256").glob("*.partial"))
    # one or both layers had begun when the disk filled up
    if len(partial) == 1:
        kept = f"the partial download {partial[0]} is kept"
    else:
        assert len(partial) == 2, partial
        kept = f"2 partial downloads in {cache / 'blobs' / 'sha256'} (*.partial) are kept"
    assert line == (
        f"derrick: error: no space left on device writing the blob cache {cache} "
        f"(pulling to {out}); {kept}: make room and try again to resume, "
        f"or delete {'it' if len(partial) == 1 else 'them'}; "
        "--cache-dir or DERRICK_CACHE_DIR chooses another cache"
    )
    grow(small_disk)
    cli("image", "pull", medium, "-o", out, "-q").ok()
    assert not list((cache / "blobs" / "sha256").glob("*.partial"))


def test_archive_into_missing_directories(cli: Cli, medium: str, tmp_path: Path) -> None:
    out = tmp_path / "newdir" / "sub" / "app.tar"
    cli("image", "pull", medium, "-o", out, "-q").ok()
    assert sorted(p.name for p in out.parent.iterdir()) == ["app.tar"]


def test_a_pull_removes_what_a_killed_pull_to_the_same_place_left(
    cli: Cli, seeded: SeededRegistries, tmp_path: Path
) -> None:
    """A pull killed while it assembled its hidden layout leaves it behind; the next pull
    to that destination removes it once it sees its writer is gone."""
    import signal
    import subprocess
    import sys

    dest = tmp_path / "app"
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from derrick.images.layoutwrite import HiddenDir\n"
        "h = HiddenDir(Path(sys.argv[1]), '.app')\n"
        "(h.path / 'oci-layout').write_text('{}')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob(".app.derrick-tmp-*"))) == 2  # the directory, its owner file

    image = seeded.open["test/eight"]
    cli("image", "pull", image.reference, "-o", dest, "-q").ok()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app", "cache", "docker-config", "home"]
