"""Push the generated test images into the test registries (once per session).

Seeded names (tag ``v1`` everywhere; digests preserved, equal to the layouts' digests):

* ``open``, ``basic`` and ``tls`` registries: ``test/single``, ``test/multi``, ``test/eight``,
  ``test/docker``, ``test/dockerlist``.
* ``token`` registry: the same five images under ``public/`` (anonymous pull allowed) and
  under ``private/`` (credentials needed), e.g. ``public/single`` and ``private/single``.

The images are pushed with derrick's own push (:func:`support.transfers.push`, a copy by
the engine); each tag is then
checked independently, with :class:`~support.rawclient.RawClient`, to name the layout's digest.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from derrick.auth.credentials import Credential
from derrick.reference import Reference
from derrick.registry import RegistryClient

from .images import LayoutImage
from .rawclient import RawClient
from .registry import RegistryProcess
from .transfers import push

SEED_TAG = "v1"
SEEDED_NAMES = ("single", "multi", "eight", "docker", "dockerlist")


@dataclass(frozen=True)
class SeededImage:
    name: str  #: generator name: "single", "multi", "eight", "docker", "dockerlist"
    repo: str  #: repository in the registry, e.g. "test/single" or "private/single"
    tag: str
    layout: LayoutImage
    registry: RegistryProcess

    @property
    def digest(self) -> str:
        return self.layout.digest

    @property
    def reference(self) -> str:
        """``127.0.0.1:PORT/REPO:TAG``."""
        return f"{self.registry.host}/{self.repo}:{self.tag}"

    @property
    def digest_reference(self) -> str:
        """``127.0.0.1:PORT/REPO@sha256:...``."""
        return f"{self.registry.host}/{self.repo}@{self.digest}"


@dataclass
class SeededRegistry:
    registry: RegistryProcess
    images: dict[str, SeededImage] = field(default_factory=dict)  #: keyed by repository

    def __getitem__(self, repo: str) -> SeededImage:
        return self.images[repo]

    @property
    def repos(self) -> list[str]:
        return sorted(self.images)


def derrick_client(registry: RegistryProcess) -> RegistryClient:
    """A derrick client for ``registry``: its credentials and CA only, nothing of the user's."""
    creds = registry.credentials

    def lookup(host: str) -> Credential | None:
        if creds is None or host != registry.host:
            return None
        return Credential(username=creds[0], password=creds[1])

    return RegistryClient(
        credentials=lookup,
        ca_cert=registry.ca_cert,
        certs_dir=None,
        # credentials go over plain http (to the registry and its token realm) only when insecure
        insecure=not registry.tls_enabled,
    )


def push_with_derrick(
    client: RegistryClient, layout: LayoutImage, registry: RegistryProcess, repo: str, tag: str
) -> str:
    """Push ``layout`` to ``registry`` as ``repo:tag`` with derrick; check the digest with
    :class:`RawClient`; return it."""
    ref = Reference.parse(f"{registry.host}/{repo}:{tag}")
    pushed = push(client, layout.path, ref, layout.tag, jobs=2)
    with RawClient(registry) as raw:
        served = raw.manifest_digest(repo, tag)
    if not str(pushed.digest) == served == layout.digest:
        raise RuntimeError(
            f"derrick pushed {ref} as {pushed.digest}; the registry serves {served}; "
            f"the layout's digest is {layout.digest}"
        )
    return served


def seed_registries(
    targets: dict[str, tuple[RegistryProcess, list[str]]],
    layouts: dict[str, LayoutImage],
    *,
    max_workers: int = 8,
) -> dict[str, SeededRegistry]:
    """Push every layout as ``<prefix>/<name>:v1`` into each target, all in parallel.

    ``targets`` maps a label to ``(registry, prefixes)``; the result maps the same labels.
    """
    result: dict[str, SeededRegistry] = {}
    clients = [derrick_client(registry) for registry, _ in targets.values()]
    try:
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            futures = []
            for client, (label, (registry, prefixes)) in zip(clients, targets.items(), strict=True):
                seeded = result[label] = SeededRegistry(registry)
                for prefix in prefixes:
                    for name, layout in layouts.items():
                        repo = f"{prefix}/{name}"
                        futures.append(
                            pool.submit(push_with_derrick, client, layout, registry, repo, SEED_TAG)
                        )
                        seeded.images[repo] = SeededImage(name, repo, SEED_TAG, layout, registry)
            for f in futures:
                f.result()
    finally:
        for client in clients:
            client.close()
    return result


@dataclass(frozen=True)
class SeededRegistries:
    """What the ``seeded_registries`` fixture yields."""

    open: SeededRegistry
    basic: SeededRegistry
    token: SeededRegistry
    tls: SeededRegistry

    def all(self) -> dict[str, SeededRegistry]:
        return {"open": self.open, "basic": self.basic, "token": self.token, "tls": self.tls}
