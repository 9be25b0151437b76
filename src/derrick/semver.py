"""Versions in tags and ranges of them, for choosing tags to mirror (pure, no I/O).

A tag is a version when it reads ``[v]MAJOR[.MINOR[.PATCH]][-PRERELEASE][+BUILD]``: ``3``,
``3.19``, ``v1.2.3``, ``1.25.3-alpine`` (``alpine`` is its pre-release part, as semver reads
it).  Missing parts are 0: ``3.19`` is 3.19.0.  Versions order as semver says (a
pre-release before its release; build metadata ignored), and equal versions by their tag.

A range is one or more alternatives separated by ``||``; an alternative is comparators
separated by spaces or commas, all of which must hold:

* ``>=1.2``, ``>1.2``, ``<=1.2``, ``<1.2``, ``=1.2`` (or ``==``, or no operator), ``!=1.2``.
  A partial version covers every version it leaves open: ``1.2`` (and ``=1.2``, ``1.2.x``,
  ``1.2.*``) is ``>=1.2.0 <1.3.0``; ``>1.2`` is ``>=1.3.0``; ``<=1.2`` is ``<1.3.0``.
* ``~1.2.3`` is ``>=1.2.3 <1.3.0``; ``~1.2`` is ``>=1.2.0 <1.3.0``; ``~1`` is ``>=1 <2``.
* ``^1.2.3`` is ``>=1.2.3 <2.0.0``; ``^0.2.3`` is ``>=0.2.3 <0.3.0``; ``^0.0.3`` is only 0.0.3.
* ``1.2 - 1.4`` is ``>=1.2.0 <1.5.0``; ``*`` or ``x`` is any version.

A version with a pre-release part matches only a range that names a pre-release itself
(``>=1.0.0-rc1``), so ``>=3.18 <4`` takes ``3.19.1`` but not ``3.19.1-alpine`` nor
``4.0.0-rc1``; likewise :func:`newest` leaves pre-releases out unless asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from derrick.errors import UsageError

__all__ = ["Range", "Version", "newest", "parse_version"]

_VERSION = re.compile(
    r"v?(?P<major>0|[1-9]\d*)(?:\.(?P<minor>0|[1-9]\d*)(?:\.(?P<patch>0|[1-9]\d*))?)?"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
_PARTIAL = re.compile(
    r"v?(?P<major>\d+|[xX*])(?:\.(?P<minor>\d+|[xX*])(?:\.(?P<patch>\d+|[xX*]))?)?"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-.]+)?"
)
_COMPARATOR = re.compile(r"(?P<op>>=|<=|==|!=|>|<|=|~>|~|\^)?\s*(?P<ver>\S+)")
_WILD = frozenset({"x", "X", "*"})

Key = tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]


def _pre_key(pre: tuple[str, ...]) -> tuple[tuple[int, int | str], ...]:
    # numeric identifiers sort before alphanumeric ones, each kind in its own order
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre)


@dataclass(frozen=True)
class Version:
    """A version read from a tag (see the module docstring)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    tag: str = field(default="", compare=False)

    @property
    def key(self) -> Key:
        """Semver precedence: a release after all of its pre-releases."""
        release = 0 if self.prerelease else 1
        return (self.major, self.minor, self.patch, release, _pre_key(self.prerelease))

    def __str__(self) -> str:
        pre = "-" + ".".join(self.prerelease) if self.prerelease else ""
        return f"{self.major}.{self.minor}.{self.patch}{pre}"


def parse_version(tag: str) -> Version | None:
    """The version a tag reads as, or None when it is not one."""
    m = _VERSION.fullmatch(tag)
    if m is None:
        return None
    pre = tuple(m.group("pre").split(".")) if m.group("pre") else ()
    return Version(
        int(m.group("major")), int(m.group("minor") or 0), int(m.group("patch") or 0), pre, tag
    )


def newest(tags: list[str], count: int, *, prerelease: bool = False) -> list[str]:
    """The ``count`` tags of the highest versions; tags that are no version are left out,
    and so are pre-releases unless ``prerelease``."""
    versions = [
        v for v in map(parse_version, tags) if v is not None and (prerelease or not v.prerelease)
    ]
    versions.sort(key=lambda v: (v.key, v.tag), reverse=True)
    return [v.tag for v in versions[:count]]


#: One bound: (key, inclusive); None is unbounded.
_Bound = tuple[Key, bool] | None


@dataclass(frozen=True)
class _Interval:
    low: _Bound = None
    high: _Bound = None
    negate: bool = False  # for !=: everything outside [low, high)

    def holds(self, key: Key) -> bool:
        inside = True
        if self.low is not None:
            inside = key >= self.low[0] if self.low[1] else key > self.low[0]
        if inside and self.high is not None:
            inside = key <= self.high[0] if self.high[1] else key < self.high[0]
        return inside != self.negate


def _key(major: int, minor: int, patch: int, pre: tuple[str, ...] = ()) -> Key:
    return Version(major, minor, patch, pre).key


def _floor(major: int, minor: int, patch: int) -> Key:
    """The least version of all, pre-releases included, at or after major.minor.patch."""
    return (major, minor, patch, 0, ())


