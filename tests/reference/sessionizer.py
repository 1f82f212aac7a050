"""The executable specification of the sessionizer core: docs/sessionizer.md in plain Python.

Every rule of the doc is implemented here once, as directly as possible, so that a property test
(tests/test_core_equivalence.py) can prove the Rust core (`collector._core`) produces the same
closed sessions. Readability beats speed; each function names the section it implements.

Two things are *not* session rules and come from the Rust library on purpose (the doc documents
them as library functions): user-agent parsing (`parse_user_agent`) and IP masking (`mask_ip`).

Readings of the doc that it leaves open are marked `Reading:`; the final report lists them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import struct
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

# --------------------------------------------------------------------------------------------
# Section 8: settings
# --------------------------------------------------------------------------------------------

ACTION_TYPES = ("load", "xhr", "custom")
ERROR_KINDS = ("js", "request", "custom")
APDEX_CATEGORIES = ("satisfied", "tolerating", "frustrated")

DEFAULT_SETTINGS: dict[str, Any] = {
    "timeout_ms": 1_800_000,
    "max_duration_ms": 21_600_000,
    "max_actions": 200,
    "max_open_sessions": 500_000,
    "max_events": 500,
    "apdex": {kind: {"t": 3000, "f": 12000} for kind in ACTION_TYPES},
    "key_actions": {},
    "frustrated_ratio": 0.30,
    "satisfied_ratio": 0.50,
    "last_action_rule": True,
    "weights": {"action": 3, "error": 1, "rage_click": 2},
    "mask_ip": True,
    "scrub_pii": True,
    "scrub_patterns": [],
    "ua_cache_size": 4096,
}


def _is_number(value: Any) -> bool:
    """A JSON number (int or float); JSON booleans are not numbers."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    """A JSON integer literal (`3`, not `3.0`): for settings."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_integral(value: Any) -> bool:
    """A JSON number with an integer value. Reading: `200.0` is the integer 200 in an event."""
    return _is_number(value) and float(value).is_integer()


def _thresholds(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, Mapping) or set(value) != {"t", "f"}:
        raise ValueError(f"{where} must be {{t, f}}, got {value!r}")
    t, f = value["t"], value["f"]
    if not (_is_number(t) and _is_number(f) and 0 <= t <= f):
        raise ValueError(f"{where} needs numbers 0 <= t <= f, got {value!r}")
    return {"t": t, "f": f}


def make_settings(settings: Mapping[str, Any] | Any | None = None) -> dict[str, Any]:
    """Defaults overridden by a dict or a dataclass; unknown keys and bad values → ValueError."""
    if settings is None:
        given: dict[str, Any] = {}
    elif dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        given = dataclasses.asdict(settings)
    elif isinstance(settings, Mapping):
        given = dict(settings)
    else:
        raise ValueError(f"settings must be a dict or a dataclass, got {type(settings).__name__}")
    unknown = sorted(set(given) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")

    out = json.loads(json.dumps(DEFAULT_SETTINGS))
    for key in ("timeout_ms", "max_duration_ms", "max_actions", "max_open_sessions", "max_events",
                "ua_cache_size"):
        if key in given:
            if not _is_int(given[key]) or given[key] < 1:
                raise ValueError(f"{key} must be a positive integer, got {given[key]!r}")
            out[key] = given[key]
    for key in ("frustrated_ratio", "satisfied_ratio"):
        if key in given:
            if not _is_number(given[key]) or not 0 <= given[key] <= 1:
                raise ValueError(f"{key} must be a number in 0..1, got {given[key]!r}")
            out[key] = given[key]
    for key in ("last_action_rule", "mask_ip", "scrub_pii"):
        if key in given:
            if not isinstance(given[key], bool):
                raise ValueError(f"{key} must be a boolean, got {given[key]!r}")
            out[key] = given[key]
    if "apdex" in given:
        if not isinstance(given["apdex"], Mapping):
            raise ValueError("apdex must map an action type to {t, f}")
        for kind, value in given["apdex"].items():
            if kind not in ACTION_TYPES:
                raise ValueError(f"apdex: unknown action type {kind!r}")
            out["apdex"][kind] = _thresholds(value, f"apdex.{kind}")
    if "key_actions" in given:
        if not isinstance(given["key_actions"], Mapping):
            raise ValueError("key_actions must map app -> action name -> {t, f}")
        for app, names in given["key_actions"].items():
            if not isinstance(names, Mapping):
                raise ValueError(f"key_actions.{app} must map action name -> {{t, f}}")
            out["key_actions"][app] = {
                name: _thresholds(value, f"key_actions.{app}.{name}")
                for name, value in names.items()
            }
    if "weights" in given:
        if not isinstance(given["weights"], Mapping):
            raise ValueError("weights must be {action, error, rage_click}")
        for key, value in given["weights"].items():
            if key not in out["weights"]:
                raise ValueError(f"weights: unknown element {key!r}")
            if not _is_number(value) or value < 0:
                raise ValueError(f"weights.{key} must be a number >= 0, got {value!r}")
            out["weights"][key] = value
    if "scrub_patterns" in given:
        patterns = given["scrub_patterns"]
        if isinstance(patterns, str | bytes) or not all(isinstance(p, str) for p in patterns):
            raise ValueError("scrub_patterns must be a list of regular expressions")
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"scrub_patterns: bad regular expression {pattern!r}") from exc
        out["scrub_patterns"] = list(patterns)
    return out


