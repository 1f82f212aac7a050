"""The native beacon receiver (DESIGN.md "Native beacon format, v1").

`POST /beacon`: the body is one beacon object, a JSON array of them, or NDJSON, sent as
`text/plain` (what `navigator.sendBeacon` sends for a string: no CORS preflight),
`application/json`, or `application/x-www-form-urlencoded` with the JSON in field `d`;
optionally gzip-compressed. `GET /beacon?d=<urlencoded JSON>` is the image fallback.
Success is `204`, after the beacon is in a committed WAL transaction.

The JSON itself is never parsed here: the body bytes go to the core (`_core.prepare`), which
validates them once per group-commit batch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

import orjson
from aiohttp import web

from collector.appkeys import INGEST
from collector.batcher import StorageError
from collector.receivers import (
    Rejected,
    accept,
    buffered_body,
    check_app_origin,
    client_ip,
    preflight,
    read_body,
    receiver_route,
    storage_rejected,
    submit,
)

if TYPE_CHECKING:
    from collector.config import Settings

RECEIVER = "native"
METHODS = "POST, GET, OPTIONS"
# Content types whose body is the beacon JSON itself. No Content-Type at all (a Blob or
# ArrayBuffer given to sendBeacon) is treated the same.
RAW_TYPES = frozenset(
    {"text/plain", "application/json", "application/x-ndjson", "application/octet-stream"}
)
FORM_TYPE = "application/x-www-form-urlencoded"
_APP_FIELD = re.compile(rb'"app"\s*:\s*"([A-Za-z0-9._-]{1,64})"')


def form_field_d(body: bytes) -> bytes:
    """The decoded value of field `d` of a urlencoded form body. A body that is plain JSON
    (what `curl -d '{…}'` sends under this content type) is taken as it is."""
    for part in body.split(b"&"):
        if part.startswith(b"d="):
            return unquote_to_bytes(part[2:].replace(b"+", b" "))
    if body.lstrip()[:1] in (b"{", b"["):
        return body
    raise Rejected(400, "missing_d", "form body has no field `d`")


def check_app_rate(request: web.Request, app: str) -> None:
    """The per-app token bucket (`ingest.rate_limit_app`); raises `Rejected` (429)."""
    limits = request.app[INGEST].app_limits
    if limits is None:
        return
    wait = limits.take(app)
    if wait:
        retry_after = str(max(1, round(wait + 0.5)))
        raise Rejected(429, "rate_limited", f"too many beacons for app {app!r}",
                       {"Retry-After": retry_after})  # fmt: skip


def _check_native_app_rate(request: web.Request, body: bytes) -> None:
    # The JSON is parsed once, by the core, per batch; for the rate limit (off by default)
    # the first `"app": "…"` of the body is enough. A client can only move itself to
    # another app's bucket this way; the per-IP limit still holds.
    if request.app[INGEST].app_limits is not None and (match := _APP_FIELD.search(body)):
        check_app_rate(request, match.group(1).decode())


def body_apps(body: bytes) -> set[str]:
    """The apps a native body speaks for, to check the Origin against each app's allowlist.
    Parsed fully (not with `_APP_FIELD`): an escaped name or a second beacon must not slip by.
    Only done when per-app origins are configured and the request has an Origin."""
    try:
        doc = orjson.loads(body)
        items = doc if isinstance(doc, list) else [doc]
    except orjson.JSONDecodeError:
        try:
            items = [orjson.loads(line) for line in body.splitlines() if line.strip()]
        except orjson.JSONDecodeError:
            raise Rejected(400, "bad_json", "body is not valid JSON (one object, an array "
                                            "or NDJSON)") from None  # fmt: skip
    apps = (item.get("app") for item in items if isinstance(item, dict))
    return {app for app in apps if isinstance(app, str)}


def _check_native_app_origin(request: web.Request, settings: Settings, body: bytes) -> None:
    if settings.app_origins and "Origin" in request.headers:
        check_app_origin(request, body_apps(body))


def check_rate(request: web.Request) -> None:
    ingest = request.app[INGEST]
    limits = ingest.ip_limits
    if limits is None:
        return
    wait = limits.take(client_ip(request, ingest.settings))
    if wait:
        retry_after = str(max(1, round(wait + 0.5)))
        raise Rejected(429, "rate_limited", "too many beacons from this address",
                       {"Retry-After": retry_after})  # fmt: skip


@receiver_route(RECEIVER)
async def beacon_post(request: web.Request, recv_ms: int, headers: dict[str, str]) -> web.Response:
    # The hot path of the collector: checks that are off by default cost one attribute test,
    # and the body is awaited only when it has not all arrived yet.
    ingest = request.app[INGEST]
    settings = ingest.settings
    if ingest.ip_limits is not None:
        check_rate(request)
    max_body, max_decompressed = settings.max_body_bytes, settings.max_decompressed_bytes
    body = buffered_body(request, max_body, max_decompressed)
    if body is None:
        body = await read_body(request, max_body, max_decompressed)
    content_type = request.headers.get("Content-Type")
    # An exact `text/plain` (and no Content-Type) needs no parsing of the header.
    if content_type is not None and content_type not in RAW_TYPES \
            and request.content_type not in RAW_TYPES:  # fmt: skip
        if request.content_type != FORM_TYPE:
            raise Rejected(415, "unsupported_media_type",
                           f"Content-Type {request.content_type!r} is not text/plain, "
                           f"application/json or {FORM_TYPE}")  # fmt: skip
        body = form_field_d(body)
    _check_native_app_origin(request, settings, body)
    if ingest.app_limits is not None:
        _check_native_app_rate(request, body)
    # `accept`, inlined: one coroutine fewer a beacon.
    future = submit(request, ingest, recv_ms, body)
    try:
        verdict = await future
    except StorageError as err:
        raise storage_rejected(err) from None
    if verdict is not None:
        raise Rejected(400, *verdict)
    return web.Response(status=204, headers=headers or None)


@receiver_route(RECEIVER)
async def beacon_get(request: web.Request, recv_ms: int, headers: dict[str, str]) -> web.Response:
    settings = request.app[INGEST].settings
    check_rate(request)
    d = request.query.get("d")
    if d is None:
        raise Rejected(400, "missing_d", "query has no parameter `d`")
    body = d.encode()
    if len(body) > settings.max_body_bytes:
        raise Rejected(413, "too_large", f"`d` is over {settings.max_body_bytes} bytes")
    _check_native_app_origin(request, settings, body)
    _check_native_app_rate(request, body)
    await accept(request, RECEIVER, recv_ms, body)
    return web.Response(status=204, headers=headers or None)


async def beacon_options(request: web.Request) -> web.Response:
    return preflight(request, RECEIVER, METHODS)


def setup_native_routes(app: web.Application) -> None:
    app.router.add_post("/beacon", beacon_post, name="beacon")
    app.router.add_get("/beacon", beacon_get, name="beacon_get", allow_head=False)
    app.router.add_route("OPTIONS", "/beacon", beacon_options, name="beacon_preflight")
