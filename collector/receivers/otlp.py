"""OTLP/HTTP JSON traces: `POST /v1/traces` (DESIGN.md "Other receivers", WIRE-FORMATS.md).

Spans are linked to sessions by a `session.id` attribute (on the span, else on its resource);
the app is the resource's `service.name`. Each span becomes native events (docs/sessionizer.md
§3) of the beacon of its `(app, session.id)`:

- an HTTP client span (`http.method`/`http.request.method` + `http.url`/`url.full`, as the
  fetch and XHR instrumentations make) → an `xhr` action with method, URL, status, duration and
  the span's W3C `traceparent`, so the trace id is on the action; status ≥ 400 or an ERROR
  status → a `request` error;
- the document-load instrumentation's `documentLoad` span → a `load` action (its
  `resourceFetch` siblings are the waterfall); a user-interaction span (`event_type`) → a
  `custom` action "click on '…'"; another root span → a `custom` action named like the span;
- every span event named `exception` → a `js` error with type, message and stack trace;
- `user.email` / `user.name` / `user.id` / `enduser.id` → the session's user tag;
  `page.url` (or `location.href`) → the page the actions happened on (browser spans carry no
  page of their own: a site's span processor adds it, see docs/agents.md).

The converted beacons go through the same path as native ones (`accept`: the group-commit
batcher, the WAL, the core), so there is one durable path and one set of validation rules.
Spans without a usable session id cannot be attached: they are reported back as rejected in
`partialSuccess`, as OTLP asks, and the rest of the request is kept.

This module also holds what every converting receiver (OTLP, Faro, Boomerang) shares: the
submission of converted beacons in chunks of at most `max_events` events.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from collector.appkeys import SETTINGS
from collector.receivers import (
    Rejected,
    accept,
    check_app_origin,
    preflight,
    read_body,
    receiver_route,
)
from collector.receivers.native import check_app_rate, check_rate

log = logging.getLogger(__name__)

RECEIVER = "otlp"
METHODS = "POST, OPTIONS"
JSON_TYPES = frozenset({"application/json", "text/plain"})

MAX_START_MS = 10**13  # the core's bound on event times (docs/sessionizer.md §3)
MAX_DUR_MS = 86_400_000
_APP_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_HEX = re.compile(r"^[0-9a-f]+$")
USER_KEYS = ("user.email", "user.name", "user.id", "enduser.id")
SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2


# --- shared by the converting receivers -----------------------------------------------------


def app_name(value: object) -> str | None:
    """A valid native `app` from an agent's app name (unsafe characters become `_`)."""
    if not isinstance(value, str) or not value.strip():
        return None
    return _APP_UNSAFE.sub("_", value.strip())[:64]


def valid_sid(value: object) -> str | None:
    """The value if it is a valid native `sid` (8–128 printable ASCII characters)."""
    if isinstance(value, str) and 8 <= len(value) <= 128 and all(
        "!" <= ch <= "~" for ch in value
    ):
        return value
    return None


def number(value: object) -> float | None:
    """A JSON number, or a decimal string (OTLP writes 64-bit ints as strings); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value == value and abs(value) != float("inf") else None
    if isinstance(value, str) and len(value) <= 32:
        try:
            parsed = float(value)
        except ValueError:
            return None
        return parsed if parsed == parsed and abs(parsed) != float("inf") else None
    return None


def epoch_ms(value: object, per_ms: float = 1.0) -> int | None:
    """A client time in epoch ms within the core's bounds, from `value` units of 1/per_ms ms."""
    n = number(value)
    if n is None:
        return None
    ms = int(n / per_ms)
    return ms if 0 < ms <= MAX_START_MS else None


def duration_ms(start: int | None, end: int | None) -> int:
    if start is None or end is None or end < start:
        return 0
    return min(end - start, MAX_DUR_MS)


def path_of(url: str) -> str:
    try:
        return urlsplit(url).path or "/"
    except ValueError:
        return url


@dataclass
class Beacons:
    """Native beacons being built, one per (app, sid, page), in first-seen order."""

    by_key: dict[tuple[str, str, str | None], dict[str, Any]] = field(default_factory=dict)

    def beacon(self, app: str, sid: str, page: str | None = None) -> dict[str, Any]:
        key = (app, sid, page)
        beacon = self.by_key.get(key)
        if beacon is None:
            beacon = {"v": 1, "app": app, "sid": sid, "events": []}
            if page:
                beacon["page"] = {"url": page}
            self.by_key[key] = beacon
        return beacon

    def add(self, app: str, sid: str, events: Iterable[dict[str, Any]],
            page: str | None = None) -> None:  # fmt: skip
        self.beacon(app, sid, page)["events"].extend(events)

    def all(self) -> list[dict[str, Any]]:
        return [b for b in self.by_key.values() if b["events"] or "user" in b]


