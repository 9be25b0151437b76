"""The names and files of an OCI image layout that are not blobs (image-spec
``image-layout.md``): the ``oci-layout`` marker, ``index.json`` and the annotations that
name its entries, and how a name picks an entry.  No I/O: bytes in, bytes or values out.

Naming follows skopeo and containerd: an index entry's ``org.opencontainers.image.ref.name``
is the tag (``v1``) and its ``io.containerd.image.name`` the full reference
(``registry.example/team/app:v1``).  One layout may hold images of several repositories
under the same tag: the tag then picks none of them, their full names or digests do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from derrick import mediatypes as mt
from derrick.digest import Digest
from derrick.errors import DerrickError, LayoutError
from derrick.manifest import MAX_MANIFEST_SIZE, Descriptor, Index, parse_manifest

__all__ = [
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_REF_NAME",
    "BLOBS_DIR",
    "INDEX_FILE",
    "LAYOUT_FILE",
    "LAYOUT_VERSION",
    "MAX_INDEX_SIZE",
    "blob_member",
    "check_layout_file",
    "check_ref_name",
    "dump_json",
    "empty_index_bytes",
    "entry_name",
    "entry_names",
    "full_name",
    "index_json",
    "layout_file_bytes",
    "named_descriptor",
    "parse_index_json",
    "resolve_entry",
]

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
BLOBS_DIR = "blobs"
LAYOUT_VERSION = "1.0.0"

#: Annotation naming an index entry within a layout (the tag, e.g. ``v1``).
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
#: Annotation carrying the full image reference of an index entry.
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"

#: Largest ``index.json`` read (bytes).
MAX_INDEX_SIZE = MAX_MANIFEST_SIZE

# image-spec annotations.md: grammar of org.opencontainers.image.ref.name
_REF_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME_RE = re.compile(rf"^{_REF_COMPONENT}(?:/{_REF_COMPONENT})*$")


def layout_file_bytes() -> bytes:
    """Content of the ``oci-layout`` marker file."""
    return json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()


def empty_index_bytes() -> bytes:
    """Content of an ``index.json`` with no entries."""
    return dump_json({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []})


def blob_member(digest: Digest) -> str:
    """Relative path of a blob in a layout: ``blobs/<algorithm>/<hex>``."""
    return f"{BLOBS_DIR}/{digest.algorithm}/{digest.hex}"


def dump_json(obj: Any) -> bytes:
    """``obj`` as compact JSON (UTF-8, no ASCII escapes), as layouts are written."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def check_ref_name(ref_name: str) -> str:
    """Validate ``ref_name`` against the image-spec ``ref.name`` grammar."""
    if not _REF_NAME_RE.match(ref_name):
        raise LayoutError(
            f"invalid OCI layout reference name {ref_name!r}",
            hint="use letters, digits and . _ - : @ + / (a tag such as v1.2 or latest)",
        )
    return ref_name


def index_json(
    entries: Sequence[Descriptor], annotations: Mapping[str, str] | None = None
) -> bytes:
    """Serialise an ``index.json`` holding ``entries``."""
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [d.to_json() for d in entries],
    }
    if annotations:
        obj["annotations"] = dict(annotations)
    return dump_json(obj)


def named_descriptor(
    desc: Descriptor, ref_name: str | None = None, image_name: str | None = None
) -> Descriptor:
    """``desc`` with the layout naming annotations set (those given) on top of its own."""
    annotations = dict(desc.annotations or {})
    if ref_name is not None:
        annotations[ANNOTATION_REF_NAME] = check_ref_name(ref_name)
    if image_name is not None:
        annotations[ANNOTATION_IMAGE_NAME] = image_name
    return desc.with_annotations(annotations)


