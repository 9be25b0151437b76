"""The Python API a library user starts with: the README's example, run against a real
registry, and what it promises (strings everywhere, one lazy image view for every place an
image can be, copy as the one verb, every error a DerrickError)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import derrick
from derrick.ops.export import export_image
from derrick.registry import RegistryClient
from derrick.store.upkeep import StoreBusyError, prune
from support.images import LayoutImage, make_multi, make_single
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.seed import SeededRegistries

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    """The first Python block of the README's "Python API" section."""
    text = README.read_text()
    section = text[text.index("## Python API") :]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m is not None, "no python block in the README's Python API section"
    return m.group(1)


def test_the_readme_example_runs(
    registry_open: RegistryProcess, tmp_path: Path, unique_repo: Callable[..., str]
) -> None:
    repo = unique_repo("readme")
    work = tmp_path / "work"
    work.mkdir()
    pushed = make_multi(tmp_path / "pushed", tag="1.0")  # has linux/arm64
    with RawClient(registry_open) as raw:
        raw.push_layout(pushed, repo, "1.0")
    local = make_multi(work / "app-oci", tag="1.0")
    code = readme_example().replace("registry.example/team/app", f"{registry_open.host}/{repo}")
    assert registry_open.host in code
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=work,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    arm = pushed.image_for("linux/arm64/v8")
    lines = proc.stdout.splitlines()
    assert lines[0] == "['1.0']"
    assert lines[1] == f"{arm.digest} arm64 {arm.config.size + sum(x.size for x in arm.layers)}"
    with tarfile.open(work / "app.tar") as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        (entry,) = json.loads(member.read())
    assert entry["RepoTags"] == [f"{registry_open.host}/{repo}:1.0"]
    assert entry["Config"] == f"blobs/sha256/{arm.config.hex}"
    assert (work / "rootfs" / "etc" / "arch").read_text() == "linux/arm64/v8\n"
    with RawClient(registry_open) as raw:
        assert raw.manifest_digest(repo, "1.1") == local.digest  # the whole index


def test_strings_are_taken_where_references_are(seeded: SeededRegistries) -> None:
    img = seeded.open["test/single"]
    repo = f"{img.registry.host}/test/single"
    with RegistryClient() as client:
        assert client.list_tags(repo) == ["v1"]
        assert str(client.get_manifest(img.reference).digest) == img.digest
        assert client.head_blob(repo, img.layout.image.layers[0].digest) is not None
        with pytest.raises(derrick.InvalidReferenceError):
            client.list_tags("not a reference!")
    with derrick.Client() as client:
        assert client.repository(repo).tags() == ["v1"]
        assert str(client.repository(repo).manifest("v1").digest) == img.digest
        with pytest.raises(derrick.UsageError, match="names an image, not a repository"):
            client.repository(img.reference)
        # a registry alone is not read as the Docker Hub image library/HOST tagged PORT
        with pytest.raises(derrick.UsageError, match=r"is a registry \(host:port\), not a rep"):
            client.repository(img.registry.host)


def test_one_view_of_an_image_wherever_it_is(
    seeded: SeededRegistries, test_images: dict[str, LayoutImage], tmp_path: Path
) -> None:
    multi = test_images["multi"]
    arm = multi.image_for("linux/arm64/v8")
    seeded_multi = seeded.open["test/multi"]
    repo = f"{seeded_multi.registry.host}/test/multi"
    with derrick.Client() as client:
        remote = client.repository(repo).image("v1", platform="linux/arm64")
        local = derrick.open(f"oci:{multi.path}:v1", platform="linux/arm64")
        with remote, local:
            for image in (remote, local):
                assert str(image.digest) == arm.digest
                assert str(image.top.digest) == multi.digest
                assert image.index is not None and len(image.index.manifests) == 2
                assert str(image.platform) == "linux/arm64/v8"
                assert image.config.architecture == "arm64"
                assert [str(d.digest) for d in image.layers] == arm.layer_digests
                assert image.size == arm.config.size + sum(x.size for x in arm.layers)
                assert image.manifest.raw == arm.manifest_bytes
                assert (
                    b"".join(image.blob(image.layers[0]))
                    == multi.blob_path(arm.layer_digests[0]).read_bytes()
                )
        # an archive written by copy reads back as the same image
        result = derrick.copy(remote, f"oci-archive:{tmp_path / 'arm.tar'}", client=client)
        assert str(result.digest) == arm.digest
        with derrick.open(str(tmp_path / "arm.tar")) as archived:
            assert archived.digest == remote.digest
            assert archived.config_bytes == arm.config_bytes


