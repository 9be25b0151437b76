"""Blob uploads and cross-repository mounts, as the distribution-spec describes them.

``POST`` starts an upload session and answers with its ``Location``; a blob up
to the chunk size goes in one ``PUT ?digest=``; a larger one in ``PATCH``
chunks with ``Content-Range``, each answered with the session's new
``Location`` and ``Range``.  After a dropped connection the session's status
(``GET`` → ``204`` with ``Range``) says where to go on from; a session that
failed for good is cancelled with ``DELETE``.  A mount (``POST ?mount=&from=``)
links a blob another repository of the same registry already has.

:class:`BlobUploads` is part of :class:`~derrick.registry.RegistryClient`:
every request still goes through the client's one request path.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import httpx

from derrick.api import pull_scope, push_scope, query_string, upload_location
from derrick.digest import Digest
from derrick.errors import (
    DerrickError,
    DigestMismatchError,
    ServerError,
    TooManyRequestsError,
    TransportError,
)
from derrick.reference import Reference

if TYPE_CHECKING:
    from derrick.transport import Transport

log = logging.getLogger("derrick.registry")


class BlobUploads:
    """The upload half of the registry client (mixed into ``RegistryClient``)."""

    transport: Transport

    if TYPE_CHECKING:

        def _url(self, ref: Reference | str, path: str) -> str: ...

        def _request(
            self,
            method: str,
            registry: str,
            url: str,
            *,
            scopes: Sequence[str],
            what: str,
            headers: dict[str, str] | None = None,
            content: bytes | Callable[[], Iterable[bytes]] | None = None,
            stream: bool = False,
            ok: Sequence[int] = (200,),
            retry: bool = True,
        ) -> httpx.Response: ...

    def mount_blob(self, ref: Reference, digest: Digest, from_repository: str) -> bool:
        """Ask the registry to link a blob from another repository; True if it did."""
        q = query_string(mount=str(digest), **{"from": from_repository})
        url = self._url(ref, f"/v2/{ref.repository}/blobs/uploads/{q}")
        resp = self._request(
            "POST",
            ref.registry,
            url,
            scopes=[push_scope(ref.repository), pull_scope(from_repository)],
            what=f"mount of blob {digest} into {ref.registry}/{ref.repository}",
            ok=(201, 202),
        )
        if resp.status_code == 202:
            self._cancel_upload(ref, resp)
            return False
        return True

    def _cancel_upload(self, ref: Reference, resp: httpx.Response) -> None:
        loc = resp.headers.get("location")
        if loc:
            self._cancel_upload_at(ref, str(resp.request.url.join(loc)), None)

    def _cancel_upload_at(
        self, ref: Reference, location: str, scopes: Sequence[str] | None
    ) -> None:
        """Abandon an upload session (best effort: the registry expires it anyway)."""
        with contextlib.suppress(DerrickError):
            self._request(
                "DELETE",
                ref.registry,
                location,
                scopes=list(scopes) if scopes else [push_scope(ref.repository)],
                what="cancel upload",
                ok=(200, 202, 204, 404),
                retry=False,
            )

    def upload_blob(
        self,
        ref: Reference,
        digest: Digest,
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
        scopes = list(scopes) if scopes else [push_scope(ref.repository)]
        what = f"upload of blob {digest} to {ref.registry}/{ref.repository}"
        cursor = _UploadCursor(open_at, size, progress, what)
        try:
            if chunk_size is None or size <= chunk_size:
                self._upload_whole(ref, digest, size, cursor, scopes, what)
            else:
                self._upload_chunked(ref, digest, size, chunk_size, cursor, scopes, what)
        finally:
            cursor.close()

    def _start_upload(self, ref: Reference, scopes: Sequence[str], what: str) -> str:
        resp = self._request(
            "POST",
            ref.registry,
            self._url(ref, f"/v2/{ref.repository}/blobs/uploads/"),
            scopes=scopes,
            what=what,
            ok=(202,),
        )
        return upload_location(resp, what)

    def _upload_whole(
        self,
        ref: Reference,
        digest: Digest,
        size: int,
        cursor: _UploadCursor,
        scopes: Sequence[str],
        what: str,
    ) -> None:
        failures = 0
        while True:
            location = self._start_upload(ref, scopes, what)
            try:
                self._request(
                    "PUT",
                    ref.registry,
                    _with_digest(location, digest),
                    scopes=scopes,
                    what=what,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(size),
                    },
                    content=functools.partial(cursor.read, 0, size),
                    ok=(201, 204),
                    retry=False,
                )
                return
            except _RETRY_UPLOAD as e:
                # The session may hold part of the body: start a fresh one.
                self._cancel_upload_at(ref, location, scopes)
                failures += 1
                if failures > self.transport.retry.retries:
                    raise
                log.debug("%s failed (%s); starting over", what, e)
                self.transport.retry_sleep(failures - 1, _retry_after(e))
            except BaseException:
                self._cancel_upload_at(ref, location, scopes)
                raise

    def _upload_chunked(
        self,
        ref: Reference,
        digest: Digest,
        size: int,
        chunk_size: int,
        cursor: _UploadCursor,
        scopes: Sequence[str],
        what: str,
    ) -> None:
        location = self._start_upload(ref, scopes, what)
        try:
            offset = 0
            failures = 0
            while offset < size:
                end = min(offset + chunk_size, size)
                try:
                    resp = self._request(
                        "PATCH",
                        ref.registry,
                        location,
                        scopes=scopes,
                        what=what,
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{offset}-{end - 1}",
                            "Content-Length": str(end - offset),
                        },
                        content=functools.partial(cursor.read, offset, end - offset),
                        ok=(202,),
                        retry=False,
                    )
                except _RETRY_UPLOAD as e:
                    failures += 1
                    if failures > self.transport.retry.retries:
                        raise
                    self.transport.retry_sleep(failures - 1, _retry_after(e))
                    offset, location = self._upload_status(ref, location, scopes, what)
                    log.debug("%s broke off (%s); resuming at byte %d", what, e, offset)
                    continue
                location = upload_location(resp, what)
                offset = end
            self._request(
                "PUT",
                ref.registry,
                _with_digest(location, digest),
                scopes=scopes,
                what=what,
                headers={"Content-Length": "0"},
                content=b"",
                ok=(201, 204),
            )
        except BaseException:
            self._cancel_upload_at(ref, location, scopes)
            raise

    def _upload_status(
        self, ref: Reference, location: str, scopes: Sequence[str], what: str
    ) -> tuple[int, str]:
        """How many bytes the registry holds of an upload, and where to continue it."""
        resp = self._request("GET", ref.registry, location, scopes=scopes, what=what, ok=(204,))
        offset = _uploaded_bytes(resp.headers.get("range"))
        return offset, upload_location(resp, what) if resp.headers.get("location") else location


#: Failures after which an upload is resumed or started over; other errors end it.
_RETRY_UPLOAD = (TransportError, ServerError, TooManyRequestsError)


def _retry_after(e: Exception) -> float | None:
    return e.retry_after if isinstance(e, TooManyRequestsError) else None


def _with_digest(location: str, digest: Digest) -> str:
    return str(httpx.URL(location).copy_merge_params({"digest": str(digest)}))


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
    otherwise (a retry, a resume) the content is opened again at ``offset``.
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
        self._rest = b""  # read from the iterator but not yet sent
        self.pos = 0  # offset of the next byte to send

    def read(self, offset: int, length: int) -> Iterator[bytes]:
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

    def _next(self) -> bytes:
        if self._rest:
            chunk, self._rest = self._rest, b""
            return chunk
        assert self._it is not None
        for piece in self._it:
            if piece:
                return bytes(piece)
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
