"""External tools the tests drive (registry, skopeo, umoci, podman, Docker, htpasswd).

``scripts/test.sh`` installs every one of them, so a missing tool is a broken test
machine, not a reason to skip: :func:`require` fails the test and names the package.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

_PACKAGES = {
    "htpasswd": "apache2-utils",
    "/usr/bin/docker-registry": "docker-registry",
    "docker": "docker.io",
    "dockerd": "docker.io",
}


def require(binary: str) -> str:
    """The path of ``binary``; fail the test when it is not installed."""
    found = shutil.which(binary)
    if found is None and Path(binary).exists():
        found = binary
    if found is None:
        package = _PACKAGES.get(binary, binary)
        pytest.fail(
            f"{binary} is not installed; run 'bash scripts/test.sh', which installs "
            f"the Debian package {package}",
            pytrace=False,
        )
    return found
