"""What ``derrick sync`` mirrors: the configuration file's schema, read and checked up front.

A configuration is YAML (every key below is optional unless it says otherwise)::

    defaults:                          # applies to every source that does not say otherwise
      platforms: [linux/amd64, linux/arm64]   # default "all": indexes whole, byte for byte
      digest-tags: false               # also copy sha256-<hex>.sig/.att/.sbom tags
      tags: {exclude: ['.*-rc.*']}     # tag selection (below), key by key
      destination:
        registry: mirror.example:5000  # a registry ... (host[:port])
        oci: /srv/mirror               # ... or an OCI layout directory (one of the two)
        prefix: hub                    # put before every repository path
        strip-registry: true           # false: the source registry becomes part of the path
    sources:                           # required: a list
      - repository: docker.io/library/alpine     # one repository ...
        tags:
          list: ["3.19", "3.20", "sha256:<hex>"]  # these tags (and digests) only
          include: ['3\\.\\d+']        # regular expressions a whole tag must match (any)
          exclude: ['.*-rc\\d*']       # ... and must not match (none)
          semver: ">=3.18 <4"          # a version range (see derrick.semver)
          newest: 3                    # the highest 3 versions of what is left
          pins: {"3.18": "sha256:<hex>"}   # this tag is this digest, whatever the source says
      - namespace: registry.example:5000/team    # ... or every repository under it (catalog)
        destination: {repository: other/name}   # a source may name its one destination

``tags`` may also be a plain list (the ``list`` form).  Without ``list``, the tags are the
ones the source lists, then ``include``, ``exclude``, ``semver`` and ``newest`` apply in
that order; pins are added after.  A destination repository is ``prefix/`` + the source's
repository path (``library/alpine``), with ``registry/`` before the path when
``strip-registry`` is false, unless the source names ``repository``.  A source whose
``destination`` names a ``registry`` or an ``oci`` layout takes none of the defaults'
destination keys.

``${NAME}`` in any value is replaced by the environment variable ``NAME`` (an unset one is
an error).  No secret belongs here: credentials come from Docker's ``config.json`` (and
its credential helpers) or from the caller.  Every error names the file, the line and the
key, in one line.

A mirror keeps every platform: without ``platforms`` an index is copied whole (its digest
kept), to a registry and to an OCI layout alike; ``platforms`` narrows it to those.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from derrick.digest import Digest
from derrick.errors import UsageError
from derrick.images.locations import parse_location
from derrick.images.model import Selection
from derrick.reference import parse_repository
from derrick.semver import Range, newest, parse_version

__all__ = [
    "ALL_PLATFORMS",
    "Destination",
    "SourceSpec",
    "SyncConfig",
    "TagSelection",
    "load_config",
    "one_off",
    "parse_config",
]


#: What a mirror copies of an index unless told otherwise: all of it, byte for byte.
ALL_PLATFORMS = Selection(all=True)


@dataclass(frozen=True)
class TagSelection:
    """Which tags of a source repository are mirrored (see the module docstring)."""

    explicit: tuple[str, ...] = ()  # the ``list`` key
    include: tuple[re.Pattern[str], ...] = ()
    exclude: tuple[re.Pattern[str], ...] = ()
    semver: Range | None = None
    newest: int | None = None
    pins: tuple[tuple[str, Digest], ...] = ()

    @property
    def needs_listing(self) -> bool:
        """Whether the source's tag list is needed (not when the tags are listed here)."""
        return not self.explicit and not (self.pins and not self._filters)

    @property
    def _filters(self) -> bool:
        return bool(self.include or self.exclude or self.semver or self.newest is not None)

    def choose(self, tags: list[str]) -> tuple[list[str], list[str]]:
        """The tags (and digests) chosen from ``tags`` in order, and those filtered out."""
        candidates = list(self.explicit) if self.explicit else list(tags)
        if self.pins and not self.explicit and not self._filters:
            candidates = []  # pins alone name everything to copy
        kept = [t for t in candidates if self._passes(t)]
        if self.newest is not None:
            pre = self.semver is not None and self.semver.prerelease
            top = set(newest(kept, self.newest, prerelease=pre))
            kept = [t for t in kept if t in top]
        pinned = {tag for tag, _ in self.pins}
        kept = [t for t in kept if t not in pinned]
        chosen = set(kept)
        return kept, [t for t in tags if t not in chosen and t not in pinned]

    def _passes(self, tag: str) -> bool:
        if self.include and not any(p.fullmatch(tag) for p in self.include):
            return False
        if any(p.fullmatch(tag) for p in self.exclude):
            return False
        if self.semver is not None:
            v = parse_version(tag)
            return v is not None and self.semver.matches(v)
        return True


