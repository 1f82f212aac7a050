"""Locust user flows against a running collector (native beacon format v1, docs/sessionizer.md).

    .venv/bin/locust --config loadtests/locust.conf --host http://127.0.0.1:8080
    make loadtest        # starts a collector on a temp dir and a free port, runs this, stops

`VisitUser` is a browser tab: one visit of several page loads, each followed by XHR/fetch calls
and clicks, a JavaScript or request error now and then, `identify` once the user logs in, and
an explicit `end` (logout) for most visits; the rest are abandoned and close by timeout. Beacons
are sent the way `navigator.sendBeacon` sends them (`text/plain`, no preflight) and every one
must be answered 204 (durable). `QueryUser` is a support engineer working while ingest runs:
lists recent sessions, opens one, looks a user up, runs a segmentation query.

Every request is named by what it is (`beacon load`, `sessions list`, …) so the statistics group
them; a beacon answered anything but 204, or a query whose JSON is not what the API promises,
is a failure.
"""

from __future__ import annotations

import itertools
import json
import random
import time
import uuid
from typing import Any

import gevent
from locust import FastHttpUser, between, task

APPS = ("shop", "shop", "shop", "blog")
PAGES = ("/", "/search?q=shoes", "/product/42", "/product/7", "/cart", "/cart/checkout",
         "/account")  # fmt: skip
APIS = (("GET", "/api/cart", 200), ("GET", "/api/recommendations", 200),
        ("POST", "/api/cart/items", 201), ("GET", "/api/search", 200),
        ("POST", "/checkout", 200))  # fmt: skip
