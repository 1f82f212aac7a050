"""The query API (`/api/v1/…`, DESIGN.md "Query API"): handlers and filter parsing.

Reading: every request reads one consistent LMDB snapshot (one read-only transaction), so it
never blocks the sessionizer's writes. A list request picks one index to walk newest first:
`by_user` when `user` is given, else `by_app` when `app` is given, else `by_time`; each value of
that filter is a key prefix and the prefixes are merged. The open sessions are indexed the same
way (`live_by_user`, `live_by_app`, `live_by_time`, see store.py) and merged into the same
order, so a request reads the open sessions it can match, not every one (a user-tag lookup with
100k sessions open took 100 ms to 1.3 s when it read them all). Every other filter is checked
on the summary JSON. List queries run
in the default thread pool (a scan can take a while); the single-session lookup is two gets and
runs on the loop.

Order and paging: sessions are ordered by `(start, session_id)`, newest first. A cursor is that
pair of the last position examined, and the next page continues strictly below it, so paging
never repeats or skips a session that existed when paging started, whatever is inserted
meanwhile. A page examines at most `SCAN_BUDGET` index entries; a selective filter over a large
store then answers a short (even empty) page with a `next_cursor`: the end of the results is
`next_cursor: null`, never a short page.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import heapq
import hmac
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import lmdb
import orjson
from aiohttp import web
from multidict import MultiMapping

from collector._core import unpack_detail
from collector.appkeys import SETTINGS, STORE
from collector.store import CLOSED_INDEXES, LIVE_INDEXES, U64, Store, tag_prefix
from collector.tag_hash import hash_tag

# Defaults of `[api] default_limit / max_limit`.
PAGE_DEFAULT = 50
PAGE_MAX = 1000
# Index entries one list request examines before it answers with a cursor; bounds the time a
# read transaction stays open (old pages cannot be reused by the writer meanwhile) and the time
# a request holds a worker thread: ~10 µs an entry (get + parse a summary), so ~0.1 s.
SCAN_BUDGET = 10_000
# session_id: first 32 hex digits of a sha256 (docs/sessionizer.md §5). Index keys whose tail
# is not u64 + 32 bytes belong to another tag that merely shares the prefix (a tag containing
# NUL); tags longer than the store's key limit share a truncated prefix. Both are told apart
# by matching the summary's `user_tag` / `app`, which `SessionQuery.matches` always does.
SESSION_ID_LEN = 32
_SESSION_ID_RE = re.compile(r"[0-9a-f]{32}")
_CURSOR_VERSION = b"\x01"
# Epoch ms accepted in from/to: up to year 2286, as the core accepts event starts (≤ 10^13).
_MAX_MS = 10**13
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNENCODED_PLUS = re.compile(r"(T[0-9:.,]+) ([0-9]{2}(?::?[0-9]{2})?)$")

UX_SCORES = frozenset({"satisfying", "tolerable", "frustrating"})
ERROR_KINDS = frozenset({"js", "request", "custom"})
DEVICE_TYPES = frozenset({"desktop", "mobile", "tablet", "bot"})
USER_TYPES = frozenset({"real", "synthetic", "robot"})
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})

LIST_PARAMS = frozenset({
    "app", "user", "from", "to", "ux", "has_error", "error_kind", "browser", "os",
    "device_type", "country", "user_type", "bounce", "min_duration", "max_duration", "action",
    "live", "limit", "cursor",
})
# Parameters that take one value: a second one is more likely a mistake than an OR.
_SINGLE = frozenset({"from", "to", "min_duration", "max_duration", "limit", "cursor"})


class ApiError(web.HTTPException):
    """A JSON error `{"error": {"code", "message"}}` with the given HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.status_code = status
        super().__init__(
            headers=headers,
            text=orjson.dumps({"error": {"code": code, "message": message}}).decode(),
            content_type="application/json",
        )


def bad_filter(message: str) -> ApiError:
    return ApiError(400, "bad_filter", message)


