"""rumline.js in real Chromium against a real collector process.

A customer browses the demo shop (another origin than the collector), signs in, opens a
product, adds it to the cart, looks at the order history (an SPA route change), checks out
(`POST /checkout` answers 500), tries a gift card (the button throws), rage-clicks a dead
banner and logs out (`rumline.endSession`). Support then reads the session through the query
API: pages, actions with durations, the failed POST with the traceparent the backend really
received, the JS error with its stack, the user tag, the vitals, browser and OS.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import closed_session, rejected_total, sessions
from tests.browser.shop import Shop
from tests.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.browser

DANIEL = "daniel.adams@example.com"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-[0-9a-f]{16}-01$")


def rumline_snippet(server: ServerProcess, app: str = "shop") -> Any:
    def html(shop: Shop) -> str:
        return (
            f'<script src="{server.url("/rumline.js")}"></script>\n'
            f'<script>rumline.init({{app: "{app}", endpoint: "{server.url("/beacon")}",'
            " flushInterval: 500});\n"
            "window.shopHooks = {identify: function (u) { rumline.identifyUser(u); },"
            ' logout: function () { rumline.endSession("logout"); }};</script>'
        )

    return html


@pytest.fixture
def collector(start_server: StartServer) -> ServerProcess:
    # Sessions end by logout here; a long timeout keeps the browsing in one session.
    return start_server(env={"RUMLINE_SESSION_TIMEOUT": "1h"})


def browse_and_fail_checkout(page: Any, shop: Shop) -> None:
    page.goto(shop.url("/"))
    page.wait_for_selector("a.product")
    page.click("#sign-in")
    page.click("text=Blue running shoes")
    page.wait_for_url("**/product/42")
    page.click("#add-to-cart")
    page.wait_for_url("**/cart")
    page.wait_for_selector("body[data-ready]")
    page.click("#history")
    page.wait_for_selector("text=No orders yet")
    page.click("#to-checkout")
    page.wait_for_url("**/cart/checkout")
    page.click("#place-order")
    page.wait_for_selector("text=Payment failed (500)")
    page.click("#gift-card")
    for _ in range(4):
        page.click("#promo")
    page.click("#log-out")
    page.wait_for_selector("text=Logged out")
    page.goto("about:blank")  # pagehide: whatever is still queued goes by sendBeacon


def test_rumline_agent_records_what_support_needs(collector: ServerProcess, context: Any):
    page_errors: list[str] = []
    with Shop(rumline_snippet(collector)) as shop:
        page = context.new_page()
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        browse_and_fail_checkout(page, shop)
        detail = closed_session(collector, app="shop", user=DANIEL)

    # The page saw exactly one error of its own: the gift-card button (the agent threw none).
    assert len(page_errors) == 1 and "balance" in page_errors[0], page_errors
    assert detail["user_tag"] == DANIEL
    assert detail["end_reason"] == "end_event" and detail["timeline"]["end_detail"] == "logout"
    timeline = detail["timeline"]
    actions = timeline["actions"]
    by_name = {a["name"]: a for a in actions}

    # The pages visited, each a load action with its page URL and timings. (Their order is
    # the timeline's only up to the beacons' transit times, by which the collector corrects
    # client clocks: the history route and the checkout page load are milliseconds apart.)
    loads = [a for a in actions if a["type"] == "load"]
    assert sorted(a["name"] for a in loads) == [
        "loading of page /", "loading of page /cart", "loading of page /cart/checkout",
        "loading of page /cart/history", "loading of page /product/42",
    ]  # fmt: skip
    assert loads[0]["name"] == "loading of page /" and detail["entry_page"] == shop.url("/")
    assert detail["exit_page"] == shop.url("/cart/checkout")
    for load in loads:
        assert 0 < load["duration"] < 10_000, load
        assert load["page"].startswith(shop.origin), load
    home = loads[0]
    assert home["timings"]["ttfb"] >= 0 and home["timings"]["load_end"] > 0
    assert home["timings"]["dom_interactive"] <= home["timings"]["load_end"]
    waterfall = {r["url"]: r for r in home["resources"]}
    assert waterfall[shop.url("/shop.js")]["initiator"] == "script"
    assert waterfall[collector.url("/rumline.js")]["initiator"] == "script"
    assert not any(url.startswith(collector.url("/beacon")) for url in waterfall)
    history = by_name["loading of page /cart/history"]
    assert history["timings"] == {"spa": 1} and history["page"] == shop.url("/cart/history")

    # XHR and fetch calls with method, status, duration and the traceparent the API received.
    for method, path, status in [("GET", "/api/products", 200), ("POST", "/api/cart", 200),
                                 ("GET", "/api/orders", 200), ("POST", "/checkout", 500)]:
        call = by_name[f"{method} {path}"]
        assert (call["type"], call["method"], call["status"]) == ("xhr", method, status)
        assert call["url"] == shop.url(path) and 0 <= call["duration"] < 5_000
        [received] = shop.api_calls(method, path)
        assert call["traceparent"] == received.headers["traceparent"]
        assert call["trace_id"] == TRACEPARENT.match(call["traceparent"]).group(1)
    checkout = by_name["POST /checkout"]
    assert checkout["apdex"] == "frustrated" and checkout["error_count"] == 1

    # Clicks are custom actions that last until their request answered.
    place_order = by_name["click on 'Place order'"]
    assert place_order["type"] == "custom"
    assert place_order["duration"] >= checkout["duration"]
    assert place_order["start"] <= checkout["start"]
    assert {"click on 'Add to cart'", "click on 'Use gift card'", "click on 'Sign in'",
            "click on 'Log out'", "click on 'Blue running shoes'"} <= set(by_name)  # fmt: skip

    # Errors: the failed request and the thrown TypeError with its stack, each in its action.
    errors = {e["kind"]: e for e in timeline["errors"]}
    assert set(errors) == {"request", "js"}, timeline["errors"]
    assert errors["request"]["message"] == "POST /checkout 500"
    assert errors["request"]["action"] == checkout["index"]
    js = errors["js"]
    assert js["message"].startswith("TypeError:") and "balance" in js["message"]
    assert "applyGiftCard" in js["stack"] and "/shop.js" in js["stack"]
    assert js["action"] == by_name["click on 'Use gift card'"]["index"]

    # Rage clicks on the dead banner, vitals, browser and OS.
    [rage] = timeline["rage_clicks"]
    assert rage["target"] == "div#promo" and rage["count"] == 4
    assert detail["rage_clicks"] == 1
    assert {"FCP", "TTFB", "LCP", "CLS", "INP"} <= set(detail["vitals"]), detail["vitals"]
    assert 0 < detail["vitals"]["LCP"]["value"] < 10_000
    assert detail["vitals"]["CLS"]["value"] >= 0
    assert detail["browser"]["family"] in ("Chrome", "HeadlessChrome", "Chromium")
    assert detail["browser"]["version"].split(".")[0].isdigit()
    assert detail["os"]["family"] == "Linux"
    assert detail["screen"] and re.fullmatch(r"\d+x\d+", detail["screen"])
    assert detail["has_error"] and detail["errors_by_kind"] == {"js": 1, "request": 1, "custom": 0}
    # Two frustrated clicks, a frustrated request, two errors and a rage click among ~20
    # actions: under the 30 % of frustration that makes a session frustrating.
    assert detail["ux_score"] == "tolerable" and 0.5 < detail["apdex"] < 1

    # Nothing was rejected and no stray session (e.g. late vitals) was opened after logout.
    assert rejected_total(collector, "native") == 0
    assert sessions(collector, app="shop") == [
        s for s in sessions(collector, app="shop") if s["session_id"] == detail["session_id"]
    ]


def test_global_privacy_control_drops_the_user_tag(collector: ServerProcess, context: Any):
    context.add_init_script("Object.defineProperty(navigator, 'globalPrivacyControl',"
                            " {get: function () { return true; }});")  # fmt: skip
    with Shop(rumline_snippet(collector, app="gpc")) as shop:
        page = context.new_page()
        page.goto(shop.url("/"))
        page.wait_for_selector("a.product")
        page.click("#sign-in")
        page.evaluate("rumline.endSession('logout')")
        detail = closed_session(collector, app="gpc")
    assert detail["user_tag"] is None and detail["timeline"]["user_tags"] == []
    assert "click on 'Sign in'" in detail["action_names"]


def test_agent_is_served_with_caching_headers(collector: ServerProcess):
    status, headers, body = collector.request("GET", "/rumline.js")
    assert status == 200
    assert headers["content-type"].startswith("text/javascript")
    assert headers["cache-control"].startswith("public, max-age=")
    etag = headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    assert b"function" in body and b"sendBeacon" in body
    gzip_ok = {"Accept-Encoding": "gzip, deflate"}
    status, headers, gz = collector.request("GET", "/rumline.js", headers=gzip_ok)
    assert status == 200 and headers["content-encoding"] == "gzip" and headers["etag"] == etag
    assert gzip.decompress(gz) == body
    assert collector.request("GET", "/rumline.js", headers={"If-None-Match": etag})[0] == 304
    assert collector.request("GET", "/rumline.js", headers={"If-None-Match": f"W/{etag}"})[0] == 304
    assert collector.request("GET", "/rumline.js", headers={"If-None-Match": '"other"'})[0] == 200
    assert collector.request("HEAD", "/rumline.js")[0] == 200


def test_agent_stays_within_6_kib_gzipped():
    source = Path(__file__).resolve().parents[2] / "collector" / "static" / "rumline.js"
    assert len(gzip.compress(source.read_bytes(), compresslevel=9)) <= 6 * 1024


def test_many_events_stay_under_the_beacon_quota(collector: ServerProcess, context: Any):
    """150 custom actions with 600-character names (~100 KB): the agent splits them into
    beacons the collector accepts (≤ 64 KiB each) and loses none."""
    with Shop(rumline_snippet(collector, app="bulk")) as shop:
        page = context.new_page()
        page.goto(shop.url("/cart"))
        page.evaluate("""() => {
            for (let i = 0; i < 150; i++)
                rumline.reportCustomAction('step ' + i + ' ' + 'x'.repeat(600), 5);
            rumline.endSession();
        }""")
        detail = closed_session(collector, app="bulk")
    names = [a["name"] for a in detail["timeline"]["actions"] if a["name"].startswith("step ")]
    assert len(names) == 150 and detail["action_count"] == 151  # + the page load
    assert rejected_total(collector, "native") == 0


def test_agent_survives_a_hostile_page_and_reports_the_api_calls(
    collector: ServerProcess, context: Any
) -> None:
    """Storage that throws (privacy modes), an unhandled rejection, and every public call,
    also with bad arguments: the page sees no error of the agent's, the session gets it all."""
    context.add_init_script("""
        for (const name of ['sessionStorage', 'localStorage'])
            Object.defineProperty(window, name, {get() { throw new DOMException('denied'); }});
    """)
    page_errors: list[str] = []
    with Shop(rumline_snippet(collector, app="hostile")) as shop:
        page = context.new_page()
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.goto(shop.url("/"))
        page.wait_for_selector("a.product")
        page.evaluate("""() => {
            rumline.identifyUser('ashley@example.com');
            rumline.setProperty('plan', 'gold');
            rumline.reportCustomAction('checkout wizard', 1500);
            rumline.reportError(new Error('coupon service slow'));
            rumline.reportError('plain message');
            rumline.setProperty();  rumline.reportCustomAction();  rumline.identifyUser(null);
            Promise.reject(new RangeError('no stock'));
        }""")
        page.wait_for_timeout(100)
        page.evaluate("rumline.endSession('logout')")
        detail = closed_session(collector, app="hostile")
    assert page_errors == ["no stock"]  # the page's own rejection, nothing from the agent
    assert detail["user_tag"] == "ashley@example.com"
    assert detail["properties"]["plan"] == "gold"
    wizard = [a for a in detail["timeline"]["actions"] if a["name"] == "checkout wizard"]
    assert wizard and wizard[0]["duration"] == 1500
    messages = {(e["kind"], e["message"]) for e in detail["timeline"]["errors"]}
    assert {("custom", "Error: coupon service slow"), ("custom", "plain message"),
            ("js", "RangeError: no stock")} <= messages  # fmt: skip
