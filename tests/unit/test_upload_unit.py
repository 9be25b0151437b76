"""Blob uploads against a scripted registry (httpx.MockTransport): monolithic and chunked
uploads, resuming from the registry's Range after a dropped connection, starting over, and
content that fails its digest never being committed -- also as the copy engine uploads (a
registry repository as a sink, fed by the one verified, resumable blob stream)."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from derrick.auth.credentials import Credential
from derrick.digest import Digest
from derrick.errors import DeniedError, DigestMismatchError, UnauthorizedError
from derrick.images.feed import BytesBody, Feed
from derrick.images.handover import BlobMover
from derrick.images.model import BlobOutcome
from derrick.images.plan import PlanItem, plan
from derrick.images.remote import RegistryRepository
from derrick.manifest import Descriptor
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.registry.uploads import _uploaded_bytes
from derrick.transport import RetryPolicy, Transport
from support.memory import MemorySource

DST = Reference.parse("dst.test/team/app:v1")
SRC = Reference.parse("src.test/team/app:v1")
BLOB = bytes(range(256)) * 40 + b"tail"  # 10244 bytes
DIGEST = Digest.of(BLOB)


@dataclass
class Session:
    data: bytearray = field(default_factory=bytearray)
    state: int = 0


@dataclass
class FakeRegistry:
    """Just enough of the upload API of the distribution spec, with scripted failures."""

    #: PATCH numbers (1-based) to break off after accepting this many body bytes
    drop_patch: dict[int, int] = field(default_factory=dict)
    #: PUT numbers (1-based) with a body to break off after this many body bytes
    drop_put: dict[int, int] = field(default_factory=dict)
    #: (host, digest) -> content the registry serves for GET blob
    served: dict[tuple[str, str], bytes] = field(default_factory=dict)
    honour_range: bool = True
    sessions: dict[str, Session] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    patches: int = 0
    puts: int = 0
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def _location(self, uid: str) -> str:
        s = self.sessions[uid]
        s.state += 1
        return f"/v2/team/app/blobs/uploads/{uid}?_state={s.state}"

    def _receive(self, request: httpx.Request, session: Session, limit: int | None) -> None:
        got = 0
        for chunk in request.stream:  # type: ignore[union-attr]
            part = bytes(chunk)
            if limit is not None and got + len(part) > limit:
                session.data += part[: limit - got]
                raise httpx.WriteError("connection reset by peer")
            session.data += part
            got += len(part)

    def handler(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        self.log.append(f"{request.method} {url.host}{url.path}")
        path = url.path
        if request.method == "GET" and (url.host, path.rsplit("/", 1)[-1]) in self.served:
            body = self.served[(url.host, path.rsplit("/", 1)[-1])]
            rng = request.headers.get("range")
            if rng and self.honour_range:
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))  # type: ignore[union-attr]
                return httpx.Response(
                    206,
                    stream=httpx.ByteStream(body[start:]),
                    headers={"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"},
                )
            return httpx.Response(200, stream=httpx.ByteStream(body))
        if request.method == "HEAD" and "/blobs/sha256:" in path:
            digest = path.rsplit("/", 1)[-1]
            if digest in self.blobs:
                return httpx.Response(200, headers={"Content-Length": str(len(self.blobs[digest]))})
            return httpx.Response(404)
        if request.method == "POST" and path.endswith("/blobs/uploads/"):
            uid = f"u{next(self._ids)}"
            self.sessions[uid] = Session()
            return httpx.Response(202, headers={"Location": self._location(uid), "Range": "0-0"})
        m = re.fullmatch(r"/v2/team/app/blobs/uploads/(u\d+)", path)
        if not m or m.group(1) not in self.sessions:
            return httpx.Response(404, json={"errors": [{"code": "BLOB_UPLOAD_UNKNOWN"}]})
        uid = m.group(1)
        session = self.sessions[uid]
        if request.method == "DELETE":
            del self.sessions[uid]
            return httpx.Response(204)
        if request.method == "GET":
            end = max(len(session.data) - 1, 0)
            return httpx.Response(
                204, headers={"Location": self._location(uid), "Range": f"0-{end}"}
            )
        if request.method == "PATCH":
            self.patches += 1
            start, _ = request.headers["content-range"].split("-")
            if int(start) != len(session.data):
                return httpx.Response(416)
            self._receive(request, session, self.drop_patch.get(self.patches))
            return httpx.Response(
                202,
                headers={"Location": self._location(uid), "Range": f"0-{len(session.data) - 1}"},
            )
        if request.method == "PUT":
            self.puts += 1
            self._receive(request, session, self.drop_put.get(self.puts))
            want = url.params["digest"]
            if "sha256:" + hashlib.sha256(session.data).hexdigest() != want:
                return httpx.Response(400, json={"errors": [{"code": "DIGEST_INVALID"}]})
            self.blobs[want] = bytes(session.data)
            del self.sessions[uid]
            return httpx.Response(201, headers={"Location": f"/v2/team/app/blobs/{want}"})
        return httpx.Response(405)


def make_client(fake: FakeRegistry, credentials: Credential | None = None) -> RegistryClient:
    mock = httpx.MockTransport(fake.handler)
    transport = Transport(
        mounts={"https://dst.test": mock, "https://src.test": mock, "https://auth.test": mock},
        retry=RetryPolicy(retries=3),
        sleep=lambda _s: None,
    )
    return RegistryClient(transport=transport, credentials=lambda _r: credentials)


class Source:
    """Content served in small pieces; counts how often it is opened and where."""

    def __init__(self, data: bytes, piece: int = 1000) -> None:
        self.data = data
        self.piece = piece
        self.opened: list[int] = []

    def __call__(self, offset: int) -> Iterator[bytes]:
        self.opened.append(offset)
        for i in range(offset, len(self.data), self.piece):
            yield self.data[i : i + self.piece]


def test_small_blob_goes_in_one_put() -> None:
    fake = FakeRegistry()
    sent: list[int] = []
    with make_client(fake) as client:
        client.upload_blob(
            DST, DIGEST, len(BLOB), Source(BLOB), chunk_size=len(BLOB), progress=sent.append
        )
    assert fake.blobs == {str(DIGEST): BLOB}
    assert [e.split()[0] for e in fake.log] == ["POST", "PUT"]
    assert sum(sent) == len(BLOB)


def test_large_blob_goes_in_patch_chunks_read_once() -> None:
    fake = FakeRegistry()
    source = Source(BLOB, piece=700)  # pieces straddle the chunk boundaries
    with make_client(fake) as client:
        client.upload_blob(DST, DIGEST, len(BLOB), source, chunk_size=3000)
    assert fake.blobs == {str(DIGEST): BLOB}
    assert [e.split()[0] for e in fake.log] == ["POST", "PATCH", "PATCH", "PATCH", "PATCH", "PUT"]
    assert source.opened == [0]  # one pass over the content


def test_chunked_upload_resumes_from_the_registry_range() -> None:
    fake = FakeRegistry(drop_patch={2: 1234})  # the 2nd PATCH breaks off after 1234 bytes
    source = Source(BLOB, piece=500)
    sent: list[int] = []
    with make_client(fake) as client:
        client.upload_blob(DST, DIGEST, len(BLOB), source, chunk_size=3000, progress=sent.append)
    assert fake.blobs == {str(DIGEST): BLOB}
    methods = [e.split()[0] for e in fake.log]
    # POST, PATCH ok, PATCH broken, GET status, then the rest from byte 4000
    assert methods[:5] == ["POST", "PATCH", "PATCH", "GET", "PATCH"]
    assert methods[-1] == "PUT" and "POST" not in methods[1:]
    # the content was opened again at the byte the registry reported: 3000 + 1234
    assert source.opened == [0, 4234]
    assert f"PATCH dst.test{fake.log[4].split('dst.test')[1]}" == fake.log[4]
    assert sum(sent) == len(BLOB)  # progress went back by what was lost


def test_whole_upload_starts_over_after_a_broken_put() -> None:
    fake = FakeRegistry(drop_put={1: 5000})
    source = Source(BLOB)
    sent: list[int] = []
    with make_client(fake) as client:
        client.upload_blob(DST, DIGEST, len(BLOB), source, chunk_size=None, progress=sent.append)
    assert fake.blobs == {str(DIGEST): BLOB}
    methods = [e.split()[0] for e in fake.log]
    assert methods == ["POST", "PUT", "DELETE", "POST", "PUT"]
    assert source.opened == [0, 0]
    assert sum(sent) == len(BLOB)
    assert fake.sessions == {}


def test_uploaded_bytes_reads_the_range_header() -> None:
    assert _uploaded_bytes(None) == 0
    assert _uploaded_bytes("0-0") == 0  # how the distribution registry reports nothing
    assert _uploaded_bytes("0-9") == 10
    assert _uploaded_bytes("bytes=0-4095") == 4096
    assert _uploaded_bytes("garbage") == 0


class _Bytes:
    """Bytes in memory as a blob source (what a feed reads from)."""

    description = "test blob"

    def __init__(self, data: bytes) -> None:
        self.data = data

    def open_blob(self, desc: Descriptor, offset: int = 0) -> BytesBody:
        return BytesBody(self.data, offset)


NO_WAIT = RetryPolicy(retries=3, backoff=0)


@pytest.mark.parametrize("chunk_size", [None, 3000])
def test_content_failing_its_digest_is_never_committed(chunk_size: int | None) -> None:
    fake = FakeRegistry()
    bad = BLOB[:-1] + b"X"
    desc = Descriptor("application/octet-stream", DIGEST, len(BLOB))
    with make_client(fake) as client:
        sink = RegistryRepository(client, DST, chunk_size=chunk_size)
        with pytest.raises(DigestMismatchError):
            sink.put_blob(Feed(_Bytes(bad), desc, retry=NO_WAIT))
    assert fake.blobs == {}  # the body broke off before its last bytes: nothing committed
    assert fake.puts == 0
    assert fake.sessions == {}  # and the session was cancelled
    assert sum(1 for e in fake.log if e.startswith("POST")) == 1  # not retried


@pytest.mark.parametrize("honour_range", [True, False])
def test_streaming_copy_resumes_and_verifies(honour_range: bool) -> None:
    fake = FakeRegistry(drop_patch={2: 1500}, honour_range=honour_range)
    fake.served[("src.test", str(DIGEST))] = BLOB
    desc = Descriptor("application/octet-stream", DIGEST, len(BLOB))
    with make_client(fake) as client:
        feed = Feed(RegistryRepository(client, SRC), desc, retry=NO_WAIT)
        RegistryRepository(client, DST, chunk_size=4000).put_blob(feed)
    assert feed.verified
    assert fake.blobs == {str(DIGEST): BLOB}


@pytest.mark.parametrize("chunk_size", [None, 4000])
@pytest.mark.parametrize("served", [BLOB[:-1] + b"X", BLOB[:-1], BLOB + b"more"])
def test_streaming_copy_of_wrong_content_is_refused(chunk_size: int | None, served: bytes) -> None:
    fake = FakeRegistry()
    fake.served[("src.test", str(DIGEST))] = served
    desc = Descriptor("application/octet-stream", DIGEST, len(BLOB))
    with make_client(fake) as client, pytest.raises(DigestMismatchError):
        feed = Feed(RegistryRepository(client, SRC), desc, retry=NO_WAIT)
        RegistryRepository(client, DST, chunk_size=chunk_size).put_blob(feed)
    assert fake.blobs == {}
    assert fake.sessions == {}


def test_existing_blobs_are_skipped() -> None:
    fake = FakeRegistry()
    fake.blobs[str(DIGEST)] = BLOB
    desc = Descriptor("application/octet-stream", DIGEST, len(BLOB))
    with make_client(fake) as client:
        assert RegistryRepository(client, DST).has_blob(desc)
    assert [e.split()[0] for e in fake.log] == ["HEAD"]


def _token_handler(fake: FakeRegistry) -> httpx.MockTransport:
    challenge = (
        'Bearer realm="https://auth.test/token",service="dst",'
        'scope="repository:team/app:pull,push",error="insufficient_scope"'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            return httpx.Response(200, json={"token": "t", "expires_in": 300})
        fake.log.append(f"{request.method} {request.url.path}")
        return httpx.Response(
            401,
            headers={"WWW-Authenticate": challenge},
            json={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
        )

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("logged_in", [True, False])
def test_push_without_push_access_is_denied(logged_in: bool) -> None:
    fake = FakeRegistry()
    mock = _token_handler(fake)
    transport = Transport(
        mounts={"https://dst.test": mock, "https://auth.test": mock}, sleep=lambda _s: None
    )
    cred = Credential(username="reader", password="pw") if logged_in else None
    with (
        RegistryClient(transport=transport, credentials=lambda _r: cred) as client,
        pytest.raises(UnauthorizedError if not logged_in else DeniedError) as info,
    ):
        client.upload_blob(DST, DIGEST, len(BLOB), Source(BLOB))
    msg = str(info.value)
    assert "\n" not in msg
    if logged_in:
        assert "access denied" in msg and "repository:team/app:pull,push" in msg
    else:
        assert "authentication required" in msg


class RecordingProgress:
    def __init__(self) -> None:
        self.total = 0
        self.advanced = 0
        self.started: list[Descriptor] = []
        self.finished: list[tuple[Descriptor, BlobOutcome]] = []

    def planned(self, total_bytes: int) -> None:
        self.total = total_bytes

    def blob_started(self, desc: Descriptor) -> None:
        self.started.append(desc)

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        self.advanced += nbytes

    def blob_finished(self, desc: Descriptor, outcome: BlobOutcome) -> None:
        self.finished.append((desc, outcome))


def test_progress_covers_uploads_retries_and_skipped_blobs() -> None:
    """The engine's blob step to a registry: an upload whose chunk breaks off goes back and
    on, a blob the registry has is advanced whole; the sum is what was planned."""
    fake = FakeRegistry(drop_patch={2: 100})
    other = b"another blob" * 1000
    fake.blobs[str(Digest.of(other))] = other
    src = MemorySource(chunk_size=1000)
    src.add_image([BLOB, other], tag="v1")
    the_plan = plan([PlanItem(src, "v1")])
    progress = RecordingProgress()
    with make_client(fake) as client:
        sink = RegistryRepository(client, DST, chunk_size=4096)
        sink.begin(the_plan)
        mover = BlobMover(the_plan, sink, jobs=2, progress=progress, retry=NO_WAIT)
        mover.run()
    layer, skipped = the_plan.blobs[1], the_plan.blobs[2]
    assert (mover.stats.copied, mover.stats.skipped) == (2, 1)  # the config and BLOB
    # the upload resumed at the registry's offset: the bytes before it were read again
    assert mover.stats.copied_bytes > the_plan.blobs[0].size + len(BLOB)
    assert progress.total == progress.advanced == sum(d.size for d in the_plan.blobs)
    assert layer in progress.started and skipped not in progress.started
    assert (skipped, "skipped") in progress.finished and (layer, "copied") in progress.finished
    assert fake.blobs[str(DIGEST)] == BLOB
