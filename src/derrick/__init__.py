"""derrick: talk to container image registries directly, no Docker daemon.

The main entry points::

    import derrick

    with derrick.Client() as client:                 # credentials from ~/.docker/config.json
        repo = client.repository("registry.example/team/app")
        repo.tags()
        image = repo.image("1.0", platform="linux/arm64")  # lazy: digest, config, layers, size
        derrick.copy(image, "docker-archive:app.tar")      # pull, push and copy are one verb
        derrick.unpack(image, "./rootfs")

    with derrick.open("oci:./app-oci:1.0") as image:       # images on disk, the same view
        print(image.digest, image.config.architecture)

Every error derrick raises is a :class:`DerrickError`.  The names below are imported when
first used (``import derrick`` alone loads no HTTP stack).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> the module it lives in
_WHERE = {
    "Client": "derrick.client",
    "Repository": "derrick.client",
    "copy": "derrick.shortcuts",
    "open": "derrick.shortcuts",
    "unpack": "derrick.shortcuts",
    "Image": "derrick.images.view",
    "Layer": "derrick.images.layers",
    "CopyResult": "derrick.images.model",
    "Progress": "derrick.images.model",
    "Selection": "derrick.images.model",
    "TransferStats": "derrick.images.model",
    "UnpackResult": "derrick.ops.unpack",
    "sync": "derrick.shortcuts",
    "SyncInterrupted": "derrick.ops.syncreport",
    "SyncReport": "derrick.ops.syncreport",
    "RegistryClient": "derrick.registry",
    "Reference": "derrick.reference",
    "Digest": "derrick.digest",
    "Descriptor": "derrick.manifest",
    "ImageConfig": "derrick.manifest",
    "ImageManifest": "derrick.manifest",
    "Index": "derrick.manifest",
    "Platform": "derrick.manifest",
    "BlobStore": "derrick.store.cache",
    "CacheDiskError": "derrick.store.cache",
    "BlobUnknownError": "derrick.errors",
    "Cancelled": "derrick.errors",
    "CredentialsError": "derrick.errors",
    "DeniedError": "derrick.errors",
    "DerrickError": "derrick.errors",
    "DigestMismatchError": "derrick.errors",
    "DiskError": "derrick.errors",
    "InvalidDigestError": "derrick.errors",
    "InvalidReferenceError": "derrick.errors",
    "LayoutError": "derrick.errors",
    "ManifestError": "derrick.errors",
    "ManifestUnknownError": "derrick.errors",
    "NameUnknownError": "derrick.errors",
    "NotAnImageError": "derrick.errors",
    "NotFoundError": "derrick.errors",
    "PlatformNotFoundError": "derrick.errors",
    "ProtocolError": "derrick.errors",
    "RegistryError": "derrick.errors",
    "Remedy": "derrick.errors",
    "ServerError": "derrick.errors",
    "TLSError": "derrick.errors",
    "TooManyRequestsError": "derrick.errors",
    "TransportError": "derrick.errors",
    "UnauthorizedError": "derrick.errors",
    "UnsupportedError": "derrick.errors",
    "UsageError": "derrick.errors",
}

__all__ = [
    "BlobStore",
    "BlobUnknownError",
    "CacheDiskError",
    "Cancelled",
    "Client",
    "CopyResult",
    "CredentialsError",
    "DeniedError",
    "DerrickError",
    "Descriptor",
    "Digest",
    "DigestMismatchError",
    "DiskError",
    "Image",
    "ImageConfig",
    "ImageManifest",
    "Index",
    "InvalidDigestError",
    "InvalidReferenceError",
    "Layer",
    "LayoutError",
    "ManifestError",
    "ManifestUnknownError",
    "NameUnknownError",
    "NotAnImageError",
    "NotFoundError",
    "Platform",
    "PlatformNotFoundError",
    "Progress",
    "ProtocolError",
    "Reference",
    "RegistryClient",
    "RegistryError",
    "Remedy",
    "Repository",
    "Selection",
    "ServerError",
    "SyncInterrupted",
    "SyncReport",
    "TLSError",
    "TooManyRequestsError",
    "TransferStats",
    "TransportError",
    "UnauthorizedError",
    "UnpackResult",
    "UnsupportedError",
    "UsageError",
    "__version__",
    "copy",
    "open",
    "sync",
    "unpack",
]

if TYPE_CHECKING:
    from derrick.client import Client, Repository
    from derrick.digest import Digest
    from derrick.errors import (
        BlobUnknownError,
        Cancelled,
        CredentialsError,
        DeniedError,
        DerrickError,
        DigestMismatchError,
        DiskError,
        InvalidDigestError,
        InvalidReferenceError,
        LayoutError,
        ManifestError,
        ManifestUnknownError,
        NameUnknownError,
        NotAnImageError,
        NotFoundError,
        PlatformNotFoundError,
        ProtocolError,
        RegistryError,
        Remedy,
        ServerError,
        TLSError,
        TooManyRequestsError,
        TransportError,
        UnauthorizedError,
        UnsupportedError,
        UsageError,
    )
    from derrick.images.layers import Layer
    from derrick.images.model import CopyResult, Progress, Selection, TransferStats
    from derrick.images.view import Image
    from derrick.manifest import Descriptor, ImageConfig, ImageManifest, Index, Platform
    from derrick.ops.syncreport import SyncInterrupted, SyncReport
    from derrick.ops.unpack import UnpackResult
    from derrick.reference import Reference
    from derrick.registry import RegistryClient
    from derrick.shortcuts import copy, open, sync, unpack
    from derrick.store.cache import BlobStore, CacheDiskError


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'derrick' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
