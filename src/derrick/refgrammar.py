"""The grammar of image references, piece by piece: the checks of a tag, a registry and a
repository path, Docker's normalisation (Docker Hub, ``library/``), and the split of a
reference string into its parts.  :mod:`derrick.reference` builds :class:`Reference` on it.
"""

from __future__ import annotations

import json
import re

from derrick.digest import Digest
from derrick.errors import InvalidDigestError, InvalidReferenceError

__all__ = [
    "DEFAULT_REGISTRY",
    "DEFAULT_TAG",
    "DOCKER_HUB_API_HOST",
    "IDENTIFIER_RE",
    "LEGACY_DEFAULT_REGISTRY",
    "MAX_REPOSITORY_LENGTH",
    "MAX_TAG_LENGTH",
    "OFFICIAL_REPOSITORY_PREFIX",
    "PATH_RULE",
    "PORT_RE",
    "REFERENCE_HINT",
    "REGISTRY_HINT",
    "REPOSITORY_HINT",
    "TAG_RULE",
    "Invalid",
    "check_path",
    "check_registry",
    "check_tag",
    "fail",
    "is_registry_like",
    "normalise",
    "quote",
    "split_name",
    "split_reference",
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
TAG_RULE = 'a tag is 1 to 128 letters, digits, "_", "." and "-", and does not start with "." or "-"'
PATH_RULE = (
    "repository path components are lowercase letters and digits, joined by "
    '".", "_", "__" or dashes, between single "/"'
)

_DOMAIN_NAME_RE = re.compile(
    r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
)
_IPV6_RE = re.compile(r"\[[a-fA-F0-9:]+\]")
PORT_RE = re.compile(r"[0-9]+")
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")

_MAX_SHOWN = 300


def quote(value: str) -> str:
    """``value`` double-quoted and escaped for an error message, cut if very long."""
    if len(value) > _MAX_SHOWN:
        return json.dumps(value[:_MAX_SHOWN], ensure_ascii=False)[:-1] + '…"'
    return json.dumps(value, ensure_ascii=False)


class Invalid(Exception):
    """One part of an input is invalid; the public functions add what the input was."""

    def __init__(self, detail: str, hint: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint


def fail(kind: str, value: str, problem: Invalid, default_hint: str) -> InvalidReferenceError:
    return InvalidReferenceError(
        f"invalid {kind} {quote(value)}: {problem.detail}", hint=problem.hint or default_hint
    )


# -- the parts -----------------------------------------------------------------------------


def check_tag(tag: str) -> None:
    if tag == "":
        raise Invalid('invalid tag "": tag is empty', TAG_RULE)
    if len(tag) > MAX_TAG_LENGTH:
        raise Invalid(
            f"invalid tag {quote(tag)}: longer than {MAX_TAG_LENGTH} characters ({len(tag)})",
            TAG_RULE,
        )
    if not _TAG_RE.fullmatch(tag):
        raise Invalid(f"invalid tag {quote(tag)}", TAG_RULE)


def check_registry(registry: str) -> None:
    """Check ``host[:port]`` against the grammar."""
    if registry == "":
        raise Invalid("registry is empty", REGISTRY_HINT)
    if registry.startswith("["):
        end = registry.find("]")
        host, rest = (registry, "") if end < 0 else (registry[: end + 1], registry[end + 1 :])
        if not _IPV6_RE.fullmatch(host):
            raise Invalid(
                f"invalid IPv6 address {quote(host)} in registry {quote(registry)}",
                "an IPv6 registry looks like [fc00::1]:5000 (no zone, no embedded IPv4)",
            )
        if rest and not rest.startswith(":"):
            raise Invalid(f"invalid registry {quote(registry)}", REGISTRY_HINT)
        port = rest[1:] if rest else None
    else:
        host, sep, port_part = registry.partition(":")
        port = port_part if sep else None
        if port is not None and ":" in port:
            raise Invalid(
                f"invalid registry {quote(registry)}: too many colons",
                "put an IPv6 address in brackets, e.g. [fc00::1]:5000",
            )
        if not _DOMAIN_NAME_RE.fullmatch(host):
            raise Invalid(
                f"invalid registry host {quote(host)}",
                "a registry host is a DNS name or IP address: letters, digits, "
                '"-" and "." (no "-" at either end of a label), e.g. registry.example.com',
            )
    if port is not None and not PORT_RE.fullmatch(port):
        raise Invalid(
            f"invalid port {quote(port)} in registry {quote(registry)}: not a number", REGISTRY_HINT
        )
    if port is not None and not 1 <= int(port) <= 65535:
        raise Invalid(
            f"invalid port {port} in registry {quote(registry)}: a port is 1 to 65535",
            REGISTRY_HINT,
        )


def check_path(path: str) -> None:
    """Check a repository path (already normalised) against the grammar."""
    if path == "":
        raise Invalid("repository name is empty", REFERENCE_HINT)
    if any("A" <= c <= "Z" for c in path):
        raise Invalid(
            f"repository name must be lowercase, got {quote(path)}",
            "only the registry part may contain uppercase letters; " + REFERENCE_HINT,
        )
    if path.startswith("/"):
        raise Invalid('repository name must not start with "/"', REFERENCE_HINT)
    if path.endswith("/"):
        raise Invalid('repository name must not end with "/"', REFERENCE_HINT)
    if "//" in path:
        raise Invalid('repository name must not contain "//"', REFERENCE_HINT)
    for component in path.split("/"):
        if not _PATH_COMPONENT_RE.fullmatch(component):
            raise Invalid(f"invalid repository path component {quote(component)}", PATH_RULE)
    if len(path) > MAX_REPOSITORY_LENGTH:
        raise Invalid(
            f"repository name is too long: {len(path)} characters, at most {MAX_REPOSITORY_LENGTH}",
            "use a shorter repository name",
        )


def is_registry_like(component: str) -> bool:
    """Whether a leading name component is read as a registry rather than a Hub namespace."""
    return (
        component == "localhost"
        or "." in component
        or ":" in component
        or component.lower() != component
    )


def normalise(registry: str, path: str) -> tuple[str, str]:
    if registry == LEGACY_DEFAULT_REGISTRY:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = OFFICIAL_REPOSITORY_PREFIX + path
    return registry, path


def split_name(name: str) -> tuple[str, str]:
    """Split a name (no tag, no digest) into a normalised (registry, repository)."""
    first, slash, rest = name.partition("/")
    if slash and is_registry_like(first):
        registry, path = first, rest
    else:
        registry, path = DEFAULT_REGISTRY, name
    registry, path = normalise(registry, path)
    check_registry(registry)
    check_path(path)
    return registry, path


def split_reference(value: str) -> tuple[str, str, str | None, Digest | None]:
    """Split and validate a reference into (registry, repository, tag, digest)."""
    if value == "":
        raise Invalid("reference is empty", REFERENCE_HINT)
    if IDENTIFIER_RE.fullmatch(value):
        raise Invalid(
            "cannot specify 64-byte hexadecimal strings (this looks like an image ID)",
            f"to name an image by digest write REPOSITORY@sha256:{value[:12]}…",
        )
    scheme, sep, _ = value.partition("://")
    if sep and "/" not in scheme and "@" not in scheme:
        raise Invalid(
            f"a reference has no scheme ({scheme}://)",
            f'leave out "{scheme}://"; ' + REFERENCE_HINT,
        )

    name_tag, at, digest_text = value.partition("@")
    digest: Digest | None = None
    if at:
        try:
            digest = Digest.parse(digest_text)
        except InvalidDigestError as e:
            raise Invalid(e.message, e.hint) from e

    colon = name_tag.find(":", name_tag.rfind("/") + 1)
    tag: str | None = None
    name = name_tag
    if colon >= 0:
        name, tag = name_tag[:colon], name_tag[colon + 1 :]
    if name == "":
        raise Invalid("repository name is empty", REFERENCE_HINT)

    registry, path = split_name(name)
    if tag is not None:
        check_tag(tag)
    return registry, path, tag, digest


# -- the value type ------------------------------------------------------------------------
