"""Grafana Faro: `POST /collect` (DESIGN.md "Other receivers", WIRE-FORMATS.md).

The Faro web SDK posts `{meta, events?, measurements?, exceptions?, logs?, traces?}` as JSON
(fetch, keepalive, optionally gzip), with `x-faro-session-id` and, when the site configured
one, `x-api-key`. It understands `202`, and `429` + `Retry-After` (it backs off). Because of
the JSON type and the custom headers every cross-origin post is preflighted.

Mapping onto native events (seen from faro-web-sdk 2.12 in Chromium, see the browser test):

- `meta.app.name` → app; `meta.session.id` (else the `x-faro-session-id` header) → session;
  `meta.user.email`, else `username`, else `id` → user tag; `meta.page.url` → page;
  `meta.browser.viewportWidth × viewportHeight` → screen (Faro sends no screen size).
- event `faro.performance.navigation` (one per page load, timings as strings) → a `load`
  action "loading of page /path" with its timings;
- event `faro.performance.resource` → for `fetch`/`xmlhttprequest` an `xhr` action named
  "fetch /path" / "XHR /path" with its status (Faro does not know the method); status ≥ 400 a
  `request` error; other initiators go to the waterfall of a load in the same request;
- other events except Faro's session bookkeeping (`session_*`) → `custom` actions;
- `measurements` of type `web-vitals` → vitals (LCP, FCP, CLS, INP, TTFB, FID); other
  measurements → vitals named `<type>.<key>` (unrated);
- `exceptions` → `js` errors with message `Type: value` and the frames as a stack;
- `logs` at level `error` → `custom` errors (other levels are not session data);
- `traces` (OTLP, from faro-web-tracing) → as `/v1/traces`, with this session as default;
  a resource event for a URL that a trace span already covers is skipped (no duplicate).
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Any

from aiohttp import web

from collector.appkeys import SETTINGS
from collector.receivers import (
    Rejected,
    preflight,
    read_body,
    receiver_route,
)
from collector.receivers.native import check_rate
from collector.receivers.otlp import (
    Beacons,
    app_name,
    convert_traces,
    decode_json,
    number,
    path_of,
    submit_beacons,
    text,
    valid_sid,
)

RECEIVER = "faro"
METHODS = "POST, OPTIONS"
ALLOW_HEADERS = ("content-type", "x-api-key", "x-faro-session-id", "content-encoding")
# Cross-origin JS reads only safelisted response headers: the SDK needs these two.
EXPOSE_HEADERS = "Retry-After, X-Faro-Session-Status"
VITALS = {"lcp": "LCP", "fcp": "FCP", "cls": "CLS", "inp": "INP", "ttfb": "TTFB", "fid": "FID"}
NAV_TIMINGS = {
    "ttfb": "ttfb", "duration": "load_end", "pageLoadTime": "page_load",
    "dnsLookupTime": "dns", "tcpHandshakeTime": "connect", "tlsNegotiationTime": "tls",
    "requestTime": "request", "responseTime": "response", "fetchTime": "fetch",
    "documentParsingTime": "document_parsing", "domProcessingTime": "dom_processing",
    "domContentLoadHandlerTime": "dom_content_loaded_handler", "onLoadTime": "onload",
    "transferSize": "transfer_size",
}  # fmt: skip
INITIATOR_NAMES = {"fetch": "fetch", "xmlhttprequest": "XHR"}
MAX_ITEMS = 1000  # per list: a Faro batch holds at most 50 items, leave room for bursts


def timestamp_ms(value: object) -> int | None:
    """Faro's ISO 8601 timestamps (`2026-11-26T04:46:05.931Z`) as epoch ms."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        ms = int(datetime.fromisoformat(value).timestamp() * 1000)
    except (ValueError, OverflowError, OSError):
        return None
    return ms if 0 < ms <= 10**13 else None


