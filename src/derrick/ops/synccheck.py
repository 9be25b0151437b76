"""The check of one sync item: what the destination holds, what a copy would store.

:meth:`Checker.check` asks the destination for the tag (a registry: ``HEAD``, and a tag
missing from the destination repository's tag list, read once per sync, needs none; an
OCI layout: its ``index.json`` as the sync found it, and the image whole on disk, see
:mod:`derrick.ops.synclayout`), and the source for its digest (``HEAD``, ``ratelimit-*``
headers read).  When the destination lacks the tag and the source is known to announce no
rate limit, the source is resolved by the copy's own ``GET`` instead, one request less.
What a copy stores is the source digest, except for an index copied with a platform
selection: then a record of an earlier run or the index itself (one ``GET``) says (see
:mod:`derrick.ops.syncparts`).  A tag that would be copied onto itself (the same
repository of the same registry) is unchanged whatever the platforms asked for: a copy
could only take platforms away.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from derrick import mediatypes as mt
from derrick.digest import Digest
from derrick.errors import DerrickError, NotFoundError, UsageError
from derrick.images.plan import choose
from derrick.manifest import Descriptor, Index, parse_manifest
from derrick.ops.syncparts import (
    Meter,
    MeteredRepository,
    Records,
    check_head,
    expected_digest,
    needs_index,
)
from derrick.ops.syncplan import SyncItem
from derrick.ops.syncreport import Budget
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.singleflight import SingleFlight

if TYPE_CHECKING:
    from derrick.ops.synclayout import LayoutDestination

__all__ = ["Checker", "Found"]

#: A destination whose tags could not be listed: every tag may be there.
_ANY: set[str] = set()


def _target(item: SyncItem) -> Reference:
    target = item.target
    if target is None:
        raise UsageError(f"{item.describe_destination()}: not a registry destination")
    return target


def _onto_itself(item: SyncItem) -> bool:
    """Whether ``item`` would copy a tag onto itself (same registry, repository, tag)."""
    target = item.target
    return (
        target is not None
        and item.tag is not None
        and item.source.tag == item.tag
        and (target.registry, target.repository) == (item.source.registry, item.source.repository)
    )


@dataclass
class Found:
    """What the check of one item found."""

    head: Descriptor
    source: MeteredRepository
    expected: Descriptor | None = None  # what a copy stores, when known
    there: Descriptor | None = None  # what the destination name holds
    copied: list[str] = field(default_factory=list)  # manifests a copy stored


class Checker:
    """Checks items against their source and destination (see the module docstring)."""

    def __init__(
        self,
        client: RegistryClient,
        budget: Budget,
        records: Records,
        *,
        dry_run: bool,
        stopped: Callable[[], str | None],
        layouts: Mapping[Path, LayoutDestination] | None = None,
    ) -> None:
        self.client = client
        self.budget = budget
        self.records = records
        self.dry_run = dry_run
        self.stopped = stopped
        self.layouts = dict(layouts or {})
        self._tags: dict[str, set[str]] = {}
        self._listing: SingleFlight[str, set[str]] = SingleFlight()

    def check(self, item: SyncItem, meter: Meter) -> Found:
        source = MeteredRepository(self.client, item.source, meter, None)
        if _onto_itself(item):
            # The destination is the source: a copy could only take platforms away.
            head = self._head_source(item)
            source = MeteredRepository(self.client, item.source, meter, head)
            return Found(head, source, expected=head, there=head)
        there = self._named(item) if item.tag is not None else None
        if item.tag is not None and there is None and self._get_first(item):
            # nothing there: the copy follows, and its GET resolves the tag
            return Found(source.fetch_top(), source)
        head = self._head_source(item)
        source = MeteredRepository(self.client, item.source, meter, head)
        found = Found(head, source, there=there)
        if item.tag is not None and there is None:
            return found  # a dry run or a stopped sync: what it would copy is enough
        found.expected = self._expected(item, found)
        if item.tag is None:
            found.there = self._by_digest(item, found.expected.digest)
        return found

    def _head_source(self, item: SyncItem) -> Descriptor:
        head = self.client.head_manifest(item.source)
        self.budget.observe(item.source.registry, head.ratelimit)
        check_head(item.source, head.descriptor)
        return head.descriptor

    def _get_first(self, item: SyncItem) -> bool:
        """Whether to skip the source HEAD of an item the destination lacks: not while
        the source's remaining count is to be read before a pull is spent."""
        return (
            not self.dry_run
            and self.stopped() is None
            and self.budget.unlimited(item.source.registry)
        )

    def _named(self, item: SyncItem) -> Descriptor | None:
        """What the destination's name of ``item`` (a tag) points at, if anything."""
        assert item.tag is not None
        layout = self._layout(item)
        if layout is not None:
            return layout.named(str(item.name))
        target = _target(item)
        if not self._may_have(target, item.tag):
            return None
        return self._head(target.with_tag(item.tag))

    def _by_digest(self, item: SyncItem, digest: Digest) -> Descriptor | None:
        """The image ``digest`` at the destination, if it is there."""
        layout = self._layout(item)
        if layout is not None:
            return layout.named(f"{item.repository}@{digest}")
        return self._head(_target(item).with_digest(digest))

    def _layout(self, item: SyncItem) -> LayoutDestination | None:
        path = item.destination.layout
        if path is None:
            return None
        layout = self.layouts.get(path)
        if layout is None:
            raise UsageError(f"{item.describe_destination()}: the layout was not opened")
        return layout

    def _may_have(self, target: Reference, tag: str) -> bool:
        """Whether the destination repository may have ``tag`` (its tag list, read once per
        sync, saves a HEAD for each tag it lacks)."""
        tags = self._tags.get(target.name)
        if tags is None:
            tags = self._listing.do(target.name, lambda: self._list(target))
        return tags is _ANY or tag in tags

    def _list(self, target: Reference) -> set[str]:
        tags = self._tags.get(target.name)
        if tags is not None:
            return tags
        try:
            tags = set(self.client.list_tags(target))
        except NotFoundError:
            tags = set()
        except DerrickError:
            tags = _ANY
        self._tags[target.name] = tags
        return tags

    def _head(self, ref: Reference) -> Descriptor | None:
        try:
            return self.client.head_manifest(ref).descriptor
        except NotFoundError:
            return None

    def _expected(self, item: SyncItem, found: Found) -> Descriptor:
        head = found.head
        if not needs_index(head, item.selection):
            return head
        recorded = self.records.get(head.digest, item.selection)
        if recorded is None:
            raw = found.source.top()
            recorded = expected_digest(raw, head, item.selection, f"index {item.source}")
            self.records.put(head.digest, item.selection, recorded)
        return Descriptor(head.media_type, recorded, 0)

    def gets(self, item: SyncItem, found: Found) -> int:
        """The manifest GETs a copy makes (an index's children counted from it)."""
        head, selection = found.head, item.selection
        if not mt.is_index(head.media_type):
            return 1
        if not selection.all and len(selection.platforms) < 2:
            return 2
        index = parse_manifest(found.source.top(), head.media_type)
        if not isinstance(index, Index):
            return 1
        if selection.all:
            return 1 + len(index.manifests)
        return 1 + len(choose(index, selection.platforms, f"index {item.source}"))
