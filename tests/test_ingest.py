"""Ingest over HTTP against a real collector: every accepted encoding, every rejection."""

from __future__ import annotations

import gzip
import http.client
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlencode

import orjson
import pytest

from tests.conftest import ServerProcess, StartServer


def beacon(app: str, sid: str | None = None, **fields: object) -> dict:
    body = {
        "v": 1, "app": app, "sid": sid or uuid.uuid4().hex,
        "events": [{"type": "load", "name": "loading of page /", "dur": 800}],
    }  # fmt: skip
    body.update(fields)
    return body


def unique_app(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def wait_for_sessions(server: ServerProcess, app: str, n: int, timeout: float = 10.0) -> list:
    """Summaries (live or closed) of `app` once there are `n` of them."""
    deadline = time.monotonic() + timeout
    sessions: list = []
    while time.monotonic() < deadline:
        status, body = server.get_json(f"/api/v1/sessions?app={app}&limit=1000")
        assert status == 200, body
        sessions = body["sessions"]  # type: ignore[index]
        if len(sessions) >= n:
            return sessions
        time.sleep(0.1)
    raise AssertionError(f"expected {n} sessions of {app}, found {len(sessions)}")


def rejected_count(server: ServerProcess, reason: str) -> float:
    _, _, body = server.request("GET", "/metrics")
    pattern = rf'rumline_beacons_rejected_total{{reason="{reason}",receiver="native"}} (\S+)'
    match = re.search(pattern, body.decode())
    return float(match.group(1)) if match else 0.0


def assert_error(response: tuple[int, dict, bytes], status: int, code: str) -> None:
    got_status, headers, body = response
    assert got_status == status, body
    assert headers["content-type"].startswith("application/json")
    error = orjson.loads(body)["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]


# --- accepted ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain;charset=UTF-8", "application/json", "application/x-ndjson", None]
)
def test_post_raw_json_content_types(shared_server: ServerProcess, content_type: str | None):
    app = unique_app("raw")
    headers = {"Content-Type": content_type} if content_type else {}
    status, _, body = shared_server.request("POST", "/beacon", orjson.dumps(beacon(app)), headers)
    assert status == 204, body
    assert body == b""
    wait_for_sessions(shared_server, app, 1)


def test_post_array_and_ndjson(shared_server: ServerProcess):
    app = unique_app("multi")
    array = orjson.dumps([beacon(app), beacon(app)])
    ndjson = b"\n".join(orjson.dumps(beacon(app)) for _ in range(3)) + b"\n\n"
    assert shared_server.request("POST", "/beacon", array, {"Content-Type": "text/plain"})[0] == 204
    assert (
        shared_server.request("POST", "/beacon", ndjson, {"Content-Type": "text/plain"})[0] == 204
    )
    wait_for_sessions(shared_server, app, 5)


def test_post_form_field_d(shared_server: ServerProcess):
    app = unique_app("form")
    body = urlencode({"d": orjson.dumps(beacon(app)).decode(), "other": "x"}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    assert shared_server.request("POST", "/beacon", body, headers)[0] == 204
    wait_for_sessions(shared_server, app, 1)


def test_post_form_type_with_plain_json_body(shared_server: ServerProcess):
    """What `curl -d '{…}'` sends: the form content type with a JSON body."""
    app = unique_app("curl")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    assert shared_server.request("POST", "/beacon", orjson.dumps(beacon(app)), headers)[0] == 204
    wait_for_sessions(shared_server, app, 1)


def test_get_image_fallback(shared_server: ServerProcess):
    app = unique_app("get")
    path = "/beacon?d=" + quote(orjson.dumps(beacon(app)).decode())
    status, _, body = shared_server.request("GET", path)
    assert status == 204, body
    wait_for_sessions(shared_server, app, 1)


def test_post_gzip(shared_server: ServerProcess):
    app = unique_app("gzip")
    body = gzip.compress(orjson.dumps([beacon(app), beacon(app)]))
    headers = {"Content-Type": "text/plain", "Content-Encoding": "gzip"}
    assert shared_server.request("POST", "/beacon", body, headers)[0] == 204
    wait_for_sessions(shared_server, app, 2)


def test_post_chunked_without_content_length(shared_server: ServerProcess):
    app = unique_app("chunked")
    conn = http.client.HTTPConnection(shared_server.host, shared_server.port, timeout=10)
    body = orjson.dumps(beacon(app))
    conn.request("POST", "/beacon", body=iter([body[:10], body[10:]]),
                 headers={"Content-Type": "text/plain"}, encode_chunked=True)  # fmt: skip
    assert conn.getresponse().status == 204
    conn.close()
    wait_for_sessions(shared_server, app, 1)


def test_unknown_event_types_are_dropped_not_fatal(shared_server: ServerProcess):
    app = unique_app("unknown")
    body = beacon(app)
    body["events"].append({"type": "hologram", "x": 1})  # type: ignore[attr-defined]
    assert shared_server.request("POST", "/beacon", orjson.dumps(body))[0] == 204
    [session] = wait_for_sessions(shared_server, app, 1)
    assert session["action_count"] == 1


def test_acknowledged_beacons_keep_their_order_and_user(shared_server: ServerProcess):
    app = unique_app("order")
    sid = uuid.uuid4().hex
    for i in range(5):
        event = {"type": "custom", "name": f"step {i}", "dur": 10}
        body = beacon(app, sid, events=[event], user="daniel.adams@example.com")
        assert shared_server.request("POST", "/beacon", orjson.dumps(body))[0] == 204
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        [session] = wait_for_sessions(shared_server, app, 1)
        if session["action_count"] == 5:
            break
        time.sleep(0.1)
    assert session["action_count"] == 5
    assert session["user_tag"] == "daniel.adams@example.com"
    assert session["action_names"] == [f"step {i}" for i in range(5)]


# --- rejected ------------------------------------------------------------------------------

CORE_REJECTIONS = [
    (b"{not json", "bad_json"),
    (b"", "bad_json"),
    (b"[1, 2]", "not_object"),
    (b'{"v": 2, "app": "a", "sid": "abcdefgh"}', "bad_version"),
    (b'{"app": "bad app!", "sid": "abcdefgh"}', "bad_app"),
    (b'{"sid": "abcdefgh"}', "bad_app"),
    (b'{"app": "a", "sid": "short"}', "bad_sid"),
    (b'{"app": "a", "sid": "abcdefgh", "events": {}}', "bad_events"),
    (b"[]", "empty"),
]


@pytest.mark.parametrize(("body", "code"), CORE_REJECTIONS)
def test_core_rejections_are_json_400(shared_server: ServerProcess, body: bytes, code: str):
    before = rejected_count(shared_server, code)
    response = shared_server.request("POST", "/beacon", body, {"Content-Type": "text/plain"})
    assert_error(response, 400, code)
    assert rejected_count(shared_server, code) == before + 1


def test_too_many_events(shared_server: ServerProcess):
    body = beacon("many", events=[{"type": "custom", "name": "x"}] * 501)
    response = shared_server.request("POST", "/beacon", orjson.dumps(body))
    assert_error(response, 400, "too_many_events")


def test_a_rejected_request_in_a_batch_does_not_fail_the_others(shared_server: ServerProcess):
    app = unique_app("mixed")
    bodies = [orjson.dumps(beacon(app)) if i % 2 else b"{broken" for i in range(40)]
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda b: shared_server.request("POST", "/beacon", b)[0], bodies))
    assert statuses == [204 if i % 2 else 400 for i in range(40)]
    wait_for_sessions(shared_server, app, 20)


