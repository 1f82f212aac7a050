"""Every Prometheus metric of rumline, defined once (DESIGN.md, "Prometheus metrics").

One `Metrics` instance per process, stored in `app[METRICS]`; each instance owns its
`CollectorRegistry`, so tests can build as many as they like.

Who calls what:

- receivers (fronts): `beacon_received(receiver, n)`, `beacon_rejected(receiver, reason, n)`
- batcher (fronts): `observe_batch(size, commit_seconds)`, `set_queue_depth(n)`
- sessionizer loop: `observe_closed(result)` after every `ingest` / `flush`,
  `set_sessions_open(n)`
- `/metrics` (scrape): `set_lmdb_used_bytes(n)` from the store, then `exposition(accept)`
- every HTTP request (middleware added by `setup_metrics_route`): `observe_request(route, s)`

Several processes (`rumline serve --workers N`): N fronts share the port, so a scrape reaches
one front at random. We use prometheus-client's multiprocess mode: the parent sets
`PROMETHEUS_MULTIPROC_DIR` to an empty directory before starting the children, every process
writes its values to its own mmap file there, and whichever front answers `/metrics` merges
all files (`MultiProcessCollector`). Counters and histograms are summed over processes (also
over dead ones, so a restarted worker does not reset a counter); gauges use the modes set
below. When a child exits the parent calls `mark_process_dead(pid)`. With one process and no
`PROMETHEUS_MULTIPROC_DIR`, the instance's own registry is served directly.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    values,
)
from prometheus_client.exposition import choose_encoder

from collector.appkeys import METRICS, STORE

if TYPE_CHECKING:
    from collector._core import IngestResult

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"

# Web-vital rating thresholds (DESIGN.md, docs/sessionizer.md §6): (good ≤, needs-improvement ≤).
# The histogram's buckets are their union, so for every vital `le` at its two thresholds gives
# the good / needs-improvement / poor split directly. Milliseconds, except CLS (unitless).
VITAL_THRESHOLDS: dict[str, tuple[float, float]] = {
    "LCP": (2500, 4000),
    "INP": (200, 500),
    "CLS": (0.1, 0.25),
    "FCP": (1800, 3000),
    "TTFB": (800, 1800),
}
VITAL_BUCKETS = tuple(sorted({t for pair in VITAL_THRESHOLDS.values() for t in pair}))

# Requests per group commit; powers of two up to the largest batch the batcher forms.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# fsync'ed LMDB commits: ~1 ms typical (DESIGN), seconds when the disk stalls.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

# Label values the core produces; anything else is folded into `other` so a bug or a new
# variant can never grow the label set without bound.
ACTION_TYPES = frozenset({"load", "xhr", "custom"})
APDEX_CATEGORIES = frozenset({"satisfied", "tolerating", "frustrated"})
ERROR_KINDS = frozenset({"js", "request", "custom"})
END_REASONS = frozenset(
    {"timeout", "duration_limit", "action_limit", "end_event", "open_limit"}
)


def multiprocess_dir() -> str | None:
    """The directory of prometheus-client's multiprocess mode, or None in single-process mode."""
    return os.environ.get(MULTIPROC_ENV) or None


def mark_process_dead(pid: int) -> None:
    """Call in the parent when a child process exits (drops its `live*` gauge values)."""
    path = multiprocess_dir()
    if path:
        multiprocess.mark_process_dead(pid, path)


class AppLabels:
    """Maps app names to bounded label values.

    With a configured app list only those apps get their own label; without one, the first
    `max_apps` distinct apps seen by this process do. Every other app is `other`.
    """

    def __init__(self, apps: Iterable[str] = (), max_apps: int = 100) -> None:
        self._fixed = frozenset(apps)
        self._seen: set[str] = set()
        self._max = max_apps

    def __call__(self, app: str) -> str:
        if self._fixed:
            return app if app in self._fixed else OTHER
        if app in self._seen:
            return app
        if len(self._seen) < self._max and app != OTHER:
            self._seen.add(app)
            return app
        return OTHER


