"""Which platform an image is for, and refusing one that is not what was asked for.

The one place platform requests are checked: an index entry is chosen by its
descriptor's platform (:func:`choose_in_index`, which the index walk of
:mod:`derrick.images.plan` uses); an image that is not in an index has its platform in its
config, and is checked here (:func:`check_platform`).  An OCI artifact
(a Helm chart, a signature, an SBOM…) has none.
"""

from __future__ import annotations

from collections.abc import Sequence

from derrick import mediatypes as mt
from derrick.errors import NotAnImageError, PlatformNotFoundError, Remedy
from derrick.manifest import ImageConfig, ImageManifest, Index, Platform

Wanted = Platform | Sequence[Platform] | None


def _wanted(want: Wanted) -> tuple[Platform, ...]:
    if want is None:
        return ()
    if isinstance(want, Platform):
        return (want,)
    return tuple(want)


def choose_in_index(index: Index, wanted: Sequence[Platform], what: str) -> list[int]:
    """Positions in ``index.manifests`` of the image for each wanted platform.

    For each platform the first image manifest entry whose platform matches it
    (:meth:`Platform.matches`: a request without a variant takes any variant) is taken;
    the positions come back each once, in the index's order.  Raises
    :class:`PlatformNotFoundError` naming the platforms there are.
    """
    chosen: set[int] = set()
    for want in wanted:
        pos = next(
            (
                i
                for i, d in enumerate(index.manifests)
                if d.platform is not None
                and mt.is_image_manifest(d.media_type)
                and d.platform.matches(want)
            ),
            None,
        )
        if pos is None:
            have = ", ".join(str(p) for p in index.platforms) or "none"
            raise PlatformNotFoundError(
                f"no image for platform {want} in {what} (it has: {have})",
                remedy=Remedy("platforms"),
            )
        chosen.add(pos)
    return sorted(chosen)


def config_platform(config: ImageConfig) -> Platform | None:
    """The platform an image config names; None if it names none."""
    return config.platform if config.os and config.architecture else None


def check_platform(
    what: str, manifest: ImageManifest, config: ImageConfig | None, want: Wanted
) -> None:
    """Refuse an image that is not of platform ``want`` (if given).

    For a manifest that was not chosen from an index: its platform is the one
    its ``config`` names.  An OCI artifact has none.
    """
    wanted = _wanted(want)
    if not wanted:
        return
    if not manifest.is_image or config is None:
        raise PlatformNotFoundError(
            f"no image for platform {_shown(wanted)}: {what} is not a container image but "
            f"an artifact of type {manifest.kind}, which has no platform",
            remedy=Remedy("no-platform"),
        )
    check_config_platform(what, config, wanted)


def check_config_platform(what: str, config: ImageConfig, want: Wanted) -> None:
    """Refuse the image of ``config`` (one not chosen from an index) unless it is of ``want``."""
    wanted = _wanted(want)
    if not wanted:
        return
    have = config_platform(config)
    if have is None:
        raise PlatformNotFoundError(
            f"no image for platform {_shown(wanted)}: {what} is a single-platform image "
            "whose config names no platform",
            remedy=Remedy("no-platform"),
        )
    if not any(have.matches(w) for w in wanted):
        raise PlatformNotFoundError(
            f"no image for platform {_shown(wanted)}: {what} is a single-platform image for {have}",
            remedy=Remedy("platform", platform=str(have)),
        )


def require_image(what: str, manifest: ImageManifest, why: str) -> None:
    """Refuse an OCI artifact where only a container image will do (``why`` says what)."""
    if manifest.is_image:
        return
    raise NotAnImageError(
        f"{what} is not a container image but an artifact of type {manifest.kind}: {why}",
        remedy=Remedy("not-an-image"),
    )


def _shown(wanted: Sequence[Platform]) -> str:
    return ", ".join(str(p) for p in wanted)
