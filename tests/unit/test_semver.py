"""Versions read from tags, and ranges of them (derrick.semver)."""

from __future__ import annotations

import pytest

from derrick.errors import UsageError
from derrick.semver import Range, newest, parse_version

TAGS = [
    "3.17", "3.18", "3.18.4", "v3.18.2", "3.19", "3.19.1", "3.19.1-alpine", "3.20", "4.0",
    "4.0.0-rc1", "latest", "edge", "2", "0.2.3", "0.2.9", "0.3.0", "1.2.3.4",
]  # fmt: skip


def chosen(text: str) -> list[str]:
    r = Range.parse(text)
    return [t for t in TAGS if (v := parse_version(t)) is not None and r.matches(v)]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (">=3.18 <4", ["3.18", "3.18.4", "v3.18.2", "3.19", "3.19.1", "3.20"]),
        (">= 3.18, < 3.19", ["3.18", "3.18.4", "v3.18.2"]),
        ("3.19", ["3.19", "3.19.1"]),
        ("=3.19.1", ["3.19.1"]),
        ("3.x", ["3.17", "3.18", "3.18.4", "v3.18.2", "3.19", "3.19.1", "3.20"]),
        ("~3.18", ["3.18", "3.18.4", "v3.18.2"]),
        ("~3.18.3", ["3.18.4"]),
        ("^0.2.3", ["0.2.3", "0.2.9"]),
        ("^0.0.3", []),
        (">3.19", ["3.20", "4.0"]),
        ("<=3.17 || >=4", ["3.17", "4.0", "2", "0.2.3", "0.2.9", "0.3.0"]),
        ("3.18 - 3.19", ["3.18", "3.18.4", "v3.18.2", "3.19", "3.19.1"]),
        ("!=3.19 >=3.19", ["3.20", "4.0"]),
        (">=4.0.0-rc1", ["4.0", "4.0.0-rc1"]),
    ],
)
def test_ranges_choose_exactly(text: str, want: list[str]) -> None:
    assert chosen(text) == want


def test_pre_releases_only_when_the_range_names_one() -> None:
    assert "3.19.1-alpine" not in chosen("*")
    assert chosen(">=3.19.1-a <3.19.1") == ["3.19.1-alpine"]


def test_what_is_a_version() -> None:
    assert parse_version("1.2.3.4") is None and parse_version("latest") is None
    v = parse_version("v1.2-rc.1+build5")
    assert v is not None and (v.major, v.minor, v.patch, v.prerelease) == (1, 2, 0, ("rc", "1"))
    assert parse_version("01.2") is None  # no leading zeros


def test_newest_orders_by_precedence_and_leaves_out_pre_releases() -> None:
    assert newest(TAGS, 3) == ["4.0", "3.20", "3.19.1"]
    assert newest(TAGS, 2, prerelease=True) == ["4.0", "4.0.0-rc1"]
    assert newest(["1.10", "1.9", "1.2"], 1) == ["1.10"]


@pytest.mark.parametrize("bad", [">=", "abc", "1.x.2", "1.2-rc1", ">=3.18 <", "~>"])
def test_bad_ranges_say_what_is_wrong(bad: str) -> None:
    with pytest.raises(UsageError, match="invalid version range"):
        Range.parse(bad)