CLICKS = ("click on 'Add to cart'", "click on 'Search'", "click on 'Place order'",
          "click on 'Next page'")  # fmt: skip
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Safari/605.1.15",
)
# Visits that end with an explicit `end` event (logout, `endSession()`); the rest are left open
# and close on the inactivity timeout.
END_RATIO = 0.8
ERROR_RATIO = 0.1
_user_numbers = itertools.count(1)
_query_numbers = itertools.count(1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Visit:
    """The beacons of one visit of one tab, built as the browser agent would send them."""

    def __init__(self, rng: random.Random, user_number: int) -> None:
        self.rng = rng
        self.app = rng.choice(APPS)
        self.sid = str(uuid.UUID(int=rng.getrandbits(128)))
        self.vid = f"visitor-{user_number}"
        self.user = f"user{user_number}@example.com"
        self.seq = 0
        self.page = "https://shop.example.com/"

    def beacon(self, events: list[dict[str, Any]], **fields: Any) -> bytes:
        self.seq += 1
        body = {"v": 1, "app": self.app, "sid": self.sid, "vid": self.vid, "seq": self.seq,
                "sent": now_ms(), "page": {"url": self.page},
                "device": {"screen": "1920x1080", "lang": "en-US"}, "events": events,
                **fields}  # fmt: skip
        return json.dumps(body, separators=(",", ":")).encode()

    def load(self, path: str) -> bytes:
        self.page = "https://shop.example.com" + path
        t = now_ms()
        dur = self.rng.choice((450, 900, 1800, 2900, 4200, 13_000))
        events: list[dict[str, Any]] = [
            {"type": "load", "name": f"loading of page {path}", "url": self.page,
             "start": t - dur, "dur": dur,
             "timing": {"ttfb": dur // 8, "fcp": dur // 3, "lcp": dur * 9 // 10,
                        "dom_interactive": dur // 2, "load_end": dur},
             "resources": [{"url": "https://shop.example.com/static/app.js",
                            "initiator": "script", "start": 40, "dur": dur // 4,
                            "status": 200, "size": 48_213}]},
            {"type": "vital", "name": "LCP", "value": dur * 9 // 10, "start": t - dur // 10},
            {"type": "vital", "name": "TTFB", "value": dur // 8, "start": t - dur},
        ]  # fmt: skip
        return self.beacon(events)

    def xhr(self) -> bytes:
        method, path, status = self.rng.choice(APIS)
        failed = self.rng.random() < ERROR_RATIO
        if failed:
            status = 500
        t = now_ms()
        dur = self.rng.choice((40, 120, 350, 800, 3500))
        trace = f"{self.rng.getrandbits(128):032x}"
        events: list[dict[str, Any]] = [
            {"type": "xhr", "name": f"{method} {path}", "url": "https://shop.example.com" + path,
             "method": method, "status": status, "start": t - dur, "dur": dur,
             "traceparent": f"00-{trace}-{self.rng.getrandbits(64):016x}-01"},
        ]  # fmt: skip
        if failed:
            events.append({"type": "error", "kind": "request",
                           "message": f"{method} {path} {status}", "start": t})  # fmt: skip
        return self.beacon(events)

    def click(self) -> bytes:
        t = now_ms()
        events: list[dict[str, Any]] = [
            {"type": "custom", "name": self.rng.choice(CLICKS), "start": t - 120, "dur": 120}
        ]
        if self.rng.random() < ERROR_RATIO:
            events.append({"type": "error", "kind": "js", "message": "TypeError: x is undefined",
                           "stack": "at pay (app.js:10:5)", "start": t - 60})  # fmt: skip
        if self.rng.random() < ERROR_RATIO / 2:
            events.append({"type": "rage_click", "target": "button#pay", "count": 4,
                           "start": t - 10})  # fmt: skip
        return self.beacon(events)

    def identify(self) -> bytes:
        return self.beacon([{"type": "identify", "user": self.user},
                            {"type": "property", "key": "plan",
                             "value": self.rng.choice(("gold", "free"))}])  # fmt: skip

    def end(self) -> bytes:
        return self.beacon([{"type": "end", "reason": "logout", "start": now_ms()}])


class VisitUser(FastHttpUser):
    """A browser tab: one visit per task run, beacons a moment apart."""

    weight = 10
    wait_time = between(0.05, 0.3)
    # The highest user number handed out so far (query users look these users up).
    last_number = 0

    def on_start(self) -> None:
        self.number = next(_user_numbers)
        VisitUser.last_number = max(VisitUser.last_number, self.number)
        self.rng = random.Random(self.number)
        self.headers = {"Content-Type": "text/plain;charset=UTF-8",
                        "User-Agent": self.rng.choice(USER_AGENTS),
                        "Origin": "https://shop.example.com"}  # fmt: skip

    def send(self, kind: str, body: bytes) -> None:
        with self.client.post("/beacon", data=body, headers=self.headers,
                              name=f"beacon {kind}", catch_response=True) as response:  # fmt: skip
            if response.status_code != 204:
                response.failure(f"beacon {kind}: {response.status_code} {response.text!r}")

    def pause(self) -> None:
        """A user's think time between two beacons of the visit (short: this is a load test)."""
        gevent.sleep(self.rng.uniform(0.01, 0.05))

    @task
    def visit(self) -> None:
        visit = Visit(self.rng, self.number)
        pages = self.rng.randint(2, 5)
        login_at = self.rng.randrange(pages)
        for n in range(pages):
            self.send("load", visit.load(self.rng.choice(PAGES)))
            if n == login_at:
                self.send("identify", visit.identify())
            for _ in range(self.rng.randint(1, 3)):
                self.pause()
                self.send("xhr", visit.xhr())
            if self.rng.random() < 0.7:
                self.pause()
                self.send("custom", visit.click())
        if self.rng.random() < END_RATIO:
            self.send("end", visit.end())


class QueryUser(FastHttpUser):
    """A support engineer: lists and opens sessions while the visits are being ingested."""

    weight = 1
    wait_time = between(0.2, 0.5)

    def on_start(self) -> None:
        self.rng = random.Random(-next(_query_numbers))

    def get_json(self, path: str, name: str) -> Any:
        with self.client.get(path, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{name}: {response.status_code} {response.text!r}")
                return None
            try:
                return response.json()
            except ValueError:
                response.failure(f"{name}: not JSON")
                return None

    def open_one(self, page: Any) -> None:
        if not isinstance(page, dict) or not isinstance(page.get("sessions"), list):
            return
        if page["sessions"]:
            session_id = self.rng.choice(page["sessions"])["session_id"]
            detail = self.get_json(f"/api/v1/sessions/{session_id}", "session detail")
            if detail is not None and detail.get("session_id") != session_id:
                self.environment.events.request.fire(
                    request_type="CHECK", name="session detail id", response_time=0,
                    response_length=0, exception=AssertionError("detail of another session"),
                )  # fmt: skip

    @task(3)
    def recent(self) -> None:
        page = self.get_json(f"/api/v1/sessions?app={self.rng.choice(APPS)}&limit=20",
                             "sessions list")  # fmt: skip
        self.open_one(page)

    @task(2)
    def by_user(self) -> None:
        number = self.rng.randint(1, max(1, VisitUser.last_number))
        page = self.get_json(f"/api/v1/users/user{number}@example.com/sessions?limit=10",
                             "user sessions")  # fmt: skip
        self.open_one(page)

    @task(1)
    def segment(self) -> None:
        since = now_ms() - 24 * 3600 * 1000
        self.get_json(f"/api/v1/sessions?from={since}&has_error=true&ux=frustrating"
                      "&browser=Chrome&limit=50", "sessions segment")  # fmt: skip
