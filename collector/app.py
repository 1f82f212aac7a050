"""`create_app(settings)`: the aiohttp application of one process, not yet running.

Roles (`--workers N`, DESIGN "The WAL is the queue"):

- `both` (`--workers 1`, the default): ingest and sessionize in one process.
- `front`: receivers, query API, metrics, health; appends to the WAL, never sessionizes.
- `sessionizer`: the WAL-consuming loop only; it is run without a listening socket.

Resources are cleanup contexts, entered in this order and left in reverse:
store → sessionizer loop → group-commit batcher. So at shutdown the batcher commits every
queued request first, then the loop consumes the WAL to its end and checkpoints, then the
LMDB environment closes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Literal

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.log import access_logger

from collector.appkeys import (
    BATCHER,
    INGEST,
    METRICS,
    PIPELINE,
    READINESS,
    SETTINGS,
    STORE,
)
from collector.batcher import Batcher
from collector.config import Settings
from collector.health import setup_health_routes
from collector.metrics import HistogramObserver, Metrics, metrics_handler
from collector.pipeline import Pipeline
from collector.query import setup_query_routes
from collector.readiness import Readiness
from collector.receivers import Ingest
from collector.receivers.boomerang import setup_boomerang_routes
from collector.receivers.faro import setup_faro_routes
from collector.receivers.native import setup_native_routes
from collector.receivers.otlp import setup_otlp_routes
from collector.retention import Retention
from collector.static import setup_agent_route
from collector.store import Store

log = logging.getLogger(__name__)

Role = Literal["both", "front", "sessionizer"]
# aiohttp's default is 10s: a slowloris refused with 408 would keep its connection that long.
LINGERING_S = 2.0


class RequestTimer(AbstractAccessLogger):
    """Feeds `rumline_request_duration_seconds{route}` from the request time aiohttp measures
    for its access log. One call per request, where any middleware takes aiohttp off its
    fast path: with `metrics.setup_metrics_route`'s middleware the collector answered ~25%
    fewer beacons per second (measured with loadtests/bench_ingest.py's client)."""

    metrics: Metrics | None = None  # set by `_request_timer` (one class per app)
    # The observer of each route's histogram, by aiohttp resource (the same few objects for
    # the life of the app): one dict lookup a request.
    observers: dict[object, HistogramObserver]

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        match_info = getattr(request, "_match_info", None)
        if match_info is None:
            # aiohttp answered a request it could not parse (bad request line, too many or
            # too long headers, a NUL in a header) before any route: count it, so that a flood
            # of them shows, under receiver "http".
            metrics.beacon_rejected("http", "bad_http" if response.status < 500 else "error")
            metrics.observe_request("unparsed", time)
            return
        resource = match_info.route.resource
        observer = self.observers.get(resource)
        if observer is None:
            route = resource.canonical if resource is not None else "unmatched"
            observer = self.observers[resource] = metrics.request_duration_observer(route)
        observer(time)


def _request_timer(metrics: Metrics) -> type[RequestTimer]:
    return type("BoundRequestTimer", (RequestTimer,), {"metrics": metrics, "observers": {}})


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.sync:
        log.warning("storage.sync is off: acknowledged beacons are not durable on power loss")
    store = Store(settings.data_dir, map_size=settings.map_size,
                  max_map_size=settings.max_map_size, sync=settings.sync)  # fmt: skip
    app[STORE] = store
    yield
    store.close()


async def _pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pipeline = Pipeline(app[STORE], settings, app[METRICS], app[READINESS])
    app[PIPELINE] = pipeline
    pipeline.start()
    yield
    # Within the shutdown budget, after in-flight requests (half of it) and the last commit.
    # What it cannot consume in time stays in the WAL and is replayed at the next start.
    await pipeline.close(settings.shutdown_timeout_ms / 1000 * 0.4)


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    retention = Retention(app[STORE], settings.retention_ms, settings.retention_interval_ms,
                          on_expired=app[METRICS].sessions_expired_inc)  # fmt: skip
    retention.start()
    yield
    await retention.close()


async def _batcher_ctx(app: web.Application) -> AsyncIterator[None]:
    pipeline = app.get(PIPELINE)
    batcher = Batcher(
        app[STORE], app[SETTINGS], app[METRICS], app[READINESS],
        on_commit=pipeline.notify if pipeline is not None else None,
    )  # fmt: skip
    app[BATCHER] = batcher
    app[INGEST].batcher = batcher
    batcher.start()
    yield
    await batcher.close()


def create_app(settings: Settings, role: Role = "both") -> web.Application:
    metrics = Metrics(settings.metrics_apps, settings.metrics_max_apps)
    app = web.Application(
        client_max_size=settings.max_large_body_bytes,
        handler_args={
            # Also how long a new connection may take to send its request headers.
            "keepalive_timeout": settings.keepalive_timeout_ms / 1000,
            # After a refusal whose body was not read (413, 408), read and discard the rest
            # for at most this long so the client sees the answer, then close.
            "lingering_time": LINGERING_S,
            # Receivers inflate gzip themselves, so that a size cap applies before and after.
            "auto_decompress": False,
            # aiohttp's request-line limit is 8 KiB; `GET /beacon?d=` carries a whole beacon.
            "max_line_size": settings.max_body_bytes + 4096,
            # No access log lines (they would cost more than a beacon); the timer only.
            "access_log_class": _request_timer(metrics),
            "access_log": access_logger,
        },
    )
    app[SETTINGS] = settings
    app[READINESS] = Readiness()
    app[METRICS] = metrics
    app.cleanup_ctx.append(_store_ctx)
    if role in ("both", "sessionizer"):
        app.cleanup_ctx.append(_pipeline_ctx)
        if settings.retention_ms > 0:
            app.cleanup_ctx.append(_retention_ctx)
    if role in ("both", "front"):
        app.cleanup_ctx.append(_batcher_ctx)
        # The body budget and the rate limits (each front takes 1/N of every limit).
        app[INGEST] = Ingest(settings, metrics)
        setup_health_routes(app)
        app.router.add_get("/metrics", metrics_handler, name="metrics")
        setup_query_routes(app)
        setup_native_routes(app)
        setup_agent_route(app)
        setup_otlp_routes(app)
        setup_faro_routes(app)
        setup_boomerang_routes(app)
    return app
