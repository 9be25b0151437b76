"""The copy engine (derrick.ops.transfer) between repositories of the real registry, and
``derrick image copy`` on top of it.

A :class:`~support.faultproxy.FaultProxy` in front of the open registry is "another
registry" (its own host:port, so nothing is mounted across it) that can cut, stall or
corrupt what passes, and counts the requests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from urllib.parse import unquote

import pytest

from derrick.digest import Digest
from derrick.errors import BlobUnknownError
from derrick.images.model import BlobOutcome, ImageName, Selection
from derrick.images.remote import RegistryRepository
from derrick.manifest import Descriptor, Platform
from derrick.ops.transfer import copy
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.transport import RetryPolicy
from support.cli import Cli
from support.faultproxy import Fault, FaultProxy, RecordedRequest, Reply
from support.images import LayoutImage
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.seed import SeededRegistries
from support.tokenserver import TokenServer

QUICK = RetryPolicy(retries=3, backoff=0.01)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def other(registry_open: RegistryProcess) -> Iterator[FaultProxy]:
    with FaultProxy(registry_open.url) as proxy:
        yield proxy


@pytest.fixture
def proxy(other: FaultProxy, seeded: SeededRegistries) -> Iterator[FaultProxy]:
    other.clear()
    yield other
    other.clear()


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(credentials=lambda _host: None, certs_dir=None) as c:
        yield c


def repo_at(client: RegistryClient, host: str, name: str, **kw: object) -> RegistryRepository:
    return RegistryRepository(client, Reference.parse(f"{host}/{name}"), **kw)  # type: ignore[arg-type]


def check_copy(registry: RegistryProcess, repo: str, tag: str, layout: LayoutImage) -> None:
    """RawClient: the tag names the layout's top, and every child and blob is there intact."""
    with RawClient(registry) as raw:
        assert raw.manifest_digest(repo, tag) == layout.digest
        for img in layout.images:
            assert raw.manifest_digest(repo, img.digest) == img.digest
            for digest in img.blob_digests:
                blob = raw.get_blob(repo, digest)
                assert blob.status_code == 200 and sha256(blob.content) == digest


def manifest_gets(proxy: FaultProxy, repo: str) -> Counter[str]:
    return Counter(
        r.route.rsplit("/", 1)[1]
        for r in proxy.requests
        if r.method == "GET" and r.route.startswith(f"/v2/{repo}/manifests/")
    )


def upload_lines(log: str, repo: str) -> list[str]:
    return re.findall(rf'"(?:PATCH|PUT) /v2/{re.escape(repo)}/blobs/uploads/[^"]*"', log)


def mount_lines(log: str, repo: str) -> list[str]:
    return re.findall(rf'"POST /v2/{re.escape(repo)}/blobs/uploads/\?mount=[^"]*" 201', log)


