"""Image references: ``[registry/]repository[:tag][@digest]``.

Parsing and normalisation follow the Docker distribution reference grammar as
applied by ``ParseNormalizedNamed``::

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [ domain "/" ] path-component [ "/" path-component ]*
    domain           := host [ ":" port-number ]
    host             := domain-name | "[" IPv6-address "]"
    domain-name      := domain-component [ "." domain-component ]*
    domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
    port-number      := [0-9]+
    path-component   := alpha-numeric [ separator alpha-numeric ]*
    alpha-numeric    := [a-z0-9]+
    separator        := [_.] | "__" | [-]+
    tag              := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}

The first ``/``-separated component names the registry when it contains ``.``
or ``:``, is ``localhost`` or contains an uppercase letter; otherwise the
registry is Docker Hub (``docker.io``), where a one-component repository lives
under ``library/``.  ``index.docker.io`` is the same registry as ``docker.io``.
With neither tag nor digest the tag defaults to ``latest``.  The repository
path is at most 255 characters long.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from derrick.digest import Digest
from derrick.errors import InvalidDigestError, InvalidReferenceError, UsageError

__all__ = [
    "DEFAULT_REGISTRY",
    "DEFAULT_TAG",
    "DOCKER_HUB_API_HOST",
    "LEGACY_DEFAULT_REGISTRY",
    "MAX_REPOSITORY_LENGTH",
    "MAX_TAG_LENGTH",
    "OFFICIAL_REPOSITORY_PREFIX",
    "Reference",
    "bare_registry",
    "parse_registry",
    "parse_repository",
    "validate_tag",
]

DEFAULT_REGISTRY = "docker.io"
LEGACY_DEFAULT_REGISTRY = "index.docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
OFFICIAL_REPOSITORY_PREFIX = "library/"
DEFAULT_TAG = "latest"
MAX_REPOSITORY_LENGTH = 255
MAX_TAG_LENGTH = 128

REFERENCE_HINT = (
    "a reference looks like [registry/]repository[:tag][@digest], "
    "e.g. docker.io/library/alpine:3.20"
)
REPOSITORY_HINT = (
    "a repository looks like [registry/]repository, e.g. docker.io/library/alpine or "
    "localhost:5000/team/app"
)
REGISTRY_HINT = "a registry is host[:port], e.g. docker.io, ghcr.io or localhost:5000"
_TAG_RULE = (
    'a tag is 1 to 128 letters, digits, "_", "." and "-", and does not start with "." or "-"'
)
_PATH_RULE = (
    "repository path components are lowercase letters and digits, joined by "
    '".", "_", "__" or dashes, between single "/"'
)

_DOMAIN_NAME_RE = re.compile(
    r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
)
_IPV6_RE = re.compile(r"\[[a-fA-F0-9:]+\]")
_PORT_RE = re.compile(r"[0-9]+")
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")

_MAX_SHOWN = 300


def _q(value: str) -> str:
    """``value`` double-quoted and escaped for an error message, cut if very long."""
    if len(value) > _MAX_SHOWN:
        return json.dumps(value[:_MAX_SHOWN], ensure_ascii=False)[:-1] + '…"'
    return json.dumps(value, ensure_ascii=False)


class _Invalid(Exception):
    """One part of an input is invalid; the public functions add what the input was."""

    def __init__(self, detail: str, hint: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint


def _fail(kind: str, value: str, problem: _Invalid, default_hint: str) -> InvalidReferenceError:
    return InvalidReferenceError(
        f"invalid {kind} {_q(value)}: {problem.detail}", hint=problem.hint or default_hint
    )


# -- the parts -----------------------------------------------------------------------------


def _check_tag(tag: str) -> None:
    if tag == "":
        raise _Invalid('invalid tag "": tag is empty', _TAG_RULE)
    if len(tag) > MAX_TAG_LENGTH:
        raise _Invalid(
            f"invalid tag {_q(tag)}: longer than {MAX_TAG_LENGTH} characters ({len(tag)})",
            _TAG_RULE,
        )
    if not _TAG_RE.fullmatch(tag):
        raise _Invalid(f"invalid tag {_q(tag)}", _TAG_RULE)


def _check_registry(registry: str) -> None:
    """Check ``host[:port]`` against the grammar."""
    if registry == "":
        raise _Invalid("registry is empty", REGISTRY_HINT)
    if registry.startswith("["):
        end = registry.find("]")
        host, rest = (registry, "") if end < 0 else (registry[: end + 1], registry[end + 1 :])
        if not _IPV6_RE.fullmatch(host):
            raise _Invalid(
                f"invalid IPv6 address {_q(host)} in registry {_q(registry)}",
                "an IPv6 registry looks like [fc00::1]:5000 (no zone, no embedded IPv4)",
            )
        if rest and not rest.startswith(":"):
            raise _Invalid(f"invalid registry {_q(registry)}", REGISTRY_HINT)
        port = rest[1:] if rest else None
    else:
        host, sep, port_part = registry.partition(":")
        port = port_part if sep else None
        if port is not None and ":" in port:
            raise _Invalid(
                f"invalid registry {_q(registry)}: too many colons",
                "put an IPv6 address in brackets, e.g. [fc00::1]:5000",
            )
        if not _DOMAIN_NAME_RE.fullmatch(host):
            raise _Invalid(
                f"invalid registry host {_q(host)}",
                "a registry host is a DNS name or IP address: letters, digits, "
                '"-" and "." (no "-" at either end of a label), e.g. registry.example.com',
            )
    if port is not None and not _PORT_RE.fullmatch(port):
        raise _Invalid(
            f"invalid port {_q(port)} in registry {_q(registry)}: not a number", REGISTRY_HINT
        )
    if port is not None and not 1 <= int(port) <= 65535:
        raise _Invalid(
            f"invalid port {port} in registry {_q(registry)}: a port is 1 to 65535", REGISTRY_HINT
        )


def _check_path(path: str) -> None:
    """Check a repository path (already normalised) against the grammar."""
    if path == "":
        raise _Invalid("repository name is empty", REFERENCE_HINT)
    if any("A" <= c <= "Z" for c in path):
        raise _Invalid(
            f"repository name must be lowercase, got {_q(path)}",
            "only the registry part may contain uppercase letters; " + REFERENCE_HINT,
        )
    if path.startswith("/"):
        raise _Invalid('repository name must not start with "/"', REFERENCE_HINT)
    if path.endswith("/"):
        raise _Invalid('repository name must not end with "/"', REFERENCE_HINT)
    if "//" in path:
        raise _Invalid('repository name must not contain "//"', REFERENCE_HINT)
    for component in path.split("/"):
        if not _PATH_COMPONENT_RE.fullmatch(component):
            raise _Invalid(f"invalid repository path component {_q(component)}", _PATH_RULE)
    if len(path) > MAX_REPOSITORY_LENGTH:
        raise _Invalid(
            f"repository name is too long: {len(path)} characters, at most {MAX_REPOSITORY_LENGTH}",
            "use a shorter repository name",
        )


def _is_registry_like(component: str) -> bool:
    """Whether a leading name component is read as a registry rather than a Hub namespace."""
    return (
        component == "localhost"
        or "." in component
        or ":" in component
        or component.lower() != component
    )


def _normalise(registry: str, path: str) -> tuple[str, str]:
    if registry == LEGACY_DEFAULT_REGISTRY:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = OFFICIAL_REPOSITORY_PREFIX + path
    return registry, path


def _split_name(name: str) -> tuple[str, str]:
    """Split a name (no tag, no digest) into a normalised (registry, repository)."""
    first, slash, rest = name.partition("/")
    if slash and _is_registry_like(first):
        registry, path = first, rest
    else:
        registry, path = DEFAULT_REGISTRY, name
    registry, path = _normalise(registry, path)
    _check_registry(registry)
    _check_path(path)
    return registry, path


def _split(value: str) -> tuple[str, str, str | None, Digest | None]:
    """Split and validate a reference into (registry, repository, tag, digest)."""
    if value == "":
        raise _Invalid("reference is empty", REFERENCE_HINT)
    if _IDENTIFIER_RE.fullmatch(value):
        raise _Invalid(
            "cannot specify 64-byte hexadecimal strings (this looks like an image ID)",
            f"to name an image by digest write REPOSITORY@sha256:{value[:12]}…",
        )
    scheme, sep, _ = value.partition("://")
    if sep and "/" not in scheme and "@" not in scheme:
        raise _Invalid(
            f"a reference has no scheme ({scheme}://)",
            f'leave out "{scheme}://"; ' + REFERENCE_HINT,
        )

    name_tag, at, digest_text = value.partition("@")
    digest: Digest | None = None
    if at:
        try:
            digest = Digest.parse(digest_text)
        except InvalidDigestError as e:
            raise _Invalid(e.message, e.hint) from e

    colon = name_tag.find(":", name_tag.rfind("/") + 1)
    tag: str | None = None
    name = name_tag
    if colon >= 0:
        name, tag = name_tag[:colon], name_tag[colon + 1 :]
    if name == "":
        raise _Invalid("repository name is empty", REFERENCE_HINT)

    registry, path = _split_name(name)
    if tag is not None:
        _check_tag(tag)
    return registry, path, tag, digest


# -- the value type ------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A validated, normalised image reference.

    ``registry`` is ``host[:port]`` as written (``docker.io`` for Docker Hub),
    ``repository`` the path inside it (``library/alpine``).  A reference may have
    a tag, a digest, both (the digest is what is fetched) or, when built with
    ``default_tag=None``, neither.  Constructing one directly validates every
    field and normalises Docker Hub names the way :meth:`parse` does.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    def __post_init__(self) -> None:
        shown = self._shown()
        if not isinstance(self.registry, str) or not isinstance(self.repository, str):
            raise InvalidReferenceError(
                f"invalid reference {_q(shown)}: registry and repository must be strings",
                hint=REFERENCE_HINT,
            )
        if self.tag is not None and not isinstance(self.tag, str):
            raise InvalidReferenceError(
                f"invalid reference {_q(shown)}: tag must be a string, "
                f"not {type(self.tag).__name__}",
                hint=REFERENCE_HINT,
            )
        if self.digest is not None and not isinstance(self.digest, Digest):
            raise InvalidReferenceError(
                f"invalid reference {_q(shown)}: digest must be a Digest, "
                f"not {type(self.digest).__name__}",
                hint="use Digest.parse() or Reference.with_digest()",
            )
        registry, repository = _normalise(self.registry, self.repository)
        try:
            _check_registry(registry)
            if not _is_registry_like(registry):
                raise _Invalid(
                    f"registry {_q(registry)} would be read as a Docker Hub namespace",
                    f'a registry needs a "." or a ":port", or to be localhost, e.g. {registry}:443',
                )
            _check_path(repository)
            if self.tag is not None:
                _check_tag(self.tag)
        except _Invalid as e:
            raise _fail("reference", shown, e, REFERENCE_HINT) from None
        object.__setattr__(self, "registry", registry)
        object.__setattr__(self, "repository", repository)

    def _shown(self) -> str:
        return f"{self.registry}/{self.repository}{self._suffix()}"

    def _suffix(self) -> str:
        s = ""
        if self.tag is not None:
            s += f":{self.tag}"
        if self.digest is not None:
            s += f"@{self.digest}"
        return s

    @classmethod
    def parse(cls, value: str, *, default_tag: str | None = DEFAULT_TAG) -> Reference:
        """Parse and normalise ``value`` (e.g. ``alpine`` → ``docker.io/library/alpine:latest``).

        ``default_tag`` is used when ``value`` has neither tag nor digest; with
        ``None`` such a reference stays without either.  Raises
        :class:`InvalidReferenceError` naming the offending part.
        """
        if not isinstance(value, str):
            raise InvalidReferenceError(
                f"reference must be a string, not {type(value).__name__}", hint=REFERENCE_HINT
            )
        try:
            registry, repository, tag, digest = _split(value)
            if tag is None and digest is None and default_tag is not None:
                _check_tag(default_tag)
                tag = default_tag
        except _Invalid as e:
            raise _fail("reference", value, e, REFERENCE_HINT) from None
        return cls(registry=registry, repository=repository, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """``registry/repository``, e.g. ``docker.io/library/alpine``."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """The short name Docker shows: ``alpine``, ``user/app``, ``quay.io/x/y``.

        ``docker.io/`` and an official image's ``library/`` are dropped, unless
        the result would then be read back as another reference (a first
        component such as ``localhost`` or ``a.b``, or a bare image ID).
        """
        if self.registry != DEFAULT_REGISTRY:
            return self.name
        path = self.repository
        if path.startswith(OFFICIAL_REPOSITORY_PREFIX):
            rest = path[len(OFFICIAL_REPOSITORY_PREFIX) :]
            if "/" not in rest:
                return path if _IDENTIFIER_RE.fullmatch(rest) else rest
        first = path.partition("/")[0]
        if _is_registry_like(first):
            return self.name
        return path

    @property
    def api_host(self) -> str:
        """The host[:port] the registry API is reached at (``registry-1.docker.io`` for Hub)."""
        return DOCKER_HUB_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def identifier(self) -> str:
        """What goes into ``/v2/<repository>/manifests/<identifier>``: the digest, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        if self.tag is not None:
            return self.tag
        raise InvalidReferenceError(
            f"reference {_q(str(self))} has neither tag nor digest",
            hint="add :TAG or @sha256:<hex> to name one image",
        )

    def with_tag(self, tag: str) -> Reference:
        """The same repository with ``tag`` and no digest."""
        return replace(self, tag=validate_tag(tag), digest=None)

    def with_digest(self, digest: Digest | str) -> Reference:
        """The same repository and tag with ``digest``."""
        if not isinstance(digest, Digest):
            try:
                digest = Digest.parse(digest)
            except InvalidDigestError as e:
                raise InvalidReferenceError(
                    f"invalid reference {_q(self.name + '@' + str(digest))}: {e.message}",
                    hint=e.hint,
                ) from e
        return replace(self, digest=digest)

    def familiar(self) -> str:
        """The short form Docker shows, e.g. ``alpine:latest`` or ``user/app@sha256:…``."""
        return self.familiar_name + self._suffix()

    def __str__(self) -> str:
        return self.name + self._suffix()


