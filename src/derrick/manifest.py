"""Typed, immutable models of descriptors, manifests, indexes and image configs.

Parsing never loses the original bytes: every manifest keeps ``raw`` so its
digest is computed over exactly what the registry (or file) served.  JSON that
does not fit the schema raises :class:`~derrick.errors.ManifestError` with the
offending field named.
"""

from __future__ import annotations

import json
import platform as _pyplatform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from derrick import mediatypes as mt
from derrick.digest import Digest
from derrick.errors import InvalidDigestError, ManifestError

#: Largest manifest, index or config derrick will read (bytes).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024

_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm"}


def _want(obj: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ManifestError(f"{where}: required field {key!r} is missing")
    value = obj[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ManifestError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _opt(obj: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if obj.get(key) is None:
        return None
    return _want(obj, key, typ, where)


def _str_map(obj: Mapping[str, Any], key: str, where: str) -> dict[str, str] | None:
    value = _opt(obj, key, dict, where)
    if value is None:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ManifestError(f"{where}: {key!r} must map strings to strings")
    return dict(value)


@dataclass(frozen=True)
class Platform:
    """An OS/architecture pair with optional variant, as in image indexes and configs."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str) -> Platform:
        """Parse ``os/arch[/variant]`` (e.g. ``linux/arm64/v8``)."""
        parts = value.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ManifestError(
                f"invalid platform {value!r}",
                hint="a platform looks like os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8",
            )
        os_, arch = parts[0].lower(), parts[1].lower()
        return cls(
            os_, _ARCH_ALIASES.get(arch, arch), parts[2].lower() if len(parts) == 3 else None
        )

    @classmethod
    def host(cls) -> Platform:
        """The platform of this machine, as a linux image platform."""
        arch = _pyplatform.machine().lower()
        arch = _ARCH_ALIASES.get(arch, arch)
        variant = "v8" if arch == "arm64" else None
        return cls("linux", arch, variant)

    @classmethod
    def from_json(cls, obj: Any, where: str = "platform") -> Platform:
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: must be an object")
        feats = _opt(obj, "os.features", list, where) or []
        return cls(
            os=_want(obj, "os", str, where),
            architecture=_want(obj, "architecture", str, where),
            variant=_opt(obj, "variant", str, where) or None,
            os_version=_opt(obj, "os.version", str, where) or None,
            os_features=tuple(str(f) for f in feats),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        return out

    def _norm_variant(self) -> str | None:
        if self.architecture == "arm64" and self.variant in (None, "v8"):
            return "v8"
        if self.architecture == "arm" and self.variant is None:
            return "v7"
        return self.variant

    def matches(self, want: Platform) -> bool:
        """Whether this (an index entry's) platform satisfies ``want``.

        A requested platform without a variant matches any variant.
        """
        if self.os != want.os or self.architecture != want.architecture:
            return False
        if want.variant is None:
            return True
        return self._norm_variant() == want._norm_variant()

    def __str__(self) -> str:
        s = f"{self.os}/{self.architecture}"
        return f"{s}/{self.variant}" if self.variant else s


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: media type, digest and size, plus optional extras."""

    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] | None = None
    platform: Platform | None = None
    artifact_type: str | None = None

    @classmethod
    def from_json(cls, obj: Any, where: str = "descriptor") -> Descriptor:
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: must be an object")
        try:
            digest = Digest.parse(_want(obj, "digest", str, where))
        except InvalidDigestError as e:
            raise ManifestError(f"{where}: {e.message}") from None
        size = _want(obj, "size", int, where)
        if size < 0:
            raise ManifestError(f"{where}: size must not be negative")
        urls = _opt(obj, "urls", list, where) or []
        plat = obj.get("platform")
        return cls(
            media_type=_want(obj, "mediaType", str, where),
            digest=digest,
            size=size,
            urls=tuple(str(u) for u in urls),
            annotations=_str_map(obj, "annotations", where),
            platform=Platform.from_json(plat, f"{where}.platform") if plat is not None else None,
            artifact_type=_opt(obj, "artifactType", str, where),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def with_annotations(self, annotations: Mapping[str, str] | None) -> Descriptor:
        return Descriptor(
            self.media_type,
            self.digest,
            self.size,
            self.urls,
            dict(annotations) if annotations else None,
            self.platform,
            self.artifact_type,
        )


@dataclass(frozen=True)
class ImageManifest:
    """An OCI image manifest or Docker schema2 manifest."""

    raw: bytes = field(repr=False)
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] | None = None
    subject: Descriptor | None = None
    artifact_type: str | None = None

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)

    @property
    def is_image(self) -> bool:
        """Whether this is a container image: its config is an image config.

        Anything else (a Helm chart, a signature, an SBOM…) is an OCI artifact,
        with no platform and no filesystem.
        """
        return mt.is_image_config(self.config.media_type)

    @property
    def kind(self) -> str:
        """The artifact type: ``artifactType``, else the config's media type (as the
        image-spec says to read an artifact without one)."""
        return self.artifact_type or self.config.media_type

    def descriptor(self, platform: Platform | None = None) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw), platform=platform)


@dataclass(frozen=True)
class Index:
    """An OCI image index or Docker manifest list."""

    raw: bytes = field(repr=False)
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] | None = None

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw))

    @property
    def platforms(self) -> list[Platform]:
        return [d.platform for d in self.manifests if d.platform is not None]

    def select(self, want: Platform) -> Descriptor:
        """The manifest descriptor for ``want``; raise :class:`PlatformNotFoundError`
        (see :func:`derrick.platform.choose_in_index`, the one matcher)."""
        from derrick.platform import choose_in_index

        return self.manifests[choose_in_index(self, [want], "the index")[0]]


