"""derrick: talk to container image registries directly, no Docker daemon.

The main entry points::

    from derrick import RegistryClient, Reference, pull

    with RegistryClient() as client:
        ref = Reference.parse("localhost:5000/team/app:1.0")
        client.list_tags(ref)
        pull(client, ref, "app.tar")

Every error derrick raises is a :class:`DerrickError`.
"""

from derrick.digest import Digest
from derrick.errors import (
    DeniedError,
    DerrickError,
    DigestMismatchError,
    ManifestError,
    ManifestUnknownError,
    NotFoundError,
    RegistryError,
    TooManyRequestsError,
    TransportError,
    UnauthorizedError,
)
from derrick.manifest import Descriptor, ImageConfig, ImageManifest, Index, Platform
from derrick.ops.pull import pull
from derrick.ops.sync import sync
from derrick.reference import Reference
from derrick.registry import RegistryClient

__version__ = "0.1.0"

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
    "TooManyRequestsError",
    "TransportError",
    "UnauthorizedError",
    "__version__",
    "pull",
    "sync",
]
