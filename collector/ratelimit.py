"""Token-bucket rate limits (per client IP; per app where a receiver knows the app).

In memory, per process: with `--workers N` each front enforces 1/N of the configured rate and
burst, so that all fronts together never let a client (or an app) exceed the limit, however
SO_REUSEPORT spreads its connections; a client that keeps one connection gets one share. Keys
are never stored.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class TokenBuckets:
    """`rate` tokens per second, at most `burst` saved, per key; the least recently used keys
    are forgotten beyond `max_keys` (a forgotten key starts again with a full bucket)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @classmethod
    def share(cls, rate: float, burst: int, fronts: int) -> TokenBuckets:
        """One front's share of a limit that `fronts` processes enforce together."""
        return cls(rate / fronts, max(1, burst // fronts))

    def take(self, key: str, now: float | None = None) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait
