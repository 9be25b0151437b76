"""Options of the commands that move blobs: how many at once, how large an upload request
is, which blob cache, quiet."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from derrick.errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])

#: Blobs that move at once by default.
DEFAULT_JOBS = 4

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: str) -> int:
    """Bytes from ``123``, ``64K``, ``64MiB``, ``1G`` (binary units)."""
    m = _SIZE_RE.match(value)
    if not m:
        raise UsageError(
            f"invalid size {value!r}", hint="give bytes, or a number with K, M or G (e.g. 64MiB)"
        )
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _chunk_size(ctx: click.Context, param: click.Parameter, value: str | int) -> int | None:
    """The chunk size in bytes; None for 0 (every blob in one request)."""
    try:
        size = value if isinstance(value, int) else parse_size(value)
    except UsageError as e:
        raise click.BadParameter(str(e), ctx, param) from None
    return size or None


def chunk_size_option(f: F) -> F:
    return click.option(
        "--chunk-size",
        default="64MiB",
        callback=_chunk_size,
        metavar="SIZE",
        show_default=True,
        help="Blobs up to SIZE go up to a registry in one request, larger ones in chunks of "
        "SIZE (0: always one request).",
    )(f)


def jobs_option_of(what: str, default: int = DEFAULT_JOBS) -> Callable[[F], F]:
    """``-j``/``--jobs``: how many ``what`` at once (1 to 64)."""
    return click.option(
        "-j",
        "--jobs",
        type=click.IntRange(1, 64),
        default=default,
        show_default=True,
        help=f"{what} at once.",
    )


jobs_option = jobs_option_of("Blobs to move")


def quiet_option(f: F) -> F:
    return click.option("-q", "--quiet", is_flag=True, help="No progress display.")(f)


def cache_dir_option(what: str) -> Callable[[F], F]:
    """``--cache-dir`` (or ``DERRICK_CACHE_DIR``): the blob cache, which holds ``what``."""
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="DERRICK_CACHE_DIR",
        help=what,
    )
