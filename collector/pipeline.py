"""The sessionizer loop: the WAL is the queue.

One loop, in one process (DESIGN "Durability contract"):

1. read the WAL in order after the position consumed so far;
2. feed the records to the core, one `Sessionizer.ingest` per run of records, and call
   `flush(now)` where the WAL holds a tick (see store.py: ticks make replay deterministic);
3. in one write transaction: store the closed sessions (summary, detail, indexes; their live
   entry removed), publish changed live summaries (at least once a second), append the next
   tick when one is due, and from time to time (see `_checkpoint_due`) the core's state with
   the WAL position it includes, trimming the WAL behind it.

Start-up recovery is the same loop: restore the checkpoint, then consume from its position.
Until the WAL head seen at start is reached, `/readyz` fails with `recovering`. A closed
session written after the last checkpoint is written again, identically, by the replay.

At shutdown the loop consumes what is left in the WAL and checkpoints; open sessions stay
open (they continue after the restart).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import lmdb

from collector._core import IngestResult, Sessionizer, parse_user_agent
from collector.store import RECORDS, TICK, U64

if TYPE_CHECKING:
    from collector._core import ClosedSession
    from collector.config import Settings
    from collector.metrics import Metrics
    from collector.readiness import Readiness
    from collector.store import Store

log = logging.getLogger(__name__)

# WAL bytes read per step: large enough that one `ingest` call amortises the crossing,
# small enough that a step (and so a live publish or a tick) is never far away, and that the
# sessions one step closes stay few: WAL records are compact (~40 bytes a beacon), a closed
# session is ~2.5 KB of summary and detail, and a flood of new ids closes one per beacon
# (1M ids: 4 MiB steps held 800+ MiB at their peak, 256 KiB steps ~300 MiB).
READ_MAX_BYTES = 256 << 10
# How often the WAL is polled for entries other processes appended (--workers N); in one
# process the batcher also wakes the loop after each commit.
POLL_S = 0.01
# After a step that found entries, the next one waits this long, so that under load each
# `ingest` call takes the commits of many batches (fewer crossings, less contention with
# the fronts for the CPU and the GIL: a step reads the WAL, ingests and writes with a dozen
# GIL hand-offs to and from the event loop); sessions only become visible up to this much
# later. 20 ms → 100 ms halved the sessionizer thread's CPU and context switches a beacon.
BUSY_STEP_S = 0.1
# Live summaries are published at least once a second (DESIGN); building them is the core's
# most expensive call after ingest, so not more often than that, less a step's length.
LIVE_INTERVAL_MS = 1000 - 2 * int(BUSY_STEP_S * 1000)
# Their timelines (what `GET /api/v1/sessions/{id}` shows of an open session) go out less
# often: a timeline grows with every action (~300 B each), and rebuilding those of busy
# sessions every second cost the sessionizer more than closing them.
LIVE_DETAIL_INTERVAL_MS = 5000
# The WAL kept growing faster than it was consumed for this long: log a warning.
BEHIND_WARN_S = 10.0
# Below this much new WAL a checkpoint waits for `checkpoint_interval`.
MIN_CHECKPOINT_WAL_BYTES = 4 << 20
# Parsed once at start: the first parse in a process builds the core's user-agent regex set
# (~0.1-0.2 s), which the first beacon after a start would otherwise wait for.
WARM_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class StepOutcome:
    results: list[IngestResult] = field(default_factory=list)
    entries: int = 0
    more: bool = False
    open_sessions: int = 0


class Pipeline:
    def __init__(
        self, store: Store, settings: Settings, metrics: Metrics, readiness: Readiness
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._readiness = readiness
        self._core = Sessionizer(settings.core_settings())
        self._flush_interval_ms = settings.flush_interval_ms
        self._checkpoint_interval_ms = settings.checkpoint_interval_ms
        # One thread owns the core and does every step: the core is not shared.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sessionizer")
        self._pos = 0  # last WAL seq consumed
        self._clock = 0  # the last tick's time: the `now` of the core, replayed identically
        self._checkpoint_pos = 0
        self._last_checkpoint_ms = 0
        self._checkpoint_bytes = 0  # size of the last checkpoint
        self._wal_bytes = 0  # record bytes ingested since it
        self._last_live_ms = 0
        self._last_live_detail_ms = 0
        self._last_tick_ms = 0
        self._ingested_since_tick = False
        self._more_due = False  # the last core call left due sessions for the next step
        self._max_closed_per_write = settings.max_closed_per_write
        self._unwritten: list[ClosedSession] = []
        self._recover_target = 0
        self.recovering = True
        self._stopping = False
        self._abandon = False
        self._behind_since: float | None = None
        self._behind_warned = 0.0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- asyncio shell ----------------------------------------------------------------------

    def notify(self) -> None:
        """New WAL entries were committed by this process."""
        self._wakeup.set()

    def start(self) -> None:
        self._readiness.set("recovering")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sessionizer")

    async def close(self, timeout_s: float) -> None:
        """Consume what is left in the WAL (within `timeout_s`), checkpoint, stop."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._abandon = True
                log.error("sessionizer did not finish in time; the WAL keeps the rest")
            except Exception:
                log.exception("sessionizer loop failed")
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        try:
            await self._loop()
        except Exception:
            # Acknowledged beacons stay in the WAL; this process must not get traffic until
            # an operator looks (a checkpoint the core cannot restore, a broken disk).
            log.exception("sessionizer failed")
            self._readiness.set("sessionizer_failed")
            raise

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        run = self._executor
        started = time.monotonic()
        ua_parser_s = await loop.run_in_executor(run, self._recover_start)
        log.info(
            "recovering",
            extra={
                "from_seq": self._pos,
                "to_seq": self._recover_target,
                "user_agent_parser_s": round(ua_parser_s, 3),
            },
        )
        while True:
            try:
                outcome = await loop.run_in_executor(run, self._step, False)
            except Exception:
                log.exception("sessionizer step failed; retrying")
                await asyncio.sleep(1.0)
                continue
            self._observe(outcome)
            self._warn_if_behind(outcome)
            if self._abandon:
                return
            if self.recovering and self._pos >= self._recover_target and not outcome.more:
                await loop.run_in_executor(run, self._recover_done)
                self.recovering = False
                self._readiness.set("recovering", False)
                log.info(
                    "recovered",
                    extra={
                        "seconds": round(time.monotonic() - started, 3),
                        "open_sessions": outcome.open_sessions,
                    },
                )
            if self._stopping and not outcome.more:
                break
            if not outcome.more:
                if outcome.entries:
                    await asyncio.sleep(BUSY_STEP_S)
                else:
                    await self._sleep(POLL_S)
        outcome = await loop.run_in_executor(run, self._step, True)
        log.info(
            "sessionizer stopped",
            extra={"wal_pos": self._pos, "open_sessions": outcome.open_sessions},
        )

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0 or self._wakeup.is_set():
            self._wakeup.clear()
            return
        handle = asyncio.get_running_loop().call_later(seconds, self._wakeup.set)
        await self._wakeup.wait()
        handle.cancel()
        self._wakeup.clear()

    def _warn_if_behind(self, outcome: StepOutcome) -> None:
        """Say so when the WAL grows faster than the core consumes it (acknowledged beacons
        are safe in the WAL, but sessions show up late and the WAL takes disk)."""
        now = time.monotonic()
        if not outcome.more or self.recovering:
            self._behind_since = None
            return
        if self._behind_since is None:
            self._behind_since = now
        elif now - self._behind_since >= BEHIND_WARN_S and now - self._behind_warned >= 30:
            self._behind_warned = now
            behind = {"seconds": round(now - self._behind_since), "wal_pos": self._pos}
            log.warning("sessionizer is behind the WAL", extra=behind)

    def _observe(self, outcome: StepOutcome) -> None:
        for result in outcome.results:
            self._metrics.observe_closed(result)
            if result.rejected:
                log.warning("core rejected WAL records", extra={"rejected": len(result.rejected)})
        self._metrics.set_sessions_open(outcome.open_sessions)

    # --- the loop's steps (sessionizer thread) ------------------------------------------

    def _recover_start(self) -> float:
        """Restores the last checkpoint; returns the seconds the user-agent parser took to
        get ready."""
        started = time.monotonic()
        parse_user_agent(WARM_USER_AGENT)
        ua_parser_s = time.monotonic() - started
        state, pos, clock = self._store.load_checkpoint()
        if state is not None:
            self._core.restore(state)
        self._pos = self._checkpoint_pos = pos
        self._checkpoint_bytes = len(state or b"")
        self._clock = clock
        self._recover_target = self._store.wal_head()
        self._last_checkpoint_ms = wall_ms()
        self._store.write(lambda txn: self._store.put_sessionizer_status(txn, "recovering"))
        return ua_parser_s

    def _recover_done(self) -> None:
        def publish(txn: lmdb.Transaction) -> None:
            # Everything open after the replay is published afresh; entries of sessions that
            # no longer exist (a replay can only differ after a core upgrade) go away.
            self._store.clear_live(txn)
            self._store.put_live(txn, live)
            self._store.put_sessionizer_status(txn, "running")

        live = self._core.live()
        self._last_live_ms = self._last_live_detail_ms = wall_ms()
        self._store.write(publish)

    def _step(self, final: bool) -> StepOutcome:
        outcome = StepOutcome()
        if self._more_due:
            # The last core call left due sessions (`max_closed_per_write`): close the next
            # ones, at the same clock, before any later WAL entry, and write them.
            self._core_call(outcome, self._core.flush(self._clock))
        entries: list[tuple[int, int, bytes]] = []
        if not self._more_due:
            entries, outcome.more = self._store.read_wal(self._pos, READ_MAX_BYTES)
        outcome.entries = len(entries)
        # The position advances with each core call that returned, so that a failure part
        # way never feeds the core the same records twice; after a call that left due
        # sessions, the step ends there (its closed sessions are written, the next step
        # closes more).
        chunk: list[bytes] = []
        for seq, kind, payload in entries:
            if kind == RECORDS:
                chunk.append(payload)
            elif kind == TICK:
                if chunk:
                    self._core_call(outcome, self._ingest(chunk))
                    chunk = []
                self._pos = seq - 1
                if self._more_due:
                    break
                self._clock = U64.unpack(payload)[0]
                self._core_call(outcome, self._core.flush(self._clock))
            else:
                log.warning(
                    "skipping a WAL entry of unknown kind", extra={"seq": seq, "kind": kind}
                )
            if not chunk:
                self._pos = seq
            if self._more_due:
                break
        else:
            if chunk:
                self._core_call(outcome, self._ingest(chunk))
            if entries:
                self._pos = entries[-1][0]
        outcome.more = outcome.more or self._more_due

        outcome.open_sessions = self._core.open_count()
        now = wall_ms()
        # Kept until written: if the write fails, the core has moved on regardless, so the
        # next step must write these (the WAL position has advanced past their records).
        self._unwritten.extend(s for r in outcome.results for s in r.closed)
        closed = self._unwritten
        live_due = not self.recovering and now - self._last_live_ms >= LIVE_INTERVAL_MS
        tick_due = (
            not self.recovering
            and not final
            and not outcome.more
            and now - self._last_tick_ms >= self._flush_interval_ms
            and (self._ingested_since_tick or outcome.open_sessions > 0)
        )
        # Not while due sessions wait (the state would hold them, and a restart would close
        # them in other chunks); `final` (shutdown) flushes them first, see `_loop`.
        checkpoint_due = (
            self._pos > self._checkpoint_pos
            and not self._more_due
            and (final or self._checkpoint_due(now))
        )
        if not (closed or live_due or tick_due or checkpoint_due or final):
            return outcome

        details_due = live_due and now - self._last_live_detail_ms >= LIVE_DETAIL_INTERVAL_MS
        live = self._core.live(details_due) if live_due else []
        state = self._core.checkpoint() if checkpoint_due else None
        pos, clock = self._pos, self._clock

        def write(txn: lmdb.Transaction) -> None:
            for session in closed:
                self._store.put_closed(txn, session)
            self._store.put_live(txn, live)
            if tick_due:
                self._store.append_tick(txn, now)
            if state is not None:
                self._store.put_checkpoint(txn, state, pos, clock)
                self._store.trim_wal(txn, pos)
            if final:
                self._store.put_sessionizer_status(txn, "stopped")

        self._store.write(write)
        self._unwritten = []
        if live_due:
            self._last_live_ms = now
        if details_due:
            self._last_live_detail_ms = now
        if tick_due:
            self._last_tick_ms = now
            self._ingested_since_tick = False
        if state is not None:
            self._checkpoint_pos = pos
            self._last_checkpoint_ms = now
            self._checkpoint_bytes = len(state)
            self._wal_bytes = 0
        return outcome

    def _checkpoint_due(self, now: int) -> bool:
        """A checkpoint rewrites every open session, so it is worth it only once the WAL it
        lets us trim is about as large: then checkpoints cost at most as much as the WAL
        itself, and a restart replays at most about one checkpoint's worth of records. At
        least every `checkpoint_interval` when records came in; never for ticks alone (an
        idle collector with open sessions would rewrite them all for nothing)."""
        if not self._wal_bytes:
            return False
        if self._wal_bytes >= max(self._checkpoint_bytes, MIN_CHECKPOINT_WAL_BYTES):
            return True
        return now - self._last_checkpoint_ms >= self._checkpoint_interval_ms

    def _core_call(self, outcome: StepOutcome, result: IngestResult) -> None:
        outcome.results.append(result)
        if result.more_due and not self._more_due:
            log.info(
                "more sessions are due than one write closes (after an outage?): closing "
                "them a write at a time",
                extra={"max_closed_per_write": self._max_closed_per_write},
            )
        self._more_due = result.more_due

    def _ingest(self, chunk: list[bytes]) -> IngestResult:
        self._ingested_since_tick = True
        batch = chunk[0] if len(chunk) == 1 else b"".join(chunk)
        self._wal_bytes += len(batch)
        return self._core.ingest(batch, self._clock)