def test_body_over_64_kib_is_413(shared_server: ServerProcess):
    body = orjson.dumps(beacon("big", padding="x" * (64 << 10)))
    assert_error(shared_server.request("POST", "/beacon", body), 413, "too_large")


def test_chunked_body_over_64_kib_is_413(shared_server: ServerProcess):
    conn = http.client.HTTPConnection(shared_server.host, shared_server.port, timeout=10)
    chunks = iter([b"[" + b" " * 40_000, b" " * 40_000 + b"]"])
    conn.request("POST", "/beacon", body=chunks, encode_chunked=True)
    response = conn.getresponse()
    headers = {k.lower(): v for k, v in response.getheaders()}
    assert_error((response.status, headers, response.read()), 413, "too_large")
    conn.close()


def test_gzip_bomb_is_413(shared_server: ServerProcess):
    bomb = gzip.compress(b" " * (8 << 20))  # 8 MiB of spaces, ~8 KiB compressed
    headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain"}
    assert_error(shared_server.request("POST", "/beacon", bomb, headers), 413, "too_large")


def test_broken_gzip_is_400(shared_server: ServerProcess):
    headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain"}
    response = shared_server.request("POST", "/beacon", b"\x1f\x8b\x08\x00garbage", headers)
    assert_error(response, 400, "bad_encoding")