# --------------------------------------------------------------------------------------------
# Section 1: WAL records
# --------------------------------------------------------------------------------------------

RECORD_VERSION = 1
FLAG_DNT = 0x01
_LEN = struct.Struct("<I")
_HEAD = struct.Struct("<BBQH")  # version, flags, recv_ms, ip_len
_U16 = struct.Struct("<H")


@dataclasses.dataclass(frozen=True)
class Record:
    flags: int
    recv_ms: int
    ip: str
    user_agent: str
    payload: bytes


def parse_records(batch: bytes) -> Iterator[Record | None]:
    """Yield each framed record of `batch`, or None for one that is cut short / malformed.

    A length prefix that runs past the end of the batch consumes the rest of it (there is no way
    to find the next record), so it yields one None and stops.
    """
    pos = 0
    while pos < len(batch):
        if len(batch) - pos < _LEN.size:
            yield None
            return
        (length,) = _LEN.unpack_from(batch, pos)
        pos += _LEN.size
        if length > len(batch) - pos:
            yield None
            return
        yield decode_record(batch[pos : pos + length])
        pos += length


def decode_record(body: bytes) -> Record | None:
    if len(body) < _HEAD.size:
        return None
    version, flags, recv_ms, ip_len = _HEAD.unpack_from(body, 0)
    pos = _HEAD.size
    if version != RECORD_VERSION or len(body) < pos + ip_len + _U16.size:
        return None
    ip_bytes = body[pos : pos + ip_len]
    pos += ip_len
    (ua_len,) = _U16.unpack_from(body, pos)
    pos += _U16.size
    if len(body) < pos + ua_len:
        return None
    ua_bytes = body[pos : pos + ua_len]
    pos += ua_len
    try:
        # Reading: ip and user agent are declared utf-8; invalid utf-8 makes the record bad.
        ip, ua = ip_bytes.decode("utf-8"), ua_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return Record(flags, recv_ms, ip, ua, body[pos:])


def encode_record(recv_ms: int, ip: str, user_agent: str, flags: int, payload: bytes) -> bytes:
    ip_b, ua_b = ip.encode("utf-8"), user_agent.encode("utf-8")
    body = (
        _HEAD.pack(RECORD_VERSION, flags, recv_ms, len(ip_b))
        + ip_b
        + _U16.pack(len(ua_b))
        + ua_b
        + payload
    )
    return _LEN.pack(len(body)) + body


# --------------------------------------------------------------------------------------------
# Section 2: request validation (all or nothing)
# --------------------------------------------------------------------------------------------

_APP = re.compile(r"[A-Za-z0-9._-]{1,64}")
_JSON_WS = " \t\r\n"
_AFTER_SCALAR = _JSON_WS + '"[]{},:'


