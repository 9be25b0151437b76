"""Describe an image: platforms, layers, config summary — as plain data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from derrick.manifest import ImageConfig, Index, Platform
from derrick.ops.resolve import resolve_image, resolved_config
from derrick.platform import config_platform
from derrick.reference import Reference
from derrick.registry import RegistryClient


@dataclass(frozen=True)
class ImageReport:
    ref: Reference
    data: dict[str, Any]


def config_summary(cfg: ImageConfig) -> dict[str, Any]:
    c = cfg.config
    return {
        "created": cfg.created,
        "os": cfg.os,
        "architecture": cfg.architecture,
        "variant": cfg.variant,
        "user": c.get("User") or None,
        "env": list(c.get("Env") or []),
        "entrypoint": c.get("Entrypoint"),
        "cmd": c.get("Cmd"),
        "workingDir": c.get("WorkingDir") or None,
        "exposedPorts": sorted((c.get("ExposedPorts") or {}).keys()),
        "labels": dict(c.get("Labels") or {}),
        "diffIds": [str(d) for d in cfg.diff_ids],
        "historyCount": len(cfg.history),
    }


def inspect_image(
    client: RegistryClient, ref: Reference, platform: Platform | None = None
) -> dict[str, Any]:
    """What ``derrick image inspect`` shows, as JSON-ready data.

    An OCI artifact (``artifactType`` set to its type, ``platform`` None) has
    only its config's digest, size and media type under ``config``: its config
    is not an image config.
    """
    img = resolve_image(client, ref, platform)
    m = img.manifest
    top = img.top
    platforms = []
    if isinstance(top.manifest, Index):
        for d in top.manifest.manifests:
            platforms.append(
                {
                    "platform": str(d.platform) if d.platform else None,
                    "digest": str(d.digest),
                    "mediaType": d.media_type,
                    "size": d.size,
                }
            )
    config: dict[str, Any] = {
        "digest": str(m.config.digest),
        "size": m.config.size,
        "mediaType": m.config.media_type,
    }
    plat: Platform | None = None
    if m.is_image:
        cfg = resolved_config(client, img)
        plat = config_platform(cfg)
        config.update(config_summary(cfg))
    layers = [
        {"digest": str(d.digest), "mediaType": d.media_type, "size": d.size} for d in m.layers
    ]
    return {
        "reference": str(ref),
        "digest": str(top.digest),
        "mediaType": top.media_type,
        "manifestDigest": str(img.digest),
        "manifestMediaType": m.media_type,
        "artifactType": None if m.is_image else m.kind,
        "platform": str(plat) if plat else None,
        "platforms": platforms,
        "config": config,
        "layers": layers,
        "totalSize": sum(d.size for d in m.layers) + m.config.size,
    }
