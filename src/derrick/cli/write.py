"""Commands that write to registries: tag, and deleting manifests and blobs, and uploading
a blob (whole images move with :mod:`derrick.cli.transfer`)."""

from __future__ import annotations

from pathlib import Path

import click

from derrick.cli.common import Options, connection_options, emit_json, format_option, parse_ref
from derrick.cli.groups import blob_group, manifest_group, tag_group
from derrick.cli.options import chunk_size_option
from derrick.digest import Digest

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
    from derrick.ops.tag import tag_image

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
def blob_put(repository: str, file: Path, chunk_size: int | None, fmt: str, opts: Options) -> None:
    """Upload FILE as a blob of REPOSITORY and print its digest.

    A blob the repository already has is not sent again.  The file is
    verified as it is read, and the size the registry reports afterwards is
    checked.

    \b
    Example:
      derrick blob put localhost:5000/team/app ./config.json
    """
    from derrick.ops.blobs import put_blob

    ref = parse_ref(repository)
    with opts.client(ref.registry) as client:
        desc, uploaded = put_blob(client, ref, file, chunk_size=chunk_size)
    if fmt == "json":
        emit_json({"digest": str(desc.digest), "size": desc.size, "uploaded": uploaded})
    else:
        click.echo(str(desc.digest))


@blob_group.command("delete")
@click.argument("repository")
@click.argument("digest")
@format_option()
@connection_options
def blob_delete(repository: str, digest: str, fmt: str, opts: Options) -> None:
    """Delete blob DIGEST from REPOSITORY.

    \b
    Example:
      derrick blob delete localhost:5000/team/app sha256:4f1c…
    """
    ref = parse_ref(repository)
    dg = Digest.parse(digest)
    with opts.client(ref.registry) as client:
        client.delete_blob(ref, dg)
    if fmt == "json":
        emit_json({"deleted": f"{ref.name}@{dg}", "digest": str(dg)})
    else:
        click.echo(f"Deleted blob {dg} from {ref.name}", err=True)