class HistogramObserver:
    """`observe` of one labelled histogram child, for the once-a-request durations: the same
    writes as prometheus-client's `Histogram.observe` (the sum, then the first bucket whose
    bound is not below the value, into the child's own value objects, in memory or in the
    multiprocess files alike), without its scan of the bounds in Python and its checks
    (~1 µs a request). prometheus-client is pinned; tests/test_metrics.py compares the two."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._bounds = child._upper_bounds  # ends with +Inf: every value has a bucket
        self._buckets = child._buckets
        self._sum = child._sum

    def __call__(self, amount: float) -> None:
        self._sum.inc(amount)
        self._buckets[bisect_left(self._bounds, amount)].inc(1)


def _bounded(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER


class Metrics:
    """All rumline_* metrics, registered in this instance's own registry.

    `apps`: the configured app allowlist (label values are limited to it); empty means
    "accept every app" and labels are capped at the first `max_apps` apps, then `other`.
    """

    def __init__(self, apps: Iterable[str] = (), max_apps: int = 100) -> None:
        _ensure_value_class()
        self.registry = CollectorRegistry(auto_describe=True)
        self.app_label = AppLabels(apps, max_apps)
        r = self.registry

        # --- its health ---
        self.beacons_received = Counter(
            "rumline_beacons_received_total",
            "Beacon requests received, by receiver (native, boomerang, faro, otlp).",
            ["receiver"], registry=r,
        )
        self.beacons_rejected = Counter(
            "rumline_beacons_rejected_total",
            "Beacon requests rejected with a 4xx/5xx, by receiver and reason.",
            ["receiver", "reason"], registry=r,
        )
        self.request_duration = Histogram(
            "rumline_request_duration_seconds",
            "HTTP request handling time, by route (the route pattern, never a raw URL).",
            ["route"], buckets=REQUEST_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "rumline_batch_size",
            "Requests per group commit (one WAL write transaction).",
            buckets=BATCH_BUCKETS, registry=r,
        )
        self.wal_commit_seconds = Histogram(
            "rumline_wal_commit_seconds",
            "Time of one WAL write transaction including fsync.",
            buckets=COMMIT_BUCKETS, registry=r,
        )
        self.wal_commit_failures = Counter(
            "rumline_wal_commit_failures_total",
            "Group commits that failed, by reason (storage_full: the LMDB map or its disk "
            "would leave less than [storage] reserve; storage_error: the disk refused).",
            ["reason"], registry=r,
        )
        self.sessions_expired = Counter(
            "rumline_sessions_expired_total",
            "Closed sessions deleted by retention ([storage] retention).",
            registry=r,
        )
        self.queue_depth = Gauge(
            "rumline_queue_depth",
            "Requests waiting for the next group commit (summed over front processes).",
            registry=r, multiprocess_mode="livesum",
        )
        self.sessions_open = Gauge(
            "rumline_sessions_open",
            "Open sessions held by the sessionizer.",
            registry=r, multiprocess_mode="livemax",
        )
        self.sessions_closed = Counter(
            "rumline_sessions_closed_total",
            "Sessions closed, by end_reason (timeout, duration_limit, action_limit, end_event, "
            "open_limit).",
            ["end_reason"], registry=r,
        )
        self.lmdb_used_bytes = Gauge(
            "rumline_lmdb_used_bytes",
            "Bytes of the LMDB map in use (last page number × page size).",
            registry=r, multiprocess_mode="livemax",
        )
        self.events_dropped = Counter(
            "rumline_events_dropped_total",
            "Events dropped inside accepted beacons, by reason (unknown_type, bad_event).",
            ["reason"], registry=r,
        )
        # The labelled children the per-request calls use, looked up once per label value:
        # `.labels(...)` costs ~1 µs (str() of every value, a lock, a dict), a beacon request
        # used it twice. The label values are bounded (receivers, reasons, route patterns).
        self._received: dict[str, Counter] = {}
        self._rejected: dict[tuple[str, str], Counter] = {}
        self._durations: dict[str, Histogram] = {}
        self._duration_observers: dict[str, HistogramObserver] = {}

        # --- the sites' experience (counted when a session closes) ---
        self.actions = Counter(
            "rumline_actions_total",
            "User actions of closed sessions by app, type and Apdex category; "
            "Apdex = (satisfied + tolerating / 2) / all.",
            ["app", "type", "apdex"], registry=r,
        )
        self.errors = Counter(
            "rumline_errors_total",
            "Errors of closed sessions by app and kind (js, request, custom).",
            ["app", "kind"], registry=r,
        )
        self.web_vital = Histogram(
            "rumline_web_vital",
            "Web vitals of closed sessions (ms; CLS unitless); buckets are the rating "
            "thresholds: LCP 2500/4000, INP 200/500, CLS 0.1/0.25, FCP 1800/3000, TTFB 800/1800.",
            ["app", "name"], buckets=VITAL_BUCKETS, registry=r,
        )

    # --- fronts ---

    def beacon_received(self, receiver: str, n: int = 1) -> None:
        """Count `n` beacon requests arriving at `receiver` (before validation)."""
        child = self._received.get(receiver)
        if child is None:
            child = self._received[receiver] = self.beacons_received.labels(receiver)
        child.inc(n)

    def beacon_rejected(self, receiver: str, reason: str, n: int = 1) -> None:
        """Count `n` rejected requests; `reason` is the JSON error code sent to the client
        (a fixed set: the core's verdicts plus the front's too_large, rate_limited, ...)."""
        child = self._rejected.get((receiver, reason))
        if child is None:
            child = self._rejected[receiver, reason] = self.beacons_rejected.labels(
                receiver, reason
            )
        child.inc(n)

    def observe_batch(self, size: int, commit_seconds: float) -> None:
        """One group commit: `size` requests written in a WAL transaction of `commit_seconds`."""
        self.batch_size.observe(size)
        self.wal_commit_seconds.observe(commit_seconds)

    def wal_commit_failed(self, reason: str) -> None:
        """One group commit failed (its requests were answered 503)."""
        self.wal_commit_failures.labels(reason).inc()

    def sessions_expired_inc(self, n: int) -> None:
        self.sessions_expired.inc(n)

    def set_queue_depth(self, n: int) -> None:
        """Requests currently waiting for a WAL commit in this process."""
        self.queue_depth.set(n)

    def observe_request(self, route: str, seconds: float) -> None:
        """One HTTP request; `route` must be a route pattern, not a URL."""
        self.request_duration_observer(route)(seconds)

    def request_duration_observer(self, route: str) -> HistogramObserver:
        """`observe` of the `request_duration_seconds` histogram of one route pattern, for
        callers that keep it (e.g. per aiohttp resource)."""
        observer = self._duration_observers.get(route)
        if observer is None:
            child = self.request_duration_child(route)
            observer = self._duration_observers[route] = HistogramObserver(child)
        return observer

    def request_duration_child(self, route: str) -> Histogram:
        """The `request_duration_seconds` histogram of one route pattern (for callers that
        keep it, e.g. per aiohttp resource)."""
        child = self._durations.get(route)
        if child is None:
            child = self._durations[route] = self.request_duration.labels(route)
        return child

    # --- sessionizer ---

    def observe_closed(self, result: IngestResult) -> None:
        """Count what one `Sessionizer.ingest` / `flush` call returned: closed sessions by
        end_reason, their actions / errors / vitals (the core's metric tuples), and events
        dropped inside accepted beacons. Call once per call into the core."""
        for session in result.closed:
            self.sessions_closed.labels(_bounded(session.end_reason or "", END_REASONS)).inc()
        for app, typ, apdex, count in result.actions:
            self.actions.labels(
                self.app_label(app), _bounded(typ, ACTION_TYPES), _bounded(apdex, APDEX_CATEGORIES)
            ).inc(count)
        for app, kind, count in result.errors:
            self.errors.labels(self.app_label(app), _bounded(kind, ERROR_KINDS)).inc(count)
        for app, name, value in result.vitals:
            # Only the rated vitals: their buckets mean something, and a client-chosen name
            # must never become a label value.
            if name in VITAL_THRESHOLDS:
                self.web_vital.labels(self.app_label(app), name).observe(value)
        for reason, count in result.dropped.items():
            self.events_dropped.labels(reason).inc(count)

    def set_sessions_open(self, n: int) -> None:
        """Open sessions after the last core call (`Sessionizer.open_count()`)."""
        self.sessions_open.set(n)

    def set_lmdb_used_bytes(self, n: int) -> None:
        self.lmdb_used_bytes.set(n)

    # --- exposition ---

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape body and its content type (OpenMetrics when the scraper asks for it)."""
        encoder, content_type = choose_encoder(accept)
        path = multiprocess_dir()
        if path:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path)
            return encoder(registry), content_type
        return encoder(self.registry), content_type


