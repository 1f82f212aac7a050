"""A store full of real sessions for the query API tests.

Requests go through the real path minus HTTP: `_core.prepare` frames them as the fronts do,
`Sessionizer.ingest` / `flush` close sessions, `Store.put_closed` / `put_live` write them into a
real LMDB. Every builder takes the few fields a test cares about.

The corpus (`build_corpus`) is a support desk's day. The Daniel Adams case of
`seeds/000_*.txt` is `INCIDENT`; around it are sessions that each differ from it in exactly one
respect the support filter looks at (another time, another user, no error, not frustrating,
still open), and a crowd of other sessions for the remaining filters and for paging.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from collector._core import Sessionizer, prepare
from collector.store import Store

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_764_126_000_000  # 2025-11-26T03:00:00Z
INCIDENT_AT = T0 + HOUR  # 04:00Z: when Daniel's checkout failed
TIMEOUT_MS = 30 * 60_000
DANIEL = "daniel.adams@example.com"
ASHLEY = "ashley.smith@example.com"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"

CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
FIREFOX_UA = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
IPHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
IPAD_UA = (
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


# --- events (t: client epoch ms; beacons are sent at their receive time, so t is kept) ----


def load(t: int, page: str = "/cart", dur: int = 800) -> dict[str, Any]:
    return {"type": "load", "name": f"loading of page {page}",
            "url": f"https://shop.example.com{page}", "start": t, "dur": dur}  # fmt: skip


def xhr(t: int, name: str = "GET /api/cart", status: int = 200, dur: int = 200,
        traceparent: str | None = None) -> dict[str, Any]:  # fmt: skip
    method, _, path = name.partition(" ")
    event = {"type": "xhr", "name": name, "url": f"https://shop.example.com{path}",
             "method": method, "status": status, "start": t, "dur": dur}  # fmt: skip
    if traceparent:
        event["traceparent"] = traceparent
    return event


def custom(t: int, name: str = "click on 'Add to cart'", dur: int = 100) -> dict[str, Any]:
    return {"type": "custom", "name": name, "start": t, "dur": dur}


def error(t: int, kind: str = "js", message: str = "TypeError: x is undefined") -> dict[str, Any]:
    return {"type": "error", "kind": kind, "message": message, "start": t,
            "stack": "at pay (app.js:10:5)" if kind == "js" else None}  # fmt: skip


def vital(t: int, name: str, value: float) -> dict[str, Any]:
    return {"type": "vital", "name": name, "value": value, "start": t}


def rage(t: int, target: str = "button#pay") -> dict[str, Any]:
    return {"type": "rage_click", "target": target, "count": 4, "start": t}


# --- visits ---------------------------------------------------------------------------------


@dataclass
class Visit:
    """One browser session: a single beacon received at `at` carrying `events`."""

    sid: str
    events: list[dict[str, Any]]
    at: int
    app: str = "shop"
    user: str | None = None
    ua: str = CHROME_UA
    synthetic: bool = False
    props: dict[str, str] = field(default_factory=dict)

    def beacon(self) -> dict[str, Any]:
        events = list(self.events)
        events += [{"type": "property", "key": k, "value": v} for k, v in self.props.items()]
        body: dict[str, Any] = {
            "v": 1, "app": self.app, "sid": self.sid, "vid": f"visitor-{self.sid}",
            "sent": self.at, "page": {"url": "https://shop.example.com/cart"},
            "device": {"screen": "1920x1080"}, "events": events,
        }  # fmt: skip
        if self.user:
            body["user"] = self.user
        if self.synthetic:
            body["synthetic"] = True
        return body


class Corpus:
    """Feeds visits through the real core into `store`, in receive-time order."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.core = Sessionizer({"timeout_ms": TIMEOUT_MS})
        self.clock = 0

    def send(self, visits: Iterable[Visit]) -> None:
        import orjson

        for visit in sorted(visits, key=lambda v: v.at):
            body = orjson.dumps(visit.beacon())
            wal, verdicts, _ = prepare([(visit.at, "203.0.113.7", visit.ua, 0, body)])
            assert verdicts == [None], (visit.sid, verdicts)
            self.clock = max(self.clock, visit.at)
            self._store_closed(self.core.ingest(wal, self.clock).closed)

    def close_idle(self, now_ms: int) -> None:
        """`flush(now)`: closes every session idle for the timeout."""
        self.clock = max(self.clock, now_ms)
        self._store_closed(self.core.flush(self.clock).closed)

    def publish_live(self) -> None:
        live = self.core.live()
        self.store.write(lambda txn: self.store.put_live(txn, live))

    def _store_closed(self, closed: list[Any]) -> None:
        if closed:
            self.store.write(lambda txn: [self.store.put_closed(txn, s) for s in closed])


