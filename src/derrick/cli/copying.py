"""What ``image copy``, ``image pull``, ``image push`` and ``image save`` share: one copy by
the engine (:func:`derrick.images.engine.copy_many`) from locations as the user wrote them.

:func:`run_copy` checks what can be checked before anything is asked of a registry (a
stream to a terminal, a docker-archive asked for every platform, an archive file over a
directory), opens the sources (local ones first: an archive is read and checked before a
registry is asked anything), gives the blob cache to copies from a registry to the local
disk, shows progress bars on a terminal, and names the destination as the user did in
messages.  Which platforms are copied by default depends on the destination: a registry
gets an index whole (mirroring must not lose platforms), a place on disk this machine's
platform (as a pull does); ``--platform`` (repeatable) narrows, ``--all-platforms`` widens.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from derrick.cli.common import Formats, Options, human_size, refuse_on_disk
from derrick.cli.errors import same_tag_warning
from derrick.cli.options import (
    DEFAULT_JOBS,
    cache_dir_option,
    chunk_size_option,
    jobs_option,
    quiet_option,
)
from derrick.cli.progress import open_progress
from derrick.errors import Remedy, UsageError
from derrick.images.archivefile import check_target
from derrick.images.layout import LayoutDir
from derrick.images.locations import Kind, Location, parse_location
from derrick.images.model import (
    CopyResult,
    ImageName,
    ImageSink,
    ImageSource,
    Selection,
    TransferStats,
)
from derrick.images.open import (
    copy_names,
    copy_selection,
    open_sink,
    open_source,
    source_name,
)
from derrick.manifest import Platform
from derrick.ops import transfer
from derrick.reference import Reference, bare_registry
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore, CacheDiskError

F = TypeVar("F", bound=Callable[..., Any])

#: What ``--format`` takes on the copying commands besides text and json: the kind of a plain
#: destination (a hidden alias: ``-o oci-archive:FILE`` says the same).
KINDS = ("oci", "oci-archive", "docker-archive")


def format_and_kind_option(*hidden: str) -> Callable[[F], F]:
    return click.option(
        "--format",
        "fmt",
        type=Formats(["text", "json"], hidden),
        default="text",
        show_default=True,
        help="Output format.",
    )


def platforms_option(f: F) -> F:
    return click.option(
        "--platform",
        "platforms",
        multiple=True,
        metavar="OS/ARCH[/VARIANT]",
        help="Platform to copy from a multi-platform index; repeat for several (a new index "
        "of just those). Default: every platform to a registry, this machine's "
        f"({Platform.host()}) to disk. An image that is not in an index must be of it.",
    )(f)


def all_platforms_option(f: F) -> F:
    return click.option(
        "--all-platforms",
        is_flag=True,
        help="Copy a multi-platform index whole, byte for byte (to disk: an OCI layout or "
        "archive; a docker-archive holds one platform).",
    )(f)


@dataclass(frozen=True)
class CopyFlags:
    """The options of a copying command about how it copies (see :func:`copy_flags`)."""

    platforms: tuple[str, ...] = ()
    all_platforms: bool = False
    jobs: int = DEFAULT_JOBS
    chunk_size: int | None = None
    cache_dir: Path | None = None
    quiet: bool = False

    def request(
        self,
        sources: list[tuple[Location, str | None]],
        dest: Location,
        label: str,
        names: list[tuple[ImageName, ...] | None] | None = None,
    ) -> Request:
        """The copy of ``sources`` to ``dest`` these options ask for."""
        return Request(
            sources=sources,
            dest=dest,
            selection=selection(self.platforms, self.all_platforms, dest),
            jobs=self.jobs,
            chunk_size=self.chunk_size,
            cache_dir=self.cache_dir,
            quiet=self.quiet,
            label=label,
            names=names,
        )


_cache_dir = cache_dir_option(
    "Blob cache of copies from a registry to disk (default: ~/.cache/derrick)."
)


def copy_flags(
    *, platforms: bool = True, chunk_size: bool = False, cache: bool = True
) -> Callable[[F], F]:
    """``--platform`` and ``--all-platforms`` (with ``platforms``), ``--jobs``,
    ``--chunk-size`` (with ``chunk_size``), ``--cache-dir`` (with ``cache``) and ``--quiet``,
    given to the command as one :class:`CopyFlags` argument, ``flags``."""
    names = ("platforms", "all_platforms", "jobs", "chunk_size", "cache_dir", "quiet")

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {n: kwargs.pop(n) for n in names if n in kwargs}
            return f(*args, flags=CopyFlags(**given), **kwargs)

        options = [
            *((platforms_option, all_platforms_option) if platforms else ()),
            jobs_option,
            *((chunk_size_option,) if chunk_size else ()),
            *((_cache_dir,) if cache else ()),
            quiet_option,
        ]
        decorated: Any = wrapper
        for option in reversed(options):
            decorated = option(decorated)
        return decorated  # type: ignore[no-any-return]

    return decorate


def selection(platforms: Sequence[str], all_platforms: bool, dest: Location) -> Selection:
    """The platforms a copy to ``dest`` takes (see the module docstring)."""
    if all_platforms and platforms:
        raise UsageError("--platform and --all-platforms exclude each other")
    return copy_selection(platforms, all_platforms, to_registry=dest.is_registry)


def registry_location(text: str, *, destination: bool = False) -> Location:
    """``text`` as a registry reference whatever is on disk (``docker://`` allowed); text
    that names a place on disk (``oci:DIR``, ``./DIR``) is refused."""
    if not text.startswith("docker://"):
        error = bare_registry(text)
        if error is not None:
            raise error
        refuse_on_disk(text, copy=True)
    ref = text.removeprefix("docker://")
    return Location(
        "registry", text, Reference.parse(ref, default_tag=None if destination else "latest")
    )


def local_destination(text: str, kind: str | None, default: Kind | None = None) -> Location:
    """``-o TEXT`` of pull and save: a place on disk, its kind from a prefix, else from
    ``kind`` (the hidden ``--format`` alias), else ``default``, else from the path."""
    prefixed = next((k for k in KINDS if text.startswith(f"{k}:")), None)
    wanted = kind or (None if prefixed else default)
    if prefixed is not None and kind is not None and prefixed != kind:
        raise UsageError(f"{text} is an {prefixed} destination, and --format says {kind}")
    if wanted is not None and prefixed is None and text != "-" and not text.startswith("-:"):
        text_parsed = f"{wanted}:{text}"
    else:
        text_parsed = text
    stream: Kind | None = wanted if wanted in ("oci-archive", "docker-archive") else None  # type: ignore[assignment]
    loc = parse_location(text_parsed, destination=True, stream_kind=stream, local=True)
    return Location(loc.kind, text, loc.reference, loc.path, loc.name)


def kind_of(loc: Location) -> str:
    """The format a destination is written in (an existing file is rewritten a
    docker-archive)."""
    return "docker-archive" if loc.kind == "archive" else loc.kind


def shown_path(loc: Location) -> str:
    if loc.is_registry:
        return str(loc.reference)
    return "standard output" if loc.is_stream else str(loc.path)


@dataclass
class Request:
    """One copy as a command asks for it."""

    sources: list[tuple[Location, str | None]]  # each with the image's name (None: default)
    dest: Location
    selection: Selection
    jobs: int
    chunk_size: int | None = None
    cache_dir: Path | None = None
    quiet: bool = False
    label: str = "total"
    #: what the destination calls each image (None: as copy_names says)
    names: list[tuple[ImageName, ...] | None] | None = None


@dataclass
class Copied:
    """What :func:`run_copy` did."""

    result: CopyResult
    sink: ImageSink
    #: per source, the name the destination gives the image (None: the source's)
    names: list[tuple[ImageName, ...] | None]

    @property
    def same_tag(self) -> list[str]:
        return self.sink.same_tag if isinstance(self.sink, LayoutDir) else []


def check_early(req: Request) -> None:
    """What is refused before a registry is asked anything."""
    dest = req.dest
    if dest.is_stream and sys.stdout.isatty():
        raise UsageError(
            "refusing to write an archive to a terminal",
            hint="redirect standard output to a file or a pipe, or pass -o FILE",
        )
    if kind_of(dest) == "docker-archive" and req.selection.all:
        raise UsageError(
            "a docker-archive holds one platform per image, and every platform was asked for",
            remedy=Remedy("oci-archive"),
        )
    if not dest.is_registry and not dest.is_stream and dest.kind != "oci":
        assert dest.path is not None
        check_target(Path(dest.path), dest.path)


def _login_registry(req: Request) -> str | None:
    """--username is for the destination registry, else the (first) source's."""
    for loc in (req.dest, *(loc for loc, _ in req.sources)):
        if loc.reference is not None:
            return loc.reference.registry
    return None


def run_copy(req: Request, opts: Options) -> Copied:
    """Run the copy ``req`` asks for (see the module docstring)."""
    check_early(req)
    dest = req.dest
    registry = _login_registry(req)
    remote = any(loc.is_registry for loc, _ in req.sources)
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(BlobStore(req.cache_dir) if req.cache_dir else BlobStore())
        opened: list[ImageSource | None] = [
            None if loc.is_registry else _local_source(stack, loc, store, req.jobs)
            for loc, _ in req.sources
        ]
        client: RegistryClient | None = None
        if registry is not None:
            client = stack.enter_context(opts.client(registry))
        sources = [
            got if got is not None else open_source(loc, client=client)
            for got, (loc, _) in zip(opened, req.sources, strict=True)
        ]
        names = req.names or [
            copy_names(dest, src, name, shown_path(loc))
            for src, (loc, name) in zip(sources, req.sources, strict=True)
        ]
        sink = open_sink(
            dest,
            client=client,
            store=store,
            stdout=sys.stdout.buffer,
            chunk_size=req.chunk_size,
            shown=None if dest.is_registry else shown_path(dest),
        )
        items = [
            transfer.PlanItem(src, name, req.selection, n)
            for src, (_, name), n in zip(sources, req.sources, names, strict=True)
        ]
        bar = open_progress(stack, quiet=req.quiet, label=req.label)
        try:
            result = transfer.copy_many(
                items,
                sink,
                jobs=req.jobs,
                progress=bar,
                retry=client.transport.retry if client is not None else None,
                cache=store if remote and not dest.is_registry else None,
            )
        except CacheDiskError as e:
            raise e.pulling_to(shown_path(dest)) from None
    return Copied(result, sink, list(names))


def _local_source(
    stack: contextlib.ExitStack, loc: Location, store: BlobStore, jobs: int
) -> ImageSource:
    src = open_source(loc, store=store, jobs=jobs)
    stack.callback(src.close)
    return src


def sources_of(texts: Sequence[str]) -> list[tuple[Location, str | None]]:
    """Source locations as ``image copy`` and ``image save`` take them."""
    out = []
    for text in texts:
        loc = parse_location(text)
        out.append((loc, source_name(loc)))
    return out


# -- what a copy did, as the commands show it -------------------------------------------------


def stats_json(stats: TransferStats, *, upload: bool) -> dict[str, int]:
    """The blob counts of a copy; a copy to a registry also names them as uploads."""
    out = {
        "copiedBlobs": stats.copied,
        "copiedBytes": stats.copied_bytes,
        "mountedBlobs": stats.mounted,
        "skippedBlobs": stats.skipped,
        "linkedBlobs": stats.linked,
    }
    if upload:
        out = {"uploadedBlobs": stats.copied, "uploadedBytes": stats.copied_bytes, **out}
    return out


def stats_text(stats: TransferStats, *, upload: bool) -> str:
    verb = "uploaded" if upload else "copied"
    blobs = "blob" if stats.copied == 1 else "blobs"
    parts = [f"{stats.copied} {blobs} {verb} ({human_size(stats.copied_bytes)})"]
    if stats.mounted:
        parts.append(f"{stats.mounted} mounted")
    if stats.linked:
        parts.append(f"{stats.linked} from local files")
    parts.append(f"{stats.skipped} already there")
    return ", ".join(parts)


def named_at(dest: Location, copied: Copied) -> str:
    """What the destination calls the (first) image now, as a user writes it."""
    result = copied.result
    if dest.is_registry:
        ref = dest.reference
        assert ref is not None
        tag = next((n.tag for n in result.plan.entries[0].names if n.tag), None)
        if ref.digest is None and tag:
            return str(ref.with_tag(tag))
        return str(ref.with_digest(result.digest))
    return dest.text


def warn_same_tag(copied: Copied, dest: str) -> None:
    """Warn when a layout now holds several images under a tag this copy used."""
    if not copied.same_tag:
        return
    entry = copied.result.plan.entries[0]
    name = next((n for n in entry.names if n.tag), None)
    if name is None or name.tag is None:
        return
    full = str(name) if name.repository else name.tag
    warning = same_tag_warning(dest, full, name.tag, str(entry.top.digest), copied.same_tag)
    click.echo(warning, err=True)
