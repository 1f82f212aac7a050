"""Boomerang (npm `boomerangjs`, the unbuilt source: `boomerang.js` then each plugin) in real
Chromium with the rt, navtiming, restiming, painttiming, eventtiming, continuity, errors and
auto-xhr plugins, beaconing to a real collector's `/beacon/boomerang?app=shop`.

Boomerang keeps its session id (`rt.si`) in the `RT` cookie, so the shop is served under a
host name (a bare IP gets a new session on every page). It has no end event: the collector
closes the session by inactivity. It propagates no trace context: no traceparent.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import SHOP_HOST, closed_parts, rejected_total, require_node_module
from tests.browser.shop import Shop
from tests.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.browser

DANIEL = "daniel.adams@example.com"
PLUGINS = ("rt", "navtiming", "restiming", "painttiming", "eventtiming", "continuity", "errors",
           "auto-xhr", "zzz-last-plugin")  # fmt: skip


def boomerang_snippet(server: ServerProcess) -> Any:
    def html(shop: Shop) -> str:
        scripts = ['<script src="/vendor/boomerangjs/boomerang.js"></script>'] + [
            f'<script src="/vendor/boomerangjs/plugins/{name}.js"></script>' for name in PLUGINS
        ]
        return "\n".join(scripts) + (
            "\n<script>BOOMR.init({"
            f'beacon_url: "{server.url("/beacon/boomerang?app=shop")}",'
            " instrument_xhr: true, AutoXHR: {alwaysSendXhr: true, monitorFetch: true},"
            " Errors: {enabled: true, sendAfterOnload: true, sendInterval: 200},"
            " Continuity: {enabled: true}, ResourceTiming: {enabled: true}});\n"
            'window.shopHooks = {identify: function (u) { BOOMR.addVar("user", u); },'
            " logout: function () {}};</script>"
        )

    return html


@pytest.fixture
def collector(start_server: StartServer) -> ServerProcess:
    require_node_module("boomerangjs/boomerang.js")
    return start_server(env={"RUMLINE_SESSION_TIMEOUT": "4s"})


def test_boomerang_beacons_make_one_session(collector: ServerProcess, context: Any) -> None:
    with Shop(boomerang_snippet(collector), host=SHOP_HOST) as shop:
        page = context.new_page()
        page.goto(shop.url("/"))
        page.wait_for_selector("a.product")
        page.click("#sign-in")
        page.click("text=Blue running shoes")
        page.wait_for_url("**/product/42")
        page.click("#add-to-cart")
        page.wait_for_url("**/cart")
        page.click("#to-checkout")
        page.wait_for_url("**/cart/checkout")
        page.click("#place-order")
        page.wait_for_selector("text=Payment failed (500)")
        page.click("#gift-card")
        sid = page.evaluate("BOOMR.session.ID + '-' + Math.round(BOOMR.session.start / 1000)"
                            ".toString(36)")  # fmt: skip
        page.wait_for_timeout(1500)  # auto-xhr ends an XHR action 1 s after the DOM settles
        page.goto("about:blank")
        details = closed_parts(collector, "shop", sid)

    actions = [a for d in details for a in d["timeline"]["actions"]]
    errors = [e for d in details for e in d["timeline"]["errors"]]
    vitals = {v["name"] for d in details for v in d["timeline"]["vitals"]}
    summary = details[-1]
    # The agent sends the user only from the page where the site set it: if a pause split
    # the session in parts, the first part has the tag.
    assert DANIEL in {d["user_tag"] for d in details}
    assert summary["end_reason"] == "timeout"
    assert summary["browser"]["family"] in ("Chrome", "HeadlessChrome", "Chromium")
    assert summary["os"]["family"] == "Linux"
    assert summary["properties"]["platform"].startswith("Linux")  # navigator.platform

    loads = [a for a in actions if a["type"] == "load"]
    assert [a["name"] for a in loads] == [
        "loading of page /", "loading of page /product/42", "loading of page /cart",
        "loading of page /cart/checkout",
    ]  # fmt: skip
    for load in loads:
        assert 0 < load["duration"] < 10_000 and load["timings"]["ttfb"] >= 0
        assert load["timings"]["load_end"] <= load["duration"] + 50
    waterfall = {r["url"]: r for r in loads[0]["resources"]}
    assert waterfall[shop.url("/shop.js")]["initiator"] == "script"
    assert waterfall[shop.url("/vendor/boomerangjs/boomerang.js")]["size"] > 10_000

    by_name = {a["name"]: a for a in actions}
    checkout = by_name["POST /checkout"]
    assert (checkout["type"], checkout["method"], checkout["status"]) == ("xhr", "POST", 500)
    assert checkout["page"] == shop.url("/cart/checkout") and checkout["traceparent"] is None
    assert 0 <= checkout["duration"] < 5_000 and checkout["apdex"] == "frustrated"
    # What auto-xhr beacons in Chromium: the products fetch started during the page load gets
    # no beacon of its own (nor, finishing after onload, a waterfall entry); the cart's call,
    # followed at once by a navigation, is never beaconed.
    assert [a["name"] for a in actions if a["type"] == "xhr"] == ["POST /checkout"]

    kinds = {e["kind"]: e for e in errors}
    assert kinds["request"]["message"] == "POST /checkout 500"
    assert kinds["request"]["action"] == checkout["index"]
    js = kinds["js"]
    assert js["message"] == "TypeError: Cannot read properties of undefined (reading 'balance')"
    assert js["stack"].splitlines()[0] == "    at applyGiftCard (/shop.js:35:46)"
    # pt.lcp rides on the load beacon only when Chromium painted it before onload.
    assert {"INP", "CLS", "TTFB"} <= vitals, vitals
    assert rejected_total(collector, "boomerang") == 0
