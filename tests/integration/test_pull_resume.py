"""An interrupted pull, run again, resumes each blob with a ``Range`` request.

A generated image of two incompressible 40 MiB layers is pushed once; every pull goes through
a :class:`~support.faultproxy.FaultProxy`, which records the ``Range`` header of each blob
request and can stall or cut a download mid-blob.  Two ways of interrupting:

* a ``python -m derrick.cli.main image pull`` child process, caught mid-blob (the proxy
  stalls every layer at a known offset) and killed with SIGKILL;
* the proxy cutting the connection after N bytes of a layer, with ``--retries 0``, so the
  first run fails.

Each for an OCI layout (the blob cache's ``.partial`` files carry the resume) and a
docker-archive (the hidden partial archive and its JSON state, and the cache's ``.partial``
files, which receive the same bytes).  The re-run must ask for exactly the bytes that were
missing and produce output byte-identical to a clean pull.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore
from support.cli import Cli, Isolation
from support.faultproxy import Fault, FaultProxy
from support.images import LayoutImage, make_big_image, push_with_skopeo
from support.registry import RegistryProcess
from support.transfers import pull

MiB = 1024 * 1024
LAYER_SIZE = 40 * MiB
REPO = "pull-resume/big"
TAG = "big"


@dataclass
class Big:
    layout: LayoutImage
    proxy: FaultProxy
    clean: dict[str, dict[str, str]]  #: format -> sha256 of every output file, from clean pulls

    @property
    def ref(self) -> str:
        return f"{self.proxy.host}/{REPO}:{TAG}"

    @property
    def layers(self) -> list[str]:
        return self.layout.image.layer_digests


def tree_sha256(path: Path) -> dict[str, str]:
    """sha256 of each file under ``path`` (or of ``path`` itself, a file)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    out = {}
    for f in files:
        h = hashlib.sha256()
        with f.open("rb") as src:
            while chunk := src.read(4 * MiB):
                h.update(chunk)
        out[f.relative_to(path).as_posix() if f != path else "."] = h.hexdigest()
    return out


@pytest.fixture(scope="module")
def big(registry_open: RegistryProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Big]:
    work = tmp_path_factory.mktemp("big")
    layout = make_big_image(work / "layout", layers=2, layer_size=LAYER_SIZE, tag=TAG)
    push_with_skopeo(layout, TAG, registry_open, REPO, home=work / "skopeo")
    with FaultProxy(registry_open.url) as proxy:
        # Clean pulls through the same proxy (the reference is part of the output).
        ref = Reference.parse(f"{proxy.host}/{REPO}:{TAG}")
        clean: dict[str, dict[str, str]] = {}
        with RegistryClient(credentials=lambda registry: None) as client:
            for fmt, name in [("oci", "clean-oci"), ("docker-archive", "clean.tar")]:
                cache = BlobStore(work / f"cache-{fmt}")
                pull(client, ref, work / name, format=fmt, cache=cache)
                clean[fmt] = tree_sha256(work / name)
        proxy.clear()
        yield Big(layout, proxy, clean)


@pytest.fixture
def proxy(big: Big) -> Iterator[FaultProxy]:
    big.proxy.clear()
    yield big.proxy
    big.proxy.clear()


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def start_pull(ref: str, dest: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "derrick.cli.main", "image", "pull", ref, "-o", str(dest), "-q"],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else b""


def cache_partial(env: Isolation, digest: str) -> Path:
    return env.cache / "blobs" / "sha256" / f"{digest.split(':')[1]}.partial"


def cache_blob(env: Isolation, digest: str) -> Path:
    return env.cache / "blobs" / "sha256" / digest.split(":")[1]


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def read_state(out: Path) -> dict[str, int]:
    state = json.loads(out.with_name(f".{out.name}.derrick-partial.json").read_text())
    return {str(k): int(v) for k, v in state["done"].items()}


def expected_requests(proxy: FaultProxy, digest: str, have: int, size: int) -> None:
    """The re-run asked for blob ``digest`` from ``have`` on (and not at all if complete)."""
    gets = proxy.blob_gets(digest)
    if have >= size:
        assert gets == []
    elif have == 0:
        assert [g.range for g in gets] == [None]
    else:
        assert [g.range for g in gets] == [f"bytes={have}-"]
        assert gets[0].status == 206
        assert gets[0].sent == size - have


# -- killed mid-blob -------------------------------------------------------------------------


def test_killed_pull_to_oci_layout_resumes(
    big: Big, proxy: FaultProxy, cli: Cli, env: Isolation, tmp_path: Path
) -> None:
    stall = 12 * MiB + 4321
    for digest in big.layers:
        proxy.add_fault(Fault(digest, stall_after=stall))
    dest = tmp_path / "layout"
    proc = start_pull(big.ref, dest)
    try:
        proxy.wait_stalled(len(big.layers))
        wait_for(
            "the partial blobs to be written",
            lambda: all(size_of(cache_partial(env, d)) == stall for d in big.layers),
        )
    finally:
        kill(proc)
        proxy.clear()
    assert not dest.exists()
    assert hidden(tmp_path) == []  # nothing beside the destination: it is all in the cache

    r = cli("image", "pull", big.ref, "-o", dest, "--json").ok()
    for x in big.layout.image.layers:
        expected_requests(proxy, x.digest, stall, x.size)
        assert not cache_partial(env, x.digest).exists()
    sizes = [x.size for x in big.layout.image.layers]
    assert json.loads(r.out)["downloadedBytes"] == sum(s - stall for s in sizes)
    assert tree_sha256(dest) == big.clean["oci"]


