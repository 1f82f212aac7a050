"""Grafana Faro web SDK (npm `@grafana/faro-web-sdk`, its IIFE bundle) in real Chromium,
sending to a real collector's `/collect` with an API key.

Faro has no end-of-session signal: the collector closes the session by inactivity (4 s here).
Without faro-web-tracing it propagates no trace context, so its request actions carry no
traceparent (the OTel test covers that).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import closed_parts, rejected_total, require_node_module, wait_for
from tests.browser.shop import Shop
from tests.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.browser

DANIEL = "daniel.adams@example.com"
FARO = "/vendor/@grafana/faro-web-sdk/dist/bundle/faro-web-sdk.iife.js"
API_KEY = "faro-k3y"


def faro_snippet(server: ServerProcess, api_key: str = API_KEY) -> Any:
    def html(shop: Shop) -> str:
        return (
            f'<script src="{FARO}"></script>\n<script>'
            f'var faro = GrafanaFaroWebSdk.initializeFaro({{url: "{server.url("/collect")}",'
            f' apiKey: "{api_key}", app: {{name: "shop", version: "1.0.0"}}}});\n'
            "window.shopHooks = {identify: function (u) { faro.api.setUser({email: u}); },"
            " logout: function () { faro.api.resetUser(); }};</script>"
        )

    return html


@pytest.fixture
def collector(start_server: StartServer) -> ServerProcess:
    require_node_module("@grafana/faro-web-sdk/dist/bundle/faro-web-sdk.iife.js")
    return start_server(env={"RUMLINE_SESSION_TIMEOUT": "4s",
                             "RUMLINE_INGEST_FARO_API_KEY": API_KEY})  # fmt: skip


def test_faro_session_has_pages_requests_errors_vitals_and_user(
    collector: ServerProcess, context: Any
) -> None:
    with Shop(faro_snippet(collector)) as shop:
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
        sid = page.evaluate("faro.api.getSession().id")
        page.wait_for_timeout(300)  # Faro batches for 250 ms
        page.goto("about:blank")

        details = closed_parts(collector, "shop", sid)

    actions = [a for d in details for a in d["timeline"]["actions"]]
    errors = [e for d in details for e in d["timeline"]["errors"]]
    vitals = {v["name"] for d in details for v in d["timeline"]["vitals"]}
    summary = details[0]
    # The agent sends the user only from the page where the site set it: if a pause split
    # the session in parts, the first part has the tag.
    assert DANIEL in {d["user_tag"] for d in details}
    assert summary["end_reason"] == "timeout"
    assert summary["browser"]["family"] in ("Chrome", "HeadlessChrome", "Chromium")
    assert summary["os"]["family"] == "Linux"
    assert summary["screen"] == "1280x720"  # Faro's viewport

    loads = [a for a in actions if a["type"] == "load"]
    # Faro may deliver a batch twice (its retry after a keepalive failure; rumline is
    # at-least-once): the pages, in order, each once or more.
    assert list(dict.fromkeys(a["name"] for a in loads)) == [
        "loading of page /", "loading of page /product/42", "loading of page /cart",
        "loading of page /cart/checkout",
    ]  # fmt: skip
    for load in loads:
        assert 0 < load["duration"] < 10_000 and load["timings"]["ttfb"] >= 0
        assert load["page"] == load["url"]
    by_name = {a["name"]: a for a in actions}
    products = by_name["fetch /api/products"]
    assert (products["type"], products["status"]) == ("xhr", 200)
    checkout = by_name["XHR /checkout"]
    # Faro reports no clicks: the gift-card TypeError attaches to the latest action, this one.
    assert (checkout["status"], checkout["apdex"]) == (500, "frustrated")
    assert checkout["error_count"] == 2
    assert checkout["traceparent"] is None and checkout["page"] == shop.url("/cart/checkout")
    assert 0 <= checkout["duration"] < 5_000

    kinds = {e["kind"]: e for e in errors}
    assert kinds["request"]["message"] == "XHR /checkout 500"
    js = kinds["js"]
    assert js["message"] == "TypeError: Cannot read properties of undefined (reading 'balance')"
    assert js["stack"].splitlines()[0].strip().startswith("at applyGiftCard (")
    assert "/shop.js:" in js["stack"]
    assert {"LCP", "FCP", "CLS", "TTFB", "INP"} <= vitals
    assert rejected_total(collector, "faro") == 0


def test_faro_without_the_api_key_is_refused(collector: ServerProcess, context: Any) -> None:
    with Shop(faro_snippet(collector, api_key="wrong")) as shop:
        page = context.new_page()
        page.goto(shop.url("/"))
        page.wait_for_selector("a.product")
        page.evaluate("faro.api.pushError(new Error('boom'))")
        wait_for(lambda: rejected_total(collector, "faro") >= 1, 10, "a refused Faro post")
    status, body = collector.get_json("/api/v1/sessions?app=shop")
    assert status == 200 and body["sessions"] == []  # type: ignore[index]
