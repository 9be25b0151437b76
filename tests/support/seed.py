"""Push the generated test images into the test registries (once per session).

Seeded names (tag ``v1`` everywhere; digests preserved, equal to the layouts' digests):

* ``open``, ``basic`` and ``tls`` registries: ``test/single``, ``test/multi``, ``test/eight``,
  ``test/docker``, ``test/dockerlist``.
* ``token`` registry: the same five images under ``public/`` (anonymous pull allowed) and
  under ``private/`` (credentials needed), e.g. ``public/single`` and ``private/single``.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .images import LayoutImage, push_with_skopeo
from .registry import RegistryProcess

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


def seed_registries(
    targets: dict[str, tuple[RegistryProcess, list[str]]],
    layouts: dict[str, LayoutImage],
    work: Path,
    *,
    max_workers: int = 8,
) -> dict[str, SeededRegistry]:
    """Push every layout as ``<prefix>/<name>:v1`` into each target, all in parallel.

    ``targets`` maps a label to ``(registry, prefixes)``; the result maps the same labels.
    """
    result: dict[str, SeededRegistry] = {}
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = []
        for label, (registry, prefixes) in targets.items():
            seeded = result[label] = SeededRegistry(registry)
            for prefix in prefixes:
                for name, layout in layouts.items():
                    repo = f"{prefix}/{name}"
                    home = Path(tempfile.mkdtemp(prefix="skopeo-", dir=work))
                    futures.append(
                        pool.submit(
                            push_with_skopeo,
                            layout,
                            layout.tag,
                            registry,
                            repo,
                            creds=registry.credentials,
                            dest_tag=SEED_TAG,
                            home=home,
                        )
                    )
                    seeded.images[repo] = SeededImage(name, repo, SEED_TAG, layout, registry)
        for f in futures:
            f.result()
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
