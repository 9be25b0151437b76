"""derrick's blob store: verified blobs by digest, and resumable partial files.

Nothing here knows of registries or images; see :mod:`derrick.store.cache`.
"""

from derrick.store.cache import BlobStore, PartialBlob, default_cache_dir

__all__ = ["BlobStore", "PartialBlob", "default_cache_dir"]
