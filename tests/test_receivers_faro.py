"""Grafana Faro receiver: conversion of Faro payloads to native events, `/collect`'s HTTP
contract on a real collector (202, x-api-key, preflight, 429 + Retry-After, JSON errors
counted), and property tests with malformed and truncated payloads.
"""

from __future__ import annotations

import copy
import gzip
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.receivers import Rejected
from collector.receivers.faro import convert_faro, timestamp_ms
from tests.conftest import ServerProcess, StartServer
from tests.test_receivers_otlp import (
    assert_core_accepts_whole,
    json_values,
    mutate,
    sessionize,
)
from tests.test_receivers_otlp import (
    recorded as otlp_recorded,
)

SID = "JtGGrPhqmJ"
NOW = int(time.time() * 1000)


def iso(ms_ago: int) -> str:
    return datetime.fromtimestamp((NOW - ms_ago) / 1000, UTC).isoformat(timespec="milliseconds")


def recorded(app: str = "shop", sid: str | None = SID) -> dict[str, Any]:
    """What faro-web-sdk 2.12.1 sent from the checkout page in Chromium (browser test),
    shortened, with the times moved to now."""
    page = "https://shop.example.com/cart/checkout"
    payload: dict[str, Any] = {
        "meta": {
            "sdk": {"name": "faro-web", "version": "2.12.1"},
            "app": {"name": app, "version": "1.0.0"},
            "browser": {"name": "Chrome Headless", "version": "156.0.0.0", "os": "Linux unknown",
                        "mobile": False, "viewportWidth": "1280", "viewportHeight": "720"},
            "page": {"url": page},
            "session": {"id": sid, "overrides": {}},
            "user": {"email": "daniel.adams@example.com", "id": "u-1"},
        },
        "events": [
            {"name": "session_resume", "domain": "browser", "timestamp": iso(5000)},
            {"name": "faro.performance.navigation", "domain": "browser", "timestamp": iso(4900),
             "attributes": {"name": page, "duration": "114", "ttfb": "23", "requestTime": "20",
                            "responseStatus": "200", "initiatorType": "navigation",
                            "pageLoadTime": "114", "transferSize": "1347"}},
            {"name": "faro.performance.resource", "domain": "browser", "timestamp": iso(4800),
             "attributes": {"name": "https://shop.example.com/app.css", "duration": "30",
                            "initiatorType": "link", "responseStatus": "200"}},
            {"name": "faro.performance.resource", "domain": "browser", "timestamp": iso(3000),
             "attributes": {"name": "https://shop.example.com/checkout", "duration": "4",
                            "responseStatus": "500", "initiatorType": "xmlhttprequest"}},
            {"name": "add_to_wishlist", "domain": "shop", "timestamp": iso(2500),
             "attributes": {"product": "42"}},
        ],
        "measurements": [
            {"type": "web-vitals", "timestamp": iso(4700), "context": {"rating": "good"},
             "values": {"lcp": 108, "delta": 108, "element_render_delay": 85.2}},
            {"type": "web-vitals", "timestamp": iso(4600),
             "values": {"cls": 0.02, "delta": 0.02}},
            {"type": "cart", "timestamp": iso(2400), "values": {"items": 3}},
        ],
        "exceptions": [
            {"type": "TypeError", "value": "Cannot read properties of undefined (reading 'b')",
             "timestamp": iso(2000), "stacktrace": {"frames": [
                 {"filename": "https://shop.example.com/shop.js", "function": "applyGiftCard",
                  "lineno": 35, "colno": 46},
                 {"filename": "https://shop.example.com/shop.js", "lineno": 38, "colno": 5}]}},
        ],
        "logs": [
            {"level": "error", "message": "payment widget failed", "timestamp": iso(1900)},
            {"level": "info", "message": "rendered", "timestamp": iso(1800)},
        ],
    }  # fmt: skip
    return payload


# --- conversion -----------------------------------------------------------------------------