@dataclass(frozen=True)
class Destination:
    """Where a source's images go: a registry (``registry``) or an OCI layout (``layout``)."""

    registry: str | None = None
    layout: Path | None = None
    prefix: str = ""
    strip_registry: bool = True
    repository: str | None = None  # exactly this repository (no rewrite)

    def repository_for(self, registry: str, repository: str) -> str:
        """The destination repository path of the source ``registry/repository``."""
        if self.repository:
            return self.repository
        path = repository if self.strip_registry else f"{registry}/{repository}"
        return f"{self.prefix.strip('/')}/{path}" if self.prefix.strip("/") else path

    def __str__(self) -> str:
        return f"oci:{self.layout}" if self.layout is not None else str(self.registry)


@dataclass(frozen=True)
class SourceSpec:
    """One entry of ``sources``: a repository, or a namespace of a registry (catalog)."""

    registry: str
    repository: str | None  # None: every repository under ``namespace``
    namespace: str | None
    destination: Destination
    tags: TagSelection = field(default_factory=TagSelection)
    selection: Selection = ALL_PLATFORMS
    digest_tags: bool = False
    where: str = ""  # FILE:LINE of the entry, for messages

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository or self.namespace}"


@dataclass(frozen=True)
class SyncConfig:
    """A whole configuration: the sources, each with everything it needs."""

    sources: tuple[SourceSpec, ...]
    origin: str = "the command line"

    def with_digest_tags(self) -> SyncConfig:
        return replace(self, sources=tuple(replace(s, digest_tags=True) for s in self.sources))


def one_off(
    source: str,
    destination: str,
    *,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    selection: Selection | None = None,
    digest_tags: bool = False,
) -> SyncConfig:
    """The configuration of a one-off sync of the repository ``source`` into
    ``destination``: a registry repository (tags keep their names) or an OCI layout
    (``oci:DIR``, or a plain path to a directory; each image named ``repository:tag``).
    ``include`` and ``exclude`` are tag patterns; ``selection`` defaults to every platform.
    """
    if source.startswith(("oci:", "oci-archive:", "docker-archive:", "/", "./", "../", "~/")):
        raise UsageError(
            f"{source} is a place on disk, and a sync copies from a registry repository",
            hint="give REGISTRY/REPOSITORY; an image on disk is copied, not synced",
        )
    registry, repository = parse_repository(source.removeprefix("docker://"))
    tags = TagSelection(
        include=tuple(_regex(p, "to include") for p in include),
        exclude=tuple(_regex(p, "to exclude") for p in exclude),
    )
    spec = SourceSpec(
        registry,
        repository,
        None,
        _one_off_destination(destination),
        tags,
        selection if selection is not None else Selection(all=True),
        digest_tags,
        "argument",
    )
    return SyncConfig((spec,))


def _one_off_destination(text: str) -> Destination:
    """A destination as written after the source: a repository, or an OCI layout."""
    loc = parse_location(text, destination=True)
    if loc.is_registry:
        ref = loc.reference
        assert ref is not None
        if ref.tag is not None or ref.digest is not None:
            what = f":{ref.tag}" if ref.tag is not None else f"@{ref.digest}"
            raise UsageError(
                f"{text}: a sync destination is a repository, without a tag or digest ({what})",
                hint="the tags keep their names",
            )
        return Destination(registry=ref.registry, repository=ref.repository)
    if loc.kind != "oci":
        raise UsageError(
            f"{text}: sync writes into a registry repository or an OCI layout directory, "
            "not an archive",
            hint="write REGISTRY/REPOSITORY or oci:DIR",
        )
    if loc.name is not None:
        raise UsageError(
            f"{text}: a sync into an OCI layout names each image itself (repository:tag)",
            hint=f"write oci:{loc.path}",
        )
    assert loc.path is not None
    return Destination(layout=Path(loc.path), strip_registry=False)


def _regex(pattern: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UsageError(
            f"the tag pattern {what} {pattern!r} is not a valid regular expression: {e}"
        ) from None


# -- the file --------------------------------------------------------------------------------


def load_config(path: Path, env: Mapping[str, str] | None = None) -> SyncConfig:
    """Read and check the configuration file ``path`` (see the module docstring)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    return parse_config(text, str(path), env)


def parse_config(text: str, name: str, env: Mapping[str, str] | None = None) -> SyncConfig:
    """Check the YAML ``text`` of the file called ``name`` (see :mod:`derrick.ops.syncyaml`)."""
    from derrick.ops.syncyaml import read_config  # PyYAML: only sync pays for it

    return read_config(text, name, os.environ if env is None else env)
