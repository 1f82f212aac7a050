"""Boomerang beacons: `/beacon/boomerang` (DESIGN.md "Other receivers", WIRE-FORMATS.md).

Boomerang sends its parameters as a `GET` query (image beacon), or as a urlencoded `POST`
body: by `navigator.sendBeacon` (a form Blob ending in `sb=1`) or by XHR. The response is
ignored: `204`. A `?app=` on the beacon URL names the app; else the page's host name.

One beacon is one of (by `http.initiator`):

- absent: the page load → a `load` action "loading of page /path" (`u`), `t_done` long,
  started at `nt_nav_st` (else `rt.tstart`), with the Navigation Timing (`nt_*`) as timings and
  the `restiming` trie decompressed into its waterfall; `pt.fcp`/`pt.lcp`, `et.inp`/`et.fid`,
  `c.cls` and TTFB (`nt_res_st − nt_nav_st`) as vitals; `c.c.r` as rage clicks;
- `xhr` (auto-xhr): an `xhr` action for `u` (the page is `pgu`), method `http.method` (GET
  when absent), `t_done` long; `http.errno` is its failed status → a `request` error too;
- `spa`, `spa_hard`: a route change / SPA page load → a `load` action (timing `spa` = 1);
- `click` and other initiators: a `custom` action "<initiator> on <u>";
- `error`: only the errors in `err`.

Any beacon may carry `err`: a JSON array or JSURL (compression plugin) of errors with count,
frames, type, message, via, time. Errors come via `onerror` (2), `addEventListener` (5),
timers (6) etc. as `js` errors; via the app (1) or `console.error` (4) as `custom` errors.
Via XHR (3) they are skipped: the auto-xhr beacon of the same request already reports it,
with its method, as a request error on its action.

The session is `rt.si`; Boomerang has no end event (the inactivity rule closes it). `user`
(`BOOMR.addVar("user", …)`) is the user tag; `scr.xy` the screen; `ua.plt` a property.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from aiohttp import web

from collector.appkeys import SETTINGS
from collector.receivers import (
    Rejected,
    preflight,
    read_body,
    receiver_route,
)
from collector.receivers.native import check_rate
from collector.receivers.otlp import app_name, number, path_of, submit_beacons, valid_sid

RECEIVER = "boomerang"
METHODS = "GET, POST, OPTIONS"
# No Content-Type at all is what aiohttp reports as application/octet-stream.
FORM_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "text/plain", "application/octet-stream"}
)
MAX_PARAMS = 2000
MAX_RESOURCES = 300
MAX_DEPTH = 32

INITIATORS = {
    "0": "other", "1": "img", "2": "link", "3": "script", "4": "css", "5": "xmlhttprequest",
    "6": "html", "7": "image", "8": "beacon", "9": "fetch", "a": "iframe", "b": "body",
    "c": "input", "d": "object", "e": "video", "f": "audio", "g": "source", "h": "track",
    "i": "embed", "j": "eventsource", "k": "early-hints",
}  # fmt: skip
# Navigation Timing marks (epoch ms) → timing keys (ms since navigation start).
NT_MARKS = {
    "nt_res_st": "ttfb", "nt_req_st": "request_start", "nt_res_end": "response_end",
    "nt_domint": "dom_interactive", "nt_domcontloaded_end": "dom_content_loaded",
    "nt_domcomp": "dom_complete", "nt_load_end": "load_end", "nt_first_paint": "first_paint",
    "nt_dns_st": "dns_start", "nt_dns_end": "dns_end", "nt_con_st": "connect_start",
    "nt_con_end": "connect_end", "nt_fet_st": "fetch_start",
}  # fmt: skip
VITALS = {"pt.fcp": "FCP", "pt.lcp": "LCP", "et.inp": "INP", "et.fid": "FID", "c.cls": "CLS"}
TIMERS = {"t_resp": "t_resp", "t_page": "t_page", "c.tti": "tti", "pt.fp": "first_paint"}
_BASE36 = re.compile(r"^-?[0-9a-z]{1,12}$")


class Malformed(ValueError):
    """A part of a beacon (`restiming`, `err`) that cannot be decoded: that part is skipped."""


# --- decoders -------------------------------------------------------------------------------


def base36(value: str) -> int:
    if value == "":
        return 0
    if not _BASE36.match(value):
        raise Malformed(f"{value!r} is not base36")
    return int(value, 36)


def decode_restiming(data: object) -> list[dict[str, Any]]:
    """The `restiming` trie → waterfall entries {url, initiator, start, dur, size}."""
    if isinstance(data, str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise Malformed("restiming is not JSON") from None
    if isinstance(data, dict) and "restiming" in data and isinstance(data["restiming"], dict):
        data = data["restiming"]  # with the server-timing extension
    if not isinstance(data, dict):
        raise Malformed("restiming is not a trie")
    out: list[dict[str, Any]] = []
    stack: list[tuple[str, dict[str, Any], int]] = [("", data, 0)]
    while stack and len(out) < MAX_RESOURCES:
        prefix, node, depth = stack.pop()
        if depth > 64:
            raise Malformed("restiming is nested too deep")
        for key, value in node.items():
            url = prefix + key
            if isinstance(value, dict):
                stack.append((url, value, depth + 1))
                continue
            if not isinstance(value, str):
                continue
            if url.endswith("|"):
                url = url[:-1]  # the prefix itself also was a resource
            for hit in value.split("|"):
                entry = restiming_entry(url, hit)
                if entry is not None:
                    out.append(entry)
    out.sort(key=lambda r: r["start"])
    return out[:MAX_RESOURCES]


def restiming_entry(url: str, hit: str) -> dict[str, Any] | None:
    if not hit:
        return None
    timings, *special = hit.split("*")
    initiator = INITIATORS.get(timings[:1], "other")
    try:
        values = [base36(v) for v in timings[1:].split(",")] if len(timings) > 1 else [0]
    except Malformed:
        return None
    entry: dict[str, Any] = {"url": url, "initiator": initiator, "start": max(0, values[0]),
                             "dur": max(0, values[1]) if len(values) > 1 else 0}  # fmt: skip
    for part in special:
        if part[:1] == "1":  # sizes: encoded, transfer − encoded, decoded − encoded
            try:
                sizes = [base36(v) for v in part[1:].split(",")]
            except Malformed:
                continue
            if sizes:
                entry["size"] = max(0, sizes[0] + (sizes[1] if len(sizes) > 1 else 0))
    return entry


def decode_jsurl(text: str) -> Any:
    """JSURL (`~(key~'value~n~12)`), as Boomerang's compression plugin writes `err`."""
    pos = 0

    def char() -> str:
        if pos >= len(text):
            raise Malformed("JSURL is truncated")
        return text[pos]

    def token() -> str:
        nonlocal pos
        start = pos
        while pos < len(text) and text[pos] not in "~)":
            pos += 1
        return text[start:pos]

    def decoded(raw: str) -> str:
        out, i = [], 0
        while i < len(raw):
            ch = raw[i]
            if ch == "!":
                out.append("$")
                i += 1
            elif ch == "*":
                width = 4 if raw[i + 1 : i + 2] == "*" else 2
                start = i + 1 + (width == 4)
                digits = raw[start : start + width]
                if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise Malformed("bad JSURL escape")
                out.append(chr(int(digits, 16)))
                i = start + width
            else:
                out.append(ch)
                i += 1
        return "".join(out)

    def value(depth: int) -> Any:
        nonlocal pos
        if depth > MAX_DEPTH:
            raise Malformed("JSURL is nested too deep")
        if char() != "~":
            raise Malformed(f"JSURL: '~' expected at {pos}")
        pos += 1
        ch = char()
        if ch == "(":
            pos += 1
            if char() == "~":  # an array (`~(~)` is the empty one)
                if text[pos + 1 : pos + 2] == ")":
                    pos += 2
                    return []
                items = []
                while char() != ")":
                    items.append(value(depth + 1))
                pos += 1
                return items
            obj: dict[str, Any] = {}
            if char() == ")":
                pos += 1
                return obj
            while True:
                key = decoded(token())
                obj[key] = value(depth + 1)
                if char() == "~":
                    pos += 1
                    continue
                pos += 1  # ")"
                return obj
        if ch == "'":
            pos += 1
            return decoded(token())
        raw = token()
        if raw in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[raw]
        parsed = number(raw)
        if parsed is None:
            raise Malformed(f"JSURL: bad value {raw!r}")
        return int(parsed) if parsed.is_integer() and "." not in raw else parsed

    result = value(0)
    if pos != len(text):
        raise Malformed("JSURL has trailing data")
    return result


