"""``derrick sync``: mirror many images (see :mod:`derrick.ops.sync`); and ``image copy
--all-tags``, a one-off sync of one repository."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from derrick.cli.common import Options, connection_options, emit_json, human_size
from derrick.cli.copying import CopyFlags, selection
from derrick.cli.errors import remedy_text
from derrick.cli.options import cache_dir_option, jobs_option_of, quiet_option
from derrick.cli.progress import Display, wants_progress
from derrick.errors import Remedy, UsageError, fill
from derrick.images.locations import parse_location
from derrick.images.model import Selection
from derrick.images.open import copy_selection
from derrick.ops.sync import DEFAULT_JOBS, sync
from derrick.ops.syncconfig import SyncConfig, load_config, one_off
from derrick.ops.syncplan import Shard
from derrick.ops.syncreport import (
    ImageOutcome,
    SyncInterrupted,
    SyncReport,
    pulls_text,
    reason_of,
    said,
)
from derrick.store.cache import default_cache_dir


@click.command("sync")
@click.argument("source")
@click.argument("destination", required=False)
@click.option(
    "--tags", "include", multiple=True, metavar="REGEX", help="Copy the tags REGEX matches whole."
)
@click.option(
    "--exclude", multiple=True, metavar="REGEX", help="Leave out the tags REGEX matches whole."
)
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH[/VARIANT]",
    help="Copy only these platforms of a multi-platform image (repeat for several; "
    "default: every platform, the index kept whole).",
)
@click.option(
    "--all-platforms",
    is_flag=True,
    help="Copy indexes whole, byte for byte (the default without --platform).",
)
@click.option(
    "--digest-tags",
    is_flag=True,
    help="Also copy the cosign tags (sha256-<hex>.sig, .att, .sbom) of every copied digest.",
)
@jobs_option_of("Images to copy", DEFAULT_JOBS)
@click.option(
    "--max-pulls",
    type=click.IntRange(0),
    metavar="N",
    help="Spend at most N pulls (manifest GETs, counted as Docker Hub counts them).",
)
@click.option("--shard", metavar="I/N", help="Do shard I (from 0) of N of the work.")
@click.option("--dry-run", is_flag=True, help="Check and report; copy nothing.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Report format (on stdout).",
)
@cache_dir_option("derrick's blob cache: blobs of copies into oci:DIR, records of earlier runs.")
@quiet_option
@connection_options
def sync_command(
    source: str,
    destination: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    platforms: tuple[str, ...],
    all_platforms: bool,
    digest_tags: bool,
    jobs: int,
    max_pulls: int | None,
    shard: str | None,
    dry_run: bool,
    fmt: str,
    cache_dir: Path | None,
    quiet: bool,
    opts: Options,
) -> None:
    """Mirror the tags of SOURCE to DESTINATION, or everything CONFIG.yaml names.

    \b
    derrick sync SRC_REPO DST   DST is a repository (tags keep their names)
                                or oci:DIR (images named REGISTRY/REPO:TAG)
    derrick sync CONFIG.yaml    see the configuration schema in the README

    A mirror keeps every platform: multi-platform images are copied whole
    unless --platform narrows them.  Each tag's digest is compared with the
    destination's (HEAD requests; for oci:DIR its index.json): unchanged tags
    are skipped, changed ones copy only the blobs the destination lacks (into
    oci:DIR through the blob cache, which keeps them for the next run).  A tag
    is never copied onto itself.  Pulls (manifest GETs) are counted as Docker
    Hub counts them; the sync stops cleanly before --max-pulls or the
    registry's remaining count runs out.  Exit status: 0 done, 1 something
    failed, 3 stopped by the pull budget or rate limit with work left (run
    again later).  --username applies to the destination registry.

    \b
    Examples:
      derrick sync docker.io/library/alpine mirror.example:5000/alpine --tags '3\\.2\\d'
      derrick sync docker.io/library/alpine oci:/srv/mirror --platform linux/amd64
      derrick sync mirror.yaml --max-pulls 100 --shard "$JOB_COMPLETION_INDEX/4"
    """
    selection = _selection(platforms, all_platforms)
    if destination is None:
        if include or exclude or platforms or all_platforms:
            raise UsageError(
                "--tags, --exclude, --platform and --all-platforms are for "
                "'derrick sync SRC_REPO DST'",
                hint="put them in the configuration file",
            )
        config = load_config(_config_file(source))
        if digest_tags:
            config = config.with_digest_tags()
    else:
        config = one_off(
            source,
            destination,
            include=include,
            exclude=exclude,
            selection=selection,
            digest_tags=digest_tags,
        )
    the_shard = Shard.parse(shard) if shard else None
    words = _remedies(config_file=destination is None)
    try:
        with opts.client(_login_registry(config, opts)) as client, sync_display(quiet) as show:
            report = sync(
                config,
                client=client,
                jobs=jobs,
                max_pulls=max_pulls,
                shard=the_shard,
                dry_run=dry_run,
                cache_dir=cache_dir or default_cache_dir(),
                progress=show,
            )
    except SyncInterrupted as e:
        # what was done, then "interrupted" and its exit status, as for any command
        _report(e.report, fmt, words)
        raise
    _report(report, fmt, words)
    report_clashes(report)
    report_exit(report)


def _report(report: SyncReport, fmt: str, words: Callable[[Remedy], str]) -> None:
    if fmt == "json":
        emit_json(report.to_json(words))
    else:
        report_text(report, words)


def _remedies(*, config_file: bool) -> Callable[[Remedy], str]:
    """Remedies in the words of a sync: platforms are the configuration's when it came
    from a file; credentials come from 'derrick login' (--username is for one registry
    only, and a sync reads one and writes another)."""

    def words(remedy: Remedy) -> str:
        if config_file and remedy.kind in _CONFIG_PLATFORMS:
            return fill(_CONFIG_PLATFORMS[remedy.kind], remedy.params)
        if remedy.kind in ("login", "saved-credentials"):
            registry = remedy.params.get("registry", "REGISTRY")
            return f"log in with 'derrick login {registry}'"
        return remedy_text(remedy)

    return words


_CONFIG_PLATFORMS = {
    "platforms": "choose one of those in the configuration's platforms",
    "platform": "name {platform} in the configuration's platforms, or leave them out",
    "no-platform": "leave out the configuration's platforms",
}


def _selection(platforms: tuple[str, ...], all_platforms: bool) -> Selection:
    """Every platform of an index unless some are named: a mirror must not lose any."""
    if all_platforms and platforms:
        raise UsageError("--platform and --all-platforms exclude each other")
    return copy_selection(platforms, all_platforms, to_registry=True)


def _config_file(text: str) -> Path:
    """The configuration file ``derrick sync CONFIG.yaml`` names."""
    path = Path(text)
    if path.is_file():
        return path
    if path.exists() and not path.is_dir():  # a pipe: derrick sync <(make-config), /dev/stdin
        return path
    if path.is_dir():
        raise UsageError(
            f"{text} is a directory, not a configuration file",
            hint="give CONFIG.yaml, or a source repository and a destination",
        )
    if path.suffix in (".yaml", ".yml", ".json") or text.startswith(("/", "./", "../", "~")):
        raise UsageError(f"the configuration file {text} does not exist", hint="check the path")
    raise UsageError(
        f"{text}: no such configuration file, and no destination to copy the repository to",
        hint=f"write 'derrick sync {text} DST' with DST a repository or oci:DIR, "
        "or give CONFIG.yaml",
    )


def copy_all_tags(src: str, dst: str, flags: CopyFlags, output: str, opts: Options) -> None:
    """``image copy --all-tags``: the tags of one repository, as a sync mirrors them (each
    tag's digest compared first; those the destination has are skipped)."""
    source, dest = parse_location(src, destination=True), parse_location(dst, destination=True)
    for loc in (source, dest):
        ref = loc.reference
        if ref is None:
            raise UsageError(
                f"--all-tags copies a registry repository to one, and {loc} is not",
                hint="copy the images of a repository to disk one by one",
            )
        if ref.tag is not None or ref.digest is not None:
            raise UsageError(
                f"--all-tags copies every tag of a repository: {loc} names one image",
                hint=f"name the repository, {ref.name}",
            )
    assert source.reference is not None and dest.reference is not None
    config = one_off(
        source.reference.name,
        dest.reference.name,
        selection=selection(flags.platforms, flags.all_platforms, dest),
    )
    with opts.client(dest.reference.registry) as client, sync_display(flags.quiet) as display:
        report = sync(
            config,
            client=client,
            jobs=flags.jobs,
            progress=display,
            chunk_size=flags.chunk_size,
            cache_dir=flags.cache_dir or default_cache_dir(),  # records of indexes narrowed
        )
    if output == "json":
        emit_json(report.to_json())
    elif not flags.quiet:
        report_text(report)
    report_exit(report)


@contextlib.contextmanager
def sync_display(quiet: bool) -> Iterator[_Display | None]:
    """The progress display of a sync on stderr, when it is a terminal and not ``quiet``."""
    if not wants_progress(quiet):
        yield None
        return
    with _Display() as display:
        yield display


def _login_registry(config: SyncConfig, opts: Options) -> str | None:
    """The registry --username is for: the one destination registry (or the source's,
    for a layout)."""
    if opts.username is None and not opts.password_stdin:
        return None
    registries = {s.destination.registry or s.registry for s in config.sources}
    if len(registries) != 1:
        raise UsageError(
            "--username applies to one registry, and this sync writes to several",
            hint="log in to each with 'derrick login' instead",
        )
    return registries.pop()


# -- output ------------------------------------------------------------------------------


def report_text(report: SyncReport, words: Callable[[Remedy], str] = remedy_text) -> None:
    out = click.echo
    shown = [*report.copied, *report.planned, *report.failed, *report.left]
    for item in shown:
        line = f"{item.status:<9} {item.source} -> {item.destination}"
        if item.status == "copied":
            line += f"  {item.digest}  {human_size(item.bytes)}"
        why = item.why(words)
        if why:
            line += f": {why}"
        out(line)
    for name, e in report.source_errors:
        out(f"{'failed':<9} {name}: {said(reason_of(e), e.remedy, words)}")
    if shown or report.source_errors:
        out("")
    failed = len(report.failed) + len(report.source_errors)
    out(
        f"{len(report.copied)} copied, {len(report.unchanged)} unchanged, "
        f"{len(report.filtered)} filtered out, {failed} failed, {len(report.left)} left"
        + (f", {len(report.planned)} to copy (dry run)" if report.dry_run else "")
        + (f", {report.other_shards} in other shards" if report.other_shards else "")
    )
    budget = f" of a budget of {report.max_pulls}" if report.max_pulls is not None else ""
    pulls = pulls_text(report.pulls)
    out(f"{human_size(report.bytes)} moved, {pulls}{budget}, {report.seconds:.1f}s")
    if report.stopped:
        out(f"stopped: {report.stopped}")
    for registry, state in sorted(report.rate_limits.items()):
        out(f"{registry}: {state.describe()}")


def report_clashes(report: SyncReport) -> None:
    """A warning for each destination two sources of the configuration name."""
    for destination, taken, left in report.clashes:
        click.echo(
            f"derrick: warning: {destination} is named by two sources: {taken} is copied "
            f"there, {left} is not; give one of them another destination",
            err=True,
        )


def report_exit(report: SyncReport) -> None:
    failed = len(report.failed) + len(report.source_errors)
    if failed:
        click.echo(
            f"derrick: error: {failed} of {len(report.images) + len(report.source_errors)} "
            "failed (see the report); running it again retries only those",
            err=True,
        )
        raise click.exceptions.Exit(report.exit_code)
    if report.left:
        click.echo(
            f"derrick: error: stopped with {len(report.left)} of {len(report.images)} images "
            f"left: {report.stopped}; run again later",
            err=True,
        )
        raise click.exceptions.Exit(report.exit_code)


class _Display(Display):
    """Images done / total and bytes moved, on stderr."""

    def __init__(self) -> None:
        # rich only when a display is drawn
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("images"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[moved]}"),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            transient=True,
        )
        self._task = self._progress.add_task("images", total=None, moved="0 B")
        self._moved = 0
        self._lock = threading.Lock()

    def planned(self, images: int) -> None:
        self._progress.update(self._task, total=images)

    def bytes_moved(self, nbytes: int) -> None:
        with self._lock:
            self._moved += nbytes
            moved = self._moved
        self._progress.update(self._task, moved=f"{human_size(moved)} moved")

    def image_finished(self, outcome: ImageOutcome) -> None:
        self._progress.advance(self._task)