class Rejected(Exception):
    def __init__(self, reason: str, beacon: int = 0, message: str = "") -> None:
        super().__init__(reason)
        self.reason, self.beacon, self.message = reason, beacon, message or reason


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def _check_no_surrogates(value: Any) -> None:
    """Strict JSON has no lone surrogates (Python's json lets `\\ud800` through); raises
    UnicodeEncodeError."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, list):
        for item in value:
            _check_no_surrogates(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            key.encode("utf-8")
            _check_no_surrogates(item)


class JsonObject(dict):
    """A decoded JSON object that remembers which keys appeared twice (the last value wins)."""

    duplicates: frozenset[str] = frozenset()


def _object(pairs: list[tuple[str, Any]]) -> JsonObject:
    obj = JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.duplicates = frozenset(k for k, _ in pairs if k in seen or seen.add(k))
    return obj


# §1: the keys the core reads, whose duplicates make the request bad_json. Reading: for an
# event, the fields of every event type (a load with `value` twice is refused too).
BEACON_KEYS = frozenset(
    ("v", "app", "sid", "vid", "sent", "user", "synthetic", "page", "device", "events")
)
PAGE_KEYS, DEVICE_KEYS = frozenset(("url",)), frozenset(("screen",))
EVENT_KEYS = frozenset(
    ("type", "start", "dur", "name", "url", "method", "status", "traceparent", "timing",
     "resources", "kind", "message", "stack", "value", "target", "count", "user", "key",
     "reason")
)  # fmt: skip


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object, parse_constant=_reject_constant, parse_float=_finite_float
)


def _has_duplicate_key(beacon: Any) -> bool:
    """§1: a duplicate of a key the core reads in a beacon, its page, its device or one of its
    events."""
    if not isinstance(beacon, dict):
        return False
    events = beacon.get("events")
    parts = [(beacon, BEACON_KEYS), (beacon.get("page"), PAGE_KEYS)]
    parts += [(beacon.get("device"), DEVICE_KEYS)]
    parts += [(event, EVENT_KEYS) for event in (events if isinstance(events, list) else [events])]
    return any(isinstance(part, JsonObject) and part.duplicates & keys for part, keys in parts)


def _decode_beacons(payload: bytes) -> list[Any]:
    """§1: a sequence of JSON values separated by optional whitespace; exactly one array holds
    the beacons, else every value is one beacon. A bad value is `bad_json` at its index."""
    try:
        text = payload.decode("utf-8")
        suspicious = "\\u" in text  # an escaped lone surrogate is possible
    except UnicodeDecodeError:
        # Undecodable bytes become lone surrogates, so they fail where they are, as in a
        # strict UTF-8 parser.
        text, suspicious = payload.decode("utf-8", errors="surrogateescape"), True
    values: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in _JSON_WS:
            pos += 1
        if pos == len(text):
            break
        start = pos
        try:
            value, pos = _DECODER.raw_decode(text, pos)
            if suspicious:
                _check_no_surrogates(value)
        except (ValueError, UnicodeEncodeError) as exc:
            raise Rejected("bad_json", len(values), f"not JSON: {exc}") from exc
        # Reading (as serde_json's value stream): a number, true, false or null must be followed
        # by whitespace, a structural character or the end: `5null` is not two values.
        if text[start] not in '[{"' and pos < len(text) and text[pos] not in _AFTER_SCALAR:
            raise Rejected("bad_json", len(values), "no separator after a value")
        items = value if isinstance(value, list) else [value]
        if any(_has_duplicate_key(item) for item in items):
            raise Rejected("bad_json", len(values), "a duplicate key")
        values.append(value)
    if not values:
        raise Rejected("bad_json", 0, "payload is empty")
    if len(values) == 1 and isinstance(values[0], list):
        if not values[0]:
            raise Rejected("empty", 0, "an array with no beacons")
        return values[0]
    return values


def _present(beacon: Mapping[str, Any], key: str) -> bool:
    # §1: a JSON null counts as an absent field (everywhere).
    return beacon.get(key) is not None


def validate_request(payload: bytes, max_events: int) -> list[dict[str, Any]]:
    """The accepted beacons of one request, or `Rejected` with the first reason found.

    Reading: beacons are checked in order, each against the table's rows in order, and
    `too_many_events` is found at the beacon whose events make the running total too large.
    """
    beacons = _decode_beacons(payload)
    total_events = 0
    for index, beacon in enumerate(beacons):
        if not isinstance(beacon, dict):
            raise Rejected("not_object", index, "a beacon is not an object")
        if _present(beacon, "v") and not (_is_number(beacon["v"]) and beacon["v"] == 1):
            raise Rejected("bad_version", index, f"unsupported version {beacon['v']!r}")
        app = beacon.get("app")
        if not isinstance(app, str) or not _APP.fullmatch(app):
            raise Rejected("bad_app", index, "app must match [A-Za-z0-9._-]{1,64}")
        sid = beacon.get("sid")
        if not (
            isinstance(sid, str) and 8 <= len(sid) <= 128 and all("!" <= c <= "~" for c in sid)
        ):
            raise Rejected("bad_sid", index, "sid must be 8-128 printable ASCII characters")
        events = beacon.get("events")
        if events is not None and not isinstance(events, list):
            raise Rejected("bad_events", index, "events must be an array")
        total_events += len(events or ())
        if total_events > max_events:
            raise Rejected("too_many_events", index, f"more than {max_events} events")
    return beacons


def count_events(beacons: list[dict[str, Any]]) -> int:
    return sum(len(beacon.get("events") or ()) for beacon in beacons)


def prepare(
    requests: list[tuple[int, str, str, int, bytes]],
    max_events: int = 500,
    mask_ip: bool = True,
) -> tuple[bytes, list[tuple[str, str] | None], int]:
    """Validate requests; return the WAL value of the accepted ones, verdicts, accepted events."""
    wal = bytearray()
    verdicts: list[tuple[str, str] | None] = []
    events = 0
    for recv_ms, ip, user_agent, flags, body in requests:
        try:
            beacons = validate_request(body, max_events)
        except Rejected as rejected:
            verdicts.append((rejected.reason, rejected.message))
            continue
        verdicts.append(None)
        events += count_events(beacons)
        stored_ip = (_core().mask_ip(ip) or "") if mask_ip else ip
        wal += encode_record(recv_ms, stored_ip, user_agent, flags, body)
    return bytes(wal), verdicts, events


# --------------------------------------------------------------------------------------------
# Section 3: event fields (and PII scrubbing of section 6, which happens at parse time)
# --------------------------------------------------------------------------------------------

LIMITS = {
    "name": 2048, "url": 2048, "page": 2048, "message": 1024, "stack": 8192, "user": 256,
    "property_value": 512, "target": 256, "screen": 256, "method": 256, "vid": 256,
    "reason": 256, "timing_key": 64, "initiator": 64,
}  # fmt: skip
MAX_START = 10**13
MAX_DUR = 86_400_000
MAX_RESOURCES = 300
MAX_COUNT = 4_294_967_295
MAX_PROPERTY_KEY = 64
KNOWN_TYPES = (*ACTION_TYPES, "error", "vital", "rage_click", "identify", "property", "end")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+(@|%40)[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_DIGITS = re.compile(r"[0-9](?:[ -]?[0-9]){8,}")
MASKED = "<masked>"


class BadEvent(Exception):
    pass


def truncate(text: str, limit: int) -> str:
    """Truncate to `limit` Unicode scalar values (Python str indexes by code point)."""
    return text[:limit]


class Scrubber:
    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.enabled = settings["scrub_pii"]
        self.patterns = [re.compile(p) for p in settings["scrub_patterns"]]

    def __call__(self, text: str, limit: int) -> str:
        # Reading: scrub, then truncate, so no PII survives half-cut and the limit still holds.
        if self.enabled:
            text = _EMAIL.sub(MASKED, text)
            text = _DIGITS.sub(MASKED, text)
            for pattern in self.patterns:
                text = pattern.sub(MASKED, text)
        return truncate(text, limit)


def _opt(raw: Mapping[str, Any], key: str, check: Any) -> Any:
    """The optional field `key`: None when absent, BadEvent when of the wrong type/range."""
    value = raw.get(key)
    if value is None:
        return None
    if not check(value):
        raise BadEvent(key)
    return value


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def parse_event(raw: Any, scrub: Scrubber) -> dict[str, Any]:
    """One event as a plain dict (`start` still the client time), or BadEvent / unknown type.

    Raises `BadEvent("unknown_type")` for a string type the core does not know.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise BadEvent("bad_event")
    kind = raw["type"]
    # Reading: `start` belongs to every event, so a bad one is a bad_event even when the type
    # is unknown; `dur` only means something for actions and is checked only there.
    event: dict[str, Any] = {
        "type": kind,
        "start": _opt(raw, "start", lambda v: _is_number(v) and 0 <= v <= MAX_START),
    }
    if kind not in KNOWN_TYPES:
        raise BadEvent("unknown_type")
    if kind in ACTION_TYPES:
        event["dur"] = _opt(raw, "dur", lambda v: _is_number(v) and 0 <= v <= MAX_DUR) or 0
        url = _opt(raw, "url", _is_str)
        url = None if url is None else scrub(url, LIMITS["url"])
        name = _opt(raw, "name", _is_str)
        if name is not None:
            name = scrub(name, LIMITS["name"])
        else:
            name = url if url is not None else kind
        method = _opt(raw, "method", _is_str)
        timing = _opt(raw, "timing", lambda v: isinstance(v, dict)) or {}
        resources = _opt(raw, "resources", lambda v: isinstance(v, list)) or []
        traceparent = _opt(raw, "traceparent", _is_str)
        trace_id = None
        match = _TRACEPARENT.fullmatch(traceparent) if traceparent is not None else None
        if match and match[1] != "0" * 32 and match[2] != "0" * 16:
            trace_id = match[1]
        else:
            traceparent = None
        event.update(
            name=name,
            url=url,
            method=None if method is None else truncate(method, LIMITS["method"]),
            status=_opt(raw, "status", lambda v: _is_integral(v) and 0 <= v <= 999),
            timings={
                truncate(key, LIMITS["timing_key"]): value
                for key, value in timing.items()
                if _is_number(value)
            },
            # Reading: non-object entries, and entries with a duplicate of a field the core
            # reads, are skipped; the first 300 of the others are kept.
            resources=[parse_resource(r, scrub) for r in resources if _usable_resource(r)][
                :MAX_RESOURCES
            ],
            traceparent=traceparent,
            trace_id=trace_id,
        )
    elif kind == "error":
        error_kind = raw.get("kind")  # anything else, of any type → custom
        message = _opt(raw, "message", _is_str)
        stack = _opt(raw, "stack", _is_str)
        event.update(
            kind=error_kind if error_kind in ERROR_KINDS else "custom",
            message=None if message is None else scrub(message, LIMITS["message"]),
            stack=None if stack is None else truncate(stack, LIMITS["stack"]),
        )
    elif kind == "vital":
        name = raw.get("name")
        value = raw.get("value")
        if not isinstance(name, str) or not (_is_number(value) and value >= 0):
            raise BadEvent("bad_event")
        # Reading: upper-cased, then truncated (upper-casing can lengthen: ß → SS).
        event.update(name=truncate(name.upper(), LIMITS["name"]), value=value)
    elif kind == "rage_click":
        target = _opt(raw, "target", _is_str)
        count = _opt(raw, "count", lambda v: _is_integral(v) and 1 <= v <= MAX_COUNT)
        event.update(
            target=None if target is None else truncate(target, LIMITS["target"]),
            count=3 if count is None else count,
        )
    elif kind == "identify":
        user = raw.get("user")
        if not isinstance(user, str) or not user:
            raise BadEvent("bad_event")
        event.update(user=truncate(user, LIMITS["user"]))
    elif kind == "property":
        key, value = raw.get("key"), raw.get("value")
        if not (isinstance(key, str) and 1 <= len(key) <= MAX_PROPERTY_KEY):
            raise BadEvent("bad_event")
        if not isinstance(value, str):
            raise BadEvent("bad_event")
        event.update(key=key, value=truncate(value, LIMITS["property_value"]))
    else:  # end
        reason = _opt(raw, "reason", _is_str)
        event.update(reason=None if reason is None else truncate(reason, LIMITS["reason"]))
    return event


