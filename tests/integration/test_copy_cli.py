"""``derrick image copy`` and its spellings (pull, push, save) on the command line: the
defaults that keep a registry's indexes whole, a tag copied onto itself, locations as pull's
destination, archives written by two processes at once, a directory given as an archive,
a full cache named as the cache, ``--all-tags``, ``--timeout`` checked, ``blob get`` files,
and the help texts."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from derrick.cli.groups import COMMANDS
from derrick.manifest import Platform
from support.cli import Cli
from support.disk import grow, small_tmpfs
from support.faultproxy import Fault, FaultProxy
from support.images import LayoutImage
from support.locks import take_turns
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.seed import SeededRegistries

MiB = 1024 * 1024


@pytest.fixture
def reg(seeded: SeededRegistries) -> RegistryProcess:
    return seeded.open.registry


def tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def index_of_tar(path: Path) -> dict:  # type: ignore[type-arg]
    with tarfile.open(path) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        return json.loads(member.read())  # type: ignore[no-any-return]


# -- a tag copied onto itself ------------------------------------------------------------------


def test_copying_a_tag_onto_itself_never_loses_platforms(
    cli: Cli,
    seeded: SeededRegistries,
    reg: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
) -> None:
    multi = test_images["multi"]
    repo = unique_repo()
    ref = f"{reg.host}/{repo}:multi"
    cli("image", "copy", "-q", seeded.open["test/multi"].reference, ref).ok()
    with RawClient(reg) as raw:
        assert raw.manifest_digest(repo, "multi") == multi.digest  # the index: the default

        # onto itself: nothing changes, and nothing is uploaded
        r = cli("image", "copy", ref, ref, "--format", "json").ok()
        assert json.loads(r.out)["uploadedBlobs"] == 0
        assert raw.manifest_digest(repo, "multi") == multi.digest

        # with fewer platforms: refused before anything is written
        line = cli("image", "copy", ref, ref, "--platform", "linux/amd64").failed()
        assert f"{ref} is the index {multi.digest}" in line and "lose the others" in line
        assert raw.manifest_digest(repo, "multi") == multi.digest

        # sync of the repository onto itself: unchanged, whatever the platforms asked for
        for extra in ([], ["--platform", "linux/arm64"]):
            r = cli("sync", f"{reg.host}/{repo}", f"{reg.host}/{repo}", "--format", "json", *extra)
            assert json.loads(r.ok().out)["unchanged"] == 1
        assert raw.manifest_digest(repo, "multi") == multi.digest

        # another tag of the same repository may take one platform
        cli("image", "copy", "-q", ref, f"{reg.host}/{repo}:amd64", "--platform", "linux/amd64")
        assert raw.manifest_digest(repo, "amd64") == multi.image_for("linux/amd64").digest


def test_to_disk_this_machines_platform_to_a_registry_every_one(
    cli: Cli,
    seeded: SeededRegistries,
    reg: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    multi = test_images["multi"]
    src = seeded.open["test/multi"].reference
    host = multi.image_for(str(Platform.host()))
    cli("image", "copy", "-q", src, tmp_path / "layout").ok()
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [host.digest]
    # --platform repeated takes several: both of multi's are the index as it is
    both = ["--platform", "linux/arm64", "--platform", "linux/amd64"]
    r = cli("image", "copy", src, f"oci:{tmp_path / 'two'}", *both, "--format", "json")
    two = json.loads(r.ok().out)
    assert two["digest"] == multi.digest and len(two["manifests"]) == 3
    # and from the layout to a registry, the whole index is the default
    repo = unique_repo()
    cli("image", "copy", "-q", f"oci:{tmp_path / 'two'}", f"{reg.host}/{repo}:two").ok()
    with RawClient(reg) as raw:
        assert raw.manifest_digest(repo, "two") == multi.digest


# -- pull's destination is a location ---------------------------------------------------------


def test_pull_destinations_take_the_location_prefixes(
    cli: Cli, seeded: SeededRegistries, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = seeded.open["test/single"]
    monkeypatch.chdir(tmp_path)
    r = cli("image", "pull", img.reference, "-o", "oci-archive:y.tar", "--format", "json").ok()
    assert json.loads(r.out)["format"] == "oci-archive"
    assert "manifest.json" not in tar_names(tmp_path / "y.tar")
    assert index_of_tar(tmp_path / "y.tar")["manifests"][0]["digest"] == img.digest
    cli("image", "pull", "-q", img.reference, "-o", f"oci:{tmp_path / 'dir'}").ok()
    assert json.loads((tmp_path / "dir" / "index.json").read_text())["manifests"]
    cli("image", "pull", "-q", img.reference, "-o", "docker-archive:z").ok()
    assert "manifest.json" in tar_names(tmp_path / "z")
    # the hidden --format alias says the same; saying two different kinds is refused
    cli("image", "pull", "-q", img.reference, "-o", "w", "--format", "oci-archive").ok()
    assert "manifest.json" not in tar_names(tmp_path / "w")
    line = cli("image", "pull", img.reference, "-o", "oci:v", "--format", "oci-archive").failed()
    assert "oci:v" in line and "--format says oci-archive" in line
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        ["cache", "dir", "docker-config", "home", "w", "y.tar", "z"]
    )


def test_a_docker_archive_named_without_a_tag_is_tagged_latest(
    cli: Cli, seeded: SeededRegistries, tmp_path: Path
) -> None:
    # docker save, docker load and skopeo's docker-archive:FILE:NAME read a name without
    # a tag as NAME:latest; a name dropped from RepoTags would load as an untagged image
    img = seeded.open["test/single"]
    for name, repo_tag, full in (
        ("myapp", "myapp:latest", "docker.io/library/myapp:latest"),
        ("team/app:1.0", "team/app:1.0", "docker.io/team/app:1.0"),
    ):
        out = tmp_path / f"{name.replace('/', '-').replace(':', '-')}.tar"
        cli("image", "copy", "-q", img.reference, f"docker-archive:{out}:{name}").ok()
        with tarfile.open(out) as tar:
            member = tar.extractfile("manifest.json")
            assert member is not None
            assert json.loads(member.read())[0]["RepoTags"] == [repo_tag]
        # read back by the name as written, and as docker and skopeo spell it
        for given in (name, repo_tag, full):
            r = cli("image", "inspect", f"docker-archive:{out}:{given}", "--format", "json")
            assert json.loads(r.ok().out)["digest"] == img.digest


def test_a_directory_is_no_archive_and_nothing_is_made_beside_it(
    cli: Cli, seeded: SeededRegistries, reg: RegistryProcess, tmp_path: Path
) -> None:
    img = seeded.open["test/single"]
    good = tmp_path / "good-oci"
    cli("image", "pull", "-q", img.reference, "-o", good).ok()
    before = sorted(p.name for p in tmp_path.iterdir())
    offset = reg.log_size()
    for argv in (
        ["image", "pull", img.reference, "-o", good, "--format", "oci-archive"],
        ["image", "copy", img.reference, f"docker-archive:{good}"],
        ["image", "save", img.reference, "-o", good],
    ):
        line = cli(*argv).failed()
        assert f"{good} is a directory, not an archive file" in line, argv
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial files
    assert "/v2/" not in reg.log_since(offset)  # refused before the registry was asked


def test_a_file_that_is_no_tar_is_never_overwritten_by_an_archive(
    cli: Cli, seeded: SeededRegistries, reg: RegistryProcess, tmp_path: Path
) -> None:
    img = seeded.open["test/single"]
    work = tmp_path / "work"
    work.mkdir()
    notes = work / "notes.txt"
    notes.write_text("my notes\n")
    offset = reg.log_size()
    for argv in (
        ["image", "pull", img.reference, "-o", notes],
        ["image", "pull", img.reference, "-o", f"oci-archive:{notes}"],
        ["image", "copy", img.reference, f"docker-archive:{notes}"],
        ["image", "save", img.reference, "-o", notes],
    ):
        line = cli(*argv).failed()
        assert line == (
            f"derrick: error: {notes} exists and is not a tar archive; derrick does not "
            "overwrite it: delete it or name another file"
        ), argv
    assert notes.read_text() == "my notes\n"
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]  # no partial files
    assert "/v2/" not in reg.log_since(offset)  # refused before the registry was asked

    # an archive, and an empty file, are replaced
    archive = work / "app.tar"
    cli("image", "pull", "-q", img.reference, "-o", archive).ok()
    cli("image", "pull", "-q", img.reference, "-o", f"oci-archive:{archive}").ok()
    empty = work / "empty"
    empty.touch()
    cli("image", "pull", "-q", img.reference, "-o", empty).ok()
    assert "index.json" in tar_names(archive) and "index.json" in tar_names(empty)


def test_a_device_or_fifo_is_never_replaced_by_an_output_file(
    cli: Cli, seeded: SeededRegistries, reg: RegistryProcess, tmp_path: Path
) -> None:
    # Outputs are written beside the destination and renamed into place, which would put
    # a regular file where /dev/null was (the tests run as root, who may rename in /dev).
    img = seeded.open["test/single"]
    work = tmp_path / "work"
    work.mkdir()
    fifo = work / "fifo"
    os.mkfifo(fifo)
    null = work / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    link = work / "link"
    link.symlink_to(null)
    offset = reg.log_size()
    for target in (fifo, null, link):
        for argv in (
            ["image", "pull", img.reference, "-o", target],
            ["image", "copy", img.reference, f"oci-archive:{target}"],
            ["image", "save", img.reference, "-o", target],
            ["image", "export", img.reference, "-o", target],
            ["blob", "get", img.registry.host + "/test/single", img.digest, "-o", target],
        ):
            line = cli(*argv).failed()
            assert line == (
                f"derrick: error: {target} exists and is not a regular file; it would be "
                "replaced by the file written beside it: name a regular file, or write to "
                "standard output"
            ), argv
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and stat.S_ISCHR(null.lstat().st_mode)
    assert link.is_symlink()
    assert sorted(p.name for p in work.iterdir()) == ["fifo", "link", "null"]
    assert "/v2/" not in reg.log_since(offset)  # refused before the registry was asked


def test_summaries_count_one_layer_and_one_blob_in_the_singular(
    cli: Cli, seeded: SeededRegistries, tmp_path: Path, unique_repo: Callable[..., str]
) -> None:
    img = seeded.open["test/single"]  # a config and one layer
    r = cli("image", "unpack", img.reference, tmp_path / "rootfs").ok()
    assert f"Unpacked {img.reference} (1 layer, 4 files, " in r.err
    repo = f"{img.registry.host}/{unique_repo()}"
    source = f"{img.layout.path}:{img.layout.tag}"
    cli("image", "push", "-q", source, f"{repo}:v1").ok()
    config = img.layout.images[0].config.digest
    cli("blob", "delete", repo, config).ok()  # the layer stays
    r = cli("image", "push", source, f"{repo}:v1").ok()
    assert r.err.endswith(": 1 blob uploaded (459 B), 1 already there\n"), r.err


# -- two writers of one archive ------------------------------------------------------------------


def test_two_pulls_into_one_archive_file_take_turns(
    seeded: SeededRegistries, test_images: dict[str, LayoutImage], tmp_path: Path
) -> None:
    """The second waits for the first's lock on the partial file, then writes the archive
    again (from the cache); both succeed and nothing is left beside it."""
    eight = test_images["eight"]
    out = tmp_path / "c5.tar"
    part = tmp_path / ".c5.tar.derrick-partial"
    victim = eight.image.layers[3]
    with FaultProxy(seeded.open.registry.url) as proxy:
        proxy.add_fault(Fault(victim.digest, stall_after=victim.size // 2))
        ref = f"{proxy.host}/test/eight:v1"

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, "-m", "derrick.cli.main", "image", "pull", ref, "-o", str(out)],
                env=dict(os.environ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )

        take_turns(start, start, proxy, part)
    assert sorted(p.name for p in tmp_path.iterdir() if "c5" in p.name) == ["c5.tar"]
    assert index_of_tar(out)["manifests"][0]["digest"] == eight.digest


# -- the cache, full ------------------------------------------------------------------------------


def test_a_full_cache_is_named_when_pulling_an_archive(
    cli: Cli, medium: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with small_tmpfs(tmp_path / "small") as cache:
        monkeypatch.setenv("DERRICK_CACHE_DIR", str(cache))
        out = tmp_path / "fd.tar"
        line = cli("image", "pull", medium, "-o", out, "-q").failed()
        assert line.startswith(
            f"derrick: error: no space left on device writing the blob cache {cache} "
            f"(pulling to {out}); "
        )
        assert line.endswith("; --cache-dir or DERRICK_CACHE_DIR chooses another cache")
        # what the archive had is kept for the next run too, and said so
        partial = tmp_path / ".fd.tar.derrick-partial"
        assert partial.exists()
        assert f"{partial} (and its .json resume state) are kept: make room and try again" in line
        grow(cache)
        cli("image", "pull", medium, "-o", out, "-q").ok()
    assert not out.with_name(".fd.tar.derrick-partial").exists()


# -- --all-tags ------------------------------------------------------------------------------------


def test_copy_all_tags_skips_the_tags_already_there(
    cli: Cli,
    seeded: SeededRegistries,
    reg: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
) -> None:
    src, dst = unique_repo(), unique_repo()
    for name, tag in (("single", "v1"), ("docker", "v2"), ("multi", "multi")):
        cli("image", "copy", "-q", seeded.open[f"test/{name}"].reference, f"{reg.host}/{src}:{tag}")
    args = ["image", "copy", "--all-tags", f"{reg.host}/{src}", f"{reg.host}/{dst}"]
    first = json.loads(cli(*args, "--format", "json").ok().out)
    assert (first["copied"], first["unchanged"]) == (3, 0)
    with RawClient(reg) as raw:
        for name, tag in (("single", "v1"), ("docker", "v2"), ("multi", "multi")):
            assert raw.manifest_digest(dst, tag) == test_images[name].digest  # indexes whole
    # a new tag and a moved one: only those are copied; the check is HEADs, no body
    cli("image", "copy", "-q", f"{reg.host}/{src}:v1", f"{reg.host}/{src}:v3").ok()
    cli("image", "copy", "-q", f"{reg.host}/{src}:v2", f"{reg.host}/{src}:v1").ok()
    offset = reg.log_size()
    second = json.loads(cli(*args, "--format", "json").ok().out)
    assert (second["copied"], second["unchanged"]) == (2, 2)
    log = reg.log_since(offset)
    assert f"GET /v2/{src}/manifests/multi" not in log
    with RawClient(reg) as raw:
        assert raw.manifest_digest(dst, "v1") == test_images["docker"].digest
        assert raw.manifest_digest(dst, "v3") == test_images["single"].digest
    for bad, said in (
        (f"{reg.host}/{src}:v1", "names one image"),
        ("oci:./somewhere", "is not"),
    ):
        line = cli("image", "copy", "--all-tags", bad, f"{reg.host}/{dst}").failed()
        assert said in line


# -- --timeout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "1e308", "0", "soon", "3601"])
def test_timeout_must_be_a_sane_number_of_seconds(
    cli: Cli, seeded: SeededRegistries, value: str
) -> None:
    r = cli("tag", "ls", f"{seeded.open.registry.host}/test/single", "--timeout", value)
    line = r.failed()
    assert r.code == 2
    assert f"--timeout {value} is not a number of seconds more than 0 and at most 3600" in line
    assert math.isfinite(float(cli("tag", "ls", "x/y", "--timeout", "0.5", "--retries", "0").code))


# -- blob get --------------------------------------------------------------------------------------


@pytest.fixture
def umask() -> Iterator[int]:
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def test_blob_get_makes_files_with_the_umask_and_resumes_across_runs(
    cli: Cli, medium: str, reg: RegistryProcess, tmp_path: Path, umask: int
) -> None:
    repo = medium.rsplit(":", 1)[0].split("/", 1)[1]
    with RawClient(reg) as raw:
        manifest = json.loads(raw.get_manifest(repo, "v1").content)
    layer = manifest["layers"][1]
    out = tmp_path / "layer"
    cut = 300 * 1024 + 11
    with FaultProxy(reg.url) as proxy:
        proxy.add_fault(Fault(layer["digest"], cut_after=cut))
        source = f"{proxy.host}/{repo}"
        line = cli("blob", "get", source, layer["digest"], "-o", out, "--retries", "0").failed()
        part = tmp_path / ".layer.derrick-partial"
        assert f"{part} is kept: try again to resume" in line
        assert part.stat().st_size == cut
        proxy.clear()
        cli("blob", "get", source, layer["digest"], "-o", out).ok()
        assert [g.range for g in proxy.blob_gets(layer["digest"])] == [f"bytes={cut}-"]
    assert sorted(p.name for p in tmp_path.iterdir() if "layer" in p.name) == ["layer"]
    assert out.stat().st_size == layer["size"]
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_blob_get_to_dash_is_standard_output_as_in_the_other_commands(
    cli: Cli, seeded: SeededRegistries, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = seeded.open["test/single"]
    config = img.layout.images[0].config
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    r = cli("blob", "get", f"{img.registry.host}/{img.repo}", config.digest, "-o", "-").ok()
    assert r.stdout == img.layout.images[0].config_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no file called "-"


# -- help ------------------------------------------------------------------------------------------


def test_help_lists_every_image_command_and_says_the_platform_defaults(cli: Cli) -> None:
    said = cli("image", "--help").ok().out
    description = said.split("Commands:")[0]
    for name in COMMANDS["image"]:
        assert name in description, name  # the group's own sentence names each
        assert f"\n  {name} " in said, name  # and each is listed
    host = str(Platform.host())
    pull = " ".join(cli("image", "pull", "--help").ok().out.split())
    assert f"every platform to a registry, this machine's ({host}) to disk" in pull
    assert "(default: the index itself)" in " ".join(
        cli("manifest", "get", "--help").ok().out.split()
    )
    assert f"this machine's, {host}" in " ".join(cli("image", "config", "--help").ok().out.split())
    for command in ("pull", "push", "copy", "save"):
        text = cli("image", command, "--help").ok().out
        assert "[text|json]" in text and "oci-archive|" not in text, command


def test_an_image_saved_twice_is_counted_once(
    cli: Cli, seeded: SeededRegistries, tmp_path: Path
) -> None:
    ref = seeded.open["test/single"].reference
    out = tmp_path / "twice.tar"
    r = cli("image", "save", ref, ref, "-o", out).ok()
    assert r.err.startswith(f"Saved 1 image to {out} as docker-archive")
    with tarfile.open(out) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        (entry,) = json.loads(member.read())
    assert entry["RepoTags"] == [ref]
