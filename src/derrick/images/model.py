"""The image model: every place an image can be is an :class:`ImageSource`, an
:class:`ImageSink`, or both.

Implementations:

* :mod:`derrick.images.remote` -- a repository of a registry (source and sink);
* :mod:`derrick.images.layout` -- an OCI image layout directory (source and sink);
* :mod:`derrick.images.ociarchive` -- a tar of an OCI layout (source and sink);
* :mod:`derrick.images.dockerarchive` -- ``docker save`` tarballs, legacy and Docker 25+
  (source, with a manifest synthesised for legacy images; sink of one or several images).

The one engine that moves images between them is :func:`derrick.images.engine.copy`.
It walks what the source names (:mod:`derrick.images.plan`), hands the sink the whole
:class:`Plan` (``begin``), then every blob the sink lacks (``put_blob``, in parallel unless
the sink is ``ordered``), then the manifests, children before the index that lists them
and each entry's top with its names (``put_manifest``), and last ``commit`` -- or
``abort`` after a failure, so nothing half-written is visible.

Nothing here does I/O; the protocols say what each side promises:

* Sources hand out bytes as they have them.  Checking them is the engine's job
  (:class:`BlobFeed` verifies every blob against its digest before the last chunk is
  given out), except for :meth:`ImageSource.manifest`, which returns bytes already
  checked against the descriptor, as manifests are small and parsed at once.
* Sinks trust nothing they did not verify themselves or receive through a
  :class:`BlobFeed`: :meth:`ImageSink.has_blob` answers True only for content known
  good (hashed, or recorded as verified and unchanged since).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, runtime_checkable

from derrick.digest import Digest
from derrick.errors import UsageError
from derrick.manifest import Descriptor, ImageManifest, Index, Platform

#: A piece of a blob.  A memoryview may be a view of a buffer the producer reuses: it
#: is valid until the next chunk is asked for (copy it with ``bytes()`` to keep it).
Chunk = bytes | memoryview


class BlobBody(Protocol):
    """An open read of one blob, as a source serves it (not verified)."""

    #: Where the body starts.  A source that cannot start at the offset asked for
    #: (a registry that ignores ``Range``) starts at 0 and says so here.
    offset: int

    def chunks(self) -> Iterator[Chunk]:
        """The bytes from ``offset`` on.  A body that breaks off raises
        :class:`~derrick.errors.TransportError` (the engine then asks again from where
        it stopped); any other error ends the read."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> BlobBody: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class ImageSource(Protocol):
    """Where images are read from."""

    #: How the source is named to users, e.g. ``registry.example/team/app`` or
    #: ``OCI layout ./app-oci``.
    description: str

    def resolve(self, name: str | None = None) -> Descriptor:
        """The descriptor of the manifest or index called ``name``.

        ``name`` is a tag, a digest string, or for local sources a ref name or full
        image name; None means the source's default (the tag its location named, or
        the only image it holds).  Raises a :class:`~derrick.errors.DerrickError`
        (not found, ambiguous) naming what there is.
        """
        ...

    def names(self) -> list[str]:
        """The names :meth:`resolve` accepts for the images held (tags, ref names)."""
        ...

    def image_name(self, name: str | None = None) -> ImageName:
        """What the image ``name`` (as :meth:`resolve` takes it) is called here: the
        source's repository when it has one, and the tag when ``name`` (or the source's
        default) is one.  Nothing is read; a copy keeps this name unless told otherwise."""
        ...

    def manifest(self, desc: Descriptor) -> bytes:
        """The raw bytes of the manifest or index ``desc``, checked against its digest
        and size, and capped at :data:`~derrick.manifest.MAX_MANIFEST_SIZE`."""
        ...

    def has_blob(self, desc: Descriptor) -> bool:
        """Whether the source can serve the blob (not a promise that it is intact)."""
        ...

    def open_blob(self, desc: Descriptor, offset: int = 0) -> BlobBody:
        """Open the blob for reading from ``offset`` (see :attr:`BlobBody.offset`)."""
        ...

    def local_blob(self, desc: Descriptor) -> Path | None:
        """A local file holding exactly the blob and known to be intact (a verified
        cache entry, a layout blob whose verified record still holds), which a sink may
        link or copy instead of streaming; None when there is none."""
        ...

    def close(self) -> None: ...


