"""How ``DIR:NAME`` and ``oci:DIR:NAME`` split: a name may be a tag, a full image name or a
digest, all of which hold colons but ``DIR`` must exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from derrick.errors import LayoutError
from derrick.layout.oci import OCILayout
from derrick.ops.images import is_local, open_image, split_path_name

FULL = "127.0.0.1:5000/team/app:v1"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    OCILayout.create(tmp_path / "lay")
    (tmp_path / "plain").mkdir()
    return tmp_path / "lay"


@pytest.mark.parametrize("name", ["v1", FULL, DIGEST])
def test_names_with_colons_split_after_the_existing_path(layout: Path, name: str) -> None:
    assert split_path_name(f"{layout}:{name}") == (str(layout), name)
    assert split_path_name(f"lay:{name}") == ("lay", name)
    assert is_local(f"lay:{name}") and is_local(f"oci:lay:{name}")


def test_registry_references_stay_remote(layout: Path) -> None:
    # ./plain is a directory but not a layout: plain:5000/app is a registry reference
    assert not is_local("plain:5000/app")
    assert not is_local("nowhere:5000/app:v1")
    assert split_path_name("nowhere:v1") is None


def test_a_full_name_picks_from_a_layout(layout: Path) -> None:
    with pytest.raises(LayoutError, match=f"no image named '{FULL}' in"):
        open_image(f"lay:{FULL}")