RESOURCE_KEYS = frozenset(("url", "initiator", "start", "dur", "status", "size"))


def _usable_resource(raw: Any) -> bool:
    duplicates = raw.duplicates if isinstance(raw, JsonObject) else frozenset()
    return isinstance(raw, dict) and not duplicates & RESOURCE_KEYS


def parse_resource(raw: Mapping[str, Any], scrub: Scrubber) -> dict[str, Any]:
    """A waterfall entry keeps only the documented fields of the right type."""
    out: dict[str, Any] = {}
    if isinstance(raw.get("url"), str):
        out["url"] = scrub(raw["url"], LIMITS["url"])
    if isinstance(raw.get("initiator"), str):
        out["initiator"] = truncate(raw["initiator"], LIMITS["initiator"])
    for key in ("start", "dur", "size"):
        if _is_number(raw.get(key)):
            out[key] = raw[key]
    if _is_integral(raw.get("status")) and 0 <= raw["status"] <= 999:
        out["status"] = raw["status"]
    return out


@dataclasses.dataclass
class Beacon:
    """The beacon-level fields of section 3 plus its usable events (client times)."""

    app: str
    sid: str
    user: str | None
    vid: str | None
    sent: float | None
    page: str | None
    screen: str | None
    synthetic: bool
    events: list[dict[str, Any]]