class BlobFeed(Protocol):
    """One blob as the engine hands it to a sink: verified on the way, resumable.

    Every byte is hashed; the digest and size are checked before the last chunk is
    given out, so a sink that commits after the last chunk never commits wrong
    content.  A body that breaks off is asked for again from where it stopped, up to
    the retry limit.  Progress and cancellation are handled inside.
    """

    desc: Descriptor

    #: A verified local copy the sink may link or copy instead of streaming.
    local: Path | None

    def chunks(self, start: int = 0, prefix: Iterator[Chunk] | None = None) -> Iterator[Chunk]:
        """The blob's bytes from ``start`` on.

        The bytes before ``start`` still count towards the digest: ``prefix`` yields
        them from what the sink already holds (an earlier, interrupted write, re-hashed
        now); without it they are read again from the source and not given out.
        """
        ...


@dataclass(frozen=True)
class Selection:
    """Which images of an index a copy takes.

    * ``Selection()`` -- this machine's platform from an index; a single image whatever
      its platform.
    * ``Selection(platforms=(p, ...))`` -- those platforms; a single image must match one
      of them (its config says its platform).  With two or more, the copy is a new index
      listing just those (its digest differs from the source's).
    * ``Selection(all=True)`` -- the index whole, byte for byte.
    """

    platforms: tuple[Platform, ...] = ()
    all: bool = False

    def __post_init__(self) -> None:
        if self.all and self.platforms:
            raise UsageError("a selection takes all platforms, or the ones named: not both")

    @property
    def explicit(self) -> bool:
        """Whether platforms were asked for (so a single image is checked against them)."""
        return bool(self.platforms)


@dataclass(frozen=True)
class ImageName:
    """What a copied image is called in the sink.

    ``repository`` is the full repository name (``registry.example/team/app``) when one
    is known; ``tag`` the tag.  Sinks use what fits them: a registry the tag, an OCI
    layout ``org.opencontainers.image.ref.name`` = tag and ``io.containerd.image.name``
    = ``repository:tag``, a docker-archive ``RepoTags`` = ``repository:tag``.
    """

    repository: str | None = None
    tag: str | None = None

    def __str__(self) -> str:
        if self.repository and self.tag:
            return f"{self.repository}:{self.tag}"
        return self.repository or self.tag or ""


@dataclass(frozen=True)
class PlannedImage:
    """One platform image of a plan: its manifest (raw bytes kept) and config."""

    descriptor: Descriptor  # with the platform, when it came from an index
    manifest: ImageManifest
    config: bytes  # raw, verified; small

    @property
    def digest(self) -> Digest:
        return self.descriptor.digest


@dataclass(frozen=True)
class PlannedEntry:
    """One named thing to store: an index or a single image, with its names."""

    top: Descriptor  # what the names point at: an index or an image manifest
    names: tuple[ImageName, ...]
    images: tuple[PlannedImage, ...]  # the platform images under ``top`` (one if no index)
    index: Index | None = None  # ``top`` parsed, when it is an index
    #: Where the entry's manifests and blobs are read from (a plan may join several
    #: sources); a sink may look at it, e.g. a registry mounts from a repository of its own.
    source: ImageSource | None = field(default=None, compare=False, repr=False)
    #: The index the image was chosen from, when one platform of an index was taken (the
    #: entry's top is then that image): its descriptor and the index parsed.
    parent: tuple[Descriptor, Index] | None = field(default=None, compare=False, repr=False)
    #: What the entry's name resolved to in its source: ``top`` itself, or the index a
    #: selection took part of (a sink may refuse to put that part over the whole).
    origin: Descriptor | None = None


@dataclass(frozen=True)
class Plan:
    """Everything a copy will store, known before the first blob moves."""

    entries: tuple[PlannedEntry, ...]
    #: Every manifest and index, raw, each once, children before the indexes listing them.
    manifests: tuple[tuple[Descriptor, bytes], ...]
    #: Every config and layer blob, each once, in the order an ordered sink writes them.
    blobs: tuple[Descriptor, ...]


