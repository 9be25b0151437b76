"""The one exception tree of derrick.

Every error derrick raises is a :class:`DerrickError`.  Each carries a one-line
message that says what failed (on which reference, blob or path), and where
there is something to try, a :class:`Remedy` (machine-readable: a kind and its
parameters, which a front end such as the CLI renders in its own words) and/or
a neutral ``hint``.  Registry errors also carry the HTTP status, the registry's
error codes and the URL with any credentials removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

#: What a user can do about an error.  ``insecure``: allow plain http and unverified TLS
#: for ``host``; ``login``: give credentials for ``registry``; ``credentials``: correct the
#: credentials used for ``registry``; ``ca-cert``: trust the CA of ``host`` (a CA file, or
#: the per-registry file ``path``); ``ca-file``: give a readable PEM file of CAs;
#: ``timeout``: allow longer waits, or try again; ``retries``: try again, or allow more
#: retries; ``retry``: try again; ``tags``: look at the tags the repository has;
#: ``inline-credentials``: give credentials for ``registry`` with each use, not saved;
#: ``platform``: ask for the image's own ``platform``, or for none; ``no-platform``: ask for
#: no platform; ``platforms``: ask for one of the platforms an index has; ``not-an-image``:
#: an artifact goes where any image may (an OCI layout, an OCI archive, a registry);
#: ``saved-credentials``: give credentials where they are kept (Docker's ``config.json``), or
#: with each use, not in a file of derrick's own such as a sync configuration;
#: ``all-platforms``: copy the image with every platform of its index; ``oci-archive``:
#: write an OCI archive, which holds what a docker-archive cannot; ``cache-dir``: use
#: another blob cache.
RemedyKind = Literal[
    "insecure",
    "login",
    "credentials",
    "inline-credentials",
    "ca-cert",
    "ca-file",
    "timeout",
    "retries",
    "retry",
    "tags",
    "platform",
    "no-platform",
    "platforms",
    "not-an-image",
    "saved-credentials",
    "all-platforms",
    "oci-archive",
    "cache-dir",
]
REMEDY_KINDS: tuple[RemedyKind, ...] = get_args(RemedyKind)

#: Each remedy in library terms (the CLI says the same with its flags).
_REMEDY_WORDS: Mapping[str, str] = {
    "insecure": "name {host} insecure (plain http, unverified TLS) if you trust it",
    "login": "give credentials for {registry}",
    "credentials": "check the user name and password for {registry}",
    "inline-credentials": "give the credentials for {registry} with each use instead",
    "ca-cert": "trust the CA of {host} (a CA file, or {path}), or name {host} insecure",
    "ca-file": "give a readable PEM file of CA certificates",
    "timeout": "allow a longer timeout, or try again",
    "retries": "try again, or allow more retries",
    "retry": "try again",
    "tags": "list the repository's tags to see which exist",
    "platform": "ask for platform {platform}, or for none",
    "no-platform": "ask for no platform",
    "platforms": "ask for one of the platforms it has",
    "not-an-image": "copy it to an OCI layout, an OCI archive or a registry, which hold any image",
    "saved-credentials": "give credentials in Docker's config.json (or a credential helper), "
    "or with each use",
    "all-platforms": "copy the image with every platform of its index",
    "oci-archive": "write an OCI archive instead",
    "cache-dir": "choose another blob cache",
}


class Remedy:
    """What the user can do about an error: a kind (see :data:`RemedyKind`) and its
    parameters, e.g. ``Remedy("insecure", host="registry.local:5000")``."""

    __slots__ = ("kind", "params")

    kind: RemedyKind
    params: Mapping[str, str]

    def __init__(self, kind: RemedyKind, /, **params: str) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "params", MappingProxyType(dict(params)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Remedy is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Remedy):
            return NotImplemented
        return self.kind == other.kind and dict(self.params) == dict(other.params)

    def __hash__(self) -> int:
        return hash((self.kind, tuple(sorted(self.params.items()))))

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"Remedy({self.kind!r}{args})"

    def describe(self) -> str:
        """The remedy in library terms (front ends render :attr:`kind` in their own)."""
        return fill(_REMEDY_WORDS.get(self.kind, self.kind), self.params)


def fill(template: str, params: Mapping[str, str]) -> str:
    """``template`` with ``{name}`` replaced by ``params``; an unknown name stays as it is."""
    return template.format_map(_Keep(params))


class _Keep(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class DerrickError(Exception):
    """Root of every error derrick raises."""

    def __init__(
        self, message: str, *, hint: str | None = None, remedy: Remedy | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.remedy = remedy

    def __str__(self) -> str:
        parts = [self.message, self.hint, self.remedy.describe() if self.remedy else None]
        return "; ".join(p for p in parts if p)


class InvalidReferenceError(DerrickError, ValueError):
    """A reference (name, tag or digest) could not be parsed."""


class InvalidDigestError(DerrickError, ValueError):
    """A digest string is not ``algorithm:hex`` of a supported algorithm and length."""


class DigestMismatchError(DerrickError):
    """Content did not hash to the digest (or size) it was fetched or stored under."""


class ManifestError(DerrickError):
    """A manifest, index or config is malformed, too large or of an unknown type."""


class PlatformNotFoundError(DerrickError):
    """An index has no manifest for the requested platform, or an image is of another one."""


class NotAnImageError(ManifestError):
    """A manifest is an OCI artifact (Helm chart, signature, SBOM…), not a container image,
    where only an image will do (a filesystem, a docker-archive)."""


class CredentialsError(DerrickError):
    """Credentials could not be read or stored (config.json, credential helper)."""


class LayoutError(DerrickError):
    """An OCI layout, OCI archive or docker-archive is malformed or unsafe."""


class DiskError(DerrickError):
    """Writing to the local disk failed (no space left, permission denied, read-only, …).

    The message names the path the user gave and what was left behind.
    """

    def __init__(
        self,
        message: str,
        *,
        errno: int | None = None,
        hint: str | None = None,
        remedy: Remedy | None = None,
    ):
        super().__init__(message, hint=hint, remedy=remedy)
        self.errno = errno


class UsageError(DerrickError):
    """The caller combined options or arguments that cannot work together."""


class Cancelled(DerrickError):
    """The operation stopped because it was cancelled, or because another part of it failed."""


class TransportError(DerrickError):
    """The registry could not be reached, or the connection failed mid-way."""


class TLSError(TransportError):
    """The TLS handshake failed (unknown CA, wrong host name, plain-HTTP server)."""


@dataclass(frozen=True)
class RegistryErrorDetail:
    """One entry of the registry's ``{"errors": [...]}`` body."""

    code: str
    message: str = ""
    detail: object = None