def chunks(beacons: list[dict[str, Any]], max_events: int) -> Iterator[list[dict[str, Any]]]:
    """Requests of at most `max_events` events each (the core refuses more per request); a
    beacon with more events is split into several beacons with the same fields, in order."""
    batch: list[dict[str, Any]] = []
    count = 0
    for beacon in beacons:
        events = beacon.get("events") or []
        parts = [events[i : i + max_events] for i in range(0, len(events), max_events)] or [[]]
        for part in parts:
            if batch and count + len(part) > max_events:
                yield batch
                batch, count = [], 0
            batch.append({**beacon, "events": part})
            count += len(part)
    if batch:
        yield batch


# How far behind the receive time an agent's latest item may be for its clock to be taken as
# right (see `trust_client_clock`).
CLOCK_TRUST_MS = 600_000


def trust_client_clock(beacons: list[dict[str, Any]], recv_ms: int) -> None:
    """Set each converted beacon's `sent` (docs/sessionizer.md §4) for agents that send no
    send time. The converters put the latest client time of the beacon's items there.

    If that time is plausible for a client whose clock is right (not ahead of the receive
    time, at most 10 minutes behind: a batch waits that long at most), the client clock is
    trusted (`sent` = receive time, offset 0): beacons of one session then keep their real
    order, whatever each one waited in the agent's queue. Otherwise the clock is off and the
    latest item is taken as sent just now, which corrects the skew; a beacon's own items keep
    their relative times either way. Closing rules never use client times.
    """
    for beacon in beacons:
        latest = beacon.get("sent")
        if isinstance(latest, int) and recv_ms - CLOCK_TRUST_MS <= latest <= recv_ms + 1_000:
            beacon["sent"] = recv_ms


