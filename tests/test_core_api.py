"""The Python surface of the Rust core `collector._core` (collector/_core.pyi)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import _core
from tests.reference.framing import (
    CHROME_UA,
    FLAG_DNT,
    GOOGLEBOT_UA,
    IPAD_UA,
    IPHONE_UA,
    RECV_MS,
    SID,
    beacon,
    custom,
    end,
    error,
    frame,
    load,
    payload_bytes,
    prop,
    rage_click,
    record_headers,
    vital,
    xhr,
)
from tests.reference.sessionizer import parse_records

MINUTE = 60_000

# ---- settings -------------------------------------------------------------------------------


def closes_after(sessionizer: Any, idle_ms: int) -> bool:
    """Whether a session with one beacon at RECV_MS is closed by flush(RECV_MS + idle_ms)."""
    sessionizer.ingest(frame(beacon(events=[load()])), RECV_MS)
    return bool(sessionizer.flush(RECV_MS + idle_ms).closed)


def test_no_settings_means_the_documented_defaults() -> None:
    assert not closes_after(_core.Sessionizer(), 30 * MINUTE - 1)
    assert closes_after(_core.Sessionizer(None), 30 * MINUTE)


def test_settings_from_a_dict() -> None:
    assert not closes_after(_core.Sessionizer({"timeout_ms": MINUTE}), MINUTE - 1)
    assert closes_after(_core.Sessionizer({"timeout_ms": MINUTE}), MINUTE)


@dataclasses.dataclass(frozen=True)
class CoreSettings:
    """A host's own settings object: only the fields it cares about."""

    timeout_ms: int = MINUTE
    max_actions: int = 5


def test_settings_from_a_dataclass() -> None:
    sessionizer = _core.Sessionizer(CoreSettings())
    assert closes_after(sessionizer, MINUTE)
    result = sessionizer.ingest(frame(beacon(events=[custom()] * 6)), RECV_MS)
    assert [c.end_reason for c in result.closed] == ["action_limit"]


def test_an_unknown_key_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="timeout"):
        _core.Sessionizer({"timeout": 5})


def test_an_unknown_dataclass_field_is_a_value_error_naming_it() -> None:
    @dataclasses.dataclass
    class Typo:
        max_action: int = 5

    with pytest.raises(ValueError, match="max_action"):
        _core.Sessionizer(Typo())


@pytest.mark.parametrize("settings", [[("timeout_ms", 1)], "timeout_ms=1", 5])
def test_settings_that_are_neither_a_dict_nor_a_dataclass_are_refused(settings: Any) -> None:
    with pytest.raises(ValueError, match="dict"):
        _core.Sessionizer(settings)


BAD_VALUES = [
    ({"timeout_ms": 0}, "timeout_ms"),
    ({"timeout_ms": -1}, "timeout_ms"),
    ({"timeout_ms": "30m"}, "timeout_ms"),
    ({"timeout_ms": 1.5}, "timeout_ms"),
    ({"max_duration_ms": 0}, "max_duration_ms"),
    ({"max_actions": 0}, "max_actions"),
    ({"max_events": 0}, "max_events"),
    ({"apdex": {"load": {"t": 5000, "f": 100}}}, "apdex"),
    ({"apdex": {"page": {"t": 1, "f": 2}}}, "page"),
    ({"apdex": {"xhr": {"t": 1000}}}, "apdex"),
    ({"key_actions": {"shop": {"POST /checkout": {"t": 2, "f": 1}}}}, "key_actions"),
    ({"frustrated_ratio": 1.5}, "frustrated_ratio"),
    ({"satisfied_ratio": -0.1}, "satisfied_ratio"),
    ({"weights": {"action": -1}}, "weights"),
    ({"weights": {"click": 1}}, "click"),
    ({"last_action_rule": "yes"}, "last_action_rule"),
    ({"mask_ip": 1}, "mask_ip"),
    ({"scrub_patterns": ["("]}, "scrub_patterns"),
]


@pytest.mark.parametrize(
    ("settings", "named"), BAD_VALUES, ids=[json.dumps(s) for s, _ in BAD_VALUES]
)
def test_a_bad_value_is_a_value_error_naming_the_setting(settings: dict, named: str) -> None:
    """A clear message names the setting, so an operator can find it in the config."""
    with pytest.raises(ValueError) as info:
        _core.Sessionizer(settings)
    assert named in str(info.value)


