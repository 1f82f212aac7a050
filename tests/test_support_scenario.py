"""The support scenario of seeds/000 end to end: a real collector process, beacons over HTTP,
sessions found through the query API; plus the OpenAPI contract of the ingest and operations
endpoints and the bearer token, on the same real process.

Daniel Adams loads /cart/checkout, `POST /checkout` returns 500 with a traceparent, he gives
up and logs out. Support filters by his user tag + has errors + frustrating + the time of the
complaint and must get exactly that session, then read the failed request, its trace id and
the Frustrating rating in its timeline. Around it: the same failure for another user, the
same failure for Daniel at another time (his clock two hours ahead: the collector corrects
client times), Daniel sessions without error or not frustrating, and an open one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import pytest

from tests.conftest import ServerProcess, StartServer
from tests.openapi_contract import OpenApiContract

DANIEL = "daniel.adams@example.com"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
HOUR = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


def beacon(sid: str, events: list[dict[str, Any]], *, user: str | None = DANIEL,
           app: str = "shop", delay_ms: int = 0) -> dict[str, Any]:  # fmt: skip
    """A beacon sent now whose events happened `delay_ms` earlier (an agent that queued them
    while offline); event `start`s are relative to that moment."""
    sent = now_ms()
    at = sent - delay_ms
    body: dict[str, Any] = {
        "v": 1, "app": app, "sid": sid, "sent": sent,
        "page": {"url": "https://shop.example.com/cart/checkout"},
        "events": [{**e, "start": at + e["start"]} if "start" in e else e for e in events],
    }  # fmt: skip
    if user:
        body["user"] = user
    return body


def checkout_failure(logout: bool = True) -> list[dict[str, Any]]:
    """Seed 000's checkout: event starts are relative to the send time."""
    events = [
        {"type": "load", "name": "loading of page /cart/checkout",
         "url": "https://shop.example.com/cart/checkout", "start": -9000, "dur": 4200,
         "timing": {"ttfb": 310, "fcp": 900, "lcp": 4100}},
        {"type": "xhr", "name": "POST /checkout", "url": "https://shop.example.com/checkout",
         "method": "POST", "status": 500, "start": -4000, "dur": 812,
         "traceparent": TRACEPARENT},
        {"type": "error", "kind": "request", "message": "POST /checkout 500", "start": -3188},
        {"type": "vital", "name": "LCP", "value": 4100, "start": -4900},
    ]  # fmt: skip
    if logout:
        events.append({"type": "end", "reason": "logout", "start": -100})
    return events


def fast_pages(n: int) -> list[dict[str, Any]]:
    return [{"type": "load", "name": f"loading of page /p{i}", "url": f"https://s/p{i}",
             "start": -9000 + i * 1000, "dur": 300} for i in range(n)]  # fmt: skip


LOGOUT = {"type": "end", "reason": "logout", "start": -10}


def send(server: ServerProcess, body: dict[str, Any]) -> None:
    status, _, answer = server.request(
        "POST", "/beacon", orjson.dumps(body), {"Content-Type": "text/plain"}
    )
    assert status == 204, answer


