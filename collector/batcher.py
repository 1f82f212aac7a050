"""Group commit: beacon requests queue up; one `_core.prepare` call and one fsync'ed LMDB write
transaction per batch; every request's future resolves only after that commit.

While a batch is being validated and committed (in a worker thread), new requests queue for
the next batch, so under load one fsync serves many requests and the batch size adapts to the
disk's latency by itself. The queue is bounded: when full, `submit` raises `Overloaded` and
the front answers 503 with Retry-After (DESIGN: "a 2xx means durable", so there is nothing
to acknowledge early).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
        self._requests: list[Request] = []
        self._futures: list[asyncio.Future[Verdict]] = []
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        # One thread: commits are serial anyway (one LMDB writer), and a batch formed while
        # the previous one commits is exactly what group commit wants.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="wal-commit")
        self._task: asyncio.Task[None] | None = None
        self._commit_delay_s = settings.commit_delay_ms / 1000
        self._last_batch = 0
        self._window_target = 0
        self._window_full = asyncio.Event()
        # What the sessionizer may still write when ingest stops for lack of space.
        self._reserve = settings.storage_reserve_bytes
        self._failing: str | None = None  # storage_full / storage_error while commits fail
        self._failed_batches = 0

    @property
    def depth(self) -> int:
        return len(self._requests)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="group-commit")

    async def close(self) -> None:
        """Stop taking requests, commit every queued one, stop the commit thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

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
        requests = self._requests
        if len(requests) >= self._queue_max:
            self._readiness.set("overloaded")
            raise Overloaded("overloaded", 1)
        future: asyncio.Future[Verdict] = self._loop.create_future()
        requests.append((recv_ms, ip, user_agent, flags, body))
        self._futures.append(future)
        self._queued_bytes += len(body)
        if not self._wakeup.is_set():
            self._wakeup.set()
        if self._window_target and len(requests) >= self._window_target:
            self._window_full.set()
        return future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._requests:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._commit_delay_s and self._last_batch > 1 and not self._closing:
                await self._gather_window()
            requests, futures = self._take_batch()
            self._last_batch = len(requests)
            self._metrics.set_queue_depth(len(self._requests))
            started = time.perf_counter()
            try:
                verdicts = await loop.run_in_executor(self._executor, self._commit, requests)
            except Exception as err:  # a disk error must fail these requests, not the loop
                reason = self._commit_failed(err, len(requests))
                for future in futures:
                    if not future.done():
                        future.set_exception(StorageError(str(err), reason))
                continue
            if self._failing is not None:
                self._commit_recovered()
            self._metrics.observe_batch(len(requests), time.perf_counter() - started)
            for future, verdict in zip(futures, verdicts, strict=True):
                if not future.done():  # the client may have gone; its beacon is stored anyway
                    future.set_result(verdict)
            if self._on_commit is not None:
                self._on_commit()
            if len(self._requests) < self._queue_max // 2:
                self._readiness.set("overloaded", False)

    async def _gather_window(self) -> None:
        """Under concurrent load, wait up to `commit_delay` for as many requests as the last
        batch had. Senders whose beacons were just acknowledged send their next ones within
        a round trip; without this pause they would miss the commit that starts now and the
        in-flight requests would split into two half-size batches, one fsync each."""
        if len(self._requests) >= self._last_batch:
            return
        self._window_target = self._last_batch
        self._window_full.clear()
        try:
            await asyncio.wait_for(self._window_full.wait(), self._commit_delay_s)
        except TimeoutError:
            pass
        finally:
            self._window_target = 0

    def _take_batch(self) -> tuple[list[Request], list[asyncio.Future[Verdict]]]:
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
        """Worker thread: validate the batch in the core, then append it to the WAL (fsync),
        unless that would leave less than the reserve (then `StorageFull`)."""
        records, verdicts, _events = prepare(requests, self._max_events, self._mask_ip)

        def append(txn: lmdb.Transaction) -> None:
            if self._reserve and self._store.space_left(txn) < self._reserve + len(records):
                raise StorageFull(
                    f"less than the reserve of {self._reserve} bytes ([storage] reserve) "
                    "is left in the LMDB map or on its disk"
                )
            self._store.append_records(txn, records)

        if records:
            self._store.write(append)
        return verdicts

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
