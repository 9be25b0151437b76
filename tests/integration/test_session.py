"""The registry session: a registry's scheme is found out once, however many threads
need it at once, and URLs are built from it without I/O."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from derrick.digest import Digest
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.transport import Transport
from support.seed import SeededRegistries

THREADS = 8


def _all_at_once(n: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(0..n-1)`` in ``n`` threads released together."""
    gate = threading.Barrier(n)

    def run(i: int) -> object:
        gate.wait()
        return work(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


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
