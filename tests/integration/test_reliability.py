"""Retries and faults: every fault of :mod:`support.faultproxy` against the real registry.

An image of two incompressible 1 MiB layers is pushed once; each test pulls it through a
:class:`~support.faultproxy.FaultProxy` in front of the registry, to an OCI layout, to a
docker-archive, or fetches one layer with ``blob get -o``, while the proxy disturbs the
download of that layer (the *victim*).  Each case ends in one of two ways:

* success, with output byte-identical to a clean pull (and the proxy's log showing how:
  which statuses were answered, which ``Range`` the resumed request asked for);
* one line ``derrick: error: ...`` naming what failed, and nothing under the final name
  (an archive pull keeps only its documented hidden partial file and resume state).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore
from support.cli import Cli, Isolation, Result
from support.faultproxy import Fault, FaultProxy
from support.images import LayoutImage, make_big_image
from support.rawclient import RawClient
from support.registry import RegistryProcess
from support.transfers import pull

MiB = 1024 * 1024
REPO = "reliability/medium"
TAG = "v1"
KINDS = ("oci", "docker-archive", "blob")
PARTIAL = {".image.tar.derrick-partial", ".image.tar.derrick-partial.json"}
BLOB_PARTIAL = {".blob.derrick-partial"}
CUT = 300 * 1024 + 7  # inside the victim layer
MANIFESTS = rf"/v2/{REPO}/manifests/.*"


@dataclass
class Medium:
    layout: LayoutImage
    proxy: FaultProxy
    clean: dict[str, dict[str, str]]  #: kind -> sha256 of every output file of a clean run

    @property
    def ref(self) -> str:
        return f"{self.proxy.host}/{REPO}:{TAG}"

    @property
    def victim(self) -> str:
        return self.layout.image.layers[1].digest


def tree_sha256(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {
        (f.relative_to(path).as_posix() if f != path else "."): hashlib.sha256(
            f.read_bytes()
        ).hexdigest()
        for f in files
    }


@pytest.fixture(scope="module")
def medium(
    registry_open: RegistryProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Medium]:
    work = tmp_path_factory.mktemp("medium")
    layout = make_big_image(work / "layout", layers=2, layer_size=MiB, tag=TAG)
    with RawClient(registry_open) as raw:
        raw.push_layout(layout, REPO, TAG)
    with FaultProxy(registry_open.url) as proxy:
        # Clean pulls through the same proxy (the reference is part of the output).
        ref = Reference.parse(f"{proxy.host}/{REPO}:{TAG}")
        clean: dict[str, dict[str, str]] = {}
        with RegistryClient(credentials=lambda registry: None, certs_dir=None) as client:
            for fmt, name in [("oci", "image"), ("docker-archive", "image.tar")]:
                dest = work / fmt / name
                dest.parent.mkdir()
                pull(client, ref, dest, format=fmt, cache=BlobStore(work / f"cache-{fmt}"))
                clean[fmt] = tree_sha256(dest)
        victim = layout.image.layers[1].digest
        clean["blob"] = {".": victim.split(":")[1]}
        proxy.clear()
        yield Medium(layout, proxy, clean)


@pytest.fixture
def proxy(medium: Medium) -> Iterator[FaultProxy]:
    medium.proxy.clear()
    yield medium.proxy
    medium.proxy.clear()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def dest_of(kind: str, out: Path) -> Path:
    return out / {"oci": "image", "docker-archive": "image.tar", "blob": "blob"}[kind]


def fetch(cli: Cli, medium: Medium, kind: str, out: Path, *extra: object) -> Result:
    """Pull the image (or get the victim blob) into ``out`` with ``extra`` options."""
    dest = dest_of(kind, out)
    if kind == "blob":
        repo = f"{medium.proxy.host}/{REPO}"
        return cli("blob", "get", repo, medium.victim, "-o", dest, *extra)
    return cli("image", "pull", medium.ref, "-o", dest, "--format", kind, "-q", *extra)


def assert_identical(medium: Medium, kind: str, out: Path) -> None:
    assert tree_sha256(dest_of(kind, out)) == medium.clean[kind]
    assert sorted(p.name for p in out.iterdir()) == [dest_of(kind, out).name]


def assert_nothing_final(kind: str, out: Path) -> None:
    """Nothing under the final name; an archive keeps only its partial file and state, a blob
    only its partial file."""
    names = {p.name for p in out.iterdir()}
    assert dest_of(kind, out).name not in names
    if kind == "docker-archive":
        assert names <= PARTIAL, names
    elif kind == "blob":
        assert names <= BLOB_PARTIAL, names
    else:
        assert names == set(), names


# -- connections cut mid-body ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_cut_connection_resumes_from_verified_bytes(
    cli: Cli, medium: Medium, proxy: FaultProxy, out: Path, kind: str
) -> None:
    proxy.add_fault(Fault(medium.victim, cut_after=CUT))
    fetch(cli, medium, kind, out).ok()
    assert_identical(medium, kind, out)
    gets = proxy.blob_gets(medium.victim)
    assert [(g.range, g.status) for g in gets] == [(None, 200), (f"bytes={CUT}-", 206)]
    assert gets[0].sent == CUT
    assert gets[1].sent == medium.layout.image.layers[1].size - CUT


@pytest.mark.parametrize("kind", KINDS)
def test_cut_connection_without_retries_fails(
    cli: Cli, medium: Medium, proxy: FaultProxy, out: Path, kind: str
) -> None:
    proxy.add_fault(Fault(medium.victim, cut_after=CUT))
    line = fetch(cli, medium, kind, out, "--retries", "0").failed()
    assert medium.victim in line and "broke off" in line
    assert "run the command again" in line
    assert_nothing_final(kind, out)
    assert len(proxy.blob_gets(medium.victim)) == 1


# -- connections reset before an answer -----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_connection_resets_are_retried(
    cli: Cli, medium: Medium, proxy: FaultProxy, out: Path, kind: str
) -> None:
    proxy.add_fault(Fault(medium.victim, reset=True, times=2))
    proxy.add_fault(Fault(path=MANIFESTS, reset=True, times=1))
    fetch(cli, medium, kind, out).ok()
    assert_identical(medium, kind, out)
    assert [g.status for g in proxy.blob_gets(medium.victim)] == [0, 0, 200]  # 0: no answer


@pytest.mark.parametrize("kind", KINDS)
def test_connection_resets_beyond_the_retries_fail(
    cli: Cli, medium: Medium, proxy: FaultProxy, out: Path, kind: str
) -> None:
    proxy.add_fault(Fault(medium.victim, reset=True, times=None))
    line = fetch(cli, medium, kind, out, "--retries", "1").failed()
    assert f"connection to {proxy.host} failed" in line and medium.victim in line
    assert "raise --retries" in line
    assert len(proxy.blob_gets(medium.victim)) == 2
    assert_nothing_final(kind, out)


# -- 5xx, 429 --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_server_errors_twice_then_success(
    cli: Cli, medium: Medium, proxy: FaultProxy, out: Path, kind: str
) -> None:
    body = b'{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}'
    proxy.add_fault(Fault(medium.victim, status=503, body=body, times=2))
    proxy.add_fault(Fault(path=MANIFESTS, status=500, times=2))
    fetch(cli, medium, kind, out).ok()
    assert_identical(medium, kind, out)
    gets = proxy.blob_gets(medium.victim)
    assert [g.status for g in gets] == [503, 503, 200]
    # exponential backoff with jitter: 0.25-0.5 s, then 0.5-1 s (default policy)
    first, second = (b.time - a.time for a, b in itertools.pairwise(gets))
    assert 0.25 <= first < 1.0 and 0.5 <= second < 1.8
    if kind != "blob":
        assert [q.status for q in proxy.requests_to(f"/v2/{REPO}/manifests/{TAG}")] == [
            500,
            500,
            200,
        ]


@pytest.mark.parametrize("kind", KINDS)
def test_server_errors_beyond_the_retries_fail(
    cli: Cli, medium: Medium, proxy: FaultProxy, out: Path, kind: str
) -> None:
    body = b'{"errors":[{"code":"UNAVAILABLE","message":"storage backend on fire"}]}'
    proxy.add_fault(Fault(medium.victim, status=503, body=body, times=None))
    line = fetch(cli, medium, kind, out, "--retries", "1").failed()
    assert medium.victim in line
    assert "HTTP 503" in line and "storage backend on fire" in line
    assert "try again later" in line
    # one request and one retry: retries are not multiplied by the download's own
    assert len(proxy.blob_gets(medium.victim)) == 2
    assert_nothing_final(kind, out)


@pytest.mark.parametrize("kind", KINDS)
def test_missing_blob_is_not_retried(
    cli: Cli, medium: Medium, proxy: FaultProxy, out: Path, kind: str
) -> None:
    body = b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}'
    proxy.add_fault(Fault(medium.victim, status=404, body=body, times=None))
    started = time.monotonic()
    line = fetch(cli, medium, kind, out).failed()
    assert medium.victim in line and "not found" in line
    assert len(proxy.blob_gets(medium.victim)) == 1
    assert time.monotonic() - started < 5
    assert_nothing_final(kind, out)


@pytest.mark.parametrize("kind", KINDS)
def test_retry_after_is_honoured(
    cli: Cli, medium: Medium, proxy: FaultProxy, out: Path, kind: str
) -> None:
    headers = {"Retry-After": "1", "Content-Type": "application/json"}
    body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'
    proxy.add_fault(Fault(medium.victim, status=429, headers=headers, body=body))
    fetch(cli, medium, kind, out).ok()
    assert_identical(medium, kind, out)
    first, second = proxy.blob_gets(medium.victim)
    assert (first.status, second.status) == (429, 200)
    assert 0.95 <= second.time - first.time < 3


RATE_LIMITED = {
    "Retry-After": "3600",
    "Content-Type": "application/json",
    "RateLimit-Limit": "100;w=21600",
    "RateLimit-Remaining": "0;w=21600",
    "Docker-RateLimit-Source": "192.0.2.7",
}


@pytest.mark.parametrize("kind", KINDS)
def test_long_rate_limit_fails_with_the_numbers(
    cli: Cli, medium: Medium, proxy: FaultProxy, out: Path, kind: str
) -> None:
    body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit reached"}]}'
    path = None if kind == "blob" else MANIFESTS
    proxy.add_fault(
        Fault(
            None if path else medium.victim,
            path=path,
            status=429,
            headers=RATE_LIMITED,
            body=body,
            times=None,
        )
    )
    started = time.monotonic()
    line = fetch(cli, medium, kind, out).failed()
    assert time.monotonic() - started < 5  # a wait longer than derrick's limit is not waited
    assert "rate limited" in line
    assert "0 of 100 pulls left per 6h" in line
    assert "try again in 3600 seconds" in line
    assert len([q for q in proxy.requests if q.status == 429]) == 1
    assert_nothing_final(kind, out)


# -- stalls and --timeout --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_stall_beyond_timeout_fails_cleanly(
    cli: Cli, medium: Medium, proxy: FaultProxy, out: Path, kind: str
) -> None:
    proxy.add_fault(Fault(medium.victim, stall_after=CUT, stall_for=10))
    started = time.monotonic()
    line = fetch(cli, medium, kind, out, "--timeout", "1", "--retries", "0").failed()
    assert time.monotonic() - started < 4
    assert medium.victim in line
    assert "timed out" in line and "--timeout" in line
    assert_nothing_final(kind, out)


@pytest.mark.parametrize("kind", KINDS)
def test_stall_beyond_timeout_is_resumed(
    cli: Cli, medium: Medium, proxy: FaultProxy, out: Path, kind: str
) -> None:
    proxy.add_fault(Fault(medium.victim, stall_after=CUT, stall_for=10))
    started = time.monotonic()
    fetch(cli, medium, kind, out, "--timeout", "1").ok()
    assert time.monotonic() - started < 6
    assert_identical(medium, kind, out)
    assert proxy.ranges(medium.victim) == [None, f"bytes={CUT}-"]


def test_stall_shorter_than_timeout_is_waited_out(
    cli: Cli, medium: Medium, proxy: FaultProxy, out: Path
) -> None:
    proxy.add_fault(Fault(medium.victim, stall_after=CUT, stall_for=1.5))
    proxy.add_fault(Fault(path=MANIFESTS, delay=1.5))  # before the answer starts, too
    started = time.monotonic()
    fetch(cli, medium, "docker-archive", out, "--timeout", "3").ok()
    assert time.monotonic() - started >= 3
    assert_identical(medium, "docker-archive", out)
    assert proxy.ranges(medium.victim) == [None]  # one request, never resumed


# -- corrupt content -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_flipped_byte_is_refused(
    cli: Cli, medium: Medium, proxy: FaultProxy, env: Isolation, out: Path, kind: str
) -> None:
    proxy.add_fault(Fault(medium.victim, flip_at=CUT, times=None))
    line = fetch(cli, medium, kind, out).failed()
    assert f"blob {medium.victim} does not match its content" in line
    # the message says exactly what is left: the archive's partial file and its state, the
    # cache's partial downloads of the other blobs (cancelled), or nothing
    here = sorted(p.name for p in out.iterdir())
    partials = sorted(env.cache.rglob("*.partial"))
    if kind == "docker-archive":
        assert here == sorted(PARTIAL)
        assert f"{out / '.image.tar.derrick-partial'} (and its .json resume state)" in line
    if here or partials:
        assert "nothing was kept" not in line and "kept: try again" in line
        assert all(str(p) in line or str(p.parent) in line for p in partials), partials
    else:
        assert line.endswith("; nothing was kept")
    assert len(proxy.blob_gets(medium.victim)) == 1  # corrupt content is no transient failure
    assert_nothing_final(kind, out)
    if kind == "docker-archive":
        state = json.loads((out / ".image.tar.derrick-partial.json").read_text())
        assert state["done"][medium.victim] == 0  # the bad bytes are not resumed
    hexd = medium.victim.split(":")[1]
    assert not list(env.cache.rglob(f"{hexd}*"))  # nor cached

    proxy.clear()  # without the fault the same command succeeds and tidies up
    fetch(cli, medium, kind, out).ok()
    assert_identical(medium, kind, out)


@pytest.mark.parametrize("kind", ["oci", "docker-archive"])
def test_flipped_byte_in_the_config_is_refused(
    cli: Cli, medium: Medium, proxy: FaultProxy, out: Path, kind: str
) -> None:
    config = medium.layout.image.config.digest
    proxy.add_fault(Fault(config, flip_at=10, times=None))
    line = fetch(cli, medium, kind, out).failed()
    assert f"blob {config} does not match its content" in line
    assert_nothing_final(kind, out)
    assert list(out.iterdir()) == []  # nothing started before the config was verified


# -- Link headers ----------------------------------------------------------------------------


def test_link_header_that_loops(cli: Cli, medium: Medium, proxy: FaultProxy) -> None:
    tags = f"/v2/{REPO}/tags/list"
    proxy.add_fault(Fault(path=tags, headers={"Link": f'<{tags}?n=1>; rel="next"'}, times=None))
    line = cli("tag", "ls", f"{proxy.host}/{REPO}").failed()
    assert "pagination loops" in line and REPO in line
    assert [q.path for q in proxy.requests_to(tags)] == [tags, f"{tags}?n=1"]

    proxy.clear()
    catalog = "/v2/_catalog"
    proxy.add_fault(
        Fault(path=catalog, headers={"Link": f'<{catalog}?n=5&last=a>; rel="next"'}, times=None)
    )
    line = cli("repo", "ls", proxy.host).failed()
    assert "pagination loops" in line and proxy.host in line
    assert len(proxy.requests_to(catalog)) == 2