def test_copy_and_unpack_take_locations_and_keep_blobs_only_in_a_cache_given(
    seeded: SeededRegistries, test_images: dict[str, LayoutImage], tmp_path: Path
) -> None:
    single = seeded.open["test/single"]
    cache = tmp_path / "cache"
    result = derrick.copy(single.reference, str(tmp_path / "out-oci"), cache=cache)
    assert str(result.digest) == single.digest
    assert sorted(p.name for p in (cache / "blobs" / "sha256").iterdir()) == sorted(
        d.split(":")[1] for d in single.layout.blob_digests
    )
    unpacked = derrick.unpack(single.reference, tmp_path / "rootfs")
    assert unpacked.layers == 1 and (tmp_path / "rootfs" / "bin" / "hello").exists()
    derrick.unpack(f"oci:{tmp_path / 'out-oci'}", tmp_path / "rootfs2")
    assert (tmp_path / "rootfs2" / "bin" / "hello").read_bytes() == (
        tmp_path / "rootfs" / "bin" / "hello"
    ).read_bytes()


def test_a_copy_result_prints_as_a_summary(seeded: SeededRegistries, tmp_path: Path) -> None:
    single = seeded.open["test/single"]
    result = derrick.copy(single.reference, str(tmp_path / "out-oci"), cache=tmp_path / "c")
    assert repr(result) == (
        f"CopyResult(source={single.reference.rsplit(':', 1)[0]!r}, "
        f"destination='the OCI layout {tmp_path / 'out-oci'}', digest={single.digest!r}, "
        f"stats={result.stats!r})"
    )  # not the plan, with every manifest's and config's bytes


def test_copy_to_a_repository_takes_the_tag_as_image_copy_does(
    registry_open: RegistryProcess, tmp_path: Path, unique_repo: Callable[..., str]
) -> None:
    """A registry destination without a tag takes the source's one tag; a source without
    a tag, or with several, needs the tag named, and nothing is copied."""
    repo = unique_repo("api-tag")
    dest = f"{registry_open.host}/{repo}"
    single = make_single(tmp_path / "single", tag="1.0")
    assert str(derrick.copy(f"oci:{single.path}", dest).digest) == single.digest

    def renamed(name: str, annotations: dict[str, str]) -> Path:
        layout = shutil.copytree(single.path, tmp_path / name)
        index = json.loads((layout / "index.json").read_text())
        for entry in index["manifests"]:
            entry["annotations"] = annotations
        (layout / "index.json").write_text(json.dumps(index))
        return layout

    untagged = renamed("untagged", {})
    with pytest.raises(derrick.UsageError, match=f"is not tagged, so {dest} needs a tag"):
        derrick.copy(f"oci:{untagged}", dest)
    with derrick.open(f"oci:{untagged}") as image, pytest.raises(derrick.UsageError):
        derrick.copy(image, dest)
    two = renamed(
        "two",
        {
            "org.opencontainers.image.ref.name": "1.1",
            "io.containerd.image.name": "example.test/app:1.2",
        },
    )
    with pytest.raises(derrick.UsageError, match=f"is tagged 1.1, 1.2, so {dest} needs the tag"):
        derrick.copy(f"oci:{two}", dest)
    assert str(derrick.copy(f"oci:{two}", f"{dest}:1.2").digest) == single.digest
    with RawClient(registry_open) as raw:
        assert sorted(raw.tags(repo)) == ["1.0", "1.2"]


