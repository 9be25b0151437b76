"""The YAML side of the sync configuration (:mod:`derrick.ops.syncconfig` has the schema):
the file's nodes, composed by PyYAML with their lines, walked and checked into a
:class:`~derrick.ops.syncconfig.SyncConfig`.  Every error names the file, the line and the
key, in one line.  Values are read as written (``3.10`` stays the tag ``3.10``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from derrick.digest import Digest
from derrick.errors import DerrickError, Remedy, UsageError
from derrick.images.model import Selection
from derrick.manifest import Platform
from derrick.ops.syncconfig import ALL_PLATFORMS, Destination, SourceSpec, SyncConfig, TagSelection
from derrick.reference import parse_registry, parse_repository
from derrick.semver import Range

__all__ = ["read_config"]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_KEYS = frozenset({"username", "password", "auth", "token", "credentials"})


def read_config(text: str, name: str, env: Mapping[str, str]) -> SyncConfig:
    """The configuration in the YAML ``text`` of the file called ``name``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{name}{line}: not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{name}: not valid YAML: {e}") from None
    return _Reader(name, env).config(root)


class _Reader:
    """Walks the composed YAML nodes (which know their lines) and builds the config."""

    def __init__(self, name: str, env: Mapping[str, str]) -> None:
        self.name = name
        self.env = env

    def fail(
        self, node: yaml.Node | None, key: str, why: str, remedy: Remedy | None = None
    ) -> UsageError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        where = f"{key}: " if key else ""
        return UsageError(f"{self.name}{line}: {where}{why}", remedy=remedy)

    # -- node kinds ------------------------------------------------------------------------

    def mapping(self, node: yaml.Node, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
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
                    "credentials are not read from this file",
                    remedy=Remedy("saved-credentials"),
                )
            if k.value not in allowed:
                raise self.fail(k, sub, f"unknown key (known here: {', '.join(allowed)})")
            if k.value in out:
                raise self.fail(k, sub, "given twice")
            out[k.value] = (v, sub)
        return out

    def string(self, node: yaml.Node, key: str) -> str:
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
        if not isinstance(root, yaml.MappingNode):
            what = "a list" if isinstance(root, yaml.SequenceNode) else "plain text"
            raise self.fail(
                root,
                "",
                f"not a sync configuration: the file is {what}, where a configuration is "
                "YAML keys ('sources:', 'defaults:')",
            )
        top = self.mapping(root, "", ("defaults", "sources"))
        defaults: dict[str, Any] = {}
        if "defaults" in top:
            node, key = top["defaults"]
            defaults = self.mapping(node, key, ("platforms", "digest-tags", "tags", "destination"))
        if "sources" not in top:
            raise self.fail(root, "sources", "missing: list what to mirror")
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
        selection = ALL_PLATFORMS
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
        if dest.registry is not None:
            self._check_target(dest, registry, path, got.get("destination") or (node, key))
        where = f"{self.name}:{node.start_mark.line + 1}"
        if which == "repository":
            return SourceSpec(registry, path, None, dest, tags, selection, digest_tags, where)
        return SourceSpec(registry, None, path, dest, tags, selection, digest_tags, where)

    def _check_target(
        self, dest: Destination, registry: str, path: str, at: tuple[Any, str]
    ) -> None:
        """Refuse a destination repository that is no repository name (the source registry
        put in its path with a port, by strip-registry: false)."""
        target = f"{dest.registry}/{dest.repository_for(registry, path)}"
        try:
            parse_repository(target)
        except DerrickError as e:
            raise self.fail(
                at[0],
                at[1],
                f"the destination repository {target} is no repository name ({e.message}); "
                "a source registry with a port needs strip-registry: true, or a destination "
                "repository of its own",
            ) from None

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
                # a destination of its own: the defaults' prefix and strip-registry were
                # meant for the defaults' destination
                fields.clear()
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