# -- other inputs --------------------------------------------------------------------------


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag; raise :class:`InvalidReferenceError` otherwise."""
    if not isinstance(tag, str):
        raise InvalidReferenceError(
            f"tag must be a string, not {type(tag).__name__}", hint=_TAG_RULE
        )
    try:
        _check_tag(tag)
    except _Invalid as e:
        raise InvalidReferenceError(e.detail, hint=e.hint) from None
    return tag


def bare_registry(value: str) -> UsageError | None:
    """The error to give where ``value``, meant as an image, is a registry's
    ``host:port`` alone (``localhost:5000``, ``10.0.0.5:5000``, ``registry.example:443``);
    None when it is not one.

    Docker's grammar reads such a value as a Docker Hub image (``library/localhost``
    tagged ``5000``), which is never what was meant; ``docker://`` in front of it says
    that Hub image is (the caller leaves that case alone).
    """
    name, colon, port = value.partition(":")
    if not colon or "/" in value or "@" in value or not _PORT_RE.fullmatch(port):
        return None
    if not _is_registry_like(name):
        return None
    return UsageError(
        f"{value} is a registry (host:port), not an image",
        hint=f"write {value}/REPOSITORY[:TAG] (docker://{value} for the Docker Hub image "
        f"{name}, tagged {port})",
    )


def parse_repository(value: str) -> tuple[str, str]:
    """Parse ``[registry/]repository`` (no tag, no digest) into normalised (registry, repository).

    ``alpine`` → ``("docker.io", "library/alpine")``; ``localhost:5000/team/app`` →
    ``("localhost:5000", "team/app")``.
    """
    if not isinstance(value, str):
        raise InvalidReferenceError(
            f"repository must be a string, not {type(value).__name__}", hint=REPOSITORY_HINT
        )
    try:
        if value == "":
            raise _Invalid("repository is empty")
        registry, repository, tag, digest = _split(value)
        if digest is not None:
            raise _Invalid(
                f"a repository takes no digest (@{digest})",
                "give the digest as its own argument; " + REPOSITORY_HINT,
            )
        if tag is not None:
            hint = REPOSITORY_HINT
            if "/" not in value and _PORT_RE.fullmatch(tag):
                hint = f"to name a repository on registry {value}, write {value}/REPOSITORY"
            raise _Invalid(f"a repository takes no tag (:{tag})", hint)
    except _Invalid as e:
        raise _fail("repository", value, e, REPOSITORY_HINT) from None
    return registry, repository


def parse_registry(value: str) -> str:
    """Validate a bare registry ``host[:port]``; ``index.docker.io`` becomes ``docker.io``.

    A scheme (``https://``), a path or a tag is an error.
    """
    if not isinstance(value, str):
        raise InvalidReferenceError(
            f"registry must be a string, not {type(value).__name__}", hint=REGISTRY_HINT
        )
    try:
        scheme, sep, _ = value.partition("://")
        if sep:
            raise _Invalid(
                f"a registry has no scheme ({scheme}://)",
                f'leave out "{scheme}://"; ' + REGISTRY_HINT,
            )
        if "/" in value:
            raise _Invalid(f"a registry has no path ({value[value.index('/') :]})", REGISTRY_HINT)
        registry = DEFAULT_REGISTRY if value == LEGACY_DEFAULT_REGISTRY else value
        _check_registry(registry)
        if not _is_registry_like(registry):
            raise _Invalid(
                f"{_q(registry)} would be read as a Docker Hub namespace, not a registry",
                f'a registry needs a "." or a ":port", or to be localhost, e.g. {registry}:443',
            )
    except _Invalid as e:
        raise _fail("registry", value, e, REGISTRY_HINT) from None
    return registry