@runtime_checkable
class ImageSink(Protocol):
    """Where images are written: begin, blobs, manifests, then commit (or abort)."""

    description: str

    #: True when blobs must be put one at a time in ``plan.blobs`` order (a stream).
    ordered: bool

    #: True when the sink stores on the local disk (a layout, an archive, a stream to a
    #: local file): a copy into it may then keep blobs from a remote source in a blob
    #: cache.  A registry is not local: a copy to it keeps nothing on the way.
    local: bool

    #: True when the sink takes a whole local file (:attr:`BlobFeed.local`) better than a
    #: stream (a layout copies or reflinks it): blobs from a remote source are then put in
    #: the cache first and handed over as files.
    prefers_files: bool

    def begin(self, plan: Plan) -> None:
        """Start writing ``plan``.  Sinks that lay out their container up front (an
        archive) do it here; nothing is visible under the final name yet."""
        ...

    def has_blob(self, desc: Descriptor) -> bool:
        """Whether the sink already holds the blob, known intact (then it is skipped)."""
        ...

    def mount_blob(self, desc: Descriptor, source: ImageSource) -> bool:
        """Take the blob from ``source`` without moving bytes (a cross-repository mount
        when both are repositories of one registry); False when that cannot be done."""
        ...

    def put_blob(self, feed: BlobFeed) -> None:
        """Store one blob.  Called from worker threads unless ``ordered``."""
        ...

    def put_manifest(self, desc: Descriptor, raw: bytes, names: Sequence[ImageName] = ()) -> None:
        """Store one manifest or index (children come before the index listing them).

        ``names`` is given for the top of each plan entry: a registry tags it then; sinks
        that name images in one file (``index.json``, ``manifest.json``) do so at commit.
        """
        ...

    def commit(self) -> None:
        """Make everything visible under its final name (an ``index.json`` entry, the
        archive's final file name); a registry has nothing left to do."""
        ...

    def abort(self) -> None:
        """Drop what was written (keeping what a later run can resume from)."""
        ...


#: Something an aborted sink left for a later run: how it is called, and how many files.
Kept = tuple[str, int]


@runtime_checkable
class KeepsPartials(Protocol):
    """A sink that may leave files behind when it is aborted, for a later run to resume
    from (an archive's partial file and its state)."""

    def kept(self) -> list[Kept]:
        """What the last :meth:`ImageSink.abort` left behind (nothing: empty)."""
        ...


BlobOutcome = Literal["copied", "skipped", "mounted", "linked"]


class Progress(Protocol):
    """Receives the progress of a copy; every method may be called from worker threads.

    ``planned`` comes first, with the size of every blob of the plan.  Each blob then ends
    with ``blob_finished``; by then its ``blob_advanced`` counts add up to its size (a blob
    the sink already had or mounted is advanced by its whole size at once).  Only blobs
    that stream are ``blob_started``.
    """

    def planned(self, total_bytes: int) -> None:
        """The bytes of the blobs about to move."""
        ...

    def blob_started(self, desc: Descriptor) -> None: ...

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        """``nbytes`` more of the blob are done (negative when a retry goes back)."""
        ...

    def blob_finished(self, desc: Descriptor, outcome: BlobOutcome) -> None: ...


@dataclass
class TransferStats:
    """What happened to the blobs of a copy."""

    copied: int = 0  # blobs streamed from the source
    copied_bytes: int = 0  # bytes received from the source (resumed bytes not counted twice)
    skipped: int = 0  # the sink had them
    mounted: int = 0  # a registry mounted them
    linked: int = 0  # taken from a local verified copy (cache, layout) without the source

    @property
    def blobs(self) -> int:
        return self.copied + self.skipped + self.mounted + self.linked


@dataclass
class CopyResult:
    """The outcome of :func:`derrick.images.engine.copy`."""

    source: str
    destination: str
    plan: Plan
    stats: TransferStats = field(default_factory=TransferStats)

    def __repr__(self) -> str:  # the plan holds every manifest's and config's bytes
        return (
            f"CopyResult(source={self.source!r}, destination={self.destination!r}, "
            f"digest={str(self.digest)!r}, stats={self.stats!r})"
        )

    @property
    def digest(self) -> Digest:
        """The digest of what the (first) destination name now points at."""
        return self.plan.entries[0].top.digest

    @property
    def media_type(self) -> str:
        return self.plan.entries[0].top.media_type

    @property
    def manifests(self) -> list[Digest]:
        """Every manifest stored, children first, top last."""
        return [d.digest for d, _ in self.plan.manifests]

    @property
    def images(self) -> Sequence[PlannedImage]:
        return [img for e in self.plan.entries for img in e.images]