def _ensure_value_class() -> None:
    # prometheus-client picks its value storage (in-memory or mmap file) when the package is
    # imported. If the parent imported it before it set PROMETHEUS_MULTIPROC_DIR and then forked,
    # the children would silently keep in-memory values that no scrape ever sees; re-choose.
    wants_mmap = multiprocess_dir() is not None
    if getattr(values.ValueClass, "_multiprocess", False) != wants_mmap:
        values.ValueClass = values.get_value_class()


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    store = request.app.get(STORE)
    if store is not None:
        metrics.set_lmdb_used_bytes(store.used_bytes())
    body, content_type = metrics.exposition(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


@web.middleware
async def request_duration_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Times every request into `rumline_request_duration_seconds{route}`."""
    started = time.perf_counter()
    try:
        return await handler(request)
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics = request.app.get(METRICS)
        if metrics is not None:
            metrics.observe_request(route, time.perf_counter() - started)


def setup_metrics_route(app: web.Application) -> None:
    """Add `GET /metrics` (served from `app[METRICS]`) and the request-duration middleware.

    Call before the app starts; `app[METRICS]` may be set later (e.g. in a cleanup context).
    """
    app.router.add_get("/metrics", metrics_handler, name="metrics")
    app.middlewares.append(request_duration_middleware)