def test_recorded_payload_converts_to_native_events() -> None:
    [beacon] = convert_faro(recorded())
    assert (beacon["app"], beacon["sid"], beacon["user"]) == ("shop", SID,
                                                              "daniel.adams@example.com")
    assert beacon["page"] == {"url": "https://shop.example.com/cart/checkout"}
    assert beacon["device"] == {"screen": "1280x720"}
    load, xhr, request_error, custom, lcp, cls, cart, js, log_error = beacon["events"]
    assert load["type"] == "load" and load["name"] == "loading of page /cart/checkout"
    assert load["dur"] == 114 and load["start"] == NOW - 4900 - 114
    assert load["timing"] == {"ttfb": 23, "load_end": 114, "page_load": 114, "request": 20,
                              "transfer_size": 1347}  # fmt: skip
    assert load["resources"] == [{"url": "https://shop.example.com/app.css", "initiator": "link",
                                  "dur": 30, "status": 200, "start": 184}]  # fmt: skip
    assert xhr == {"type": "xhr", "name": "XHR /checkout", "url": "https://shop.example.com/checkout",
                   "dur": 4, "status": 500, "start": NOW - 3004}  # fmt: skip
    assert request_error == {"type": "error", "kind": "request", "message": "XHR /checkout 500",
                             "start": NOW - 3000}  # fmt: skip
    assert custom == {"type": "custom", "name": "add_to_wishlist", "dur": 0, "start": NOW - 2500}
    assert (lcp["name"], lcp["value"], cls["name"], cls["value"]) == ("LCP", 108, "CLS", 0.02)
    assert (cart["name"], cart["value"]) == ("cart.items", 3)
    assert js["message"] == "TypeError: Cannot read properties of undefined (reading 'b')"
    assert js["stack"] == ("    at applyGiftCard (https://shop.example.com/shop.js:35:46)\n"
                           "    at https://shop.example.com/shop.js:38:5")  # fmt: skip
    assert log_error == {"type": "error", "kind": "custom", "message": "payment widget failed",
                         "start": NOW - 1900}  # fmt: skip
    assert beacon["sent"] == NOW - 1800


def test_in_the_core_errors_land_on_their_actions() -> None:
    detail = sessionize(convert_faro(recorded()))
    [xhr] = [a for a in detail["actions"] if a["type"] == "xhr"]
    assert (xhr["status"], xhr["apdex"]) == (500, "frustrated")
    by_kind = {e["kind"]: e for e in detail["errors"]}
    assert by_kind["request"]["action"] == xhr["index"]
    assert {v["name"] for v in detail["vitals"]} == {"LCP", "CLS", "CART.ITEMS"}


def test_user_tag_prefers_email_then_username_then_id() -> None:
    payload = recorded()
    payload["meta"]["user"] = {"id": "u-1", "username": "dadams"}
    assert convert_faro(payload)[0]["user"] == "dadams"
    payload["meta"]["user"] = {"id": "u-1"}
    assert convert_faro(payload)[0]["user"] == "u-1"
    payload["meta"].pop("user")
    assert "user" not in convert_faro(payload)[0]


def test_session_id_from_the_header_when_meta_has_none() -> None:
    assert convert_faro(recorded(sid=None), "HdrSession1")[0]["sid"] == "HdrSession1"
    with pytest.raises(Rejected) as err:
        convert_faro(recorded(sid=None))
    assert (err.value.status, err.value.code) == (400, "bad_sid")


def test_traces_join_the_session_and_replace_the_resource_events() -> None:
    payload = recorded()
    traces = otlp_recorded(service="shop", sid="not-this-one")
    for rs in traces["resourceSpans"]:
        for scope in rs["scopeSpans"]:
            for span in scope["spans"]:  # faro-web-tracing spans carry the Faro session
                for a in span["attributes"]:
                    if a["key"] == "session.id":
                        a["value"]["stringValue"] = SID
                    if a["key"] == "http.url" and a["value"]["stringValue"].endswith("/checkout"):
                        payload["events"][3]["attributes"]["name"] = a["value"]["stringValue"]
    payload["traces"] = traces
    beacons = convert_faro(payload)
    names = [e.get("name") for b in beacons for e in b["events"]]
    assert "POST /checkout" in names and "XHR /checkout" not in names
    assert {b["sid"] for b in beacons} == {SID}


@pytest.mark.parametrize("payload,code", [
    ([], "not_object"), ({}, "bad_meta"), ({"meta": {}}, "bad_app"),
    ({"meta": {"app": {"name": "shop"}}}, "bad_sid"),
    ({"meta": {"app": {"name": "shop"}, "session": {"id": "short"}}}, "bad_sid"),
])  # fmt: skip
def test_payloads_without_app_or_session_are_refused(payload: Any, code: str) -> None:
    with pytest.raises(Rejected) as err:
        convert_faro(payload)
    assert (err.value.status, err.value.code) == (400, code)


def test_timestamps() -> None:
    assert timestamp_ms("2026-11-26T04:46:05.931Z") == 1795668365931
    assert timestamp_ms("2026-11-26T05:46:05.931+01:00") == 1795668365931
    for bad in ("yesterday", "", 5, None, "9999-99-99T00:00:00Z", "0001-01-01T00:00:00Z"):
        assert timestamp_ms(bad) is None


