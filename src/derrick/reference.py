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

from dataclasses import dataclass, replace

from derrick.digest import Digest
from derrick.errors import InvalidDigestError, InvalidReferenceError, UsageError
from derrick.refgrammar import (
    DEFAULT_REGISTRY,
    DEFAULT_TAG,
    DOCKER_HUB_API_HOST,
    IDENTIFIER_RE,
    LEGACY_DEFAULT_REGISTRY,
    MAX_REPOSITORY_LENGTH,
    MAX_TAG_LENGTH,
    OFFICIAL_REPOSITORY_PREFIX,
    PORT_RE,
    REFERENCE_HINT,
    REGISTRY_HINT,
    REPOSITORY_HINT,
    TAG_RULE,
    Invalid,
    check_path,
    check_registry,
    check_tag,
    fail,
    is_registry_like,
    normalise,
    quote,
    split_reference,
)

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
                f"invalid reference {quote(shown)}: registry and repository must be strings",
                hint=REFERENCE_HINT,
            )
        if self.tag is not None and not isinstance(self.tag, str):
            raise InvalidReferenceError(
                f"invalid reference {quote(shown)}: tag must be a string, "
                f"not {type(self.tag).__name__}",
                hint=REFERENCE_HINT,
            )
        if self.digest is not None and not isinstance(self.digest, Digest):
            raise InvalidReferenceError(
                f"invalid reference {quote(shown)}: digest must be a Digest, "
                f"not {type(self.digest).__name__}",
                hint="use Digest.parse() or Reference.with_digest()",
            )
        registry, repository = normalise(self.registry, self.repository)
        try:
            check_registry(registry)
            if not is_registry_like(registry):
                raise Invalid(
                    f"registry {quote(registry)} would be read as a Docker Hub namespace",
                    f'a registry needs a "." or a ":port", or to be localhost, e.g. {registry}:443',
                )
            check_path(repository)
            if self.tag is not None:
                check_tag(self.tag)
        except Invalid as e:
            raise fail("reference", shown, e, REFERENCE_HINT) from None
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
            registry, repository, tag, digest = split_reference(value)
            if tag is None and digest is None and default_tag is not None:
                check_tag(default_tag)
                tag = default_tag
        except Invalid as e:
            raise fail("reference", value, e, REFERENCE_HINT) from None
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
                return path if IDENTIFIER_RE.fullmatch(rest) else rest
        first = path.partition("/")[0]
        if is_registry_like(first):
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
            f"reference {quote(str(self))} has neither tag nor digest",
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
                    f"invalid reference {quote(self.name + '@' + str(digest))}: {e.message}",
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
            f"tag must be a string, not {type(tag).__name__}", hint=TAG_RULE
        )
    try:
        check_tag(tag)
    except Invalid as e:
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
    if not colon or "/" in value or "@" in value or not PORT_RE.fullmatch(port):
        return None
    if not is_registry_like(name):
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
            raise Invalid("repository is empty")
        registry, repository, tag, digest = split_reference(value)
        if digest is not None:
            raise Invalid(
                f"a repository takes no digest (@{digest})",
                "give the digest as its own argument; " + REPOSITORY_HINT,
            )
        if tag is not None:
            hint = REPOSITORY_HINT
            if "/" not in value and PORT_RE.fullmatch(tag):
                hint = f"to name a repository on registry {value}, write {value}/REPOSITORY"
            raise Invalid(f"a repository takes no tag (:{tag})", hint)
    except Invalid as e:
        raise fail("repository", value, e, REPOSITORY_HINT) from None
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
            raise Invalid(
                f"a registry has no scheme ({scheme}://)",
                f'leave out "{scheme}://"; ' + REGISTRY_HINT,
            )
        if "/" in value:
            raise Invalid(f"a registry has no path ({value[value.index('/') :]})", REGISTRY_HINT)
        registry = DEFAULT_REGISTRY if value == LEGACY_DEFAULT_REGISTRY else value
        check_registry(registry)
        if not is_registry_like(registry):
            raise Invalid(
                f"{quote(registry)} would be read as a Docker Hub namespace, not a registry",
                f'a registry needs a "." or a ":port", or to be localhost, e.g. {registry}:443',
            )
    except Invalid as e:
        raise fail("registry", value, e, REGISTRY_HINT) from None
    return registry
