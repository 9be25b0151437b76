"""Commands that move whole images: pull (and, later, push and copy)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from derrick.cache import BlobCache
from derrick.cli.common import (
    Options,
    connection_options,
    emit_json,
    human_size,
    parse_platform,
    parse_ref,
    platform_option,
)
from derrick.cli.progress import open_progress
from derrick.cli.read import image_group
from derrick.errors import UsageError
from derrick.ops.pull import DEFAULT_JOBS, pull


@image_group.command("pull")
@click.argument("reference")
@click.option(
    "-o",
    "--output",
    "dest",
    required=True,
    help="Destination: a directory (OCI layout), a .tar file, or - for stdout.",
)
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["oci", "oci-archive", "docker-archive"]),
    help="Output format (default: a directory is an OCI layout, .tar a docker-archive).",
)
@platform_option
@click.option("--all-platforms", is_flag=True, help="Keep every platform of an index (OCI only).")
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(1, 64),
    default=DEFAULT_JOBS,
    show_default=True,
    help="Blobs to download at once.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="DERRICK_CACHE_DIR",
    help="Blob cache shared by pulls.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@connection_options
def image_pull(
    reference: str,
    dest: str,
    out_format: str | None,
    platform: str | None,
    all_platforms: bool,
    jobs: int,
    cache_dir: Path | None,
    quiet: bool,
    as_json: bool,
    opts: Options,
) -> None:
    """Pull REFERENCE to disk as an OCI layout, OCI archive or docker-archive.

    Blobs are verified, downloaded in parallel, cached and resumed after an
    interruption; the output appears under its final name only when complete.

    \b
    Examples:
      derrick image pull localhost:5000/app:1.0 -o ./app-layout
      derrick image pull alpine:3.20 -o alpine.tar            # docker load -i alpine.tar
      derrick image pull app:1.0 --format oci-archive -o - | gzip > app.oci.tgz
    """
    if dest == "-" and sys.stdout.isatty():  # before a byte is fetched or a bar is shown
        raise UsageError(
            "refusing to write an archive to a terminal",
            hint="redirect standard output to a file or a pipe, or pass -o FILE",
        )
    ref = parse_ref(reference)
    cache = BlobCache(cache_dir)
    with opts.client(ref.registry) as client, contextlib.ExitStack() as stack:
        # on stderr: data on stdout is not disturbed
        bar = open_progress(stack, quiet=quiet, label=ref.familiar())
        result = pull(
            client,
            ref,
            dest,
            format=out_format,  # type: ignore[arg-type]
            platform=parse_platform(platform),
            all_platforms=all_platforms,
            jobs=jobs,
            cache=cache,
            progress=bar,
        )
    if as_json:
        emit_json(
            {
                "reference": str(ref),
                "destination": result.destination,
                "format": result.format,
                "digest": str(result.digest),
                "manifests": [str(p.descriptor.digest) for p in result.images],
                "downloadedBytes": result.downloaded_bytes,
            }
        )
    elif dest != "-":
        click.echo(
            f"Pulled {ref} ({result.digest}) to {dest} as {result.format}, "
            f"{human_size(result.downloaded_bytes)} downloaded",
            err=True,
        )
    if result.same_tag:
        click.echo(
            f"derrick: warning: {dest} now holds {len(result.same_tag)} images tagged "
            f"{ref.tag!r}: {', '.join(result.same_tag)}; {ref.tag!r} alone picks none of them: "
            f"use a full name (oci:{dest}:{ref}) or a digest",
            err=True,
        )