def test_unsupported_encoding_is_415(shared_server: ServerProcess):
    headers = {"Content-Encoding": "compress"}
    response = shared_server.request("POST", "/beacon", b"{}", headers)
    assert_error(response, 415, "unsupported_encoding")


def test_unsupported_media_type_is_415(shared_server: ServerProcess):
    headers = {"Content-Type": "multipart/form-data; boundary=x"}
    response = shared_server.request("POST", "/beacon", b"--x--", headers)
    assert_error(response, 415, "unsupported_media_type")


def test_form_without_d_is_400(shared_server: ServerProcess):
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = shared_server.request("POST", "/beacon", b"a=1&b=2", headers)
    assert_error(response, 400, "missing_d")


def test_get_without_d_is_400(shared_server: ServerProcess):
    assert_error(shared_server.request("GET", "/beacon?x=1"), 400, "missing_d")


def test_get_with_invalid_beacon_is_400(shared_server: ServerProcess):
    assert_error(shared_server.request("GET", "/beacon?d=%7Bnope"), 400, "bad_json")


# --- CORS ------------------------------------------------------------------------------------


def test_preflight_and_origin_echo_with_every_origin_allowed(shared_server: ServerProcess):
    origin = "https://shop.example.com"
    status, headers, _ = shared_server.request("OPTIONS", "/beacon", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    })  # fmt: skip
    assert status == 204
    assert headers["access-control-allow-origin"] == origin
    assert headers["access-control-allow-credentials"] == "true"
    assert "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-headers"] == "content-type"
    status, headers, _ = shared_server.request(
        "POST", "/beacon", orjson.dumps(beacon("cors")), {"Origin": origin}
    )
    assert status == 204
    assert headers["access-control-allow-origin"] == origin
    assert headers["access-control-allow-credentials"] == "true"


def test_allowed_origins_403_for_unlisted(start_server: StartServer):
    server = start_server(env={"RUMLINE_ALLOWED_ORIGINS": "https://shop.example.com"})
    body = orjson.dumps(beacon("origins"))
    listed = server.request("POST", "/beacon", body, {"Origin": "https://shop.example.com"})
    assert listed[0] == 204
    assert listed[1]["access-control-allow-origin"] == "https://shop.example.com"
    unlisted = server.request("POST", "/beacon", body, {"Origin": "https://evil.example"})
    assert_error(unlisted, 403, "origin_not_allowed")
    preflight = server.request("OPTIONS", "/beacon", headers={"Origin": "https://evil.example"})
    assert_error(preflight, 403, "origin_not_allowed")
    # Without an Origin (curl, a server-side sender) there is nothing to check.
    assert server.request("POST", "/beacon", body)[0] == 204
    assert rejected_count(server, "origin_not_allowed") == 2


