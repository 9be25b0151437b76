"""An image source and an image sink held in memory, with faults to inject, for unit tests
of the copy engine (:mod:`derrick.ops.transfer`) and its parts.

:class:`MemorySource` builds images (``add_image``, ``add_index``) and serves them as an
:class:`~derrick.images.model.ImageSource`, recording every manifest and blob read.  Faults,
per blob digest: ``breaks[d]`` (a list: the next body of ``d`` raises ``TransportError``
after that many bytes), ``ignore_offset`` (bodies start at 0 whatever was asked),
``corrupt[d]`` (bytes served instead), ``missing`` (open fails with ``BlobUnknownError``),
``gates[d]`` (an event each chunk of ``d`` waits for: a slow blob).

:class:`MemorySink` records every call in order (``calls``), keeps what it was given
(``blobs``, ``manifests``, ``tags``), reads each feed to its end, and can be told it has
blobs already (``have``), can mount some (``mountable``) or fails on a put (``fail``).
It may say it stores on the local disk (``local``) and takes whole files rather than
streams (``prefers_files``: a feed's ``local`` file is then read, and its digest kept in
``from_files``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

from derrick import mediatypes as mt
from derrick.digest import Digest
from derrick.errors import BlobUnknownError, ManifestUnknownError, TransportError
from derrick.images.model import BlobFeed, Chunk, ImageName, ImageSource, Plan
from derrick.manifest import Descriptor, Platform

AMD64 = Platform("linux", "amd64")


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


class MemoryBody:
    def __init__(self, source: MemorySource, digest: Digest, data: bytes, offset: int) -> None:
        self.offset = offset
        self._source = source
        self._digest = digest
        self._data = data
        self.closed = False

    def chunks(self) -> Iterator[Chunk]:
        src = self._source
        with src.lock:
            breaks = src.breaks.get(self._digest)
            cut = breaks.pop(0) if breaks else None
        pos = self.offset
        sent = 0
        while pos < len(self._data):
            gate = src.gates.get(self._digest)
            if gate is not None:
                gate.wait(timeout=30)
            n = min(src.chunk_size, len(self._data) - pos)
            if cut is not None and sent + n > cut:
                n = cut - sent
                if n:
                    yield self._data[pos : pos + n]
                raise TransportError(f"body of {self._digest} broke off after {cut} bytes")
            yield self._data[pos : pos + n]
            pos += n
            sent += n
            with src.lock:
                src.served += n

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> MemoryBody:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MemorySource:
    """See the module docstring."""

    def __init__(self, description: str = "memory source", *, chunk_size: int = 64) -> None:
        self.description = description
        self.repository: str | None = "memory.example/app"
        self.chunk_size = chunk_size
        self.default: str | None = None
        self.lock = threading.Lock()
        self.tags: dict[str, Descriptor] = {}
        self.manifest_data: dict[Digest, bytes] = {}
        self.blob_data: dict[Digest, bytes] = {}
        self.manifest_reads: list[Digest] = []
        self.opens: list[tuple[Digest, int]] = []
        self.served = 0
        self.breaks: dict[Digest, list[int]] = {}
        self.ignore_offset: set[Digest] = set()
        self.corrupt: dict[Digest, bytes] = {}
        self.missing: set[Digest] = set()
        self.gates: dict[Digest, threading.Event] = {}

    # -- building ------------------------------------------------------------------------

    def blob(self, data: bytes, media_type: str = mt.OCI_LAYER_GZIP) -> Descriptor:
        d = Digest.of(data)
        self.blob_data[d] = data
        return Descriptor(media_type, d, len(data))

    def manifest_of(
        self,
        raw: bytes,
        media_type: str,
        *,
        tag: str | None = None,
        platform: Platform | None = None,
    ) -> Descriptor:
        d = Digest.of(raw)
        self.manifest_data[d] = raw
        desc = Descriptor(media_type, d, len(raw), platform=platform)
        if tag is not None:
            self.tags[tag] = Descriptor(media_type, d, len(raw))
        return desc

    def add_image(
        self,
        layers: Sequence[bytes | Descriptor],
        platform: Platform | None = AMD64,
        *,
        tag: str | None = None,
        config: dict[str, Any] | None = None,
        config_type: str = mt.OCI_CONFIG,
        media_type: str = mt.OCI_MANIFEST,
    ) -> Descriptor:
        """An image manifest of ``layers`` (bytes, or descriptors such as foreign layers)."""
        layer_descs = [x if isinstance(x, Descriptor) else self.blob(x) for x in layers]
        if config is None:
            config = {"rootfs": {"type": "layers", "diff_ids": []}}
            if platform is not None:
                config.update(os=platform.os, architecture=platform.architecture)
                if platform.variant:
                    config["variant"] = platform.variant
        cfg = self.blob(canonical(config), config_type)
        raw = canonical(
            {
                "schemaVersion": 2,
                "mediaType": media_type,
                "config": cfg.to_json(),
                "layers": [x.to_json() for x in layer_descs],
            }
        )
        return self.manifest_of(raw, media_type, tag=tag, platform=platform)

    def add_index(
        self,
        children: Sequence[Descriptor],
        *,
        tag: str | None = None,
        media_type: str = mt.OCI_INDEX,
        annotations: dict[str, str] | None = None,
    ) -> Descriptor:
        obj: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [c.to_json() for c in children],
        }
        if annotations:
            obj["annotations"] = annotations
        return self.manifest_of(canonical(obj), media_type, tag=tag)

    # -- ImageSource ---------------------------------------------------------------------

    def resolve(self, name: str | None = None) -> Descriptor:
        name = name if name is not None else self.default
        if name is None:
            raise ManifestUnknownError("no name", status=404, url="memory:")
        if ":" in name:
            d = Digest.parse(name)
            raw = self.manifest_data.get(d)
            if raw is None:
                raise ManifestUnknownError(f"no manifest {d}", status=404, url="memory:")
            media_type = json.loads(raw).get("mediaType", mt.OCI_MANIFEST)
            return Descriptor(media_type, d, len(raw))
        if name not in self.tags:
            raise ManifestUnknownError(f"no tag {name}", status=404, url="memory:")
        return self.tags[name]

    def names(self) -> list[str]:
        return sorted(self.tags)

    def image_name(self, name: str | None = None) -> ImageName:
        name = name if name is not None else self.default
        return ImageName(self.repository, name if name and ":" not in name else None)

    def manifest(self, desc: Descriptor) -> bytes:
        with self.lock:
            self.manifest_reads.append(desc.digest)
        raw = self.manifest_data[desc.digest]
        assert Digest.of(raw) == desc.digest and len(raw) == desc.size
        return raw

    def has_blob(self, desc: Descriptor) -> bool:
        return desc.digest in self.blob_data and desc.digest not in self.missing

    def open_blob(self, desc: Descriptor, offset: int = 0) -> MemoryBody:
        with self.lock:
            self.opens.append((desc.digest, offset))
        if desc.digest in self.missing or desc.digest not in self.blob_data:
            raise BlobUnknownError(f"blob {desc.digest} not found", status=404, url="memory:")
        data = self.corrupt.get(desc.digest, self.blob_data[desc.digest])
        if desc.digest in self.ignore_offset:
            offset = 0
        return MemoryBody(self, desc.digest, data, offset)

    def local_blob(self, desc: Descriptor) -> None:
        return None

    def close(self) -> None:
        pass

    def opened(self, digest: Digest) -> list[int]:
        """The offsets blob ``digest`` was opened at, in order."""
        return [off for d, off in self.opens if d == digest]


class MemorySink:
    """See the module docstring."""

    description = "memory sink"

    def __init__(
        self,
        *,
        ordered: bool = False,
        local: bool = False,
        prefers_files: bool = False,
        have: Sequence[Digest] = (),
        mountable: Sequence[Digest] = (),
        fail: dict[Digest, BaseException] | None = None,
    ) -> None:
        self.ordered = ordered
        self.local = local
        self.prefers_files = prefers_files
        self.lock = threading.Lock()
        self.calls: list[tuple[str, Any]] = []
        self.blobs: dict[Digest, bytes] = {d: b"" for d in have}
        self.mountable = set(mountable)
        self.fail = dict(fail or {})
        self.manifests: dict[Digest, bytes] = {}
        self.tags: dict[str, Digest] = {}
        self.plan: Plan | None = None
        self.put_threads: set[str] = set()
        self.from_files: set[Digest] = set()
        self.committed = self.aborted = False

    def _call(self, name: str, arg: Any = None) -> None:
        with self.lock:
            self.calls.append((name, arg))

    def named(self, name: str) -> list[Any]:
        return [arg for n, arg in self.calls if n == name]

    def begin(self, plan: Plan) -> None:
        self._call("begin", plan)
        self.plan = plan

    def has_blob(self, desc: Descriptor) -> bool:
        self._call("has_blob", desc.digest)
        return desc.digest in self.blobs

    def mount_blob(self, desc: Descriptor, source: ImageSource) -> bool:
        self._call("mount_blob", desc.digest)
        if desc.digest in self.mountable:
            self.blobs[desc.digest] = b""
            return True
        return False

    def put_blob(self, feed: BlobFeed) -> None:
        self._call("put_blob", feed.desc.digest)
        with self.lock:
            self.put_threads.add(threading.current_thread().name)
        failure = self.fail.get(feed.desc.digest)
        if failure is not None:
            raise failure
        if self.prefers_files and feed.local is not None:
            data = feed.local.read_bytes()
            with self.lock:
                self.from_files.add(feed.desc.digest)
        else:
            data = b"".join(bytes(c) for c in feed.chunks())
        with self.lock:
            self.blobs[feed.desc.digest] = data

    def put_manifest(self, desc: Descriptor, raw: bytes, names: Sequence[ImageName] = ()) -> None:
        self._call("put_manifest", (desc.digest, tuple(names)))
        self.manifests[desc.digest] = raw
        for n in names:
            if n.tag:
                self.tags[n.tag] = desc.digest

    def commit(self) -> None:
        self._call("commit")
        self.committed = True

    def abort(self) -> None:
        self._call("abort")
        self.aborted = True
