"""OTLP/HTTP JSON receiver: conversion of spans to native events, its HTTP contract on a real
collector, and property tests with malformed and truncated payloads.

The central property of every converting receiver: whatever arrives, the converter either
refuses it with a `Rejected` (a JSON 4xx) or produces native beacons that the core accepts
whole, with no event dropped as malformed, so nothing a converter accepted is lost later.
"""

from __future__ import annotations

import copy
import gzip
import re
import time
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector._core import Sessionizer, prepare
from collector.receivers import Rejected
from collector.receivers.otlp import chunks, convert_traces, traceparent
from tests.conftest import ServerProcess

SID = "3685213649-51683634-2060976605-296585064"
TRACE = "49C3B09BB861D4447BFF73187AD8E3DC"  # OTLP JSON ids are hex, any case
NOW_NS = time.time_ns()


def attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}  # 64-bit ints as strings
    return {"key": key, "value": {"stringValue": value}}


def span(name: str, start_ms_ago: int, dur_ms: int, attrs: dict[str, Any], **extra: Any) -> dict:
    start = NOW_NS - start_ms_ago * 1_000_000
    return {
        "traceId": extra.pop("traceId", uuid.uuid4().hex.upper()),
        "spanId": extra.pop("spanId", uuid.uuid4().hex[:16]),
        "name": name, "kind": extra.pop("kind", 3),
        "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + dur_ms * 1_000_000),
        "attributes": [attr(k, v) for k, v in attrs.items()],
        "droppedAttributesCount": 0, "events": [], "status": {"code": 0}, "links": [],
        **extra,
    }  # fmt: skip


def recorded(service: str = "shop", sid: str = SID) -> dict[str, Any]:
    """The shape @opentelemetry/exporter-trace-otlp-http sent in Chromium (browser test):
    fetch and XHR client spans, a manual span with a recorded exception."""
    common = {"session.id": sid, "page.url": "https://shop.example.com/cart/checkout",
              "user.email": "daniel.adams@example.com"}  # fmt: skip
    http = {"component": "fetch", "http.scheme": "https", "http.host": "shop.example.com"}
    return {"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", service),
                                    attr("telemetry.sdk.language", "webjs")],
                     "droppedAttributesCount": 0},
        "scopeSpans": [{
            "scope": {"name": "@opentelemetry/instrumentation-fetch", "version": "0.223.0"},
            "spans": [
                span("HTTP GET", 9000, 52, {**common, **http, "http.method": "GET",
                     "http.url": "https://shop.example.com/api/products",
                     "http.status_code": 200}),
                span("HTTP POST", 4000, 812, {**common, **http, "http.method": "POST",
                     "http.url": "https://shop.example.com/checkout",
                     "http.status_code": 500}, traceId=TRACE, spanId="00F067AA0BA902B7",
                     status={"code": 2}),
                span("page error", 3000, 0, common, kind=1, events=[{
                    "timeUnixNano": str(NOW_NS - 3_000_000_000), "name": "exception",
                    "attributes": [attr("exception.type", "TypeError"),
                                   attr("exception.message", "x is undefined"),
                                   attr("exception.stacktrace", "at pay (app.js:10:5)")]}]),
                span("HTTP GET", 1000, 20, {**http, "http.method": "GET",  # no session.id
                     "http.url": "https://shop.example.com/api/ads"}),
            ]}]}]}  # fmt: skip


# --- conversion -----------------------------------------------------------------------------