def test_every_error_is_a_derrick_error(
    tmp_path: Path, test_images: dict[str, LayoutImage]
) -> None:
    layout = shutil.copytree(test_images["single"].path, tmp_path / "lay")
    cases: list[Callable[[], object]] = [
        lambda: derrick.open(str(tmp_path / "nothing-here")),
        lambda: derrick.open(f"oci:{layout}:nosuch").digest,
        lambda: derrick.open(f"oci:{layout}", platform="linux").digest,
        lambda: derrick.open(f"oci:{layout}", platform="linux/arm64").digest,
        lambda: derrick.unpack(f"oci:{layout}", tmp_path / "lay"),  # not empty
        lambda: derrick.copy(f"oci:{layout}", "-"),
        lambda: derrick.Client().repository("a//b"),
        lambda: derrick.Client(cache=tmp_path / "c").repository("a/b").image("not a tag!"),
    ]
    for case in cases:
        with pytest.raises(derrick.DerrickError):
            case()
    assert set(derrick.__all__) >= {"Client", "Repository", "Image", "open", "copy", "unpack"}
    errors = [getattr(derrick, n) for n in derrick.__all__ if n.endswith("Error")]
    assert all(issubclass(e, derrick.DerrickError) for e in errors)


def test_the_library_writes_only_where_it_is_told(
    test_images: dict[str, LayoutImage], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """A tar to ``-`` goes to the stream the caller gives, never to ``sys.stdout`` unasked."""
    with derrick.open(f"oci:{test_images['single'].path}") as image:
        with pytest.raises(derrick.UsageError, match="names no file"):
            export_image(image, "-")
        assert capsysbinary.readouterr().out == b""
        buf = io.BytesIO()
        result = export_image(image, buf)
    assert result.entries > 0 and len(buf.getvalue()) == result.bytes_written
    assert not Path("-").exists() and capsysbinary.readouterr().out == b""


def test_a_repository_reads_and_deletes_manifests(
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
) -> None:
    repo_name = unique_repo("api")
    single = test_images["single"]
    with RawClient(registry_open) as raw:
        raw.push_layout(single, repo_name, "v1")
        raw.put_manifest(repo_name, "v2", single.top_bytes, single.media_type)
    with derrick.Client() as client:
        repo = client.repository(f"{registry_open.host}/{repo_name}")
        assert sorted(repo.tags()) == ["v1", "v2"]
        assert repo.manifest("v1").raw == single.top_bytes
        assert repo.manifest(single.digest).raw == single.top_bytes
        assert str(repo.delete("v2")) == single.digest  # the manifest, with every tag on it
        with pytest.raises(derrick.ManifestUnknownError):
            repo.manifest("v1")


def test_a_closed_client_is_refused_and_opens_no_connection(
    seeded: SeededRegistries, tmp_path: Path
) -> None:
    """A client used after its ``with`` block would open connections that nothing closes:
    it, and the repositories and images it gave, refuse, and the registry sees nothing."""
    img = seeded.open["test/multi"]
    name = f"{img.registry.host}/test/multi"
    with derrick.Client(cache=tmp_path / "cache") as client:
        repo = client.repository(name)
        assert repo.tags() == ["v1"]
        unread = repo.image("v1", platform="linux/arm64")
    offset = img.registry.log_size()
    uses: list[Callable[[], object]] = [
        repo.tags,
        lambda: unread.digest,
        lambda: repo.image("v1").digest,
        lambda: client.repository(name),
        lambda: client.open(f"{name}:v1"),
        lambda: client.copy(f"{name}:v1", f"oci:{tmp_path / 'out'}"),
        lambda: derrick.copy(f"{name}:v1", f"oci:{tmp_path / 'out'}", client=client),
    ]
    for use in uses:
        with pytest.raises(derrick.UsageError, match=r"[Cc]lient is closed"):
            use()
    assert img.registry.log_since(offset) == ""
    assert not (tmp_path / "out").exists()


def test_the_library_leaves_nothing_open_when_it_refuses(
    test_images: dict[str, LayoutImage], tmp_path: Path
) -> None:
    """Run with ``ResourceWarning``\\ s shown (``python -X dev``): a refusal (an unpack into a
    directory that is not empty) leaves no file, directory or socket open behind it."""
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    script = (
        "import derrick, sys\n"
        "try:\n"
        f"    derrick.unpack({'oci:' + str(test_images['single'].path)!r}, {str(full)!r})\n"
        "except derrick.UsageError as e:\n"
        "    print(e)\n"
    )
    res = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "is not empty" in res.stdout
    assert res.stderr == ""


def test_arguments_of_the_wrong_kind_are_usage_errors_that_name_them(
    test_images: dict[str, LayoutImage], tmp_path: Path
) -> None:
    """What a type checker would catch, an untyped caller gets as a DerrickError naming the
    argument, before anything is read or written (not an AttributeError from deep inside,
    nor a timeout that fails only at the first request)."""
    layout = f"oci:{test_images['single'].path}"
    out = f"oci:{tmp_path / 'out'}"
    untyped: Any = 42
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: derrick.Client(timeout=-1), r"timeout -1 is not a number of seconds"),
        (lambda: derrick.Client(timeout=0), r"timeout 0 is not"),
        (lambda: derrick.Client(timeout=float("nan")), r"timeout nan is not"),
        (lambda: derrick.Client(retries=-1), r"retries -1 is not a whole number"),
        (lambda: derrick.Client(credentials=untyped), r"credentials must be a CredentialStore"),
        (lambda: derrick.Client().repository(untyped), r"repository must be a string"),
        (lambda: derrick.open(untyped), r"source must be a string or a Location, not int"),
        (lambda: derrick.open(layout, platform=untyped), r"platform must be a string"),
        (lambda: derrick.copy(untyped, out), r"source must be"),
        (lambda: derrick.copy(layout, untyped), r"destination must be"),
        (lambda: derrick.copy(layout, out, platform=untyped), r"platform must be"),
        (lambda: derrick.copy(layout, out, jobs=0), r"jobs must be a whole number of 1"),
        (lambda: derrick.unpack(layout, untyped), r"directory must be a string or a PathLike"),
    ]
    for case, message in cases:
        with pytest.raises(derrick.UsageError, match=message):
            case()
    assert not (tmp_path / "out").exists()