# ---- the shape of what ingest returns ----------------------------------------------------------

SUMMARY_KEYS = {
    "session_id", "client_sid", "part", "app", "user_tag", "visitor_id", "start", "end",
    "duration_ms", "end_reason", "live", "ux_score", "apdex", "apdex_counts", "action_count",
    "error_count", "errors_by_kind", "has_error", "bounce", "entry_page", "exit_page",
    "rage_clicks", "vitals", "action_names", "browser", "os", "device_type", "screen", "ip",
    "country", "user_type", "properties",
}  # fmt: skip
ACTION_KEYS = {
    "index", "type", "name", "url", "page", "method", "start", "duration", "apdex", "status",
    "traceparent", "trace_id", "timings", "resources", "error_count",
}  # fmt: skip


def test_ingest_returns_the_documented_shape() -> None:
    """docs/sessionizer.md §7 and collector/_core.pyi, on the support scenario."""
    body = beacon(
        user="daniel.adams@example.com",
        device={"screen": "1920x1080"},
        events=[load(), xhr(status=500), error(kind="request"), vital(), rage_click(), end()],
    )
    result = _core.Sessionizer().ingest(frame(body), RECV_MS)

    assert (result.beacons, result.events, dict(result.dropped), result.rejected) == (1, 6, {}, [])
    (closed,) = result.closed
    assert isinstance(closed, _core.ClosedSession)
    assert (closed.app, closed.user_tag, closed.end_reason) == (
        "shop",
        "daniel.adams@example.com",
        "end_event",
    )
    assert isinstance(closed.start_ms, int) and isinstance(closed.end_ms, int)
    assert closed.start_ms <= closed.end_ms

    summary, detail = json.loads(closed.summary), json.loads(closed.detail)
    assert set(summary) == SUMMARY_KEYS
    assert summary["session_id"] == closed.session_id and summary["live"] is False
    assert set(summary["apdex_counts"]) == {"satisfied", "tolerating", "frustrated"}
    assert set(summary["errors_by_kind"]) == {"js", "request", "custom"}
    assert set(summary["vitals"]["LCP"]) == {"value", "rating"}
    assert set(summary["browser"]) == set(summary["os"]) == {"family", "version"}
    assert set(detail) == {
        "actions", "errors", "vitals", "rage_clicks", "user_tags", "properties", "end_detail",
    }  # fmt: skip
    assert set(detail["actions"][0]) == ACTION_KEYS
    assert set(detail["errors"][0]) == {"kind", "message", "stack", "start", "action"}
    assert set(detail["vitals"][0]) == {"name", "value", "rating", "start"}
    assert set(detail["rage_clicks"][0]) == {"target", "count", "start"}
    assert set(detail["user_tags"][0]) == {"tag", "at"}

    assert sorted(result.actions) == [
        ("shop", "load", "satisfied", 1),
        ("shop", "xhr", "frustrated", 1),
    ]
    assert result.errors == [("shop", "request", 1)]
    assert result.vitals == [("shop", "LCP", 2100)]


def test_a_batch_of_garbage_is_reported_not_raised() -> None:
    result = _core.Sessionizer().ingest(b"\x05\x00\x00\x00\x01", RECV_MS)
    assert [tuple(r) for r in result.rejected] == [(0, 0, "bad_record")]
    assert (result.beacons, result.closed) == (0, [])


# ---- prepare ----------------------------------------------------------------------------------


def request(body: Any, *, ip: str = "198.51.100.77", flags: int = 0) -> tuple:
    return (RECV_MS, ip, CHROME_UA, flags, payload_bytes(body))


