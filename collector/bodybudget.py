"""The bytes of request bodies a front holds at once: being read, inflated, or waiting for
their group commit. Each body is bounded (`max_body`, `max_decompressed`), but thousands of
connections sending at once are not; past `[ingest] max_inflight_bytes` a request is
answered 503 + Retry-After before its body is read, instead of growing the process.
"""

from __future__ import annotations

from aiohttp import web

# The bytes one request holds against the budget, given back when its handler ends.
HELD: web.RequestKey[int] = web.RequestKey("body_bytes_held", int)


class BodyBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, request: web.Request, size: int) -> bool:
        """Hold `size` more bytes for `request`; False (nothing held) if over the limit."""
        if self.used + size > self.limit:
            return False
        self.used += size
        request[HELD] = request.get(HELD, 0) + size
        return True

    def give_back(self, request: web.Request, size: int | None = None) -> None:
        """Give back `size` bytes held for `request` (all of them when None)."""
        held = request.get(HELD, 0)
        size = held if size is None else min(size, held)
        self.used -= size
        request[HELD] = held - size
