"""Commands that read image filesystems: unpack, export, diff, layers."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from derrick.cli.common import (
    Options,
    connection_options,
    emit,
    emit_json,
    emit_table,
    format_option,
    human_size,
    platform_option,
)
from derrick.cli.groups import image_group
from derrick.cli.images import image_location, opened_image
from derrick.cli.options import cache_dir_option, quiet_option
from derrick.cli.progress import open_progress
from derrick.errors import UsageError
from derrick.ops.analyze import diff_images, layer_report
from derrick.ops.export import export_image
from derrick.ops.unpack import check_destination, unpack_image

F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:
    from derrick.images.locations import Location
    from derrick.images.model import Progress
    from derrick.images.view import Image


_cache_option = cache_dir_option(
    "Blob cache that layers of registry images go through (default: derrick's)."
)


def _json_alias(f: Any) -> Any:
    """``--json``, the old spelling of ``--format json`` (hidden)."""
    return click.option("--json", "as_json", is_flag=True, hidden=True)(f)


def _warn(message: str) -> None:
    click.echo(f"derrick: warning: {message}", err=True)


@dataclass(frozen=True)
class ReadFlags:
    """Which platform's image a filesystem command reads, through which blob cache, and
    whether it shows progress."""

    platform: str | None = None
    cache_dir: Path | None = None
    quiet: bool = False


def _read_flags(f: F) -> F:
    """``--platform``, ``--cache-dir`` and ``--quiet``, given as one :class:`ReadFlags`,
    ``flags``."""

    @functools.wraps(f)
    def wrapper(
        *args: Any, platform: str | None, cache_dir: Path | None, quiet: bool, **kwargs: Any
    ) -> Any:
        return f(*args, flags=ReadFlags(platform, cache_dir, quiet), **kwargs)

    return platform_option(_cache_option(quiet_option(wrapper)))  # type: ignore[return-value]


@contextlib.contextmanager
def _opened(
    locs: Sequence[Location], opts: Options, flags: ReadFlags, *, quiet: bool = False
) -> Iterator[tuple[list[Image], Progress | None]]:
    """The images at ``locs``, layers of registry images through the blob cache, and a
    download progress display for them on a terminal when one is from a registry (not
    with ``quiet`` or the ``--quiet`` flag)."""
    with contextlib.ExitStack() as stack:
        images = [
            stack.enter_context(
                opened_image(
                    loc, opts, platform=flags.platform, cache_dir=flags.cache_dir, cache=True
                )
            )
            for loc in locs
        ]
        quiet = quiet or flags.quiet or not any(image.is_remote for image in images)
        bar = open_progress(stack, quiet=quiet, label="download")
        yield images, bar


@image_group.command("unpack")
@click.argument("image")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--no-same-owner",
    is_flag=True,
    help="Do not apply the layers' file owners (they are applied when running as root).",
)
@_read_flags
@format_option()
@_json_alias
@connection_options
def image_unpack(
    image: str,
    directory: Path,
    no_same_owner: bool,
    flags: ReadFlags,
    fmt: str,
    as_json: bool,
    opts: Options,
) -> None:
    """Unpack IMAGE's filesystem into DIRECTORY (which must be new or empty).

    Layers are applied in order with their whiteouts, verified against the
    config's diff_ids, and never write outside DIRECTORY.  The tree is built
    beside DIRECTORY and renamed into place when complete.  --format json
    prints a summary on stdout.

    \b
    IMAGE is a registry reference (docker://REF to insist) or an image on
    disk: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG],
    or a plain path where that is unambiguous (./DIR[:TAG], /DIR, FILE.tar).

    \b
    Examples:
      derrick image unpack localhost:5000/app:1.0 ./rootfs
      derrick image unpack ./app-layout:v1 ./rootfs --platform linux/arm64
    """
    loc = image_location(image)
    check_destination(directory)  # before any download
    with _opened([loc], opts, flags) as ([img], progress):
        result = unpack_image(
            img,
            directory,
            same_owner=False if no_same_owner else None,
            warn=_warn,
            progress=progress,
        )
    if fmt == "json" or as_json:
        emit_json(
            {
                "image": img.shown,
                "digest": str(img.digest),
                "destination": str(result.destination),
                "layers": result.layers,
                "files": result.files,
                "uncompressedBytes": result.uncompressed_bytes,
                "diffIds": [str(d) for d in result.diff_ids],
                "skipped": result.skipped,
            }
        )
    elif not flags.quiet:
        click.echo(
            f"Unpacked {img.shown} ({result.layers} layer{'' if result.layers == 1 else 's'}, "
            f"{result.files} file{'' if result.files == 1 else 's'}, "
            f"{human_size(result.uncompressed_bytes)}) to {result.destination}",
            err=True,
        )


@image_group.command("export")
@click.argument("image")
@click.option(
    "-o",
    "--output",
    required=True,
    help="Tar file to write (under a temporary name, renamed when complete), or - for stdout.",
)
@_read_flags
@format_option()
@connection_options
def image_export(image: str, output: str, flags: ReadFlags, fmt: str, opts: Options) -> None:
    """Write IMAGE's flattened filesystem as one tar file.

    The layers are streamed (twice) and never unpacked to disk; whiteouts
    are applied and do not appear in the output.  --format json prints a
    summary on stdout (not with -o -, where stdout is the tar).

    \b
    IMAGE is a registry reference or an image on disk, as for image unpack.

    \b
    Examples:
      derrick image export localhost:5000/app:1.0 -o rootfs.tar
      derrick image export ./app-layout:v1 -o - | tar -t
    """
    if output == "-" and fmt == "json":
        raise UsageError(
            "--format json prints on standard output, which -o - takes for the tar",
            hint="write the tar to a file with -o FILE",
        )
    if output == "-" and sys.stdout.isatty():
        raise UsageError(
            "refusing to write a tar to a terminal",
            hint="redirect standard output, or pass -o FILE",
        )
    if output != "-":  # refused before anything is asked of a registry
        from derrick.images.archivefile import check_target

        check_target(Path(output), output)
    loc = image_location(image)
    with _opened([loc], opts, flags, quiet=output == "-") as ([img], progress):
        dest = sys.stdout.buffer if output == "-" else output
        result = export_image(img, dest, progress=progress)
    if fmt == "json":
        emit_json(
            {
                "image": img.shown,
                "digest": str(img.digest),
                "destination": output,
                "entries": result.entries,
                "bytes": result.bytes_written,
            }
        )
    elif output != "-" and not flags.quiet:
        click.echo(
            f"Exported {img.shown} to {output} ({result.entries} entries, "
            f"{human_size(result.bytes_written)})",
            err=True,
        )


@image_group.command("diff")
@click.argument("image1")
@click.argument("image2")
@_read_flags
@format_option()
@connection_options
def image_diff(image1: str, image2: str, flags: ReadFlags, fmt: str, opts: Options) -> None:
    """Compare the layers and flattened filesystems of IMAGE1 and IMAGE2.

    Files are compared by type, size, mode, owner, content (sha256) and
    symlink target; modification times are ignored.  Layers are streamed,
    never unpacked to disk.  Each image is a registry reference or an
    image on disk, as for image unpack.

    \b
    Examples:
      derrick image diff localhost:5000/app:1.0 localhost:5000/app:1.1
      derrick image diff ./old-layout:v1 ./new-layout:v1 --format json
    """
    locs = [image_location(image1), image_location(image2)]  # both before a read
    with _opened(locs, opts, flags) as ([a, b], progress):
        data = diff_images(a, b, progress=progress)
    emit(fmt, data, _print_diff)


def _print_diff(data: dict[str, Any]) -> None:
    s = data["summary"]
    click.echo(f"--- {data['image1']['name']}")
    click.echo(f"+++ {data['image2']['name']}")
    click.echo(
        f"Layers: {len(data['sharedLayers'])} shared, {len(data['layersOnlyIn1'])} only in "
        f"the first, {len(data['layersOnlyIn2'])} only in the second"
    )
    click.echo(
        f"Files:  {s['added']} added ({human_size(s['addedBytes'])}), {s['removed']} removed "
        f"({human_size(s['removedBytes'])}), {s['changed']} changed; "
        f"size change {'+' if s['sizeDelta'] >= 0 else '-'}{human_size(abs(s['sizeDelta']))}"
    )
    rows: list[list[Any]] = []
    for f in data["added"]:
        rows.append(["+", f["path"], f["type"], human_size(f["size"]), ""])
    for f in data["removed"]:
        rows.append(["-", f["path"], f["type"], human_size(f["size"]), ""])
    for c in data["changed"]:
        before, after = c["before"], c["after"]
        size = human_size(after["size"])
        if before["size"] != after["size"]:
            size = f"{human_size(before['size'])} -> {size}"
        rows.append(["~", c["path"], after["type"], size, ", ".join(c["changes"])])
    if rows:
        click.echo("")
        emit_table(["", "PATH", "TYPE", "SIZE", "CHANGED"], rows)


@image_group.command("layers")
@click.argument("image")
@click.option(
    "--top",
    type=click.IntRange(0),
    default=5,
    show_default=True,
    help="How many of each layer's largest files to show.",
)
@_read_flags
@format_option()
@connection_options
def image_layers(image: str, top: int, flags: ReadFlags, fmt: str, opts: Options) -> None:
    """Show each layer of IMAGE: the command that made it, its sizes, its largest files.

    The command comes from the config history (entries that made no layer
    are skipped); the uncompressed size and files are read from the layer.
    Layers are numbered from 1, base layer first, as image inspect numbers
    them.  IMAGE is a registry reference or an image on disk, as for image
    unpack.

    \b
    Examples:
      derrick image layers localhost:5000/app:1.0
      derrick image layers ./app-layout:v1 --top 10 --format json
    """
    loc = image_location(image)
    with _opened([loc], opts, flags) as ([img], progress):
        report = layer_report(img, top=top, progress=progress)
    if fmt == "json":
        emit_json(
            {"image": img.shown, "digest": str(img.digest), "layers": [x.to_json() for x in report]}
        )
        return
    rows: list[list[Any]] = []
    for x in report:
        rows.append(
            [
                x.number,
                x.digest.split(":", 1)[1][:12],
                human_size(x.size),
                human_size(x.uncompressed_size),
                x.files,
                _short(x.created_by or "-", 70),
            ]
        )
        for path, size in x.largest:
            rows.append(["", "", "", human_size(size), "", f"  /{path}"])
    emit_table(["#", "LAYER", "SIZE", "UNCOMPRESSED", "FILES", "CREATED BY"], rows)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