def decode_errors(raw: str) -> list[dict[str, Any]]:
    """`err`: a JSON array (or JSURL) of Boomerang error objects."""
    try:
        data = decode_jsurl(raw) if raw.startswith("~") else orjson.loads(raw)
    except (orjson.JSONDecodeError, Malformed, RecursionError, IndexError):
        return []
    if isinstance(data, dict):
        data = [data]
    return [e for e in data[:50] if isinstance(e, dict)] if isinstance(data, list) else []


def error_event(err: dict[str, Any], fallback_ms: int | None) -> dict[str, Any] | None:
    via = err.get("v")
    if via == 3:
        return None  # the XHR's own beacon reports it (see the module docstring)
    kind = "custom" if via in (1, 4) else "js"
    message = err.get("m") if isinstance(err.get("m"), str) else ""
    etype = err.get("t") if isinstance(err.get("t"), str) else ""
    event: dict[str, Any] = {"type": "error", "kind": kind,
                             "message": f"{etype}: {message}" if etype else message or "error"}
    lines = []
    frames = err.get("f")
    for frame in frames[:50] if isinstance(frames, list) else []:
        if not isinstance(frame, dict):
            continue
        where = frame.get("w") or frame.get("wo") or "<anonymous>"
        where = where if isinstance(where, str) else "<anonymous>"
        line, col = frame.get("l"), frame.get("c")
        if isinstance(line, int) and not isinstance(line, bool):
            where += f":{line}"
            if isinstance(col, int) and not isinstance(col, bool):
                where += f":{col}"
        function = frame.get("f")
        lines.append(f"    at {function} ({where})" if isinstance(function, str) and function
                     else f"    at {where}")  # fmt: skip
    if lines:
        event["stack"] = "\n".join(lines)
    at = None
    if isinstance(err.get("d"), str):
        try:
            at = base36(err["d"])
        except Malformed:
            at = None
    at = at if at is not None and 0 < at <= 10**13 else fallback_ms
    if at is not None:
        event["start"] = at
    return event


