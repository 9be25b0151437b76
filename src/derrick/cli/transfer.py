"""Commands that move whole images: ``image copy``, and its spellings ``image pull``,
``image push`` and ``image save``.

Each is one copy by the engine (:func:`derrick.images.engine.copy_many`), run by
:func:`derrick.cli.copying.run_copy`; they differ in how their arguments name the source
and the destination, and in the summary they print.
"""

from __future__ import annotations

from typing import Any

import click

from derrick.cli.common import Options, connection_options, emit_json, human_size
from derrick.cli.copying import (
    KINDS,
    Copied,
    CopyFlags,
    copy_flags,
    format_and_kind_option,
    kind_of,
    local_destination,
    named_at,
    registry_location,
    run_copy,
    sources_of,
    stats_json,
    stats_text,
    warn_same_tag,
)
from derrick.cli.groups import image_group
from derrick.errors import UsageError
from derrick.images.locations import Location, parse_location
from derrick.images.model import CopyResult


def _output(fmt: str, as_json: bool = False) -> tuple[str, str | None]:
    """``--format`` of a copying command: the output (text or json) and the destination
    kind it names instead, when it is the hidden alias."""
    if fmt in KINDS:
        return ("json" if as_json else "text"), fmt
    return ("json" if as_json else fmt), None


@image_group.command("copy")
@click.argument("src")
@click.argument("dst")
@click.option(
    "--all-tags",
    is_flag=True,
    help="Copy every tag of the repository SRC to the repository DST, skipping tags whose "
    "digest DST already has (HEAD requests only).",
)
@copy_flags(chunk_size=True)
@format_and_kind_option()
@connection_options
def image_copy(
    src: str, dst: str, all_tags: bool, flags: CopyFlags, fmt: str, opts: Options
) -> None:
    """Copy the image SRC to DST, between registries and places on disk, digests preserved.

    \b
    SRC and DST are each one of:
      REF, docker://REF               a registry (DST without a tag keeps SRC's)
      oci:DIR[:NAME], ./DIR, /DIR     an OCI layout (NAME: tag, full name or digest)
      oci-archive:FILE[:NAME]         an OCI archive
      docker-archive:FILE[:NAME:TAG]  a docker-archive (docker save / docker load)
      FILE.tar                        an archive (a new one: a docker-archive)
      oci-archive:-, docker-archive:- standard output (DST only)
    A bare word such as "app" is a registry reference (docker.io/library/app);
    write ./app for a directory.

    Blobs are verified on the way; between repositories of one registry they
    are mounted; copies from a registry to disk go through the blob cache and
    resume after an interruption.  Nothing appears under its final name until
    complete.  To a registry an index is copied whole, to disk this machine's
    platform is taken (see --platform).  Copying a tag onto itself with fewer
    platforms is refused.  --username applies to DST's registry when it is
    one, else to SRC's.

    \b
    Examples:
      derrick image copy docker.io/library/alpine:3.20 localhost:5000/mirror/alpine
      derrick image copy localhost:5000/app:1.0 oci-archive:app.tar --all-platforms
      derrick image copy app.tar:app:1.0 localhost:5000/team/app
      derrick image copy --all-tags reg-a:5000/app reg-b:5000/app
    """
    output, _ = _output(fmt)
    if all_tags:
        from derrick.cli.sync import copy_all_tags

        copy_all_tags(src, dst, flags, output, opts)
        return
    source = parse_location(src)
    dest = parse_location(dst, destination=True)
    label = str(dest.reference.familiar()) if dest.reference else dest.text
    copied = run_copy(flags.request(sources_of([src]), dest, label), opts)
    shown_src = str(source.reference) if source.reference else src
    _copy_summary(shown_src, dest, copied, output, flags.quiet)
    warn_same_tag(copied, dest.path or dst)


def _copy_summary(source: str, dest: Location, copied: Copied, output: str, quiet: bool) -> None:
    result = copied.result
    named = named_at(dest, copied)
    upload = dest.is_registry
    if output == "json":
        emit_json(
            {
                "source": source,
                "destination": named,
                "digest": str(result.digest),
                "mediaType": result.media_type,
                "manifests": [str(d) for d in result.manifests],
                **stats_json(result.stats, upload=upload),
            }
        )
    elif not quiet and not dest.is_stream:
        summary = stats_text(result.stats, upload=upload)
        click.echo(f"Copied {source} to {named} ({result.digest}): {summary}", err=True)


@image_group.command("pull")
@click.argument("reference")
@click.option(
    "-o",
    "--output",
    "dest",
    required=True,
    help="Where: a directory (OCI layout), FILE.tar (docker-archive), oci:DIR, "
    "oci-archive:FILE, docker-archive:FILE, or oci-archive:- / docker-archive:- for "
    "standard output.",
)
@format_and_kind_option(*KINDS)
@click.option("--json", "as_json", is_flag=True, hidden=True)
@copy_flags()
@connection_options
def image_pull(
    reference: str, dest: str, fmt: str, as_json: bool, flags: CopyFlags, opts: Options
) -> None:
    """Pull REFERENCE to disk as an OCI layout, OCI archive or docker-archive.

    The same as "image copy REFERENCE DEST".  Blobs are verified, downloaded
    in parallel, cached and resumed after an interruption; the output appears
    under its final name only when complete.  Without --platform, this
    machine's platform is taken from a multi-platform index.

    \b
    Examples:
      derrick image pull localhost:5000/app:1.0 -o ./app-layout
      derrick image pull alpine:3.20 -o alpine.tar            # docker load -i alpine.tar
      derrick image pull app:1.0 -o oci-archive:- | gzip > app.oci.tgz
    """
    output, kind = _output(fmt, as_json)
    source = registry_location(reference)
    loc = local_destination(dest, kind)
    assert source.reference is not None
    copied = run_copy(flags.request([(source, None)], loc, source.reference.familiar()), opts)
    result = copied.result
    if output == "json":
        emit_json(
            {
                "reference": str(source.reference),
                "destination": dest,
                "format": kind_of(loc),
                "digest": str(result.digest),
                "manifests": [str(img.digest) for img in result.images],
                "downloadedBytes": result.stats.copied_bytes,
            }
        )
    elif not loc.is_stream:
        click.echo(
            f"Pulled {source.reference} ({result.digest}) to {dest} as {kind_of(loc)}, "
            f"{human_size(result.stats.copied_bytes)} downloaded",
            err=True,
        )
    warn_same_tag(copied, loc.path or dest)


