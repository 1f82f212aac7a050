"""`/healthz` (the process answers) and `/readyz` (it should get traffic).

`/readyz` fails (503) while this process is recovering, overloaded or draining, and, on a
front of `--workers N`, while the sessionizer process is not running (it reports its state
in LMDB, see store.py).
"""

from __future__ import annotations

import os

import orjson
from aiohttp import web

from collector.appkeys import PIPELINE, READINESS, STORE


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def _sessionizer_reasons(request: web.Request) -> list[str]:
    status = request.app[STORE].sessionizer_status()
    if status is None or status.get("state") == "stopped":
        return ["sessionizer_down"]
    if status.get("state") == "recovering":
        return ["recovering"]
    try:
        os.kill(int(status["pid"]), 0)  # a status left by a sessionizer that was killed
    except ProcessLookupError:
        return ["sessionizer_down"]
    except PermissionError:
        pass
    return []


async def readyz(request: web.Request) -> web.Response:
    reasons = request.app[READINESS].reasons
    if PIPELINE not in request.app:  # a front of --workers N: ask the sessionizer process
        reasons = sorted(set(reasons) | set(_sessionizer_reasons(request)))
    if reasons:
        body = orjson.dumps({"status": "not_ready", "reasons": reasons})
        return web.Response(status=503, body=body, content_type="application/json")
    return web.Response(body=b'{"status":"ready"}', content_type="application/json")


def setup_health_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
