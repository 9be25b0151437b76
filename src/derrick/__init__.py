"""derrick: talk to container image registries directly, no Docker daemon.

The main entry points::

    from derrick import RegistryClient, Reference, copy
    from derrick.images.dockerarchive import DockerArchiveSink
    from derrick.images.remote import RegistryRepository

    with RegistryClient() as client:
        ref = Reference.parse("localhost:5000/team/app:1.0")
        client.list_tags(ref)
        copy(RegistryRepository(client, ref), DockerArchiveSink("app.tar"))

Every error derrick raises is a :class:`DerrickError`.  The names below are imported when
first used (``import derrick`` alone loads no HTTP stack).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> the module it lives in
_WHERE = {
    "DeniedError": "derrick.errors",
    "DerrickError": "derrick.errors",
    "DigestMismatchError": "derrick.errors",
    "ManifestError": "derrick.errors",
    "ManifestUnknownError": "derrick.errors",
    "NotFoundError": "derrick.errors",
    "RegistryError": "derrick.errors",
    "Remedy": "derrick.errors",
    "TooManyRequestsError": "derrick.errors",
    "TransportError": "derrick.errors",
    "UnauthorizedError": "derrick.errors",
    "Descriptor": "derrick.manifest",
    "ImageConfig": "derrick.manifest",
    "ImageManifest": "derrick.manifest",
    "Index": "derrick.manifest",
    "Platform": "derrick.manifest",
    "Digest": "derrick.digest",
    "Reference": "derrick.reference",
    "RegistryClient": "derrick.registry",
    "copy": "derrick.ops.transfer",
    "sync": "derrick.ops.sync",
}

__all__ = [
    "DeniedError",
    "DerrickError",
    "Descriptor",
    "Digest",
    "DigestMismatchError",
    "ImageConfig",
    "ImageManifest",
    "Index",
    "ManifestError",
    "ManifestUnknownError",
    "NotFoundError",
    "Platform",
    "Reference",
    "RegistryClient",
    "RegistryError",
    "Remedy",
    "TooManyRequestsError",
    "TransportError",
    "UnauthorizedError",
    "__version__",
    "copy",
    "sync",
]

if TYPE_CHECKING:
    from derrick.digest import Digest
    from derrick.errors import (
        DeniedError,
        DerrickError,
        DigestMismatchError,
        ManifestError,
        ManifestUnknownError,
        NotFoundError,
        RegistryError,
        Remedy,
        TooManyRequestsError,
        TransportError,
        UnauthorizedError,
    )
    from derrick.manifest import Descriptor, ImageConfig, ImageManifest, Index, Platform
    from derrick.ops.sync import sync
    from derrick.ops.transfer import copy
    from derrick.reference import Reference
    from derrick.registry import RegistryClient


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'derrick' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
