"""derrick's own HTTP connections: large socket reads for blob bodies, directly and through
an outbound proxy, while httpx and httpcore stay as they are for everyone else."""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpcore._sync.http11 import HTTP11Connection

from derrick.connections import SOCKET_READ_SIZE, DerrickHTTP11Connection
from derrick.digest import Digest
from derrick.errors import TLSError, TransportError
from derrick.reference import Reference
from derrick.registry import RegistryClient
from support.faultproxy import TunnelProxy
from support.images import LayoutImage
from support.rawclient import RawClient
from support.registry import start_registry
from support.seed import SeededRegistries
from support.tls import TLSMaterial

HTTPCORE_READ = 64 * 1024
BLOB_SIZE = 4 * 1024 * 1024


def _read_sizes(chunks: Iterator[bytes]) -> list[int]:
    """The size of each piece a body arrived in, read slowly enough that the socket fills."""
    sizes = []
    for chunk in chunks:
        sizes.append(len(chunk))
        time.sleep(0.02)
    return sizes


@pytest.fixture(scope="module")
def big_blob(seeded_registries: SeededRegistries) -> tuple[Reference, Digest]:
    """A 4 MiB blob of random bytes in the open registry."""
    reg = seeded_registries.open.registry
    data = os.urandom(BLOB_SIZE)
    ref = Reference.parse(f"{reg.host}/scratch/connections:big")
    digest = Digest.of(data)
    with RegistryClient(insecure=True) as client:
        client.upload_blob(ref, digest, len(data), lambda offset: [data[offset:]])
    return ref, digest


def _derrick_sizes(ref: Reference, digest: Digest) -> list[int]:
    with RegistryClient(insecure=True) as client, client.open_blob(ref, digest) as stream:
        return _read_sizes(stream.chunks())


def test_blob_bodies_are_read_512k_at_a_time(big_blob: tuple[Reference, Digest]) -> None:
    ref, digest = big_blob
    sizes = _derrick_sizes(ref, digest)
    assert sum(sizes) == BLOB_SIZE
    assert HTTPCORE_READ < max(sizes) <= SOCKET_READ_SIZE


def test_httpx_and_httpcore_are_left_alone(big_blob: tuple[Reference, Digest]) -> None:
    """After derrick has made requests, a plain httpx client still reads as httpcore ships."""
    ref, digest = big_blob
    _derrick_sizes(ref, digest)
    assert HTTP11Connection.READ_NUM_BYTES == HTTPCORE_READ
    assert HTTP11Connection.has_expired.__qualname__ == "HTTP11Connection.has_expired"
    assert HTTP11Connection.has_expired.__module__ == "httpcore._sync.http11"
    url = f"http://{ref.registry}/v2/{ref.repository}/blobs/{digest}"
    with httpx.Client() as plain, plain.stream("GET", url) as resp:
        sizes = _read_sizes(resp.iter_raw())
    assert sum(sizes) == BLOB_SIZE
    assert max(sizes) <= HTTPCORE_READ


def test_http_proxy_connections_read_512k(
    monkeypatch: pytest.MonkeyPatch, big_blob: tuple[Reference, Digest]
) -> None:
    ref, digest = big_blob
    with TunnelProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        sizes = _derrick_sizes(ref, digest)
        assert set(proxy.targets) == {ref.registry}
    assert sum(sizes) == BLOB_SIZE
    assert HTTPCORE_READ < max(sizes) <= SOCKET_READ_SIZE


def _open_connections(kind: type[HTTP11Connection], host: str) -> list[HTTP11Connection]:
    """The live HTTP/1.1 connections of exactly class ``kind`` to ``host``."""
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is kind and f"://{host}" in o.info()]


def test_https_proxy_tunnels_are_derricks_connections(
    monkeypatch: pytest.MonkeyPatch, seeded: SeededRegistries
) -> None:
    """Through ``HTTPS_PROXY`` too, every HTTP/1.1 connection derrick opens is its own
    (TLS hands out at most one record per read, so read sizes say nothing here)."""
    img = seeded.tls["test/eight"]
    host = img.registry.host
    with TunnelProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with RegistryClient(ca_cert=img.registry.ca_cert) as client:
            assert client.list_tags(Reference.parse(img.reference)) == ["v1"]
            assert set(proxy.targets) == {host}
            assert all(line.startswith("CONNECT ") for line in proxy.lines)
            assert _open_connections(DerrickHTTP11Connection, host)
            assert not _open_connections(HTTP11Connection, host)