def items(payload: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = payload.get(key)
    if not isinstance(value, list):
        return []
    return [item for item in value[:MAX_ITEMS] if isinstance(item, dict)]


def sub(value: object, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def whole_ms(value: object) -> int | None:
    n = number(value)
    return int(n) if n is not None and 0 <= n <= 86_400_000 else None


def with_start(event: dict[str, Any], start: int | None) -> dict[str, Any]:
    if start is not None:
        event["start"] = start
    return event


def user_tag(meta: dict[str, Any]) -> str | None:
    user = sub(meta, "user")
    for key in ("email", "username", "id"):
        tag = text(sub(user, key))
        if tag:
            return tag
    return None


def stack_of(exception: dict[str, Any]) -> str | None:
    frames = sub(sub(exception, "stacktrace"), "frames")
    if not isinstance(frames, list):
        return None
    lines = []
    for frame in frames[:100]:
        if not isinstance(frame, dict):
            continue
        where = text(frame.get("filename")) or "<anonymous>"
        line, col = text(frame.get("lineno")), text(frame.get("colno"))
        if line:
            where += f":{line}" + (f":{col}" if col else "")
        function = text(frame.get("function"))
        lines.append(f"    at {function} ({where})" if function else f"    at {where}")
    return "\n".join(lines) or None


def navigation(attrs: dict[str, Any], at: int | None) -> dict[str, Any]:
    url = text(attrs.get("name")) or ""
    timing = {
        key: ms for source, key in NAV_TIMINGS.items()
        if (ms := whole_ms(attrs.get(source))) is not None
    }  # fmt: skip
    dur = whole_ms(attrs.get("duration")) or 0
    # Faro reports the navigation once the page has loaded: it started `duration` earlier.
    event = {"type": "load", "name": f"loading of page {path_of(url)}" if url else "page load",
             "dur": dur, "timing": timing, "resources": []}  # fmt: skip
    if url:
        event["url"] = url
    return with_start(event, at - dur if at is not None and at > dur else at)


def convert_faro(payload: object, header_sid: str | None = None) -> list[dict[str, Any]]:
    """A Faro payload → native beacons (one per session and page). Raises `Rejected` when it
    has no usable app or session."""
    if not isinstance(payload, dict):
        raise Rejected(400, "not_object", "the Faro payload is not a JSON object")
    meta = payload.get("meta")
    if not isinstance(meta, dict):
        raise Rejected(400, "bad_meta", "the Faro payload has no `meta` object")
    app = app_name(sub(sub(meta, "app"), "name"))
    if app is None:
        raise Rejected(400, "bad_app", "`meta.app.name` is missing")
    sid = valid_sid(text(sub(sub(meta, "session"), "id"))) or valid_sid(header_sid)
    if sid is None:
        raise Rejected(400, "bad_sid", "`meta.session.id` is missing or not 8-128 printable "
                                       "characters")  # fmt: skip
    page = text(sub(sub(meta, "page"), "url"))
    beacons = Beacons()
    beacon = beacons.beacon(app, sid, page)
    user = user_tag(meta)
    if user:
        beacon["user"] = user
    browser = sub(meta, "browser")
    width = whole_ms(sub(browser, "viewportWidth"))
    height = whole_ms(sub(browser, "viewportHeight"))
    if width and height:
        beacon["device"] = {"screen": f"{width}x{height}"}
    events: list[dict[str, Any]] = beacon["events"]
    times: list[int] = []

    traced_urls: set[str] = set()
    if "traces" in payload:
        try:
            converted = convert_traces(payload["traces"], app=app, sid=sid, into=beacons)
        except Rejected:
            converted = None  # a broken traces part does not lose the rest of the payload
        for b in converted.beacons if converted else []:
            traced_urls |= {e["url"] for e in b["events"] if e.get("type") == "xhr"}
            times.append(b.get("sent", 0))

    load: dict[str, Any] | None = None
    for event in items(payload, "events"):
        name = text(event.get("name")) or ""
        attrs = event.get("attributes") if isinstance(event.get("attributes"), dict) else {}
        at = timestamp_ms(event.get("timestamp"))
        times.append(at or 0)
        if name == "faro.performance.navigation":
            load = navigation(attrs, at)
            events.append(load)
        elif name == "faro.performance.resource":
            url = text(attrs.get("name")) or ""
            initiator = text(attrs.get("initiatorType")) or "other"
            dur = whole_ms(attrs.get("duration")) or 0
            status = whole_ms(attrs.get("responseStatus"))
            start = at - dur if at is not None and at > dur else at
            if initiator in INITIATOR_NAMES and url:
                if url in traced_urls:
                    continue
                label = f"{INITIATOR_NAMES[initiator]} {path_of(url)}"
                action = {"type": "xhr", "name": label, "url": url, "dur": dur}
                if status and status <= 999:
                    action["status"] = status
                events.append(with_start(action, start))
                if status and 400 <= status <= 999:
                    error = {"type": "error", "kind": "request", "message": f"{label} {status}"}
                    events.append(with_start(error, start + dur if start is not None else None))
            elif load is not None and url:
                resource = {"url": url, "initiator": initiator[:64], "dur": dur}
                if status and status <= 999:
                    resource["status"] = status
                if start is not None and load.get("start") is not None:
                    resource["start"] = max(0, start - load["start"])
                load["resources"].append(resource)
        elif name and not name.startswith("session_"):
            dur = whole_ms(attrs.get("duration")) or 0
            events.append(with_start({"type": "custom", "name": name, "dur": dur}, at))

    for measurement in items(payload, "measurements"):
        at = timestamp_ms(measurement.get("timestamp"))
        times.append(at or 0)
        values = measurement.get("values")
        kind = text(measurement.get("type")) or "measurement"
        if not isinstance(values, dict):
            continue
        for key, value in list(values.items())[:20]:
            n = number(value)
            if n is None or n < 0 or key == "delta":
                continue
            if kind == "web-vitals":
                if key not in VITALS:
                    continue  # attribution details (input_delay, element_render_delay, …)
                name = VITALS[key]
            else:
                name = f"{kind}.{key}"[:64]
            events.append(with_start({"type": "vital", "name": name, "value": n}, at))

    for exception in items(payload, "exceptions"):
        at = timestamp_ms(exception.get("timestamp"))
        times.append(at or 0)
        kind, value = text(exception.get("type")), text(exception.get("value")) or ""
        error = {"type": "error", "kind": "js",
                 "message": f"{kind}: {value}" if kind else value or "exception"}  # fmt: skip
        stack = stack_of(exception)
        if stack:
            error["stack"] = stack
        events.append(with_start(error, at))

    for entry in items(payload, "logs"):
        at = timestamp_ms(entry.get("timestamp"))
        times.append(at or 0)
        if text(entry.get("level")) != "error":
            continue
        message = text(entry.get("message")) or "console.error"
        events.append(with_start({"type": "error", "kind": "custom", "message": message}, at))

    if times and max(times):
        # Faro batches for ≤ 250 ms: its latest item is about when it sent the request.
        for b in beacons.all():
            b["sent"] = max(max(times), b.get("sent", 0))
    return beacons.all()


def check_api_key(request: web.Request, expected: str | None) -> None:
    if expected is None:
        return
    given = request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), expected.encode()):  # no timing hint
        raise Rejected(401, "bad_api_key", "missing or wrong `x-api-key`")


