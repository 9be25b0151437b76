"""A mutational fuzz run of every parser that reads untrusted input, on a fixed budget.

Each target starts from a corpus of valid inputs and applies random mutations
(bit flips, byte insertions and deletions, splices of two inputs, JSON-aware
value swaps).  The run is deterministic (a fixed seed, overridable with
``DERRICK_FUZZ_SEED``) and bounded by a number of iterations and by seconds
(``DERRICK_FUZZ_ITERATIONS``, ``DERRICK_FUZZ_SECONDS``), so it fits in CI.

What is checked: a parser either returns a value or raises one of derrick's own
errors (a :class:`DerrickError`, which the CLI prints as one line) — never
another exception — and what it returns is consistent (a parsed reference
prints back to itself, a parsed manifest keeps its exact bytes).
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
import time
from collections.abc import Callable
from typing import Any

import pytest

from derrick.auth.challenge import parse_challenges
from derrick.digest import Digest
from derrick.errors import DerrickError
from derrick.layout.reader import open_image_source
from derrick.manifest import ImageConfig, ImageManifest, Index, parse_manifest
from derrick.reference import Reference

SEED = int(os.environ.get("DERRICK_FUZZ_SEED", "20261126"))
ITERATIONS = int(os.environ.get("DERRICK_FUZZ_ITERATIONS", "4000"))
SECONDS = float(os.environ.get("DERRICK_FUZZ_SECONDS", "4"))

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64

REFERENCES = [
    "alpine",
    "alpine:3.20",
    "docker.io/library/alpine:latest",
    "localhost:5000/team/app:1.0",
    "[::1]:5000/a/b@" + D1,
    "quay.io/org/name:tag@" + D2,
    "index.docker.io/user/app",
    "registry.example.com:443/a-b/c_d/e.f:v1.2-rc",
]

CHALLENGES = [
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    'scope="repository:library/alpine:pull"',
    'Basic realm="Registry Realm"',
    'Basic realm="x", Bearer realm="https://t/", scope="repository:a/b:pull,push"',
    'Bearer realm="http://127.0.0.1:1/token",error="insufficient_scope",service=s',
]


def _manifest(media_type: str = "application/vnd.oci.image.manifest.v1+json") -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": D1,
                "size": 100,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": D2,
                    "size": 2000,
                    "annotations": {"k": "v"},
                }
            ],
        }
    ).encode()


def _index() -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": D1,
                    "size": 500,
                    "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
                }
            ],
        }
    ).encode()


def _config() -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
            "history": [{"created_by": "RUN x"}, {"empty_layer": True}],
        }
    ).encode()


MANIFESTS = [
    _manifest(),
    _manifest("application/vnd.docker.distribution.manifest.v2+json"),
    _index(),
]


def _mutate_bytes(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert interesting bytes
            i = rng.randint(0, len(buf))
            buf[i:i] = rng.choice(
                [b"\x00", b"/", b"..", b":", b"@", b'"', b"\\", b"{", b"]", b"\xff", b"A" * 300]
            )
        elif op == 2 and buf:  # delete a run
            i = rng.randrange(len(buf))
            del buf[i : i + rng.randint(1, 16)]
        elif op == 3 and buf:  # duplicate a run
            i = rng.randrange(len(buf))
            buf[i:i] = buf[i : i + rng.randint(1, 32)]
        elif op == 4:  # splice with another corpus entry
            other = rng.choice(corpus)
            i = rng.randint(0, len(buf))
            j = rng.randint(0, len(other))
            buf = buf[:i] + bytearray(other[j:])
        elif op == 5 and buf:  # overwrite a byte with a random one
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    return bytes(buf)


_ODD_VALUES: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "x" * 1000, [], {}, [1], {"a": 1}]


def _mutate_json(rng: random.Random, data: bytes) -> bytes:
    """Swap one value deep inside the document for a value of another type."""
    doc = json.loads(data)

    def walk(node: Any) -> Any:
        if isinstance(node, dict) and node and rng.random() < 0.7:
            key = rng.choice(list(node))
            if rng.random() < 0.3:
                if rng.random() < 0.5:
                    del node[key]
                else:
                    node[key] = rng.choice(_ODD_VALUES)
            else:
                node[key] = walk(node[key])
            return node
        if isinstance(node, list) and node and rng.random() < 0.7:
            i = rng.randrange(len(node))
            node[i] = walk(node[i])
            return node
        return rng.choice(_ODD_VALUES)

    return json.dumps(walk(doc)).encode()


def _run(
    name: str,
    corpus: list[bytes],
    target: Callable[[bytes], None],
    *,
    json_aware: bool = False,
) -> int:
    rng = random.Random(f"{SEED}:{name}")
    deadline = time.monotonic() + SECONDS
    runs = 0
    for i in range(ITERATIONS):
        if time.monotonic() > deadline:
            break
        seed_input = rng.choice(corpus)
        if json_aware and rng.random() < 0.5:
            data = _mutate_json(rng, seed_input)
        else:
            data = _mutate_bytes(rng, seed_input, corpus)
        try:
            target(data)
        except DerrickError:
            pass
        except Exception as e:  # pragma: no cover - a finding
            pytest.fail(f"{name}: input #{i} {data[:200]!r} raised {type(e).__name__}: {e}")
        runs += 1
    return runs


def _reference_target(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    ref = Reference.parse(text)
    assert Reference.parse(str(ref)) == ref


def _challenge_target(data: bytes) -> None:
    text = data.decode("latin-1")
    for ch in parse_challenges(text):
        assert ch.scheme == ch.scheme.lower()
        assert all(k == k.lower() for k in ch.params)


def _manifest_target(data: bytes) -> None:
    m = parse_manifest(data)
    assert isinstance(m, ImageManifest | Index)
    assert m.raw == data
    assert m.digest == Digest.of(data)


def _config_target(data: bytes) -> None:
    cfg = ImageConfig.parse(data)
    assert cfg.raw == data


def _tar_corpus() -> list[bytes]:
    out = []
    for extra in (b"", b"x" * 700):
        bio = io.BytesIO()
        with tarfile.open(fileobj=bio, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            for name, body in (
                ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                ("index.json", b'{"schemaVersion":2,"manifests":[]}'),
                ("manifest.json", b"[]" + extra[:0]),
                ("blobs/sha256/" + "a" * 64, extra),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tf.addfile(info, io.BytesIO(body))
        out.append(bio.getvalue())
    return out


@pytest.fixture
def tar_target(tmp_path: Any) -> Callable[[bytes], None]:
    path = tmp_path / "fuzz.tar"

    def target(data: bytes) -> None:
        path.write_bytes(data)
        src = open_image_source(path)
        try:
            src.names()
        finally:
            src.close()

    return target


def test_fuzz_reference_parser() -> None:
    corpus = [r.encode() for r in REFERENCES]
    assert _run("reference", corpus, _reference_target) > 100


def test_fuzz_challenge_parser() -> None:
    corpus = [c.encode("latin-1") for c in CHALLENGES]
    assert _run("challenge", corpus, _challenge_target) > 100


def test_fuzz_manifest_parser() -> None:
    assert _run("manifest", MANIFESTS, _manifest_target, json_aware=True) > 100


def test_fuzz_config_parser() -> None:
    assert _run("config", [_config()], _config_target, json_aware=True) > 100


def test_fuzz_archive_reader(tar_target: Callable[[bytes], None]) -> None:
    assert _run("archive", _tar_corpus(), tar_target) > 50
