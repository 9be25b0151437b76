"""What OCI archives and docker-archives share as sinks: the tar, laid out from the plan.

A copy's :class:`~derrick.images.model.Plan` says everything an archive holds before the
first blob moves: every manifest (raw), every blob with its size, and what each entry is
called.  So :meth:`ArchiveSink.begin` turns the plan into the archive's members, in their
order (:meth:`ArchiveSink.members`, one list per format), and writes it:

* to a **file** (:class:`~derrick.images.archivefile.ArchiveFile`): the whole tar at once,
  a hole of its exact size left for each blob; the blobs then fill their holes in
  parallel, resumably, and the file gets its name at :meth:`~ArchiveSink.commit`;
* to a **stream** (standard output, a pipe, any binary file object): the sink is
  ``ordered``, and each blob is written in its turn, in plan order, between the small
  members around it; the end-of-archive marker goes out at commit.

Both forms write the same bytes.  Manifests and names are written with the rest at
:meth:`~ArchiveSink.begin` (they are all in the plan), so :meth:`~ArchiveSink.put_manifest`
has nothing left to do.  Member headers are deterministic (mode 0644, owner 0, mtime 0).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from derrick.errors import DerrickError
from derrick.images.archivefile import ArchiveFile, Holes
from derrick.images.model import BlobFeed, ImageName, ImageSource, Kept, Plan, PlannedEntry
from derrick.layout.archive import image_platform
from derrick.layout.ociindex import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    BLOBS_DIR,
    blob_member,
    index_json,
    named_descriptor,
)
from derrick.layout.tarstream import TarStreamWriter
from derrick.manifest import Descriptor

__all__ = [
    "ArchiveSink",
    "Member",
    "blob_members",
    "directories",
    "entry_top",
    "index_entries",
    "manifest_members",
]


@dataclass(frozen=True)
class Member:
    """One member of an archive: a directory (``name/``), small content, or a blob put later."""

    name: str
    data: bytes | None = None
    blob: Descriptor | None = None


def directories(plan: Plan) -> list[Member]:
    """``blobs/`` and a directory for each algorithm of the plan (sha256 always)."""
    digests = [d.digest for d, _ in plan.manifests] + [d.digest for d in plan.blobs]
    algorithms = sorted({d.algorithm for d in digests} | {"sha256"})
    return [Member(f"{BLOBS_DIR}/"), *(Member(f"{BLOBS_DIR}/{a}/") for a in algorithms)]


def blob_members(plan: Plan) -> list[Member]:
    return [Member(blob_member(d.digest), blob=d) for d in plan.blobs]


def manifest_members(plan: Plan) -> list[Member]:
    return [Member(blob_member(d.digest), raw) for d, raw in plan.manifests]


def entry_top(entry: PlannedEntry) -> Descriptor:
    """What ``index.json`` lists for ``entry``: its top without the names it had in its source,
    and a single image with the platform its config says (when its descriptor has none)."""
    ann = {
        k: v
        for k, v in (entry.top.annotations or {}).items()
        if k not in (ANNOTATION_REF_NAME, ANNOTATION_IMAGE_NAME)
    }
    top = entry.top.with_annotations(ann)
    if entry.index is None and top.platform is None and len(entry.images) == 1:
        image = entry.images[0]
        platform = image_platform(image.manifest, image.config)
        if platform is not None:
            top = Descriptor(
                top.media_type, top.digest, top.size, top.urls, top.annotations, platform
            )
    return top


def index_entries(plan: Plan) -> bytes:
    """``index.json``: an entry for each name of each plan entry (its tag as
    ``org.opencontainers.image.ref.name``, its full name as ``io.containerd.image.name``),
    an unnamed one for an entry without names; each once."""
    out: list[Descriptor] = []
    for entry in plan.entries:
        top = entry_top(entry)
        named = [_named(top, n) for n in entry.names if n.repository or n.tag] or [top]
        out.extend(d for d in named if d not in out)
    return index_json(out)


def _named(top: Descriptor, name: ImageName) -> Descriptor:
    full: str | None = None
    if name.repository:
        full = f"{name.repository}:{name.tag}" if name.tag else f"{name.repository}@{top.digest}"
    return named_descriptor(top, name.tag, full)


def _write_small(w: TarStreamWriter, member: Member) -> None:
    if member.data is None:
        w.add_dir(member.name)
    else:
        w.add_bytes(member.name, member.data)


class _Stream:
    """An archive written in order to a stream: small members as they come, each blob when
    it is its turn."""

    def __init__(self, out: BinaryIO, shown: str) -> None:
        self.out = out
        self.shown = shown
        self._w: TarStreamWriter | None = None
        self._rest: Iterator[Member] = iter(())
        self._next: Member | None = None

    def begin(self, members: Sequence[Member]) -> None:
        self._w = TarStreamWriter(self.out)
        self._rest = iter(members)
        self._advance(self._w)

    def _advance(self, w: TarStreamWriter) -> None:
        """Write the small members up to the next blob."""
        self._next = None
        for member in self._rest:
            if member.blob is not None:
                self._next = member
                return
            _write_small(w, member)

    def put(self, feed: BlobFeed) -> None:
        member, w = self._next, self._w
        if w is None or member is None or member.blob is None:
            raise DerrickError(f"{self.shown}: blob {feed.desc.digest} was not expected")
        if member.blob.digest != feed.desc.digest:
            raise DerrickError(
                f"{self.shown}: blob {feed.desc.digest} came before {member.blob.digest}, "
                "which an ordered archive writes first"
            )
        size = member.blob.size
        if feed.local is not None:
            w.add_file(member.name, feed.local, size)
        else:
            w.add_stream(member.name, size, feed.chunks())
        self._advance(w)

    def commit(self) -> None:
        if self._w is None:
            raise DerrickError(f"{self.shown}: nothing was begun")
        if self._next is not None and self._next.blob is not None:
            raise DerrickError(f"{self.shown}: blob {self._next.blob.digest} was never written")
        self._w.close()

    def abort(self) -> None:
        """What went out cannot be taken back: the stream ends unfinished (no end marker)."""
        self._w = None


class ArchiveSink:
    """An archive as an :class:`~derrick.images.model.ImageSink` (see the module docstring).

    ``dest`` is a path (a file, written with holes and renamed into place) or a binary file
    object (a stream; it is flushed, not closed).  ``shown`` is how it is named to users
    (default: the path, or ``standard output`` for a stream).  Subclasses say which members
    a plan makes (:meth:`members`), checking first that the format can hold it.
    """

    #: The format's name in messages.
    kind = "archive"
    #: Stored on this machine's disk.
    local = True
    #: Blobs are streamed into their place (a cached copy is copied in, not preferred).
    prefers_files = False

    def __init__(self, dest: str | Path | BinaryIO, *, shown: str | None = None) -> None:
        self._file: ArchiveFile | None = None
        self._stream: _Stream | None = None
        if isinstance(dest, (str, Path)):
            shown = shown or str(dest)
            self._file = ArchiveFile(Path(dest), shown)
        else:
            shown = shown or "standard output"
            self._stream = _Stream(dest, shown)
        self.shown = shown
        self.description = f"{self.kind} {shown}"
        self.ordered = self._stream is not None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.shown!r})"

    def members(self, plan: Plan) -> list[Member]:
        """The members of the archive of ``plan``, in order."""
        raise NotImplementedError

    # -- ImageSink -----------------------------------------------------------------------

    def begin(self, plan: Plan) -> None:
        members = self.members(plan)  # refuses what the format cannot hold, before any write
        if self._file is not None:
            self._file.begin(lambda out: _write_with_holes(out, members))
        elif self._stream is not None:
            self._stream.begin(members)

    def has_blob(self, desc: Descriptor) -> bool:
        return False  # a blob an earlier run left in place is re-hashed by put_blob

    def mount_blob(self, desc: Descriptor, source: ImageSource) -> bool:
        return False

    def put_blob(self, feed: BlobFeed) -> None:
        if self._file is not None:
            self._file.put(feed)
        elif self._stream is not None:
            self._stream.put(feed)

    def put_manifest(self, desc: Descriptor, raw: bytes, names: Sequence[ImageName] = ()) -> None:
        pass  # written at begin, from the plan, with every name

    def commit(self) -> None:
        if self._file is not None:
            self._file.commit()
        elif self._stream is not None:
            self._stream.commit()

    def abort(self) -> None:
        if self._file is not None:
            self._file.abort()
        elif self._stream is not None:
            self._stream.abort()

    def kept(self) -> list[Kept]:
        """What an abort left for a later run to resume from (the partial file and its
        state; nothing for a stream)."""
        return self._file.kept() if self._file is not None else []


def _write_with_holes(out: BinaryIO, members: Sequence[Member]) -> Holes:
    """Write ``members`` to the seekable ``out``, a hole for each blob; where the holes are."""
    w = TarStreamWriter(out)
    holes: Holes = {}
    for member in members:
        if member.blob is None:
            _write_small(w, member)
        else:
            holes[member.blob.digest] = w.add_hole(member.name, member.blob.size)
    w.close()
    return holes
