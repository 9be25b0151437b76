"""Blobs: streamed downloads (from an offset, with ``Range``), HEAD, small reads, delete."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import httpx

from derrick.connections import SOCKET_READ_SIZE
from derrick.digest import Digest, Verifier
from derrick.errors import ManifestError, NotFoundError, ProtocolError
from derrick.manifest import MAX_MANIFEST_SIZE, Descriptor
from derrick.rawio import raw_chunks
from derrick.reference import Reference
from derrick.registry.scopes import delete_scope, pull_scope
from derrick.registry.session import Call, Session, stream_error
from derrick.registry.urls import blob_path
from derrick.transport import redact_url

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class BlobStream:
    """An open blob download: iterate :meth:`chunks`; ``offset`` is where it starts."""

    def __init__(self, resp: httpx.Response, offset: int, total: int | None) -> None:
        self._resp = resp
        self.offset = offset
        self.total = total

    def chunks(self, size: int | None = None) -> Iterator[bytes | memoryview]:
        """The body as it arrives, in pieces of up to ``size`` bytes (None: as they come).

        A body of known length on derrick's own connections is read straight from the
        socket into one buffer (:func:`derrick.rawio.raw_chunks`): its pieces are views
        of that buffer, each valid until the next is asked for.
        """
        raw = raw_chunks(self._resp, size or SOCKET_READ_SIZE)
        try:
            yield from raw if raw is not None else self._resp.iter_raw(size)
        except httpx.HTTPError as e:
            raise stream_error(e, self._resp) from None


def _blob_call(session: Session, ref: Reference, digest: Digest) -> Call:
    """A GET of blob ``digest`` of ``ref``'s repository (``replace`` it for the others)."""
    ep = session.endpoint(ref.registry)
    url = ep.url(blob_path(ref.repository, digest))
    what = f"blob {digest} in {ref.registry}/{ref.repository}"
    return Call("GET", ep, url, (pull_scope(ref.repository),), what, "blob")


def head_blob(
    session: Session, ref: Reference, digest: Digest, scopes: tuple[str, ...] = ()
) -> int | None:
    """The blob's size if the repository has it, else None."""
    call = _blob_call(session, ref, digest)
    try:
        resp = session.request(replace(call, method="HEAD", scopes=scopes or call.scopes))
    except NotFoundError:
        return None
    length = resp.headers.get("content-length")
    return int(length) if length and length.isdigit() else 0


@contextmanager
def open_blob(
    session: Session, ref: Reference, digest: Digest, offset: int = 0
) -> Iterator[BlobStream]:
    """Stream a blob, from ``offset`` with a ``Range`` request when it is not 0.

    The registry may ignore the range; then the stream starts at 0 and
    ``stream.offset`` says so.  The caller verifies the digest.
    """
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    call = replace(_blob_call(session, ref, digest), headers=headers, stream=True, ok=(200, 206))
    resp = session.request(call)
    try:
        yield _stream(resp, digest, offset)
    finally:
        resp.close()


def _stream(resp: httpx.Response, digest: Digest, offset: int) -> BlobStream:
    """The stream of an answer to a blob GET asked from ``offset``."""
    if resp.status_code != 206:
        cl = resp.headers.get("content-length")
        return BlobStream(resp, 0, int(cl) if cl and cl.isdigit() else None)
    m = _CONTENT_RANGE.match(resp.headers.get("content-range", ""))
    if not m or int(m.group(1)) != offset:
        raise ProtocolError(
            f"blob {digest}: the registry answered a range request with a wrong Content-Range",
            status=206,
            url=redact_url(resp.request.url),
        )
    return BlobStream(resp, offset, None if m.group(3) == "*" else int(m.group(3)))


def get_blob_bytes(
    session: Session,
    ref: Reference,
    desc: Descriptor | Digest,
    max_size: int = MAX_MANIFEST_SIZE,
) -> bytes:
    """A small blob (a config) read whole and verified."""
    digest = desc.digest if isinstance(desc, Descriptor) else desc
    size = desc.size if isinstance(desc, Descriptor) else None
    if size is not None and size > max_size:
        raise ManifestError(f"blob {digest} is {size} bytes, more than the {max_size} limit")
    v = Verifier(digest, size)
    parts: list[bytes] = []
    with open_blob(session, ref, digest) as stream:
        for chunk in stream.chunks():
            v.update(chunk)
            if v.count > max_size:
                raise ManifestError(f"blob {digest} is larger than the {max_size} byte limit")
            parts.append(bytes(chunk))
    v.verify()
    return b"".join(parts)


def delete_blob(session: Session, ref: Reference, digest: Digest) -> None:
    call = _blob_call(session, ref, digest)
    scopes = (delete_scope(ref.repository),)
    what = f"delete of {call.what}"
    session.request(
        replace(call, method="DELETE", scopes=scopes, what=what, subject=None, ok=(200, 202))
    )
