"""Hostile input: what a registry serves, and what an archive or layout on disk holds.

Registry side, served by a :class:`~support.faultproxy.FaultProxy` in front of the real
registry (the seeded ``test/single`` and ``test/multi`` images, their manifests rewritten on
the way): manifests and indexes over 4 MiB, digests that try to climb out of a directory,
blobs of another size than the manifest says, JSON of the wrong shape, content that does not
match the digest asked for.  Each fails with one line naming the culprit, and nothing is
written: the output directory stays empty and no file appears anywhere else.

Disk side: an OCI layout whose ``index.json`` or manifest holds a bad digest, a layout blob
that is a symlink to a file outside, and archives whose tar members are absolute, climb out
with ``..`` or link outside, given to ``derrick image push`` and ``derrick image unpack``.
Nothing is pushed and nothing is unpacked.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from derrick.errors import LayoutError
from derrick.layout.reader import open_image_source
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore
from support.cli import Cli, Isolation
from support.faultproxy import Fault, FaultProxy
from support.images import OCI_MANIFEST, LayoutImage, canonical_json, sha256_digest
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.seed import SeededRegistries
from support.transfers import pull as do_pull

LIMIT = 4 * 1024 * 1024
FORMATS = ("oci", "docker-archive")


@pytest.fixture(scope="module")
def proxy(seeded_registries: SeededRegistries) -> Iterator[FaultProxy]:
    with FaultProxy(seeded_registries.open.registry.url) as p:
        yield p


@pytest.fixture(autouse=True)
def fresh(proxy: FaultProxy) -> Iterator[None]:
    proxy.clear()
    yield
    proxy.clear()


@pytest.fixture
def single(seeded_registries: SeededRegistries) -> LayoutImage:
    return seeded_registries.open["test/single"].layout


@pytest.fixture
def multi(seeded_registries: SeededRegistries) -> LayoutImage:
    return seeded_registries.open["test/multi"].layout


@pytest.fixture
def out(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def serve(proxy: FaultProxy, repo: str, reference: str, raw: bytes) -> None:
    """Let the proxy answer the manifest ``repo:reference`` with ``raw``."""
    proxy.add_fault(Fault(path=rf"/v2/{repo}/manifests/{reference}", body=raw, times=None))


def pull(cli: Cli, proxy: FaultProxy, ref: str, out: Path, fmt: str, *extra: str) -> str:
    dest = out / ("image" if fmt == "oci" else "image.tar")
    return cli("image", "pull", f"{proxy.host}/{ref}", "-o", dest, "--format", fmt, *extra).failed()


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()}


def manifest_of(layout: LayoutImage) -> dict[str, Any]:
    return json.loads(layout.top_bytes)  # type: ignore[no-any-return]


# -- size limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_manifest_over_4_mib_is_refused(
    cli: Cli, proxy: FaultProxy, single: LayoutImage, out: Path, fmt: str
) -> None:
    raw = single.top_bytes[:-1] + b" " * LIMIT + b"}"  # valid JSON, one byte per space
    serve(proxy, "test/single", "v1", raw)
    line = pull(cli, proxy, "test/single:v1", out, fmt)
    assert "test/single:v1" in line
    assert f"more than the {LIMIT} byte limit" in line
    assert proxy.blob_gets() == []
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_index_over_4_mib_is_refused(
    cli: Cli, proxy: FaultProxy, multi: LayoutImage, out: Path, fmt: str
) -> None:
    index = manifest_of(multi)
    index["annotations"] = {"padding": "x" * LIMIT}
    serve(proxy, "test/multi", "v1", canonical_json(index))
    line = pull(cli, proxy, "test/multi:v1", out, fmt, "--platform", "linux/amd64")
    assert "test/multi:v1" in line and f"more than the {LIMIT} byte limit" in line
    assert len(proxy.requests_to("/v2/test/multi/manifests/v1")) == 1
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_config_declared_over_4_mib_is_refused_before_download(
    cli: Cli, proxy: FaultProxy, single: LayoutImage, out: Path, fmt: str
) -> None:
    m = manifest_of(single)
    m["config"]["size"] = 5 * 1024 * 1024
    serve(proxy, "test/single", "v1", canonical_json(m))
    line = pull(cli, proxy, "test/single:v1", out, fmt)
    assert f"config {single.image.config.digest}" in line
    assert f"is 5242880 bytes, more than the {LIMIT} byte limit" in line
    assert proxy.blob_gets() == []  # not a byte of it was asked for
    assert list(out.iterdir()) == []


# -- digests used in paths -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", ["layer", "config", "index"])
def test_digest_that_climbs_out_is_refused(
    cli: Cli,
    proxy: FaultProxy,
    env: Isolation,
    single: LayoutImage,
    multi: LayoutImage,
    tmp_path: Path,
    out: Path,
    fmt: str,
    where: str,
) -> None:
    bad = "sha256:../../../../x"
    before = files_under(tmp_path)
    if where == "index":
        doc = manifest_of(multi)
        doc["manifests"][0]["digest"] = bad
        serve(proxy, "test/multi", "v1", canonical_json(doc))
        line = pull(cli, proxy, "test/multi:v1", out, fmt, "--platform", "linux/amd64")
        assert "index.manifests[0]: invalid digest 'sha256:../../../../x'" in line
    else:
        doc = manifest_of(single)
        target = doc["layers"][0] if where == "layer" else doc["config"]
        target["digest"] = bad
        serve(proxy, "test/single", "v1", canonical_json(doc))
        line = pull(cli, proxy, "test/single:v1", out, fmt)
        field = "manifest.layers[0]" if where == "layer" else "manifest.config"
        assert f"{field}: invalid digest 'sha256:../../../../x'" in line
    assert line.startswith("derrick: error: manifest ")
    assert proxy.blob_gets() == []
    assert list(out.iterdir()) == []
    assert files_under(tmp_path) == before  # nothing written anywhere, the cache included
    for base in (env.cache / "blobs" / "sha256", out / "image" / "blobs" / "sha256"):
        assert not (base / "../../../../x").resolve().exists()


# -- sizes that lie --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("delta", [-1, +1])
def test_blob_of_another_size_than_the_manifest_says(
    cli: Cli, proxy: FaultProxy, single: LayoutImage, out: Path, fmt: str, delta: int
) -> None:
    layer = single.image.layers[0]
    m = manifest_of(single)
    m["layers"][0]["size"] = layer.size + delta
    serve(proxy, "test/single", "v1", canonical_json(m))
    line = pull(cli, proxy, "test/single:v1", out, fmt)
    assert f"blob {layer.digest}" in line
    if delta < 0:
        assert f"is larger than its declared size {layer.size - 1}" in line
    else:
        assert f"has {layer.size} bytes, expected {layer.size + 1}" in line
    names = {p.name for p in out.iterdir()}
    assert names <= {".image.tar.derrick-partial", ".image.tar.derrick-partial.json"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_child_manifest_of_another_size_than_the_index_says(
    cli: Cli, proxy: FaultProxy, multi: LayoutImage, out: Path, fmt: str
) -> None:
    doc = manifest_of(multi)
    amd64 = next(d for d in doc["manifests"] if d["platform"]["architecture"] == "amd64")
    amd64["size"] += 3
    serve(proxy, "test/multi", "v1", canonical_json(doc))
    line = pull(cli, proxy, "test/multi:v1", out, fmt, "--platform", "linux/amd64")
    assert f"manifest {amd64['digest']} of {proxy.host}/test/multi is" in line
    assert f"the index says {amd64['size']}" in line
    assert list(out.iterdir()) == []


# -- content that is not what was asked for --------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_manifest_by_digest_that_does_not_match(
    cli: Cli, proxy: FaultProxy, single: LayoutImage, multi: LayoutImage, out: Path, fmt: str
) -> None:
    other = multi.image_for("linux/arm64/v8").manifest_bytes
    serve(proxy, "test/single", single.digest, other)
    line = pull(cli, proxy, f"test/single@{single.digest}", out, fmt)
    assert single.digest in line
    assert f"digest {sha256_digest(other)}, not the one asked for" in line
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_index_child_that_does_not_match_its_digest(
    cli: Cli, proxy: FaultProxy, single: LayoutImage, multi: LayoutImage, out: Path, fmt: str
) -> None:
    child = multi.image_for("linux/amd64").digest
    serve(proxy, "test/multi", child, single.top_bytes)
    line = pull(cli, proxy, "test/multi:v1", out, fmt, "--platform", "linux/amd64")
    assert f"test/multi:v1@{child}" in line and "not the one asked for" in line
    assert proxy.blob_gets() == []
    assert list(out.iterdir()) == []


# -- JSON of the wrong shape -----------------------------------------------------------------


def _set(path: str, value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return change


_DELETE = object()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("layers", "layer.tar"), "manifest: field 'layers' has the wrong type (str)"),
        (_set("config", _DELETE), "manifest: required field 'config' is missing"),
        (
            _set("layers.0.size", "1234"),
            "manifest.layers[0]: field 'size' has the wrong type (str)",
        ),
        (
            _set("layers.0.size", -5),
            "manifest.layers[0]: size must not be negative",
        ),
        (
            _set("layers.0.mediaType", _DELETE),
            "manifest.layers[0]: required field 'mediaType' is missing",
        ),
        (_set("config.digest", 12), "manifest.config: field 'digest' has the wrong type (int)"),
        (_set("layers.0", ["not", "an", "object"]), "manifest.layers[0]: must be an object"),
        (_set("annotations", {"a": 1}), "'annotations' must map strings to strings"),
        (_set("mediaType", ["x"]), "field 'mediaType' has the wrong type"),
    ],
)
def test_schema_violations_are_named(
    cli: Cli, proxy: FaultProxy, single: LayoutImage, out: Path, change: Any, message: str
) -> None:
    m = manifest_of(single)
    change(m)
    serve(proxy, "test/single", "v1", canonical_json(m))
    line = pull(cli, proxy, "test/single:v1", out, "docker-archive")
    assert "test/single:v1" in line and message in line
    assert proxy.blob_gets() == []
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"architecture": 5, "os": "linux"}, "field 'architecture' has the wrong type (int)"),
        (
            {"architecture": "amd64", "os": "linux", "rootfs": {"diff_ids": "sha256:x"}},
            "field 'diff_ids' has the wrong type (str)",
        ),
        (
            {"architecture": "amd64", "os": "linux", "rootfs": {"diff_ids": ["sha256:../x"]}},
            "rootfs.diff_ids[0]: invalid digest",
        ),
        ([1, 2, 3], "the document must be a JSON object"),
    ],
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_config_of_the_wrong_shape_is_named(
    cli: Cli,
    registry_open: RegistryProcess,
    single: LayoutImage,
    unique_repo: Any,
    out: Path,
    config: Any,
    message: str,
    fmt: str,
) -> None:
    """A registry really stores such an image (it does not read configs): pushed raw."""
    repo = unique_repo("hostile")
    data = canonical_json(config)
    m = manifest_of(single)
    with RawClient(registry_open) as raw:
        m["config"]["digest"] = raw.push_blob(repo, data)
        m["config"]["size"] = len(data)
        raw.push_blob(repo, single.blob_path(single.image.layers[0].digest).read_bytes())
        raw.put_manifest(repo, "v1", canonical_json(m), OCI_MANIFEST)
    dest = out / ("image" if fmt == "oci" else "image.tar")
    ref = f"{registry_open.host}/{repo}:v1"
    line = cli("image", "pull", ref, "-o", dest, "--format", fmt).failed()
    assert f"config {m['config']['digest']} of {ref}: image config" in line
    assert message in line
    assert list(out.iterdir()) == []


# -- layouts and archives on disk ------------------------------------------------------------


def copy_layout(layout: LayoutImage, dest: Path) -> Path:
    shutil.copytree(layout.path, dest)
    return dest


def registry_has_repo(registry: RegistryProcess, repo: str) -> bool:
    with RawClient(registry) as raw:
        return raw.request("GET", f"/v2/{repo}/tags/list", repo=repo).status_code == 200


@pytest.fixture
def target(registry_open: RegistryProcess, unique_repo: Any) -> tuple[RegistryProcess, str]:
    return registry_open, unique_repo("hostile")


def push_and_unpack_fail(
    cli: Cli, src: Path | str, target: tuple[RegistryProcess, str], tmp_path: Path
) -> tuple[str, str]:
    """``image push`` and ``image unpack`` of ``src`` both fail; nothing is pushed or unpacked."""
    registry, repo = target
    push = cli("image", "push", src, f"{registry.host}/{repo}:v1", "-q").failed()
    assert not registry_has_repo(registry, repo)
    rootfs = tmp_path / "rootfs"
    unpack = cli("image", "unpack", src, rootfs, "-q").failed()
    assert not rootfs.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    return push, unpack


def test_layout_index_json_with_a_bad_digest(
    cli: Cli, single: LayoutImage, target: tuple[RegistryProcess, str], tmp_path: Path
) -> None:
    layout = copy_layout(single, tmp_path / "layout")
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(LayoutError, match=r"index\.json is malformed.*invalid digest"):
        open_image_source(layout)
    for line in push_and_unpack_fail(cli, layout, target, tmp_path):
        assert "index.json is malformed" in line
        assert "invalid digest 'sha256:../../../../etc/passwd'" in line


def test_layout_manifest_with_a_bad_layer_digest(
    cli: Cli, single: LayoutImage, target: tuple[RegistryProcess, str], tmp_path: Path
) -> None:
    """The manifest blob is rewritten (and index.json pointed at it) with a climbing digest."""
    layout = copy_layout(single, tmp_path / "layout")
    m = manifest_of(single)
    m["layers"][0]["digest"] = "sha256:../../../../etc/passwd"
    raw = canonical_json(m)
    digest = sha256_digest(raw)
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(raw)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(digest=digest, size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))
    for line in push_and_unpack_fail(cli, layout, target, tmp_path):
        assert "manifest.layers[0]: invalid digest 'sha256:../../../../etc/passwd'" in line


def test_layout_blob_that_links_outside(
    cli: Cli, single: LayoutImage, target: tuple[RegistryProcess, str], tmp_path: Path
) -> None:
    """Even with the right content, a blob outside the layout is not read."""
    layout = copy_layout(single, tmp_path / "layout")
    layer = single.image.layers[0].digest
    blob = layout / "blobs" / "sha256" / layer.split(":")[1]
    outside = tmp_path / "outside"
    outside.write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(outside)
    for line in push_and_unpack_fail(cli, layout, target, tmp_path):
        assert layer in line and "missing" in line


def test_layout_blob_of_the_wrong_size(
    cli: Cli, single: LayoutImage, target: tuple[RegistryProcess, str], tmp_path: Path
) -> None:
    layout = copy_layout(single, tmp_path / "layout")
    layer = single.image.layers[0].digest
    blob = layout / "blobs" / "sha256" / layer.split(":")[1]
    blob.write_bytes(blob.read_bytes() + b"\0")
    registry, repo = target
    line = cli("image", "push", layout, f"{registry.host}/{repo}:v1", "-q").failed()
    assert layer in line
    with RawClient(registry) as raw:
        assert raw.head_manifest(repo, "v1").status_code == 404  # nothing is tagged


def _tar_with(src: Path, dest: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A copy of the tar ``src`` with ``extra`` members appended."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin:
            tout.addfile(m, tin.extractfile(m) if m.isreg() else None)
        for info, data in extra:
            if data is not None:
                info.size = len(data)
            tout.addfile(info, io.BytesIO(data) if data is not None else None)
    return dest


def _member(name: str, data: bytes = b"evil\n") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.fixture(scope="module")
def archives(
    seeded_registries: SeededRegistries, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A docker-archive and an OCI archive of test/single, pulled with derrick."""
    work = tmp_path_factory.mktemp("archives")
    ref = Reference.parse(seeded_registries.open["test/single"].reference)
    out = {}
    with RegistryClient(credentials=lambda registry: None, certs_dir=None) as client:
        for fmt in ("docker-archive", "oci-archive"):
            out[fmt] = work / f"{fmt}.tar"
            do_pull(client, ref, out[fmt], format=fmt, cache=BlobStore(work / "cache"))
    return out


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("/etc/evil"), "has an absolute path"),
        (_member("blobs/../../evil"), "contains '..'"),
        (_link("blobs/sha256/evil", "../../../../etc/passwd"), "points outside the archive"),
        (_link("evil", "/etc/passwd"), "points to the absolute path '/etc/passwd'"),
        (_link("evil", "../outside", tarfile.LNKTYPE), "points outside the archive"),
    ],
)
def test_archive_member_that_escapes(
    cli: Cli,
    archives: dict[str, Path],
    target: tuple[RegistryProcess, str],
    tmp_path: Path,
    fmt: str,
    member: tuple[tarfile.TarInfo, bytes | None],
    message: str,
) -> None:
    bad = _tar_with(archives[fmt], tmp_path / "bad.tar", [member])
    with pytest.raises(LayoutError, match="unsafe"):
        open_image_source(bad)
    for line in push_and_unpack_fail(cli, bad, target, tmp_path):
        assert "is unsafe" in line and message in line


def test_docker_archive_manifest_naming_a_path_outside(
    cli: Cli, archives: dict[str, Path], target: tuple[RegistryProcess, str], tmp_path: Path
) -> None:
    with tarfile.open(archives["docker-archive"]) as tf:
        f = tf.extractfile("manifest.json")
        assert f is not None
        doc = json.loads(f.read())
    doc[0]["Layers"][0] = "../../../../etc/passwd"
    evil = json.dumps(doc).encode()
    src = tmp_path / "src.tar"
    with tarfile.open(archives["docker-archive"]) as tin, tarfile.open(src, "w") as tout:
        for m in tin:
            data = tin.extractfile(m) if m.isreg() else None
            if m.name == "manifest.json":
                m.size = len(evil)
                data = io.BytesIO(evil)  # type: ignore[assignment]
            tout.addfile(m, data)
    for line in push_and_unpack_fail(cli, src, target, tmp_path):
        assert "is unsafe" in line and "../../../../etc/passwd" in line