@image_group.command("push")
@click.argument("src")
@click.argument("reference")
@click.option(
    "--tag",
    "name",
    help="Which image of SRC to push: its tag (ref name), RepoTag or image ID.",
)
@copy_flags(platforms=False, chunk_size=True, cache=False)
@format_and_kind_option()
@connection_options
def image_push(
    src: str, reference: str, name: str | None, flags: CopyFlags, fmt: str, opts: Options
) -> None:
    """Push an image from SRC on disk to REFERENCE.

    The same as "image copy SRC REFERENCE".  SRC is an OCI layout directory,
    an OCI archive or a docker-archive (docker save, legacy or OCI style).
    Pick one of several images with SRC:NAME or --tag: a tag (ref name) of a
    layout, a RepoTag or image ID (12 or more hex digits) of a docker-archive;
    the only one is the default.  An index is pushed whole.  REFERENCE
    without a tag takes the image's tag in SRC (an untagged image needs one
    given).  Digests are preserved.

    \b
    Examples:
      derrick image push ./app-layout:1.0 localhost:5000/team/app
      derrick image push app.tar:app:1.0 localhost:5000/team/app
      derrick image push untagged.tar localhost:5000/team/app:1.0
    """
    output, _ = _output(fmt)
    source = parse_location(src, local=True)
    if name is not None and source.name is not None:
        raise UsageError(f"the image is named twice: {source.name!r} in SRC and {name!r} by --tag")
    dest = registry_location(reference, destination=True)
    assert dest.reference is not None
    sources = [(source, source.name if name is None else name)]
    result = run_copy(flags.request(sources, dest, dest.reference.familiar()), opts)
    copied = result.result
    named = named_at(dest, result)
    if output == "json":
        emit_json(_push_json(source.path or src, named, copied))
    elif not flags.quiet:
        click.echo(
            f"Pushed {source.path} to {named} ({copied.digest}): "
            f"{stats_text(copied.stats, upload=True)}",
            err=True,
        )


def _push_json(source: str, named: str, copied: Any) -> dict[str, Any]:
    stats = stats_json(copied.stats, upload=True)
    return {
        "source": source,
        "reference": named,
        "digest": str(copied.digest),
        "mediaType": copied.media_type,
        "manifests": [str(d) for d in copied.manifests],
        **{k: stats[k] for k in ("uploadedBlobs", "uploadedBytes", "mountedBlobs", "skippedBlobs")},
    }


@image_group.command("save")
@click.argument("images", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    "dest",
    required=True,
    help="The archive to write: FILE (a docker-archive), oci-archive:FILE, or - for "
    "standard output.",
)
@format_and_kind_option("oci-archive", "docker-archive")
@copy_flags()
@connection_options
def image_save(
    images: tuple[str, ...], dest: str, fmt: str, flags: CopyFlags, opts: Options
) -> None:
    """Save IMAGES into one archive, as "docker save A B" does.

    Each image is any SRC "image copy" takes (a registry reference, an OCI
    layout, an archive), named in the archive as in its source.  The archive
    is a docker-archive (docker load, podman load), or an OCI archive with
    oci-archive:FILE (or --format oci-archive), which also holds whole
    multi-platform indexes (--all-platforms).  Each blob is stored once.

    \b
    Examples:
      derrick image save alpine:3.20 busybox:1.36 -o base.tar
      derrick image save app:1.0 app:1.1 -o oci-archive:app.tar --all-platforms
      derrick image save app:1.0 -o - | ssh host docker load
    """
    output, kind = _output(fmt)
    loc = local_destination(dest, kind, "docker-archive")
    if loc.kind == "oci":
        raise UsageError(f"{dest} is a directory: image save writes one archive file")
    sources = sources_of(images)
    result = run_copy(flags.request(sources, loc, dest, [None] * len(sources)), opts).result
    if output == "json":
        emit_json(_save_json(dest, kind_of(loc), images, result))
    elif not loc.is_stream and not flags.quiet:
        n = len({e.top.digest for e in result.plan.entries})  # an image named twice is one
        click.echo(
            f"Saved {n} image{'s' if n != 1 else ''} to {dest} as {kind_of(loc)}, "
            f"{human_size(result.stats.copied_bytes)} downloaded",
            err=True,
        )


def _save_json(dest: str, kind: str, images: tuple[str, ...], result: CopyResult) -> dict[str, Any]:
    return {
        "destination": dest,
        "format": kind,
        "images": [
            {"source": text, "digest": str(e.top.digest), "names": [str(n) for n in e.names]}
            for text, e in zip(images, result.plan.entries, strict=True)
        ],
        "downloadedBytes": result.stats.copied_bytes,
    }
