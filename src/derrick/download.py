"""Regions of files that blobs are written into (kept under this name for its importers;
the code is :mod:`derrick.store.files`).  Blobs are downloaded by the one verified,
resumable stream, :class:`derrick.images.feed.Feed`."""

from __future__ import annotations

from derrick.errors import Cancelled
from derrick.store.files import CHUNK, Region, Sink, Tee, copy_range

__all__ = ["CHUNK", "Cancelled", "Region", "Sink", "Tee", "copy_range"]