def test_app_origins_allow_each_app_only_its_own_pages(start_server: StartServer):
    server = start_server(env={
        "RUMLINE_ALLOWED_ORIGINS": "https://www.example.com",
        "RUMLINE_INGEST_APP_ORIGINS": orjson.dumps({"shop": ["https://shop.example.com"],
                                                    "blog": ["*"]}).decode(),
    })  # fmt: skip
    shop, www, evil = "https://shop.example.com", "https://www.example.com", "https://evil.example"

    def post(body: object, origin: str, raw: bytes | None = None) -> tuple[int, dict, bytes]:
        data = raw if raw is not None else orjson.dumps(body)
        return server.request("POST", "/beacon", data, {"Origin": origin})

    assert post(beacon("shop"), shop)[0] == 204
    assert_error(post(beacon("shop"), www), 403, "origin_not_allowed")
    # an app without its own list follows allowed_origins
    assert post(beacon("other"), www)[0] == 204
    assert_error(post(beacon("other"), shop), 403, "origin_not_allowed")
    # "*" opens one app to every origin, but only at its own door
    assert post(beacon("blog"), evil)[0] == 204
    assert_error(post(beacon("other"), evil), 403, "origin_not_allowed")
    # every beacon of a body counts, however the app name is written
    assert_error(post([beacon("other"), beacon("shop")], www), 403, "origin_not_allowed")
    ndjson = orjson.dumps(beacon("other")) + b"\n" + orjson.dumps(beacon("shop"))
    assert_error(post(None, www, ndjson), 403, "origin_not_allowed")
    escaped = orjson.dumps(beacon("shop")).replace(b'"shop"', b'"sh\\u006fp"')
    assert_error(post(None, www, escaped), 403, "origin_not_allowed")
    get = server.request("GET", "/beacon?" + urlencode({"d": orjson.dumps(beacon("shop"))}),
                         headers={"Origin": www})  # fmt: skip
    assert_error(get, 403, "origin_not_allowed")
    # the other receivers check the app they found: Faro's meta.app.name, Boomerang's ?app=
    faro = {"meta": {"app": {"name": "shop"}, "session": {"id": uuid.uuid4().hex}},
            "exceptions": [{"type": "Error", "value": "boom",
                            "timestamp": "2026-11-26T07:00:00Z"}]}
    assert_error(server.request("POST", "/collect", orjson.dumps(faro),
                                {"Origin": www, "Content-Type": "application/json"}),
                 403, "origin_not_allowed")  # fmt: skip
    status, _, body = server.request("POST", "/collect", orjson.dumps(faro),
                                     {"Origin": shop, "Content-Type": "application/json"})
    assert status == 202, body
    boomerang = urlencode({"rt.si": uuid.uuid4().hex, "u": "https://shop.example.com/",
                           "t_done": "900", "sb": "1"})  # fmt: skip
    assert_error(server.request("POST", "/beacon/boomerang?app=shop", boomerang.encode(),
                                {"Origin": www,
                                 "Content-Type": "application/x-www-form-urlencoded"}),
                 403, "origin_not_allowed")  # fmt: skip
    # the preflight knows no app yet: an origin of any list passes, any other is refused
    for origin, status in ((shop, 204), (www, 204), (evil, 204)):
        assert server.request("OPTIONS", "/beacon", headers={"Origin": origin})[0] == status
    # nothing refused reached the store: shop holds only the one beacon from its own page
    assert len(wait_for_sessions(server, "shop", 2)) == 2  # the native one and Faro's
    time.sleep(1.5)
    assert len(wait_for_sessions(server, "shop", 2)) == 2
    assert rejected_count(server, "origin_not_allowed") == 7


def test_app_origins_gate_refuses_origins_of_no_list(start_server: StartServer):
    server = start_server(env={
        "RUMLINE_ALLOWED_ORIGINS": "https://www.example.com",
        "RUMLINE_INGEST_APP_ORIGINS": '{"shop": ["https://shop.example.com"]}',
    })  # fmt: skip
    evil = server.request("OPTIONS", "/beacon", headers={"Origin": "https://evil.example"})
    assert_error(evil, 403, "origin_not_allowed")
    ok = server.request("OPTIONS", "/beacon", headers={"Origin": "https://shop.example.com"})
    assert ok[0] == 204 and ok[1]["access-control-allow-origin"] == "https://shop.example.com"


# --- rate limit and overload ---------------------------------------------------------------


def test_rate_limit_is_429_with_retry_after(start_server: StartServer):
    server = start_server(env={
        "RUMLINE_INGEST_RATE_LIMIT_IP": "1", "RUMLINE_INGEST_RATE_LIMIT_IP_BURST": "3",
    })  # fmt: skip
    body = orjson.dumps(beacon("limited"))
    statuses = [server.request("POST", "/beacon", body) for _ in range(5)]
    assert [s[0] for s in statuses[:3]] == [204, 204, 204]
    assert_error(statuses[4], 429, "rate_limited")
    assert int(statuses[4][1]["retry-after"]) >= 1