# --- filters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    """A place in the newest-first order: sessions sort by (start, session_id) descending."""

    start: int
    session_id: str

    def encode(self) -> str:
        raw = _CURSOR_VERSION + U64.pack(self.start) + self.session_id.encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, cursor: str) -> Position:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise bad_filter("cursor: not a cursor returned by this API") from None
        sid = raw[1 + U64.size:].decode("ascii", "replace")
        if raw[:1] != _CURSOR_VERSION or not _SESSION_ID_RE.fullmatch(sid):
            raise bad_filter("cursor: not a cursor returned by this API")
        return cls(U64.unpack_from(raw, 1)[0], sid)


@dataclass(frozen=True)
class SessionQuery:
    """A parsed `/api/v1/sessions` request. Empty sets mean "no filter"."""

    apps: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    start_from: int | None = None
    start_to: int | None = None
    ux: frozenset[str] = frozenset()
    has_error: frozenset[bool] = frozenset()
    error_kinds: frozenset[str] = frozenset()
    browsers: frozenset[str] = frozenset()  # lower-case families
    oses: frozenset[str] = frozenset()  # lower-case families
    device_types: frozenset[str] = frozenset()
    countries: frozenset[str] = frozenset()  # upper-case
    user_types: frozenset[str] = frozenset()
    bounce: frozenset[bool] = frozenset()
    min_duration: int | None = None
    max_duration: int | None = None
    actions: frozenset[str] = frozenset()
    live: frozenset[bool] = frozenset()
    limit: int = PAGE_DEFAULT
    after: Position | None = field(default=None)

    def matches(self, s: Mapping[str, Any]) -> bool:
        """Every given filter holds (AND); within one filter any value may match (OR)."""
        start = s.get("start") or 0
        duration = s.get("duration_ms") or 0
        return (
            (not self.apps or s.get("app") in self.apps)
            and (not self.users or s.get("user_tag") in self.users)
            and (self.start_from is None or start >= self.start_from)
            and (self.start_to is None or start <= self.start_to)
            and (not self.ux or s.get("ux_score") in self.ux)
            and (not self.has_error or bool(s.get("has_error")) in self.has_error)
            and (not self.error_kinds or any(
                ((s.get("errors_by_kind") or {}).get(kind) or 0) > 0 for kind in self.error_kinds
            ))
            and (not self.browsers or _family(s.get("browser")) in self.browsers)
            and (not self.oses or _family(s.get("os")) in self.oses)
            and (not self.device_types or s.get("device_type") in self.device_types)
            and (not self.countries or (s.get("country") or "").upper() in self.countries)
            and (not self.user_types or s.get("user_type") in self.user_types)
            and (not self.bounce or bool(s.get("bounce")) in self.bounce)
            and (self.min_duration is None or duration >= self.min_duration)
            and (self.max_duration is None or duration <= self.max_duration)
            and (not self.actions or not self.actions.isdisjoint(s.get("action_names") or ()))
            and (not self.live or bool(s.get("live")) in self.live)
        )


def _family(value: Any) -> str | None:
    if isinstance(value, Mapping) and isinstance(value.get("family"), str):
        return value["family"].lower()
    return None