async def submit_beacons(
    request: web.Request, receiver: str, recv_ms: int, beacons: list[dict[str, Any]]
) -> None:
    """Make converted beacons durable through the native path; raises `Rejected`.

    Every chunk is queued before the first commit (so one group commit usually takes them
    all, in order); if any is refused the request fails, and the agent's retry may store the
    accepted chunks twice: at-least-once, never lost.
    """
    max_events = request.app[SETTINGS].max_events
    apps = dict.fromkeys(beacon["app"] for beacon in beacons)
    check_app_origin(request, apps)
    for app in apps:
        check_app_rate(request, app)  # the per-app token bucket, when configured
    trust_client_clock(beacons, recv_ms)
    bodies = [orjson.dumps(chunk) for chunk in chunks(beacons, max_events)]
    results = await asyncio.gather(
        *(accept(request, receiver, recv_ms, body) for body in bodies), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


# --- OTLP → native events -------------------------------------------------------------------


def any_value(value: object) -> Any:
    """An OTLP AnyValue as a plain value (None when unusable)."""
    if not isinstance(value, dict):
        return None
    if "stringValue" in value:
        return value["stringValue"] if isinstance(value["stringValue"], str) else None
    if "boolValue" in value:
        return value["boolValue"] if isinstance(value["boolValue"], bool) else None
    if "intValue" in value:
        n = number(value["intValue"])
        return int(n) if n is not None else None
    if "doubleValue" in value:
        return number(value["doubleValue"])
    if "arrayValue" in value and isinstance(value["arrayValue"], dict):
        values = value["arrayValue"].get("values")
        return [any_value(v) for v in values[:100]] if isinstance(values, list) else None
    return None


def attributes(items: object) -> dict[str, Any]:
    if not isinstance(items, list):
        return {}
    out: dict[str, Any] = {}
    for item in items[:256]:
        if isinstance(item, dict) and isinstance(item.get("key"), str):
            out[item["key"]] = any_value(item.get("value"))
    return out


def text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(value)
    return None


def first(attrs: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value is not None and value != "":
            return value
    return None


def enum(value: object, names: Mapping[str, int]) -> int | None:
    """An OTLP enum: an integer, or (some exporters) its name."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return names.get(value)
    return None


KINDS = {"SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3,
         "SPAN_KIND_PRODUCER": 4, "SPAN_KIND_CONSUMER": 5}  # fmt: skip
STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


def traceparent(trace_id: object, span_id: object, flags: object) -> str | None:
    if not isinstance(trace_id, str) or not isinstance(span_id, str):
        return None
    trace_id, span_id = trace_id.lower(), span_id.lower()
    if len(trace_id) != 32 or len(span_id) != 16 or not _HEX.match(trace_id + span_id):
        return None
    if set(trace_id) == {"0"} or set(span_id) == {"0"}:
        return None
    sampled = flags & 0xFF if isinstance(flags, int) and not isinstance(flags, bool) else 1
    return f"00-{trace_id}-{span_id}-{sampled:02x}"


def span_events(span: dict[str, Any], attrs: Mapping[str, Any],
                resources: list[dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """The native events of one span (see the module docstring)."""
    start = epoch_ms(span.get("startTimeUnixNano"), 1e6)
    end = epoch_ms(span.get("endTimeUnixNano"), 1e6)
    dur = duration_ms(start, end)
    name = text(span.get("name")) or "span"
    status = span.get("status")
    status_code = enum(status.get("code"), STATUS_CODES) if isinstance(status, dict) else None
    kind = enum(span.get("kind"), KINDS)
    tp = traceparent(span.get("traceId"), span.get("spanId"), span.get("flags"))
    events: list[dict[str, Any]] = []
    method = text(first(attrs, "http.request.method", "http.method"))
    url = text(first(attrs, "url.full", "http.url"))
    timing: dict[str, Any] = {}

    if method and url and (kind in (SPAN_KIND_CLIENT, None) or name.startswith("HTTP")):
        method = method.upper()[:16]
        http_status = number(first(attrs, "http.response.status_code", "http.status_code"))
        action: dict[str, Any] = {"type": "xhr", "name": f"{method} {path_of(url)}", "url": url,
                                  "method": method, "dur": dur}  # fmt: skip
        code = int(http_status) if http_status is not None and 0 <= http_status <= 999 else None
        if code is not None:
            action["status"] = code
        if tp:
            action["traceparent"] = tp
        if start is not None:
            action["start"] = start
        events.append(action)
        if (code is not None and code >= 400) or status_code == STATUS_ERROR:
            reason = str(code) if code else "failed"
            error: dict[str, Any] = {"type": "error", "kind": "request",
                                     "message": f"{method} {path_of(url)} {reason}"}  # fmt: skip
            if start is not None:
                error["start"] = start + dur
            events.append(error)
    elif name == "documentLoad":
        page = text(first(attrs, "http.url", "url.full", "location.href")) or ""
        action = {"type": "load", "name": f"loading of page {path_of(page)}" if page else name,
                  "dur": dur, "resources": resources}  # fmt: skip
        if page:
            action["url"] = page
        if tp:
            action["traceparent"] = tp
        if start is not None:
            action["start"] = start
        for event in span.get("events") or []:
            # The instrumentation records each Navigation Timing mark as a span event.
            if isinstance(event, dict) and isinstance(event.get("name"), str) and start:
                at = epoch_ms(event.get("timeUnixNano"), 1e6)
                if at is not None and at >= start:
                    timing[event["name"][:64]] = at - start
        if timing:
            action["timing"] = timing
        events.append(action)
    elif name not in ("documentFetch", "resourceFetch") and (
        "event_type" in attrs or not span.get("parentSpanId")
    ):
        label = text(first(attrs, "target_element", "target_xpath")) or name
        event_type = text(attrs.get("event_type"))
        action = {"type": "custom", "dur": dur,
                  "name": f"{event_type} on '{label}'" if event_type else name}  # fmt: skip
        if tp:
            action["traceparent"] = tp
        if start is not None:
            action["start"] = start
        events.append(action)

    for event in span.get("events") or []:
        if not isinstance(event, dict) or event.get("name") != "exception":
            continue
        ex = attributes(event.get("attributes"))
        kind_name = text(ex.get("exception.type"))
        message = text(ex.get("exception.message")) or ""
        error = {"type": "error", "kind": "js",
                 "message": f"{kind_name}: {message}" if kind_name else message or "exception"}
        stack = text(ex.get("exception.stacktrace"))
        if stack:
            error["stack"] = stack
        at = epoch_ms(event.get("timeUnixNano"), 1e6)
        if at is not None:
            error["start"] = at
        events.append(error)
    return events


def resource_fetches(spans: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """The waterfall entries of `resourceFetch` spans, by parent span id."""
    out: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        if not isinstance(span, dict) or span.get("name") != "resourceFetch":
            continue
        parent = span.get("parentSpanId")
        attrs = attributes(span.get("attributes"))
        url = text(first(attrs, "http.url", "url.full"))
        start = epoch_ms(span.get("startTimeUnixNano"), 1e6)
        if not isinstance(parent, str) or not url:
            continue
        out.setdefault(parent.lower(), []).append(
            {"url": url, "initiator": "resource", "start": start or 0,
             "dur": duration_ms(start, epoch_ms(span.get("endTimeUnixNano"), 1e6))}
        )  # fmt: skip
    return out


@dataclass
class Converted:
    beacons: list[dict[str, Any]]
    spans: int = 0
    rejected: int = 0


def convert_traces(document: object, *, app: str | None = None, sid: str | None = None,
                   into: Beacons | None = None) -> Converted:  # fmt: skip
    """OTLP JSON (`{"resourceSpans": […]}`) → native beacons. `app`/`sid` are the defaults
    (Faro's meta) for spans that name no service / session. Raises `Rejected` only when the
    document's shape is wrong; a span that cannot be used counts as rejected."""
    if not isinstance(document, dict):
        raise Rejected(400, "not_object", "the OTLP payload is not a JSON object")
    resource_spans = document.get("resourceSpans", [])
    if not isinstance(resource_spans, list):
        raise Rejected(400, "bad_otlp", "`resourceSpans` is not an array")
    beacons = into if into is not None else Beacons()
    result = Converted([])
    for rs in resource_spans:
        if not isinstance(rs, dict):
            continue
        resource = rs.get("resource")
        res_attrs = attributes(resource.get("attributes")) if isinstance(resource, dict) else {}
        res_app = app_name(res_attrs.get("service.name")) or app
        scopes = rs.get("scopeSpans", rs.get("instrumentationLibrarySpans", []))
        for scope in scopes if isinstance(scopes, list) else []:
            spans = scope.get("spans") if isinstance(scope, dict) else None
            if not isinstance(spans, list):
                continue
            fetches = resource_fetches(spans)
            for span in spans:
                result.spans += 1
                if not isinstance(span, dict):
                    result.rejected += 1
                    continue
                attrs = {**res_attrs, **attributes(span.get("attributes"))}
                span_sid = valid_sid(text(attrs.get("session.id"))) or sid
                if res_app is None or span_sid is None:
                    result.rejected += 1
                    continue
                span_id = span.get("spanId")
                waterfall = fetches.get(span_id.lower(), []) if isinstance(span_id, str) else []
                events = span_events(span, attrs, waterfall)
                user = text(first(attrs, *USER_KEYS))
                page = text(first(attrs, "page.url", "location.href"))
                beacon = beacons.beacon(res_app, span_sid, page)
                if user:
                    beacon["user"] = user
                beacon["events"].extend(events)
                ends = [epoch_ms(span.get("endTimeUnixNano"), 1e6) or 0, beacon.get("sent", 0)]
                if max(ends):
                    # The client's latest known time; the core corrects every start by
                    # (receive time − sent), so the client clock's offset cancels out.
                    beacon["sent"] = max(ends)
    result.beacons = beacons.all()
    return result


# --- HTTP -----------------------------------------------------------------------------------


def decode_json(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise Rejected(400, "bad_json", f"the body is not JSON: {err}") from None


@receiver_route(RECEIVER)
async def traces_post(request: web.Request, recv_ms: int, headers: dict[str, str]) -> web.Response:
    settings = request.app[SETTINGS]
    check_rate(request)
    if request.content_type not in JSON_TYPES:
        raise Rejected(415, "unsupported_media_type",
                       f"Content-Type {request.content_type!r}: only OTLP/HTTP JSON "
                       "(application/json) is accepted")  # fmt: skip
    body = await read_body(request, settings.max_large_body_bytes, settings.max_decompressed_bytes)
    converted = convert_traces(decode_json(body))
    if converted.beacons:
        await submit_beacons(request, RECEIVER, recv_ms, converted.beacons)
    answer: dict[str, Any] = {}
    if converted.rejected:
        answer["partialSuccess"] = {
            "rejectedSpans": converted.rejected,
            "errorMessage": "spans need a `session.id` attribute (8-128 printable ASCII "
                            "characters) and a resource `service.name`",
        }  # fmt: skip
    return web.json_response(answer, headers=headers, dumps=lambda o: orjson.dumps(o).decode())


async def traces_options(request: web.Request) -> web.Response:
    return preflight(request, RECEIVER, METHODS)


def setup_otlp_routes(app: web.Application) -> None:
    app.router.add_post("/v1/traces", traces_post, name="otlp_traces")
    app.router.add_route("OPTIONS", "/v1/traces", traces_options, name="otlp_traces_preflight")