def parse_beacon(raw: dict[str, Any], scrub: Scrubber, dropped: Counter[str]) -> Beacon:
    events = []
    for raw_event in raw.get("events") or ():
        try:
            events.append(parse_event(raw_event, scrub))
        except BadEvent as bad:
            dropped["unknown_type" if bad.args[0] == "unknown_type" else "bad_event"] += 1
    page, device = raw.get("page"), raw.get("device")
    page_url = page.get("url") if isinstance(page, dict) else None
    screen = device.get("screen") if isinstance(device, dict) else None
    user, vid, sent = raw.get("user"), raw.get("vid"), raw.get("sent")
    return Beacon(
        app=raw["app"],
        sid=raw["sid"],
        user=truncate(user, LIMITS["user"]) if isinstance(user, str) and user else None,
        vid=truncate(vid, LIMITS["vid"]) if isinstance(vid, str) else None,
        sent=sent if _is_number(sent) and sent > 0 else None,
        page=scrub(page_url, LIMITS["page"]) if isinstance(page_url, str) else None,
        screen=truncate(screen, LIMITS["screen"]) if isinstance(screen, str) else None,
        synthetic=raw.get("synthetic") is True,
        events=events,
    )


# --------------------------------------------------------------------------------------------
# Section 4: time correction
# --------------------------------------------------------------------------------------------


def correct_times(beacon: Beacon, recv_ms: int, max_duration_ms: int) -> None:
    """Set each event's server time `t` (in place)."""
    starts = [e["start"] for e in beacon.events if e["start"] is not None]
    if beacon.sent is not None:
        offset = recv_ms - beacon.sent
    elif starts:
        # Reading: only usable (not dropped) events count here.
        offset = recv_ms - max(starts)
    else:
        offset = 0
    for event in beacon.events:
        if event["start"] is None:
            event["t"] = recv_ms
        else:
            # Reading: server times are whole milliseconds (floor).
            t = math.floor(event["start"] + offset)
            event["t"] = min(max(t, recv_ms - max_duration_ms), recv_ms)


# --------------------------------------------------------------------------------------------
# Sections 5-7: sessions, finalizing, output
# --------------------------------------------------------------------------------------------

VITAL_THRESHOLDS = {
    "LCP": (2500, 4000), "INP": (200, 500), "CLS": (0.1, 0.25), "FCP": (1800, 3000),
    "TTFB": (800, 1800),
}  # fmt: skip


def vital_rating(name: str, value: float) -> str | None:
    if name not in VITAL_THRESHOLDS:
        return None
    good, poor = VITAL_THRESHOLDS[name]
    return "good" if value <= good else "needs-improvement" if value <= poor else "poor"


def session_id(app: str, sid: str, part: int, first_recv: int) -> str:
    return hashlib.sha256(f"{app}\n{sid}\n{part}\n{first_recv}".encode()).hexdigest()[:32]


@dataclasses.dataclass
class ClosedSession:
    session_id: str
    app: str
    user_tag: str | None
    start_ms: int
    end_ms: int
    end_reason: str | None
    summary: bytes
    detail: bytes


@dataclasses.dataclass
class IngestResult:
    closed: list[ClosedSession] = dataclasses.field(default_factory=list)
    rejected: list[tuple[int, int, str]] = dataclasses.field(default_factory=list)
    beacons: int = 0
    events: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    actions: list[tuple[str, str, str, int]] = dataclasses.field(default_factory=list)
    errors: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)
    vitals: list[tuple[str, str, float]] = dataclasses.field(default_factory=list)


def _new_session(app: str, sid: str, part: int, recv_ms: int) -> dict[str, Any]:
    """The state of one open session: plain JSON-able data, so checkpoints are json.dumps."""
    return {
        "app": app, "sid": sid, "part": part, "first_recv": recv_ms, "last_recv": recv_ms,
        "actions": [], "errors": [], "vitals": [], "rage_clicks": [], "end": None,
        "user_tag": None, "user_tags": [], "visitor_id": None, "screen": None, "ip": None,
        "user_agent": None, "synthetic": False, "properties": {},
    }  # fmt: skip