@receiver_route(RECEIVER)
async def collect_post(request: web.Request, recv_ms: int, headers: dict[str, str]) -> web.Response:
    settings = request.app[SETTINGS]
    if headers:
        headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    check_api_key(request, settings.faro_api_key)
    check_rate(request)
    if request.content_type not in ("application/json", "text/plain"):
        raise Rejected(415, "unsupported_media_type",
                       f"Content-Type {request.content_type!r} is not application/json")
    body = await read_body(request, settings.max_large_body_bytes, settings.max_decompressed_bytes)
    beacons = convert_faro(decode_json(body), request.headers.get("x-faro-session-id"))
    if beacons:
        await submit_beacons(request, RECEIVER, recv_ms, beacons)
    return web.Response(status=202, headers=headers)


async def collect_options(request: web.Request) -> web.Response:
    response = preflight(request, RECEIVER, METHODS)
    if response.status == 204:
        asked = request.headers.get("Access-Control-Request-Headers", "")
        allowed = list(ALLOW_HEADERS) + [
            h.strip().lower() for h in asked.split(",")
            if h.strip() and h.strip().lower() not in ALLOW_HEADERS
        ]  # fmt: skip
        response.headers["Access-Control-Allow-Headers"] = ", ".join(allowed)
    return response


def setup_faro_routes(app: web.Application) -> None:
    app.router.add_post("/collect", collect_post, name="faro_collect")
    app.router.add_route("OPTIONS", "/collect", collect_options, name="faro_collect_preflight")


__all__ = ["convert_faro", "setup_faro_routes", "timestamp_ms"]