def test_recorded_payload_converts_to_a_session_timeline() -> None:
    converted = convert_traces(recorded())
    assert converted.spans == 4 and converted.rejected == 1
    [beacon] = converted.beacons
    assert (beacon["app"], beacon["sid"]) == ("shop", SID)
    assert beacon["user"] == "daniel.adams@example.com"
    assert beacon["page"] == {"url": "https://shop.example.com/cart/checkout"}
    events = beacon["events"]
    products, checkout, failure, page_error, exception = events
    assert (products["type"], products["name"], products["status"], products["dur"]) == (
        "xhr", "GET /api/products", 200, 52)  # fmt: skip
    assert checkout["traceparent"] == f"00-{TRACE.lower()}-00f067aa0ba902b7-01"
    assert (failure["kind"], failure["message"]) == ("request", "POST /checkout 500")
    assert failure["start"] == checkout["start"] + checkout["dur"]
    assert page_error == {**page_error, "type": "custom", "name": "page error"}
    assert exception == {**exception, "type": "error", "kind": "js",
                         "message": "TypeError: x is undefined", "stack": "at pay (app.js:10:5)"}
    assert beacon["sent"] == max(e["start"] + e.get("dur", 0) for e in events if "start" in e)


def test_the_trace_id_is_on_the_action_in_the_core() -> None:
    detail = sessionize(convert_traces(recorded()).beacons)
    [checkout] = [a for a in detail["actions"] if a["name"] == "POST /checkout"]
    assert checkout["trace_id"] == TRACE.lower() and checkout["status"] == 500
    assert checkout["error_count"] == 1 and checkout["apdex"] == "frustrated"
    assert checkout["page"] == "https://shop.example.com/cart/checkout"


def test_service_name_is_made_a_valid_app_and_sessions_are_kept_apart() -> None:
    doc = recorded(service="my shop/eu")
    other = recorded(service="admin", sid="other-session-1")
    doc["resourceSpans"].append(other["resourceSpans"][0])
    beacons = convert_traces(doc).beacons
    assert {(b["app"], b["sid"]) for b in beacons} == {
        ("my_shop_eu", SID), ("admin", "other-session-1")}  # fmt: skip


@pytest.mark.parametrize("sid", ["short", "x" * 129, "with space1", "", None])
def test_spans_without_a_usable_session_id_are_rejected_not_fatal(sid: Any) -> None:
    doc = recorded(sid=sid)
    converted = convert_traces(doc)
    assert converted.beacons == [] and converted.rejected == converted.spans == 4


def test_document_load_and_user_interaction_spans() -> None:
    common = {"session.id": SID}
    load = span("documentLoad", 5000, 1200, {**common, "http.url": "https://s.example/p/1"},
                kind=1, spanId="aaaaaaaaaaaaaaaa",
                events=[{"name": "domInteractive", "timeUnixNano": str(NOW_NS - 4_500_000_000)}])
    fetch = span("resourceFetch", 4900, 80, {**common, "http.url": "https://s.example/app.js"},
                 kind=1, parentSpanId="AAAAAAAAAAAAAAAA")
    click = span("click", 2000, 30, {**common, "event_type": "click", "target_element": "BUTTON"},
                 kind=1)  # fmt: skip
    doc = {"resourceSpans": [{"resource": {"attributes": [attr("service.name", "s")]},
                              "scopeSpans": [{"spans": [load, fetch, click]}]}]}  # fmt: skip
    [beacon] = convert_traces(doc).beacons
    page_load, action = beacon["events"]
    assert page_load["type"] == "load" and page_load["name"] == "loading of page /p/1"
    assert page_load["timing"] == {"domInteractive": 500}
    assert [r["url"] for r in page_load["resources"]] == ["https://s.example/app.js"]
    assert action == {**action, "type": "custom", "name": "click on 'BUTTON'", "dur": 30}
    sessionize([beacon])


def test_traceparent_validation() -> None:
    assert traceparent("A" * 32, "B" * 16, None) == f"00-{'a' * 32}-{'b' * 16}-01"
    assert traceparent("a" * 32, "b" * 16, 0) == f"00-{'a' * 32}-{'b' * 16}-00"
    assert traceparent("0" * 32, "b" * 16, 1) is None
    assert traceparent("a" * 31, "b" * 16, 1) is None
    assert traceparent("g" * 32, "b" * 16, 1) is None
    assert traceparent("a" * 32, 5, 1) is None