Manifest = ImageManifest | Index


def _load_json(raw: bytes, what: str) -> Any:
    if len(raw) > MAX_MANIFEST_SIZE:
        raise ManifestError(
            f"{what} is {len(raw)} bytes, more than the {MAX_MANIFEST_SIZE} byte limit"
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # also too deep, or a number too long
        raise ManifestError(f"{what} is not valid JSON: {str(e)[:200]}") from None


def _media_type(obj: dict[str, Any], content_type: str | None, what: str) -> str:
    """A document's media type: its ``mediaType`` field, else the Content-Type it was
    served with, else what its shape says ("" when nothing does)."""
    field_type = obj.get("mediaType")
    if field_type is not None and not isinstance(field_type, str):
        raise ManifestError(f"{what}: field 'mediaType' has the wrong type")
    if field_type:
        return field_type
    if content_type:
        ct = content_type.split(";")[0].strip()
        if ct in mt.MANIFESTS or ct in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED):
            return ct
    if "manifests" in obj:
        return mt.OCI_INDEX
    if "config" in obj and "layers" in obj:
        return mt.OCI_MANIFEST
    if obj.get("schemaVersion") == 1:
        return mt.DOCKER_SCHEMA1
    return ""


def parse_manifest(
    raw: bytes,
    content_type: str | None = None,
    *,
    null_manifests: bool = False,
    what: str = "manifest",
) -> Manifest:
    """Parse manifest bytes into an :class:`ImageManifest` or :class:`Index`.

    The media type comes from the document's ``mediaType`` field, else from
    ``content_type`` (the HTTP Content-Type), else from its shape.  With
    ``null_manifests`` an index whose ``manifests`` is ``null`` (as some
    ``docker save`` versions write into ``index.json``) has no entries instead
    of being refused.  ``what`` names the document in errors about its JSON
    (``index.json``).
    """
    obj = _load_json(raw, what)
    if not isinstance(obj, dict):
        raise ManifestError(f"{what}: the document must be a JSON object")
    media_type = _media_type(obj, content_type, what)
    if media_type in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED):
        raise ManifestError(
            "manifest is Docker schema 1, which derrick does not support",
            hint="the image must be re-pushed in the Docker schema 2 or OCI format",
        )
    if media_type in mt.INDEXES:
        if null_manifests and "manifests" in obj and obj["manifests"] is None:
            items = []
        else:
            items = _want(obj, "manifests", list, "index")
        return Index(
            raw=raw,
            media_type=media_type,
            manifests=tuple(
                Descriptor.from_json(d, f"index.manifests[{i}]") for i, d in enumerate(items)
            ),
            annotations=_str_map(obj, "annotations", "index"),
        )
    if media_type in mt.IMAGE_MANIFESTS:
        layers = _want(obj, "layers", list, "manifest")
        subject = obj.get("subject")
        return ImageManifest(
            raw=raw,
            media_type=media_type,
            config=Descriptor.from_json(_want(obj, "config", dict, "manifest"), "manifest.config"),
            layers=tuple(
                Descriptor.from_json(d, f"manifest.layers[{i}]") for i, d in enumerate(layers)
            ),
            annotations=_str_map(obj, "annotations", "manifest"),
            subject=Descriptor.from_json(subject, "manifest.subject") if subject else None,
            artifact_type=_opt(obj, "artifactType", str, "manifest"),
        )
    raise ManifestError(
        f"unsupported manifest media type {media_type!r}",
        hint="derrick reads OCI and Docker schema 2 images and indexes",
    )


@dataclass(frozen=True)
class HistoryEntry:
    created: str | None = None
    created_by: str | None = None
    comment: str | None = None
    empty_layer: bool = False


@dataclass(frozen=True)
class ImageConfig:
    """The image configuration blob (OCI config or Docker container image config)."""

    raw: bytes = field(repr=False)
    architecture: str
    os: str
    variant: str | None
    created: str | None
    diff_ids: tuple[Digest, ...]
    history: tuple[HistoryEntry, ...]
    config: Mapping[str, Any]

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)

    @classmethod
    def parse(cls, raw: bytes) -> ImageConfig:
        obj = _load_json(raw, "image config")
        if not isinstance(obj, dict):
            raise ManifestError("image config: the document must be a JSON object")
        rootfs = _opt(obj, "rootfs", dict, "image config") or {}
        diff_ids = []
        for i, d in enumerate(_opt(rootfs, "diff_ids", list, "image config.rootfs") or []):
            try:
                diff_ids.append(Digest.parse(d))
            except InvalidDigestError as e:
                raise ManifestError(f"image config.rootfs.diff_ids[{i}]: {e.message}") from None
        history = []
        for i, h in enumerate(_opt(obj, "history", list, "image config") or []):
            where = f"image config.history[{i}]"
            if not isinstance(h, dict):
                raise ManifestError(f"{where}: must be an object")
            history.append(
                HistoryEntry(
                    created=_opt(h, "created", str, where),
                    created_by=_opt(h, "created_by", str, where),
                    comment=_opt(h, "comment", str, where),
                    empty_layer=bool(h.get("empty_layer", False)),
                )
            )
        return cls(
            raw=raw,
            architecture=_opt(obj, "architecture", str, "image config") or "",
            os=_opt(obj, "os", str, "image config") or "",
            variant=_opt(obj, "variant", str, "image config"),
            created=_opt(obj, "created", str, "image config"),
            diff_ids=tuple(diff_ids),
            history=tuple(history),
            config=_opt(obj, "config", dict, "image config") or {},
        )