class RegistryError(DerrickError):
    """The registry answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        url: str,
        errors: Sequence[RegistryErrorDetail] = (),
        hint: str | None = None,
        remedy: Remedy | None = None,
    ) -> None:
        super().__init__(message, hint=hint, remedy=remedy)
        self.status = status
        self.url = url
        self.errors = tuple(errors)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(e.code for e in self.errors)


class NotFoundError(RegistryError):
    """404: the manifest, blob, tag or repository does not exist."""


class ManifestUnknownError(NotFoundError):
    """MANIFEST_UNKNOWN: no manifest under that tag or digest."""


class BlobUnknownError(NotFoundError):
    """BLOB_UNKNOWN: no blob with that digest in the repository."""


class NameUnknownError(NotFoundError):
    """NAME_UNKNOWN: the repository is not known to the registry."""


class UnauthorizedError(RegistryError):
    """401 / UNAUTHORIZED: credentials are missing or wrong."""


class DeniedError(RegistryError):
    """403 / DENIED: the credentials are valid but lack access."""


class TooManyRequestsError(RegistryError):
    """429 / TOOMANYREQUESTS: rate limited."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        url: str,
        errors: Sequence[RegistryErrorDetail] = (),
        hint: str | None = None,
        remedy: Remedy | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, url=url, errors=errors, hint=hint, remedy=remedy)
        self.retry_after = retry_after


class UnsupportedError(RegistryError):
    """405 / UNSUPPORTED: the registry does not offer this operation."""


class ServerError(RegistryError):
    """5xx from the registry."""


class ProtocolError(RegistryError):
    """The registry answered something that does not follow the distribution API."""
