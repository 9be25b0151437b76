"""The pieces a sync puts around the copy engine.

* :class:`Meter` counts one image's manifest ``GET``\\ s at the source and takes the pulls
  they cost from the sync's :class:`~derrick.ops.syncreport.Budget` before each is made.
* :class:`MeteredRepository`: the source repository of one image copy, resolving the name
  with the descriptor the ``HEAD`` gave (no ``GET``) and counting every manifest ``GET``.
* :class:`MirrorRepository`: a destination repository that shares, across every copy of a
  sync, what the destination registry is known to hold: a blob already stored, uploaded
  or mounted in a repository this run is not asked about again, and one held by another
  repository of the same registry is mounted from there instead of uploaded.
* :class:`Records`: what an index copied with a platform selection became (its source
  digest and the selection give the destination digest), kept in the cache directory so
  the next run's check needs no ``GET`` of the index.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from pathlib import Path

from derrick import mediatypes as mt
from derrick.digest import Digest, Verifier
from derrick.errors import DerrickError, DigestMismatchError, ManifestError
from derrick.images.model import BlobFeed, ImageSource, Selection
from derrick.images.plan import choose, subset_index
from derrick.images.remote import RegistryRepository
from derrick.manifest import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageManifest,
    Platform,
    parse_manifest,
)
from derrick.ops.syncreport import Budget, pulls_for
from derrick.reference import Reference
from derrick.registry import RateLimit, RegistryClient

__all__ = [
    "BlobMap",
    "Meter",
    "MeteredRepository",
    "MirrorRepository",
    "OutOfPulls",
    "Records",
    "expected_digest",
    "selection_key",
]


class OutOfPulls(DerrickError):
    """The pull budget or the registry's remaining count would be overdrawn."""


class Meter:
    """The manifest GETs of one image and the pulls held for them."""

    def __init__(self, budget: Budget, registry: str) -> None:
        self.budget = budget
        self.registry = registry
        self.gets = 0
        self.held = 0  # pulls taken from the budget for this image
        self.landed = 0  # pulls whose GET the registry has answered (and so counted)
        self._lock = threading.Lock()

    def reserve(self, gets: int) -> None:
        """Hold the pulls ``gets`` GETs in all cost, or raise :class:`OutOfPulls`."""
        with self._lock:
            self._hold(gets)

    def count_get(self) -> None:
        """One more GET: take its pull first when the ones held do not cover it."""
        with self._lock:
            self._hold(self.gets + 1)
            self.gets += 1

    def _hold(self, gets: int) -> None:
        """Take from the budget what ``gets`` GETs cost beyond the pulls held (the lock
        held), or raise :class:`OutOfPulls`."""
        need = pulls_for(gets) - self.held
        if need > 0:
            why = self.budget.take(self.registry, need)
            if why is not None:
                raise OutOfPulls(why)
            self.held += need

    def answered(self, rl: RateLimit | None) -> None:
        """A GET was answered: its pull is in the registry's count from now on."""
        with self._lock:
            new = pulls_for(self.gets) - self.landed
            self.landed += new
        self.budget.observe(self.registry, rl, landed=new)

    def settle(self) -> None:
        """The image is done: give back what was held and not spent."""
        with self._lock:
            spent = pulls_for(self.gets)
            self.budget.give_back(self.registry, self.held - spent)
            self.budget.finished(self.registry, spent - self.landed)
            self.held = self.landed = spent


class MeteredRepository(RegistryRepository):
    """The source of one image copy (see the module docstring)."""

    def __init__(
        self, client: RegistryClient, ref: Reference, meter: Meter, head: Descriptor | None
    ) -> None:
        super().__init__(client, ref)
        self.meter = meter
        self._head = head
        self._kept: dict[Digest, bytes] = {}

    @property
    def head(self) -> Descriptor:
        """The descriptor the name resolves to (from a HEAD, or from :meth:`fetch_top`)."""
        if self._head is None:
            self._head = self.fetch_top()
        return self._head

    def fetch_top(self) -> Descriptor:
        """Resolve the name with a GET, keeping the bytes for the copy that follows (when
        the copy is sure to happen, a HEAD first would only be one more request)."""
        self.meter.count_get()
        got = self.client.get_manifest(self.ref)
        self.meter.answered(got.ratelimit)
        with self._lock:
            self._kept[got.digest] = got.raw
        self._head = got.descriptor
        return got.descriptor

    def resolve(self, name: str | None = None) -> Descriptor:
        if name is None or name == str(self.head.digest):
            return self.head
        return super().resolve(name)

    def manifest(self, desc: Descriptor) -> bytes:
        with self._lock:
            raw = self._kept.pop(desc.digest, None)
        if raw is not None:
            return raw
        self.meter.count_get()
        what = f"manifest {desc.digest} of {self.description}"
        if desc.size > MAX_MANIFEST_SIZE:
            raise ManifestError(f"{what} is {desc.size} bytes, more than the limit")
        got = self.client.get_manifest(self.ref.with_digest(desc.digest))
        self.meter.answered(got.ratelimit)
        verifier = Verifier(desc.digest, desc.size, what=what)
        verifier.update(got.raw)
        verifier.verify()
        return got.raw

    def top(self) -> bytes:
        """The top manifest's bytes (one GET, kept for the copy that may follow)."""
        with self._lock:
            raw = self._kept.get(self.head.digest)
        if raw is None:
            raw = self.manifest(self.head)
            with self._lock:
                self._kept[self.head.digest] = raw
        return raw