# --- property tests -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_mutation_is_refused_cleanly_or_accepted_whole(data: st.DataObject) -> None:
    payload = mutate(recorded(), data)
    try:
        beacons = convert_faro(payload)
    except Rejected as rejected:
        assert 400 <= rejected.status < 500 and rejected.code
        return
    assert_core_accepts_whole(beacons)


values = st.one_of(json_values, st.sampled_from(
    ["114", "-5", "1e309", "NaN", "500", "99999", iso(0), "2026-13-01T00:00:00Z", "x" * 300]))
event_names = st.sampled_from(["faro.performance.navigation", "faro.performance.resource",
                               "faro.performance.resource", "session_start", "click", ""])
events = st.fixed_dictionaries({}, optional={
    "name": st.one_of(event_names, json_values), "timestamp": values,
    "attributes": st.one_of(st.fixed_dictionaries({}, optional={
        "name": st.one_of(st.just("https://s.example/api/x"), st.just("https://s.example/"),
                          values),
        "initiatorType": st.one_of(st.sampled_from(["fetch", "xmlhttprequest", "link"]),
                                   st.sampled_from(["fetch", "xmlhttprequest"]), values),
        "duration": values, "ttfb": values, "pageLoadTime": values,
        "responseStatus": st.one_of(st.integers(-10, 10**6).map(str), values)}),
        json_values)})  # fmt: skip
measurements = st.fixed_dictionaries({}, optional={
    "type": st.one_of(st.just("web-vitals"), json_values), "timestamp": values,
    "values": st.one_of(st.dictionaries(st.sampled_from(["lcp", "cls", "delta", "x"]), values,
                                        max_size=4), json_values)})  # fmt: skip
exceptions = st.fixed_dictionaries({}, optional={
    "type": values, "value": values, "timestamp": values,
    "stacktrace": st.one_of(st.fixed_dictionaries({"frames": st.lists(st.one_of(
        st.fixed_dictionaries({}, optional={"filename": values, "function": values,
                                            "lineno": values, "colno": values}),
        json_values), max_size=4)}), json_values)})  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(events, max_size=6), measurements=st.lists(measurements, max_size=4),
       exceptions=st.lists(exceptions, max_size=3),
       logs=st.lists(st.dictionaries(st.sampled_from(["level", "message", "timestamp"]),
                                     st.one_of(st.just("error"), values)), max_size=3))
def test_generated_items_are_accepted_whole(events: list, measurements: list, exceptions: list,
                                            logs: list) -> None:  # fmt: skip
    payload = recorded()
    payload.update(events=events, measurements=measurements, exceptions=exceptions, logs=logs)
    assert_core_accepts_whole(convert_faro(payload))


# --- HTTP on a real collector ---------------------------------------------------------------

JSON = {"Content-Type": "application/json"}


def metric(server: ServerProcess, reason: str) -> float:
    _, _, body = server.request("GET", "/metrics")
    match = re.search(rf'rumline_beacons_rejected_total{{reason="{reason}",receiver="faro"}} (\S+)',
                      body.decode())  # fmt: skip
    return float(match.group(1)) if match else 0.0


