"""What a sync reports (at the end, and as it goes), and the pull budget it keeps.

Pulls are counted the way Docker Hub counts them: a manifest ``GET`` is a pull, and up to
two ``GET``\\ s of one image (an index and the platform image chosen from it) are one
pull; ``HEAD`` requests and blob downloads are none.  So an image copy costs
``ceil(G / 2)`` pulls, G being the manifest ``GET``\\ s it made (its top manifest or
index, and every child manifest it copied); an unchanged tag costs none (two ``HEAD``\\ s),
except that deciding about an index copied with a platform selection, when no record of
an earlier run says what it became, costs its one ``GET``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from derrick.errors import DerrickError, Remedy
from derrick.images.model import BlobOutcome
from derrick.manifest import Descriptor
from derrick.registry import RateLimit

__all__ = [
    "Budget",
    "BytesMoved",
    "ImageOutcome",
    "RateLimitState",
    "Status",
    "SyncInterrupted",
    "SyncProgress",
    "SyncReport",
    "Words",
    "pulls_for",
    "pulls_text",
]

#: ``copied``; ``unchanged`` (skipped); ``failed``; ``left`` (not done: the pull budget or
#: the rate limit stopped the sync first); ``planned`` (would be copied: a dry run).
Status = Literal["copied", "unchanged", "failed", "left", "planned"]

#: Exit status of a sync that left work undone for the budget or rate limit, failing nothing.
EXIT_LEFT = 3


#: How a remedy is said (the library's words by default; a front end passes its own).
Words = Callable[[Remedy], str]


def _library_words(remedy: Remedy) -> str:
    return remedy.describe()


def said(reason: str | None, remedy: Remedy | None, words: Words = _library_words) -> str | None:
    """``reason``, and the remedy in ``words``."""
    parts = [reason, words(remedy) if remedy is not None else None]
    return "; ".join(p for p in parts if p) or None


def reason_of(e: DerrickError) -> str:
    """What ``e`` says went wrong: its message and hint (its remedy is said apart)."""
    return "; ".join(p for p in (e.message, e.hint) if p)


def pulls_for(gets: int) -> int:
    """The pulls ``gets`` manifest GETs of one image count as (see the module docstring)."""
    return math.ceil(gets / 2)


@dataclass
class ImageOutcome:
    """What happened to one image."""

    source: str  # registry/repository:tag or @digest
    destination: str
    status: Status
    digest: str | None = None  # what the destination name points at (or would)
    reason: str | None = None  # why it failed or was left
    remedy: Remedy | None = None  # what to do about it, when there is something
    bytes: int = 0  # blob bytes read from the source
    blobs: int = 0  # blobs copied (streamed)
    mounted: int = 0  # blobs mounted from another repository of the destination
    manifest_gets: int = 0  # manifest GETs at the source
    seconds: float = 0.0

    def failed_with(self, e: DerrickError) -> None:
        """Failed for ``e``: its message and hint are the reason, its remedy kept."""
        self.status = "failed"
        self.reason = reason_of(e)
        self.remedy = e.remedy

    def why(self, words: Words = _library_words) -> str | None:
        """The reason with the remedy, in ``words``."""
        return said(self.reason, self.remedy, words)

    def to_json(self, words: Words = _library_words) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "status": self.status,
            "digest": self.digest,
            "reason": self.why(words),
            "bytes": self.bytes,
            "blobs": self.blobs,
            "mounted": self.mounted,
            "manifestGets": self.manifest_gets,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class RateLimitState:
    """The last ``ratelimit-*`` headers a source registry sent, and a 429's Retry-After."""

    limit: int | None = None
    remaining: int | None = None
    window_seconds: int | None = None
    retry_after: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "remaining": self.remaining,
            "windowSeconds": self.window_seconds,
            "retryAfter": self.retry_after,
        }

    def describe(self) -> str:
        parts = []
        if self.remaining is not None:
            of = f" of {self.limit}" if self.limit is not None else ""
            parts.append(f"{self.remaining}{of} pulls left")
        if self.window_seconds:
            parts.append(
                f"the window is {_duration(self.window_seconds)} and pulls come back as it slides"
            )
        if self.retry_after is not None:
            parts.append(f"the registry asked to wait {_duration(self.retry_after)}")
        return "; ".join(parts) or "no rate limit announced"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600 and s % 3600 == 0:
        return f"{s // 3600}h"
    if s >= 60 and s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"