def check_layout_file(data: bytes, where: str) -> None:
    """Raise :class:`LayoutError` unless ``data`` is a valid ``oci-layout`` file."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LayoutError(f"{where}: oci-layout is not valid JSON: {e}") from None
    version = obj.get("imageLayoutVersion") if isinstance(obj, dict) else None
    if version != LAYOUT_VERSION:
        raise LayoutError(
            f"{where}: unsupported OCI layout version {version!r}",
            hint=f"derrick reads image layout version {LAYOUT_VERSION}",
        )


def parse_index_json(data: bytes, where: str) -> Index:
    """Parse an ``index.json``; raise :class:`LayoutError` if it is not an image index.

    ``"manifests": null`` is read as no entries: Docker 25.0.0 and 25.0.1 write
    it when they save only untagged images.
    """
    if len(data) > MAX_INDEX_SIZE:
        raise LayoutError(f"{where}: index.json is larger than {MAX_INDEX_SIZE} bytes")
    try:
        parsed = parse_manifest(data, null_manifests=True, what=INDEX_FILE)
    except DerrickError as e:
        problem = e.message  # "index.json is not valid JSON: ..." as it is
        if not problem.startswith(f"{INDEX_FILE} is "):
            problem = f"{INDEX_FILE} is malformed: {problem.removeprefix(INDEX_FILE + ': ')}"
        raise LayoutError(f"{where}: {problem}") from None
    if not isinstance(parsed, Index):
        raise LayoutError(f"{where}: index.json is not an image index")
    return parsed


def entry_name(desc: Descriptor) -> str:
    """How an index entry is named to users: its ref.name, image name or digest."""
    ann = desc.annotations or {}
    return ann.get(ANNOTATION_REF_NAME) or ann.get(ANNOTATION_IMAGE_NAME) or str(desc.digest)


def full_name(desc: Descriptor) -> str:
    """An index entry's full image name (``io.containerd.image.name``), else its digest."""
    return (desc.annotations or {}).get(ANNOTATION_IMAGE_NAME) or str(desc.digest)


def entry_names(entries: Sequence[Descriptor], *, unnamed: bool = False) -> list[str]:
    """Names that pick each entry, each once, in index order.

    An entry's ref.name (tag) when no other image has it, else its full name (or
    its digest when it has none); an entry without a ref.name by its full name,
    and by its digest only when ``unnamed``.
    """
    images_by_tag: dict[str, set[Digest]] = {}
    for d in entries:
        tag = (d.annotations or {}).get(ANNOTATION_REF_NAME)
        if tag:
            images_by_tag.setdefault(tag, set()).add(d.digest)
    out: list[str] = []
    for d in entries:
        ann = d.annotations or {}
        tag = ann.get(ANNOTATION_REF_NAME)
        name: str | None
        if tag:
            name = tag if len(images_by_tag[tag]) == 1 else full_name(d)
        else:
            name = ann.get(ANNOTATION_IMAGE_NAME) or (str(d.digest) if unnamed else None)
        if name and name not in out:
            out.append(name)
    return out


def _listing(entries: Sequence[Descriptor]) -> str:
    """``full-name (digest)`` of each entry, or the digest alone when it has no full name."""
    out: list[str] = []
    for d in entries:
        name = full_name(d)
        item = name if name == str(d.digest) else f"{name} ({d.digest})"
        if item not in out:
            out.append(item)
    return ", ".join(out)


def resolve_entry(entries: Sequence[Descriptor], name: str | None, where: str) -> Descriptor:
    """Find the index entry called ``name``: its ref.name (tag), full name or digest.

    With ``name`` None the index must hold exactly one entry.  A tag that names
    different images (of different repositories) picks none of them: the error
    lists their full names and digests, either of which picks one.
    """
    if name is None:
        if len(entries) == 1:
            return entries[0]
        if not entries:
            raise LayoutError(f"{where} holds no images")
        raise LayoutError(
            f"{where} holds {len(entries)} images; choose one of: "
            + ", ".join(entry_names(entries, unnamed=True))
        )
    for key, what, by in (
        (ANNOTATION_REF_NAME, "tagged", "its full name or digest"),
        (ANNOTATION_IMAGE_NAME, "named", "its digest"),
    ):
        found = [d for d in entries if (d.annotations or {}).get(key) == name]
        if found and len({d.digest for d in found}) == 1:
            return found[0]
        if found:
            raise LayoutError(
                f"{where} has {len({d.digest for d in found})} different images {what} "
                f"{name!r}: {_listing(found)}",
                hint=f"pick one by {by} instead of {name!r}",
            )
    found = [d for d in entries if str(d.digest) == name]
    if found:
        return found[0]
    names = ", ".join(entry_names(entries, unnamed=True)) or "none"
    raise LayoutError(f"no image named {name!r} in {where} (it has: {names})")