def verdict(body: Any, max_events: int = 500) -> str | None:
    _, (result,), _ = _core.prepare([request(body)], max_events)
    if result is not None:
        reason, message = result
        assert isinstance(message, str) and message, "every rejection explains itself"
        return reason
    return None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "bad_json"),
        (b"  \n ", "bad_json"),
        (b'{"app": "shop"', "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b'{"v": 1, "app": "shop", "sid": "sid-aaaa-0001", "sent": NaN}', "bad_json"),
        (b"[1]", "not_object"),
        (b"5", "not_object"),
        ([beacon(), "beacon"], "not_object"),
        (beacon(v=2), "bad_version"),
        (beacon(v="1"), "bad_version"),
        (beacon(app=None), "bad_app"),
        (beacon(app="bad app!"), "bad_app"),
        (beacon(app="a" * 65), "bad_app"),
        (beacon(sid=None), "bad_sid"),
        (beacon(sid="short"), "bad_sid"),
        (beacon(sid="has a space"), "bad_sid"),
        (beacon(sid="s" * 129), "bad_sid"),
        (beacon(sid="sid-\u00e9\u00e9\u00e9\u00e9"), "bad_sid"),
        (beacon(events={"type": "load"}), "bad_events"),
        (beacon(events=[load()] * 501), "too_many_events"),
        ([beacon(events=[load()] * 300), beacon(events=[load()] * 201)], "too_many_events"),
        (b"[]", "empty"),
    ],
)
def test_prepare_rejects_a_request_for_each_documented_reason(body: Any, reason: str) -> None:
    assert verdict(body) == reason


def test_prepare_gives_the_first_reason_found() -> None:
    assert verdict(beacon(app="bad app!", sid="short")) == "bad_app"
    assert verdict([beacon(), beacon(sid="short"), beacon(app="x y")]) == "bad_sid"


def test_prepare_counts_events_against_max_events() -> None:
    assert verdict(beacon(events=[load()] * 3), max_events=3) is None
    assert verdict(beacon(events=[load()] * 3), max_events=2) == "too_many_events"


@pytest.mark.parametrize(
    "body",
    [
        beacon(),
        [beacon(), beacon(sid="sid-bbbb-0002")],
        (json.dumps(beacon()) + "\n\n" + json.dumps(beacon()) + "\n").encode(),
        beacon(v=None, events=None, unknown_field={"x": 1}),
    ],
    ids=["object", "array", "ndjson", "nulls-and-unknown-fields"],
)
def test_prepare_accepts_valid_requests(body: Any) -> None:
    assert verdict(body) is None


def test_prepare_frames_the_accepted_requests_with_the_ip_masked() -> None:
    good, bad = beacon(events=[load(), xhr()]), beacon(app="bad app!")
    requests = [request(good, flags=FLAG_DNT), request(bad), request(good, ip="2001:db8::7")]
    wal, verdicts, events = _core.prepare(requests, 500, True)

    assert [v if v is None else v[0] for v in verdicts] == [None, "bad_app", None]
    assert events == 4
    # version 2: the payload is the parsed beacons, not the JSON
    assert record_headers(wal) == [
        (2, FLAG_DNT, RECV_MS, "198.51.100.0", CHROME_UA),
        (2, 0, RECV_MS, "2001:db8::", CHROME_UA),
    ]
    assert list(parse_records(wal)) == [None, None], "the reference reads version 1 only"
    result = _core.Sessionizer().ingest(wal, RECV_MS)
    assert (result.beacons, result.events, result.rejected) == (2, 4, [])


def test_prepare_can_keep_the_ip() -> None:
    wal, _, _ = _core.prepare([request(beacon())], 500, False)
    ((_, _, _, ip, _),) = record_headers(wal)
    assert ip == "198.51.100.77"


def test_prepare_output_is_what_ingest_takes() -> None:
    wal, _, _ = _core.prepare([request(beacon(events=[load()])), request(beacon(sid=SID[::-1]))])
    result = _core.Sessionizer().ingest(wal, RECV_MS)
    assert (result.beacons, result.events, result.rejected) == (2, 1, [])


def test_json_and_parsed_records_mix_in_one_batch() -> None:
    """Version-1 records (a WAL written before the upgrade) are still read, in order."""
    parsed, _, _ = _core.prepare([request(beacon(events=[load()]))])
    json_record = frame(beacon(sid=SID[::-1], events=[xhr(), {"type": "nope"}]))
    result = _core.Sessionizer().ingest(json_record + parsed + json_record, RECV_MS)
    assert (result.beacons, result.events, result.rejected) == (3, 3, [])
    assert dict(result.dropped) == {"unknown_type": 2}


def test_the_sessionizer_applies_its_own_max_events_to_parsed_records() -> None:
    """As for a JSON record: a front with a higher limit does not bypass the sessionizer's."""
    body = [beacon(events=[load(), xhr()]), beacon(events=[custom()])]
    wal, _, _ = _core.prepare([request(body)], 500)
    assert [
        tuple(r) for r in _core.Sessionizer({"max_events": 2}).ingest(wal, RECV_MS).rejected
    ] == [(0, 1, "too_many_events")]
    assert _core.Sessionizer({"max_events": 3}).ingest(wal, RECV_MS).rejected == []


