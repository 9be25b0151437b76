"""The one exception tree of derrick.

Every error derrick raises is a :class:`DerrickError`.  Each carries a one-line,
human message that says what failed and, where there is one, what to try next
(``hint``).  Registry errors also carry the HTTP status, the registry's error
codes and the URL with any credentials removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class DerrickError(Exception):
    """Root of every error derrick raises."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


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

    def __init__(self, message: str, *, errno: int | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
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
    ) -> None:
        super().__init__(message, hint=hint)
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
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, url=url, errors=errors, hint=hint)
        self.retry_after = retry_after


class UnsupportedError(RegistryError):
    """405 / UNSUPPORTED: the registry does not offer this operation."""


class ServerError(RegistryError):
    """5xx from the registry."""


class ProtocolError(RegistryError):
    """The registry answered something that does not follow the distribution API."""
