"""``derrick sync`` against the real registries: copies, incremental re-runs, filters,
interrupts, pull budgets and rate limits, shards, signature tags, configuration errors.

Source repositories are made per test from the seeded images (tags put by manifest PUTs
and mounts, fast); the destination is a registry of this module's own (open), the
htpasswd registry, or the token registry.  A :class:`~support.faultproxy.FaultProxy` in
front of a source counts its manifest GETs and plays Docker Hub (``ratelimit-*`` headers
that count down, 429 at zero).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from derrick.auth.credentials import Credential
from derrick.images.model import ImageName, Selection
from derrick.images.remote import RegistryRepository
from derrick.ops.syncconfig import load_config
from derrick.ops.syncplan import Shard, plan_sync
from derrick.ops.transfer import copy
from derrick.reference import Reference
from derrick.registry import RegistryClient
from support.cli import Cli, Isolation, run_subprocess
from support.faultproxy import Fault, FaultProxy, RecordedRequest, Reply
from support.images import LayoutImage, _skopeo
from support.rawclient import RawClient
from support.registry import RegistryProcess, start_registry
from support.seed import SeededRegistries
from support.tools import require


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """An open registry to mirror into."""
    reg = start_registry(tmp_path_factory.mktemp("registry-mirror"), name="registry-mirror")
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(credentials=lambda _host: None, certs_dir=None) as c:
        yield c


def fill(
    registry: RegistryProcess,
    repo: str,
    tags: dict[str, str],
    seeded: SeededRegistries,
    *,
    base: str = "test",
) -> None:
    """Put seeded images (``base/NAME:v1``: single, multi, docker, ...) under ``repo:TAG``."""
    client = RegistryClient(credentials=_full_access(registry), certs_dir=None, insecure=True)
    try:
        for tag, name in tags.items():
            src = RegistryRepository(client, Reference.parse(f"{registry.host}/{base}/{name}:v1"))
            dst = RegistryRepository(client, Reference.parse(f"{registry.host}/{repo}"))
            copy(src, dst, selection=Selection(all=True), names=(ImageName(None, tag),))
    finally:
        client.close()


def _full_access(registry: RegistryProcess) -> Callable[[str], Credential | None]:
    def lookup(host: str) -> Credential | None:
        if host != registry.host or registry.credentials is None:
            return None
        return Credential(*registry.credentials)

    return lookup


def login_env(monkeypatch: pytest.MonkeyPatch, *pairs: tuple[RegistryProcess, str]) -> None:
    auths = {}
    for registry, user in pairs:
        auth = base64.b64encode(f"{user}:{registry.users[user]}".encode()).decode()
        auths[registry.host] = {"auth": auth}
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", json.dumps({"auths": auths}))


def writes(log: str, repo: str) -> list[str]:
    """Blob uploads and manifest PUTs into ``repo`` in a registry log."""
    pattern = rf'"(?:PUT|PATCH|POST) /v2/{re.escape(repo)}/(?:blobs/uploads|manifests)[^"]*"'
    return re.findall(pattern, log)


def manifest_gets(proxy: FaultProxy) -> list[RecordedRequest]:
    return [r for r in proxy.requests if r.method == "GET" and "/manifests/" in r.route]


def run_json(cli: Cli, *argv: object, code: int = 0) -> dict:  # type: ignore[type-arg]
    res = cli("sync", *argv, "--format", "json")
    assert res.code == code, res.err
    assert "Traceback" not in res.err
    return json.loads(res.out)  # type: ignore[no-any-return]


# -- copies and re-runs ----------------------------------------------------------------------


def test_a_configuration_read_from_a_pipe(
    seeded: SeededRegistries, unique_repo: Callable[..., str]
) -> None:
    # derrick sync <(make-config) and derrick sync /dev/stdin: the file is a pipe
    host = seeded.open.registry.host
    dest = unique_repo()
    config = (
        f"sources:\n  - repository: {host}/test/single\n"
        f"    destination: {{registry: {host}, repository: {dest}}}\n"
    )
    r = run_subprocess("sync", "/dev/stdin", "--dry-run", "--format", "json", stdin=config)
    assert r.code == 0, r.err
    assert [i["destination"] for i in json.loads(r.out)["images"]] == [f"{host}/{dest}:v1"]
    r = run_subprocess("sync", "/dev/null")  # a file, if an empty one
    assert (
        r.failed()
        == "derrick: error: /dev/null: sources: the file is empty: it needs a list of sources"
    )


def test_open_to_open_copies_then_a_second_run_skips_everything(
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    mirror: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    cli: Cli,
) -> None:
    src_repo, dst_repo = unique_repo(), unique_repo("mirror")
    tags = {"v1": "single", "v2": "docker", "multi": "multi", "list": "dockerlist"}
    fill(registry_open, src_repo, tags, seeded)
    with FaultProxy(registry_open.url) as proxy:
        source, dest = f"{proxy.host}/{src_repo}", f"{mirror.host}/{dst_repo}"
        offset = mirror.log_size()
        first = run_json(cli, source, dest, "--insecure", "--platform", "linux/amd64")
        assert first["copied"] == 4 and first["failed"] == 0 and first["unchanged"] == 0
        # the destination's tag list said it had none: no HEAD asked about each
        assert f"HEAD /v2/{dst_repo}/manifests/" not in mirror.log_since(offset)
        amd64 = {n: test_images[n].image_for("linux/amd64").digest for n in ("multi", "dockerlist")}
        with RawClient(mirror) as raw:
            assert raw.manifest_digest(dst_repo, "v1") == test_images["single"].digest
            assert raw.manifest_digest(dst_repo, "v2") == test_images["docker"].digest
            assert raw.manifest_digest(dst_repo, "multi") == amd64["multi"]
            assert raw.manifest_digest(dst_repo, "list") == amd64["dockerlist"]
        # Docker Hub's count: each image manifest one GET, each index and its child two
        assert first["pulls"] == 4
        assert len(manifest_gets(proxy)) == 6

        proxy.clear()
        offset = mirror.log_size()
        second = run_json(cli, source, dest, "--insecure", "--platform", "linux/amd64")
        assert second["copied"] == 0 and second["unchanged"] == 4 and second["bytes"] == 0
        assert writes(mirror.log_since(offset), dst_repo) == []
        assert "/blobs/" not in mirror.log_since(offset)
        # the check was HEADs only: no pull spent, even for the indexes (records kept)
        assert manifest_gets(proxy) == [] and second["pulls"] == 0
        assert not any("/blobs/" in r.route for r in proxy.requests)


def test_token_auth_private_source_to_htpasswd_destination(
    seeded: SeededRegistries,
    registry_token: RegistryProcess,
    registry_basic: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src_repo, dst_repo = unique_repo("private/scratch"), unique_repo("mirror")
    fill(registry_token, src_repo, {"1.0": "single", "1.1": "multi"}, seeded, base="private")
    login_env(monkeypatch, (registry_token, "alice"))  # the source, from Docker's config
    offset = registry_basic.log_size()
    report = cli(
        "sync",
        f"{registry_token.host}/{src_repo}",
        f"{registry_basic.host}/{dst_repo}",
        "--all-platforms",
        "--insecure",
        "-u",
        "tester",
        "--password-stdin",
        "--format",
        "json",
        stdin="tester-secret\n",
    ).ok()
    summary = json.loads(report.out)
    assert summary["copied"] == 2 and summary["failed"] == 0
    with RawClient(registry_basic) as raw:
        assert raw.manifest_digest(dst_repo, "1.0") == test_images["single"].digest
        assert raw.manifest_digest(dst_repo, "1.1") == test_images["multi"].digest
        for digest in test_images["multi"].blob_digests:
            assert raw.blob_exists(dst_repo, digest)
    assert len(writes(registry_basic.log_since(offset), dst_repo)) > 0

    # without the destination's password, the HEADs at the destination are refused:
    # each image fails with the reason, and the sync says so in one line
    res = cli(
        "sync",
        f"{registry_token.host}/{src_repo}",
        f"{registry_basic.host}/{dst_repo}",
        "--insecure",
    )
    assert res.code == 1 and "Traceback" not in res.err
    assert res.err_lines[-1].startswith("derrick: error: 2 of 2 failed")
    assert res.out.count("failed ") == 2 and "authentication required" in res.out


# -- what is chosen ----------------------------------------------------------------------------

VERSIONS = ["1.0", "1.1", "1.2.0", "1.2.1", "2.0", "2.1.0-rc1", "3.0.0-alpine", "latest", "edge"]


@pytest.fixture
def versioned(
    seeded: SeededRegistries, registry_open: RegistryProcess, unique_repo: Callable[..., str]
) -> str:
    """A repository with the tags of VERSIONS (one image, tagged by manifest PUTs)."""
    repo = unique_repo()
    fill(registry_open, repo, dict.fromkeys(VERSIONS, "single"), seeded)
    return f"{registry_open.host}/{repo}"


def plan_tags(config_text: str, tmp_path: Path, client: RegistryClient) -> tuple[set[str], int]:
    path = tmp_path / "sync.yaml"
    path.write_text(config_text)
    plan = plan_sync(load_config(path), client)
    assert plan.failed == []
    return {i.tag or str(i.source.digest) for i in plan.items}, len(plan.filtered)


@pytest.mark.parametrize(
    ("tags", "chosen"),
    [
        ('{semver: ">=1.1 <2"}', {"1.1", "1.2.0", "1.2.1"}),
        ('{semver: "~1.2"}', {"1.2.0", "1.2.1"}),
        ('{semver: ">=2.1.0-rc1"}', {"2.1.0-rc1", "3.0.0-alpine"}),
        ("{newest: 2}", {"2.0", "1.2.1"}),
        ('{semver: "<2", newest: 2}', {"1.2.0", "1.2.1"}),
        (r"{include: ['1\..*'], exclude: ['1\.0', '.*\.1']}", {"1.2.0"}),
        (r"{include: ['l.*', 'e.*']}", {"latest", "edge"}),
        ('["1.0", "edge"]', {"1.0", "edge"}),
        ('{list: ["1.0", "2.0"], include: [\'2.*\']}', {"2.0"}),
    ],
)
def test_tag_selection_chooses_exactly(
    versioned: str, tags: str, chosen: set[str], tmp_path: Path, client: RegistryClient
) -> None:
    config = f"sources:\n  - repository: {versioned}\n    tags: {tags}\n"
    config += "    destination: {registry: localhost:5999}\n"
    got, filtered = plan_tags(config, tmp_path, client)
    assert got == chosen
    if not tags.startswith("[") and "list" not in tags:
        assert filtered == len(VERSIONS) - len(chosen)


def test_digest_pins_copy_that_digest_under_the_tag(
    versioned: str,
    mirror: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    tmp_path: Path,
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    cli: Cli,
) -> None:
    # the source's "stable" tag names the docker image; the pin says: this digest instead
    repo = versioned.split("/", 1)[1]
    fill(registry_open, repo, {"stable": "docker"}, seeded)
    single, dst = test_images["single"].digest, unique_repo("mirror")
    config = tmp_path / "pins.yaml"
    config.write_text(
        "sources:\n"
        f"  - repository: {versioned}\n"
        f"    tags: {{list: ['{test_images['docker'].digest}'], pins: {{stable: '{single}'}}}}\n"
        f"    destination: {{registry: {mirror.host}, repository: {dst}}}\n"
    )
    summary = run_json(cli, config, "--insecure")
    assert summary["copied"] == 2
    with RawClient(mirror) as raw:
        assert raw.manifest_digest(dst, "stable") == single
        # the listed digest is stored by digest, with no tag
        assert raw.manifest_digest(dst, test_images["docker"].digest)
        assert raw.tags(dst) == ["stable"]


def test_one_off_filters_and_dry_run(versioned: str, mirror: RegistryProcess, cli: Cli) -> None:
    summary = run_json(
        cli, versioned, f"{mirror.host}/never", "--tags", r"1\..*", "--exclude", "1.0", "--dry-run"
    )
    planned = [i["source"].rsplit(":", 1)[1] for i in summary["images"]]
    assert planned == ["1.1", "1.2.0", "1.2.1"]  # in plan order, whatever finished first
    assert summary["planned"] == 3 and summary["copied"] == 0
    assert summary["filtered"] == len(VERSIONS) - 3
    with RawClient(mirror) as raw:
        assert raw.request("GET", "/v2/never/tags/list").status_code == 404


def test_shards_are_disjoint_and_cover_the_plan(
    versioned: str, tmp_path: Path, client: RegistryClient
) -> None:
    path = tmp_path / "sync.yaml"
    path.write_text(
        f"sources:\n  - repository: {versioned}\n    destination: {{registry: localhost:5999}}\n"
    )
    config = load_config(path)
    whole = {i.key for i in plan_sync(config, client).items}
    assert len(whole) == len(VERSIONS)
    shards = []
    for index in range(3):
        plan = plan_sync(config, client, shard=Shard(index, 3))
        assert plan.other_shards == len(VERSIONS) - len(plan.items)
        shards.append({i.key for i in plan.items})
        # the same shard is the same share every time
        assert {i.key for i in plan_sync(config, client, shard=Shard(index, 3)).items} == shards[-1]
    assert set().union(*shards) == whole
    assert sum(len(s) for s in shards) == len(whole)
    assert sum(1 for s in shards if s) >= 2  # the hash spreads them


def test_shard_option_is_checked(cli: Cli, versioned: str) -> None:
    for bad in ("3/3", "1", "a/b", "0/0"):
        line = cli("sync", versioned, "localhost:5999/x", "--shard", bad).failed()
        assert "shard" in line


# -- signatures ------------------------------------------------------------------------------


def test_digest_tags_follow_their_image(
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    mirror: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    cli: Cli,
) -> None:
    image = test_images["single"].digest.replace(":", "-")
    other = "sha256-" + "0" * 64
    src, dst = unique_repo(), unique_repo("mirror")
    tags = {
        "v1": "single",
        f"{image}.sig": "docker",
        f"{image}.att": "eight",
        f"{other}.sig": "docker",
    }
    fill(registry_open, src, tags, seeded)
    plain = run_json(cli, f"{registry_open.host}/{src}", f"{mirror.host}/{dst}", "--tags", "v1")
    assert plain["copied"] == 1
    with RawClient(mirror) as raw:
        assert raw.tags(dst) == ["v1"]
    signed = run_json(
        cli, f"{registry_open.host}/{src}", f"{mirror.host}/{dst}", "--tags", "v1", "--digest-tags"
    )
    assert signed["copied"] == 2 and signed["unchanged"] == 1
    # the signature tags --tags left out and that were copied are counted once, as copied
    assert signed["filtered"] == 1
    assert signed["filteredOut"] == [f"{registry_open.host}/{src}:{other}.sig"]
    with RawClient(mirror) as raw:
        assert sorted(raw.tags(dst)) == sorted(["v1", f"{image}.sig", f"{image}.att"])
        assert raw.manifest_digest(dst, f"{image}.att") == test_images["eight"].digest


# -- failures ----------------------------------------------------------------------------------


def test_one_failure_does_not_stop_the_others(
    versioned: str,
    mirror: RegistryProcess,
    unique_repo: Callable[..., str],
    cli: Cli,
    tmp_path: Path,
) -> None:
    dst = unique_repo("mirror")
    config = tmp_path / "sync.yaml"
    config.write_text(
        "sources:\n"
        f"  - repository: {versioned}\n"
        "    tags: ['1.0', 'no-such-tag', '2.0']\n"
        f"    destination: {{registry: {mirror.host}, repository: {dst}}}\n"
        f"  - repository: {versioned.split('/')[0]}/no/such/repo\n"
        f"    destination: {{registry: {mirror.host}}}\n"
    )
    res = cli("sync", config, "--insecure", "--format", "json")
    assert res.code == 1 and "Traceback" not in res.err
    assert res.err_lines == [
        "derrick: error: 2 of 4 failed (see the report); running it again retries only those"
    ]
    summary = json.loads(res.out)
    assert summary["copied"] == 2 and summary["failed"] == 2
    failed = [i for i in summary["images"] if i["status"] == "failed"]
    assert len(failed) == 1 and "no-such-tag" in failed[0]["source"]
    assert "not found" in failed[0]["reason"]
    assert "no/such/repo" in summary["sourceErrors"][0]["source"]
    with RawClient(mirror) as raw:
        assert sorted(raw.tags(dst)) == ["1.0", "2.0"]


# -- pulls and rate limits ---------------------------------------------------------------------


class HubLimit:
    """Docker Hub's pull limit in front of a registry: every manifest GET is counted,
    ``ratelimit-*`` headers on every answer say what is left, and at zero manifest GETs
    are answered 429."""

    def __init__(self, limit: int, retry_after: int = 3600) -> None:
        self.limit = limit
        self.used = 0
        self.refused = 0
        self.retry_after = retry_after
        self.proxy: FaultProxy | None = None

    def headers(self) -> dict[str, str]:
        return {
            "ratelimit-limit": f"{self.limit};w=21600",
            "ratelimit-remaining": f"{self.limit - self.used};w=21600",
        }

    def route(self, req: RecordedRequest) -> Reply | None:
        assert self.proxy is not None
        if req.method == "GET" and "/manifests/" in req.route:
            if self.used >= self.limit:
                self.refused += 1
                body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"pull limit"}]}'
                return Reply(429, body, {**self.headers(), "Retry-After": str(self.retry_after)})
            self.used += 1
        self.proxy.extra_headers.update(self.headers())
        return None


@pytest.fixture
def hub(registry_open: RegistryProcess) -> Callable[[int], tuple[FaultProxy, HubLimit]]:
    proxies: list[FaultProxy] = []

    def make(limit: int, retry_after: int = 3600) -> tuple[FaultProxy, HubLimit]:
        hub = HubLimit(limit, retry_after)
        proxy = FaultProxy(registry_open.url, route=hub.route).start()
        hub.proxy = proxy
        proxies.append(proxy)
        return proxy, hub

    yield make  # type: ignore[misc]
    for p in proxies:
        p.stop()


FOUR = {"a": "single", "b": "docker", "c": "eight", "d": "single"}


def test_remaining_count_stops_the_sync_before_it_runs_out(
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    mirror: RegistryProcess,
    unique_repo: Callable[..., str],
    hub: Callable[[int], tuple[FaultProxy, HubLimit]],
    cli: Cli,
) -> None:
    src, dst = unique_repo(), unique_repo("mirror")
    fill(registry_open, src, FOUR, seeded)
    proxy, limit = hub(2)
    res = cli("sync", f"{proxy.host}/{src}", f"{mirror.host}/{dst}", "--insecure")
    assert res.code == 3, res.err
    assert res.err_lines == [
        f"derrick: error: stopped with 2 of 4 images left: {proxy.host} has 0 pulls left; "
        "run again later"
    ]
    assert "2 copied, 0 unchanged, 0 filtered out, 0 failed, 2 left" in res.out
    assert f"{proxy.host}: 0 of 2 pulls left; the window is 6h" in res.out
    assert limit.used == 2 and limit.refused == 0  # stopped before the registry said no
    assert res.out.count("left      ") == 2


def test_pull_budget_stops_cleanly_and_the_next_run_goes_on(
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    mirror: RegistryProcess,
    unique_repo: Callable[..., str],
    hub: Callable[[int], tuple[FaultProxy, HubLimit]],
    cli: Cli,
) -> None:
    src, dst = unique_repo(), unique_repo("mirror")
    fill(registry_open, src, FOUR, seeded)
    proxy, limit = hub(100)
    args = (f"{proxy.host}/{src}", f"{mirror.host}/{dst}", "--insecure", "--max-pulls", "3")
    first = run_json(cli, *args, "--jobs", "1", code=3)
    assert first["copied"] == 3 and first["left"] == 1 and first["pulls"] == 3
    assert first["stopped"] == "the budget of 3 pulls is spent"
    assert first["rateLimits"][proxy.host]["remaining"] == 97
    assert limit.used == 3
    second = run_json(cli, *args)
    assert second["unchanged"] == 3 and second["copied"] == 1 and second["pulls"] == 1
    assert limit.used == 4


def test_an_index_copied_whole_costs_its_gets_in_pairs(
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    mirror: RegistryProcess,
    unique_repo: Callable[..., str],
    hub: Callable[[int], tuple[FaultProxy, HubLimit]],
    cli: Cli,
) -> None:
    src, dst = unique_repo(), unique_repo("mirror")
    fill(registry_open, src, {"m": "multi"}, seeded)
    proxy, limit = hub(100)
    base = (f"{proxy.host}/{src}", f"{mirror.host}/{dst}", "--insecure", "--all-platforms")
    # the index and its two images: three GETs, two pulls; a budget of one does not do
    short = cli("sync", *base, "--max-pulls", "1")
    assert short.code == 3, short.err
    assert short.err_lines == [
        "derrick: error: stopped with 1 of 1 images left: the budget of 1 pull is spent; "
        "run again later"
    ]
    assert "1 pulls" not in short.out and "0 B moved, 1 pull of a budget of 1" in short.out
    assert limit.used == 1  # the index only
    done = run_json(cli, *base, "--max-pulls", "2")
    assert done["copied"] == 1 and done["pulls"] == 2 and limit.used == 4


def test_429_with_a_long_retry_after_stops_and_says_when(
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    mirror: RegistryProcess,
    unique_repo: Callable[..., str],
    hub: Callable[[int], tuple[FaultProxy, HubLimit]],
    cli: Cli,
) -> None:
    src, dst = unique_repo(), unique_repo("mirror")
    fill(registry_open, src, FOUR, seeded)
    proxy, limit = hub(1)
    # the registry says nothing of its count until it refuses (no headers on HEADs)
    proxy.add_fault(Fault(path=r"/v2/.*/manifests/.*", method="HEAD", times=None, headers={}))
    limit.headers = lambda: {}  # type: ignore[method-assign]
    summary = run_json(
        cli, f"{proxy.host}/{src}", f"{mirror.host}/{dst}", "--insecure", "-j", "1", code=3
    )
    assert summary["copied"] == 1 and summary["left"] == 3
    assert "rate limited" in summary["stopped"]
    assert summary["rateLimits"][proxy.host]["retryAfter"] == 3600
    assert limit.refused == 1  # one 429, then no more GETs


# -- interrupted ---------------------------------------------------------------------------


def test_a_killed_sync_resumes_and_redoes_only_what_is_unfinished(
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    mirror: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    env: Isolation,
    cli: Cli,
) -> None:
    src, dst = unique_repo(), unique_repo("mirror")
    fill(registry_open, src, {"t1": "single", "t2": "multi", "t3": "eight", "t4": "docker"}, seeded)
    eight = test_images["eight"]
    stalled_layer = eight.images[0].blob_digests[-1]
    with FaultProxy(registry_open.url) as proxy:
        proxy.add_fault(Fault(digest=stalled_layer, stall_after=1, stall_for=None))
        argv = [sys.executable, "-m", "derrick.cli.main", "sync", "--insecure", "-j", "1"]
        proc = subprocess.Popen(
            [*argv, f"{proxy.host}/{src}", f"{mirror.host}/{dst}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(os.environ),
        )
        try:
            proxy.wait_stalled(1, timeout=60)
            others = [d for d in eight.blob_digests if d != stalled_layer]
            deadline = time.monotonic() + 30
            with RawClient(mirror) as raw:  # the image's other blobs finish meanwhile
                while not all(raw.blob_exists(dst, d) for d in others):
                    assert time.monotonic() < deadline, "the other blobs never arrived"
                    time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert proc.stderr is not None
            stderr = proc.stderr.read().decode()
            proc.stderr.close()
        proxy.release()
        with RawClient(mirror) as raw:
            done = {t for t in ("t1", "t2", "t3", "t4") if _has_tag(raw, dst, t)}
            kept = [d for d in eight.blob_digests if raw.blob_exists(dst, d)]
        assert done == {"t1", "t2"}, stderr  # t3 was half-way
        assert kept and stalled_layer not in kept

        proxy.clear()
        offset = mirror.log_size()
        summary = run_json(cli, f"{proxy.host}/{src}", f"{mirror.host}/{dst}", "--insecure")
    assert summary["unchanged"] == 2 and summary["copied"] == 2
    copied = {i["source"].rsplit(":", 1)[1] for i in summary["images"] if i["status"] == "copied"}
    assert copied == {"t3", "t4"}
    log = mirror.log_since(offset)
    uploaded = set(
        re.findall(
            r'"PUT /v2/[^"]*/blobs/uploads/[^"]*digest=(sha256%3A[0-9a-f]+|sha256:[0-9a-f]+)', log
        )
    )
    uploaded = {d.replace("%3A", ":") for d in uploaded}
    assert stalled_layer in uploaded
    assert not uploaded & set(kept)  # what the killed run stored is not sent again
    with RawClient(mirror) as raw:
        assert raw.manifest_digest(dst, "t3") == eight.digest


def test_an_interrupted_sync_reports_what_it_did_and_what_is_left(
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    mirror: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    env: Isolation,
) -> None:
    """Ctrl-C: the report of the images done and those left is printed (text or JSON),
    then 'interrupted', with the exit status of an interrupt."""
    from support.terminal import interruptible

    src = unique_repo()
    fill(registry_open, src, {"t1": "single", "t2": "multi", "t3": "eight", "t4": "docker"}, seeded)
    stalled_layer = test_images["eight"].images[0].blob_digests[-1]
    for fmt in ("text", "json"):
        dst = unique_repo("mirror")
        with FaultProxy(registry_open.url) as proxy:
            proxy.add_fault(Fault(digest=stalled_layer, stall_after=1, stall_for=None))
            argv = [sys.executable, "-m", "derrick.cli.main", "sync", "--insecure", "-j", "1"]
            host = proxy.host
            proc = subprocess.Popen(
                [*argv, f"{host}/{src}", f"{mirror.host}/{dst}", "--format", fmt],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(os.environ),
                preexec_fn=interruptible,
            )
            try:
                proxy.wait_stalled(1, timeout=60)
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                proxy.release()
        assert proc.returncode == 130, err.decode()
        assert err.decode().endswith("derrick: interrupted\n")
        if fmt == "json":
            report = json.loads(out)
            status = {i["source"].rsplit(":", 1)[1]: i["status"] for i in report["images"]}
            assert status == {"t1": "copied", "t2": "copied", "t3": "left", "t4": "left"}
            assert report["stopped"] == "interrupted" and report["left"] == 2
        else:
            text = out.decode()
            assert "2 copied, 0 unchanged, 0 filtered out, 0 failed, 2 left" in text
            assert f"left      {host}/{src}:t3 -> " in text and f"{host}/{src}:t4 -> " in text
            assert "stopped: interrupted" in text


def _has_tag(raw: RawClient, repo: str, tag: str) -> bool:
    return raw.head_manifest(repo, tag).status_code == 200


# -- configuration errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        ("sources:\n  - repository: a.b/c\n    tags: [1.0\n", ":4:", "not valid YAML"),
        ("sources:\n  - repository: a.b/c\n    tag: [x]\n", ":3: sources[0].tag:", "unknown key"),
        (
            "sources:\n  - repository: a.b/c\n    destination: {registry: x.y}\n"
            "    tags:\n      semver: '>=1.x.2'\n",
            ":5: sources[0].tags.semver:",
            "invalid version range",
        ),
        (
            "defaults:\n  destination: {registry: '${NO_SUCH_VAR_HERE}'}\n"
            "sources:\n  - repository: a.b/c\n",
            ":2: defaults.destination.registry:",
            "NO_SUCH_VAR_HERE is not set",
        ),
        (
            "sources:\n  - repository: a.b/c\n    destination:\n      registry: x.y\n"
            "      password: hunter2\n",
            ":5: sources[0].destination.password:",
            "credentials are not read from this file",
        ),
        ("sources:\n  - repository: a.b/c\n", ":2: sources[0].destination:", "missing"),
        (
            "sources:\n  - repository: a.b/c\n    destination: {registry: x.y}\n"
            "    platforms: [linux/amd64, nonsense]\n",
            ":4: sources[0].platforms:",
            "nonsense",
        ),
        (
            "sources:\n  - repository: a.b/c\n    destination: {registry: x.y}\n"
            "    tags: {include: ['(']}\n",
            ":4: sources[0].tags.include:",
            "invalid regular expression",
        ),
        ("sources: []\n", ":1: sources:", "not empty"),
    ],
)
def test_a_bad_configuration_is_one_line_with_its_line_number(
    text: str, where: str, says: str, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_VAR_HERE", raising=False)
    path = tmp_path / "mirror.yaml"
    path.write_text(text)
    line = cli("sync", path).failed()
    assert line.startswith(f"derrick: error: {path}{where}"), line
    assert says in line
    assert "hunter2" not in line
    if "credentials" in says:  # the remedy, in the CLI's words
        assert line.endswith(
            "log in with 'derrick login REGISTRY', or pass --username and --password-stdin"
        )


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (
            lambda d: _write(d / "f.txt", "some notes, not YAML\n"),
            "{path}:1: not a sync configuration: the file is plain text, where a "
            "configuration is YAML keys ('sources:', 'defaults:')",
        ),
        (
            lambda d: _write(d / "list.yaml", "- a\n- b\n"),
            "{path}:1: not a sync configuration: the file is a list, where a "
            "configuration is YAML keys ('sources:', 'defaults:')",
        ),
        (
            lambda d: d / "missing" / "mirror.yaml",
            "the configuration file {path} does not exist; check the path",
        ),
        (lambda d: d, "{path} is a directory, not a configuration file"),
    ],
)
def test_what_is_not_a_configuration_file_is_said_plainly(
    make: Callable[[Path], Path], says: str, tmp_path: Path, cli: Cli
) -> None:
    path = make(tmp_path)
    line = cli("sync", path).failed()
    assert line.startswith("derrick: error: " + says.format(path=path)), line


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_repository_without_a_destination_says_what_is_missing(cli: Cli) -> None:
    line = cli("sync", "registry.example/team/app").failed()
    assert line == (
        "derrick: error: registry.example/team/app: no such configuration file, and no "
        "destination to copy the repository to; write 'derrick sync registry.example/team/app "
        "DST' with DST a repository or oci:DIR, or give CONFIG.yaml"
    )


# -- defaults -----------------------------------------------------------------------------------


def test_a_mirror_keeps_every_platform_and_never_copies_a_tag_onto_itself(
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    mirror: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    cli: Cli,
) -> None:
    src, dst = unique_repo(), unique_repo("mirror")
    fill(registry_open, src, {"small": "single", "multi": "multi"}, seeded)
    multi = test_images["multi"]
    source = f"{registry_open.host}/{src}"
    # the repository onto itself: unchanged, nothing written, whatever --platform says
    for narrow in ((), ("--platform", "linux/amd64")):
        offset = registry_open.log_size()
        itself = run_json(cli, source, source, "--tags", "multi", *narrow)
        assert itself["unchanged"] == 1 and itself["copied"] == 0 and itself["failed"] == 0
        assert writes(registry_open.log_since(offset), src) == []
        with RawClient(registry_open) as raw:
            assert raw.manifest_digest(src, "multi") == multi.digest
    # into another repository: the index whole, every platform
    copied = run_json(cli, source, f"{mirror.host}/{dst}")
    assert copied["copied"] == 2
    with RawClient(mirror) as raw:
        assert raw.manifest_digest(dst, "multi") == multi.digest
        for digest in multi.manifest_digests:
            assert raw.manifest_digest(dst, digest) == digest
        for digest in multi.blob_digests:
            assert raw.blob_exists(dst, digest)


# -- into an OCI layout -------------------------------------------------------------------------

REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"


def layout_names(layout: Path) -> dict[str, str]:
    """Full name -> digest of every entry of ``layout``; each entry's ref.name is its full
    name too."""
    entries = json.loads((layout / "index.json").read_text())["manifests"]
    names = {e["annotations"][IMAGE_NAME]: e["digest"] for e in entries}
    assert len(names) == len(entries)
    assert sorted(e["annotations"][REF_NAME] for e in entries) == sorted(names)
    return names


def blob_gets(proxy: FaultProxy) -> list[RecordedRequest]:
    return [r for r in proxy.requests if r.method == "GET" and "/blobs/" in r.route]


def test_registry_to_an_oci_layout_shared_by_repositories_incrementally(
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    env: Isolation,
    cli: Cli,
    tmp_path: Path,
) -> None:
    one, two = unique_repo(), unique_repo()
    fill(registry_open, one, {"v1": "single", "multi": "multi"}, seeded)
    fill(registry_open, two, {"v1": "eight"}, seeded)  # the same tag in another repository
    layout, config = tmp_path / "mirror", tmp_path / "mirror.yaml"
    with FaultProxy(registry_open.url) as proxy:
        config.write_text(
            f"defaults:\n  destination: {{oci: {layout}}}\n"
            f"sources:\n  - repository: {proxy.host}/{one}\n  - repository: {proxy.host}/{two}\n"
        )
        expected = {
            f"{proxy.host}/{one}:v1": test_images["single"].digest,
            f"{proxy.host}/{one}:multi": test_images["multi"].digest,  # the index whole
            f"{proxy.host}/{two}:v1": test_images["eight"].digest,
        }
        first = run_json(cli, config, "--insecure")
        assert first["copied"] == 3 and first["failed"] == 0
        assert layout_names(layout) == expected
        assert not [p.name for p in tmp_path.iterdir() if ".derrick-tmp" in p.name]
        index_json = (layout / "index.json").read_bytes()

        # a second run reads index.json and asks the source for digests: HEADs, no GET
        proxy.clear()
        second = run_json(cli, config, "--insecure")
        assert second["unchanged"] == 3 and second["copied"] == 0 and second["bytes"] == 0
        assert manifest_gets(proxy) == [] and blob_gets(proxy) == [] and second["pulls"] == 0
        assert (layout / "index.json").read_bytes() == index_json

        # an image whose blob was damaged is not taken as there: copied again, from the cache
        damaged = test_images["single"].image.layer_digests[0]
        algorithm, hex_ = damaged.split(":")
        blob = layout / "blobs" / algorithm / hex_
        blob.chmod(0o644)
        blob.write_bytes(b"\0" * blob.stat().st_size)
        proxy.clear()
        third = run_json(cli, config, "--insecure")
        again = {
            i["destination"].split(":", 2)[2] for i in third["images"] if i["status"] == "copied"
        }
        holding = {n for n, d in expected.items() if damaged in _blobs_of(test_images, d)}
        assert again == holding and f"{proxy.host}/{one}:v1" in again
        assert blob_gets(proxy) == []
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == hex_

        # the blob cache is shared across runs: a new layout takes every blob from it
        shutil.rmtree(layout)
        proxy.clear()
        fresh = run_json(cli, config, "--insecure")
        assert fresh["copied"] == 3 and blob_gets(proxy) == []
        assert layout_names(layout) == expected

    # skopeo finds every image by its full name (the tags shared by two repositories do not
    # clash), and umoci unpacks one
    for name, digest in expected.items():
        raw = _skopeo(["inspect", "--raw", f"oci:{layout}:{name}"], tmp_path / "skopeo")
        assert f"sha256:{hashlib.sha256(raw).hexdigest()}" == digest
    bundle = tmp_path / "bundle"
    image = f"{layout}:{next(iter(expected))}"  # {one}:v1
    subprocess.run(
        [require("umoci"), "unpack", "--rootless", "--image", image, str(bundle)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert any((bundle / "rootfs").iterdir())


def _blobs_of(images: dict[str, LayoutImage], digest: str) -> list[str]:
    return next(i.blob_digests for i in images.values() if i.digest == digest)


def test_a_layout_destination_that_cannot_be_one_is_refused_up_front(
    cli: Cli, tmp_path: Path
) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    line = cli("sync", "localhost:5999/a/b", f"oci:{tmp_path}/notes").failed()
    assert line == (
        f"derrick: error: oci:{tmp_path}/notes: {tmp_path}/notes is not empty and is not an "
        "OCI image layout; choose a new or empty directory"
    )
    for dest, says in (
        (f"oci:{tmp_path}/new:v1", "a sync into an OCI layout names each image itself"),
        (f"oci-archive:{tmp_path}/x.tar", "not an archive"),
        ("localhost:5999/x:v1", "a sync destination is a repository, without a tag"),
    ):
        assert says in cli("sync", "localhost:5999/a/b", dest).failed()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("new", "x.tar", "."))]


def test_blobs_two_copies_need_at_once_are_stored_once(
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    mirror: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    cli: Cli,
) -> None:
    src, dst_a, dst_b = unique_repo(), unique_repo("mirror"), unique_repo("mirror")
    fill(registry_open, src, {"a": "eight", "b": "eight"}, seeded)
    eight = test_images["eight"]
    config = Path(os.environ["HOME"]) / "two.yaml"
    with FaultProxy(registry_open.url) as proxy:
        # every layer download is slow, so the two copies want each blob at the same time
        proxy.add_fault(Fault(times=None, delay=0.3))
        config.write_text(
            "sources:\n"
            f"  - {{repository: {proxy.host}/{src}, tags: [a],"
            f" destination: {{registry: {mirror.host}, repository: {dst_a}}}}}\n"
            f"  - {{repository: {proxy.host}/{src}, tags: [b],"
            f" destination: {{registry: {mirror.host}, repository: {dst_b}}}}}\n"
        )
        offset = mirror.log_size()
        summary = run_json(cli, config, "--insecure", "--jobs", "2")
    assert summary["copied"] == 2
    log = mirror.log_since(offset)
    uploads = re.findall(
        r'"PUT /v2/[^"]*/blobs/uploads/[^"]*digest=sha256(?:%3A|:)([0-9a-f]+)', log
    )
    assert sorted(uploads) == sorted(d.split(":")[1] for d in eight.blob_digests)
    assert len(re.findall(r'"POST /v2/[^"]*/blobs/uploads/\?[^"]*mount=[^"]*" 201', log)) == len(
        eight.blob_digests
    )
    with RawClient(mirror) as raw:
        assert raw.manifest_digest(dst_a, "a") == raw.manifest_digest(dst_b, "b") == eight.digest


def test_a_configurations_failures_are_said_in_its_own_words(
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    mirror: RegistryProcess,
    unique_repo: Callable[..., str],
    cli: Cli,
    tmp_path: Path,
) -> None:
    """A platform the index lacks is named in the configuration's platforms, not as a
    --platform the file has no use for."""
    src, dst = unique_repo(), unique_repo("mirror")
    fill(registry_open, src, {"m": "multi"}, seeded)
    config = tmp_path / "sync.yaml"
    config.write_text(
        "sources:\n"
        f"  - repository: {registry_open.host}/{src}\n"
        "    platforms: [linux/s390x]\n"
        f"    destination: {{registry: {mirror.host}, repository: {dst}}}\n"
    )
    res = cli("sync", config, "--insecure")
    assert res.code == 1, res.err
    (line,) = [x for x in res.out.splitlines() if x.startswith("failed")]
    assert line.endswith("; choose one of those in the configuration's platforms"), line
    assert "--platform" not in res.out
    one_off = cli(
        "sync",
        f"{registry_open.host}/{src}",
        f"{mirror.host}/{dst}",
        "--insecure",
        "--platform",
        "linux/s390x",
    )
    assert one_off.code == 1 and "choose one of those with --platform" in one_off.out


def test_an_index_put_while_another_writer_rewrites_its_child_is_put_again(
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    mirror: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    cli: Cli,
) -> None:
    """Two syncs into one registry at once put the same child manifests; the CNCF registry
    rewrites a manifest's blob in place, and an index put meanwhile is refused as listing
    a manifest it does not have (the answer below is the registry's own).  The child was
    stored before the index was put, so the put is tried again, and the sync succeeds."""
    src_repo, dst_repo = unique_repo(), unique_repo("mirror")
    fill(registry_open, src_repo, {"multi": "multi", "list": "dockerlist"}, seeded)
    child = test_images["multi"].image_for("linux/arm64/v8").digest
    refusal = json.dumps(
        {
            "errors": [
                {
                    "code": "DIGEST_INVALID",
                    "message": "provided digest did not match uploaded content",
                },
                {
                    "code": "MANIFEST_BLOB_UNKNOWN",
                    "message": "blob unknown to registry",
                    "detail": child,
                },
            ]
        }
    ).encode()
    with FaultProxy(mirror.url) as proxy:
        fault = proxy.add_fault(
            Fault(
                method="PUT",
                path=rf"/v2/{re.escape(dst_repo)}/manifests/multi",
                status=400,
                headers={"Content-Type": "application/json"},
                body=refusal,
            )
        )
        report = run_json(
            cli, f"{registry_open.host}/{src_repo}", f"{proxy.host}/{dst_repo}", "--insecure"
        )
    assert fault.used == 1
    assert report["copied"] == 2 and report["failed"] == 0
    with RawClient(mirror) as raw:
        assert raw.manifest_digest(dst_repo, "multi") == test_images["multi"].digest
        assert raw.manifest_digest(dst_repo, "list") == test_images["dockerlist"].digest


def test_a_destination_two_sources_name_is_copied_from_the_first_and_said(
    seeded: SeededRegistries,
    registry_open: RegistryProcess,
    mirror: RegistryProcess,
    test_images: dict[str, LayoutImage],
    unique_repo: Callable[..., str],
    cli: Cli,
    tmp_path: Path,
) -> None:
    """Two sources mapped onto one destination repository with a tag in common: the first
    source's image is copied there, as before, and now a warning (and the JSON report)
    says which source was left out, instead of nothing."""
    first, second, dst = unique_repo(), unique_repo(), unique_repo("mirror")
    fill(registry_open, first, {"v1": "single"}, seeded)
    fill(registry_open, second, {"v1": "docker", "v2": "docker"}, seeded)
    config = tmp_path / "sync.yaml"
    config.write_text(
        "sources:\n"
        + "".join(
            f"  - repository: {registry_open.host}/{repo}\n"
            f"    destination: {{registry: {mirror.host}, repository: {dst}}}\n"
            for repo in (first, second)
        )
    )
    res = cli("sync", config, "--insecure", "--format", "json")
    assert res.code == 0, res.err
    target = f"{mirror.host}/{dst}:v1"
    taken, left = f"{registry_open.host}/{first}:v1", f"{registry_open.host}/{second}:v1"
    assert res.err_lines == [
        f"derrick: warning: {target} is named by two sources: {taken} is copied there, "
        f"{left} is not; give one of them another destination"
    ]
    report = json.loads(res.out)
    assert report["clashes"] == [{"destination": target, "copied": taken, "leftOut": left}]
    assert report["copied"] == 2 and report["failed"] == 0
    with RawClient(mirror) as raw:
        assert raw.manifest_digest(dst, "v1") == test_images["single"].digest
        assert raw.manifest_digest(dst, "v2") == test_images["docker"].digest
