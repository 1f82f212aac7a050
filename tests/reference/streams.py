"""Hypothesis strategies for beacon streams: what the core equivalence and checkpoint tests feed.

A stream is a few apps and client session ids, gaps around the inactivity timeout and the
duration limit, actions of the three types with durations at and around the Apdex thresholds,
every error kind, vitals, rage clicks, identify, properties, end events, unknown and bad events,
Do-Not-Track records, bad requests and bad records, cut into random batches with `flush(now)`
and `live()` calls in between. Small limits (timeout 60 s, 3-5 actions per session) make every
closing rule reachable in a short stream.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from hypothesis import strategies as st

from tests.reference.framing import (
    CHROME_UA,
    FLAG_DNT,
    GOOGLEBOT_UA,
    IPAD_UA,
    IPHONE_UA,
    RECV_MS,
    frame,
    raw_record,
)

# A step is ("batch", framed records, now_ms) or ("flush", now_ms) or ("live",).
Step = tuple[Any, ...]

APPS = ("shop", "blog")
SIDS = ("sid-aaaa-0001", "sid-bbbb-0002", "sid-cccc-0003")
ALL_KEYS = [(app, sid) for app in APPS for sid in SIDS]


class Shape(NamedTuple):
    """What one stream looks like: which (app, sid) keys it uses, how busy its beacons are."""

    keys: list[tuple[str, str]]
    events_per_beacon: int
    steady: bool  # no gap between two records reaches the timeout


ANY_SHAPE = Shape(ALL_KEYS, 7, False)
NAMES = ("loading of page /cart", "POST /checkout", "click on 'Pay'", "GET /api/items")
URLS = (
    "https://shop.example.com/cart",
    "https://shop.example.com/u/daniel.adams@example.com/orders",
    "https://shop.example.com/pay?card=4111 1111 1111 1111",
    "https://shop.example.com/o/123456789012?x=secret42",
    "https://shop.example.com/u/ashley%40example.org",
)
USER_AGENTS = (CHROME_UA, IPHONE_UA, IPAD_UA, GOOGLEBOT_UA, "", "curl/8.4.0")
IPS = ("203.0.113.7", "2001:db8:85a3::8a2e:370:7334", "", "not-an-ip", "198.51.100.0")
KEY_ACTION = {"t": 500, "f": 2000}  # for shop / "POST /checkout" when key actions are on
XHR_THRESHOLDS = {"t": 1000, "f": 4000}  # when the xhr override is on


# ---- settings -------------------------------------------------------------------------------


@st.composite
def core_settings(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {
        "timeout_ms": 60_000,
        "max_duration_ms": draw(st.sampled_from([90_000, 180_000])),
        "max_actions": draw(st.sampled_from([3, 5])),
        "max_events": draw(st.sampled_from([20, 500, 500, 500])),
        "last_action_rule": draw(st.booleans()),
        "mask_ip": draw(st.booleans()),
        "scrub_pii": draw(st.booleans()),
    }
    if draw(st.integers(0, 3)) == 0:
        out["max_open_sessions"] = draw(st.integers(1, 4))
    if draw(st.booleans()):
        out["apdex"] = {"xhr": dict(XHR_THRESHOLDS)}
    if draw(st.booleans()):
        out["key_actions"] = {"shop": {"POST /checkout": dict(KEY_ACTION)}}
    if draw(st.booleans()):
        out["scrub_patterns"] = ["secret[0-9]+"]
    if draw(st.booleans()):
        out["weights"] = {"action": 2, "error": 1, "rage_click": 3}
        out["frustrated_ratio"] = 0.25
        out["satisfied_ratio"] = 0.6
    return out


def thresholds(config: dict[str, Any], kind: str) -> list[float]:
    apdex = config.get("apdex", {}).get(kind, {"t": 3000, "f": 12000})
    t, f = apdex["t"], apdex["f"]
    return [0, t - 1, t, t + 0.5, f - 1, f, f + 1, KEY_ACTION["t"], KEY_ACTION["f"]]


# ---- events ---------------------------------------------------------------------------------

# How long before the client's `sent` an event started: sometimes after it (a client clock
# running on), sometimes before the duration limit (both are clamped to the receive window).
START_AGO = st.integers(-5_000, 30_000) | st.sampled_from((200_000,))

# Events that are dropped (bad_event, unknown_type) or odd (kept with a field left out).
BAD_EVENTS: tuple[Any, ...] = (
    "not an object",
    {"no": "type"},
    {"type": 7},
    {"type": "load", "dur": -1},
    {"type": "load", "dur": 86_400_001},
    {"type": "custom", "start": 10**13 + 1},
    {"type": "custom", "start": -5},
    {"type": "xhr", "status": 1000},
    {"type": "xhr", "status": 200.5},
    {"type": "load", "name": 5},
    {"type": "load", "timing": [1, 2]},
    {"type": "load", "resources": {"url": "x"}},
    {"type": "error", "kind": "js", "message": ["x"]},
    {"type": "error", "kind": 5},
    {"type": "vital", "name": "LCP", "value": -1},
    {"type": "vital", "name": "LCP"},
    {"type": "vital", "value": 12},
    {"type": "rage_click", "count": 0},
    {"type": "identify", "user": ""},
    {"type": "identify"},
    {"type": "property", "key": "", "value": "x"},
    {"type": "property", "key": "k" * 65, "value": "x"},
    {"type": "property", "key": "plan", "value": 3},
    {"type": "end", "reason": 42},
    {"type": "mystery", "start": 1},
    {"type": "LOAD"},
)


@st.composite
def action_event(draw: st.DrawFn, config: dict[str, Any], client_now: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(("load", "xhr", "custom")))
    event: dict[str, Any] = {
        "type": kind,
        "dur": draw(st.sampled_from(thresholds(config, kind)) | st.integers(0, 20_000)),
    }
    if draw(st.integers(0, 9)):
        event["start"] = client_now - draw(START_AGO)
    name = draw(st.sampled_from((*NAMES, None, None)))
    if name is not None:
        event["name"] = name
    url = draw(st.sampled_from((*URLS, None)))
    if url is not None:
        event["url"] = url
    if kind == "xhr":
        event["method"] = draw(st.sampled_from(("GET", "POST")))
        status = draw(st.sampled_from((200, 204, 399, 400, 404, 500, None)))
        if status is not None:
            event["status"] = status
        event["traceparent"] = draw(
            st.sampled_from(
                (
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                    "garbage",
                )
            )
        )
    if kind == "load" and draw(st.booleans()):
        event["timing"] = {"ttfb": 310, "fcp": 900.5, "lcp": "slow", "load_end": event["dur"]}
        event["resources"] = [
            {"url": URLS[1], "initiator": "fetch", "start": 120, "dur": 300, "status": 200,
             "size": 1834},
            {"url": 7, "initiator": "script", "start": "x", "dur": 10.5, "status": "ok"},
            "not an object",
        ]  # fmt: skip
    return event


@st.composite
def other_event(draw: st.DrawFn, client_now: int) -> dict[str, Any]:
    # `end` is rarer than the others so that sessions live long enough for the other rules.
    kind = draw(
        st.sampled_from(("error", "vital", "rage_click", "identify", "property") * 3 + ("end",))
    )
    event: dict[str, Any] = {"type": kind}
    if draw(st.integers(0, 9)):
        event["start"] = client_now - draw(START_AGO)
    if kind == "error":
        error_kind = draw(st.sampled_from(("js", "request", "custom", "weird", None)))
        if error_kind is not None:
            event["kind"] = error_kind
        event["message"] = draw(
            st.sampled_from(("TypeError: x is undefined", "card 4111-1111-1111-1111 declined",
                             "mail to a.b@example.com failed"))
        )  # fmt: skip
        if draw(st.booleans()):
            event["stack"] = "at pay (app.js:10:5)"
    elif kind == "vital":
        event["name"] = draw(st.sampled_from(("LCP", "inp", "CLS", "FCP", "TTFB", "FID")))
        event["value"] = draw(st.sampled_from((0, 0.1, 0.25, 200, 500, 800, 2500, 4000, 4000.5)))
    elif kind == "rage_click":
        event["target"] = "button#pay"
        count = draw(st.sampled_from((None, 1, 5)))
        if count is not None:
            event["count"] = count
    elif kind == "identify":
        event["user"] = draw(st.sampled_from(("daniel.adams@example.com", "ashley", "u-42")))
    elif kind == "property":
        event["key"] = draw(st.sampled_from(("plan", "cart", "ab")))
        event["value"] = draw(st.sampled_from(("gold", "silver", "x" * 600)))
    elif draw(st.booleans()):
        event["reason"] = "logout"
    return event


@st.composite
def event(draw: st.DrawFn, config: dict[str, Any], client_now: int) -> Any:
    roll = draw(st.integers(0, 99))
    if roll < 55:
        return draw(action_event(config, client_now))
    if roll < 92:
        return draw(other_event(client_now))
    return draw(st.sampled_from(BAD_EVENTS))


# ---- beacons, payloads, records -------------------------------------------------------------

# Prefixes that give a beacon a duplicate key (of a field the core reads, of one it ignores).
DUPLICATE_KEYS = ('"app": "shop"', '"x": 1, "x": 2')

BAD_BEACON_CHANGES: tuple[dict[str, Any], ...] = (
    {"app": "bad app!"},
    {"app": ""},
    {"app": None},
    {"sid": "short"},
    {"sid": "has space in it"},
    {"sid": 12345678},
    {"v": 2},
    {"v": "1"},
    {"events": "nope"},
)


@st.composite
def beacon(draw: st.DrawFn, config: dict[str, Any], recv_ms: int, shape: Shape) -> Any:
    app, sid = draw(st.sampled_from(shape.keys))
    skew = draw(st.sampled_from((0, 0, 2_500, -7_200_000, 50_000)))
    client_now = recv_ms + skew
    out: dict[str, Any] = {
        "v": 1,
        "app": app,
        "sid": sid,
        "events": draw(st.lists(event(config, client_now), max_size=shape.events_per_beacon)),
    }
    sent = draw(st.sampled_from(("now", "now", "now", "absent", 0, "float")))
    if sent == "now":
        out["sent"] = client_now
    elif sent == "float":
        out["sent"] = client_now + 0.5
    elif sent == 0:
        out["sent"] = 0
    if draw(st.booleans()):
        out["page"] = {"url": draw(st.sampled_from(URLS))}
    if draw(st.integers(0, 3)) == 0:
        out["user"] = draw(st.sampled_from(("daniel.adams@example.com", "ashley", "")))
    if draw(st.integers(0, 3)) == 0:
        out["vid"] = draw(st.sampled_from(("visitor-7c1", "visitor-9", "")))
    if draw(st.integers(0, 3)) == 0:
        out["device"] = {"screen": draw(st.sampled_from(("1920x1080", "390x844", "")))}
    if draw(st.integers(0, 19)) == 0:
        out["synthetic"] = True
    if draw(st.integers(0, 79)) == 0:
        out.update(draw(st.sampled_from(BAD_BEACON_CHANGES)))
    if draw(st.integers(0, 149)) == 0:
        return draw(st.sampled_from((5, "beacon", [out], None)))
    return out


@st.composite
def payload(draw: st.DrawFn, config: dict[str, Any], recv_ms: int, shape: Shape) -> bytes:
    if draw(st.integers(0, 79)) == 0:
        return draw(st.sampled_from((b"", b"  \n", b"{", b"[]", b"\xff\xfe", b"null", b"[1]")))
    beacons = draw(st.lists(beacon(config, recv_ms, shape), min_size=1, max_size=3))
    texts = [json.dumps(b) for b in beacons]
    if draw(st.integers(0, 59)) == 0:  # a duplicate key: the request is bad_json
        where = draw(st.integers(0, len(texts) - 1))
        if texts[where].startswith("{"):
            keys = draw(st.sampled_from(DUPLICATE_KEYS))
            texts[where] = "{" + keys + ", " + texts[where][1:]
    form = draw(st.sampled_from(("object", "array", "ndjson", "ndjson", "run-on")))
    if form == "object" and len(texts) == 1:
        return texts[0].encode()
    if form == "ndjson":
        return "\n".join(texts).encode() + b"\n"
    if form == "run-on":  # §1: values separated by optional whitespace, not only newlines
        return draw(st.sampled_from(("", " ", "\r\n\n"))).join(texts).encode()
    return ("[" + ", ".join(texts) + "]").encode()


@st.composite
def record(draw: st.DrawFn, config: dict[str, Any], recv_ms: int, shape: Shape) -> bytes:
    if draw(st.integers(0, 99)) == 0:
        bad = draw(st.sampled_from(("version", "short_header", "ip_overflow")))
        body = frame(b"{}", recv_ms=recv_ms)[4:]
        if bad == "version":
            return raw_record(b"\x02" + body[1:])
        if bad == "short_header":
            return raw_record(body[:9])
        return raw_record(body[:10] + b"\xff\x00" + body[12:])
    return frame(
        draw(payload(config, recv_ms, shape)),
        recv_ms=recv_ms,
        ip=draw(st.sampled_from(IPS)),
        user_agent=draw(st.sampled_from(USER_AGENTS)),
        flags=FLAG_DNT if draw(st.integers(0, 9)) == 0 else 0,
    )


GAPS = st.sampled_from((0, 0, 1, 1_000, 59_999, 60_000, 60_001, 200_000)) | st.integers(0, 40_000)
STEADY_GAPS = st.sampled_from((0, 1, 20_000, 45_000, 59_999)) | st.integers(0, 59_000)


@st.composite
def stream(draw: st.DrawFn, quiet: bool = False) -> tuple[dict[str, Any], list[Step]]:
    """Settings and steps; `quiet` streams send one event per beacon with no gap reaching the
    timeout, so their sessions live until the duration or action limit."""
    config = draw(core_settings())
    # Few keys per stream and, in some streams, quiet beacons: one key then sees many beacons
    # before an action limit or an end event, so the duration limit is reached too.
    shape = Shape(
        keys=draw(
            st.lists(st.sampled_from(ALL_KEYS), min_size=1, max_size=1 if quiet else 3, unique=True)
        ),
        events_per_beacon=1 if quiet else draw(st.sampled_from((1, 2, 7))),
        steady=quiet or draw(st.booleans()),
    )
    now = RECV_MS
    steps: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(6 if quiet else 1, 12))):
        records = []
        for _ in range(draw(st.integers(1, 6))):
            now += draw(STEADY_GAPS if shape.steady else GAPS)
            # Receive times from several fronts may come slightly out of order.
            jitter = -draw(st.sampled_from((0, 0, 0, 0, 1, 700)))
            records.append(draw(record(config, now + jitter, shape)))
        if draw(st.integers(0, 29)) == 0:  # a length prefix that runs past the batch
            records.append(frame(b"{}")[:-1])
        steps.append(("batch", b"".join(records), now))
        roll = draw(st.integers(0, 9))
        if roll < 3:
            extra = (0, 1_000, 59_999) if shape.steady else (0, 59_999, 60_000, 400_000)
            steps.append(("flush", now + draw(st.sampled_from(extra))))
        elif roll == 3:
            steps.append(("live",))
    steps.append(("flush", now + 10**9))
    return config, steps


@st.composite
def requests(draw: st.DrawFn) -> tuple[list[tuple[int, str, str, int, bytes]], int, bool]:
    config = {"max_events": draw(st.sampled_from([10, 500]))}
    out = []
    for i in range(draw(st.integers(0, 6))):
        recv_ms = RECV_MS + i
        out.append(
            (
                recv_ms,
                draw(st.sampled_from(IPS)),
                draw(st.sampled_from(USER_AGENTS)),
                draw(st.sampled_from((0, FLAG_DNT))),
                draw(payload(config, recv_ms, ANY_SHAPE)),
            )
        )
    return out, config["max_events"], draw(st.booleans())