def wait_for_closed(server: ServerProcess, app: str, timeout: float = 15.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = server.get_json(f"/api/v1/sessions?app={app}&live=false")
        if status == 200 and body["sessions"]:  # type: ignore[index]
            return body["sessions"]  # type: ignore[index]
        time.sleep(0.1)
    raise AssertionError(f"no closed session of {app}")


def test_http_202_and_the_session(shared_server: ServerProcess) -> None:
    app = f"faro-{uuid.uuid4().hex[:8]}"
    status, headers, body = shared_server.request(
        "POST", "/collect", orjson.dumps(recorded(app)),
        {**JSON, "Origin": "https://shop.example.com", "x-faro-session-id": SID},
    )  # fmt: skip
    assert (status, body) == (202, b"")
    assert headers["access-control-allow-origin"] == "https://shop.example.com"
    assert "Retry-After" in headers["access-control-expose-headers"]
    [session] = wait_for_closed(shared_server, app)
    assert session["user_tag"] == "daniel.adams@example.com" and session["client_sid"] == SID
    assert session["errors_by_kind"] == {"js": 1, "request": 1, "custom": 1}
    gz = gzip.compress(orjson.dumps(recorded(app + "-gz")))
    assert shared_server.request("POST", "/collect", gz,
                                 {**JSON, "Content-Encoding": "gzip"})[0] == 202  # fmt: skip


def test_http_preflight_allows_faros_headers(shared_server: ServerProcess) -> None:
    status, headers, _ = shared_server.request("OPTIONS", "/collect", headers={
        "Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-faro-session-id"})  # fmt: skip
    assert status == 204
    allowed = {h.strip() for h in headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "x-api-key", "x-faro-session-id"} <= allowed
    assert "POST" in headers["access-control-allow-methods"]


@pytest.mark.parametrize("body,headers,status,code", [
    (b"{not json", JSON, 400, "bad_json"),
    (b'{"meta": {"app": {"name": "shop"}}}', JSON, 400, "bad_sid"),
    (b"[1]", JSON, 400, "not_object"),
    (b"<xml/>", {"Content-Type": "application/xml"}, 415, "unsupported_media_type"),
    (b"x" * ((1 << 20) + 1), JSON, 413, "too_large"),
])  # fmt: skip
def test_http_errors_are_json_and_counted(
    shared_server: ServerProcess, body: bytes, headers: dict, status: int, code: str
) -> None:
    before = metric(shared_server, code)
    got, answer_headers, answer = shared_server.request("POST", "/collect", body, headers)
    assert got == status, answer
    assert answer_headers["content-type"].startswith("application/json")
    assert orjson.loads(answer)["error"]["code"] == code
    assert metric(shared_server, code) == before + 1


def test_http_api_key_and_rate_limit(start_server: StartServer) -> None:
    server = start_server(env={"RUMLINE_INGEST_FARO_API_KEY": "k3y",
                               "RUMLINE_INGEST_RATE_LIMIT_IP": "1",
                               "RUMLINE_INGEST_RATE_LIMIT_IP_BURST": "2"})  # fmt: skip
    body = orjson.dumps(recorded("keyed"))
    status, _, answer = server.request("POST", "/collect", body, JSON)
    assert status == 401 and orjson.loads(answer)["error"]["code"] == "bad_api_key"
    ok = {**JSON, "x-api-key": "k3y"}
    statuses = [server.request("POST", "/collect", body, ok) for _ in range(4)]
    assert [s for s, _, _ in statuses][0] == 202
    limited = [(h, b) for s, h, b in statuses if s == 429]
    assert limited, [s for s, _, _ in statuses]
    headers, answer = limited[0]
    assert int(headers["retry-after"]) >= 1
    assert orjson.loads(answer)["error"]["code"] == "rate_limited"


def test_http_per_app_rate_limit(start_server: StartServer) -> None:
    server = start_server(env={"RUMLINE_INGEST_RATE_LIMIT_APP": "0.5",
                               "RUMLINE_INGEST_RATE_LIMIT_APP_BURST": "1"})  # fmt: skip
    busy, quiet = orjson.dumps(recorded("busy")), orjson.dumps(recorded("quiet"))
    assert server.request("POST", "/collect", busy, JSON)[0] == 202
    status, headers, answer = server.request("POST", "/collect", busy, JSON)
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert orjson.loads(answer)["error"]["code"] == "rate_limited"
    assert server.request("POST", "/collect", quiet, JSON)[0] == 202  # another app's bucket


def test_http_truncated_payloads_never_500_nor_lose_accepted_data(
    shared_server: ServerProcess,
) -> None:
    app = f"faro-trunc-{uuid.uuid4().hex[:6]}"
    good = orjson.dumps(recorded(app))
    assert shared_server.request("POST", "/collect", good, JSON)[0] == 202
    for cut in range(0, len(good), max(1, len(good) // 60)):
        status, _, answer = shared_server.request("POST", "/collect", good[:cut], JSON)
        assert status in (202, 400), (cut, status, answer)
    [session] = wait_for_closed(shared_server, app)
    assert session["action_count"] == 3


def test_mutated_payloads_over_http_never_500(shared_server: ServerProcess) -> None:
    doc = recorded("faro-mut")
    bodies = [orjson.dumps(doc).replace(b'"', b"'", 3), orjson.dumps(doc)[::2],
              orjson.dumps({**doc, "events": "x"}), orjson.dumps({**doc, "meta": []})]
    nested = copy.deepcopy(doc)
    nested["exceptions"][0]["stacktrace"]["frames"] = [[[[[[]]]]]] * 50
    bodies.append(orjson.dumps(nested))
    for body in bodies:
        status, _, answer = shared_server.request("POST", "/collect", body, JSON)
        assert status in (202, 400), (status, answer)
