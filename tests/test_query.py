"""Query API contract: `/api/v1/…` over a real LMDB filled by the real core (in-process server).

The end-to-end version over a real collector process is tests/test_support_scenario.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from collector import query
from collector.appkeys import SETTINGS, STORE
from collector.config import Settings
from collector.query import setup_query_routes
from collector.store import Store
from tests.query_corpus import (
    DANIEL,
    DAY,
    HOUR,
    INCIDENT_AT,
    LIVE_AT,
    T0,
    TRACE_ID,
    TRACEPARENT,
    Corpus,
    Visit,
    build_corpus,
    load,
)

Summary = dict[str, Any]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = Store(Path(tmp_path_factory.mktemp("lmdb")))
    build_corpus(store)
    yield store
    store.close()


def make_app(store: Store, settings: Settings | None = None) -> web.Application:
    app = web.Application()
    app[STORE] = store
    app[SETTINGS] = settings or Settings()
    setup_query_routes(app)
    return app


@pytest.fixture
async def client(store: Store) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(make_app(store))) as client:
        yield client


async def get(client: TestClient, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = await client.get(path, **kwargs)
    return response.status, await response.json()


async def all_pages(client: TestClient, path: str, params: list[tuple[str, str]],
                    limit: int = 5) -> tuple[list[Summary], int]:  # fmt: skip
    """Every session of a query, following next_cursor; (sessions, pages)."""
    sessions: list[Summary] = []
    cursor: str | None = None
    pages = 0
    while True:
        page_params = [*params, ("limit", str(limit))]
        if cursor:
            page_params.append(("cursor", cursor))
        status, body = await get(client, path, params=page_params)
        assert status == 200, body
        assert len(body["sessions"]) <= limit
        sessions += body["sessions"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return sessions, pages
        assert pages < 1000, "paging does not end"


def ids(sessions: list[Summary]) -> list[str]:
    return [s["client_sid"] for s in sessions]


def order_key(s: Summary) -> tuple[int, str]:
    return s["start"], s["session_id"]


@pytest.fixture
async def everything(client: TestClient) -> list[Summary]:
    """All sessions, closed and live, in API order (one big page)."""
    status, body = await get(client, "/api/v1/sessions", params={"limit": "1000"})
    assert status == 200 and body["next_cursor"] is None
    return body["sessions"]


# --- the support scenario -------------------------------------------------------------------


async def test_support_query_finds_exactly_daniels_failed_checkout(client: TestClient) -> None:
    params = [
        ("user", DANIEL), ("has_error", "true"), ("ux", "frustrating"),
        ("from", str(INCIDENT_AT - 30 * 60_000)),
        ("to", datetime.fromtimestamp((INCIDENT_AT + 30 * 60_000) / 1000, UTC).isoformat()),
    ]  # fmt: skip
    status, body = await get(client, "/api/v1/sessions", params=params)
    assert status == 200
    assert ids(body["sessions"]) == ["daniel-incident-0001"]
    assert body["next_cursor"] is None
    found = body["sessions"][0]
    assert found["user_tag"] == DANIEL and found["ux_score"] == "frustrating"
    assert found["has_error"] is True and found["live"] is False

    # Second call: the timeline names the failed request, its trace and its rating.
    status, detail = await get(client, f"/api/v1/sessions/{found['session_id']}")
    assert status == 200
    assert detail["session_id"] == found["session_id"] and detail["ux_score"] == "frustrating"
    timeline = detail["timeline"]
    [checkout] = [a for a in timeline["actions"] if a["name"] == "POST /checkout"]
    assert checkout["status"] == 500 and checkout["method"] == "POST"
    assert checkout["traceparent"] == TRACEPARENT and checkout["trace_id"] == TRACE_ID
    assert checkout["apdex"] == "frustrated"
    [page_load] = [a for a in timeline["actions"] if a["type"] == "load"]
    assert page_load["name"] == "loading of page /cart/checkout"
    [failure] = timeline["errors"]
    assert failure["kind"] == "request" and failure["message"] == "POST /checkout 500"
    assert failure["action"] == checkout["index"]


async def test_user_endpoint_equals_user_filter(client: TestClient) -> None:
    by_path, _ = await all_pages(client, f"/api/v1/users/{quote(DANIEL)}/sessions", [])
    by_filter, _ = await all_pages(client, "/api/v1/sessions", [("user", DANIEL)])
    assert by_path == by_filter
    assert set(ids(by_path)) == {
        "daniel-incident-0001", "daniel-yesterday-01", "daniel-tolerable-01",
        "daniel-slow-000001", "blog-reader-00001", "daniel-live-000001",
    }  # fmt: skip
    # The other filters still apply on the user endpoint.
    status, body = await get(
        client, f"/api/v1/users/{DANIEL}/sessions", params={"app": "blog"}
    )
    assert status == 200 and ids(body["sessions"]) == ["blog-reader-00001"]


# --- every filter against an independent oracle ------------------------------------------------


def has_kind(kind: str) -> Callable[[Summary], bool]:
    return lambda s: s["errors_by_kind"][kind] > 0


FILTERS: list[tuple[list[tuple[str, str]], Callable[[Summary], bool]]] = [
    ([("app", "blog")], lambda s: s["app"] == "blog"),
    ([("app", "blog"), ("app", "news")], lambda s: s["app"] in ("blog", "news")),
    ([("user", DANIEL)], lambda s: s["user_tag"] == DANIEL),
    ([("user", "reader1@example.com"), ("user", "maria@example.com")],
     lambda s: s["user_tag"] in ("reader1@example.com", "maria@example.com")),
    ([("from", str(T0 + 3 * HOUR))], lambda s: s["start"] >= T0 + 3 * HOUR),
    ([("to", str(T0 + 2 * HOUR))], lambda s: s["start"] <= T0 + 2 * HOUR),
    ([("from", "2025-11-26T06:05:00Z"), ("to", "2025-11-26T06:20:00+00:00")],
     lambda s: T0 + 3 * HOUR + 5 * 60_000 <= s["start"] <= T0 + 3 * HOUR + 20 * 60_000),
    ([("ux", "frustrating")], lambda s: s["ux_score"] == "frustrating"),
    ([("ux", "satisfying"), ("ux", "tolerable")],
     lambda s: s["ux_score"] in ("satisfying", "tolerable")),
    ([("has_error", "true")], lambda s: s["has_error"]),
    ([("has_error", "false")], lambda s: not s["has_error"]),
    ([("error_kind", "request")], has_kind("request")),
    ([("error_kind", "custom"), ("error_kind", "request")],
     lambda s: has_kind("custom")(s) or has_kind("request")(s)),
    ([("browser", "firefox")], lambda s: s["browser"]["family"] == "Firefox"),
    ([("os", "iOS")], lambda s: s["os"]["family"] == "iOS"),
    ([("device_type", "mobile"), ("device_type", "tablet")],
     lambda s: s["device_type"] in ("mobile", "tablet")),
    ([("device_type", "bot")], lambda s: s["device_type"] == "bot"),
    ([("country", "US")], lambda s: s["country"] == "US"),
    ([("user_type", "robot")], lambda s: s["user_type"] == "robot"),
    ([("user_type", "synthetic"), ("user_type", "robot")],
     lambda s: s["user_type"] in ("synthetic", "robot")),
    ([("bounce", "true")], lambda s: s["bounce"]),
    ([("bounce", "false")], lambda s: not s["bounce"]),
    ([("min_duration", "3000")], lambda s: s["duration_ms"] >= 3000),
    ([("max_duration", "1000")], lambda s: s["duration_ms"] <= 1000),
    ([("min_duration", "1000"), ("max_duration", "2000")],
     lambda s: 1000 <= s["duration_ms"] <= 2000),
    ([("action", "POST /checkout")], lambda s: "POST /checkout" in s["action_names"]),
    ([("action", "GET /api/feed"), ("action", "click on 'Like'")],
     lambda s: bool({"GET /api/feed", "click on 'Like'"} & set(s["action_names"]))),
    ([("live", "true")], lambda s: s["live"]),
    ([("live", "false")], lambda s: not s["live"]),
    # AND across filters, with the index chosen by user, by app, or by time.
    ([("user", DANIEL), ("has_error", "true"), ("live", "false")],
     lambda s: s["user_tag"] == DANIEL and s["has_error"] and not s["live"]),
    ([("app", "news"), ("error_kind", "js"), ("min_duration", "2000")],
     lambda s: s["app"] == "news" and has_kind("js")(s) and s["duration_ms"] >= 2000),
    ([("user", DANIEL), ("app", "shop"), ("ux", "frustrating")],
     lambda s: s["user_tag"] == DANIEL and s["app"] == "shop" and s["ux_score"] == "frustrating"),
    ([("has_error", "true"), ("has_error", "false"), ("bounce", "1")], lambda s: s["bounce"]),
    ([("app", ""), ("user", "")], lambda s: True),  # empty values are ignored
]
@pytest.mark.parametrize(("params", "oracle"), FILTERS, ids=[repr(p) for p, _ in FILTERS])
async def test_filter_matches_oracle(
    client: TestClient, everything: list[Summary], params: list[tuple[str, str]],
    oracle: Callable[[Summary], bool],
) -> None:  # fmt: skip
    expected = [s for s in everything if oracle(s)]
    got, _ = await all_pages(client, "/api/v1/sessions", params, limit=4)
    assert ids(got) == ids(expected)


def test_oracle_filters_are_not_vacuous(store: Store) -> None:
    """Each filter value of the corpus selects some but not all sessions (else the oracle
    test above proves little)."""
    sessions, _ = query.find_sessions(store, query.parse_query(_md({"limit": "1000"})))
    n = len(sessions)
    assert n == 5 + 5 + 45 + 2
    for params, oracle in FILTERS:
        k = sum(map(oracle, sessions))
        if params in ([("country", "US")], [("app", ""), ("user", "")]):
            continue  # no geo database: nobody has a country; empty filters select all
        assert 0 < k < n, params


def _md(d: dict[str, str]) -> Any:
    from multidict import MultiDict

    return MultiDict(d)


async def test_everything_is_newest_first_with_live_sessions(everything: list[Summary]) -> None:
    keys = [order_key(s) for s in everything]
    assert keys == sorted(keys, reverse=True)
    live = [s for s in everything if s["live"]]
    assert ids(live) == ["news-live-0000001", "daniel-live-000001"]
    assert all(s["ux_score"] is None and s["end_reason"] is None for s in live)
    assert all(s["start"] < LIVE_AT for s in live)


# --- paging --------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 50])
async def test_paging_has_no_duplicates_or_gaps(
    client: TestClient, everything: list[Summary], limit: int
) -> None:
    pages_sessions, pages = await all_pages(client, "/api/v1/sessions", [], limit=limit)
    assert ids(pages_sessions) == ids(everything)
    assert pages >= len(everything) // limit


async def test_last_page_has_null_cursor(client: TestClient, everything: list[Summary]) -> None:
    status, body = await get(client, "/api/v1/sessions", params={"limit": str(len(everything))})
    assert status == 200 and body["next_cursor"] is None
    status, body = await get(client, "/api/v1/sessions", params={"limit": "1"})
    assert body["next_cursor"] is not None


async def test_default_limit_is_50(client: TestClient) -> None:
    status, body = await get(client, "/api/v1/sessions")
    assert status == 200 and len(body["sessions"]) == 50 and body["next_cursor"]


async def test_paging_is_stable_under_concurrent_inserts(tmp_path: Path) -> None:
    store = Store(tmp_path / "lmdb")
    corpus = Corpus(store)
    base = T0 + 10 * DAY
    corpus.send(Visit(f"first-{i:03d}-xxxxxxx", at=base + i * 1000, app="news",
                      events=[load(base + i * 1000 - 500)]) for i in range(30))  # fmt: skip
    corpus.close_idle(base + HOUR)
    try:
        async with TestClient(TestServer(make_app(store))) as client:
            status, body = await get(client, "/api/v1/sessions", params={"limit": "10"})
            seen = ids(body["sessions"])
            cursor = body["next_cursor"]
            # Meanwhile sessions close that started after the first page (above the cursor)
            # and before the oldest session (below it). Client times are trusted up to the
            # 6 h duration limit back from the receive time.
            later = base + 2 * HOUR
            corpus.send([
                *(Visit(f"newer-{i:03d}-xxxxxxx", at=later + i, app="news",
                        events=[load(later - 1000 + i)]) for i in range(5)),
                *(Visit(f"older-{i:03d}-xxxxxxx", at=later + 10 + i, app="news",
                        events=[load(base - 60_000 + i)]) for i in range(5)),
            ])  # fmt: skip
            corpus.close_idle(base + 3 * HOUR)
            while cursor:
                status, body = await get(
                    client, "/api/v1/sessions", params={"limit": "10", "cursor": cursor}
                )
                assert status == 200
                seen += ids(body["sessions"])
                cursor = body["next_cursor"]
    finally:
        store.close()
    assert len(seen) == len(set(seen))
    firsts = [s for s in seen if s.startswith("first-")]
    assert firsts == [f"first-{i:03d}-xxxxxxx" for i in reversed(range(30))]
    # Older sessions lie below the cursor and are found; newer ones are above it.
    assert sorted(s for s in seen if s.startswith("older-")) == [
        f"older-{i:03d}-xxxxxxx" for i in range(5)
    ]
    assert not [s for s in seen if s.startswith("newer-")]


async def test_scan_budget_answers_short_pages_with_a_cursor(
    client: TestClient, everything: list[Summary], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A selective filter over many sessions: pages may be short or empty, only a null cursor
    ends the result, and the union is exactly the matching sessions."""
    monkeypatch.setattr(query, "SCAN_BUDGET", 4)
    oracle = [s for s in everything if s["client_sid"].startswith("daniel-")]
    got, pages = await all_pages(
        client, "/api/v1/sessions", [("user", DANIEL), ("app", "shop")], limit=2
    )
    assert ids(got) == ids(oracle)
    got, pages = await all_pages(client, "/api/v1/sessions", [("action", "POST /checkout")])
    assert ids(got) == ids(s for s in everything if "POST /checkout" in s["action_names"])
    # The budget, not the limit, cut the pages: 4 index entries (of a closed or an open
    # session) examined per page.
    assert pages == -(-len(everything) // 4)


# --- detail ------------------------------------------------------------------------------------


async def test_detail_of_every_session(client: TestClient, everything: list[Summary]) -> None:
    for summary in everything:
        status, detail = await get(client, f"/api/v1/sessions/{summary['session_id']}")
        assert status == 200
        timeline = detail.pop("timeline")
        assert detail == summary
        # open sessions too: their timeline so far, as last published
        assert len(timeline["actions"]) == summary["action_count"]
        assert len(timeline["errors"]) == summary["error_count"]


async def test_detail_has_vitals_rage_clicks_properties(
    client: TestClient, everything: list[Summary]
) -> None:
    by_sid = {s["client_sid"]: s for s in everything}
    _, blog = await get(client, f"/api/v1/sessions/{by_sid['blog-reader-00001']['session_id']}")
    assert blog["properties"] == {"plan": "gold"} == blog["timeline"]["properties"]
    assert blog["timeline"]["user_tags"][0]["tag"] == DANIEL
    _, tablet = await get(client, f"/api/v1/sessions/{by_sid['tablet-visitor-001']['session_id']}")
    assert tablet["timeline"]["rage_clicks"][0]["target"] == "button#pay"
    _, incident = await get(
        client, f"/api/v1/sessions/{by_sid['daniel-incident-0001']['session_id']}"
    )
    assert incident["vitals"]["LCP"] == {"value": 4100, "rating": "poor"}
    assert incident["timeline"]["vitals"][0]["name"] == "LCP"


@pytest.mark.parametrize("session_id", [
    "0" * 32, "nope", "x" * 600, "%00", "ABCDEF0123456789ABCDEF0123456789",
])  # fmt: skip
async def test_unknown_session_is_404_json(client: TestClient, session_id: str) -> None:
    status, body = await get(client, f"/api/v1/sessions/{session_id}")
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_unknown_api_path_is_404_json(client: TestClient) -> None:
    status, body = await get(client, "/api/v1/nothing/here")
    assert status == 404 and body["error"]["code"] == "not_found"


# --- bad filters -----------------------------------------------------------------------------


@pytest.mark.parametrize("params", [
    {"usr": DANIEL},
    {"ux": "awful"},
    {"has_error": "maybe"},
    {"bounce": "2"},
    {"live": "sometimes"},
    {"error_kind": "network"},
    {"device_type": "phone"},
    {"user_type": "human"},
    {"from": "yesterday"},
    {"to": "2025-13-01"},
    {"from": "-5"},
    {"from": "99999999999999999"},
    {"from": str(T0 + 1000), "to": str(T0)},
    {"min_duration": "-1"},
    {"max_duration": "1.5"},
    {"limit": "0"},
    {"limit": "1001"},
    {"limit": "ten"},
    {"cursor": "not-a-cursor"},
    {"cursor": "AQAAAZq-jyAAZGFuaWVs"},
])  # fmt: skip
async def test_bad_filter_is_400(client: TestClient, params: dict[str, str]) -> None:
    status, body = await get(client, "/api/v1/sessions", params=params)
    assert status == 400, body
    assert body["error"]["code"] == "bad_filter"
    assert next(iter(params)) in body["error"]["message"] or "cursor" in body["error"]["message"]


async def test_repeated_single_valued_parameter_is_400(client: TestClient) -> None:
    for name, value in [("limit", "5"), ("from", str(T0)), ("cursor", "x")]:
        status, body = await get(client, "/api/v1/sessions", params=[(name, value)] * 2)
        assert status == 400 and name in body["error"]["message"]


async def test_user_in_path_and_query_is_400(client: TestClient) -> None:
    status, body = await get(client, f"/api/v1/users/{DANIEL}/sessions", params={"user": "x"})
    assert status == 400 and body["error"]["code"] == "bad_filter"


# --- user tags in paths ------------------------------------------------------------------------


async def test_user_tags_with_url_special_characters(tmp_path: Path) -> None:
    store = Store(tmp_path / "lmdb")
    corpus = Corpus(store)
    tags = ["a/b@example.com", "name with spaces", "ünïcødé", "x?y#z", "plus+sign"]
    corpus.send(Visit(f"special-{i:02d}-xxxxxxx", at=T0 + i, user=tag,
                      events=[load(T0 + i - 100)]) for i, tag in enumerate(tags))  # fmt: skip
    corpus.close_idle(T0 + DAY)
    try:
        async with TestClient(TestServer(make_app(store))) as client:
            for tag in tags:
                status, body = await get(client, f"/api/v1/users/{quote(tag, safe='')}/sessions")
                assert status == 200, (tag, body)
                assert [s["user_tag"] for s in body["sessions"]] == [tag]
                status, body = await get(client, "/api/v1/sessions", params={"user": tag})
                assert [s["user_tag"] for s in body["sessions"]] == [tag]
    finally:
        store.close()


async def test_tag_that_prefixes_another_tag_does_not_match_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "lmdb")
    corpus = Corpus(store)
    tags = ["ann", "ann\x00x", "anna", "an"]
    corpus.send(Visit(f"prefix-{i:02d}-xxxxxxxx", at=T0 + i, user=tag,
                      events=[load(T0 + i - 100)]) for i, tag in enumerate(tags))  # fmt: skip
    corpus.close_idle(T0 + DAY)
    try:
        async with TestClient(TestServer(make_app(store))) as client:
            for tag in tags:
                status, body = await get(client, "/api/v1/sessions", params={"user": tag})
                assert [s["user_tag"] for s in body["sessions"]] == [tag]
    finally:
        store.close()


