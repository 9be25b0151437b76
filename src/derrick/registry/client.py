""":class:`RegistryClient`: the registry API client, one facade over the parts.

The work is done by the modules beside this one (``manifests``, ``blobs``, ``uploads``,
``tags``, ``base``), each a few functions over one :class:`~derrick.registry.session.Session`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from derrick import mediatypes as mt
from derrick.auth.credentials import Credential, CredentialStore
from derrick.auth.token import Authenticator
from derrick.closing import Closing
from derrick.digest import Digest
from derrick.errors import UsageError
from derrick.manifest import MAX_MANIFEST_SIZE, Descriptor
from derrick.reference import Reference
from derrick.registry import base, blobs, manifests, tags, uploads
from derrick.registry.base import PingResult
from derrick.registry.blobs import BlobStream
from derrick.registry.manifests import FetchedManifest, ManifestHead
from derrick.registry.session import Session
from derrick.transport import RetryPolicy, TLSConfig, Transport

#: The longest timeout a client takes, in seconds (an hour, as the command line's --timeout).
MAX_TIMEOUT = 3600.0


def _ref(ref: Reference | str) -> Reference:
    """A reference, parsed when given as a string (``InvalidReferenceError`` if it is none)."""
    return Reference.parse(ref) if isinstance(ref, str) else ref


def _digest(digest: Digest | str) -> Digest:
    """A digest, parsed when given as a string (``InvalidDigestError`` if it is none)."""
    return Digest.parse(digest) if isinstance(digest, str) else digest


class RegistryClient(Closing):
    """A client for one or more registries, reused across calls.

    It keeps connection pools, the scheme each registry speaks, and tokens per
    (registry, scopes).  Public methods take and return derrick's own types, never
    HTTP responses (references and digests may be given as strings).  Every manifest and
    blob it hands out has been checked against its digest (streams are checked by the
    reader with :class:`~derrick.digest.Verifier`, see :meth:`open_blob`).  Use as a
    context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        *,
        credentials: CredentialStore | Callable[[str], Credential | None] | None = None,
        insecure: bool = False,
        insecure_registries: Iterable[str] = (),
        ca_cert: Path | None = None,
        certs_dir: Path | None = Path("/etc/docker/certs.d"),
        timeout: float = 30.0,
        retries: int = 3,
        max_connections: int = 16,
        transport: Transport | None = None,
    ) -> None:
        if transport is None:
            _check_limits(timeout, retries)
        self.transport = transport or Transport(
            insecure=insecure,
            insecure_hosts=insecure_registries,
            tls=TLSConfig(ca_cert=ca_cert, certs_dir=certs_dir),
            timeout=timeout,
            retry=RetryPolicy(retries=retries),
            max_connections=max_connections,
        )
        if credentials is None:
            lookup: Callable[[str], Credential | None] = CredentialStore().get
        elif isinstance(credentials, CredentialStore):
            lookup = credentials.get
        elif callable(credentials):
            lookup = credentials
        else:
            raise UsageError(
                "credentials must be a CredentialStore or a function of the registry that "
                f"gives a Credential or None, not {type(credentials).__name__}",
                hint="e.g. credentials=lambda registry: Credential(user, password)",
            )
        self.auth = Authenticator(self.transport, lookup)
        self.session = Session(self.transport, self.auth)

    def close(self) -> None:
        self.transport.close()

    # -- the API root -------------------------------------------------------------------

    def ping(self, registry: str) -> PingResult:
        """Check that ``registry`` speaks the distribution API (``GET /v2/``)."""
        return base.ping(self.session, registry)

    def check_login(self, registry: str) -> None:
        """Prove that ``registry`` accepts the configured credentials (see
        :func:`derrick.registry.base.check_login`)."""
        base.check_login(self.session, registry)

    # -- listings -----------------------------------------------------------------------

    def list_tags(
        self, ref: Reference | str, *, page_size: int | None = None, last: str | None = None
    ) -> list[str]:
        """All tags of the repository, following ``Link`` pagination."""
        return tags.list_tags(self.session, _ref(ref), page_size=page_size, last=last)

    def catalog(
        self, registry: str, *, page_size: int | None = None, last: str | None = None
    ) -> list[str]:
        """Repository names the registry lists (``/v2/_catalog``)."""
        return tags.catalog(self.session, registry, page_size=page_size, last=last)

    # -- manifests ----------------------------------------------------------------------

    def get_manifest(
        self, ref: Reference | str, *, accept: str = mt.MANIFEST_ACCEPT
    ) -> FetchedManifest:
        """Fetch and parse a manifest or index; its digest is checked when ``ref`` has one."""
        return manifests.get_manifest(self.session, _ref(ref), accept)

    def head_manifest(
        self, ref: Reference | str, *, accept: str = mt.MANIFEST_ACCEPT
    ) -> ManifestHead:
        """Digest, size and media type of a manifest without fetching it."""
        return manifests.head_manifest(self.session, _ref(ref), accept)

    def put_manifest(
        self,
        ref: Reference | str,
        raw: bytes,
        media_type: str,
        *,
        scopes: Sequence[str] | None = None,
    ) -> Digest:
        """Store manifest bytes under the tag or digest of ``ref``; return its digest.

        ``scopes`` replaces the default push scope (to share one token with other calls).
        """
        return manifests.put_manifest(self.session, _ref(ref), raw, media_type, tuple(scopes or ()))

    def delete_manifest(self, ref: Reference | str) -> None:
        """Delete a manifest (by digest; a tag is resolved to its digest first)."""
        manifests.delete_manifest(self.session, _ref(ref))

    # -- blobs --------------------------------------------------------------------------

    def head_blob(
        self, ref: Reference | str, digest: Digest | str, *, scopes: Sequence[str] | None = None
    ) -> int | None:
        """The blob's size if the repository has it, else None.

        ``scopes`` replaces the default pull scope (a push asks with its push token).
        """
        return blobs.head_blob(self.session, _ref(ref), _digest(digest), tuple(scopes or ()))

    def open_blob(
        self, ref: Reference | str, digest: Digest | str, *, offset: int = 0
    ) -> AbstractContextManager[BlobStream]:
        """Stream a blob, from ``offset`` with a ``Range`` request when it is not 0.

        The registry may ignore the range; then the stream starts at 0 and
        ``stream.offset`` says so.  The caller verifies the digest.
        """
        return blobs.open_blob(self.session, _ref(ref), _digest(digest), offset)

    def get_blob_bytes(
        self,
        ref: Reference | str,
        desc: Descriptor | Digest | str,
        *,
        max_size: int = MAX_MANIFEST_SIZE,
    ) -> bytes:
        """A small blob (a config) read whole and verified."""
        return blobs.get_blob_bytes(
            self.session,
            _ref(ref),
            desc if isinstance(desc, Descriptor) else _digest(desc),
            max_size,
        )

    def delete_blob(self, ref: Reference | str, digest: Digest | str) -> None:
        blobs.delete_blob(self.session, _ref(ref), _digest(digest))

    def mount_blob(self, ref: Reference | str, digest: Digest | str, from_repository: str) -> bool:
        """Ask the registry to link a blob from another repository; True if it did."""
        return uploads.mount_blob(self.session, _ref(ref), _digest(digest), from_repository)

    def upload_blob(
        self,
        ref: Reference | str,
        digest: Digest | str,
        size: int,
        open_at: Callable[[int], Iterable[bytes | memoryview]],
        *,
        chunk_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        scopes: Sequence[str] | None = None,
    ) -> None:
        """Upload a blob whose content ``open_at(offset)`` yields from ``offset``.

        Blobs up to ``chunk_size`` (or all, when it is None) go in one ``PUT``
        (``POST`` then ``PUT ?digest=``); larger ones in ``PATCH`` chunks of
        ``chunk_size`` bytes, each resumed from the registry's ``Range`` after a
        broken connection, then an empty ``PUT ?digest=``.  The content is read
        once, in order: ``open_at`` is called again only to start over or resume.
        ``progress`` is told the bytes sent (a negative count when a retry goes
        back).  An error raised by the content itself (a digest mismatch, a
        missing file) is not retried: the request breaks off and the upload is
        cancelled.  Content that checks its digest before giving out its last
        bytes (as derrick's readers do) is thus never committed when wrong.
        ``scopes`` replaces the push scope, e.g. to share one token with a
        mount from another repository.
        """
        uploads.upload_blob(
            self.session,
            _ref(ref),
            _digest(digest),
            size,
            open_at,
            chunk_size=chunk_size,
            progress=progress,
            scopes=tuple(scopes or ()),
        )


__all__ = ["BlobStream", "FetchedManifest", "ManifestHead", "PingResult", "RegistryClient"]


def _check_limits(timeout: float, retries: int) -> None:
    """Refuse a timeout that is not more than 0 seconds (at most an hour), and a number of
    retries that is not a whole number of 0 or more."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT  # also refuses nan
    ):
        raise UsageError(
            f"timeout {timeout!r} is not a number of seconds more than 0 and at most "
            f"{MAX_TIMEOUT:g}"
        )
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise UsageError(f"retries {retries!r} is not a whole number of 0 or more")
