"""A repository of a registry as an :class:`ImageSource` and an :class:`ImageSink`.

Built on the public methods of :class:`~derrick.registry.RegistryClient`.

As a source, :class:`RegistryRepository` resolves tags and digests with one manifest
``GET`` whose bytes it keeps for the :meth:`~RegistryRepository.manifest` call that
follows (registries such as Docker Hub count manifest ``GET``\\ s), and serves blobs
with ``Range`` when asked for an offset.

As a sink it asks ``HEAD`` whether it has a blob, mounts blobs from another repository
of the same registry (one token grants push here and pull there), uploads the rest from
their :class:`~derrick.images.model.BlobFeed` (in one request, or in chunks resumed
from the offset the registry reports after a broken connection), puts manifests by
digest, and each top under its tags.  Nothing needs committing: a manifest is visible
under a tag only once everything it lists is stored.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

from derrick.closing import Closing
from derrick.digest import Digest, Verifier
from derrick.errors import ManifestError, NotFoundError, RegistryError, UsageError
from derrick.images.model import (
    BlobFeed,
    Chunk,
    ImageName,
    ImageSource,
    Plan,
    PlannedEntry,
)
from derrick.manifest import MAX_MANIFEST_SIZE, Descriptor
from derrick.reference import Reference, validate_tag
from derrick.registry import BlobStream, RegistryClient, pull_scope, push_scope

__all__ = ["DEFAULT_CHUNK_SIZE", "RegistryRepository"]

#: The registry's error code for a manifest that lists a blob or manifest it does not have.
_MANIFEST_BLOB_UNKNOWN = "MANIFEST_BLOB_UNKNOWN"

#: Blobs up to this size go up in one request; larger ones in chunks of this size.
DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024


class _RemoteBody(Closing):
    """An open blob download (a :class:`~derrick.images.model.BlobBody`)."""

    def __init__(self, stream: BlobStream, stack: contextlib.ExitStack) -> None:
        self.offset = stream.offset
        self._stream = stream
        self._stack = stack

    def chunks(self) -> Iterator[Chunk]:
        yield from self._stream.chunks()

    def close(self) -> None:
        self._stack.close()


class RegistryRepository:
    """The repository ``ref`` names, through ``client`` (which the caller closes).

    ``ref``'s tag or digest is what :meth:`resolve` takes by default.  As a sink the
    names come from the copy; a ``ref`` with a digest accepts only that image.
    ``chunk_size`` (None: every blob in one request) and ``mount`` shape uploads.
    """

    ordered = False
    local = False  # a copy to a registry keeps nothing on the local disk
    prefers_files = False

    def __init__(
        self,
        client: RegistryClient,
        ref: Reference,
        *,
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
        mount: bool = True,
    ) -> None:
        self.client = client
        self.ref = ref
        self.description = ref.name
        self.chunk_size = chunk_size
        self.mount = mount
        self._lock = threading.Lock()
        self._resolved: dict[Digest, bytes] = {}  # manifest bytes resolve fetched
        self._mount_from: frozenset[str] = frozenset()
        self._scopes: list[str] | None = None  # set by begin: this is a sink

    def __repr__(self) -> str:
        return f"RegistryRepository({self.ref})"

    # -- naming --------------------------------------------------------------------------

    def _named(self, name: str | None) -> Reference:
        if name is None:
            return self.ref
        if ":" in name:  # tags have no colon: a digest
            return Reference(self.ref.registry, self.ref.repository, digest=Digest.parse(name))
        return self.ref.with_tag(validate_tag(name))

    def image_name(self, name: str | None = None) -> ImageName:
        return ImageName(self.ref.name, self._named(name).tag)

    # -- source --------------------------------------------------------------------------

    def resolve(self, name: str | None = None) -> Descriptor:
        ref = self._named(name)
        if ref.tag is None and ref.digest is None:
            raise UsageError(
                f"{self.description}: no image named: give a tag or a digest",
                hint=f"e.g. {self.description}:latest",
            )
        got = self.client.get_manifest(ref)
        with self._lock:
            self._resolved[got.digest] = got.raw
        return got.descriptor

    def names(self) -> list[str]:
        return self.client.list_tags(self.ref)

    def manifest(self, desc: Descriptor) -> bytes:
        what = f"manifest {desc.digest} of {self.description}"
        with self._lock:
            raw = self._resolved.pop(desc.digest, None)
        if raw is None:
            if desc.size > MAX_MANIFEST_SIZE:
                raise ManifestError(
                    f"{what} is {desc.size} bytes, more than the {MAX_MANIFEST_SIZE} byte limit"
                )
            # by digest, the tag kept: errors then name the reference the user gave
            raw = self.client.get_manifest(self.ref.with_digest(desc.digest)).raw
            if len(raw) != desc.size:
                raise ManifestError(
                    f"{what} is {len(raw)} bytes but the index says {desc.size}",
                    hint="the registry is serving wrong content; nothing was kept",
                )
        verifier = Verifier(desc.digest, desc.size, what=what)
        verifier.update(raw)
        verifier.verify()
        return raw

    def has_blob(self, desc: Descriptor) -> bool:
        return self.client.head_blob(self.ref, desc.digest, scopes=self._scopes) is not None

    def open_blob(self, desc: Descriptor, offset: int = 0) -> _RemoteBody:
        stack = contextlib.ExitStack()
        stream = stack.enter_context(self.client.open_blob(self.ref, desc.digest, offset=offset))
        return _RemoteBody(stream, stack)

    def local_blob(self, desc: Descriptor) -> None:
        return None

    def close(self) -> None:
        pass  # the client is the caller's

    # -- sink ----------------------------------------------------------------------------

    def begin(self, plan: Plan) -> None:
        """Check a digest destination and that no image is put over the index it was taken
        from; choose the token scopes (the token itself is asked for once, by whichever
        worker needs it first)."""
        if self.ref.digest is not None:
            tops = {e.top.digest for e in plan.entries}
            if tops != {self.ref.digest}:
                shown = ", ".join(str(d) for d in sorted(tops))
                raise UsageError(
                    f"cannot copy to {self.ref}: the image's digest is {shown}",
                    hint="name the destination by tag, or by the image's own digest",
                )
        for entry in plan.entries:
            self._refuse_part_over_whole(entry)
        mount_from: set[str] = set()
        if self.mount:
            for entry in plan.entries:
                src = entry.source
                if (
                    isinstance(src, RegistryRepository)
                    and src.ref.registry == self.ref.registry
                    and src.ref.repository != self.ref.repository
                ):
                    mount_from.add(src.ref.repository)
        self._mount_from = frozenset(mount_from)
        # One token grants push here and pull on the repositories blobs are mounted from.
        self._scopes = [push_scope(self.ref.repository), *map(pull_scope, sorted(mount_from))]

    def _refuse_part_over_whole(self, entry: PlannedEntry) -> None:
        """Refuse to put some platforms of an index over a tag of this repository that holds
        that very index (a copy of a tag onto itself with a platform selection): the
        other platforms would be lost.  Only then is the destination asked (``HEAD``)."""
        src, origin = entry.source, entry.origin
        if (
            not isinstance(src, RegistryRepository)
            or (src.ref.registry, src.ref.repository) != (self.ref.registry, self.ref.repository)
            or origin is None
            or origin.digest == entry.top.digest
            or self.ref.digest is not None
        ):
            return
        for tag in dict.fromkeys(n.tag for n in entry.names if n.tag):
            target = self.ref.with_tag(tag)
            try:
                there = self.client.head_manifest(target).descriptor.digest
            except NotFoundError:
                continue
            if there == origin.digest:
                kept = len(entry.images)
                raise UsageError(
                    f"{target} is the index {origin.digest} this copy takes {kept} "
                    f"platform{'s' if kept != 1 else ''} of: copying it onto itself would "
                    "replace it and lose the others",
                    hint="copy every platform (a no-op here), or name another tag",
                )

    def mount_blob(self, desc: Descriptor, source: ImageSource) -> bool:
        if not isinstance(source, RegistryRepository):
            return False
        if source.ref.repository not in self._mount_from or source.ref.registry != (
            self.ref.registry
        ):
            return False
        return self.client.mount_blob(self.ref, desc.digest, source.ref.repository)

    def put_blob(self, feed: BlobFeed) -> None:
        self.client.upload_blob(
            self.ref,
            feed.desc.digest,
            feed.desc.size,
            lambda offset: feed.chunks(offset),
            chunk_size=self.chunk_size,
            scopes=self._scopes,
        )

    def put_manifest(self, desc: Descriptor, raw: bytes, names: Sequence[ImageName] = ()) -> None:
        tags = list(dict.fromkeys(n.tag for n in names if n.tag))
        if self.ref.digest is not None or not tags:
            targets = [Reference(self.ref.registry, self.ref.repository, digest=desc.digest)]
        else:
            targets = [self.ref.with_tag(t) for t in tags]
        for target in targets:
            self._put_manifest(target, raw, desc.media_type)

    def _put_manifest(self, target: Reference, raw: bytes, media_type: str) -> None:
        """Put one manifest; tried again when the registry says something it lists is not
        there.  Everything a manifest lists has been stored (or found) before it is put,
        so that answer comes from a registry whose storage another writer of the same
        content is changing at that moment (the CNCF registry rewrites a manifest's blob
        in place when the same manifest is put again: two syncs, or two copies, into one
        registry at once), and it passes."""
        transport = self.client.transport
        attempt = 0
        while True:
            try:
                self.client.put_manifest(target, raw, media_type, scopes=self._scopes)
                return
            except RegistryError as e:
                if _MANIFEST_BLOB_UNKNOWN not in e.codes or attempt >= transport.retry.retries:
                    raise
            transport.retry_sleep(attempt)
            attempt += 1

    def commit(self) -> None:
        pass  # the tags were put last: everything is visible

    def abort(self) -> None:
        pass  # failed uploads cancelled their sessions; blobs without a manifest stay unseen
