"""Opening the image a command argument names, wherever it is (light to import: what
opening needs is imported when it is called)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from derrick.cli.common import Options, parse_platform

if TYPE_CHECKING:
    from derrick.images.locations import Location
    from derrick.images.view import Image


def image_location(text: str) -> Location:
    """The location an image argument names (checked before anything is read)."""
    from derrick.images.locations import parse_location

    return parse_location(text)


@contextlib.contextmanager
def opened_image(
    loc: Location,
    opts: Options,
    *,
    platform: str | None = None,
    cache_dir: Path | None = None,
    cache: bool = False,
    jobs: int = 4,
) -> Iterator[Image]:
    """The image at ``loc`` for ``platform`` (a registry client made only for a registry);
    with ``cache``, layers from a registry go through the blob cache (``cache_dir``, else
    the default one)."""
    from derrick.images.view import open_image
    from derrick.store.cache import BlobStore

    wanted = parse_platform(platform)
    with contextlib.ExitStack() as stack:
        client = None
        if loc.reference is not None:
            client = stack.enter_context(opts.client(loc.reference.registry))
        image = stack.enter_context(
            open_image(
                loc,
                client=client,
                store=stack.enter_context(BlobStore(cache_dir)) if cache else None,
                platform=wanted,
                jobs=jobs,
            )
        )
        yield image