def test_more_events_than_a_request_may_hold_are_split_in_order() -> None:
    beacon = {"v": 1, "app": "a", "sid": SID, "events": [{"type": "custom", "name": str(i)}
                                                        for i in range(1203)]}  # fmt: skip
    parts = list(chunks([beacon, {**beacon, "sid": "second-sid"}], 500))
    assert all(sum(len(b["events"]) for b in part) <= 500 for part in parts)
    names = [e["name"] for part in parts for b in part if b["sid"] == SID for e in b["events"]]
    assert names == [str(i) for i in range(1203)]


@pytest.mark.parametrize("document", [[], "x", 1, None, {"resourceSpans": {}},
                                      {"resourceSpans": "x"}])  # fmt: skip
def test_wrong_document_shapes_are_rejected(document: Any) -> None:
    with pytest.raises(Rejected) as err:
        convert_traces(document)
    assert err.value.status == 400 and err.value.code in ("not_object", "bad_otlp")


# --- property tests -------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=5),
    max_leaves=25,
)  # fmt: skip


KEYS = ["session.id", "service.name", "http.method", "http.request.method", "http.url",
        "url.full", "http.status_code", "http.response.status_code", "user.email", "user.id",
        "page.url", "location.href", "event_type", "target_element", "exception.type",
        "exception.message", "exception.stacktrace"]  # fmt: skip
numbers = st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(), st.sampled_from(
    [0, 200, 404, 500, 999, 1000, -1, 10**13, 10**19, 1e308]))  # fmt: skip
any_values = st.one_of(
    st.builds(lambda v: {"stringValue": v}, st.one_of(st.text(max_size=20), st.sampled_from(
        ["GET", "post", "https://s.example/a?b#c", "http://[::1", "12345678", "x" * 3000]))),
    st.builds(lambda v: {"intValue": v}, st.one_of(numbers, numbers.map(str), st.text(max_size=5))),
    st.builds(lambda v: {"doubleValue": v}, numbers),
    st.builds(lambda v: {"boolValue": v}, st.booleans()),
    st.builds(lambda v: {"arrayValue": {"values": v}}, st.lists(json_values, max_size=3)),
    json_values,
)  # fmt: skip
ids = st.one_of(st.sampled_from([TRACE, "0" * 32, "00F067AA0BA902B7", "0" * 16, ""]),
                st.text("0123456789abcdefABCDEFxyz", max_size=33), json_values)  # fmt: skip
times = st.one_of(numbers, numbers.map(str), st.just(str(NOW_NS)), json_values)
attr_lists = st.lists(st.builds(lambda k, v: {"key": k, "value": v},
                                st.one_of(st.sampled_from(KEYS), st.text(max_size=8)),
                                any_values), max_size=8)  # fmt: skip
spans = st.fixed_dictionaries({}, optional={
    "traceId": ids, "spanId": ids, "parentSpanId": ids, "flags": numbers,
    "name": st.one_of(st.sampled_from(["documentLoad", "resourceFetch", "click", "HTTP GET"]),
                      json_values),
    "kind": st.one_of(st.integers(0, 6), st.sampled_from(["SPAN_KIND_CLIENT", "x"]), json_values),
    "startTimeUnixNano": times, "endTimeUnixNano": times, "attributes": attr_lists,
    "status": st.one_of(st.fixed_dictionaries({"code": st.one_of(st.integers(0, 3), json_values)}),
                        json_values),
    "events": st.lists(st.fixed_dictionaries({}, optional={
        "name": st.one_of(st.just("exception"), st.just("domInteractive"), json_values),
        "timeUnixNano": times, "attributes": attr_lists}), max_size=3),
})  # fmt: skip
documents = st.builds(
    lambda res, spans: {"resourceSpans": [{"resource": {"attributes": res},
                                           "scopeSpans": [{"spans": spans}]}]},
    attr_lists, st.lists(st.one_of(spans, json_values), max_size=6),
)  # fmt: skip


