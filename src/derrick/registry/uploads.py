"""Blob uploads and cross-repository mounts, as the distribution-spec describes them.

``POST`` starts an upload session and answers with its ``Location``; a blob up
to the chunk size goes in one ``PUT ?digest=``; a larger one in ``PATCH``
chunks with ``Content-Range``, each answered with the session's new
``Location`` and ``Range``.  After a dropped connection the session's status
(``GET`` → ``204`` with ``Range``) says where to go on from; a session that
failed for good is cancelled with ``DELETE``.  A mount (``POST ?mount=&from=``)
links a blob another repository of the same registry already has.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import cast

import httpx

from derrick.digest import Digest
from derrick.errors import (
    DerrickError,
    DigestMismatchError,
    ProtocolError,
    ServerError,
    TooManyRequestsError,
    TransportError,
)
from derrick.reference import Reference
from derrick.registry.scopes import pull_scope, push_scope
from derrick.registry.session import Call, Session
from derrick.registry.urls import query_string, uploads_path, with_digest
from derrick.transport import redact_url

log = logging.getLogger("derrick.registry")

#: Failures after which an upload is resumed or started over; other errors end it.
_RETRY_UPLOAD = (TransportError, ServerError, TooManyRequestsError)


def mount_blob(session: Session, ref: Reference, digest: Digest, from_repository: str) -> bool:
    """Ask the registry to link a blob from another repository; True if it did."""
    ep = session.endpoint(ref.registry)
    q = query_string(mount=str(digest), **{"from": from_repository})
    scopes = (push_scope(ref.repository), pull_scope(from_repository))
    what = f"mount of blob {digest} into {ref.registry}/{ref.repository}"
    call = Call("POST", ep, ep.url(uploads_path(ref.repository, q)), scopes, what, ok=(201, 202))
    resp = session.request(call)
    if resp.status_code == 201:
        return True
    loc = resp.headers.get("location")
    if loc:  # the registry opened an upload session instead
        _Upload(session, ref, scopes, what).cancel(str(resp.request.url.join(loc)))
    return False


def upload_blob(
    session: Session,
    ref: Reference,
    digest: Digest,
    size: int,
    open_at: Callable[[int], Iterable[bytes | memoryview]],
    *,
    chunk_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    scopes: tuple[str, ...] = (),
) -> None:
    """Upload a blob whose content ``open_at(offset)`` yields from ``offset``.

    See :meth:`derrick.registry.RegistryClient.upload_blob`.
    """
    what = f"upload of blob {digest} to {ref.registry}/{ref.repository}"
    upload = _Upload(session, ref, scopes or (push_scope(ref.repository),), what)
    cursor = _UploadCursor(open_at, size, progress, what)
    try:
        if chunk_size is None or size <= chunk_size:
            upload.whole(digest, size, cursor)
        else:
            upload.chunked(digest, size, chunk_size, cursor)
    finally:
        cursor.close()


class _Upload:
    """The requests of one blob's upload to the repository of ``ref``."""

    def __init__(self, session: Session, ref: Reference, scopes: tuple[str, ...], what: str):
        self.session = session
        self.ref = ref
        self.scopes = scopes
        self.what = what
        self.endpoint = session.endpoint(ref.registry)
        #: what every request of the upload shares (each replaces method, url, ...)
        self.base = Call("POST", self.endpoint, "", scopes, what)

    def start(self) -> str:
        """Open an upload session; its URL."""
        url = self.endpoint.url(uploads_path(self.ref.repository))
        resp = self.session.request(replace(self.base, url=url, ok=(202,)))
        return upload_location(resp, self.what)

    def whole(self, digest: Digest, size: int, cursor: _UploadCursor) -> None:
        """Upload in one ``PUT``, started over in a new session after a failure."""
        transport = self.session.transport
        failures = 0
        while True:
            location = self.start()
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            content = _body(cursor, 0, size)
            url = with_digest(location, digest)
            put = replace(
                self.base,
                method="PUT",
                url=url,
                headers=headers,
                content=content,
                ok=(201, 204),
                retry=False,
            )
            try:
                self.session.request(put)
                return
            except _RETRY_UPLOAD as e:
                # The session may hold part of the body: start a fresh one.
                self.cancel(location)
                failures += 1
                if failures > transport.retry.retries:
                    raise
                log.debug("%s failed (%s); starting over", self.what, e)
                transport.retry_sleep(failures - 1, _retry_after(e))
            except BaseException:
                self.cancel(location)
                raise

    def chunked(self, digest: Digest, size: int, chunk_size: int, cursor: _UploadCursor) -> None:
        """Upload in ``PATCH`` chunks, resumed from the registry's ``Range`` after a failure."""
        transport = self.session.transport
        location = self.start()
        try:
            offset = 0
            failures = 0
            while offset < size:
                end = min(offset + chunk_size, size)
                try:
                    location = self._patch(location, offset, end, cursor)
                    offset = end
                except _RETRY_UPLOAD as e:
                    failures += 1
                    if failures > transport.retry.retries:
                        raise
                    transport.retry_sleep(failures - 1, _retry_after(e))
                    offset, location = self.status(location)
                    log.debug("%s broke off (%s); resuming at byte %d", self.what, e, offset)
            headers = {"Content-Length": "0"}
            url = with_digest(location, digest)
            self.session.request(
                replace(
                    self.base, method="PUT", url=url, headers=headers, content=b"", ok=(201, 204)
                )
            )
        except BaseException:
            self.cancel(location)
            raise

    def _patch(self, location: str, offset: int, end: int, cursor: _UploadCursor) -> str:
        """Send bytes ``offset`` to ``end`` of the content; the session's next URL."""
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{end - 1}",
            "Content-Length": str(end - offset),
        }
        content = _body(cursor, offset, end - offset)
        patch = replace(
            self.base, method="PATCH", url=location, headers=headers, content=content, ok=(202,)
        )
        return upload_location(self.session.request(replace(patch, retry=False)), self.what)

    def status(self, location: str) -> tuple[int, str]:
        """How many bytes the registry holds of an upload, and where to continue it."""
        resp = self.session.request(replace(self.base, method="GET", url=location, ok=(204,)))
        offset = _uploaded_bytes(resp.headers.get("range"))
        return offset, upload_location(resp, self.what) if resp.headers.get(
            "location"
        ) else location

    def cancel(self, location: str) -> None:
        """Abandon an upload session (best effort: the registry expires it anyway)."""
        ok = (200, 202, 204, 404)
        cancel = replace(self.base, method="DELETE", url=location, what="cancel upload", ok=ok)
        with contextlib.suppress(DerrickError):
            self.session.request(replace(cancel, retry=False))