class Recorder:
    """A Progress that keeps the sums."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = -1
        self.advanced: Counter[str] = Counter()
        self.finished: dict[str, BlobOutcome] = {}

    def planned(self, total_bytes: int) -> None:
        self.total = total_bytes

    def blob_started(self, desc: Descriptor) -> None:
        pass

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        with self.lock:
            self.advanced[str(desc.digest)] += nbytes

    def blob_finished(self, desc: Descriptor, outcome: BlobOutcome) -> None:
        with self.lock:
            self.finished[str(desc.digest)] = outcome


# -- the engine ----------------------------------------------------------------------------


def test_all_platforms_keep_the_index_digest_with_one_manifest_get_each(
    proxy: FaultProxy,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    client: RegistryClient,
) -> None:
    layout = test_images["multi"]
    repo = unique_repo()
    progress = Recorder()
    result = copy(
        repo_at(client, proxy.host, "test/multi:v1"),
        repo_at(client, registry_open.host, repo),
        selection=Selection(all=True),
        progress=progress,
        retry=QUICK,
    )
    assert str(result.digest) == layout.digest
    assert result.manifests[-1] == result.digest
    check_copy(registry_open, repo, "v1", layout)
    # resolving the tag is the only GET of the index; each child is fetched once
    assert manifest_gets(proxy, "test/multi") == Counter(
        {"v1": 1, **{d: 1 for d in layout.manifest_digests}}
    )
    # configs were read while planning, layers while copying: each blob once
    gets = Counter(r.blob for r in proxy.blob_gets())
    assert gets == Counter(set(layout.blob_digests))
    sizes = {d: layout.blob_path(d).stat().st_size for d in layout.blob_digests}
    assert result.stats.copied == len(sizes) and result.stats.mounted == 0
    assert result.stats.copied_bytes == sum(sizes.values())
    assert progress.total == sum(sizes.values())
    assert dict(progress.advanced) == sizes
    assert set(progress.finished) == set(sizes) and set(progress.finished.values()) == {"copied"}

    # again: the destination has every blob
    again = copy(
        repo_at(client, proxy.host, "test/multi:v1"),
        repo_at(client, registry_open.host, repo),
        selection=Selection(all=True),
    )
    assert again.stats.skipped == len(sizes) and again.stats.copied == 0


def test_one_platform_copies_that_image_only(
    proxy: FaultProxy,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    client: RegistryClient,
) -> None:
    layout = test_images["multi"]
    arm = layout.image_for("linux/arm64/v8")
    repo = unique_repo()
    result = copy(
        repo_at(client, proxy.host, "test/multi:v1"),
        repo_at(client, registry_open.host, repo),
        selection=Selection(platforms=(Platform.parse("linux/arm64"),)),
    )
    assert str(result.digest) == arm.digest and result.media_type == arm.media_type
    only_amd = set(layout.image_for("linux/amd64").blob_digests) - set(arm.blob_digests)
    with RawClient(registry_open) as raw:
        assert raw.get_manifest(repo, "v1").content == arm.manifest_bytes
        assert all(raw.blob_exists(repo, d) for d in arm.blob_digests)
        assert only_amd and not any(raw.blob_exists(repo, d) for d in only_amd)
    assert {r.blob for r in proxy.blob_gets()} <= set(arm.blob_digests)


def test_two_platforms_make_a_new_index_of_just_those(
    proxy: FaultProxy,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    client: RegistryClient,
) -> None:
    layout = test_images["multi"]
    amd, arm = layout.image_for("linux/amd64"), layout.image_for("linux/arm64/v8")
    # a source index of three platforms (the third names the amd64 image again)
    src_repo = unique_repo()
    copy(
        repo_at(client, registry_open.host, "test/multi:v1"),
        repo_at(client, registry_open.host, src_repo),
        selection=Selection(all=True),
    )
    index = json.loads(layout.top_bytes)
    third = dict(index["manifests"][0], platform={"os": "linux", "architecture": "s390x"})
    index["manifests"].append(third)
    index["annotations"] = {"org.example.note": "kept"}
    three = json.dumps(index).encode()
    with RawClient(registry_open) as raw:
        raw.put_manifest(src_repo, "three", three, layout.media_type)

    repo = unique_repo()
    result = copy(
        repo_at(client, proxy.host, f"{src_repo}:three"),
        repo_at(client, registry_open.host, repo),
        selection=Selection(platforms=(Platform.parse("linux/arm64"), Platform.host())),
    )
    assert result.digest != Digest.of(three)
    assert result.media_type == layout.media_type
    with RawClient(registry_open) as raw:
        got = raw.get_manifest(repo, "three")
        assert sha256(got.content) == str(result.digest)
        new = json.loads(got.content)
        assert new["annotations"] == {"org.example.note": "kept"}
        assert [m["digest"] for m in new["manifests"]] == [amd.digest, arm.digest]
        assert [m["platform"]["architecture"] for m in new["manifests"]] == ["amd64", "arm64"]
        for img in (amd, arm):
            assert raw.manifest_digest(repo, img.digest) == img.digest
            assert all(raw.blob_exists(repo, d) for d in img.blob_digests)


def test_a_body_cut_mid_way_resumes_with_range(
    proxy: FaultProxy,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    client: RegistryClient,
) -> None:
    layout = test_images["single"]
    layer = layout.image.layer_digests[0]
    size = layout.blob_path(layer).stat().st_size
    proxy.add_fault(Fault(layer, cut_after=100))
    repo = unique_repo()
    result = copy(
        repo_at(client, proxy.host, "test/single:v1"),
        repo_at(client, registry_open.host, repo),
        retry=QUICK,
    )
    assert str(result.digest) == layout.digest
    assert proxy.ranges(layer) == [None, "bytes=100-"]
    assert [g.sent for g in proxy.blob_gets(layer)] == [100, size - 100]
    assert result.stats.copied_bytes == sum(
        layout.blob_path(d).stat().st_size for d in layout.blob_digests
    )
    check_copy(registry_open, repo, "v1", layout)


def test_a_chunked_upload_resumes_at_the_registrys_offset(
    proxy: FaultProxy,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    client: RegistryClient,
    registry_open: RegistryProcess,
) -> None:
    """The second PATCH of each upload fails: the registry has 150 bytes, the upload goes on
    from there, and the feed reads the blob again from its first byte to hash those."""
    layout = test_images["single"]
    layer = layout.image.layer_digests[0]
    patches: Counter[str] = Counter()

    def route(req: RecordedRequest) -> Reply | None:
        if req.method == "PATCH":
            patches[req.route] += 1
            if patches[req.route] == 2:
                return Reply(500, b'{"errors":[{"code":"UNKNOWN","message":"injected"}]}')
        return None

    proxy.route = route
    repo = unique_repo()
    try:
        result = copy(
            repo_at(client, proxy.host, "test/single:v1"),
            repo_at(client, proxy.host, repo, chunk_size=150, mount=False),
            retry=QUICK,
        )
    finally:
        proxy.route = None
    assert str(result.digest) == layout.digest
    assert proxy.ranges(layer) == [None, None]
    assert any(n >= 2 for n in patches.values())
    status = [r for r in proxy.requests if r.method == "GET" and "/blobs/uploads/" in r.path]
    assert len(status) == 2  # the config's upload and the layer's
    check_copy(registry_open, repo, "v1", layout)


def test_the_first_error_cancels_the_other_blobs_and_aborts(
    proxy: FaultProxy,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    client: RegistryClient,
) -> None:
    """Two layers stall mid-body while a third is missing from the source: the copy raises
    the missing blob's error, the stalled uploads stop at their next chunk and are
    cancelled, the layers after never start, and the sink is aborted."""
    layout = test_images["eight"]
    layers = layout.image.layer_digests
    slow, missing, later = layers[:2], layers[2], layers[3:]

    class Missing(RegistryRepository):
        def open_blob(self, desc: Descriptor, offset: int = 0):  # type: ignore[no-untyped-def]
            if str(desc.digest) == missing:
                # once the two are stalled, ask the registry for a blob it does not have
                proxy.wait_stalled(2)
                desc = Descriptor(desc.media_type, Digest.of(b"not there"), desc.size)
            return super().open_blob(desc, offset)

    class Sink(RegistryRepository):
        aborted = 0

        def abort(self) -> None:
            self.aborted += 1
            super().abort()

    for digest in slow:
        proxy.add_fault(Fault(digest, stall_after=10))
    repo = unique_repo()
    sink = Sink(client, Reference.parse(f"{registry_open.host}/{repo}:v1"))
    cancel = threading.Event()
    offset = registry_open.log_size()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            copy(
                Missing(client, Reference.parse(f"{proxy.host}/test/eight:v1")),
                sink,
                jobs=3,
                cancel=cancel,
                retry=QUICK,
            )
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    proxy.wait_stalled(2)
    assert cancel.wait(30)  # the missing blob failed while the two were stalled
    proxy.release()
    worker.join(60)
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], BlobUnknownError)
    assert sink.aborted == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("derrick-blob")]
    assert not {r.blob for r in proxy.blob_gets()} & set(later)
    # The registry writes its access log line after answering: give it a moment.
    deleted = rf'"DELETE /v2/{re.escape(repo)}/blobs/uploads/[^"]*" 204'
    deadline = time.monotonic() + 10
    while len(re.findall(deleted, registry_open.log_since(offset))) < 2:
        assert time.monotonic() < deadline, "the stalled uploads were not cancelled"
        time.sleep(0.05)
    with RawClient(registry_open) as raw:
        assert not any(raw.blob_exists(repo, d) for d in layers)
        assert raw.get_manifest(repo, "v1").status_code == 404


# -- derrick image copy ------------------------------------------------------------------------


def login_env(monkeypatch: pytest.MonkeyPatch, registry: RegistryProcess, user: str) -> None:
    auth = base64.b64encode(f"{user}:{registry.users[user]}".encode()).decode()
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", json.dumps({"auths": {registry.host: {"auth": auth}}}))


def test_cli_copy_within_a_registry_mounts_with_one_token(
    seeded: SeededRegistries,
    registry_token: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    token_log: TokenServer,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    login_env(monkeypatch, registry_token, "alice")
    layout = test_images["multi"]
    src_repo, repo = "private/multi", unique_repo("private/scratch")
    offset = registry_token.log_size()
    token_log.clear_log()
    res = cli(
        "image",
        "copy",
        "--insecure",
        "--all-platforms",
        f"{registry_token.host}/{src_repo}:v1",
        f"{registry_token.host}/{repo}",
        "--format",
        "json",
    ).ok()
    summary = json.loads(res.out)
    assert summary["digest"] == layout.digest
    assert summary["destination"] == f"{registry_token.host}/{repo}:v1"
    assert summary["mountedBlobs"] == len(layout.blob_digests)
    assert summary["uploadedBlobs"] == summary["skippedBlobs"] == 0
    assert summary["manifests"] == [*layout.manifest_digests, layout.digest]
    log = registry_token.log_since(offset)
    mounts = mount_lines(log, repo)
    assert len(mounts) == len(layout.blob_digests)
    assert all(f"from={src_repo}" in unquote(m) for m in mounts)
    assert upload_lines(log, repo) == []
    both = [
        e
        for e in token_log.log
        if f"repository:{repo}:pull,push" in e.scopes and f"repository:{src_repo}:pull" in e.scopes
    ]
    assert len(both) == 1
    assert both[0].granted_actions(repo) == ["pull", "push"]
    assert both[0].granted_actions(src_repo) == ["pull"]
    check_copy(registry_token, repo, "v1", layout)


def test_cli_copy_across_registries_streams_then_skips(
    proxy: FaultProxy,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    cli: Cli,
) -> None:
    layout = test_images["dockerlist"]
    repo = unique_repo()
    src = f"{proxy.host}/test/dockerlist:v1"
    offset = registry_open.log_size()
    res = cli("image", "copy", "--all-platforms", src, f"{registry_open.host}/{repo}", "-j", "3")
    res.ok()
    assert res.out == ""
    assert res.err.startswith(f"Copied {src} to {registry_open.host}/{repo}:v1 ({layout.digest})")
    n = len(layout.blob_digests)
    assert f"{n} blobs uploaded" in res.err
    assert "mount=" not in registry_open.log_since(offset)
    check_copy(registry_open, repo, "v1", layout)

    offset = registry_open.log_size()
    res = cli("image", "copy", "--all-platforms", src, f"{registry_open.host}/{repo}:again")
    assert "0 blobs uploaded" in res.ok().err and f"{n} already there" in res.err
    assert "/blobs/uploads/" not in registry_open.log_since(offset)
    with RawClient(registry_open) as raw:
        assert raw.manifest_digest(repo, "again") == layout.digest


def test_cli_copy_one_platform_keeps_the_source_tag(
    proxy: FaultProxy,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    cli: Cli,
) -> None:
    layout = test_images["dockerlist"]
    arm = layout.image_for("linux/arm/v7")
    repo = unique_repo()
    res = cli(
        "image",
        "copy",
        "--platform",
        "linux/arm",
        f"{proxy.host}/test/dockerlist:v1",
        f"{registry_open.host}/{repo}",
        "--format",
        "json",
    ).ok()
    summary = json.loads(res.out)
    assert summary["digest"] == arm.digest and summary["manifests"] == [arm.digest]
    assert summary["mediaType"] == arm.media_type
    assert summary["uploadedBlobs"] == len(arm.blob_digests)
    with RawClient(registry_open) as raw:
        assert raw.manifest_digest(repo, "v1") == arm.digest


def test_cli_copy_of_a_single_image_for_another_platform_is_refused(
    proxy: FaultProxy,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    cli: Cli,
) -> None:
    repo = unique_repo()
    line = cli(
        "image",
        "copy",
        "--platform",
        "linux/arm64",
        f"{proxy.host}/test/single:v1",
        f"{registry_open.host}/{repo}",
    ).failed()
    assert "linux/amd64" in line and "linux/arm64" in line
    config = test_images["single"].image.config.digest
    assert {r.blob for r in proxy.requests if r.blob is not None} == {config}
    assert f"/v2/{repo}/" not in registry_open.log_text()


def test_cli_copy_to_another_digest_is_refused_before_a_blob_moves(
    proxy: FaultProxy,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    cli: Cli,
) -> None:
    repo = unique_repo()
    wrong = test_images["multi"].digest
    offset = registry_open.log_size()
    res = cli(
        "image", "copy", f"{proxy.host}/test/single:v1", f"{registry_open.host}/{repo}@{wrong}"
    )
    line = res.failed()
    assert res.code == 2 and "cannot copy to" in line and test_images["single"].digest in line
    assert f"/v2/{repo}/" not in registry_open.log_since(offset)
    # by its own digest it works, and no tag is put
    right = test_images["single"].digest
    res = cli(
        "image", "copy", f"{proxy.host}/test/single:v1", f"{registry_open.host}/{repo}@{right}"
    )
    assert f"to {registry_open.host}/{repo}@{right}" in res.ok().err
    with RawClient(registry_open) as raw:
        assert raw.manifest_digest(repo, right) == right
        assert raw.get_manifest(repo, "v1").status_code == 404  # SRC's tag not put


@pytest.mark.parametrize("chunk_size", ["0", "200"])
def test_cli_copy_never_commits_a_blob_that_does_not_match(
    chunk_size: str,
    proxy: FaultProxy,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    cli: Cli,
) -> None:
    layout = test_images["single"]
    layer = layout.image.layer_digests[0]
    proxy.add_fault(Fault(layer, flip_at=300, times=None))  # every read of it is wrong
    repo = unique_repo()
    offset = registry_open.log_size()
    line = cli(
        "image",
        "copy",
        "--chunk-size",
        chunk_size,
        f"{proxy.host}/test/single:v1",
        f"{registry_open.host}/{repo}:v1",
    ).failed()
    assert layer in line and "does not match" in line
    log = registry_open.log_since(offset)
    hex_ = layer.split(":")[1]
    assert not re.search(rf'"PUT /v2/{re.escape(repo)}/blobs/uploads/[^"]*{hex_}[^"]*" 201', log)
    assert re.search(rf'"DELETE /v2/{re.escape(repo)}/blobs/uploads/[^"]*" 204', log)
    assert len(proxy.blob_gets(layer)) == 1  # a wrong digest is not asked for again
    with RawClient(registry_open) as raw:
        assert not raw.blob_exists(repo, layer)
        assert raw.get_manifest(repo, "v1").status_code == 404


def test_registry_repository_names_and_resolve(
    seeded: SeededRegistries, registry_open: RegistryProcess, client: RegistryClient
) -> None:
    repo = repo_at(client, registry_open.host, "test/multi:v1")
    assert repo.names() == ["v1"]
    assert repo.image_name() == ImageName(f"{registry_open.host}/test/multi", "v1")
    desc = repo.resolve()
    assert repo.image_name(str(desc.digest)) == ImageName(f"{registry_open.host}/test/multi")
    assert repo.resolve(str(desc.digest)) == desc
    assert repo.manifest(desc) == repo.manifest(desc)  # kept bytes once, then fetched


def test_cli_copy_to_a_repository_the_reader_cannot_push_to_is_denied(
    seeded: SeededRegistries,
    registry_token: RegistryProcess,
    unique_repo: Callable[..., str],
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    login_env(monkeypatch, registry_token, "reader")
    repo = unique_repo("private/scratch")
    line = cli(
        "image",
        "copy",
        "--insecure",
        seeded.token["private/single"].reference,
        f"{registry_token.host}/{repo}:v1",
    ).failed()
    assert "denied" in line and repo in line


def test_cli_copy_drives_the_progress_bars(
    proxy: FaultProxy,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import derrick.cli.progress

    monkeypatch.setattr(derrick.cli.progress, "wants_progress", lambda quiet: not quiet)
    monkeypatch.setenv("COLUMNS", "300")
    layout = test_images["single"]
    repo = unique_repo()
    res = cli("image", "copy", f"{proxy.host}/test/single:v1", f"{registry_open.host}/{repo}")
    size = sum(layout.blob_path(d).stat().st_size for d in layout.blob_digests)
    assert f"{size}/{size} bytes" in res.ok().err  # the total bar is full
    check_copy(registry_open, repo, "v1", layout)