def mutate(document: Any, data: st.DataObject) -> Any:
    """Replace one randomly chosen node of the document by random JSON."""
    doc = copy.deepcopy(document)
    node, path = doc, []
    while isinstance(node, dict | list) and node and data.draw(st.booleans(), "descend"):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = data.draw(st.sampled_from(keys), "key")
        path.append((node, key))
        node = node[key]
    if not path:
        return data.draw(json_values, "document")
    parent, key = path[-1]
    parent[key] = data.draw(json_values, "replacement")
    return doc


def core_verdicts(beacons: list[dict[str, Any]]) -> tuple[list, dict[str, int]]:
    """What the core says of converted beacons: verdicts per request and dropped events."""
    requests = [(int(time.time() * 1000), "127.0.0.1", "Mozilla/5.0", 0, orjson.dumps(chunk))
                for chunk in chunks(beacons, 500)]  # fmt: skip
    records, verdicts, _ = prepare(requests, 500, True)
    result = Sessionizer({"timeout_ms": 1000}).ingest(records, int(time.time() * 1000))
    return verdicts, result.dropped


def assert_core_accepts_whole(beacons: list[dict[str, Any]]) -> None:
    verdicts, dropped = core_verdicts(beacons)
    assert verdicts == [None] * len(verdicts), verdicts
    assert not dropped, dropped


def sessionize(beacons: list[dict[str, Any]]) -> dict[str, Any]:
    """The detail of the one session the beacons make, closed by its timeout."""
    now = int(time.time() * 1000)
    requests = [(now, "127.0.0.1", "Mozilla/5.0", 0, orjson.dumps(c)) for c in chunks(beacons, 500)]
    records, verdicts, _ = prepare(requests, 500, True)
    assert verdicts == [None] * len(requests), verdicts
    core = Sessionizer({"timeout_ms": 1000})
    assert not core.ingest(records, now).dropped
    [closed] = core.flush(now + 10_000).closed
    return orjson.loads(closed.detail)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_mutation_is_refused_cleanly_or_accepted_whole(data: st.DataObject) -> None:
    document = mutate(recorded(), data)
    try:
        converted = convert_traces(document)
    except Rejected as rejected:
        assert 400 <= rejected.status < 500 and rejected.code
        return
    assert converted.rejected <= converted.spans
    assert_core_accepts_whole(converted.beacons)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents)