def test_killed_pull_to_docker_archive_resumes(
    big: Big, proxy: FaultProxy, cli: Cli, env: Isolation, tmp_path: Path
) -> None:
    stall = 36 * MiB + 999
    for digest in big.layers:
        proxy.add_fault(Fault(digest, stall_after=stall))
    out = tmp_path / "big.tar"
    proc = start_pull(big.ref, out)
    try:
        proxy.wait_stalled(len(big.layers))
        # The state is saved every 32 MiB: wait for the save after 64 MiB in place.
        wait_for(
            "the resume state to be saved",
            lambda: (
                out.with_name(".big.tar.derrick-partial.json").exists()
                and sum(read_state(out).values()) >= 64 * MiB
            ),
        )
        wait_for(
            "the cache's partial blobs to be written",
            lambda: all(size_of(cache_partial(env, d)) == stall for d in big.layers),
        )
    finally:
        kill(proc)
        proxy.clear()
    assert not out.exists()
    assert hidden(tmp_path) == [".big.tar.derrick-partial", ".big.tar.derrick-partial.json"]
    done = read_state(out)
    assert all(0 < done[d] <= stall for d in big.layers), done

    # The state lags (it is saved every 32 MiB); the cache's partial files hold all the
    # bytes that arrived, and the re-run resumes from there.
    cli("image", "pull", big.ref, "-o", out).ok()
    for x in big.layout.image.layers:
        expected_requests(proxy, x.digest, stall, x.size)
    assert hidden(tmp_path) == []
    assert tree_sha256(out) == big.clean["docker-archive"]


# -- connection cut, no retries --------------------------------------------------------------


def test_cut_download_to_oci_layout_resumes(
    big: Big, proxy: FaultProxy, cli: Cli, env: Isolation, tmp_path: Path
) -> None:
    cut = 5 * MiB + 17
    first, second = big.layout.image.layers
    proxy.add_fault(Fault(first.digest, cut_after=cut))
    dest = tmp_path / "layout"
    line = cli("image", "pull", big.ref, "-o", dest, "--retries", "0").failed()
    assert first.digest in line
    assert not dest.exists()
    assert hidden(tmp_path) == []
    assert size_of(cache_partial(env, first.digest)) == cut
    have_second = max(size_of(cache_partial(env, second.digest)), 0)
    if cache_blob(env, second.digest).exists():
        have_second = second.size
    proxy.clear()

    cli("image", "pull", big.ref, "-o", dest, "--retries", "0").ok()
    expected_requests(proxy, first.digest, cut, first.size)
    expected_requests(proxy, second.digest, have_second, second.size)
    assert tree_sha256(dest) == big.clean["oci"]
    assert not list((env.cache / "blobs" / "sha256").glob("*.partial"))


def test_cut_download_to_docker_archive_resumes(
    big: Big, proxy: FaultProxy, cli: Cli, tmp_path: Path
) -> None:
    cut = 7 * MiB + 5
    first, second = big.layout.image.layers
    proxy.add_fault(Fault(second.digest, cut_after=cut))
    out = tmp_path / "big.tar"
    line = cli("image", "pull", big.ref, "-o", out, "--retries", "0").failed()
    assert second.digest in line
    assert not out.exists()
    assert hidden(tmp_path) == [".big.tar.derrick-partial", ".big.tar.derrick-partial.json"]
    done = read_state(out)
    assert done[second.digest] == cut
    proxy.clear()

    cli("image", "pull", big.ref, "-o", out, "--retries", "0").ok()
    expected_requests(proxy, second.digest, cut, second.size)
    expected_requests(proxy, first.digest, done[first.digest], first.size)
    assert hidden(tmp_path) == []
    assert tree_sha256(out) == big.clean["docker-archive"]


def test_corrupt_partial_archive_is_downloaded_again(
    big: Big, proxy: FaultProxy, cli: Cli, tmp_path: Path
) -> None:
    """Bytes kept from an earlier run that turn out wrong cost a second download, not a failure."""
    cut = 3 * MiB
    first = big.layout.image.layers[0]
    proxy.add_fault(Fault(first.digest, cut_after=cut))
    out = tmp_path / "big.tar"
    cli("image", "pull", big.ref, "-o", out, "--retries", "0").failed()
    part = out.with_name(".big.tar.derrick-partial")
    state = json.loads(out.with_name(".big.tar.derrick-partial.json").read_text())
    offset = state["holes"][first.digest] + MiB
    with part.open("r+b") as f:  # damage the bytes the state says are in place
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    proxy.clear()

    cli("image", "pull", big.ref, "-o", out, "--retries", "0").ok()
    assert [g.range for g in proxy.blob_gets(first.digest)] == [f"bytes={cut}-", None]
    assert tree_sha256(out) == big.clean["docker-archive"]
