"""Commands that read image filesystems: unpack, export, diff, layers."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from derrick.cache import BlobCache
from derrick.cli.common import (
    Options,
    connection_options,
    emit_json,
    emit_table,
    format_option,
    human_size,
    parse_platform,
    platform_option,
)
from derrick.cli.groups import image_group
from derrick.cli.progress import open_progress
from derrick.errors import UsageError
from derrick.ops.analyze import diff_images, export_image, layer_report
from derrick.ops.images import ImageLayers, is_local, open_image
from derrick.ops.unpack import check_destination, unpack_image
from derrick.reference import Reference

_IMAGE_HELP = (
    "IMAGE is a registry reference, or a local OCI layout directory (DIR or DIR:TAG), "
    "OCI archive or docker-archive (prefix with oci:, oci-archive: or docker-archive: "
    "to be explicit, or docker:// to force a registry)."
)


def _cache_option(f: Any) -> Any:
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="DERRICK_CACHE_DIR",
        help="Blob cache shared by pulls (registry images only).",
    )(f)


def _warn(message: str) -> None:
    click.echo(f"derrick: warning: {message}", err=True)


@contextlib.contextmanager
def _opened(
    target: str,
    opts: Options,
    platform: str | None,
    cache_dir: Path | None,
    quiet: bool,
) -> Iterator[ImageLayers]:
    """Open IMAGE, with a download progress display for registry images on a terminal."""
    with contextlib.ExitStack() as stack:
        bar = open_progress(stack, quiet=quiet or is_local(target), label="download")

        def client(ref: Reference) -> Any:
            return opts.client(ref.registry)

        image = open_image(
            target,
            client_factory=client,
            platform=parse_platform(platform),
            cache=BlobCache(cache_dir),
            progress=bar,
        )
        with image:
            yield image


@image_group.command("unpack")
@click.argument("image")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@platform_option
@click.option(
    "--no-same-owner",
    is_flag=True,
    help="Do not apply the layers' file owners (they are applied when running as root).",
)
@_cache_option
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@connection_options
def image_unpack(
    image: str,
    directory: Path,
    platform: str | None,
    no_same_owner: bool,
    cache_dir: Path | None,
    quiet: bool,
    as_json: bool,
    opts: Options,
) -> None:
    """Unpack IMAGE's filesystem into DIRECTORY (which must be new or empty).

    Layers are applied in order with their whiteouts, verified against the
    config's diff_ids, and never write outside DIRECTORY.  The tree is built
    beside DIRECTORY and renamed into place when complete.

    \b
    IMAGE is a registry reference, or a local OCI layout (DIR or DIR:TAG),
    OCI archive or docker-archive.

    \b
    Examples:
      derrick image unpack localhost:5000/app:1.0 ./rootfs
      derrick image unpack ./app-layout:v1 ./rootfs --platform linux/arm64
    """
    check_destination(directory)  # before any download
    with _opened(image, opts, platform, cache_dir, quiet) as img:
        result = unpack_image(
            img, directory, same_owner=False if no_same_owner else None, warn=_warn
        )
        name = img.name
    if as_json:
        emit_json(
            {
                "image": name,
                "destination": str(result.destination),
                "layers": result.layers,
                "files": result.files,
                "uncompressedBytes": result.uncompressed_bytes,
                "diffIds": [str(d) for d in result.diff_ids],
                "skipped": result.skipped,
            }
        )
    elif not quiet:
        click.echo(
            f"Unpacked {name} ({result.layers} layers, {result.files} files, "
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
@platform_option
@_cache_option
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@connection_options
def image_export(
    image: str,
    output: str,
    platform: str | None,
    cache_dir: Path | None,
    quiet: bool,
    opts: Options,
) -> None:
    """Write IMAGE's flattened filesystem as one tar file.

    The layers are streamed (twice) and never unpacked to disk; whiteouts
    are applied and do not appear in the output.

    \b
    Examples:
      derrick image export localhost:5000/app:1.0 -o rootfs.tar
      derrick image export ./app-layout:v1 -o - | tar -t
    """
    if output == "-" and sys.stdout.isatty():
        raise UsageError(
            "refusing to write a tar to a terminal",
            hint="redirect standard output, or pass -o FILE",
        )
    with _opened(image, opts, platform, cache_dir, quiet or output == "-") as img:
        result = export_image(img, output)
        name = img.name
    if output != "-" and not quiet:
        click.echo(
            f"Exported {name} to {output} ({result.entries} entries, "
            f"{human_size(result.bytes_written)})",
            err=True,
        )


@image_group.command("diff")
@click.argument("image1")
@click.argument("image2")
@platform_option
@format_option()
@_cache_option
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@connection_options
def image_diff(
    image1: str,
    image2: str,
    platform: str | None,
    fmt: str,
    cache_dir: Path | None,
    quiet: bool,
    opts: Options,
) -> None:
    """Compare the layers and flattened filesystems of IMAGE1 and IMAGE2.

    Files are compared by type, size, mode, owner, content (sha256) and
    symlink target; modification times are ignored.  Layers are streamed,
    never unpacked to disk.

    \b
    Examples:
      derrick image diff localhost:5000/app:1.0 localhost:5000/app:1.1
      derrick image diff ./old-layout:v1 ./new-layout:v1 --format json
    """
    with (
        _opened(image1, opts, platform, cache_dir, quiet) as a,
        _opened(image2, opts, platform, cache_dir, quiet) as b,
    ):
        data = diff_images(a, b)
    if fmt == "json":
        emit_json(data)
        return
    _print_diff(data)


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
@platform_option
@format_option()
@_cache_option
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@connection_options
def image_layers(
    image: str,
    top: int,
    platform: str | None,
    fmt: str,
    cache_dir: Path | None,
    quiet: bool,
    opts: Options,
) -> None:
    """Show each layer of IMAGE: the command that made it, its sizes, its largest files.

    The command comes from the config history (entries that made no layer
    are skipped); the uncompressed size and files are read from the layer.

    \b
    Examples:
      derrick image layers localhost:5000/app:1.0
      derrick image layers ./app-layout:v1 --top 10 --format json
    """
    with _opened(image, opts, platform, cache_dir, quiet) as img:
        report = layer_report(img, top=top)
        name = img.name
    if fmt == "json":
        emit_json({"image": name, "layers": [x.to_json() for x in report]})
        return
    rows: list[list[Any]] = []
    for x in report:
        rows.append(
            [
                x.index + 1,
                x.digest.split(":", 1)[1][:12] if x.digest else "-",
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
