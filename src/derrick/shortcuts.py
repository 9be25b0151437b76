"""The Python API's one-call functions: :func:`open`, :func:`copy`, :func:`unpack` and
:func:`sync`, each taking strings wherever a reference or a location goes, and making a
:class:`~derrick.client.Client` for the call when none is given (closed with it)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from derrick.client import Client, Platforms, _check_type, _location, _store
from derrick.errors import UsageError
from derrick.images.locations import Location
from derrick.images.model import CopyResult, Progress
from derrick.images.open import DEFAULT_JOBS
from derrick.images.view import Image, open_image
from derrick.manifest import Platform
from derrick.ops.unpack import UnpackResult, unpack_image
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore

if TYPE_CHECKING:
    from derrick.ops.syncconfig import SyncConfig
    from derrick.ops.syncplan import Shard, SyncPlan
    from derrick.ops.syncreport import SyncProgress, SyncReport

__all__ = ["copy", "open", "sync", "unpack"]


@contextlib.contextmanager
def _client(client: Client | None, cache: str | Path | BlobStore | None) -> Iterator[Client]:
    """``client``, or one made for the call (credentials from the usual sources)."""
    if client is not None:
        yield client
        return
    with Client(cache=cache) as made:
        yield made


def open(
    location: str | Location,
    *,
    client: Client | None = None,
    platform: Platform | str | None = None,
    cache: str | Path | BlobStore | None = None,
) -> Image:
    """The image at ``location`` (e.g. ``"oci:./app-oci:1.0"``, ``"app.tar"``,
    ``"registry.example/team/app:1.0"``) for ``platform``: a lazy view (use it as a
    context manager, or close it).  A registry is reached through ``client``, or a client
    made for the image (closed with it)."""
    if client is not None:
        return client.open(location, platform=platform)
    loc = _location(location)
    if not loc.is_registry:  # no client needed
        store = _store(cache)
        # a store opened here is closed with the image (it holds the cache's use lock)
        closers = [store.close] if store is not None and store is not cache else []
        try:
            return open_image(loc, store=store, platform=platform, closers=closers)
        except BaseException:
            for close in closers:
                close()
            raise
    made = Client(cache=cache)
    try:
        return made._open(loc, platform, [made.close])
    except BaseException:
        made.close()
        raise


def copy(
    source: str | Location | Image,
    destination: str | Location,
    *,
    client: Client | None = None,
    platform: Platforms = None,
    all_platforms: bool = False,
    jobs: int = DEFAULT_JOBS,
    progress: Progress | None = None,
    cache: str | Path | BlobStore | None = None,
) -> CopyResult:
    """Copy an image from ``source`` to ``destination``: pull, push and copy are this one
    function.  Either is a location; the source may also be an :class:`Image` (that
    platform's image is copied).

    From an index, the platforms named in ``platform`` are taken (several make a new index
    of just those), or with ``all_platforms`` the index whole; by default a registry
    destination gets the index whole and a local one this machine's platform.  A registry
    destination without a tag takes the image's one tag in the source (one without a tag,
    or with several, needs the tag named: :func:`~derrick.images.open.copy_names`, the
    command line's rule too).  Registries are reached through
    ``client`` (or a client made for the call, with ``cache``).
    """
    with _client(client, cache) as c:
        return c.copy(
            source,
            destination,
            platform=platform,
            all_platforms=all_platforms,
            jobs=jobs,
            progress=progress,
        )


def unpack(
    image: Image | str | Location,
    directory: str | Path,
    *,
    client: Client | None = None,
    platform: Platform | str | None = None,
    same_owner: bool | None = None,
) -> UnpackResult:
    """Unpack the filesystem of ``image`` (an :class:`Image`, or a location) into
    ``directory``, which must be new or empty: layers applied in order with their
    whiteouts, each verified, nothing written outside ``directory``, and nothing left
    there after a failure.  ``same_owner`` (default: when running as root) applies the
    layers' file owners."""
    _check_type("the directory", directory, str, os.PathLike)
    if isinstance(image, Image):
        if platform is not None:
            raise UsageError(
                f"{image} is one platform's image: choose the platform when opening it"
            )
        return unpack_image(image, directory, same_owner=same_owner)
    with open(image, client=client, platform=platform) as opened:
        return unpack_image(opened, directory, same_owner=same_owner)


def sync(
    config_or_plan: SyncConfig | SyncPlan | str | Path,
    *,
    client: Client | RegistryClient | None = None,
    jobs: int | None = None,
    max_pulls: int | None = None,
    shard: Shard | None = None,
    dry_run: bool = False,
    cache_dir: str | Path | None = None,
    progress: SyncProgress | None = None,
) -> SyncReport:
    """Mirror what a sync configuration (a file's path, a ``SyncConfig``) or plan names:
    :func:`derrick.ops.sync.sync`, with ``client`` a :class:`Client` too (default: one
    with the usual credentials, for the call); ``jobs`` images copy at once (default
    4); the :class:`SyncReport`."""
    from derrick.ops.sync import DEFAULT_JOBS  # the mirror's modules, when used
    from derrick.ops.sync import sync as run_sync

    if isinstance(client, Client):
        client._check_open()
        client = client.registry
    return run_sync(
        config_or_plan,
        client=client,
        jobs=DEFAULT_JOBS if jobs is None else jobs,
        max_pulls=max_pulls,
        shard=shard,
        dry_run=dry_run,
        cache_dir=cache_dir,
        progress=progress,
    )