def parse_query(
    params: MultiMapping[str],
    *,
    user: str | None = None,
    default_limit: int = PAGE_DEFAULT,
    max_limit: int = PAGE_MAX,
) -> SessionQuery:
    """Parse and validate query parameters; raises `ApiError` 400 `bad_filter`.

    Empty values (`app=`) are ignored, so clients can send a fixed template. `user`, when
    given, comes from the path (`/users/{tag}/sessions`) and may not be repeated in the query.
    """
    unknown = sorted(set(params) - LIST_PARAMS)
    if unknown:
        known = ", ".join(sorted(LIST_PARAMS))
        raise bad_filter(f"unknown parameter {unknown[0]!r}; known: {known}")
    values: dict[str, list[str]] = {}
    for name in LIST_PARAMS:
        given = [v for v in params.getall(name, []) if v != ""]
        if len(given) > 1 and name in _SINGLE:
            raise bad_filter(f"{name}: given more than once")
        values[name] = given
    if user is not None:
        if values["user"]:
            raise bad_filter("user: already given by the path")
        values["user"] = [user]

    def one(name: str) -> str | None:
        return values[name][0] if values[name] else None

    start_from = _parse_time("from", one("from"))
    start_to = _parse_time("to", one("to"))
    if start_from is not None and start_to is not None and start_from > start_to:
        raise bad_filter("from: after to")
    min_duration = _parse_int("min_duration", one("min_duration"), 0, _MAX_MS)
    max_duration = _parse_int("max_duration", one("max_duration"), 0, _MAX_MS)
    limit = _parse_int("limit", one("limit"), 1, max_limit)
    cursor = one("cursor")
    return SessionQuery(
        apps=frozenset(values["app"]),
        users=frozenset(values["user"]),
        start_from=start_from,
        start_to=start_to,
        ux=_enum("ux", values["ux"], UX_SCORES),
        has_error=_bools("has_error", values["has_error"]),
        error_kinds=_enum("error_kind", values["error_kind"], ERROR_KINDS),
        browsers=frozenset(v.lower() for v in values["browser"]),
        oses=frozenset(v.lower() for v in values["os"]),
        device_types=_enum("device_type", values["device_type"], DEVICE_TYPES),
        countries=frozenset(v.upper() for v in values["country"]),
        user_types=_enum("user_type", values["user_type"], USER_TYPES),
        bounce=_bools("bounce", values["bounce"]),
        min_duration=min_duration,
        max_duration=max_duration,
        actions=frozenset(values["action"]),
        live=_bools("live", values["live"]),
        limit=default_limit if limit is None else limit,
        after=None if cursor is None else Position.decode(cursor),
    )


def _enum(name: str, given: list[str], allowed: frozenset[str]) -> frozenset[str]:
    out = frozenset(v.lower() for v in given)
    bad = out - allowed
    if bad:
        raise bad_filter(f"{name}: {min(bad)!r} is not one of {', '.join(sorted(allowed))}")
    return out


def _bools(name: str, given: list[str]) -> frozenset[bool]:
    out = set()
    for v in given:
        low = v.lower()
        if low in _TRUE:
            out.add(True)
        elif low in _FALSE:
            out.add(False)
        else:
            raise bad_filter(f"{name}: {v!r} is not a boolean (true or false)")
    return frozenset(out)


def _parse_int(name: str, value: str | None, low: int, high: int) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise bad_filter(f"{name}: {value!r} is not a non-negative integer")
    n = int(value)
    if not low <= n <= high:
        raise bad_filter(f"{name}: {n} is not between {low} and {high}")
    return n


