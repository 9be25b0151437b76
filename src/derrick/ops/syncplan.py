"""The plan of a sync: every (source image, destination name) pair a configuration names.

:func:`plan_sync` lists each source's tags (``namespace`` sources list the registry's
catalog first), applies the tag selection, and keeps the items of one shard when asked.
Listing is all it does against registries (several sources at once): no manifest is read
here.

Shards: an item belongs to shard ``sha256(SOURCE_REPOSITORY + ":" + TAG_OR_DIGEST) mod N``
(the first 8 bytes of the hash, big-endian), so every machine that runs shard I of N with
the same configuration and the same tags at the source takes the same items, the N shards
are disjoint, and together they are the whole plan.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from derrick.digest import Digest
from derrick.errors import DerrickError, UsageError
from derrick.images.model import ImageName, Selection
from derrick.ops.syncconfig import ALL_PLATFORMS, Destination, SourceSpec, SyncConfig
from derrick.reference import Reference
from derrick.registry import RegistryClient

__all__ = ["Shard", "SyncItem", "SyncPlan", "plan_sync"]


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (from 0) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(
                f"invalid shard {self.index}/{self.count}",
                hint="give I/N with 0 <= I < N, e.g. 0/4 (JOB_COMPLETION_INDEX counts from 0)",
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, sep, count = text.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise UsageError(f"invalid shard {text!r}", hint="give I/N, e.g. 0/4")
        return cls(int(index), int(count))

    def owns(self, key: str) -> bool:
        n = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
        return n % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class SyncItem:
    """One image to mirror: ``source`` (a tag or a digest) to ``tag`` of a destination.

    ``tag`` None stores the image by digest only.  ``repository`` is the destination
    repository path (a registry's), or the name the image gets in an OCI layout.
    """

    source: Reference
    destination: Destination
    repository: str
    tag: str | None
    selection: Selection = ALL_PLATFORMS
    digest_tags: bool = False

    @property
    def key(self) -> str:
        """What shards and de-duplication go by: source repository and tag (or digest)."""
        return f"{self.source.name}:{self.source.identifier}"

    @property
    def target(self) -> Reference | None:
        """The destination repository (no tag) in a registry; None for a layout."""
        if self.destination.registry is None:
            return None
        return Reference(self.destination.registry, self.repository)

    @property
    def name(self) -> ImageName:
        """What the copy is called in the destination."""
        if self.destination.registry is not None:
            return ImageName(f"{self.destination.registry}/{self.repository}", self.tag)
        return ImageName(self.repository, self.tag)

    def describe_destination(self) -> str:
        where = self.name.repository or ""
        if self.destination.layout is not None:
            where = f"oci:{self.destination.layout}:{where}"
        return f"{where}:{self.tag}" if self.tag else f"{where}@{self.source.digest}"


@dataclass
class SyncPlan:
    """What a sync will check and copy, and what it left out."""

    items: list[SyncItem] = field(default_factory=list)
    #: source images the tag selection left out (``registry/repository:tag``)
    filtered: list[str] = field(default_factory=list)
    #: sources that could not be listed: (``registry/repository``, the error)
    failed: list[tuple[str, DerrickError]] = field(default_factory=list)
    #: items that belong to other shards
    other_shards: int = 0
    #: the tags each listed source repository has (for signature tags)
    tags: dict[str, list[str]] = field(default_factory=dict)
    #: destinations two different sources name: (the destination, the source copied
    #: there, the one left out), in the configuration's order (the first one wins)
    clashes: list[tuple[str, str, str]] = field(default_factory=list)


#: Sources listed at once (catalogs, then tag lists): registries far away answer slowly.
LIST_JOBS = 8


def plan_sync(
    config: SyncConfig,
    client: RegistryClient,
    *,
    shard: Shard | None = None,
    jobs: int = LIST_JOBS,
) -> SyncPlan:
    """The :class:`SyncPlan` of ``config``: sources listed (``jobs`` at once, the plan in
    the configuration's order), tags chosen, one shard kept."""
    out = SyncPlan()
    found = _listed(config.sources, lambda spec: _repositories(client, spec), jobs)
    repos: list[tuple[SourceSpec, Reference]] = []
    for spec, got in zip(config.sources, found, strict=True):
        if isinstance(got, DerrickError):
            out.failed.append((spec.name, got))
            continue
        repos.extend((spec, Reference(spec.registry, repo)) for repo in got)
    tags = _listed(repos, lambda pair: _tags(client, *pair), jobs)
    seen: dict[tuple[str, str], SyncItem] = {}
    for (spec, ref), listed in zip(repos, tags, strict=True):
        if isinstance(listed, DerrickError):
            out.failed.append((ref.name, listed))
            continue
        if listed is not None:
            out.tags[ref.name] = listed
        for item in _items(spec, ref, listed or [], out):
            dest_key = (str(item.destination), item.describe_destination())
            first = seen.get(dest_key)
            if first is not None:  # named twice: the first one wins
                if first.key != item.key:  # by two sources: said in the report
                    out.clashes.append((item.describe_destination(), first.key, item.key))
                continue
            seen[dest_key] = item
            if shard is not None and not shard.owns(item.key):
                out.other_shards += 1
                continue
            out.items.append(item)
    return out


T = TypeVar("T")
R = TypeVar("R")


def _listed(things: Sequence[T], fn: Callable[[T], R], jobs: int) -> list[R | DerrickError]:
    """``fn`` of each of ``things``, ``jobs`` at once, in order; a derrick error it raises
    in place of its result."""

    def one(thing: T) -> R | DerrickError:
        try:
            return fn(thing)
        except DerrickError as e:
            return e

    results: dict[int, R | DerrickError] = {}
    positions = iter(range(len(things)))
    lock = threading.Lock()

    crashed: list[BaseException] = []

    def work() -> None:
        while not crashed:
            with lock:
                i = next(positions, None)
            if i is None:
                return
            try:
                results[i] = one(things[i])
            except BaseException as e:  # not a source's failure: stop listing
                crashed.append(e)
                return

    threads = [
        threading.Thread(target=work, name=f"derrick-list-{n}", daemon=True)
        for n in range(min(jobs, len(things)) - 1)
    ]
    for t in threads:
        t.start()
    work()  # this thread lists too
    for t in threads:
        t.join()
    if crashed:
        raise crashed[0]
    return [results[i] for i in range(len(things))]


def _tags(client: RegistryClient, spec: SourceSpec, ref: Reference) -> list[str] | None:
    """The source repository's tags, sorted (registries list in no promised order); None
    when the selection does not need them."""
    if spec.tags.needs_listing or spec.digest_tags:
        return sorted(client.list_tags(ref))
    return None


def _repositories(client: RegistryClient, spec: SourceSpec) -> list[str]:
    if spec.repository is not None:
        return [spec.repository]
    ns = (spec.namespace or "").rstrip("/") + "/"
    repos = [r for r in client.catalog(spec.registry) if r.startswith(ns)]
    if not repos:
        raise UsageError(
            f"the catalog of {spec.registry} lists no repository under {ns}",
            hint="check the namespace, and that the credentials may list the catalog",
        )
    return sorted(repos)


def _items(
    spec: SourceSpec, ref: Reference, listed: list[str], out: SyncPlan
) -> Iterable[SyncItem]:
    chosen, filtered = spec.tags.choose(listed)
    out.filtered.extend(f"{ref.name}:{t}" for t in filtered)
    repository = spec.destination.repository_for(spec.registry, ref.repository)
    for name in chosen:
        if ":" in name:  # a digest: stored by digest
            source = ref.with_digest(Digest.parse(name))
            yield SyncItem(source, spec.destination, repository, None, spec.selection, False)
        else:
            source = ref.with_tag(name)
            yield SyncItem(
                source, spec.destination, repository, name, spec.selection, spec.digest_tags
            )
    for tag, digest in spec.tags.pins:
        yield SyncItem(
            ref.with_digest(digest),
            spec.destination,
            repository,
            tag,
            spec.selection,
            spec.digest_tags,
        )
