"""What ``derrick sync`` mirrors: the configuration file's schema, read and checked up front.

A configuration is YAML (every key below is optional unless it says otherwise)::

    defaults:                          # applies to every source that does not say otherwise
      platforms: [linux/amd64, linux/arm64]   # or "all"; default: this machine's platform
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
``strip-registry`` is false, unless the source names ``repository``.

``${NAME}`` in any value is replaced by the environment variable ``NAME`` (an unset one is
an error).  No secret belongs here: credentials come from ``derrick login`` (Docker's
``config.json`` and credential helpers) or the command line.  Every error names the file,
the line and the key, in one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from derrick.digest import Digest
from derrick.errors import DerrickError, UsageError
from derrick.images.model import Selection
from derrick.manifest import Platform
from derrick.reference import parse_registry, parse_repository
from derrick.semver import Range, newest, parse_version

if TYPE_CHECKING:
    import yaml

__all__ = ["Destination", "SourceSpec", "SyncConfig", "TagSelection", "load_config", "one_off"]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_KEYS = frozenset({"username", "password", "auth", "token", "credentials"})


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
    selection: Selection = field(default_factory=Selection)
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
    """The configuration of ``derrick sync SRC_REPO DST``: DST a repository or ``oci:DIR``."""
    registry, repository = parse_repository(source)
    tags = TagSelection(
        include=tuple(_regex(p, "--tags") for p in include),
        exclude=tuple(_regex(p, "--exclude") for p in exclude),
    )
    if destination.startswith("oci:"):
        layout = destination.removeprefix("oci:")
        if not layout:
            raise UsageError("oci: needs a directory", hint="write oci:DIR")
        dest = Destination(layout=Path(layout), strip_registry=False)
    else:
        dreg, drepo = parse_repository(destination.removeprefix("docker://"))
        dest = Destination(registry=dreg, repository=drepo)
    spec = SourceSpec(
        registry, repository, None, dest, tags, selection or Selection(), digest_tags, "argument"
    )
    return SyncConfig((spec,))


def _regex(pattern: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UsageError(f"{what}: invalid regular expression {pattern!r}: {e}") from None


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
    """Check the YAML ``text`` of the file called ``name``."""
    import yaml  # only sync pays for it

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{name}{line}: not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{name}: not valid YAML: {e}") from None
    reader = _Reader(name, os.environ if env is None else env)
    return reader.config(root)


class _Reader:
    """Walks the composed YAML nodes (which know their lines) and builds the config."""

    def __init__(self, name: str, env: Mapping[str, str]) -> None:
        self.name = name
        self.env = env

    def fail(self, node: yaml.Node | None, key: str, why: str) -> UsageError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return UsageError(f"{self.name}{line}: {key}: {why}")

    # -- node kinds ------------------------------------------------------------------------

    def mapping(self, node: yaml.Node, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        import yaml

        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key, "must be a mapping (key: value)")
        out: dict[str, Any] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise self.fail(k, key, "keys must be plain words")
            sub = f"{key}.{k.value}" if key else k.value
            if k.value in _SECRET_KEYS:
                raise self.fail(
                    k,
                    sub,
                    "credentials are not read from this file: use 'derrick login' "
                    "(Docker's config.json) or --username and --password-stdin",
                )
            if k.value not in allowed:
                raise self.fail(k, sub, f"unknown key (known here: {', '.join(allowed)})")
            if k.value in out:
                raise self.fail(k, sub, "given twice")
            out[k.value] = (v, sub)
        return out

    def string(self, node: yaml.Node, key: str) -> str:
        import yaml

        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            raise self.fail(node, key, "must be a string")
        return _ENV.sub(lambda m: self._env(m.group(1), node, key), str(node.value))

    def _env(self, var: str, node: yaml.Node, key: str) -> str:
        value = self.env.get(var)
        if value is None:
            raise self.fail(node, key, f"the environment variable {var} is not set")
        return value

    def strings(self, node: yaml.Node, key: str) -> list[tuple[str, yaml.Node]]:
        """A string or a list of strings, each with its node."""
        import yaml

        if isinstance(node, yaml.SequenceNode):
            return [(self.string(n, f"{key}[{i}]"), n) for i, n in enumerate(node.value)]
        return [(self.string(node, key), node)]

    def boolean(self, node: yaml.Node, key: str) -> bool:
        if getattr(node, "tag", "") != "tag:yaml.org,2002:bool":
            raise self.fail(node, key, "must be true or false")
        return str(node.value).lower() in ("true", "yes", "on", "y")

    def integer(self, node: yaml.Node, key: str) -> int:
        value = self.string(node, key)
        if not value.isdigit() or int(value) < 1:
            raise self.fail(node, key, f"must be a whole number of at least 1, not {value!r}")
        return int(value)

    def digest(self, node: yaml.Node, key: str, value: str) -> Digest:
        try:
            return Digest.parse(value)
        except DerrickError as e:
            raise self.fail(node, key, str(e)) from None

    def checked(self, node: yaml.Node, key: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, with a derrick error it raises told at ``node``."""
        try:
            return fn()
        except DerrickError as e:
            raise self.fail(node, key, str(e)) from None

    # -- the schema ------------------------------------------------------------------------

    def config(self, root: yaml.Node | None) -> SyncConfig:
        if root is None:
            raise self.fail(None, "sources", "the file is empty: it needs a list of sources")
        top = self.mapping(root, "", ("defaults", "sources"))
        defaults: dict[str, Any] = {}
        if "defaults" in top:
            node, key = top["defaults"]
            defaults = self.mapping(node, key, ("platforms", "digest-tags", "tags", "destination"))
        if "sources" not in top:
            raise self.fail(root, "sources", "missing: list what to mirror")
        import yaml

        node, key = top["sources"]
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, key, "must be a list of sources, not empty")
        sources = tuple(self.source(n, f"sources[{i}]", defaults) for i, n in enumerate(node.value))
        return SyncConfig(sources, self.name)

    def source(self, node: yaml.Node, key: str, defaults: dict[str, Any]) -> SourceSpec:
        allowed = ("repository", "namespace", "platforms", "digest-tags", "tags", "destination")
        got = self.mapping(node, key, allowed)
        if ("repository" in got) == ("namespace" in got):
            raise self.fail(node, key, "give either repository or namespace")
        which = "repository" if "repository" in got else "namespace"
        vnode, vkey = got[which]
        value = self.string(vnode, vkey)
        registry, path = self.checked(vnode, vkey, lambda: parse_repository(value))
        merged = {**defaults, **got}
        selection = Selection()
        if "platforms" in merged:
            selection = self.platforms(*merged["platforms"])
        digest_tags = False
        if "digest-tags" in merged:
            digest_tags = self.boolean(*merged["digest-tags"])
        tags = self.tags(defaults.get("tags"), got.get("tags"))
        dest = self.destination(defaults.get("destination"), got.get("destination"), node, key)
        if which == "namespace" and dest.repository:
            rnode = got["destination"][0]
            raise self.fail(rnode, f"{key}.destination.repository", "a namespace has many")
        where = f"{self.name}:{node.start_mark.line + 1}"
        if which == "repository":
            return SourceSpec(registry, path, None, dest, tags, selection, digest_tags, where)
        return SourceSpec(registry, None, path, dest, tags, selection, digest_tags, where)

    def platforms(self, node: yaml.Node, key: str) -> Selection:
        items = self.strings(node, key)
        if [v for v, _ in items] == ["all"]:
            return Selection(all=True)
        wanted: list[Platform] = []
        for value, n in items:
            try:
                wanted.append(Platform.parse(value))
            except DerrickError as e:
                raise self.fail(n, key, str(e)) from None
        return Selection(platforms=tuple(wanted))

    def tags(self, default: tuple[Any, str] | None, own: tuple[Any, str] | None) -> TagSelection:
        result = TagSelection()
        for part in (default, own):
            if part is not None:
                result = self._tags(result, *part)
        return result

    def _tags(self, base: TagSelection, node: yaml.Node, key: str) -> TagSelection:
        import yaml

        if isinstance(node, yaml.SequenceNode):
            return replace(base, explicit=tuple(self._tag_list(node, key)))
        allowed = ("list", "include", "exclude", "semver", "newest", "pins")
        got = self.mapping(node, key, allowed)
        out = base
        if "list" in got:
            out = replace(out, explicit=tuple(self._tag_list(*got["list"])))
        if "include" in got:
            out = replace(out, include=self._patterns(*got["include"]))
        if "exclude" in got:
            out = replace(out, exclude=self._patterns(*got["exclude"]))
        if "semver" in got:
            snode, skey = got["semver"]
            text = self.string(snode, skey)
            out = replace(out, semver=self.checked(snode, skey, lambda: Range.parse(text)))
        if "newest" in got:
            out = replace(out, newest=self.integer(*got["newest"]))
        if "pins" in got:
            out = replace(out, pins=self._pins(*got["pins"]))
        return out

    def _tag_list(self, node: yaml.Node, key: str) -> list[str]:
        out = []
        for value, n in self.strings(node, key):
            if ":" in value:
                self.digest(n, key, value)
            elif not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", value):
                raise self.fail(n, key, f"{value!r} is neither a tag nor a digest")
            out.append(value)
        return out

    def _patterns(self, node: yaml.Node, key: str) -> tuple[re.Pattern[str], ...]:
        out = []
        for value, n in self.strings(node, key):
            try:
                out.append(re.compile(value))
            except re.error as e:
                raise self.fail(n, key, f"invalid regular expression {value!r}: {e}") from None
        return tuple(out)

    def _pins(self, node: yaml.Node, key: str) -> tuple[tuple[str, Digest], ...]:
        import yaml

        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key, "must map tags to digests (TAG: sha256:<hex>)")
        pins = []
        for k, v in node.value:
            tag = self.string(k, key)
            sub = f"{key}.{tag}"
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
                raise self.fail(k, sub, f"{tag!r} is not a tag")
            digest = self.string(v, sub)
            pins.append((tag, self.digest(v, sub, digest)))
        return tuple(pins)

    def destination(
        self,
        default: tuple[Any, str] | None,
        own: tuple[Any, str] | None,
        source: yaml.Node,
        source_key: str,
    ) -> Destination:
        fields: dict[str, Any] = {}
        for part, allowed in (
            (default, ("registry", "oci", "prefix", "strip-registry")),
            (own, ("registry", "oci", "prefix", "strip-registry", "repository")),
        ):
            if part is None:
                continue
            got = self.mapping(part[0], part[1], allowed)
            if "registry" in got and "oci" in got:
                raise self.fail(part[0], part[1], "give registry or oci, not both")
            if "registry" in got or "oci" in got:
                fields.pop("registry", None)
                fields.pop("oci", None)
            fields.update(got)
        dest = Destination()
        if "registry" in fields:
            n, k = fields["registry"]
            value = self.string(n, k)
            dest = replace(dest, registry=self.checked(n, k, lambda: parse_registry(value)))
        elif "oci" in fields:
            n, k = fields["oci"]
            dest = replace(dest, layout=Path(self.string(n, k)), strip_registry=False)
        else:
            raise self.fail(source, f"{source_key}.destination", "missing: a registry or oci")
        if "strip-registry" in fields:
            dest = replace(dest, strip_registry=self.boolean(*fields["strip-registry"]))
        if "prefix" in fields:
            n, k = fields["prefix"]
            dest = replace(dest, prefix=self._path(n, k, dest))
        if "repository" in fields:
            n, k = fields["repository"]
            dest = replace(dest, repository=self._path(n, k, dest))
        return dest

    def _path(self, node: yaml.Node, key: str, dest: Destination) -> str:
        value = self.string(node, key).strip("/")
        host = dest.registry or "localhost"
        self.checked(node, key, lambda: parse_repository(f"{host}/{value}"))
        return value