@dataclass
class SyncReport:
    """The outcome of a sync: every image, what was filtered out, time and bytes."""

    images: list[ImageOutcome] = field(default_factory=list)
    filtered: list[str] = field(default_factory=list)
    #: sources that could not be listed: (name, the error); they count as failures
    source_errors: list[tuple[str, DerrickError]] = field(default_factory=list)
    other_shards: int = 0
    seconds: float = 0.0
    #: why the sync stopped copying before the end (pull budget, rate limit), if it did
    stopped: str | None = None
    max_pulls: int | None = None
    pulls: int = 0  # pulls spent, as counted in the module docstring
    rate_limits: dict[str, RateLimitState] = field(default_factory=dict)
    dry_run: bool = False
    #: destinations two different sources name: (the destination, the source copied
    #: there, the one left out); the first source in the configuration wins
    clashes: list[tuple[str, str, str]] = field(default_factory=list)

    def _with(self, status: Status) -> list[ImageOutcome]:
        return [i for i in self.images if i.status == status]

    @property
    def copied(self) -> list[ImageOutcome]:
        return self._with("copied")

    @property
    def unchanged(self) -> list[ImageOutcome]:
        return self._with("unchanged")

    @property
    def failed(self) -> list[ImageOutcome]:
        return self._with("failed")

    @property
    def left(self) -> list[ImageOutcome]:
        return self._with("left")

    @property
    def planned(self) -> list[ImageOutcome]:
        return self._with("planned")

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.images)

    @property
    def exit_code(self) -> int:
        """0 when everything is done; 1 when anything failed; :data:`EXIT_LEFT` when the
        budget or the rate limit left work undone and nothing failed."""
        if self.failed or self.source_errors:
            return 1
        return EXIT_LEFT if self.left else 0

    def to_json(self, words: Words = _library_words) -> dict[str, Any]:
        """The report as JSON; ``words`` says remedies (default: the library's)."""
        return {
            "copied": len(self.copied),
            "unchanged": len(self.unchanged),
            "filtered": len(self.filtered),
            "failed": len(self.failed) + len(self.source_errors),
            "left": len(self.left),
            "planned": len(self.planned),
            "otherShards": self.other_shards,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "pulls": self.pulls,
            "maxPulls": self.max_pulls,
            "stopped": self.stopped,
            "dryRun": self.dry_run,
            "rateLimits": {k: v.to_json() for k, v in self.rate_limits.items()},
            "images": [i.to_json(words) for i in self.images],
            "filteredOut": self.filtered,
            "sourceErrors": [
                {"source": n, "reason": said(reason_of(e), e.remedy, words)}
                for n, e in self.source_errors
            ],
            "clashes": [
                {"destination": d, "copied": taken, "leftOut": left}
                for d, taken, left in self.clashes
            ],
        }


def pulls_text(n: int) -> str:
    """``1 pull``, ``2 pulls``."""
    return f"{n} pull" if n == 1 else f"{n} pulls"


def _budget_spent(max_pulls: int, spent: int, pulls: int) -> str:
    if spent >= max_pulls:
        return f"the budget of {pulls_text(max_pulls)} is spent"
    left = max_pulls - spent
    return (
        f"the budget of {pulls_text(max_pulls)} has {left} left, and the next image needs {pulls}"
    )