# --- beacon → native ------------------------------------------------------------------------


def ms(params: dict[str, str], key: str) -> int | None:
    n = number(params.get(key))
    return int(n) if n is not None and 0 <= n <= 10**13 else None


def convert_boomerang(params: dict[str, str]) -> list[dict[str, Any]]:
    """One Boomerang beacon's parameters → native beacons (at most one). Raises `Rejected`
    when it names no usable session or app."""
    page = params.get("pgu") or params.get("u") or ""
    host = urlsplit(page).hostname if page.startswith(("http://", "https://")) else None
    app = app_name(params.get("app")) or app_name(host)
    if app is None:
        raise Rejected(400, "bad_app", "no `app` parameter and no page URL (`u`) to take it from")
    sid = valid_sid(params.get("rt.si"))
    if sid is None:
        raise Rejected(400, "bad_sid", "`rt.si` is missing or not 8-128 printable characters")
    beacon: dict[str, Any] = {"v": 1, "app": app, "sid": sid, "events": []}
    if page:
        beacon["page"] = {"url": page}
    if params.get("user"):
        beacon["user"] = params["user"]
    if params.get("scr.xy"):
        beacon["device"] = {"screen": params["scr.xy"]}
    end = ms(params, "rt.end")
    if end:
        beacon["sent"] = end  # the client's time at the end of this beacon's timer
    events: list[dict[str, Any]] = beacon["events"]
    initiator = params.get("http.initiator", "")
    url = params.get("u", "")
    dur = ms(params, "t_done")
    dur = min(dur, 86_400_000) if dur is not None else None
    # When the beacon's timer started: the navigation for a page load, the route change for an
    # SPA beacon; an XHR beacon's rt.tstart is its page's, so its start is `rt.end − t_done`.
    timer_end = end - dur if end and dur is not None and end > dur else None
    if not initiator:
        start = ms(params, "nt_nav_st") or ms(params, "rt.tstart")
    elif initiator in ("spa", "spa_hard"):
        start = ms(params, "rt.tstart") or timer_end
    else:
        start = timer_end or ms(params, "nt_req_st") or ms(params, "rt.tstart")

    # `rt.quit` marks a beacon sent as the page unloads: for a page it repeats the load's
    # timers (not a second load) and brings the final INP, CLS and rage clicks.
    if not initiator and url and "rt.quit" not in params:
        events.append(page_load(params, url, start, dur))
    elif initiator in ("spa", "spa_hard") and url:
        action = {"type": "load", "name": f"loading of page {path_of(url)}", "url": url,
                  "dur": dur or 0, "timing": {"spa": 1}}  # fmt: skip
        events.append(with_start(action, start))
    elif initiator == "xhr" and url:
        method = (params.get("http.method") or "GET").upper()[:16]
        name = f"{method} {path_of(url)}"
        errno = number(params.get("http.errno"))
        action = {"type": "xhr", "name": name, "url": url, "method": method, "dur": dur or 0}
        if errno is not None and 0 <= errno <= 999:
            action["status"] = int(errno)
        events.append(with_start(action, start))
        if errno is not None:
            status = str(int(errno)) if 0 < errno <= 999 else "failed"
            error = {"type": "error", "kind": "request", "message": f"{name} {status}"}
            events.append(with_start(error, start + (dur or 0) if start else None))
    elif initiator not in ("", "error") and url:
        action = {"type": "custom", "name": f"{initiator[:32]} on {url}", "dur": dur or 0}
        events.append(with_start(action, start))

    for err in decode_errors(params["err"]) if params.get("err") else []:
        event = error_event(err, end)
        if event is not None:
            events.append(event)
    if not initiator:
        # A page's load and unload beacons carry its vitals and rage clicks (the XHR and
        # error beacons repeat some of them: not counted twice).
        events += vitals(params, ms(params, "nt_nav_st") or ms(params, "rt.tstart"))
        events += rage_clicks(params, end)
    if params.get("ua.plt"):
        events.append({"type": "property", "key": "platform", "value": params["ua.plt"][:512]})
    return [beacon] if events or "user" in beacon else []


