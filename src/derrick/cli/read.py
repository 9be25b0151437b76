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
    Options,
    connection_options,
    emit_json,
    emit_table,
    format_option,
    human_size,
    parse_platform,
    parse_ref,
    platform_option,
)
from derrick.cli.groups import blob_group, image_group, manifest_group, repo_group, tag_group
from derrick.digest import Digest
from derrick.errors import UsageError
from derrick.manifest import ImageManifest, Index
from derrick.ops.inspect import inspect_image
from derrick.ops.resolve import resolve_image, resolved_config
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
    --format raw prints the exact bytes the registry served.

    \b
    Example:
      derrick manifest get localhost:5000/app:1.0 --format raw | sha256sum
    """
    ref = parse_ref(reference)
    plat = parse_platform(platform)
    manifest: ImageManifest | Index
    with opts.client(ref.registry) as client:
        if plat is None:
            got = client.get_manifest(ref)
            manifest, digest = got.manifest, got.digest
        else:
            img = resolve_image(client, ref, plat)
            manifest, digest = img.manifest, img.digest
    if fmt == "raw":
        sys.stdout.buffer.write(manifest.raw)
        sys.stdout.buffer.flush()
        return
    if fmt == "json":
        emit_json(json.loads(manifest.raw))
        return
    click.echo(f"Name:       {ref}")
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
        assert isinstance(manifest, ImageManifest)
        if not manifest.is_image:
            click.echo(f"Artifact:   {manifest.kind} (not a container image)")
        click.echo(f"Config:     {manifest.config.digest}")
        click.echo("")
        emit_table(
            ["LAYER", "SIZE", "MEDIA TYPE"],
            [[str(d.digest), human_size(d.size), d.media_type] for d in manifest.layers],
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
    "interrupted download resumes from it).",
)
@connection_options
def blob_get(repository: str, digest: str, output: Path | None, opts: Options) -> None:
    """Download blob DIGEST of REPOSITORY, verified, to stdout or -o FILE.

    Nothing is written to stdout or FILE until the whole blob has matched its digest.
    A body that breaks off is asked for again from where it stopped.

    \b
    Example:
      derrick blob get localhost:5000/app sha256:4f1c… > layer.tar.gz
    """
    from derrick.ops.blobs import get_blob

    ref = parse_ref(repository)
    dg = Digest.parse(digest)
    if output is None and sys.stdout.isatty():
        raise UsageError(
            "refusing to write a blob to a terminal",
            hint="redirect standard output to a file, or pass -o FILE",
        )
    if output is not None:
        with opts.client(ref.registry) as client:
            get_blob(client, ref, dg, output)
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
@format_option("json", "raw")
@connection_options
def image_config(reference: str, platform: str | None, fmt: str, opts: Options) -> None:
    """Print the image configuration of REFERENCE.

    \b
    Example:
      derrick image config localhost:5000/app:1.0 --platform linux/arm64
    """
    ref = parse_ref(reference)
    with opts.client(ref.registry) as client:
        img = resolve_image(client, ref, parse_platform(platform))
        if img.manifest.is_image:
            raw = resolved_config(client, img).raw
        else:  # an artifact's config, whatever it holds
            raw = client.get_blob_bytes(ref, img.manifest.config)
    if fmt == "raw":
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        return
    try:
        data = json.loads(raw)
    except ValueError:
        raise UsageError(
            f"the config of {ref} ({img.manifest.config.media_type}) is not JSON",
            hint="print it with --format raw",
        ) from None
    emit_json(data)


@image_group.command("inspect")
@click.argument("reference")
@platform_option
@format_option()
@connection_options
def image_inspect(reference: str, platform: str | None, fmt: str, opts: Options) -> None:
    """Show platforms, layers and configuration of REFERENCE.

    \b
    Example:
      derrick image inspect localhost:5000/app:1.0
    """
    ref = parse_ref(reference)
    with opts.client(ref.registry) as client:
        info = inspect_image(client, ref, parse_platform(platform))
    if fmt == "json":
        emit_json(info)
        return
    _print_inspect(info)


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
        if cfg["entrypoint"]:
            click.echo(f"Entrypoint: {json.dumps(cfg['entrypoint'])}")
        if cfg["cmd"]:
            click.echo(f"Cmd:        {json.dumps(cfg['cmd'])}")
        if cfg["workingDir"]:
            click.echo(f"WorkingDir: {cfg['workingDir']}")
        if cfg["user"]:
            click.echo(f"User:       {cfg['user']}")
        for e in cfg["env"]:
            click.echo(f"Env:        {e}")
        for k, v in cfg["labels"].items():
            click.echo(f"Label:      {k}={v}")
    click.echo(f"Size:       {human_size(info['totalSize'])} compressed")
    click.echo("")
    emit_table(
        ["#", "LAYER", "SIZE", "MEDIA TYPE"],
        [
            [i, layer["digest"], human_size(layer["size"]), layer["mediaType"]]
            for i, layer in enumerate(info["layers"])
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
