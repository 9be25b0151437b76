"""Registry-client pieces that need no registry: rate-limit headers, URL redaction, Link
pagination, error mapping, retries and redirects.

Fault cases a real registry cannot be made to produce are served by ``httpx.MockTransport``
mounted into derrick's :class:`~derrick.transport.Transport`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from derrick.auth.credentials import Credential
from derrick.cli.errors import error_text
from derrick.digest import Digest
from derrick.errors import (
    BlobUnknownError,
    DeniedError,
    DigestMismatchError,
    ManifestUnknownError,
    NameUnknownError,
    ProtocolError,
    ServerError,
    TLSError,
    TooManyRequestsError,
    TransportError,
    UnauthorizedError,
)
from derrick.reference import Reference
from derrick.registry import RateLimit, RegistryClient
from derrick.registry.tags import LINK_RE
from derrick.transport import (
    RetryPolicy,
    Transport,
    is_loopback,
    parse_retry_after,
    redact_url,
)

HOST = "registry.test"
Handler = Callable[[httpx.Request], httpx.Response]


def make_client(
    handler: Handler,
    *,
    cred: Credential | None = None,
    retries: int = 2,
    sleeps: list[float] | None = None,
) -> RegistryClient:
    slept = sleeps if sleeps is not None else []
    transport = Transport(
        mounts={"all://": httpx.MockTransport(handler)},
        retry=RetryPolicy(retries=retries),
        sleep=slept.append,
    )
    return RegistryClient(credentials=lambda registry: cred, transport=transport)


def ref(text: str = f"{HOST}/team/app:v1") -> Reference:
    return Reference.parse(text)


def json_response(status: int, body: Any, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def errors(code: str, message: str = "") -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message}]}


MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + "a" * 64,
            "size": 2,
        },
        "layers": [],
    }
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


# -- RateLimit -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"},
            RateLimit(100, 76, 21600, None),
        ),
        (
            {
                "RateLimit-Limit": "200; w=3600",
                "RateLimit-Remaining": "0; w=3600",
                "Docker-RateLimit-Source": "1.2.3.4",
            },
            RateLimit(200, 0, 3600, "1.2.3.4"),
        ),
        ({"ratelimit-limit": "100"}, RateLimit(100, None, None, None)),
        ({"ratelimit-remaining": "5;w=60"}, RateLimit(None, 5, 60, None)),
        (
            {"ratelimit-limit": "lots;w=60", "ratelimit-remaining": "3"},
            RateLimit(None, 3, 60, None),
        ),
        ({"ratelimit-limit": "garbage"}, None),
        ({"ratelimit-limit": ""}, None),
        ({}, None),
        ({"docker-ratelimit-source": "1.2.3.4"}, None),
    ],
)
def test_ratelimit_from_headers(headers: dict[str, str], expected: RateLimit | None) -> None:
    assert RateLimit.from_headers(httpx.Headers(headers)) == expected


@pytest.mark.parametrize(
    ("rl", "text"),
    [
        (RateLimit(100, 76, 21600, None), "76 of 100 pulls left per 6h"),
        (RateLimit(100, 76, 90, None), "76 of 100 pulls left per 90s"),
        (RateLimit(100, 76, None, None), "76 of 100 pulls left"),
    ],
)
def test_ratelimit_describe(rl: RateLimit, text: str) -> None:
    assert rl.describe() == text


def test_ratelimit_on_head_manifest() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={
                "docker-content-digest": MANIFEST_DIGEST,
                "content-type": "application/vnd.oci.image.manifest.v1+json",
                "content-length": str(len(MANIFEST)),
                "ratelimit-limit": "100;w=21600",
                "ratelimit-remaining": "99;w=21600",
            },
        )

    with make_client(handler) as client:
        head = client.head_manifest(ref())
    assert head.ratelimit == RateLimit(100, 99, 21600, None)
    assert str(head.descriptor.digest) == MANIFEST_DIGEST
    assert head.descriptor.size == len(MANIFEST)


# -- redact_url ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://registry.test/v2/", "https://registry.test/v2/"),
        ("https://user:pw@registry.test:5000/v2/x", "https://registry.test:5000/v2/x"),
        ("https://user@registry.test/v2/", "https://registry.test/v2/"),
        (
            "https://auth.test/token?service=s&scope=repository:a:pull&token=abc",
            "https://auth.test/token?service=s&scope=repository:a:pull&token=REDACTED",
        ),
        (
            "https://s3.test/blob?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=deadbeef&x=1",
            "https://s3.test/blob?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&x=1",
        ),
        ("https://cdn.test/b?sig=s3cr3t", "https://cdn.test/b?sig=REDACTED"),
        (
            "https://a.test/t?password=hunter2&access_token=t",
            "https://a.test/t?password=REDACTED&access_token=REDACTED",
        ),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert redact_url(httpx.URL(url)) == expected


def test_redact_url_keeps_no_secret() -> None:
    shown = redact_url("https://alice:hunter2@registry.test/x?refresh_token=r3fr3sh")
    assert "hunter2" not in shown and "r3fr3sh" not in shown and "alice" not in shown


# -- small transport helpers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("registry.localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.5.6.7", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("10.0.0.1:5000", False),
        ("registry.test", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    future = parse_retry_after("Wed, 21 Oct 2099 07:28:00 GMT")
    assert future is not None and future > 1e9


def test_retry_policy_delay() -> None:
    policy = RetryPolicy(backoff=1.0, max_backoff=4.0, max_retry_after=60)
    for attempt in range(6):
        d = policy.delay(attempt)
        base = min(4.0, 2.0**attempt)
        assert base / 2 <= d <= base
    assert policy.delay(0, retry_after=7) == 7
    assert policy.delay(0, retry_after=600) == 60
    assert policy.delay(0, retry_after=-5) == 0


# -- Link pagination -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "target"),
    [
        ('</v2/a/tags/list?n=2&last=b>; rel="next"', "/v2/a/tags/list?n=2&last=b"),
        ("</v2/a/tags/list?n=2&last=b>; rel=next", "/v2/a/tags/list?n=2&last=b"),
        (
            '<https://r.test/v2/_catalog?last=x&n=1>;rel="next"',
            "https://r.test/v2/_catalog?last=x&n=1",
        ),
        ('</prev>; rel="prev", </next?n=1>; rel="next"', "/next?n=1"),
        ('</v2/a/tags/list?n=1>; REL="NEXT"', "/v2/a/tags/list?n=1"),
    ],
)
def test_link_header_next(header: str, target: str) -> None:
    m = LINK_RE.search(header)
    assert m is not None and m.group(1) == target


@pytest.mark.parametrize("header", ['</prev>; rel="prev"', "", "garbage", "<>"])
def test_link_header_without_next(header: str) -> None:
    m = LINK_RE.search(header)
    assert m is None or m.group(1) == ""


def _paging_handler(
    tags: list[str], seen: list[httpx.Request], *, absolute: bool = False
) -> Handler:
    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        n = int(req.url.params.get("n", len(tags)))
        last = req.url.params.get("last")
        rest = [t for t in tags if last is None or t > last]
        page = rest[:n]
        headers = {}
        if len(rest) > n:
            nxt = f"/v2/team/app/tags/list?n={n}&last={page[-1]}"
            if absolute:
                nxt = f"https://{HOST}{nxt}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        return json_response(200, {"name": "team/app", "tags": page}, **headers)

    return handler


@pytest.mark.parametrize("absolute", [False, True])
def test_list_tags_follows_link(absolute: bool) -> None:
    tags = [f"t{i:02d}" for i in range(7)]
    seen: list[httpx.Request] = []
    with make_client(_paging_handler(tags, seen, absolute=absolute)) as client:
        assert client.list_tags(ref(), page_size=3) == tags
    assert [r.url.params.get("last") for r in seen] == [None, "t02", "t05"]
    assert all(r.url.params["n"] == "3" for r in seen)


def test_list_tags_without_pagination_and_null_tags() -> None:
    with make_client(lambda r: json_response(200, {"name": "team/app", "tags": None})) as client:
        assert client.list_tags(ref()) == []


def test_pagination_loop_is_an_error() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return json_response(200, {"tags": ["a"]}, Link='</v2/team/app/tags/list?n=1>; rel="next"')

    with make_client(handler) as client, pytest.raises(ProtocolError, match="loops back"):
        client.list_tags(ref(), page_size=1)


def test_catalog_pagination() -> None:
    pages = {
        None: (["a/one", "a/two"], '</v2/_catalog?n=2&last=a%2Ftwo>; rel="next"'),
        "a/two": (["b/three"], None),
    }

    def handler(req: httpx.Request) -> httpx.Response:
        repos, link = pages[req.url.params.get("last")]
        headers = {"Link": link} if link else {}
        return json_response(200, {"repositories": repos}, **headers)

    with make_client(handler) as client:
        assert client.catalog(HOST, page_size=2) == ["a/one", "a/two", "b/three"]


@pytest.mark.parametrize(
    "body",
    [b"<html>hi</html>", b'{"tags": "v1"}', b'{"tags": [1, 2]}', b"[" * 50_000, b"\xff\xfe"],
)
def test_tag_list_garbage_is_a_protocol_error(body: bytes) -> None:
    with (
        make_client(lambda r: httpx.Response(200, content=body)) as client,
        pytest.raises(ProtocolError),
    ):
        client.list_tags(ref())


def test_pagination_link_to_another_host_gets_no_credentials() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if "authorization" not in req.headers and req.url.host == HOST:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        if req.url.host == HOST:
            link = '<https://elsewhere.test/v2/team/app/tags/list?last=a>; rel="next"'
            return json_response(200, {"tags": ["a"]}, Link=link)
        return json_response(200, {"tags": ["b"]})

    with make_client(handler, cred=Credential("u", "secret")) as client:
        assert client.list_tags(ref()) == ["a", "b"]
    elsewhere = [r for r in seen if r.url.host == "elsewhere.test"]
    assert elsewhere and all("authorization" not in r.headers for r in elsewhere)


# -- error mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "exc", "text"),
    [
        (
            404,
            errors("MANIFEST_UNKNOWN", "manifest unknown"),
            ManifestUnknownError,
            "not in the repository",
        ),
        (
            404,
            errors("NAME_UNKNOWN", "repository name not known"),
            NameUnknownError,
            "repository does not exist",
        ),
        (404, None, ManifestUnknownError, "not in the repository"),
        (
            401,
            errors("UNAUTHORIZED", "authentication required"),
            UnauthorizedError,
            "derrick login",
        ),
        # anonymous: no credentials lack anything, logging in is what may help
        (403, errors("DENIED", "requested access is denied"), DeniedError, "derrick login"),
        (500, errors("UNKNOWN", "boom"), ServerError, "boom"),
        (418, None, ProtocolError, "unexpected HTTP 418"),
    ],
)
def test_manifest_error_mapping(status: int, body: Any, exc: type[Exception], text: str) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v2/":  # a registry: what is wrong is the manifest asked for
            return httpx.Response(200)
        if body is None:
            return httpx.Response(status)
        return json_response(status, body)

    with make_client(handler, retries=0) as client, pytest.raises(exc) as info:
        client.get_manifest(ref())
    shown = error_text(info.value)  # as the CLI says it
    assert text in shown
    assert "\n" not in shown
    # The library's own words name no CLI flag or command.
    assert "derrick " not in str(info.value) and "--" not in str(info.value)


def test_denied_after_credentials_were_sent_blames_them() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if "authorization" not in req.headers:
            return json_response(
                401, errors("UNAUTHORIZED"), **{"WWW-Authenticate": 'Basic realm="r"'}
            )
        return json_response(403, errors("DENIED", "requested access is denied"))

    with (
        make_client(handler, cred=Credential("u", "secret"), retries=0) as client,
        pytest.raises(DeniedError) as info,
    ):
        client.get_manifest(ref())
    assert "lack that permission" in str(info.value)


def test_blob_not_found() -> None:
    with (
        make_client(lambda r: json_response(404, errors("BLOB_UNKNOWN"))) as client,
        pytest.raises(BlobUnknownError),
    ):
        client.get_blob_bytes(ref(), Digest.parse("sha256:" + "b" * 64))


def test_bad_credentials_say_so() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    with (
        make_client(handler, cred=Credential("u", "wrong")) as client,
        pytest.raises(UnauthorizedError, match="rejected the credentials") as info,
    ):
        client.list_tags(ref())
    assert "wrong" not in str(info.value)


# -- retries ---------------------------------------------------------------------------------


def test_server_errors_are_retried() -> None:
    answers = [503, 502, 200]
    sleeps: list[float] = []

    def handler(req: httpx.Request) -> httpx.Response:
        status = answers.pop(0)
        return json_response(status, {"tags": ["v1"]} if status == 200 else errors("UNAVAILABLE"))

    with make_client(handler, retries=2, sleeps=sleeps) as client:
        assert client.list_tags(ref()) == ["v1"]
    assert len(sleeps) == 2


def test_retry_after_is_honoured_and_limited() -> None:
    sleeps: list[float] = []
    answers = [
        httpx.Response(429, headers={"Retry-After": "7"}),
        json_response(200, {"tags": []}),
    ]
    with make_client(lambda r: answers.pop(0), sleeps=sleeps) as client:
        assert client.list_tags(ref()) == []
    assert sleeps == [7.0]

    calls: list[int] = []

    def too_long(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return json_response(429, errors("TOOMANYREQUESTS"), **{"Retry-After": "86400"})

    with make_client(too_long) as client, pytest.raises(TooManyRequestsError) as info:
        client.list_tags(ref())
    assert calls == [1]  # not worth waiting a day for
    assert info.value.retry_after == 86400
    assert "try again in 86400 seconds" in str(info.value)


def test_connection_errors() -> None:
    def refused(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    with make_client(refused) as client, pytest.raises(TransportError, match="cannot connect"):
        client.list_tags(ref())

    def bad_cert(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"
        )

    with make_client(bad_cert) as client, pytest.raises(TLSError) as ei:
        client.list_tags(ref())
    assert "could not be verified" in ei.value.message
    assert ei.value.remedy is not None and ei.value.remedy.kind == "ca-cert"
    assert ei.value.remedy.params["path"] == f"/etc/docker/certs.d/{HOST}/ca.crt"


# -- redirects -------------------------------------------------------------------------------


def test_blob_redirect_to_storage_drops_authorization() -> None:
    blob = b"layer bytes"
    digest = Digest.of(blob)
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if req.url.host == "storage.test":
            return httpx.Response(200, content=iter([blob]))  # a stream, not read at once
        if "authorization" not in req.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return httpx.Response(307, headers={"Location": "https://storage.test/b?sig=x"})

    with make_client(handler, cred=Credential("u", "secret")) as client:
        assert client.get_blob_bytes(ref(), digest) == blob
    storage = [r for r in seen if r.url.host == "storage.test"]
    assert len(storage) == 1 and "authorization" not in storage[0].headers
    assert any("authorization" in r.headers for r in seen if r.url.host == HOST)


def test_redirect_to_plain_http_is_refused() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"Location": "http://storage.test/blob"})

    with make_client(handler) as client, pytest.raises(TransportError, match="plain-http"):
        client.get_blob_bytes(ref(), Digest.parse("sha256:" + "c" * 64))


def test_redirect_loop_is_an_error() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": req.url.path})

    with make_client(handler) as client, pytest.raises(TransportError, match="too many redirects"):
        client.list_tags(ref())


# -- manifests -------------------------------------------------------------------------------


def test_manifest_digest_header_must_match() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            content=MANIFEST,
            headers={
                "content-type": "application/vnd.oci.image.manifest.v1+json",
                "docker-content-digest": "sha256:" + "0" * 64,
            },
        )

    with make_client(handler) as client, pytest.raises(DigestMismatchError):
        client.get_manifest(ref())


def test_manifest_by_digest_must_match() -> None:
    wanted = ref(f"{HOST}/team/app@sha256:{'1' * 64}")
    with (
        make_client(lambda r: httpx.Response(200, content=MANIFEST)) as client,
        pytest.raises(DigestMismatchError, match="not the one asked for"),
    ):
        client.get_manifest(wanted)


def test_head_without_digest_falls_back_to_get() -> None:
    methods: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        methods.append(req.method)
        return httpx.Response(
            200,
            content=b"" if req.method == "HEAD" else MANIFEST,
            headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
        )

    with make_client(handler) as client:
        head = client.head_manifest(ref())
    assert methods == ["HEAD", "GET"]
    assert str(head.descriptor.digest) == MANIFEST_DIGEST


def test_range_answered_with_wrong_content_range() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(206, content=b"xyz", headers={"Content-Range": "bytes 0-2/3"})

    with (
        make_client(handler) as client,
        pytest.raises(ProtocolError, match="Content-Range"),
        client.open_blob(ref(), Digest.parse("sha256:" + "d" * 64), offset=10),
    ):
        pass