def with_start(event: dict[str, Any], start: int | None) -> dict[str, Any]:
    if start is not None:
        event["start"] = start
    return event


def page_load(params: dict[str, str], url: str, start: int | None,
              dur: int | None) -> dict[str, Any]:  # fmt: skip
    nav = ms(params, "nt_nav_st")
    timing: dict[str, Any] = {}
    if nav:
        for key, name in NT_MARKS.items():
            mark = ms(params, key)
            if mark is not None and mark >= nav:
                timing[name] = mark - nav
    for key, name in TIMERS.items():
        value = ms(params, key)
        if value is not None:
            timing[name] = value
    if dur is None:
        # capped like t_done: a garbled nt_nav_st must not make the whole load unusable
        dur = min(timing.get("load_end", 0), 86_400_000)
    action: dict[str, Any] = {"type": "load", "name": f"loading of page {path_of(url)}",
                              "url": url, "dur": dur, "timing": timing}  # fmt: skip
    if params.get("restiming"):
        try:
            action["resources"] = decode_restiming(params["restiming"])
        except (Malformed, RecursionError):
            pass  # a broken waterfall does not lose the page load
    return with_start(action, start)


def vitals(params: dict[str, str], start: int | None) -> list[dict[str, Any]]:
    out = []
    for key, name in VITALS.items():
        value = number(params.get(key))
        if value is not None and value >= 0:
            out.append(with_start({"type": "vital", "name": name, "value": value}, start))
    nav, response = ms(params, "nt_nav_st"), ms(params, "nt_res_st")
    if nav and response and response >= nav:
        out.append(with_start({"type": "vital", "name": "TTFB", "value": response - nav}, start))
    return out


