"""Read commands: tags, repositories, manifests, blobs, configs, rate limits."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from derrick.cli.common import (
    Formats,
    Options,
    connection_options,
    emit,
    emit_json,
    emit_table,
    format_option,
    human_size,
    parse_ref,
    platform_option,
)
from derrick.cli.groups import blob_group, image_group, manifest_group, repo_group, tag_group
from derrick.cli.images import image_location, opened_image
from derrick.digest import Digest
from derrick.errors import UsageError
from derrick.manifest import ImageConfig, ImageManifest, Index
from derrick.platform import config_platform
from derrick.reference import parse_registry


@tag_group.command("ls")
@click.argument("repository")
@click.option("--limit", type=click.IntRange(1), help="Page size to ask the registry for.")
@format_option()
@connection_options
def tag_ls(repository: str, limit: int | None, fmt: str, opts: Options) -> None:
    """List the tags of REPOSITORY.

    \b
    Example:
      derrick tag ls localhost:5000/team/app
      derrick tag ls alpine --format json
    """
    ref = parse_ref(repository)
    with opts.client(ref.registry) as client:
        tags = client.list_tags(ref, page_size=limit)
    if fmt == "json":
        emit_json(tags)
    else:
        for t in tags:
            click.echo(t)
        if not tags:
            click.echo(f"{ref.name} has no tags", err=True)


@repo_group.command("ls")
@click.argument("registry")
@click.option("--limit", type=click.IntRange(1), help="Page size to ask the registry for.")
@format_option()
@connection_options
def repo_ls(registry: str, limit: int | None, fmt: str, opts: Options) -> None:
    """List the repositories of REGISTRY (its catalog).

    \b
    Example:
      derrick repo ls localhost:5000
    """
    reg = parse_registry(registry)
    with opts.client(reg) as client:
        repos = client.catalog(reg, page_size=limit)
    if fmt == "json":
        emit_json(repos)
    else:
        for r in repos:
            click.echo(r)


@manifest_group.command("get")
@click.argument("reference")
@click.option(
    "--platform",
    help="Show that platform's manifest of a multi-platform index, as os/arch[/variant] "
    "(default: the index itself).",
)
@format_option("text", "json", "raw")
@connection_options
def manifest_get(reference: str, platform: str | None, fmt: str, opts: Options) -> None:
    """Show the manifest (or index) REFERENCE names.

    With --platform, an index is resolved to that platform's manifest.
    --format raw prints the exact bytes the registry (or file) served.
    REFERENCE may also be an image on disk (oci:DIR[:TAG], ./DIR, FILE.tar...).

    \b
    Example:
      derrick manifest get localhost:5000/app:1.0 --format raw | sha256sum
    """
    loc = image_location(reference)
    manifest: ImageManifest | Index
    with opened_image(loc, opts, platform=platform) as image:
        if platform is None:
            desc, manifest = image.named()
            digest = desc.digest
        else:
            manifest, digest = image.manifest, image.digest
    if fmt == "raw":
        sys.stdout.buffer.write(manifest.raw)
        sys.stdout.buffer.flush()
        return
    if fmt == "json":
        emit_json(json.loads(manifest.raw))
        return
    click.echo(f"Name:       {image.shown}")
    click.echo(f"MediaType:  {manifest.media_type}")
    click.echo(f"Digest:     {digest}")
    if isinstance(manifest, Index):
        click.echo("")
        emit_table(
            ["PLATFORM", "DIGEST", "SIZE", "MEDIA TYPE"],
            [
                [str(d.platform or "-"), str(d.digest), d.size, d.media_type]
                for d in manifest.manifests
            ],
        )
    else:
        if not manifest.is_image:
            click.echo(f"Artifact:   {manifest.kind} (not a container image)")
        click.echo(f"Config:     {manifest.config.digest}")
        click.echo("")
        emit_table(
            ["#", "LAYER", "SIZE", "MEDIA TYPE"],
            [
                [i, str(d.digest), human_size(d.size), d.media_type]
                for i, d in enumerate(manifest.layers, 1)
            ],
        )


@manifest_group.command("head")
@click.argument("reference")
@format_option()
@connection_options
def manifest_head(reference: str, fmt: str, opts: Options) -> None:
    """Print the digest of REFERENCE without downloading the manifest.

    \b
    Example:
      derrick manifest head localhost:5000/app:1.0
    """
    ref = parse_ref(reference)
    with opts.client(ref.registry) as client:
        head = client.head_manifest(ref)
    d = head.descriptor
    if fmt == "json":
        emit_json({"digest": str(d.digest), "mediaType": d.media_type, "size": d.size})
    else:
        click.echo(str(d.digest))


@blob_group.command("get")
@click.argument("repository")
@click.argument("digest")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to FILE (as a hidden partial file beside it, renamed when verified; an "
    "interrupted download resumes from it); - is standard output.",
)
@format_option()
@connection_options
def blob_get(repository: str, digest: str, output: Path | None, fmt: str, opts: Options) -> None:
    """Download blob DIGEST of REPOSITORY, verified, to stdout or -o FILE.

    Nothing is written to stdout or FILE until the whole blob has matched its digest.
    A body that breaks off is asked for again from where it stopped.  The blob is the
    data: --format json prints what was written (digest, size, file) on stdout, and so
    needs -o FILE.

    \b
    Examples:
      derrick blob get localhost:5000/app sha256:4f1c… > layer.tar.gz
      derrick blob get localhost:5000/app sha256:4f1c… -o layer.tar.gz --format json
    """
    from derrick.ops.blobs import get_blob

    ref = parse_ref(repository)
    dg = Digest.parse(digest)
    if output is not None and str(output) == "-":  # as -o - is in the other commands
        output = None
    if output is None and fmt == "json":
        raise UsageError(
            "--format json prints on standard output, which takes the blob without -o",
            hint="write the blob to a file with -o FILE",
        )
    if output is None and sys.stdout.isatty():
        raise UsageError(
            "refusing to write a blob to a terminal",
            hint="redirect standard output to a file, or pass -o FILE",
        )
    if output is not None:
        with opts.client(ref.registry) as client:
            got = get_blob(client, ref, dg, output)
        if fmt == "json":
            emit_json({"digest": str(dg), "size": got.descriptor.size, "file": str(output)})
        return
    # standard output: the blob is verified in a file of its own first, then copied out
    spool = Path(tempfile.mkdtemp(prefix="derrick-blob-"))
    try:
        with opts.client(ref.registry) as client:
            get_blob(client, ref, dg, spool / "blob", resume=False)
        with (spool / "blob").open("rb") as src:
            out = sys.stdout.buffer
            while chunk := src.read(1 << 20):
                out.write(chunk)
            out.flush()
    finally:
        shutil.rmtree(spool, ignore_errors=True)


@image_group.command("config")
@click.argument("reference")
@platform_option
@click.option(
    "--format",
    "fmt",
    type=Formats(["json", "text"], ["raw"]),
    default="json",
    show_default=True,
    help="json: the config document; text: a summary to read.",
)
@click.option("--raw", is_flag=True, help="Print the config's exact bytes, as stored.")
@connection_options
def image_config(reference: str, platform: str | None, fmt: str, raw: bool, opts: Options) -> None:
    """Print the image configuration of REFERENCE.

    The config is a JSON document: --format json (the default) prints it,
    --format text a summary of it, --raw its exact bytes (an artifact's
    config, whatever it holds, too).  REFERENCE may also be an image on
    disk (oci:DIR[:TAG], ./DIR, FILE.tar...).

    \b
    Examples:
      derrick image config localhost:5000/app:1.0 --platform linux/arm64
      derrick image config ./app.tar --raw | sha256sum
    """
    loc = image_location(reference)
    with opened_image(loc, opts, platform=platform) as image:
        data = image.config_bytes
    if raw or fmt == "raw":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    if fmt == "text":
        _print_config(image.shown, image.manifest, image.config if image.is_image else None)
        return
    try:
        doc = json.loads(data)
    except ValueError:
        raise UsageError(
            f"the config of {image.shown} ({image.manifest.config.media_type}) is not JSON",
            hint="print its bytes with --raw",
        ) from None
    emit_json(doc)


def _print_config(shown: str, manifest: ImageManifest, config: ImageConfig | None) -> None:
    from derrick.ops.inspect import config_summary

    click.echo(f"Image:      {shown}")
    click.echo(f"Config:     {manifest.config.digest} ({human_size(manifest.config.size)})")
    if config is None:
        click.echo(f"Artifact:   {manifest.kind} (not a container image)")
        click.echo(f"MediaType:  {manifest.config.media_type}")
        return
    summary = config_summary(config)
    click.echo(f"Platform:   {config_platform(config) or '-'}")
    click.echo(f"Created:    {summary['created'] or '-'}")
    _print_run_settings(summary)
    for i, h in enumerate((h for h in config.history if not h.empty_layer), 1):
        click.echo(f"Layer {i}:{' ' * max(1, 5 - len(str(i)))}{h.created_by or '-'}")


def _print_run_settings(cfg: dict[str, Any]) -> None:
    """What a container of the image runs, as a config summary says (see config_summary)."""
    if cfg["entrypoint"]:
        click.echo(f"Entrypoint: {json.dumps(cfg['entrypoint'])}")
    if cfg["cmd"]:
        click.echo(f"Cmd:        {json.dumps(cfg['cmd'])}")
    if cfg["workingDir"]:
        click.echo(f"WorkingDir: {cfg['workingDir']}")
    if cfg["user"]:
        click.echo(f"User:       {cfg['user']}")
    for port in cfg["exposedPorts"]:
        click.echo(f"Port:       {port}")
    for e in cfg["env"]:
        click.echo(f"Env:        {e}")
    for k, v in cfg["labels"].items():
        click.echo(f"Label:      {k}={v}")


@image_group.command("inspect")
@click.argument("reference")
@platform_option
@format_option()
@connection_options
def image_inspect(reference: str, platform: str | None, fmt: str, opts: Options) -> None:
    """Show platforms, layers and configuration of REFERENCE.

    REFERENCE may also be an image on disk (oci:DIR[:TAG], ./DIR, FILE.tar...).
    Layers are numbered from 1, base layer first.

    \b
    Examples:
      derrick image inspect localhost:5000/app:1.0
      derrick image inspect ./app-oci:1.0 --platform linux/arm64
    """
    from derrick.ops.inspect import inspect_image

    loc = image_location(reference)
    with opened_image(loc, opts, platform=platform) as image:
        info = inspect_image(image)
    emit(fmt, info, _print_inspect)


def _print_inspect(info: dict[str, Any]) -> None:
    cfg = info["config"]
    click.echo(f"Reference:  {info['reference']}")
    click.echo(f"Digest:     {info['digest']}")
    click.echo(f"MediaType:  {info['mediaType']}")
    if info["platforms"]:
        click.echo(f"Platforms:  {', '.join(p['platform'] or '?' for p in info['platforms'])}")
        click.echo(f"Manifest:   {info['manifestDigest']} ({info['platform'] or '-'})")
    elif info["artifactType"] is None:
        click.echo(f"Platform:   {info['platform'] or '-'}")
    if info["artifactType"] is not None:
        click.echo(f"Artifact:   {info['artifactType']}")
        click.echo(f"Config:     {cfg['digest']} ({cfg['mediaType']})")
        click.echo(
            "            not a container image: pull it to an OCI layout or OCI archive, or copy it"
        )
    else:
        click.echo(f"Created:    {cfg['created'] or '-'}")
        click.echo(f"Config:     {cfg['digest']}")
        _print_run_settings(cfg)
    click.echo(f"Size:       {human_size(info['totalSize'])} compressed")
    click.echo("")
    emit_table(
        ["#", "LAYER", "SIZE", "MEDIA TYPE"],
        [
            [i, layer["digest"], human_size(layer["size"]), layer["mediaType"]]
            for i, layer in enumerate(info["layers"], 1)
        ],
    )


@click.command("ratelimit")
@click.argument("reference")
@format_option()
@connection_options
def ratelimit(reference: str, fmt: str, opts: Options) -> None:
    """Show the pull rate limit the registry reports for REFERENCE (Docker Hub).

    Uses a HEAD request, which does not count as a pull on Docker Hub.

    \b
    Example:
      derrick ratelimit docker.io/library/alpine
    """
    ref = parse_ref(reference)
    with opts.client(ref.registry) as client:
        head = client.head_manifest(ref)
    rl = head.ratelimit
    data = {
        "registry": ref.registry,
        "limit": rl.limit if rl else None,
        "remaining": rl.remaining if rl else None,
        "windowSeconds": rl.window_seconds if rl else None,
        "source": rl.source if rl else None,
    }
    if fmt == "json":
        emit_json(data)
    elif rl is None:
        click.echo(f"{ref.registry} reports no rate limit")
    else:
        click.echo(f"Registry:   {ref.registry}")
        click.echo(f"Limit:      {rl.limit}")
        click.echo(f"Remaining:  {rl.remaining}")
        if rl.window_seconds:
            click.echo(f"Window:     {rl.window_seconds}s")
        if rl.source:
            click.echo(f"Source:     {rl.source}")