# --- bearer token ------------------------------------------------------------------------------


@pytest.fixture
async def locked_client(store: Store) -> AsyncIterator[TestClient]:
    app = make_app(store, Settings(api_token="s3cret-token"))
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.mark.parametrize("path", [
    "/api/v1/sessions", f"/api/v1/users/{DANIEL}/sessions", "/api/v1/sessions/" + "0" * 32,
    "/api/v1/elsewhere",
])  # fmt: skip
@pytest.mark.parametrize("header", [
    None, "Bearer wrong", "Bearer s3cret-toke", "Bearer s3cret-token2", "Basic s3cret-token",
    "s3cret-token", "Bearer",
])  # fmt: skip
async def test_bad_token_is_401(locked_client: TestClient, path: str, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = await locked_client.get(path, headers=headers)
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer s3cret-token", "bearer s3cret-token"])
async def test_good_token_is_accepted(locked_client: TestClient, header: str) -> None:
    status, body = await get(
        locked_client, "/api/v1/sessions", params={"user": DANIEL},
        headers={"Authorization": header},
    )  # fmt: skip
    assert status == 200 and len(body["sessions"]) == 6


async def test_user_lookup_walks_only_that_users_index_entries(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a budget of 6 entries per request, Daniel's 6 sessions (5 closed, 1 open) come in
    one page among 57 sessions: the user index was walked, not the whole store."""
    monkeypatch.setattr(query, "SCAN_BUDGET", 6)
    status, body = await get(client, "/api/v1/sessions", params={"user": DANIEL})
    assert status == 200 and len(body["sessions"]) == 6 and body["next_cursor"] is None
    status, body = await get(client, "/api/v1/sessions", params={"app": "blog"})
    assert status == 200 and len(body["sessions"]) == 1 and body["next_cursor"] is None
    # The same selectivity without an index needs many pages.
    status, body = await get(client, "/api/v1/sessions", params={"action": "click on 'Like'"})
    assert status == 200 and body["next_cursor"] is not None


@pytest.mark.parametrize(("text", "ms"), [
    ("1764126000000", T0),
    ("2025-11-26T03:00:00Z", T0),
    ("2025-11-26T03:00:00", T0),  # no offset: UTC
    ("2025-11-26T04:00:00+01:00", T0),
    ("2025-11-26T04:00:00 01:00", T0),  # '+' sent unencoded in the URL
    ("2025-11-26T03:00:00.123Z", T0 + 123),  # exact, no float rounding
    ("2025-11-26T03:00:00.999999Z", T0 + 999),
    ("2025-11-26", T0 - 3 * HOUR),
])  # fmt: skip
def test_from_and_to_accept_epoch_ms_and_iso_8601(text: str, ms: int) -> None:
    q = query.parse_query(_md({"from": text, "to": text}))
    assert q.start_from == q.start_to == ms


def _live_core(tmp_path: Path):
    """A real core and an empty store; `send(sid, user, start_ms)` ingests one beacon of one
    load action and publishes what changed, as the sessionizer does."""
    import orjson

    from collector import Sessionizer, prepare

    live_store = Store(tmp_path / "live")
    core = Sessionizer({"timeout_ms": 3_600_000})

    def send(sid: str, user: str | None, start: int) -> None:
        body = {"v": 1, "app": "shop", "sid": sid, "sent": start,
                "events": [{"type": "load", "name": "home", "start": start, "dur": 100}]}
        if user:
            body["user"] = user
        records, verdicts, _ = prepare([(start, "10.0.0.1", "Mozilla/5.0", 0,
                                         orjson.dumps(body))])  # fmt: skip
        assert verdicts == [None]
        core.ingest(records, start)
        live_store.write(lambda txn: live_store.put_live(txn, core.live()))

    return live_store, core, send


def test_a_user_lookup_reads_only_that_users_open_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Open sessions are indexed: with 300 other users' sessions open, a lookup of one user
    finds theirs within a scan budget of 2 entries (it used to read every live summary)."""
    live_store, _, send = _live_core(tmp_path)
    try:
        for i in range(300):
            send(f"other-session-{i:04d}", f"user{i}@example.com", T0 + i * 1000)
        send("daniel-session-1", DANIEL, T0 + 150_500)
        q = query.parse_query(_md({"user": DANIEL}))
        parsed = []
        loads = query.orjson.loads
        monkeypatch.setattr(query.orjson, "loads", lambda raw: parsed.append(raw) or loads(raw))
        page, cursor = query.find_sessions(live_store, q, scan_budget=2)
        monkeypatch.undo()
        assert [s["client_sid"] for s in page] == ["daniel-session-1"] and cursor is None
        assert page[0]["live"] is True
        assert len(parsed) == 1, "only that user's open session is read"
        # an open summary without index entries is not found: the lookup goes by the index
        unindexed = dict(page[0], session_id="f" * 32, client_sid="unindexed-session")
        live_store.write(lambda txn: txn.put(b"f" * 32, query.orjson.dumps(unindexed),
                                             db=live_store.dbs["live"]))  # fmt: skip
        page, _ = query.find_sessions(live_store, q)
        assert [s["client_sid"] for s in page] == ["daniel-session-1"]
        # without a user, every open session is listed, newest first, across pages
        seen: list[str] = []
        cursor = None
        while True:
            q = query.parse_query(_md({"limit": "100", **({"cursor": cursor} if cursor else {})}))
            page, cursor = query.find_sessions(live_store, q)
            seen += [s["client_sid"] for s in page]
            if cursor is None:
                break
        assert len(seen) == 301 == len(set(seen))
        assert seen[0] == "other-session-0299" and seen[-1] == "other-session-0000"
    finally:
        live_store.close()


def test_open_session_index_follows_its_user_tag_and_start_then_its_close(tmp_path: Path) -> None:
    """A user tag given later, and a start moved earlier by a late action, move the open
    session's index entries; closing it removes them."""
    live_store, core, send = _live_core(tmp_path)

    def found(**params: str) -> list[Summary]:
        return query.find_sessions(live_store, query.parse_query(_md(params)))[0]

    try:
        send("moving-session", None, T0 + HOUR)
        assert [s["user_tag"] for s in found(app="shop")] == [None]
        send("moving-session", "ann@example.com", T0 + HOUR + 1000)
        assert [s["start"] for s in found(user="ann@example.com")] == [T0 + HOUR]
        send("moving-session", "ben@example.com", T0)  # an action before the first one
        assert found(user="ann@example.com") == []
        [ben] = found(user="ben@example.com")
        assert ben["start"] == T0 and ben["live"] is True
        assert found(app="shop", to=str(T0 + HOUR - 1)) == [ben]
        assert found(app="shop", **{"from": str(T0 + 1)}) == []
        with live_store.read() as txn:
            for name in ("live_by_time", "live_by_app", "live_by_user"):
                assert txn.stat(live_store.dbs[name])["entries"] == 1, name

        [closed] = core.flush(T0 + 10 * HOUR).closed
        live_store.write(lambda txn: live_store.put_closed(txn, closed))
        [after] = found(user="ben@example.com")
        assert after["live"] is False and after["session_id"] == ben["session_id"]
        with live_store.read() as txn:
            for name in ("live", "live_details", "live_by_time", "live_by_app", "live_by_user"):
                assert txn.stat(live_store.dbs[name])["entries"] == 0, name
    finally:
        live_store.close()


def test_a_stale_open_copy_of_a_closed_session_does_not_hide_it(tmp_path: Path) -> None:
    """An open entry of a session whose closed copy is stored too (not written by this
    sessionizer; defended anyway), with a later start (a late action moved it earlier
    before the close): the list shows the closed copy, once, whatever the page's budget."""
    from collector.store import LIVE_INDEXES, live_index_keys, live_keys_value

    live_store, core, send = _live_core(tmp_path)
    try:
        send("replayed-session", "ann@example.com", T0 + HOUR)
        key = query.find_sessions(live_store, query.parse_query(_md({})))[0][0]["session_id"]
        with live_store.read() as txn:
            stale = bytes(txn.get(key.encode(), db=live_store.dbs["live"]))
            made_of = bytes(txn.get(key.encode(), db=live_store.dbs["live_keys"]))
        send("replayed-session", None, T0)
        [closed] = core.flush(T0 + 10 * HOUR).closed
        live_store.write(lambda txn: live_store.put_closed(txn, closed))

        def republish(txn: Any) -> None:
            txn.put(key.encode(), stale, db=live_store.dbs["live"])
            txn.put(key.encode(), made_of, db=live_store.dbs["live_keys"])
            live_store._put_indexes(txn, LIVE_INDEXES, live_index_keys(key, made_of))

        live_store.write(republish)
        for params in ({}, {"user": "ann@example.com"}, {"app": "shop"}):
            page = query.find_sessions(live_store, query.parse_query(_md(params)))[0]
            assert [(s["session_id"], s["live"], s["start"]) for s in page] == [
                (key, False, T0)
            ], params
        # the same start for both copies, one entry examined per page: still listed
        same_start = live_keys_value(T0, "shop", "ann@example.com")

        def republish_at_close_start(txn: Any) -> None:
            live_store._delete_keys(txn, LIVE_INDEXES, live_index_keys(key, made_of))
            txn.put(key.encode(), same_start, db=live_store.dbs["live_keys"])
            live_store._put_indexes(txn, LIVE_INDEXES, live_index_keys(key, same_start))

        live_store.write(republish_at_close_start)
        found: list[tuple[str, bool]] = []
        cursor: str | None = None
        while True:
            params = {"user": "ann@example.com", **({"cursor": cursor} if cursor else {})}
            page, cursor = query.find_sessions(live_store, query.parse_query(_md(params)),
                                               scan_budget=1)  # fmt: skip
            found += [(s["session_id"], s["live"]) for s in page]
            if cursor is None:
                break
        assert found == [(key, False)]
    finally:
        live_store.close()
