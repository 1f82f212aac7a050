"""Group commit: beacon requests queue up; one `_core.prepare` call and one fsync'ed LMDB write
transaction per batch; every request's future resolves only after that commit.

While a batch is being validated and committed (in the commit thread), new requests queue for
the next batch, so under load one fsync serves many requests and the batch size adapts to the
disk's latency by itself. The queue is bounded: when full, `submit` raises `Overloaded` and
the front answers 503 with Retry-After (DESIGN: "a 2xx means durable", so there is nothing
to acknowledge early).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import lmdb

from collector._core import prepare
from collector.store import StorageFull

if TYPE_CHECKING:
    from collector.config import Settings
    from collector.metrics import Metrics
    from collector.readiness import Readiness
    from collector.store import Store

log = logging.getLogger(__name__)

# (recv_ms, ip, user_agent, flags, body): what `_core.prepare` takes per request.
Request = tuple[int, str, str, int, bytes]
Verdict = tuple[str, str] | None


# `Store.space_left` makes 9 LMDB stats, the environment's stat and info and a statvfs, each of
# which lets go of the GIL: under load each retake waits for the event loop to let go of it
# in turn (a dozen hand-offs a commit, 100-200 commits a second). Far from the reserve it is
# measured this often, and what this front appends in between is counted against it.
SPACE_CHECK_S = 0.25


class Overloaded(Exception):
    """The queue is full or the collector is draining: answer 503 + Retry-After."""

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class StorageError(Exception):
    """The WAL commit failed; the request was not stored (answer 503, the client retries).
    `reason`: `storage_full` (the map at max_map_size, or the disk, would leave less than the
    reserve), else `storage_error` (the disk refused the write)."""

    def __init__(self, message: str, reason: str = "storage_error") -> None:
        super().__init__(message)
        self.reason = reason


def storage_failure(err: Exception) -> str:
    return "storage_full" if isinstance(err, StorageFull | lmdb.MapFullError) else "storage_error"


class Batcher:
    """The queue lives on the event loop's side; one commit thread takes a batch from it,
    commits it and hands the verdicts back with one `call_soon_threadsafe` per batch, then
    takes the next batch at once. The loop is never between two commits: when the loop was
    (an asyncio task awaiting `run_in_executor` per batch), each commit cycle waited ~1 ms
    under load for the loop to get round to starting the next one."""

    _loop: asyncio.AbstractEventLoop  # the running loop, from `start`

    def __init__(
        self,
        store: Store,
        settings: Settings,
        metrics: Metrics,
        readiness: Readiness,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._readiness = readiness
        self._on_commit = on_commit
        self._queue_max = settings.queue_max_requests
        self._batch_max = settings.batch_max_requests
        self._batch_max_bytes = settings.batch_max_bytes
        self._max_events = settings.max_events
        self._mask_ip = settings.mask_ip
        # Shared by the loop (`submit`) and the commit thread (`_take_batch`), under `_lock`.
        self._requests: list[Request] = []
        self._futures: list[asyncio.Future[Verdict]] = []
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._more = threading.Condition(self._lock)
        # While the commit thread waits, the queue length at which `submit` wakes it (1: any
        # request; the last batch's size: the commit_delay window); 0 while it commits.
        self._wake_at = 0
        self._closing = False
        # One thread: commits are serial anyway (one LMDB writer), and a batch formed while
        # the previous one commits is exactly what group commit wants.
        self._thread = threading.Thread(target=self._commit_loop, name="wal-commit", daemon=True)
        self._stopped: asyncio.Future[None] | None = None
        self._commit_delay_s = settings.commit_delay_ms / 1000
        # What the sessionizer may still write when ingest stops for lack of space.
        self._reserve = settings.storage_reserve_bytes
        self._space_left = 0  # at the last measure (commit thread only)
        self._space_at = -SPACE_CHECK_S
        self._appended = 0  # record bytes committed since that measure
        self._failing: str | None = None  # storage_full / storage_error while commits fail
        self._failed_batches = 0

    @property
    def depth(self) -> int:
        return len(self._requests)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        self._thread.start()

    async def close(self) -> None:
        """Stop taking requests, commit every queued one, stop the commit thread."""
        with self._lock:
            self._closing = True
            self._more.notify()
        if self._stopped is not None:
            await self._stopped  # after the callbacks of every batch (FIFO)
            self._thread.join()

    def submit(
        self, recv_ms: int, ip: str, user_agent: str, flags: int, body: bytes
    ) -> asyncio.Future[Verdict]:
        """Queue one request; await the returned future: after its batch is committed, None
        if accepted (durable), else the core's (reason, message) verdict; or it raises
        `StorageError`. Raises `Overloaded` at once.

        A plain function returning the future (no coroutine of its own) and the loop kept
        from `start`: `asyncio.get_running_loop()` makes a getpid() system call each time."""
        if self._closing:
            raise Overloaded("draining", 1)
        with self._lock:
            requests = self._requests
            if len(requests) >= self._queue_max:
                self._readiness.set("overloaded")
                raise Overloaded("overloaded", 1)
            future: asyncio.Future[Verdict] = self._loop.create_future()
            requests.append((recv_ms, ip, user_agent, flags, body))
            self._futures.append(future)
            self._queued_bytes += len(body)
            if self._wake_at and len(requests) >= self._wake_at:
                self._wake_at = 0
                self._more.notify()
        return future

    # --- the commit thread --------------------------------------------------------------

    def _commit_loop(self) -> None:
        loop = self._loop
        last_batch = 0
        try:
            while batch := self._next_batch(last_batch):
                requests, futures, depth = batch
                last_batch = len(requests)
                started = time.perf_counter()
                try:
                    verdicts = self._commit(requests)
                except Exception as err:  # a disk error must fail these requests, not the thread
                    loop.call_soon_threadsafe(self._failed, futures, err, depth)
                    continue
                seconds = time.perf_counter() - started
                loop.call_soon_threadsafe(self._committed, futures, verdicts, seconds, depth)
        finally:
            loop.call_soon_threadsafe(self._set_stopped)

    def _next_batch(
        self, last_batch: int
    ) -> tuple[list[Request], list[asyncio.Future[Verdict]], int] | None:
        """Wait for requests and take a batch (None once closing and all is taken)."""
        with self._lock:
            while not self._requests:
                if self._closing:
                    return None
                self._wake_at = 1
                self._more.wait()
            if self._commit_delay_s and last_batch > 1 and not self._closing:
                self._gather_window(last_batch)
            self._wake_at = 0
            requests, futures = self._take_batch()
            return requests, futures, len(self._requests)

    def _gather_window(self, last_batch: int) -> None:
        """Under concurrent load, wait up to `commit_delay` for as many requests as the last
        batch had. Senders whose beacons were just acknowledged send their next ones within
        a round trip; without this pause they would miss the commit that starts now and the
        in-flight requests would split into two half-size batches, one fsync each.
        Called with `_lock` held."""
        deadline = time.monotonic() + self._commit_delay_s
        while len(self._requests) < last_batch and not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake_at = last_batch
            self._more.wait(left)

    # --- back on the loop ---------------------------------------------------------------

    def _committed(
        self, futures: list[asyncio.Future[Verdict]], verdicts: list[Verdict], seconds: float,
        depth: int,
    ) -> None:  # fmt: skip
        if self._failing is not None:
            self._commit_recovered()
        self._metrics.set_queue_depth(depth)
        self._metrics.observe_batch(len(futures), seconds)
        for future, verdict in zip(futures, verdicts, strict=True):
            if not future.done():  # the client may have gone; its beacon is stored anyway
                future.set_result(verdict)
        if self._on_commit is not None:
            self._on_commit()
        if len(self._requests) < self._queue_max // 2:
            self._readiness.set("overloaded", False)

    def _failed(self, futures: list[asyncio.Future[Verdict]], err: Exception, depth: int) -> None:
        self._metrics.set_queue_depth(depth)
        reason = self._commit_failed(err, len(futures))
        for future in futures:
            if not future.done():
                future.set_exception(StorageError(str(err), reason))

    def _set_stopped(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _take_batch(self) -> tuple[list[Request], list[asyncio.Future[Verdict]]]:
        """Called with `_lock` held."""
        n = min(len(self._requests), self._batch_max)
        if self._queued_bytes > self._batch_max_bytes:
            size = 0
            for i, request in enumerate(self._requests[:n]):
                size += len(request[4])
                if size > self._batch_max_bytes:
                    n = max(i, 1)
                    break
        requests, self._requests = self._requests[:n], self._requests[n:]
        futures, self._futures = self._futures[:n], self._futures[n:]
        self._queued_bytes -= sum(len(r[4]) for r in requests)
        return requests, futures

    def _commit(self, requests: list[Request]) -> list[Verdict]:
        """Commit thread: validate the batch in the core, then append it to the WAL (fsync),
        unless that would leave less than the reserve (then `StorageFull`)."""
        records, verdicts, _events = prepare(requests, self._max_events, self._mask_ip)

        def append(txn: lmdb.Transaction) -> None:
            if self._reserve:
                self._check_space(txn, len(records))
            self._store.append_records(txn, records)

        if records:
            self._store.write(append, durable=True)
            self._appended += len(records)
        return verdicts

    def _check_space(self, txn: lmdb.Transaction, size: int) -> None:
        """Raises `StorageFull` when appending `size` bytes would leave less than the reserve.
        Measured (`Store.space_left`) at every commit once the last measure, less what was
        appended since, is within twice the reserve; farther away at least every
        `SPACE_CHECK_S` (what the sessionizer or other fronts write meanwhile is not counted:
        it would have to take a whole reserve in that time to matter)."""
        now = time.monotonic()
        left = self._space_left - self._appended
        if left - size < 2 * self._reserve or now - self._space_at >= SPACE_CHECK_S:
            left = self._space_left = self._store.space_left(txn)
            self._space_at = now
            self._appended = 0
        if left < self._reserve + size:
            raise StorageFull(
                f"less than the reserve of {self._reserve} bytes ([storage] reserve) "
                "is left in the LMDB map or on its disk"
            )

    def _commit_failed(self, err: Exception, requests: int) -> str:
        """Count a failed commit; log once per episode (a full disk under load would
        otherwise log every batch); `/readyz` fails until a commit succeeds again."""
        reason = storage_failure(err)
        self._metrics.wal_commit_failed(reason)
        self._failed_batches += 1
        if self._failing != reason:
            self._readiness.set(self._failing or reason, False)
            self._readiness.set(reason)
            self._failing = reason
            if reason == "storage_full":
                log.error("storage is full: ingest answers 503 until space is freed (free disk "
                          "space, raise [storage] max_map_size, or lower [storage] retention)",
                          extra={"error": str(err), "requests": requests,
                                 "data_dir": str(self._store.path)})  # fmt: skip
            else:
                where = {"requests": requests, "data_dir": str(self._store.path)}
                log.exception("WAL commit failed: ingest answers 503 until commits succeed",
                              extra=where)  # fmt: skip
        return reason

    def _commit_recovered(self) -> None:
        failed = {"after": self._failing, "failed_batches": self._failed_batches}
        log.warning("WAL commits succeed again", extra=failed)
        self._readiness.set(self._failing or "", False)
        self._failing = None
        self._failed_batches = 0
