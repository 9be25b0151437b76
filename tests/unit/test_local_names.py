"""How ``DIR:NAME`` and ``oci:DIR:NAME`` split when an image is read: a name may be a tag, a
full image name or a digest, all of which hold colons, but ``DIR`` must exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from derrick.errors import LayoutError, UsageError
from derrick.images.locations import parse_location
from derrick.images.view import open_image
from derrick.layout.oci import OCILayout

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
    for text in (f"{layout}:{name}", f"oci:lay:{name}", f"./lay:{name}"):
        loc = parse_location(text)
        assert (loc.kind, loc.name) == ("oci", name)
        assert loc.path is not None and Path(loc.path).resolve() == layout


def test_a_plain_word_that_is_a_path_and_a_reference_is_refused(layout: Path) -> None:
    with pytest.raises(UsageError, match="both a path here and an image reference"):
        parse_location("lay:v1")


def test_registry_references_stay_remote(layout: Path) -> None:
    # ./plain is a directory, but plain:5000/app names a registry's repository
    assert parse_location("nowhere:5000/app:v1").is_registry
    assert parse_location("docker://lay:v1").is_registry


def test_a_full_name_picks_from_a_layout(layout: Path) -> None:
    with (
        pytest.raises(LayoutError, match=f"no image named '{FULL}' in"),
        open_image(f"oci:lay:{FULL}") as image,
    ):
        image.digest  # noqa: B018  # read when asked for
