"""Describe an image: platforms, layers, config summary — as plain data."""

from __future__ import annotations

from typing import Any

from derrick.images.view import Image
from derrick.manifest import ImageConfig

__all__ = ["config_summary", "inspect_image"]


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


def inspect_image(image: Image) -> dict[str, Any]:
    """What ``derrick image inspect`` shows, as JSON-ready data.

    ``platform`` is the image's: its index entry's when it was chosen from an index
    (``linux/arm64/v8`` when ``linux/arm64`` was asked for), else its config's.  An OCI
    artifact (``artifactType`` set to its type, ``platform`` None) has only its config's
    digest, size and media type under ``config``: its config is not an image config.
    """
    m = image.manifest
    top = image.top
    index = image.index
    platforms = [
        {
            "platform": str(d.platform) if d.platform else None,
            "digest": str(d.digest),
            "mediaType": d.media_type,
            "size": d.size,
        }
        for d in (index.manifests if index is not None else ())
    ]
    config: dict[str, Any] = {
        "digest": str(m.config.digest),
        "size": m.config.size,
        "mediaType": m.config.media_type,
    }
    if m.is_image:
        config.update(config_summary(image.config))
    platform = image.platform
    return {
        "reference": image.shown,
        "digest": str(top.digest),
        "mediaType": top.media_type,
        "manifestDigest": str(image.digest),
        "manifestMediaType": m.media_type,
        "artifactType": None if m.is_image else m.kind,
        "platform": str(platform) if platform else None,
        "platforms": platforms,
        "config": config,
        "layers": [
            {"digest": str(d.digest), "mediaType": d.media_type, "size": d.size} for d in m.layers
        ],
        "totalSize": image.size,
    }