def rage_clicks(params: dict[str, str], at: int | None) -> list[dict[str, Any]]:
    count = number(params.get("c.c.r"))
    if count is None or count < 1 or count > 1e6:
        return []
    return [with_start({"type": "rage_click", "target": "page", "count": int(count)}, at)]


def convert(params: dict[str, str]) -> list[dict[str, Any]]:
    """A beacon's parameters → native beacons (at most one)."""
    return convert_boomerang(params)


# --- HTTP -----------------------------------------------------------------------------------


def parse_params(*sources: str) -> dict[str, str]:
    """Query strings / form bodies, later sources winning; at most MAX_PARAMS pairs."""
    params: dict[str, str] = {}
    for source in sources:
        if not source:
            continue
        try:
            pairs = parse_qsl(source, keep_blank_values=True, max_num_fields=MAX_PARAMS)
        except ValueError:
            raise Rejected(400, "too_many_params", f"more than {MAX_PARAMS} parameters") from None
        params.update(pairs)
    return params


async def handle(request: web.Request, recv_ms: int, headers: dict[str, str],
                 body: bytes | None) -> web.Response:  # fmt: skip
    settings = request.app[SETTINGS]
    check_rate(request)
    if body is None:
        body = await read_body(
            request, settings.max_large_body_bytes, settings.max_decompressed_bytes
        )
        if request.content_type not in FORM_TYPES:
            raise Rejected(415, "unsupported_media_type",
                           f"Content-Type {request.content_type!r} is not a form")  # fmt: skip
    try:
        form = body.decode()
    except UnicodeDecodeError:
        raise Rejected(400, "bad_encoding", "the beacon is not UTF-8") from None
    # The beacon URL's own query (`?app=`, the site's setting) wins over the body.
    params = parse_params(form, request.query_string)
    if not params:
        raise Rejected(400, "empty", "the beacon has no parameters")
    beacons = convert(params)
    if beacons:
        await submit_beacons(request, RECEIVER, recv_ms, beacons)
    return web.Response(status=204, headers=headers)


@receiver_route(RECEIVER)
async def boomerang_get(
    request: web.Request, recv_ms: int, headers: dict[str, str]
) -> web.Response:
    return await handle(request, recv_ms, headers, b"")


@receiver_route(RECEIVER)
async def boomerang_post(
    request: web.Request, recv_ms: int, headers: dict[str, str]
) -> web.Response:
    return await handle(request, recv_ms, headers, None)


async def boomerang_options(request: web.Request) -> web.Response:
    return preflight(request, RECEIVER, METHODS)


def setup_boomerang_routes(app: web.Application) -> None:
    app.router.add_get("/beacon/boomerang", boomerang_get, name="boomerang_get", allow_head=False)
    app.router.add_post("/beacon/boomerang", boomerang_post, name="boomerang")
    app.router.add_route("OPTIONS", "/beacon/boomerang", boomerang_options,
                         name="boomerang_preflight")  # fmt: skip


__all__ = ["convert", "decode_jsurl", "decode_restiming", "setup_boomerang_routes"]