def test_rate_limit_holds_across_front_processes(start_server: StartServer):
    """With `--workers 2` each front takes half of the limit: on fresh connections (spread
    over both fronts by SO_REUSEPORT) a client still gets no more than the burst plus the
    rate, not twice that."""
    server = start_server(workers=2, env={
        "RUMLINE_INGEST_RATE_LIMIT_IP": "1", "RUMLINE_INGEST_RATE_LIMIT_IP_BURST": "10",
    })  # fmt: skip
    deadline = time.monotonic() + 10
    while server.log().count("listening") < 2:  # both fronts bound the port
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    body = orjson.dumps(beacon(unique_app("fronts")))
    started = time.monotonic()
    statuses = [server.request("POST", "/beacon", body)[0] for _ in range(60)]
    elapsed = time.monotonic() - started
    assert set(statuses) <= {204, 429}, statuses
    assert 5 <= statuses.count(204) <= 10 + elapsed * 1 + 1, (statuses.count(204), elapsed)


def test_per_app_rate_limit(start_server: StartServer):
    server = start_server(env={
        "RUMLINE_INGEST_RATE_LIMIT_APP": "0.5", "RUMLINE_INGEST_RATE_LIMIT_APP_BURST": "2",
    })  # fmt: skip
    noisy, quiet = unique_app("noisy"), unique_app("quiet")
    statuses = [server.request("POST", "/beacon", orjson.dumps(beacon(noisy))) for _ in range(3)]
    assert [s[0] for s in statuses[:2]] == [204, 204]
    assert_error(statuses[2], 429, "rate_limited")
    assert server.request("POST", "/beacon", orjson.dumps(beacon(quiet)))[0] == 204
    get = "/beacon?d=" + quote(orjson.dumps(beacon(noisy)).decode())
    assert_error(server.request("GET", get), 429, "rate_limited")


def test_full_queue_is_503_with_retry_after_and_nothing_acknowledged_is_lost(
    start_server: StartServer,
):
    server = start_server(env={
        "RUMLINE_INGEST_QUEUE_MAX_REQUESTS": "1", "RUMLINE_INGEST_BATCH_MAX_REQUESTS": "1",
    })  # fmt: skip
    app = unique_app("overload")
    bodies = [orjson.dumps(beacon(app)) for _ in range(300)]
    with ThreadPoolExecutor(64) as pool:
        responses = list(pool.map(lambda b: server.request("POST", "/beacon", b), bodies))
    accepted = [r for r in responses if r[0] == 204]
    busy = [r for r in responses if r[0] == 503]
    assert len(accepted) + len(busy) == len(responses)
    assert busy, "a queue of 1 under 64 concurrent senders must overflow"
    for response in busy:
        assert_error(response, 503, "overloaded")
        assert response[1]["retry-after"] == "1"
    wait_for_sessions(server, app, len(accepted))
    time.sleep(0.5)
    status, body = server.get_json(f"/api/v1/sessions?app={app}&limit=1000")
    assert len(body["sessions"]) == len(accepted)  # type: ignore[index]


# --- health --------------------------------------------------------------------------------


def test_healthz_and_readyz(shared_server: ServerProcess):
    assert shared_server.get_json("/healthz") == (200, {"status": "ok"})
    assert shared_server.get_json("/readyz") == (200, {"status": "ready"})


# --- client address --------------------------------------------------------------------------


def ip_of_session(server: ServerProcess, app: str, headers: dict[str, str]) -> str:
    assert server.request("POST", "/beacon", orjson.dumps(beacon(app)), headers)[0] == 204
    [session] = wait_for_sessions(server, app, 1)
    return session["ip"]


def test_x_forwarded_for_is_ignored_unless_the_proxy_is_trusted(shared_server: ServerProcess):
    forwarded = {"X-Forwarded-For": "203.0.113.77"}
    assert ip_of_session(shared_server, unique_app("xff"), forwarded) == "127.0.0.0"


def test_x_forwarded_for_from_a_trusted_proxy(start_server: StartServer):
    server = start_server(env={"RUMLINE_INGEST_TRUSTED_PROXIES": "127.0.0.0/8, 10.0.0.0/8"})
    # The right-most untrusted hop is the client; what it claims about hops before it is not.
    chain = {"X-Forwarded-For": "198.51.100.1, 203.0.113.77, 10.1.2.3"}
    assert ip_of_session(server, unique_app("xff"), chain) == "203.0.113.0"
    assert ip_of_session(server, unique_app("xff"), {}) == "127.0.0.0"
    garbage = {"X-Forwarded-For": "not-an-address"}
    assert ip_of_session(server, unique_app("xff"), garbage) == "127.0.0.0"
