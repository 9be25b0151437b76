"""``derrick cache info`` and ``derrick cache prune``: the blob cache, seen and emptied."""

from __future__ import annotations

from pathlib import Path

import click

from derrick.cli.common import emit, format_option, human_size
from derrick.cli.groups import cache_group
from derrick.cli.options import cache_dir_option
from derrick.errors import UsageError
from derrick.store.cache import default_cache_dir
from derrick.store.upkeep import StoreUsage, prune, usage

_WHICH = "The blob cache (default: $DERRICK_CACHE_DIR, else ~/.cache/derrick)."


def _cache(cache_dir: Path | None) -> Path:
    """The cache directory named (or the default); one that is something else is refused."""
    root = cache_dir or default_cache_dir()
    if root.exists() and not root.is_dir():
        raise UsageError(
            f"the blob cache {root} is not a directory",
            hint="name the cache directory with --cache-dir or DERRICK_CACHE_DIR",
        )
    return root


def _json(u: StoreUsage) -> dict[str, object]:
    return {
        "path": str(u.root),
        "blobs": u.blobs,
        "blobBytes": u.blob_bytes,
        "partials": u.partials,
        "partialBytes": u.partial_bytes,
    }


def _counted(u: StoreUsage) -> str:
    said = f"{u.blobs} blob{'' if u.blobs == 1 else 's'} ({human_size(u.blob_bytes)})"
    if u.partials:
        said += (
            f" and {u.partials} partial download{'' if u.partials == 1 else 's'} "
            f"({human_size(u.partial_bytes)})"
        )
    return said


@cache_group.command("info")
@cache_dir_option(_WHICH)
@format_option()
def cache_info(cache_dir: Path | None, fmt: str) -> None:
    """Show where the blob cache is and what it holds.

    Every copy to disk fills the cache, and blobs in it are not downloaded again; it is
    never emptied by itself: `derrick cache prune` empties it.
    """
    found = usage(_cache(cache_dir))
    emit(fmt, _json(found), lambda _: click.echo(f"{found.root}: {_counted(found)}"))


@cache_group.command("prune")
@cache_dir_option(_WHICH)
@format_option()
def cache_prune(cache_dir: Path | None, fmt: str) -> None:
    """Remove every blob and partial download from the blob cache.

    Refused, removing nothing, while another derrick process uses the cache. Images on
    disk (OCI layouts, archives) have copies of their own and are not affected; the next
    copy downloads what it needs again.
    """
    removed = prune(_cache(cache_dir))
    emit(
        fmt,
        _json(removed),
        lambda _: click.echo(f"Removed {_counted(removed)} from {removed.root}"),
    )
