"""The command groups, which load a command's module only when it is run or asked for help.

``derrick --version`` and ``derrick --help`` thus import no HTTP stack, and ``derrick tag
ls`` none of the code for pulling, pushing or unpacking.  Each group lists its commands
in :data:`COMMANDS`: the module and function of each, and the first sentence of its help
for the command list (tests check that both stay true).  A command module registers its
commands on these groups as it is imported (``@image_group.command("pull")``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import click


class LazyGroup(click.Group):
    """A group whose commands are imported from ``lazy`` (name -> module, function, help)
    when first asked for."""

    def __init__(
        self, *args: object, lazy: Mapping[str, tuple[str, str, str]] | None = None, **kw: object
    ) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module, function, _ = self.lazy[cmd_name]
            command = getattr(importlib.import_module(module), function)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            # A command not loaded yet is listed with its help sentence, shortened as click does.
            command = self.commands.get(name) or click.Command(name, help=self.lazy[name][2])
            if not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class _TagGroup(LazyGroup):
    """``derrick tag ls REPO``, plus ``derrick tag REF NEWTAG`` as short for ``tag add``."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.list_commands(ctx):
            add = self.get_command(ctx, "add")
            if add is not None:
                return "add", add, args
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.MissingParameter as e:
            if e.param is None or e.param.name != "tags":
                raise
            from derrick.errors import UsageError

            image = (e.ctx.params.get("reference") if e.ctx is not None else None) or "REFERENCE"
            raise UsageError(
                f"no new tag given for {image}",
                hint=f"name the tags to add after the image: derrick tag {image} NEWTAG",
            ) from None


_READ, _WRITE, _MOVE, _FS = (f"derrick.cli.{m}" for m in ("read", "write", "transfer", "fs"))

#: group -> command -> (module, function, first sentence of its help)
COMMANDS: dict[str, dict[str, tuple[str, str, str]]] = {
    "tag": {
        "ls": (_READ, "tag_ls", "List the tags of REPOSITORY."),
        "add": (
            _WRITE,
            "tag_add",
            "Put TAGS on the image REFERENCE names, in the same repository.",
        ),
    },
    "repo": {
        "ls": (_READ, "repo_ls", "List the repositories of REGISTRY (its catalog)."),
    },
    "manifest": {
        "get": (_READ, "manifest_get", "Show the manifest (or index) REFERENCE names."),
        "head": (
            _READ,
            "manifest_head",
            "Print the digest of REFERENCE without downloading the manifest.",
        ),
        "delete": (
            _WRITE,
            "manifest_delete",
            "Delete the manifest REFERENCE names (a tag is resolved to its digest).",
        ),
    },
    "blob": {
        "get": (
            _READ,
            "blob_get",
            "Download blob DIGEST of REPOSITORY, verified, to stdout or -o FILE.",
        ),
        "put": (_WRITE, "blob_put", "Upload FILE as a blob of REPOSITORY and print its digest."),
        "delete": (_WRITE, "blob_delete", "Delete blob DIGEST from REPOSITORY."),
    },
    "image": {
        "config": (_READ, "image_config", "Print the image configuration of REFERENCE."),
        "inspect": (
            _READ,
            "image_inspect",
            "Show platforms, layers and configuration of REFERENCE.",
        ),
        "pull": (
            _MOVE,
            "image_pull",
            "Pull REFERENCE to disk as an OCI layout, OCI archive or docker-archive.",
        ),
        "push": (_MOVE, "image_push", "Push an image from SRC on disk to REFERENCE."),
        "copy": (
            _MOVE,
            "image_copy",
            "Copy the image SRC to DST, between registries and places on disk, digests preserved.",
        ),
        "save": (_MOVE, "image_save", 'Save IMAGES into one archive, as "docker save A B" does.'),
        "unpack": (
            _FS,
            "image_unpack",
            "Unpack IMAGE's filesystem into DIRECTORY (which must be new or empty).",
        ),
        "export": (_FS, "image_export", "Write IMAGE's flattened filesystem as one tar file."),
        "diff": (
            _FS,
            "image_diff",
            "Compare the layers and flattened filesystems of IMAGE1 and IMAGE2.",
        ),
        "layers": (
            _FS,
            "image_layers",
            "Show each layer of IMAGE: the command that made it, its sizes, its largest files.",
        ),
    },
    "cache": {
        "info": (
            "derrick.cli.cache",
            "cache_info",
            "Show where the blob cache is and what it holds.",
        ),
        "prune": (
            "derrick.cli.cache",
            "cache_prune",
            "Remove every blob and partial download from the blob cache.",
        ),
    },
    # the top-level commands that are not groups
    "": {
        "ratelimit": (
            _READ,
            "ratelimit",
            "Show the pull rate limit the registry reports for REFERENCE (Docker Hub).",
        ),
        "sync": (
            "derrick.cli.sync",
            "sync_command",
            "Mirror the tags of SOURCE to DESTINATION, or everything CONFIG.yaml names.",
        ),
    },
}


@click.group(
    "tag",
    cls=_TagGroup,
    lazy=COMMANDS["tag"],
    # "derrick tag --insecure REF NEWTAG" goes to add
    context_settings={"ignore_unknown_options": True},
    short_help="List tags, or tag an image.",
)
def tag_group() -> None:
    """List tags of a repository, or tag an image: derrick tag REF NEWTAG."""


@click.group("repo", cls=LazyGroup, lazy=COMMANDS["repo"])
def repo_group() -> None:
    """List repositories of a registry."""


@click.group("manifest", cls=LazyGroup, lazy=COMMANDS["manifest"])
def manifest_group() -> None:
    """Read and delete manifests and indexes."""


@click.group("blob", cls=LazyGroup, lazy=COMMANDS["blob"])
def blob_group() -> None:
    """Read, upload and delete blobs (layers, configs) by digest."""


@click.group("image", cls=LazyGroup, lazy=COMMANDS["image"])
def image_group() -> None:
    """Whole images: config, copy, diff, export, inspect, layers, pull, push, save, unpack."""


@click.group("cache", cls=LazyGroup, lazy=COMMANDS["cache"])
def cache_group() -> None:
    """derrick's blob cache: what it holds, and emptying it."""


GROUPS = (tag_group, repo_group, manifest_group, blob_group, image_group, cache_group)