def test_sync_takes_the_client_and_paths_a_library_user_has(
    seeded: SeededRegistries, tmp_path: Path
) -> None:
    """``derrick.sync`` takes a ``derrick.Client`` (not only the RegistryClient under it)
    and a cache directory as a string, as the rest of the API does; anything else is a
    UsageError."""
    img = seeded.open["test/single"]
    config = tmp_path / "mirror.yaml"
    config.write_text(
        "sources:\n"
        f"  - repository: {img.registry.host}/test/single\n"
        f"    destination: {{oci: {tmp_path / 'air'}}}\n"
    )
    with derrick.Client() as client:
        report = derrick.sync(config, client=client, cache_dir=str(tmp_path / "cache"))
        assert [(i.status, i.digest) for i in report.images] == [("copied", img.digest)]
        assert client.repository(f"{img.registry.host}/test/single").tags() == ["v1"]
    with derrick.open(f"oci:{tmp_path / 'air'}:{img.registry.host}/test/single:v1") as image:
        assert str(image.digest) == img.digest
    assert any((tmp_path / "cache" / "blobs").rglob("*"))
    untyped: Any = 42
    with pytest.raises(derrick.UsageError, match="configuration file's path, a SyncConfig"):
        derrick.sync(untyped)
    with pytest.raises(derrick.UsageError, match=r"client must be a derrick\.Client"):
        derrick.sync(config, client=untyped)
    with pytest.raises(derrick.UsageError, match="Client is closed"):
        derrick.sync(config, client=client)


def test_an_image_on_disk_opened_with_a_cache_lets_the_cache_go_when_closed(
    test_images: dict[str, LayoutImage], tmp_path: Path
) -> None:
    """``derrick.open(LOCATION, cache=DIR)`` holds the cache's use lock while the image is
    open (a prune is refused) and lets it go when the image is closed (a prune runs),
    as a client given the cache does."""
    cache = tmp_path / "cache"
    with derrick.open(f"oci:{test_images['eight'].path}:v1", cache=cache) as image:
        derrick.unpack(image, tmp_path / "rootfs")
        with pytest.raises(StoreBusyError):
            prune(cache)
    assert prune(cache).root == cache
