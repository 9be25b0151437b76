"""Describe an image: platforms, layers, config summary — as plain data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from derrick.manifest import ImageConfig, Index, Platform
from derrick.ops.resolve import fetch_config, resolve_image
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
    """What ``derrick image inspect`` shows, as JSON-ready data."""
    img = resolve_image(client, ref, platform)
    cfg = fetch_config(client, ref, img.manifest)
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
    layers = [
        {"digest": str(d.digest), "mediaType": d.media_type, "size": d.size}
        for d in img.manifest.layers
    ]
    return {
        "reference": str(ref),
        "digest": str(top.digest),
        "mediaType": top.media_type,
        "manifestDigest": str(img.digest),
        "manifestMediaType": img.manifest.media_type,
        "platform": str(cfg.platform),
        "platforms": platforms,
        "config": {
            "digest": str(img.manifest.config.digest),
            "size": img.manifest.config.size,
            **config_summary(cfg),
        },
        "layers": layers,
        "totalSize": sum(d.size for d in img.manifest.layers) + img.manifest.config.size,
    }
