"""Where an image is, as a user writes it: a registry reference or a place on disk.

Accepted forms (the same for sources and destinations, with the differences noted):

``docker://REF`` or a plain reference (``registry.example/team/app:1.0``, ``alpine``)
    A registry repository.  A destination without tag or digest keeps the source's tag.
``oci:DIR[:NAME]``
    An OCI image layout directory; NAME is a tag, a full image name or a digest.
``oci-archive:FILE[:NAME]``
    A tar of an OCI image layout.
``docker-archive:FILE[:NAME:TAG]``
    A ``docker save`` tarball; NAME:TAG picks (or, writing, gives) its RepoTag.
A plain path
    Where it is unambiguous: an existing directory is an OCI layout, an existing file an
    archive (which kind is read from its content), and a new destination ending in
    ``.tar`` a docker-archive, otherwise an OCI layout.  A path is plain when it starts
    with ``/``, ``./``, ``../`` or ``~/``, ends in ``.tar`` (optionally followed by
    ``:NAME``), or exists and cannot be read as a reference.  Something that is both an
    existing path and a valid reference is refused as ambiguous.
``-``
    Standard input or output, for the archive kinds (``oci-archive:-``,
    ``docker-archive:-``; a plain ``-`` takes the kind the caller says).

A path and its NAME are split at the last ``:`` that leaves an existing path before it
(so a name may hold colons: ``DIR:registry:5000/app:v1``, ``DIR:sha256:…``); for a
destination that does not exist yet, at the first ``:``.

Parsing does no I/O beyond asking whether paths exist; opening a location is the job
of the code that knows the kinds (:mod:`derrick.images.open`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from derrick.errors import InvalidReferenceError, UsageError
from derrick.reference import Reference, bare_registry

__all__ = ["PREFIXES", "Kind", "Location", "parse_location"]

Kind = Literal["registry", "oci", "oci-archive", "docker-archive", "archive"]

#: The transport prefixes, as skopeo spells them.
PREFIXES: dict[str, Kind] = {
    "oci:": "oci",
    "oci-archive:": "oci-archive",
    "docker-archive:": "docker-archive",
}
_PATH_MARKERS = ("/", "./", "../", "~/")


@dataclass(frozen=True)
class Location:
    """A parsed location.

    ``kind`` is ``"archive"`` for an existing file named without a prefix: an OCI
    archive or a docker-archive, told apart by its content when it is opened.
    """

    kind: Kind
    text: str
    reference: Reference | None = None
    path: str | None = None
    name: str | None = None

    @property
    def is_registry(self) -> bool:
        return self.kind == "registry"

    @property
    def is_stream(self) -> bool:
        return self.path == "-"

    def __str__(self) -> str:
        return self.text


def parse_location(
    text: str,
    *,
    destination: bool = False,
    stream_kind: Kind | None = None,
    local: bool = False,
    exists: Callable[[str], bool] = os.path.exists,
    isdir: Callable[[str], bool] = os.path.isdir,
) -> Location:
    """Parse ``text`` (see the module docstring).

    ``destination`` changes two things: a reference without tag or digest keeps no
    default tag (the copy keeps the source's), and a path that does not exist yet is
    fine.  ``stream_kind`` is the archive kind of a plain ``-``.  ``local`` says the
    location is on disk: without a prefix, ``text`` is then a path (``out`` is the
    directory ``./out``, not the image ``docker.io/library/out``).
    """
    if not text:
        raise UsageError("an image location is empty", hint="give a reference or a path")
    if text.startswith("docker://"):
        if local:
            raise UsageError(f"{text} is a registry, and a place on disk is wanted here")
        return _registry(text, text.removeprefix("docker://"), destination)
    for prefix, kind in PREFIXES.items():
        if text.startswith(prefix):
            return _local(text, kind, text[len(prefix) :], destination, exists)
    if text == "-" or text.startswith("-:"):
        if stream_kind is None or stream_kind in ("registry", "oci"):
            raise UsageError(
                "a stream (-) needs an archive kind",
                hint="write oci-archive:- or docker-archive:-",
            )
        return _local(text, stream_kind, text, destination, exists)
    if local or _marked(text):
        return _plain(text, destination, exists, isdir)
    found = _split_existing(text, exists)
    if found is None:
        error = bare_registry(text)
        if error is not None:
            raise error
        return _registry(text, text, destination)
    try:
        Reference.parse(text, default_tag=None)
    except InvalidReferenceError:
        return _plain(text, destination, exists, isdir)
    raise UsageError(
        f"{text!r} is both a path here and an image reference",
        hint=f"write ./{text} for the path, or docker://{text} for the registry",
    )


def _registry(text: str, ref: str, destination: bool) -> Location:
    return Location(
        "registry", text, Reference.parse(ref, default_tag=None if destination else "latest")
    )


def _marked(text: str) -> bool:
    path = text.split(":", 1)[0] if ":" in text and not text.startswith("/") else text
    return (
        text.startswith(_PATH_MARKERS)
        or text in (".", "..", "~")
        or path.endswith(".tar")
        or text.endswith(".tar")
    )


def _split_existing(text: str, exists: Callable[[str], bool]) -> tuple[str, str | None] | None:
    """``(path, name)`` where ``path`` exists: the whole text, or the longest prefix
    before a ``:``; None when no such prefix exists."""
    if exists(text):
        return text, None
    pos = len(text)
    while (pos := text.rfind(":", 0, pos)) > 0:
        if exists(text[:pos]):
            return text[:pos], text[pos + 1 :] or None
    return None


def _split_new(text: str) -> tuple[str, str | None]:
    """A path that does not exist yet and its name: split at the first ``:``."""
    path, _, name = text.partition(":")
    return path, name or None


def _local(
    text: str, kind: Kind, rest: str, destination: bool, exists: Callable[[str], bool]
) -> Location:
    if rest == "-" or rest.startswith("-:"):
        if kind == "oci":
            raise UsageError(
                "an OCI layout is a directory and cannot be a stream",
                hint="write oci-archive:- for a tar of the layout",
            )
        return Location(kind, text, path="-", name=rest[2:] or None)
    found = _split_existing(os.path.expanduser(rest), exists)
    if found is None:
        if not _split_new(rest)[0]:
            raise UsageError(f"{text!r} names no path", hint=f"write {kind}:PATH")
        if not destination:
            raise UsageError(
                f"{_shown(kind)} {_split_new(rest)[0]} does not exist", hint="check the path"
            )
        path, name = _split_new(os.path.expanduser(rest))
    else:
        path, name = found
    if not path:
        raise UsageError(f"{text!r} names no path", hint=f"write {kind}:PATH")
    return Location(kind, text, path=path, name=name)


def _plain(
    text: str, destination: bool, exists: Callable[[str], bool], isdir: Callable[[str], bool]
) -> Location:
    expanded = os.path.expanduser(text)
    found = _split_existing(expanded, exists)
    if found is not None:
        path, name = found
        return Location("oci" if isdir(path) else "archive", text, path=path, name=name)
    if not destination:
        raise UsageError(f"{_split_new(expanded)[0]} does not exist", hint="check the path")
    path, name = _split_new(expanded)
    if path.endswith((".tar.gz", ".tgz")):
        raise UsageError(
            f"derrick writes uncompressed archives, not {os.path.basename(path)}",
            hint="name it .tar, or compress a stream (-) of it",
        )
    kind: Kind = "docker-archive" if path.endswith(".tar") else "oci"
    return Location(kind, text, path=path, name=name)


def _shown(kind: Kind) -> str:
    return {
        "oci": "the OCI layout",
        "oci-archive": "the OCI archive",
        "docker-archive": "the docker-archive",
    }.get(kind, "the path")
