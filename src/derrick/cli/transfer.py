"""Commands that move whole images: pull (push and copy are in :mod:`derrick.cli.write`).

A pull to an OCI layout is a copy by the engine (:func:`derrick.ops.transfer.copy`) from
the registry repository to a :class:`~derrick.images.layout.LayoutDir`, through the blob
cache; a pull to an archive is still :func:`derrick.ops.pull.pull`.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
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
from derrick.cli.errors import same_tag_warning
from derrick.cli.groups import image_group
from derrick.cli.progress import BlobProgress, engine_bars, open_progress
from derrick.digest import Digest
from derrick.errors import UsageError
from derrick.images.layout import LayoutDir
from derrick.images.model import ImageName, Selection
from derrick.images.remote import RegistryRepository
from derrick.manifest import Platform
from derrick.ops import transfer
from derrick.ops.pull import CACHE_REMEDY, DEFAULT_JOBS, output_format, pull
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.store.cache import CacheDiskError


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
    fmt = output_format(dest, out_format, all_platforms=all_platforms)
    wanted = parse_platform(platform)
    cache = BlobCache(cache_dir)
    with opts.client(ref.registry) as client, contextlib.ExitStack() as stack:
        # on stderr: data on stdout is not disturbed
        bar = open_progress(stack, quiet=quiet, label=ref.familiar())
        if fmt == "oci":
            pulled = _pull_layout(client, ref, dest, wanted, all_platforms, jobs, cache, bar)
        else:
            result = pull(
                client,
                ref,
                dest,
                format=fmt,
                platform=wanted,
                all_platforms=all_platforms,
                jobs=jobs,
                cache=cache,
                progress=bar,
                stdout=sys.stdout.buffer,
            )
            pulled = _Pulled(
                result.digest,
                [p.descriptor.digest for p in result.images],
                result.downloaded_bytes,
                result.same_tag,
            )
    if as_json:
        emit_json(
            {
                "reference": str(ref),
                "destination": dest,
                "format": fmt,
                "digest": str(pulled.digest),
                "manifests": [str(d) for d in pulled.manifests],
                "downloadedBytes": pulled.downloaded,
            }
        )
    elif dest != "-":
        click.echo(
            f"Pulled {ref} ({pulled.digest}) to {dest} as {fmt}, "
            f"{human_size(pulled.downloaded)} downloaded",
            err=True,
        )
    if pulled.same_tag and ref.tag is not None:
        full = f"{ref.name}:{ref.tag}"
        click.echo(
            same_tag_warning(dest, full, ref.tag, str(pulled.digest), pulled.same_tag), err=True
        )


@dataclass(frozen=True)
class _Pulled:
    """What a pull did, as the command shows it."""

    digest: Digest  # of what the destination names: the index, or the image manifest
    manifests: list[Digest]  # the image manifests pulled
    downloaded: int  # bytes received from the registry
    same_tag: list[str]  # full names of the images that share the pull's tag in a layout


def _pull_layout(
    client: RegistryClient,
    ref: Reference,
    dest: str,
    platform: Platform | None,
    all_platforms: bool,
    jobs: int,
    cache: BlobCache,
    bar: BlobProgress | None,
) -> _Pulled:
    """A copy from the registry to the OCI layout ``dest``, through the blob cache."""
    if all_platforms:  # the index whole: --platform does not apply
        selection = Selection(all=True)
    else:
        selection = Selection(platforms=(platform,) if platform is not None else ())
    sink = LayoutDir(dest, store=cache)
    try:
        result = transfer.copy(
            RegistryRepository(client, ref),
            sink,
            selection=selection,
            names=(ImageName(ref.name, ref.tag),),
            jobs=jobs,
            progress=engine_bars(bar),
            retry=client.transport.retry,
            cache=cache,
        )
    except CacheDiskError as e:
        raise e.pulling_to(dest, remedy=CACHE_REMEDY) from None
    return _Pulled(
        result.digest,
        [img.digest for img in result.images],
        result.stats.copied_bytes,
        sink.same_tag,
    )
