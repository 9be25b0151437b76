"""Docker Hub style pull limits, as ``ratelimit-*`` response headers state them."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class RateLimit:
    """Docker Hub style pull limits from ``ratelimit-*`` response headers."""

    limit: int | None
    remaining: int | None
    window_seconds: int | None
    source: str | None

    @classmethod
    def from_headers(cls, headers: httpx.Headers) -> RateLimit | None:
        limit, w1 = _count_and_window(headers.get("ratelimit-limit"))
        remaining, w2 = _count_and_window(headers.get("ratelimit-remaining"))
        if limit is None and remaining is None:
            return None
        return cls(limit, remaining, w1 or w2, headers.get("docker-ratelimit-source"))

    def describe(self) -> str:
        window = f" per {self.window_seconds // 3600}h" if self.window_seconds else ""
        if self.window_seconds and self.window_seconds % 3600:
            window = f" per {self.window_seconds}s"
        return f"{self.remaining} of {self.limit} pulls left{window}"


def _count_and_window(value: str | None) -> tuple[int | None, int | None]:
    """``"100;w=21600"`` → ``(100, 21600)``; parts that are not numbers are None."""
    if not value:
        return None, None
    head, _, rest = value.partition(";")
    try:
        count: int | None = int(head.strip())
    except ValueError:
        count = None
    m = re.search(r"w=(\d+)", rest)
    return count, int(m.group(1)) if m else None
