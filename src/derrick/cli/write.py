"""Commands that write to registries: push, copy, tag, and deleting manifests and blobs."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

import click

from derrick.cli.common import (
    Options,
    connection_options,
    emit_json,
    format_option,
    human_size,
    parse_platform,
    parse_ref,
    platform_option,
)
from derrick.cli.groups import blob_group, image_group, manifest_group, tag_group
from derrick.cli.progress import engine_bars, open_progress
from derrick.digest import Digest
from derrick.errors import UsageError
from derrick.images.dockerarchive import open_archive
from derrick.images.layout import LayoutDir
from derrick.images.model import ImageName, Selection
from derrick.images.remote import RegistryRepository
from derrick.ops import transfer
from derrick.ops.copy import tag_image
from derrick.ops.push import (
    DEFAULT_JOBS,
    PushResult,
    TransferStats,
    layout_destination,
    push_from,
    push_names,
    push_result,
    push_stats,
    put_blob,
)
from derrick.reference import Reference

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TRANSPORTS = ("oci:", "oci-archive:", "docker-archive:")


def split_path_name(text: str) -> tuple[str, str] | None:
    """``(path, name)`` for ``PATH:NAME`` where ``PATH`` exists, else None (split at the
    last ``:`` that leaves an existing path before it)."""
    pos = len(text)
    while (pos := text.rfind(":", 0, pos)) > 0:
        if os.path.exists(text[:pos]):
            return text[:pos], text[pos + 1 :]
    return None


def is_local(target: str) -> bool:
    """Whether ``target`` names an image on disk: a path that exists, or ``PATH:NAME``
    where PATH does (``host:5000/app`` beside a directory ``host`` stays a reference
    unless that is an OCI layout or a file)."""
    if os.path.exists(target):
        return True
    found = split_path_name(target)
    if found is None:
        return False
    path, name = found
    is_source = os.path.isfile(path) or os.path.exists(os.path.join(path, "oci-layout"))
    return "/" not in name or is_source


def parse_size(value: str) -> int:
    """Bytes from ``123``, ``64K``, ``64MiB``, ``1G`` (binary units)."""
    m = _SIZE_RE.match(value)
    if not m:
        raise UsageError(
            f"invalid size {value!r}", hint="give bytes, or a number with K, M or G (e.g. 64MiB)"
        )
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _size_callback(ctx: click.Context, param: click.Parameter, value: str | int) -> int:
    if isinstance(value, int):
        return value
    try:
        return parse_size(value)
    except UsageError as e:
        raise click.BadParameter(str(e), ctx, param) from None


def _chunk_size(size: int) -> int | None:
    return size or None


def chunk_size_option(f: Any) -> Any:
    return click.option(
        "--chunk-size",
        default="64MiB",
        callback=_size_callback,
        metavar="SIZE",
        show_default=True,
        help="Blobs up to SIZE go up in one request, larger ones in chunks of SIZE "
        "(0: always one request).",
    )(f)


def jobs_option(f: Any) -> Any:
    return click.option(
        "-j",
        "--jobs",
        type=click.IntRange(1, 64),
        default=DEFAULT_JOBS,
        show_default=True,
        help="Blobs to transfer at once.",
    )(f)


def _split_source(src: str, tag: str | None) -> tuple[str, str | None]:
    """``DIR``, ``DIR:NAME`` or ``FILE:NAME`` (optionally ``oci:``-style prefixed).

    NAME may hold colons itself (``app.tar:app:1.0``): the path is the longest
    part before a colon that exists.
    """
    for prefix in _TRANSPORTS:
        if src.startswith(prefix) and not Path(src).exists():
            src = src[len(prefix) :]
            break
    name = None
    if not Path(src).exists():
        found = split_path_name(src)  # DIR:v1, DIR:registry/repo:v1, DIR:sha256:…
        if found is not None:
            src, name = found[0], found[1] or None
    if name is not None and tag is not None:
        raise UsageError(f"the image is named twice: {name!r} in SRC and {tag!r} by --tag")
    return src, name if name is not None else tag


def _local_path(value: str) -> bool:
    """Whether an argument of ``image copy`` names a path on disk rather than a registry.

    ``docker://`` forces a registry; ``oci:``-style prefixes, paths (``/…``, ``./…``,
    ``../…``, ``~/…``), names ending in ``.tar`` and anything that exists are local.
    """
    if value.startswith("docker://"):
        return False
    return (
        value.startswith((*_TRANSPORTS, "/", "./", "../", "~/"))
        or value in (".", "..", "~")
        or value.endswith(".tar")
        or is_local(value)
    )


def _pull_command(src: str, dest: str) -> str:
    for prefix in _TRANSPORTS:
        if dest.startswith(prefix):
            return f"derrick image pull {src} -o {dest[len(prefix) :]} --format {prefix[:-1]}"
    return f"derrick image pull {src} -o {dest}"


def _refuse_local_paths(src: str, dst: str) -> None:
    """``image copy`` goes from registry to registry: say what to use for a path instead."""
    src_local, dst_local = _local_path(src), _local_path(dst)
    if src_local and dst_local:
        raise UsageError(
            f"image copy copies between registries; {src} and {dst} are local paths",
            hint="derrick image pull writes a registry's image to disk, "
            "derrick image push uploads one from disk",
        )
    if dst_local:
        raise UsageError(
            f"image copy copies between registries, and {dst} is a local path",
            hint=f"to write the image to disk use: {_pull_command(src, dst)} "
            "(or prefix DST_REF with docker:// if it names a registry)",
        )
    if src_local:
        raise UsageError(
            f"image copy copies between registries, and {src} is a local path",
            hint=f"to upload an image from disk use: derrick image push {src} {dst} "
            "(or prefix SRC_REF with docker:// if it names a registry)",
        )


def _stats_json(stats: TransferStats) -> dict[str, int]:
    return {
        "uploadedBlobs": stats.uploaded,
        "uploadedBytes": stats.uploaded_bytes,
        "mountedBlobs": stats.mounted,
        "skippedBlobs": stats.skipped,
    }


def _stats_text(stats: TransferStats) -> str:
    parts = [f"{stats.uploaded} blobs uploaded ({human_size(stats.uploaded_bytes)})"]
    if stats.mounted:
        parts.append(f"{stats.mounted} mounted")
    parts.append(f"{stats.skipped} already there")
    return ", ".join(parts)


@image_group.command("push")
@click.argument("src")
@click.argument("reference")
@click.option(
    "--tag",
    "name",
    help="Which image of SRC to push: its tag (ref name), RepoTag or image ID.",
)
@jobs_option
@chunk_size_option
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@format_option()
@connection_options
def image_push(
    src: str,
    reference: str,
    name: str | None,
    jobs: int,
    chunk_size: int,
    quiet: bool,
    fmt: str,
    opts: Options,
) -> None:
    """Push an image from SRC on disk to REFERENCE.

    SRC is an OCI layout directory, an OCI archive or a docker-archive
    (docker save, legacy or OCI style).  Pick one of several images with
    SRC:NAME or --tag: a tag (ref name) of a layout, a RepoTag or image ID
    (12 or more hex digits) of a docker-archive; the only one is the default.
    REFERENCE without a tag takes the image's tag in SRC (an untagged image
    needs one given).  Digests are preserved.

    \b
    Examples:
      derrick image push ./app-layout:1.0 localhost:5000/team/app
      derrick image push app.tar:app:1.0 localhost:5000/team/app
      derrick image push untagged.tar localhost:5000/team/app:1.0
    """
    path, image_name = _split_source(src, name)
    ref = Reference.parse(reference, default_tag=None)
    layout = LayoutDir(path, name=image_name) if Path(path).is_dir() else None
    if layout is not None:  # before any connection: the image and its tag must be there
        ref = layout_destination(
            layout, ref, image_name, f"{path}:{image_name}" if image_name else path
        )
    with contextlib.ExitStack() as stack:
        # An archive is read (and checked) before the registry is asked anything.
        archive = stack.enter_context(open_archive(path, jobs=jobs)) if layout is None else None
        client = stack.enter_context(opts.client(ref.registry))
        bar = open_progress(stack, quiet=quiet, label=ref.familiar())
        if layout is not None:
            copied = transfer.copy(
                layout,
                RegistryRepository(client, ref, chunk_size=_chunk_size(chunk_size)),
                name=image_name,
                selection=Selection(all=True),  # an index whole, as the layout has it
                names=push_names(ref),
                jobs=jobs,
                progress=engine_bars(bar),
                retry=client.transport.retry,
            )
            result = PushResult(
                source=path,
                ref=ref,
                digest=copied.digest,
                media_type=copied.media_type,
                manifests=copied.manifests,
                stats=push_stats(copied.stats),
            )
        else:
            assert archive is not None
            pushed, copied = push_from(
                client,
                archive,
                ref,
                image_name,
                shown=f"{path}:{image_name}" if image_name else path,
                jobs=jobs,
                chunk_size=_chunk_size(chunk_size),
                progress=engine_bars(bar),
            )
            result = push_result(path, pushed, copied)
    if fmt == "json":
        emit_json(
            {
                "source": result.source,
                "reference": str(result.ref),
                "digest": str(result.digest),
                "mediaType": result.media_type,
                "manifests": [str(d) for d in result.manifests],
                **_stats_json(result.stats),
            }
        )
    elif not quiet:
        click.echo(
            f"Pushed {path} to {result.ref} ({result.digest}): {_stats_text(result.stats)}",
            err=True,
        )


@image_group.command("copy")
@click.argument("src_ref")
@click.argument("dst_ref")
@click.option("--all-platforms", is_flag=True, help="Copy a multi-platform index whole.")
@platform_option
@jobs_option
@chunk_size_option
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@format_option()
@connection_options
def image_copy(
    src_ref: str,
    dst_ref: str,
    all_platforms: bool,
    platform: str | None,
    jobs: int,
    chunk_size: int,
    quiet: bool,
    fmt: str,
    opts: Options,
) -> None:
    """Copy SRC_REF to DST_REF, registry to registry, preserving digests.

    Blobs stream straight through (nothing is stored locally) and are
    verified on the way; on one registry they are mounted instead.  Without
    --all-platforms one platform of an index is copied (--platform, default
    this machine's); a single image is copied whatever its platform, unless
    --platform names another.  DST_REF without a tag takes SRC_REF's.
    --username applies to the destination registry.  A path on disk is no
    reference: use image pull or image push for that (docker://REF forces a
    registry).

    \b
    Examples:
      derrick image copy docker.io/library/alpine:3.20 localhost:5000/mirror/alpine:3.20
      derrick image copy --all-platforms reg-a:5000/app:1 reg-b:5000/app:1 -j 8
    """
    if all_platforms and platform:
        raise UsageError("--platform and --all-platforms exclude each other")
    _refuse_local_paths(src_ref, dst_ref)
    src = parse_ref(src_ref.removeprefix("docker://"))
    dst = Reference.parse(dst_ref.removeprefix("docker://"), default_tag=None)
    wanted = parse_platform(platform)
    selection = Selection(all=all_platforms, platforms=(wanted,) if wanted else ())
    names: tuple[ImageName, ...] | None = None  # none given: SRC's tag
    if dst.digest is not None:
        names = ()
    elif dst.tag is not None:
        names = (ImageName(dst.name, dst.tag),)
    with opts.client(dst.registry) as client, contextlib.ExitStack() as stack:
        bar = open_progress(stack, quiet=quiet, label=dst.familiar())
        result = transfer.copy(
            RegistryRepository(client, src),
            RegistryRepository(client, dst, chunk_size=_chunk_size(chunk_size)),
            selection=selection,
            names=names,
            jobs=jobs,
            progress=engine_bars(bar),
            retry=client.transport.retry,
        )
    tag = next((n.tag for n in result.plan.entries[0].names if n.tag), None)
    shown = dst.with_tag(tag) if dst.digest is None and tag else dst.with_digest(result.digest)
    stats = push_stats(result.stats)
    if fmt == "json":
        emit_json(
            {
                "source": str(src),
                "destination": str(shown),
                "digest": str(result.digest),
                "mediaType": result.media_type,
                "manifests": [str(d) for d in result.manifests],
                **_stats_json(stats),
            }
        )
    elif not quiet:
        click.echo(f"Copied {src} to {shown} ({result.digest}): {_stats_text(stats)}", err=True)


# -- tag ---------------------------------------------------------------------------------------


@tag_group.command("add")
@click.argument("reference")
@click.argument("tags", nargs=-1, required=True)
@format_option()
@connection_options
def tag_add(reference: str, tags: tuple[str, ...], fmt: str, opts: Options) -> None:
    """Put TAGS on the image REFERENCE names, in the same repository.

    Only the manifest is read and written again; no blob moves.
    "derrick tag REF NEWTAG" is short for "derrick tag add REF NEWTAG".

    \b
    Example:
      derrick tag localhost:5000/team/app:1.0 stable latest
    """
    ref = parse_ref(reference)
    targets = [ref.with_tag(t) for t in tags]
    with opts.client(ref.registry) as client:
        got = tag_image(client, ref, tags)
    if fmt == "json":
        emit_json({"digest": str(got.digest), "tagged": [str(t) for t in targets]})
    else:
        for t in targets:
            click.echo(f"Tagged {t} ({got.digest})", err=True)


# -- delete ------------------------------------------------------------------------------------


@manifest_group.command("delete")
@click.argument("reference")
@format_option()
@connection_options
def manifest_delete(reference: str, fmt: str, opts: Options) -> None:
    """Delete the manifest REFERENCE names (a tag is resolved to its digest).

    Every tag on that manifest goes with it.

    \b
    Example:
      derrick manifest delete localhost:5000/team/app@sha256:4f1c…
    """
    ref = parse_ref(reference)
    with opts.client(ref.registry) as client:
        if ref.digest is None:
            ref = ref.with_digest(client.head_manifest(ref).descriptor.digest)
        client.delete_manifest(ref)
    if fmt == "json":
        emit_json({"deleted": str(ref), "digest": str(ref.digest)})
    else:
        click.echo(f"Deleted manifest {ref.digest} from {ref.name}", err=True)


@blob_group.command("put")
@click.argument("repository")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@chunk_size_option
@format_option()
@connection_options
def blob_put(repository: str, file: Path, chunk_size: int, fmt: str, opts: Options) -> None:
    """Upload FILE as a blob of REPOSITORY and print its digest.

    A blob the repository already has is not sent again.  The size the
    registry reports afterwards is checked.

    \b
    Example:
      derrick blob put localhost:5000/team/app ./config.json
    """
    ref = parse_ref(repository)
    with opts.client(ref.registry) as client:
        desc, uploaded = put_blob(client, ref, file, chunk_size=_chunk_size(chunk_size))
    if fmt == "json":
        emit_json({"digest": str(desc.digest), "size": desc.size, "uploaded": uploaded})
    else:
        click.echo(str(desc.digest))


@blob_group.command("delete")
@click.argument("repository")
@click.argument("digest")
@connection_options
def blob_delete(repository: str, digest: str, opts: Options) -> None:
    """Delete blob DIGEST from REPOSITORY.

    \b
    Example:
      derrick blob delete localhost:5000/team/app sha256:4f1c…
    """
    ref = parse_ref(repository)
    dg = Digest.parse(digest)
    with opts.client(ref.registry) as client:
        client.delete_blob(ref, dg)
    click.echo(f"Deleted blob {dg} from {ref.name}", err=True)