def _parse_time(name: str, value: str | None) -> int | None:
    """Epoch milliseconds, or ISO 8601 (a time without offset is UTC)."""
    if value is None:
        return None
    if value.isascii() and value.isdigit():
        n = int(value)
        if n > _MAX_MS:
            raise bad_filter(f"{name}: {value!r} is too large for epoch milliseconds")
        return n
    # An offset typed unencoded in a URL (`…T04:00:00+01:00`) arrives with a space for `+`.
    value = _UNENCODED_PLUS.sub(r"\1+\2", value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise bad_filter(f"{name}: {value!r} is neither epoch ms nor ISO 8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    ms = (parsed - _EPOCH) // timedelta(milliseconds=1)  # exact, unlike float seconds
    if not 0 <= ms <= _MAX_MS:
        raise bad_filter(f"{name}: {value!r} is out of range")
    return ms


# --- reading -----------------------------------------------------------------------------

# (start, session_id, the db holding its summary: `sessions`, or `live` for an open session)
Candidate = tuple[int, str, Any]


def _index_candidates(
    txn: lmdb.Transaction, db: Any, prefix: bytes, q: SessionQuery, source: Any
) -> Iterator[Candidate]:
    """Sessions under `prefix` in one index, newest first, within from/to/cursor."""
    upper = prefix + (U64.pack(q.start_to + 1) if q.start_to is not None else b"\xff" * 9)
    if q.after is not None:
        upper = min(upper, prefix + U64.pack(q.after.start) + q.after.session_id.encode())
    lower = prefix + U64.pack(q.start_from or 0)
    cur = txn.cursor(db=db)
    # Position on the greatest key < upper (exclusive bound).
    if cur.set_range(upper):
        if not cur.prev():
            return
    elif not cur.last():
        return
    tail_len = U64.size + SESSION_ID_LEN
    for key in cur.iterprev(keys=True, values=False):
        if key < lower:
            return
        tail = key[len(prefix):]
        if len(tail) != tail_len:
            continue
        yield U64.unpack_from(tail)[0], tail[U64.size:].decode(), source


def _streams(
    txn: lmdb.Transaction, store: Store, q: SessionQuery, *, live: bool
) -> list[Iterator[Candidate]]:
    """One newest-first stream per prefix of the index that fits the query, over the closed
    sessions or over the open ones."""
    by_time, by_app, by_user = LIVE_INDEXES if live else CLOSED_INDEXES
    source = store.dbs["live" if live else "sessions"]
    if q.users:
        name, prefixes = by_user, sorted({tag_prefix(u) for u in q.users})
    elif q.apps:
        name, prefixes = by_app, sorted({tag_prefix(a) for a in q.apps})
    else:
        name, prefixes = by_time, [b""]
    return [_index_candidates(txn, store.dbs[name], p, q, source) for p in prefixes]


def find_sessions(
    store: Store,
    q: SessionQuery,
    scan_budget: int | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of summaries, newest first, and the cursor of the next page (None at the end).

    Blocking (LMDB reads, JSON parsing): call it in a thread.
    """
    budget = SCAN_BUDGET if scan_budget is None else scan_budget
    with store.read() as txn:
        streams: list[Iterator[Candidate]] = []
        # The closed streams first: `heapq.merge` takes the earlier stream's entry of a tie,
        # so a closed session comes before an open copy of it at the same position.
        if False in q.live or not q.live:
            streams.extend(_streams(txn, store, q, live=False))
        # Open sessions have no ux_score yet: a `ux` filter rules every one of them out.
        if (True in q.live or not q.live) and not q.ux:
            streams.extend(_streams(txn, store, q, live=True))
        merged = heapq.merge(*streams, key=lambda c: (c[0], c[1]), reverse=True)
        sessions_db = store.dbs["sessions"]
        page: list[dict[str, Any]] = []
        last_returned: Position | None = None
        last_examined: Position | None = None
        examined = 0
        seen: set[str] = set()
        for start, sid, source in merged:
            if examined >= budget and last_examined is not None:
                # Out of budget: the next page resumes below the last entry examined.
                return page, last_examined.encode()
            examined += 1
            last_examined = Position(start, sid)
            if sid in seen:
                continue
            key = sid.encode()
            if source is not sessions_db and txn.get(key, db=sessions_db) is not None:
                # An open entry of a session also stored closed (the sessionizer removes it
                # in the transaction that stores the closed one, and does not publish while
                # it recovers; a store written otherwise): the closed copy is listed, wherever
                # its start puts it.
                continue
            seen.add(sid)
            raw = txn.get(key, db=source)
            if raw is None:
                continue
            summary = orjson.loads(raw)
            if not q.matches(summary):
                continue
            if len(page) == q.limit:
                # A further match exists, so there is a next page.
                assert last_returned is not None
                return page, last_returned.encode()
            page.append(summary)
            last_returned = Position(start, sid)
    return page, None


def get_session(store: Store, session_id: str) -> bytes | None:
    """JSON of a session's summary plus `timeline` (its detail); an open session's timeline
    is the one the sessionizer last published (at most ~5 s old; a new session's comes with
    its first summary), or null in a store written before live timelines were kept.

    The stored JSON is spliced, not parsed: a detail can be megabytes (200 actions with 300
    resources each), and this runs on the event loop.
    """
    if not _SESSION_ID_RE.fullmatch(session_id):
        return None  # also keeps arbitrary bytes away from LMDB's key size limit
    key = session_id.encode()
    with store.read() as txn:
        summary = txn.get(key, db=store.dbs["sessions"])
        if summary is not None:
            stored = txn.get(key, db=store.dbs["details"])
        else:
            summary = txn.get(key, db=store.dbs["live"])
            stored = txn.get(key, db=store.dbs["live_details"])
        if summary is None:
            return None
        timeline = unpack_detail(stored) if stored is not None else b"null"
        return _with_field(summary, b"timeline", timeline)


def _with_field(obj: bytes, name: bytes, value: bytes) -> bytes:
    """`{…}` + `"name": value` → `{…, "name": value}` (obj: a non-empty JSON object)."""
    body = obj.rstrip()
    assert body.endswith(b"}"), "a stored summary is a JSON object"
    return body[:-1] + b',"' + name + b'":' + value + b"}"


# --- HTTP --------------------------------------------------------------------------------


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _authorize(request: web.Request) -> None:
    """Bearer token check when `api.token` is configured (the ingest endpoints stay open)."""
    token = request.app[SETTINGS].api_token
    if not token:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest: the time taken does not reveal how much of the token matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise ApiError(
            401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required",
            headers={"WWW-Authenticate": 'Bearer realm="rumline"'},
        )


async def _page(request: web.Request, q: SessionQuery) -> web.Response:
    store = request.app[STORE]
    sessions, cursor = await asyncio.get_running_loop().run_in_executor(
        None, find_sessions, store, q
    )
    return _json({"sessions": sessions, "next_cursor": cursor})


def _parse(request: web.Request, user: str | None = None) -> SessionQuery:
    settings = request.app[SETTINGS]
    q = parse_query(
        request.query, user=user,
        default_limit=settings.api_default_limit, max_limit=settings.api_max_limit,
    )  # fmt: skip
    if settings.user_tag_hash_key is not None and q.users:
        # Tags are stored hashed (collector/tag_hash.py): look up the hash of the one asked.
        key = settings.user_tag_hash_key.encode()
        q = dataclasses.replace(q, users=frozenset(hash_tag(key, u) for u in q.users))
    return q


async def list_sessions(request: web.Request) -> web.Response:
    _authorize(request)
    return await _page(request, _parse(request))


async def list_user_sessions(request: web.Request) -> web.Response:
    _authorize(request)
    return await _page(request, _parse(request, user=request.match_info["user_tag"]))


async def session_detail(request: web.Request) -> web.Response:
    _authorize(request)
    session_id = request.match_info["session_id"]
    session = get_session(request.app[STORE], session_id)
    if session is None:
        raise ApiError(404, "not_found", f"no session {session_id!r}")
    return web.Response(body=session, content_type="application/json")


async def api_not_found(request: web.Request) -> web.Response:
    _authorize(request)
    raise ApiError(404, "not_found", f"no endpoint {request.path!r}")


def setup_query_routes(app: web.Application) -> None:
    """Add the `/api/v1` routes; they read `app[STORE]` and `app[SETTINGS]`."""
    app.router.add_get("/api/v1/sessions", list_sessions, name="sessions")
    app.router.add_get("/api/v1/sessions/{session_id}", session_detail, name="session")
    app.router.add_get(
        "/api/v1/users/{user_tag}/sessions", list_user_sessions, name="user_sessions"
    )
    # Any other GET under /api/v1 answers a JSON 404 like the rest of the API.
    app.router.add_get("/api/v1/{tail:.*}", api_not_found)