# --- the support desk's day -------------------------------------------------------------------


def incident(sid: str = "daniel-incident-0001", at: int = INCIDENT_AT,
             user: str | None = DANIEL) -> Visit:  # fmt: skip
    """Seed 000: Daniel loads /cart/checkout (slow), POST /checkout returns 500 with a
    traceparent, a request error follows: the session is frustrating and has an error."""
    t = at - 20_000
    return Visit(sid, at=at, user=user, events=[
        load(t, "/cart/checkout", dur=4200),
        vital(t + 4100, "LCP", 4100),
        xhr(t + 5000, "POST /checkout", status=500, dur=812, traceparent=TRACEPARENT),
        error(t + 5812, "request", "POST /checkout 500"),
    ])  # fmt: skip


def support_day() -> list[Visit]:
    """The incident and one near miss per filter of the support query."""
    t = INCIDENT_AT
    return [
        incident(),
        # The same failure a day earlier (outside the timeframe).
        incident("daniel-yesterday-01", at=t - DAY),
        # Another customer with the same failure at the same time.
        incident("ashley-incident-001", user=ASHLEY),
        # Daniel, same time, an error but a tolerable session (custom error, fast actions).
        Visit("daniel-tolerable-01", at=t + 60_000, user=DANIEL, events=[
            load(t + 10_000 + i * 1000, f"/p{i}", dur=300) for i in range(5)
        ] + [error(t + 14_100, "custom", "coupon rejected")]),  # fmt: skip
        # Daniel, same time, frustrating (very slow page) but no error.
        Visit("daniel-slow-000001", at=t + 120_000, user=DANIEL,
              events=[load(t + 90_000, "/slow", dur=15_000)]),  # fmt: skip
    ]


def crowd() -> list[Visit]:
    """Sessions for the other filters: browsers, devices, user types, bounce, apps, actions."""
    t = T0 + 2 * HOUR
    visits = [
        Visit("maria-iphone-00001", at=t, user="maria@example.com", ua=IPHONE_UA,
              events=[load(t - 5000, "/home", dur=900)]),  # fmt: skip
        Visit("tablet-visitor-001", at=t + 1000, ua=IPAD_UA,
              events=[load(t - 4000, "/home"), load(t - 2000, "/cart"), rage(t - 1000)]),
        Visit("googlebot-crawl-01", at=t + 2000, ua=GOOGLEBOT_UA,
              events=[load(t - 3000, "/home"), load(t - 2500, "/about")]),
        Visit("synthetic-check-01", at=t + 3000, synthetic=True, ua=FIREFOX_UA,
              events=[load(t - 1000, "/health"), xhr(t - 500, "GET /api/ping")]),
        Visit("blog-reader-00001", at=t + 4000, app="blog", user=DANIEL, ua=FIREFOX_UA,
              events=[load(t - 9000, "/post/1", dur=2500), custom(t - 1000, "click on 'Like'"),
                      error(t - 990, "js")], props={"plan": "gold"}),  # fmt: skip
    ]
    # Paging fodder: 45 sessions of app "news", three per start time (ties on start are
    # ordered by session_id), durations 0..44 s, every third with a js error.
    base = T0 + 3 * HOUR
    for i in range(45):
        start = base + (i // 3) * 60_000
        events = [load(start, f"/n{i}", dur=500 + i * 100)]
        if i % 3 == 0:
            events.append(error(start + 10, "js"))
        if i % 5 == 0:
            events.append(xhr(start + 200, "GET /api/feed"))
        visits.append(Visit(f"news-{i:02d}-abcdefgh", app="news", at=start + 1000,
                            user=f"reader{i % 4}@example.com", events=events))  # fmt: skip
    return visits


LIVE_AT = T0 + 6 * HOUR


def live_visits() -> list[Visit]:
    """Still open when the corpus is built: Daniel again, with an error (live: no ux_score)."""
    return [
        Visit("daniel-live-000001", at=LIVE_AT, user=DANIEL, events=[
            load(LIVE_AT - 3000, "/cart/checkout", dur=900),
            error(LIVE_AT - 2000, "js", "ReferenceError: foo is not defined"),
        ]),  # fmt: skip
        Visit("news-live-0000001", at=LIVE_AT + 10, app="news", events=[load(LIVE_AT - 10)]),
    ]


def build_corpus(store: Store) -> Corpus:
    corpus = Corpus(store)
    corpus.send(support_day() + crowd())
    # Everything above is idle for > timeout by LIVE_AT; the live visits stay open.
    corpus.send(live_visits())
    corpus.close_idle(LIVE_AT + 1000)
    corpus.publish_live()
    return corpus
