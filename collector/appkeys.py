"""Typed keys for the state an `aiohttp` application shares (no module-level singletons).

`create_app` fills them; handlers read `request.app[KEY]`. The types are imported for the
type checker only, so every module can import this one without an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collector.batcher import Batcher
    from collector.config import Settings
    from collector.metrics import Metrics
    from collector.pipeline import Pipeline
    from collector.readiness import Readiness
    from collector.receivers import Ingest
    from collector.store import Store

STORE: web.AppKey[Store] = web.AppKey("store")
SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
# Set only on an app that ingests (a front) / that runs the sessionizer loop.
BATCHER: web.AppKey[Batcher] = web.AppKey("batcher")
PIPELINE: web.AppKey[Pipeline] = web.AppKey("pipeline")
# What the receivers use per request (settings, metrics, body budget, rate limits, batcher),
# in one object: one lookup a request.
INGEST: web.AppKey[Ingest] = web.AppKey("ingest")
# Why /readyz fails right now (recovering, overloaded, draining), shared by the roles.
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