class Budget:
    """The pulls a sync may still spend: ``--max-pulls`` and each registry's remaining count.

    :meth:`take` reserves pulls before a copy spends them (refused when either would be
    overdrawn); :meth:`observe` reads a registry's ``ratelimit-*`` headers, which count what
    it has seen; pulls reserved by copies still running are kept off what it says.
    """

    def __init__(self, max_pulls: int | None) -> None:
        self.max_pulls = max_pulls
        self.spent = 0
        self.states: dict[str, RateLimitState] = {}
        self._running: dict[str, int] = {}  # pulls held by copies not finished
        self._left: dict[str, int] = {}  # what each registry has left for us
        self._seen: set[str] = set()  # registries that answered
        self._cond = threading.Condition()

    def observe(self, registry: str, rl: RateLimit | None, *, landed: int = 0) -> None:
        """Read ``rl`` from an answer of ``registry``; ``landed`` pulls held by a copy are
        in the registry's count from this answer on."""
        with self._cond:
            self._seen.add(registry)
            if landed:
                self._running[registry] = self._running.get(registry, 0) - landed
                self._cond.notify_all()
            if rl is None:
                return
            state = self.states.setdefault(registry, RateLimitState())
            state.limit = rl.limit if rl.limit is not None else state.limit
            state.window_seconds = rl.window_seconds or state.window_seconds
            if rl.remaining is not None:
                state.remaining = rl.remaining
                self._left[registry] = rl.remaining - self._running.get(registry, 0)

    def unlimited(self, registry: str) -> bool:
        """Whether ``registry`` answered and announced no rate limit (so far)."""
        with self._cond:
            return registry in self._seen and registry not in self.states

    def retry_after(self, registry: str, seconds: float | None) -> None:
        with self._cond:
            state = self.states.setdefault(registry, RateLimitState())
            state.retry_after = seconds

    def take(self, registry: str, pulls: int) -> str | None:
        """Reserve ``pulls``; None when done, else why they cannot be had.

        When the registry's count is short while pulls of running copies are not in it
        yet, the answer waits for those (their answers bring a newer count).
        """
        if pulls <= 0:
            return None
        deadline = time.monotonic() + 60
        with self._cond:
            while True:
                if self.max_pulls is not None and self.spent + pulls > self.max_pulls:
                    return _budget_spent(self.max_pulls, self.spent, pulls)
                left = self._left.get(registry)
                if left is None or pulls <= left:
                    break
                wait = deadline - time.monotonic()
                if self._running.get(registry, 0) <= 0 or wait <= 0:
                    return f"{registry} has {pulls_text(max(left, 0))} left"
                self._cond.wait(wait)
            self.spent += pulls
            self._running[registry] = self._running.get(registry, 0) + pulls
            if left is not None:
                self._left[registry] = left - pulls
            return None

    def give_back(self, registry: str, pulls: int) -> None:
        """Return reserved pulls that were not spent."""
        if pulls <= 0:
            return
        with self._cond:
            self.spent -= pulls
            if registry in self._left:
                self._left[registry] += pulls
            self._running[registry] = self._running.get(registry, 0) - pulls
            self._cond.notify_all()

    def finished(self, registry: str, pulls: int) -> None:
        """A copy is over: the ``pulls`` it held that no answer counted yet are counted."""
        with self._cond:
            self._running[registry] = self._running.get(registry, 0) - pulls
            self._cond.notify_all()


class SyncProgress(Protocol):
    """Receives a sync's progress; every method may be called from worker threads."""

    def planned(self, images: int) -> None:
        """The images to check (called again when signature tags add some)."""
        ...

    def bytes_moved(self, nbytes: int) -> None:
        """Blob bytes read from a source (negative when a retry goes back)."""
        ...

    def image_finished(self, outcome: ImageOutcome) -> None: ...


class BytesMoved:
    """The engine's progress of one copy, as bytes moved for the sync's display."""

    def __init__(self, moved: Callable[[int], None]) -> None:
        self._moved = moved
        self._streaming: set[str] = set()
        self._lock = threading.Lock()

    def planned(self, total_bytes: int) -> None:
        pass

    def blob_started(self, desc: Descriptor) -> None:
        with self._lock:
            self._streaming.add(str(desc.digest))

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        if str(desc.digest) in self._streaming:
            self._moved(nbytes)

    def blob_finished(self, desc: Descriptor, outcome: BlobOutcome) -> None:
        pass


class SyncInterrupted(KeyboardInterrupt):
    """A sync stopped by an interrupt (Ctrl-C), with the :class:`SyncReport` of what it had
    done: finished images as they ended, the others ``left`` (a run again does them)."""

    def __init__(self, report: SyncReport) -> None:
        super().__init__("interrupted")
        self.report = report