def test_generated_spans_are_refused_cleanly_or_accepted_whole(document: Any) -> None:
    """Spans built field by field from valid and invalid values of every field the converter
    reads (times, ids, enums, HTTP attributes, exception events)."""
    with_session = copy.deepcopy(document)
    rs = with_session["resourceSpans"][0]
    rs["resource"]["attributes"] += [attr("service.name", "fuzz"), attr("session.id", SID)]
    as_http = copy.deepcopy(with_session)
    for item in as_http["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        if isinstance(item, dict) and isinstance(item.get("attributes", []), list):
            # A fetch span whose later (random) attributes override these.
            base = [attr("http.method", "GET"), attr("http.url", "https://s.example/api")]
            item["attributes"] = base + item.get("attributes", [])
    for doc in (document, with_session, as_http):
        converted = convert_traces(doc)
        assert converted.rejected <= converted.spans
        assert_core_accepts_whole(converted.beacons)


@settings(max_examples=200, deadline=None)
@given(document=json_values)
def test_arbitrary_json_is_refused_cleanly_or_accepted_whole(document: Any) -> None:
    try:
        converted = convert_traces(document)
    except Rejected as rejected:
        assert 400 <= rejected.status < 500
        return
    assert_core_accepts_whole(converted.beacons)


# --- HTTP on a real collector ---------------------------------------------------------------

JSON = {"Content-Type": "application/json"}


def post(server: ServerProcess, body: bytes, headers: dict[str, str] | None = None):
    return server.request("POST", "/v1/traces", body, headers or JSON)


def wait_for_closed(server: ServerProcess, app: str, timeout: float = 15.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = server.get_json(f"/api/v1/sessions?app={app}&live=false")
        assert status == 200
        if body["sessions"]:  # type: ignore[index]
            return body["sessions"]  # type: ignore[index]
        time.sleep(0.1)
    raise AssertionError(f"no closed session of {app}")


def rejected(server: ServerProcess, reason: str) -> float:
    _, _, body = server.request("GET", "/metrics")
    match = re.search(rf'rumline_beacons_rejected_total{{reason="{reason}",receiver="otlp"}} (\S+)',
                      body.decode())  # fmt: skip
    return float(match.group(1)) if match else 0.0


def test_http_accepts_and_answers_partial_success(shared_server: ServerProcess) -> None:
    app = f"otel-{uuid.uuid4().hex[:8]}"
    status, headers, body = post(shared_server, orjson.dumps(recorded(service=app)))
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert orjson.loads(body) == {"partialSuccess": {
        "rejectedSpans": 1, "errorMessage": orjson.loads(body)["partialSuccess"]["errorMessage"]}}
    [session] = wait_for_closed(shared_server, app)
    assert session["user_tag"] == "daniel.adams@example.com"
    assert set(session["action_names"]) == {"GET /api/products", "POST /checkout", "page error"}
    everything = recorded(service=app + "-2")
    everything["resourceSpans"][0]["scopeSpans"][0]["spans"].pop()
    status, _, body = post(shared_server, gzip.compress(orjson.dumps(everything)),
                           {**JSON, "Content-Encoding": "gzip"})  # fmt: skip
    assert (status, orjson.loads(body)) == (200, {})


@pytest.mark.parametrize("body,headers,status,code", [
    (b"{not json", JSON, 400, "bad_json"),
    (b'{"resourceSpans": 3}', JSON, 400, "bad_otlp"),
    (b"[]", JSON, 400, "not_object"),
    (b"\x0a\x02", {"Content-Type": "application/x-protobuf"}, 415, "unsupported_media_type"),
    (b"x" * ((1 << 20) + 1), JSON, 413, "too_large"),
    (b"\x1f\x8b\x08garbage", {**JSON, "Content-Encoding": "gzip"}, 400, "bad_encoding"),
])  # fmt: skip
def test_http_errors_are_json_and_counted(
    shared_server: ServerProcess, body: bytes, headers: dict, status: int, code: str
) -> None:
    before = rejected(shared_server, code)
    got, answer_headers, answer = post(shared_server, body, headers)
    assert got == status, answer
    assert answer_headers["content-type"].startswith("application/json")
    assert orjson.loads(answer)["error"]["code"] == code
    assert rejected(shared_server, code) == before + 1


def test_http_preflight_allows_the_exporters_headers(shared_server: ServerProcess) -> None:
    status, headers, _ = shared_server.request("OPTIONS", "/v1/traces", headers={
        "Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})  # fmt: skip
    assert status == 204
    assert headers["access-control-allow-origin"] == "https://shop.example.com"
    assert "POST" in headers["access-control-allow-methods"]
    assert "content-type" in headers["access-control-allow-headers"].lower()


def test_http_truncated_payloads_never_500_nor_lose_accepted_data(
    shared_server: ServerProcess,
) -> None:
    app = f"otel-trunc-{uuid.uuid4().hex[:6]}"
    good = orjson.dumps(recorded(service=app))
    assert post(shared_server, good)[0] == 200
    for cut in range(0, len(good), max(1, len(good) // 60)):
        status, _, answer = post(shared_server, good[:cut])
        assert status in (200, 400), (cut, status, answer)
    [session] = wait_for_closed(shared_server, app)
    assert session["action_count"] == 3
