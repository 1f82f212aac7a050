"""Retention: closed sessions that started more than `[storage] retention` ago are deleted,
with their detail and every index entry, by a background task of the sessionizer process
(the one that writes sessions) every `[storage] retention_interval`.

The `by_time` index is ordered by start, so a run walks it from the oldest entry and stops at
the first young one: its cost is the number of sessions it deletes. It deletes in write
transactions of at most `BATCH` sessions, so that the WAL commits of the fronts (the same
single LMDB writer) never wait long behind it. Open (live) sessions are never touched.

The clock is a parameter (`clock`), so tests choose what "now" is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import lmdb

from collector.store import U64, Store

log = logging.getLogger(__name__)

BATCH = 500


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def expire_sessions(
    store: Store, before_ms: int, batch: int = BATCH, stop: Callable[[], bool] = lambda: False
) -> int:
    """Delete the closed sessions whose start is before `before_ms`; how many. `stop` is
    asked between transactions (shutdown)."""
    deleted = 0
    while not stop():

        def one_batch(txn: lmdb.Transaction) -> int:
            cursor = txn.cursor(db=store.dbs["by_time"])
            old: list[str] = []
            if cursor.first():
                for key in cursor.iternext(keys=True, values=False):
                    if U64.unpack_from(key)[0] >= before_ms or len(old) == batch:
                        break
                    old.append(key[U64.size :].decode())
            for session_id in old:
                store.delete_closed(txn, session_id)
            return len(old)

        n = store.write(one_batch)
        deleted += n
        if n < batch:
            break
    return deleted


class Retention:
    def __init__(
        self,
        store: Store,
        retention_ms: int,
        interval_ms: int,
        on_expired: Callable[[int], None] | None = None,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self._store = store
        self._retention_ms = retention_ms
        self._interval_s = interval_ms / 1000
        self._on_expired = on_expired
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def run_once(self) -> int:
        """Blocking: one pass at the clock's now; the number of sessions deleted."""
        before = self._clock() - self._retention_ms
        deleted = expire_sessions(self._store, before, stop=self._stop.is_set)
        if deleted:
            log.info("expired sessions", extra={"deleted": deleted,
                                                "retention_ms": self._retention_ms})  # fmt: skip
        if self._on_expired is not None:
            self._on_expired(deleted)
        return deleted

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="retention")

    async def close(self) -> None:
        """Stop after the transaction in progress (the store closes after this)."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            try:
                await loop.run_in_executor(None, self.run_once)
            except Exception:  # a failed pass (a full disk) is tried again next time
                log.exception("retention pass failed")
            try:
                await asyncio.wait_for(self._stop.wait(), self._interval_s)
            except TimeoutError:
                pass