def damaged(record: bytes, at: int, value: int) -> bytes:
    """The record with one payload byte replaced, its frame intact."""
    header = 4 + 12 + len("198.51.100.0") + 2 + len(CHROME_UA)
    out = bytearray(record)
    out[header + at % (len(record) - header)] = value
    return bytes(out)


def test_a_damaged_parsed_record_is_skipped_and_the_next_one_applied() -> None:
    wal, _, _ = _core.prepare([request(beacon(events=[load()]))])
    cut = wal[:4] + wal[4:][: len(wal) - 8]
    cut = (len(cut) - 4).to_bytes(4, "little") + cut[4:]  # the frame says the shorter length
    for bad in (cut, damaged(wal, 0, 0xFF)):
        sessionizer = _core.Sessionizer()
        result = sessionizer.ingest(bad + wal, RECV_MS)
        assert [tuple(r) for r in result.rejected] == [(0, 0, "bad_record")]
        assert (result.beacons, sessionizer.open_count()) == (1, 1)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_damaged_parsed_records_never_raise_nor_corrupt_state(
    damage: list[tuple[int, int]],
) -> None:
    """Whatever bytes of a parsed record's payload are damaged: it is applied (the damage left
    it valid) or rejected as bad_record, and the sessionizer still flushes, checkpoints and
    restores."""
    events = [load(), xhr(traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01"), error(),
              vital(), rage_click(), prop(), {"type": "identify", "user": "u"}, end()]  # fmt: skip
    wal, _, _ = _core.prepare([request(beacon(events=events))])
    for at, value in damage:
        wal = damaged(wal, at, value)
    sessionizer = _core.Sessionizer()
    result = sessionizer.ingest(wal, RECV_MS)
    assert [r[2] for r in result.rejected] in ([], ["bad_record"])
    state = sessionizer.checkpoint()
    sessionizer.live()
    for closed in sessionizer.flush(RECV_MS + 10**9).closed:
        json.loads(closed.summary), json.loads(closed.detail)
    _core.Sessionizer().restore(state)


# ---- library functions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "masked"),
    [
        ("203.0.113.42", "203.0.113.0"),
        ("10.0.0.0", "10.0.0.0"),
        ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3::"),  # last 80 bits
        ("2001:db8::1", "2001:db8::"),
        ("garbage", None),
        ("", None),
        ("300.1.1.1", None),
        ("203.0.113.42:8080", None),
    ],
)
def test_mask_ip(ip: str, masked: str | None) -> None:
    assert _core.mask_ip(ip) == masked


def test_parse_user_agent_chrome_desktop() -> None:
    ua = _core.parse_user_agent(CHROME_UA)
    assert ua["browser"]["family"] == "Chrome"
    assert ua["browser"]["version"].startswith("120")
    assert ua["os"]["family"] == "Windows"
    assert (ua["device_type"], ua["robot"]) == ("desktop", False)


def test_parse_user_agent_iphone_safari() -> None:
    ua = _core.parse_user_agent(IPHONE_UA)
    assert ua["browser"]["family"] == "Mobile Safari"
    assert ua["os"] == {"family": "iOS", "version": "17.1"}
    assert (ua["device_type"], ua["robot"]) == ("mobile", False)


def test_parse_user_agent_ipad() -> None:
    ua = _core.parse_user_agent(IPAD_UA)
    assert ua["os"]["family"] == "iOS"
    assert (ua["device_type"], ua["robot"]) == ("tablet", False)


def test_parse_user_agent_googlebot() -> None:
    ua = _core.parse_user_agent(GOOGLEBOT_UA)
    assert ua["browser"]["family"] == "Googlebot"
    assert (ua["device_type"], ua["robot"]) == ("bot", True)


def test_parse_user_agent_of_nothing() -> None:
    ua = _core.parse_user_agent("")
    assert ua["browser"] == {"family": "Other", "version": None}
    assert ua["robot"] is False


def test_a_bot_session_is_a_robot() -> None:
    batch = frame(beacon(events=[load(), end()]), user_agent=GOOGLEBOT_UA)
    (closed,) = _core.Sessionizer().ingest(batch, RECV_MS).closed
    summary = json.loads(closed.summary)
    assert (summary["user_type"], summary["device_type"]) == ("robot", "bot")