def expected_digest(raw: bytes, desc: Descriptor, selection: Selection, what: str) -> Digest:
    """The digest a copy of ``desc`` (bytes ``raw``) with ``selection`` stores as its top
    (see :mod:`derrick.images.plan`)."""
    m = parse_manifest(raw, desc.media_type)
    if isinstance(m, ImageManifest) or selection.all:
        return desc.digest
    positions = choose(m, selection.platforms or (Platform.host(),), what)
    if len(selection.platforms) < 2:
        return m.manifests[positions[0]].digest
    if len(positions) == len(m.manifests):
        return desc.digest
    return Digest.of(subset_index(raw, positions))


def needs_index(desc: Descriptor, selection: Selection) -> bool:
    """Whether the digest a copy stores depends on the index's content."""
    return mt.is_index(desc.media_type) and not selection.all


def selection_key(selection: Selection) -> str:
    if selection.all:
        return "all"
    if selection.platforms:
        return ",".join(str(p) for p in selection.platforms)
    return f"host={Platform.host()}"


class Records:
    """Source index digest and selection -> the digest its copy stored (best effort)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root / "sync-records" if root is not None else None

    def _path(self, digest: Digest, selection: Selection) -> Path | None:
        if self.root is None:
            return None
        key = hashlib.sha256(f"{digest}\n{selection_key(selection)}".encode()).hexdigest()
        return self.root / key

    def get(self, digest: Digest, selection: Selection) -> Digest | None:
        path = self._path(digest, selection)
        if path is None:
            return None
        try:
            return Digest.parse(path.read_text().strip())
        except (OSError, DerrickError, UnicodeDecodeError):
            return None

    def put(self, digest: Digest, selection: Selection, stored: Digest) -> None:
        path = self._path(digest, selection)
        if path is None:
            return
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                os.write(fd, f"{stored}\n".encode())
            finally:
                os.close(fd)
            os.replace(tmp, path)


class BlobMap:
    """Which repositories of which registry are known to hold a blob (this run), and
    which blobs a copy is storing right now (others wait for it rather than store it too).
    """

    def __init__(self) -> None:
        self._where: dict[tuple[str, Digest], set[str]] = {}
        self._busy: dict[tuple[str, Digest], threading.Event] = {}
        self._lock = threading.Lock()

    def add(self, ref: Reference, digest: Digest) -> None:
        with self._lock:
            self._where.setdefault((ref.registry, digest), set()).add(ref.repository)

    def has(self, ref: Reference, digest: Digest) -> bool:
        with self._lock:
            return ref.repository in self._where.get((ref.registry, digest), ())

    def elsewhere(self, ref: Reference, digest: Digest) -> str | None:
        with self._lock:
            repos = self._where.get((ref.registry, digest), set()) - {ref.repository}
        return min(repos) if repos else None

    def claim(self, ref: Reference, digest: Digest) -> threading.Event | None:
        """None: the caller now stores the blob (and must :meth:`release` it); else the
        event set when the copy storing it now is done."""
        with self._lock:
            busy = self._busy.get((ref.registry, digest))
            if busy is None:
                self._busy[(ref.registry, digest)] = threading.Event()
            return busy

    def release(self, ref: Reference, digest: Digest) -> None:
        with self._lock:
            busy = self._busy.pop((ref.registry, digest), None)
        if busy is not None:
            busy.set()


class MirrorRepository(RegistryRepository):
    """A destination repository sharing a :class:`BlobMap` (see the module docstring)."""

    def __init__(
        self,
        client: RegistryClient,
        ref: Reference,
        blobs: BlobMap,
        *,
        chunk_size: int | None,
    ) -> None:
        super().__init__(client, ref, chunk_size=chunk_size)
        self.blobs = blobs
        self._claimed: set[Digest] = set()

    def has_blob(self, desc: Descriptor) -> bool:
        while not self.blobs.has(self.ref, desc.digest):
            busy = self.blobs.claim(self.ref, desc.digest)
            if busy is None:
                break
            busy.wait(1.0)
        else:
            return True
        with self._lock:
            self._claimed.add(desc.digest)
        try:
            there = super().has_blob(desc)
        except BaseException:
            self._release(desc.digest)
            raise
        if there:
            self._stored(desc.digest)
        return there

    def mount_blob(self, desc: Descriptor, source: ImageSource) -> bool:
        try:
            mounted = super().mount_blob(desc, source)
            if not mounted:
                other = self.blobs.elsewhere(self.ref, desc.digest)
                mounted = other is not None and self.client.mount_blob(self.ref, desc.digest, other)
        except BaseException:
            self._release(desc.digest)
            raise
        if mounted:
            self._stored(desc.digest)
        return mounted

    def put_blob(self, feed: BlobFeed) -> None:
        try:
            super().put_blob(feed)
        except BaseException:
            self._release(feed.desc.digest)
            raise
        self._stored(feed.desc.digest)

    def abort(self) -> None:
        with self._lock:
            claimed = list(self._claimed)
        for digest in claimed:
            self._release(digest)
        super().abort()

    def _stored(self, digest: Digest) -> None:
        self.blobs.add(self.ref, digest)
        self._release(digest)

    def _release(self, digest: Digest) -> None:
        with self._lock:
            mine = digest in self._claimed
            self._claimed.discard(digest)
        if mine:
            self.blobs.release(self.ref, digest)


def check_head(ref: Reference, desc: Descriptor) -> None:
    """A HEAD by digest must name that digest."""
    if ref.digest is not None and desc.digest != ref.digest:
        raise DigestMismatchError(
            f"manifest {ref}: the registry names it {desc.digest}",
            hint="the registry is serving inconsistent content; nothing was copied",
        )