class Sessionizer:
    """Same public shape as `collector._core.Sessionizer`."""

    MAX_PROPERTIES = 50
    MAX_ACTION_NAMES = 100

    def __init__(self, settings: Mapping[str, Any] | Any | None = None) -> None:
        self.settings = make_settings(settings)
        self._scrub = Scrubber(self.settings)
        self._ua_cache: dict[str, dict[str, Any]] = {}
        self._ip_cache: dict[str, str] = {}
        self._open: dict[tuple[str, str], dict[str, Any]] = {}
        self._tombstones: dict[tuple[str, str], tuple[int, int]] = {}  # key -> (part, last_recv)
        self._changed: set[tuple[str, str]] = set()

    # ---- public API -------------------------------------------------------------------------

    def ingest(self, batch: bytes, now_ms: int) -> IngestResult:
        """§5: apply the records in order, then do exactly what `flush(now_ms)` does."""
        result = IngestResult()
        dropped: Counter[str] = Counter()
        for index, record in enumerate(parse_records(batch)):
            if record is None:
                result.rejected.append((index, 0, "bad_record"))
                continue
            try:
                raw_beacons = validate_request(record.payload, self.settings["max_events"])
            except Rejected as rejected:
                result.rejected.append((index, rejected.beacon, rejected.reason))
                continue
            for raw in raw_beacons:
                beacon = parse_beacon(raw, self._scrub, dropped)
                correct_times(beacon, record.recv_ms, self.settings["max_duration_ms"])
                result.beacons += 1
                result.events += len(beacon.events)
                self._apply(beacon, record, result.closed)
        result.dropped = dict(dropped)
        result.closed += self._close_due(now_ms)
        self._add_metrics(result)
        return result

    def flush(self, now_ms: int) -> IngestResult:
        result = IngestResult(closed=self._close_due(now_ms))
        self._add_metrics(result)
        return result

    def _close_due(self, now_ms: int) -> list[ClosedSession]:
        """Close the sessions due at `now_ms` (sorted by session_id), drop old tombstones."""
        closed: list[ClosedSession] = []
        timeout, max_duration = self.settings["timeout_ms"], self.settings["max_duration_ms"]
        for key, session in list(self._open.items()):
            if now_ms - session["last_recv"] >= timeout:
                self._close(key, "timeout", closed)
            elif now_ms - session["first_recv"] >= max_duration:
                self._close(key, "duration_limit", closed)
        closed.sort(key=lambda c: c.session_id)
        # Reading: tombstones are dropped after this flush's closes (theirs included).
        self._tombstones = {
            key: (part, last_recv)
            for key, (part, last_recv) in self._tombstones.items()
            if now_ms - last_recv < timeout
        }
        return closed

    def live(self) -> list[ClosedSession]:
        """Open sessions changed since the last call: summary (live: true) and detail."""
        out = [self._finalize(self._open[key], None) for key in self._changed if key in self._open]
        self._changed.clear()
        return sorted(out, key=lambda closed: closed.session_id)

    def checkpoint(self) -> bytes:
        state = {
            "version": 1,
            "open": [session for session in self._open.values()],
            "tombstones": [[app, sid, part, last] for (app, sid), (part, last) in
                           self._tombstones.items()],
        }  # fmt: skip
        return json.dumps(state).encode()

    def restore(self, state: bytes) -> None:
        try:
            data = json.loads(bytes(state).decode("utf-8"))
            if data.get("version") != 1:
                raise ValueError("unknown checkpoint version")
            opened = {(s["app"], s["sid"]): s for s in data["open"]}
            tombstones = {(a, s): (p, last) for a, s, p, last in data["tombstones"]}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a sessionizer checkpoint: {exc}") from exc
        # A restored process has published nothing yet: every open session counts as changed.
        self._open, self._tombstones, self._changed = opened, tombstones, set(opened)

    def open_count(self) -> int:
        return len(self._open)

    # ---- section 5: sessions and closing rules -----------------------------------------------

    def _apply(self, beacon: Beacon, record: Record, closed: list[ClosedSession]) -> None:
        key = (beacon.app, beacon.sid)
        r = record.recv_ms
        session = self._open.get(key)
        if session is not None:
            if r - session["last_recv"] >= self.settings["timeout_ms"]:
                self._close(key, "timeout", closed)
            elif r - session["first_recv"] >= self.settings["max_duration_ms"]:
                self._close(key, "duration_limit", closed)
        session = self._open.get(key) or self._open_session(key, r)
        session["last_recv"] = max(session["last_recv"], r)
        self._take_beacon_fields(session, beacon, record)
        self._changed.add(key)

        for event in beacon.events:
            if session is None:  # the beacon's `end` closed the previous part
                session = self._open_session(key, r)
                self._take_beacon_fields(session, beacon, record)
            if event["type"] in ACTION_TYPES:
                if len(session["actions"]) >= self.settings["max_actions"]:
                    self._close(key, "action_limit", closed)
                    session = self._open_session(key, r)
                    self._take_beacon_fields(session, beacon, record)
                session["actions"].append({**event, "page": beacon.page})
            elif event["type"] == "error":
                session["errors"].append(event)
            elif event["type"] == "vital":
                session["vitals"].append(event)
            elif event["type"] == "rage_click":
                session["rage_clicks"].append(event)
            elif event["type"] == "identify":
                if not record.flags & FLAG_DNT:
                    self._set_user_tag(session, event["user"], r)
            elif event["type"] == "property":
                properties = session["properties"]
                if event["key"] in properties or len(properties) < self.MAX_PROPERTIES:
                    properties[event["key"]] = event["value"]
            else:  # end
                session["end"] = event
                self._close(key, "end_event", closed)
                session = None
        self._enforce_open_limit(closed)

    def _enforce_open_limit(self, closed: list[ClosedSession]) -> None:
        """§5: over `max_open_sessions`, close the least recently active 1 % (at least one),
        ordered by (last_recv, session_id)."""
        cap = self.settings["max_open_sessions"]
        if len(self._open) <= cap:
            return
        by_age = sorted(
            self._open.items(),
            key=lambda item: (
                item[1]["last_recv"],
                session_id(item[1]["app"], item[1]["sid"], item[1]["part"], item[1]["first_recv"]),
            ),
        )
        for key, _ in by_age[: max(1, cap // 100)]:
            self._close(key, "open_limit", closed)

    def _open_session(self, key: tuple[str, str], r: int) -> dict[str, Any]:
        """Open the next part of `key` at receive time `r` (part number from the tombstone)."""
        tombstone = self._tombstones.get(key)
        if tombstone is not None and r - tombstone[1] < self.settings["timeout_ms"]:
            part = tombstone[0] + 1
        else:
            part = 1
        session = _new_session(*key, part, r)
        self._open[key] = session
        self._changed.add(key)
        return session

    def _take_beacon_fields(self, session: dict, beacon: Beacon, record: Record) -> None:
        """The beacon-level fields: user tag, visitor, screen, ip, user agent, synthetic.

        Reading: a part opened in the middle of a beacon (action limit, events after `end`)
        takes the beacon-level fields too.
        """
        if beacon.user is not None and not record.flags & FLAG_DNT:
            self._set_user_tag(session, beacon.user, record.recv_ms)
        if beacon.vid:
            session["visitor_id"] = beacon.vid
        ip = self._mask_ip(record.ip)
        for field, value in (
            ("screen", beacon.screen), ("ip", ip), ("user_agent", record.user_agent),
        ):  # fmt: skip
            if not session[field] and value:
                session[field] = value
        session["synthetic"] = session["synthetic"] or beacon.synthetic

    def _set_user_tag(self, session: dict, tag: str, recv_ms: int) -> None:
        if session["user_tag"] != tag:
            session["user_tag"] = tag
            session["user_tags"].append({"tag": tag, "at": recv_ms})

    def _mask_ip(self, ip: str) -> str:
        # Reading: the sessionizer masks again when `mask_ip` is on (idempotent on masked IPs);
        # an unparsable IP is then dropped.
        if not self.settings["mask_ip"] or not ip:
            return ip
        if ip not in self._ip_cache:
            self._ip_cache[ip] = _core().mask_ip(ip) or ""
        return self._ip_cache[ip]

    def _close(self, key: tuple[str, str], reason: str, closed: list[ClosedSession]) -> None:
        session = self._open.pop(key)
        new = key not in self._tombstones
        self._tombstones[key] = (session["part"], session["last_recv"])
        cap = self.settings["max_open_sessions"]
        if new and len(self._tombstones) > cap:  # §5: tombstones are bounded too
            boundary = sorted(last for _, last in self._tombstones.values())[max(1, cap // 100) - 1]
            self._tombstones = {k: t for k, t in self._tombstones.items() if t[1] > boundary}
        self._changed.discard(key)
        closed.append(self._finalize(session, reason))

    # ---- section 6: finalizing ---------------------------------------------------------------

    def _category(self, app: str, action: dict, errors: list[dict]) -> str:
        thresholds = self.settings["key_actions"].get(app, {}).get(action["name"])
        if thresholds is None:
            thresholds = self.settings["apdex"][action["type"]]
        bad_error = any(error["kind"] in ("js", "request") for error in errors)
        bad_status = action["type"] == "xhr" and (action["status"] or 0) >= 400
        if bad_error or bad_status:
            return "frustrated"
        if action["dur"] <= thresholds["t"]:
            return "satisfied"
        if action["dur"] <= thresholds["f"]:
            return "tolerating"
        return "frustrated"

    def _ux_score(self, categories: list[str], n_errors: int, n_rage: int) -> str:
        weights = self.settings["weights"]
        sums = dict.fromkeys(APDEX_CATEGORIES, 0)
        for category in categories:
            sums[category] += weights["action"]
        sums["frustrated"] += weights["error"] * n_errors + weights["rage_click"] * n_rage
        total = sum(sums.values())
        frustrated, satisfied = sums["frustrated"], sums["satisfied"]
        if (total > 0 and frustrated / total >= self.settings["frustrated_ratio"]) or (
            self.settings["last_action_rule"] and categories and categories[-1] == "frustrated"
        ):
            return "frustrating"
        if frustrated == 0 and total > 0 and satisfied / total >= self.settings["satisfied_ratio"]:
            return "satisfying"
        return "tolerable"

    def _user_agent(self, ua: str) -> dict[str, Any]:
        if ua not in self._ua_cache:
            self._ua_cache[ua] = _core().parse_user_agent(ua)
        return self._ua_cache[ua]

    def _finalize(self, session: dict, end_reason: str | None) -> ClosedSession:
        """The summary and detail of a session; `end_reason` None for a live (open) one."""
        app = session["app"]
        # Actions by (t, arrival); the arrival order is the list order.
        actions = sorted(session["actions"], key=lambda action: action["t"])
        errors, vitals, rages = session["errors"], session["vitals"], session["rage_clicks"]
        end_event = session["end"]

        attached_to = [attach_error(actions, error["t"]) for error in errors]
        errors_of: list[list[dict]] = [[] for _ in actions]
        for error, index in zip(errors, attached_to, strict=True):
            if index is not None:
                errors_of[index].append(error)
        categories = [self._category(app, action, errors_of[i]) for i, action in enumerate(actions)]
        counts = dict.fromkeys(APDEX_CATEGORIES, 0)
        for category in categories:
            counts[category] += 1
        apdex = (counts["satisfied"] + counts["tolerating"] / 2) / len(actions) if actions else None

        others = [e["t"] for e in (*errors, *vitals, *rages)] + (
            [end_event["t"]] if end_event else []
        )
        starts = [a["t"] for a in actions] + others
        ends = [a["t"] + math.floor(a["dur"]) for a in actions] + others
        start = min(starts) if starts else session["first_recv"]
        end = max(ends) if ends else session["last_recv"]

        by_kind = dict.fromkeys(ERROR_KINDS, 0)
        for error in errors:
            by_kind[error["kind"]] += 1
        vitals_summary: dict[str, dict[str, Any]] = {}
        for vital in vitals:
            best = vitals_summary.get(vital["name"])
            if best is None or vital["value"] > best["value"]:
                vitals_summary[vital["name"]] = {
                    "value": vital["value"],
                    "rating": vital_rating(vital["name"], vital["value"]),
                }
        names: list[str] = []
        for action in actions:
            if action["name"] not in names and len(names) < self.MAX_ACTION_NAMES:
                names.append(action["name"])

        ua = self._user_agent(session["user_agent"] or "")
        user_type = "robot" if ua["robot"] else "synthetic" if session["synthetic"] else "real"
        sid = session_id(app, session["sid"], session["part"], session["first_recv"])
        summary = {
            "session_id": sid,
            "client_sid": session["sid"],
            "part": session["part"],
            "app": app,
            "user_tag": session["user_tag"],
            "visitor_id": session["visitor_id"],
            "start": start,
            "end": end,
            "duration_ms": end - start,
            "end_reason": end_reason,
            "live": end_reason is None,
            "ux_score": None
            if end_reason is None
            else self._ux_score(categories, len(errors), len(rages)),
            "apdex": apdex,
            "apdex_counts": counts,
            "action_count": len(actions),
            "error_count": len(errors),
            "errors_by_kind": by_kind,
            "has_error": bool(errors),
            "bounce": len(actions) <= 1,
            "entry_page": page_of(actions[0]) if actions else None,
            "exit_page": page_of(actions[-1]) if actions else None,
            # Reading: the number of rage-click events (not the sum of their counts).
            "rage_clicks": len(rages),
            "vitals": vitals_summary,
            "action_names": names,
            "browser": ua["browser"],
            "os": ua["os"],
            "device_type": ua["device_type"],
            "screen": session["screen"],
            "ip": session["ip"],
            "country": None,
            "user_type": user_type,
            "properties": session["properties"],
        }
        detail = {
            "actions": [
                {
                    "index": i,
                    "type": a["type"],
                    "name": a["name"],
                    "url": a["url"],
                    # Reading: the beacon's page.url as sent (no fallback to url).
                    "page": a["page"],
                    "method": a["method"],
                    "start": a["t"],
                    "duration": a["dur"],
                    "apdex": categories[i],
                    "status": a["status"],
                    "traceparent": a["traceparent"],
                    "trace_id": a["trace_id"],
                    "timings": a["timings"],
                    "resources": a["resources"],
                    "error_count": len(errors_of[i]),
                }
                for i, a in enumerate(actions)
            ],
            # Reading: errors, vitals and rage clicks stay in arrival order.
            "errors": [
                {
                    "kind": e["kind"],
                    "message": e["message"],
                    "stack": e["stack"],
                    "start": e["t"],
                    "action": index,
                }
                for e, index in zip(errors, attached_to, strict=True)
            ],
            "vitals": [
                {
                    "name": v["name"],
                    "value": v["value"],
                    "rating": vital_rating(v["name"], v["value"]),
                    "start": v["t"],
                }
                for v in vitals
            ],
            "rage_clicks": [
                {"target": r["target"], "count": r["count"], "start": r["t"]} for r in rages
            ],
            "user_tags": session["user_tags"],
            "properties": session["properties"],
            "end_detail": end_event["reason"] if end_event else None,
        }

        return ClosedSession(
            session_id=sid,
            app=app,
            user_tag=session["user_tag"],
            start_ms=start,
            end_ms=end,
            end_reason=end_reason,
            summary=_dumps(summary),
            detail=_dumps(detail),
        )

    # ---- section 7: metrics -------------------------------------------------------------------

    def _add_metrics(self, result: IngestResult) -> None:
        actions: Counter[tuple[str, str, str]] = Counter()
        errors: Counter[tuple[str, str]] = Counter()
        for closed in result.closed:
            detail = json.loads(closed.detail)
            for action in detail["actions"]:
                actions[(closed.app, action["type"], action["apdex"])] += 1
            for error in detail["errors"]:
                errors[(closed.app, error["kind"])] += 1
            for vital in detail["vitals"]:
                result.vitals.append((closed.app, vital["name"], vital["value"]))
        result.actions = [(*key, count) for key, count in actions.items()]
        result.errors = [(*key, count) for key, count in errors.items()]


def page_of(action: dict) -> str | None:
    """The page URL of an action: its beacon's page.url, else the action's url."""
    return action["page"] if action["page"] is not None else action["url"]


def attach_error(actions: list[dict], t: float) -> int | None:
    """Index of the action an error at `t` belongs to (`actions` sorted by (t, arrival))."""
    containing = [i for i, a in enumerate(actions) if a["t"] <= t <= a["t"] + a["dur"]]
    if containing:
        return containing[-1]
    before = [i for i, a in enumerate(actions) if a["t"] <= t]
    if before:
        return before[-1]
    return 0 if actions else None


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _core() -> Any:
    """The Rust library functions the reference borrows (UA parsing, IP masking)."""
    from collector import _core

    return _core