def upload_location(resp: httpx.Response, what: str) -> str:
    """The absolute URL of the response's ``Location`` (an upload session)."""
    loc = resp.headers.get("location")
    if not loc:
        raise ProtocolError(
            f"{what}: the registry did not say where to upload (no Location header)",
            status=resp.status_code,
            url=redact_url(resp.request.url),
        )
    return str(resp.request.url.join(loc))


def _body(cursor: _UploadCursor, offset: int, length: int) -> Callable[[], Iterable[bytes]]:
    """A request body of ``length`` bytes of the content from ``offset``, read anew for
    each try (memoryviews pass through the connection as bytes do)."""
    return cast(Callable[[], Iterable[bytes]], functools.partial(cursor.read, offset, length))


def _retry_after(e: Exception) -> float | None:
    return e.retry_after if isinstance(e, TooManyRequestsError) else None


def _uploaded_bytes(value: str | None) -> int:
    """Bytes received, from an upload status ``Range: 0-<last byte>`` header.

    The distribution registry reports an empty upload as ``0-0`` (not ``0--1``),
    so ``0-0`` is read as nothing received: at worst one byte is sent again.
    """
    m = re.fullmatch(r"\s*(?:bytes=)?0-(\d+)\s*", value or "")
    if not m or m.group(1) == "0":
        return 0
    return int(m.group(1)) + 1


class _UploadCursor:
    """An upload's content read in order, in pieces, reopened only to go back or skip.

    ``read(offset, length)`` yields the next ``length`` bytes from ``offset``:
    when ``offset`` is where the last piece ended the open iterator continues;
    otherwise (a retry, a resume) the content is opened again at ``offset``.  Pieces are
    passed on as they come, not copied: the request sends each before asking for the
    next, so a view of a buffer the content reuses is sent before it changes.
    """

    def __init__(
        self,
        open_at: Callable[[int], Iterable[bytes | memoryview]],
        size: int,
        progress: Callable[[int], None] | None,
        what: str,
    ) -> None:
        self._open_at = open_at
        self._size = size
        self._progress = progress
        self._what = what
        self._it: Iterator[bytes | memoryview] | None = None
        self._rest: bytes | memoryview = b""  # read from the iterator but not yet sent
        self.pos = 0  # offset of the next byte to send

    def read(self, offset: int, length: int) -> Iterator[bytes | memoryview]:
        if self._it is None or offset != self.pos:
            self._reopen(offset)
        left = length
        while left > 0:
            chunk = self._next()
            if len(chunk) > left:
                chunk, self._rest = chunk[:left], chunk[left:]
            self.pos += len(chunk)
            left -= len(chunk)
            if self._progress:
                self._progress(len(chunk))
            yield chunk

    def _next(self) -> bytes | memoryview:
        if self._rest:
            chunk, self._rest = self._rest, b""
            return chunk
        assert self._it is not None
        for piece in self._it:
            if piece:
                return piece
        raise DigestMismatchError(
            f"{self._what}: the content ended after {self.pos} of {self._size} bytes",
            hint="the source is truncated; nothing was committed",
        )

    def _reopen(self, offset: int) -> None:
        self.close()
        if self._progress and offset != self.pos:
            self._progress(offset - self.pos)
        self.pos = offset
        self._it = iter(self._open_at(offset))

    def close(self) -> None:
        it, self._it, self._rest = self._it, None, b""
        close = getattr(it, "close", None)
        if close is not None:
            close()