@dataclass(frozen=True)
class Range:
    """A range of versions (see the module docstring); ``Range.parse(text)``."""

    text: str
    alternatives: tuple[tuple[_Interval, ...], ...]
    prerelease: bool  # the range names a pre-release: pre-release versions may match

    @classmethod
    def parse(cls, text: str) -> Range:
        alternatives = []
        named_pre = False
        for alt in text.split("||"):
            alt = re.sub(r"\s*-\s+|\s+-\s*", " - ", alt.strip())
            words = [w for w in re.split(r"[\s,]+", alt) if w]
            words = _join_operators(words, text)
            intervals: list[_Interval] = []
            i = 0
            while i < len(words):
                if i + 2 < len(words) and words[i + 1] == "-":
                    low, pre1 = _comparator(">=" + words[i], text)
                    high, pre2 = _comparator("<=" + words[i + 2], text)
                    intervals += [*low, *high]
                    named_pre = named_pre or pre1 or pre2
                    i += 3
                    continue
                got, pre = _comparator(words[i], text)
                intervals += got
                named_pre = named_pre or pre
                i += 1
            alternatives.append(tuple(intervals))
        return cls(text, tuple(alternatives), named_pre)

    def matches(self, version: Version) -> bool:
        if version.prerelease and not self.prerelease:
            return False
        key = version.key
        return any(all(i.holds(key) for i in alt) for alt in self.alternatives)

    def __str__(self) -> str:
        return self.text


def _bad(text: str, why: str) -> UsageError:
    return UsageError(
        f"invalid version range {text!r}: {why}",
        hint='write comparators such as ">=3.18 <4", "~1.2", "^2" or "1.2.x"',
    )


def _join_operators(words: list[str], text: str) -> list[str]:
    """``>= 1.2`` written with a space is ``>=1.2``."""
    out: list[str] = []
    pending = ""
    for w in words:
        if w in (">=", "<=", "==", "!=", ">", "<", "=", "~", "~>", "^"):
            if pending:
                raise _bad(text, f"{pending!r} has no version after it")
            pending = w
            continue
        out.append(pending + w)
        pending = ""
    if pending:
        raise _bad(text, f"{pending!r} has no version after it")
    return out


def _comparator(word: str, text: str) -> tuple[list[_Interval], bool]:
    """The intervals one comparator means, and whether it names a pre-release."""
    m = _COMPARATOR.fullmatch(word)
    if m is None:
        raise _bad(text, f"{word!r} is not a comparator")
    op = m.group("op") or "="
    p = _PARTIAL.fullmatch(m.group("ver"))
    if p is None:
        raise _bad(text, f"{m.group('ver')!r} is not a version")
    parts = [p.group("major"), p.group("minor"), p.group("patch")]
    given = 0
    for part in parts:
        if part is None or part in _WILD:
            break
        given += 1
    if any(part is not None and part not in _WILD for part in parts[given:]):
        raise _bad(text, f"{m.group('ver')!r} has a number after a wildcard")
    nums = [int(part) if i < given and part is not None else 0 for i, part in enumerate(parts)]
    pre = tuple(p.group("pre").split(".")) if p.group("pre") else ()
    if pre and given < 3:
        raise _bad(text, f"{m.group('ver')!r}: a pre-release needs a full version")
    major, minor, patch = nums
    exact = _key(major, minor, patch, pre)
    if given == 0:  # *, x: anything
        return ([] if op in ("=", "==", ">=", "<=", "~", "~>", "^") else [_none()]), False
    nxt = _next(major, minor, patch, given)  # just past what the partial version covers
    low: _Bound = (exact if given == 3 else _floor(major, minor, patch), True)
    if op in ("=", "=="):
        if given == 3:
            return [_Interval((exact, True), (exact, True))], bool(pre)
        return [_Interval(low, (nxt, False))], False
    if op == "!=":
        if given == 3:
            return [_Interval((exact, True), (exact, True), negate=True)], bool(pre)
        return [_Interval(low, (nxt, False), negate=True)], False
    if op == ">=":
        return [_Interval(low)], bool(pre)
    if op == ">":
        return [_Interval((exact, False) if given == 3 else (nxt, True))], bool(pre)
    if op == "<":
        high = exact if given == 3 else _floor(major, minor, patch)
        return [_Interval(None, (high, False))], bool(pre)
    if op == "<=":
        return [_Interval(None, (exact, True) if given == 3 else (nxt, False))], bool(pre)
    if op in ("~", "~>"):
        high = _next(major, minor, patch, min(given, 2))
        return [_Interval(low, (high, False))], bool(pre)
    # ^: the first non-zero part given may not change
    if major > 0 or given == 1:
        high = _next(major, minor, patch, 1)
    elif minor > 0 or given == 2:
        high = _next(major, minor, patch, 2)
    else:
        high = _next(major, minor, patch, 3)
    return [_Interval(low, (high, False))], bool(pre)


def _next(major: int, minor: int, patch: int, given: int) -> Key:
    """The floor of the version after the ``given`` leading parts: 1.2 (given 2) -> 1.3.0."""
    if given == 1:
        return _floor(major + 1, 0, 0)
    if given == 2:
        return _floor(major, minor + 1, 0)
    return _floor(major, minor, patch + 1)


def _none() -> _Interval:
    """An interval nothing is in (``<*``, ``>*``)."""
    return _Interval(None, None, negate=True)