def test_a_connection_that_cannot_be_opened_is_not_kept(seeded: SeededRegistries) -> None:
    with RegistryClient(insecure=True, retries=0) as client:
        with pytest.raises(TransportError, match="cannot connect"):
            client.list_tags(Reference.parse("localhost:1/nothing/here:v1"))
        assert client.list_tags(Reference.parse(seeded.open["test/single"].reference)) == ["v1"]


def test_probing_a_plain_http_registry_loads_no_ca_store(
    monkeypatch: pytest.MonkeyPatch, seeded: SeededRegistries
) -> None:
    """Whether a loopback registry speaks TLS is asked without verifying (so without the
    ~20 ms of loading the system's CAs); what follows over https is verified."""
    made: list[str] = []
    real = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append("verifying")
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    with RegistryClient() as client:
        assert client.list_tags(Reference.parse(seeded.open["test/single"].reference)) == ["v1"]
    assert made == []

    img = seeded.tls["test/single"]
    with RegistryClient(ca_cert=img.registry.ca_cert) as client:
        assert client.list_tags(Reference.parse(img.reference)) == ["v1"]
    assert made == ["verifying"]
    with RegistryClient() as client, pytest.raises(TLSError, match="could not be verified"):
        client.list_tags(Reference.parse(img.reference))


def test_insecure_still_presents_the_client_certificate(
    tmp_path: Path,
    tls_material: TLSMaterial,
    test_images: dict[str, LayoutImage],
) -> None:
    """An insecure registry skips verifying its certificate, not presenting derrick's."""
    reg = start_registry(tmp_path / "mtls", name="mtls", tls=tls_material, client_cas=True)
    try:
        with RawClient(reg) as raw:
            raw.push_layout(test_images["single"], "mtls/single", "v1")
        hostdir = tmp_path / "certs.d" / reg.host
        hostdir.mkdir(parents=True)
        shutil.copy(tls_material.client_cert, hostdir / "client.cert")
        shutil.copy(tls_material.client_key, hostdir / "client.key")
        ref = Reference.parse(f"{reg.host}/mtls/single:v1")
        with RegistryClient(insecure=True, certs_dir=tmp_path / "certs.d") as client:
            assert str(client.head_manifest(ref).descriptor.digest) == test_images["single"].digest
        no_cert = RegistryClient(insecure=True, certs_dir=tmp_path / "none")
        with no_cert, pytest.raises(TLSError, match="asks for a client certificate"):
            no_cert.head_manifest(ref)
    finally:
        reg.stop()


def _read_twice(client: RegistryClient, ref: Reference, digest: Digest) -> set[int]:
    """Read the blob twice, checking its digest; the ids of the buffers its chunks were
    views of."""
    buffers: set[int] = set()
    for _ in range(2):
        with client.open_blob(ref, digest) as stream:
            h = hashlib.sha256()
            for chunk in stream.chunks():
                assert isinstance(chunk, memoryview)
                buffers.add(id(chunk.obj))
                h.update(chunk)
        assert f"sha256:{h.hexdigest()}" == str(digest)
    return buffers


def test_blob_bodies_go_straight_into_one_buffer(big_blob: tuple[Reference, Digest]) -> None:
    """A blob body is read from the socket into one reused buffer (no copy through h11),
    and its connection then serves the next request."""
    ref, digest = big_blob
    with RegistryClient(insecure=True) as client:
        buffers = _read_twice(client, ref, digest)
        conns = _open_connections(DerrickHTTP11Connection, ref.registry)
        assert len(conns) == 1
        assert "IDLE, Request Count: 2" in conns[0].info()
    assert len(buffers) == 2  # one per download


def test_blob_bodies_over_tls_go_straight_into_one_buffer(seeded: SeededRegistries) -> None:
    img = seeded.tls["test/eight"]
    ref = Reference.parse(img.reference)
    layer = max(img.layout.image.layers, key=lambda d: d.size)
    with RegistryClient(ca_cert=img.registry.ca_cert) as client:
        _read_twice(client, ref, Digest.parse(layer.digest))
        conns = _open_connections(DerrickHTTP11Connection, img.registry.host)
        assert [c.info().rpartition(", ")[2] for c in conns] == ["Request Count: 2"]
