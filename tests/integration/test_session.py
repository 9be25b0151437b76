"""The registry session under concurrency: a registry's scheme is found out once, and a
token is asked for once per registry and scope set, however many threads start at once."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from derrick.auth.credentials import Credential, CredentialStore
from derrick.digest import Digest
from derrick.reference import Reference
from derrick.registry import RegistryClient, push_scope
from derrick.transport import Transport
from support.cli import Cli
from support.seed import SeededRegistries
from support.tokenserver import TokenServer
from support.transfers import push

THREADS = 8


def _all_at_once(n: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(0..n-1)`` in ``n`` threads released together."""
    gate = threading.Barrier(n)

    def run(i: int) -> object:
        gate.wait()
        return work(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def _token_client(seeded: SeededRegistries) -> RegistryClient:
    host = seeded.token.registry.host
    store = CredentialStore(overrides={host: Credential("alice", "alice-secret")})
    return RegistryClient(credentials=store, insecure=True)


def _scope_sets(token_log: TokenServer) -> Counter[tuple[str, ...]]:
    return Counter(tuple(sorted(e.scopes)) for e in token_log.log)


def test_threads_starting_at_once_share_one_token(
    seeded: SeededRegistries, token_log: TokenServer, unique_repo: Callable[..., str]
) -> None:
    """HEADs and uploads started together on a token registry: one token request."""
    repo = unique_repo("private/scratch")
    ref = Reference.parse(f"{seeded.token.registry.host}/{repo}:v1")
    blobs = [os.urandom(1000 + i) for i in range(THREADS)]
    scopes = [push_scope(repo)]

    with _token_client(seeded) as client:

        def work(i: int) -> object:
            digest = Digest.of(blobs[i])
            if i % 2:
                return client.head_blob(ref, digest, scopes=scopes)
            client.upload_blob(ref, digest, len(blobs[i]), lambda o: [blobs[i][o:]], scopes=scopes)
            return client.head_blob(ref, digest, scopes=scopes)

        sizes = _all_at_once(THREADS, work)
        assert client.auth.token_requests == [(ref.registry, (f"repository:{repo}:pull,push",))]
    assert sizes == [None if i % 2 else len(blobs[i]) for i in range(THREADS)]
    assert _scope_sets(token_log) == {(f"repository:{repo}:pull,push",): 1}


def test_push_asks_for_each_token_once(
    seeded: SeededRegistries, token_log: TokenServer, unique_repo: Callable[..., str]
) -> None:
    """A push's workers start together (no request made first to warm up the token)."""
    image = seeded.token["private/eight"].layout
    repo = unique_repo("private/scratch")
    ref = Reference.parse(f"{seeded.token.registry.host}/{repo}:v1")
    with _token_client(seeded) as client:
        result = push(client, image.path, ref, image.tag, jobs=THREADS)
    assert str(result.digest) == image.digest
    counts = _scope_sets(token_log)
    assert counts and set(counts.values()) == {1}, counts


@pytest.mark.parametrize("to", ["registry", "layout"])
def test_image_copy_asks_for_each_token_once(
    cli: Cli,
    seeded: SeededRegistries,
    token_log: TokenServer,
    unique_repo: Callable[..., str],
    tmp_path: Path,
    to: str,
) -> None:
    """``image copy`` with 8 blob workers, to another repository (mounts) or to disk: every
    scope set is asked for once (the workers start without a request to warm up a token)."""
    src = seeded.token["private/eight"]
    host = src.registry.host
    dest = f"{host}/{unique_repo('private/scratch')}:v1" if to == "registry" else tmp_path / "l"
    login = ["--insecure", "--username", "alice", "--password-stdin"]
    cli(
        "image", "copy", "-q", "-j", str(THREADS), *login, src.reference, dest, stdin="alice-secret"
    )
    counts = _scope_sets(token_log)
    assert counts and set(counts.values()) == {1}, counts


class _CountingTransport(Transport):
    def __init__(self) -> None:
        super().__init__(insecure=True)
        self.probes: list[str] = []
        self._count_lock = threading.Lock()

    def probe_scheme(self, host: str) -> str:
        with self._count_lock:
            self.probes.append(host)
        return super().probe_scheme(host)


def test_a_registry_is_probed_once(seeded: SeededRegistries) -> None:
    """The scheme of a plain-http loopback registry costs one probe, shared by the threads
    that need it at once; building URLs after that costs nothing."""
    img = seeded.open["test/single"]
    port = img.registry.host.rsplit(":", 1)[1]
    refs = [
        Reference.parse(img.reference),
        Reference.parse(f"localhost:{port}/{img.repo}:{img.tag}"),  # another name, probed apart
    ]
    transport = _CountingTransport()
    with RegistryClient(transport=transport) as client:
        tags = _all_at_once(THREADS, lambda i: client.list_tags(refs[i % 2]))
        assert tags == [["v1"]] * THREADS
        assert sorted(transport.probes) == sorted(r.registry for r in refs)
        assert (
            client.session.endpoint(refs[0].registry).url("/v2/")
            == f"http://{refs[0].registry}/v2/"
        )
        assert client.head_manifest(refs[1]).descriptor.digest == Digest.parse(img.digest)
    assert len(transport.probes) == 2


def test_push_scope_token_is_not_reused_for_another_repository(
    seeded: SeededRegistries, token_log: TokenServer, unique_repo: Callable[..., str]
) -> None:
    """Single flight is per scope set: two repositories at once, two tokens."""
    host = seeded.token.registry.host
    repos = [unique_repo("private/scratch"), unique_repo("private/scratch")]
    data = b"one blob, two repositories"
    digest = Digest.of(data)
    with _token_client(seeded) as client:

        def work(i: int) -> object:
            ref = Reference.parse(f"{host}/{repos[i % 2]}:v1")
            client.upload_blob(ref, digest, len(data), lambda o: [data[o:]])
            return client.head_blob(ref, digest, scopes=[push_scope(ref.repository)])

        assert _all_at_once(4, work) == [len(data)] * 4
    assert _scope_sets(token_log) == {(f"repository:{r}:pull,push",): 1 for r in repos}
