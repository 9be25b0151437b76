"""Content digests: the ``Digest`` value type and verifying writers.

A digest is ``algorithm ":" encoded``.  derrick accepts only algorithms it can
verify (sha256, sha512) and checks the encoded part's alphabet and length
before a digest is ever used, so a digest can be joined into a path safely.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, BinaryIO

from derrick.errors import DigestMismatchError, InvalidDigestError

_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


@dataclass(frozen=True, order=True)
class Digest:
    """A validated content digest such as ``sha256:e3b0…``."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        want = _HEX_LENGTHS.get(self.algorithm)
        if want is None:
            raise InvalidDigestError(
                f"unsupported digest algorithm {self.algorithm!r}",
                hint="use sha256 or sha512",
            )
        if len(self.hex) != want or not all(c in "0123456789abcdef" for c in self.hex):
            raise InvalidDigestError(
                f"invalid {self.algorithm} digest {f'{self.algorithm}:{self.hex[:80]}'!r}: "
                f"expected {want} lowercase hex characters"
            )

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parse and validate ``algorithm:hex``; raise :class:`InvalidDigestError`."""
        if not isinstance(value, str):
            raise InvalidDigestError(f"digest must be a string, not {type(value).__name__}")
        m = _DIGEST_RE.match(value)
        if not m:
            shown = value if len(value) <= 100 else value[:100] + "…"
            raise InvalidDigestError(
                f"invalid digest {shown!r}", hint="a digest looks like sha256:<64 hex digits>"
            )
        return cls(m.group(1), m.group(2))

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``data``."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> Any:
        """A fresh hashlib object for this digest's algorithm."""
        return hashlib.new(self.algorithm)

    @property
    def short(self) -> str:
        """First 12 hex digits, for display."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def sha256_digest(hexdigest: str) -> Digest:
    return Digest("sha256", hexdigest)


class Verifier:
    """Accumulates bytes and checks them against an expected digest and size."""

    def __init__(self, expected: Digest, size: int | None = None, *, what: str = "blob") -> None:
        self.expected = expected
        self.size = size
        self.what = what
        self._hash = expected.hasher()
        self.count = 0

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self.count += len(data)
        if self.size is not None and self.count > self.size:
            raise DigestMismatchError(
                f"{self.what} {self.expected} is larger than its declared size {self.size}",
                hint="the registry or file is serving different content than described",
            )

    def reset(self) -> None:
        """Forget everything seen, to start the content over."""
        self._hash = self.expected.hasher()
        self.count = 0

    @property
    def hash(self) -> Any:
        return self._hash

    def verify(self) -> None:
        """Raise :class:`DigestMismatchError` unless the content seen matches."""
        if self.size is not None and self.count != self.size:
            raise DigestMismatchError(
                f"{self.what} {self.expected} has {self.count} bytes, expected {self.size}",
                hint="the content is truncated or corrupt; try again",
            )
        got = self._hash.hexdigest()
        if got != self.expected.hex:
            raise DigestMismatchError(
                f"{self.what} {self.expected} does not match its content "
                f"({self.expected.algorithm}:{got})",
                hint="the content is corrupt or was tampered with",
            )


def verify_bytes(
    data: bytes, expected: Digest, size: int | None = None, what: str = "blob"
) -> None:
    v = Verifier(expected, size, what=what)
    v.update(data)
    v.verify()


def hash_file(f: BinaryIO, algorithm: str = "sha256", chunk: int = 1 << 20) -> tuple[Digest, int]:
    """Digest and size of a file object read to its end."""
    h = hashlib.new(algorithm)
    n = 0
    while True:
        b = f.read(chunk)
        if not b:
            break
        h.update(b)
        n += len(b)
    return Digest(algorithm, h.hexdigest()), n