def wait_for(probe: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := probe():
            return result
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def sessions(server: ServerProcess, params: list[tuple[str, str]],
             headers: dict[str, str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Every matching session, following the cursor."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = params + ([("cursor", cursor)] if cursor else [])
        status, body = server.get_json("/api/v1/sessions?" + urlencode(query), headers)
        assert status == 200, body
        assert isinstance(body, dict)
        found += body["sessions"]
        cursor = body["next_cursor"]
        if not cursor:
            return found


@pytest.fixture
def support_desk(start_server: StartServer) -> ServerProcess:
    """A collector whose sessions end by logout (timeout 1 h keeps the open one open)."""
    return start_server(env={"RUMLINE_SESSION_TIMEOUT": "1h"})


def test_support_finds_daniels_failed_checkout(support_desk: ServerProcess) -> None:
    server = support_desk
    complaint_from = now_ms() - 60_000
    send(server, beacon("daniel-checkout-1", checkout_failure()))
    send(server, beacon("ashley-checkout-1", checkout_failure(), user="ashley@example.com"))
    send(server, beacon("daniel-earlier-01", checkout_failure(), delay_ms=2 * HOUR))
    send(server, beacon("daniel-browsing-1", [*fast_pages(3), LOGOUT]))
    send(server, beacon("daniel-coupon-001", [
        *fast_pages(5), {"type": "error", "kind": "custom", "message": "coupon", "start": -4500},
        LOGOUT,
    ]))  # fmt: skip
    send(server, beacon("daniel-slow-0001", [
        {"type": "load", "name": "loading of page /slow", "start": -20000, "dur": 15000}, LOGOUT,
    ]))  # fmt: skip
    send(server, beacon("daniel-open-0001", checkout_failure(logout=False)))
    complaint_to = now_ms() + 60_000

    everything = wait_for(lambda: (s := sessions(server, [("user", DANIEL)])) and len(s) == 6
                          and sum(x["live"] for x in s) == 1 and s)  # fmt: skip
    assert {s["client_sid"] for s in everything if s["live"]} == {"daniel-open-0001"}

    window_from = datetime.fromtimestamp(complaint_from / 1000, UTC).isoformat()
    found = sessions(server, [
        ("user", DANIEL), ("has_error", "true"), ("ux", "frustrating"),
        ("from", window_from), ("to", str(complaint_to)),
    ])  # fmt: skip
    assert [s["client_sid"] for s in found] == ["daniel-checkout-1"]
    [session] = found
    assert session["ux_score"] == "frustrating" and session["end_reason"] == "end_event"

    # Each near miss is excluded by exactly one filter.
    by_sid = {s["client_sid"]: s for s in everything}
    assert by_sid["daniel-earlier-01"]["ux_score"] == "frustrating"
    assert by_sid["daniel-earlier-01"]["start"] < complaint_from - HOUR
    assert by_sid["daniel-coupon-001"]["has_error"] and \
        by_sid["daniel-coupon-001"]["ux_score"] != "frustrating"  # fmt: skip
    assert by_sid["daniel-slow-0001"]["ux_score"] == "frustrating"
    assert not by_sid["daniel-slow-0001"]["has_error"]
    assert by_sid["daniel-open-0001"]["has_error"]
    assert by_sid["daniel-open-0001"]["ux_score"] is None
    ashley = sessions(server, [("user", "ashley@example.com"), ("ux", "frustrating")])
    assert [s["client_sid"] for s in ashley] == ["ashley-checkout-1"]

    # Call two: the timeline.
    status, detail = server.get_json(f"/api/v1/sessions/{session['session_id']}")
    assert status == 200 and isinstance(detail, dict)
    assert detail["ux_score"] == "frustrating"
    actions = detail["timeline"]["actions"]
    [checkout] = [a for a in actions if a["name"] == "POST /checkout"]
    assert (checkout["method"], checkout["status"]) == ("POST", 500)
    assert checkout["trace_id"] == TRACE_ID and checkout["traceparent"] == TRACEPARENT
    assert checkout["apdex"] == "frustrated" and checkout["error_count"] == 1
    [page] = [a for a in actions if a["type"] == "load"]
    assert page["name"] == "loading of page /cart/checkout" and page["duration"] == 4200
    [failure] = detail["timeline"]["errors"]
    assert failure == {**failure, "kind": "request", "message": "POST /checkout 500",
                       "action": checkout["index"]}  # fmt: skip
    assert detail["timeline"]["end_detail"] == "logout"

    # The same through the user endpoint, and the open session's own detail.
    status, body = server.get_json(
        f"/api/v1/users/{quote(DANIEL)}/sessions?has_error=true&ux=frustrating"
        f"&from={quote(window_from)}&to={complaint_to}"
    )
    assert status == 200 and isinstance(body, dict)
    assert [s["session_id"] for s in body["sessions"]] == [session["session_id"]]
    status, live = server.get_json(f"/api/v1/sessions/{by_sid['daniel-open-0001']['session_id']}")
    assert status == 200 and isinstance(live, dict)
    # An open session shows its timeline so far: the failed checkout is there already.
    assert live["live"] is True
    [open_checkout] = [a for a in live["timeline"]["actions"] if a["name"] == "POST /checkout"]
    assert open_checkout["status"] == 500
    assert [e["message"] for e in live["timeline"]["errors"]] == ["POST /checkout 500"]


def test_session_closed_by_timeout_is_found(server: ServerProcess) -> None:
    """The default fixture closes idle sessions after 2 s: the session leaves `live`."""
    send(server, beacon("timeout-daniel-1", checkout_failure(logout=False)))
    closed = wait_for(lambda: sessions(server, [("user", DANIEL), ("live", "false")]))
    assert [s["end_reason"] for s in closed] == ["timeout"]
    assert closed[0]["ux_score"] == "frustrating"
    assert sessions(server, [("live", "true")]) == []


# --- OpenAPI contract of the real process --------------------------------------------------


def test_real_process_answers_as_documented(start_server: StartServer) -> None:
    server = start_server(env={"RUMLINE_API_TOKEN": "support-t0ken"})
    contract = OpenApiContract.load()
    auth = {"Authorization": "Bearer support-t0ken"}

    def check(method: str, template: str, path: str, expected: int, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> bytes:  # fmt: skip
        status, answer_headers, answer = server.request(method, path, body, headers)
        assert status == expected, (path, status, answer)
        contract.check(method, template, status, answer_headers.get("content-type"), answer)
        return answer

    ok = orjson.dumps(beacon("contract-sess-1", checkout_failure()))
    # Ingest stays open when a token is set.
    check("POST", "/beacon", "/beacon", 204, ok, {"Content-Type": "text/plain"})
    check("POST", "/beacon", "/beacon", 204, ok, {"Content-Type": "application/json"})
    check("GET", "/beacon", "/beacon?" + urlencode({"d": ok.decode()}), 204)
    check("POST", "/beacon", "/beacon", 400, b"{not json", {"Content-Type": "text/plain"})
    check("POST", "/beacon", "/beacon", 400, orjson.dumps({"app": "shop", "sid": "x"}))
    check("OPTIONS", "/beacon", "/beacon", 204, headers={
        "Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST",
    })  # fmt: skip
    check("GET", "/healthz", "/healthz", 200)
    check("GET", "/readyz", "/readyz", 200)
    metrics = check("GET", "/metrics", "/metrics", 200)
    assert b"rumline_beacons_received_total" in metrics
    # The query API needs the token.
    check("GET", "/api/v1/sessions", "/api/v1/sessions", 401)
    check("GET", "/api/v1/sessions", "/api/v1/sessions?has_error=perhaps", 400, headers=auth)
    check("GET", "/api/v1/sessions/{session_id}", "/api/v1/sessions/" + "0" * 32, 404,
          headers=auth)  # fmt: skip
    wait_for(lambda: sessions(server, [("user", DANIEL), ("live", "false")], auth))
    page = orjson.loads(check("GET", "/api/v1/sessions", "/api/v1/sessions", 200, headers=auth))
    session_id = page["sessions"][0]["session_id"]
    check("GET", "/api/v1/sessions/{session_id}", f"/api/v1/sessions/{session_id}", 200,
          headers=auth)  # fmt: skip
    check("GET", "/api/v1/users/{user_tag}/sessions", f"/api/v1/users/{quote(DANIEL)}/sessions",
          200, headers=auth)  # fmt: skip
    check("GET", "/api/v1/users/{user_tag}/sessions", f"/api/v1/users/{quote(DANIEL)}/sessions",
          401, headers={"Authorization": "Bearer support-t0ke"})  # fmt: skip
