"""OpenTelemetry web tracing (npm: sdk-trace-web, fetch + XHR instrumentation, OTLP/HTTP JSON
exporter) bundled by esbuild, in real Chromium, exporting to a real collector's `/v1/traces`.

The site's span processor stamps `session.id`, `page.url` and `user.email` on every span
(tests/browser/agents/otel-web.js, the snippet of docs/agents.md). OTel has no end-of-session
signal: the collector closes the session by inactivity (4 s here).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import NODE_MODULES, closed_parts, rejected_total, require_node_module
from tests.browser.shop import BUILD, Shop
from tests.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.browser

DANIEL = "daniel.adams@example.com"
ENTRY = Path(__file__).resolve().parent / "agents" / "otel-web.js"


@pytest.fixture(scope="module")
def otel_bundle() -> Path:
    """esbuild's IIFE bundle of the site's OTel setup (what a site's build would produce)."""
    esbuild = require_node_module(".bin/esbuild")
    require_node_module("@opentelemetry/sdk-trace-web")
    out = BUILD / "otel-web.js"
    BUILD.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(esbuild), str(ENTRY), "--bundle", "--format=iife", "--global-name=otelWeb",
         f"--outfile={out}", "--log-level=warning"],
        check=True, cwd=NODE_MODULES.parent, timeout=60,
    )  # fmt: skip
    return out


def otel_snippet(server: ServerProcess) -> Any:
    def html(shop: Shop) -> str:
        return (
            '<script src="/build/otel-web.js"></script>\n<script>'
            f'var otel = otelWeb.start({{serviceName: "shop", collector: "{server.base_url}"}});\n'
            "window.shopHooks = {identify: function (u) { otel.identify(u); },"
            " logout: function () { otel.flush(); }};</script>"
        )

    return html


def test_otel_spans_become_the_session_timeline(
    start_server: StartServer, context: Any, otel_bundle: Path
) -> None:
    server = start_server(env={"RUMLINE_SESSION_TIMEOUT": "4s"})
    with Shop(otel_snippet(server)) as shop:
        page = context.new_page()
        page.goto(shop.url("/"))
        page.wait_for_selector("a.product")
        page.wait_for_timeout(400)  # the products fetch span ends once its timing is seen
        page.click("#sign-in")
        page.goto(shop.url("/product/42"))
        page.click("#add-to-cart")  # its fetch is lost: the page leaves before the span ends
        page.wait_for_url("**/cart")
        page.click("#history")
        page.wait_for_selector("text=No orders yet")
        page.wait_for_timeout(400)  # a customer reads the page; the span ends meanwhile
        page.goto(shop.url("/cart/checkout"))
        page.click("#place-order")
        page.wait_for_selector("text=Payment failed (500)")
        page.click("#gift-card")
        page.wait_for_timeout(500)  # the XHR span ends once its Resource Timing entry is seen
        page.evaluate("otel.flush()")
        sid = page.evaluate("otel.sessionId()")
        page.goto("about:blank")

        details = closed_parts(server, "shop", sid)

    actions = [a for d in details for a in d["timeline"]["actions"]]  # type: ignore[index]
    errors = [e for d in details for e in d["timeline"]["errors"]]  # type: ignore[index]
    by_name = {a["name"]: a for a in actions}
    summary = details[-1]  # the page load's fetch may be alone in a first part, before sign-in
    assert summary["app"] == "shop" and summary["user_tag"] == DANIEL
    assert summary["end_reason"] == "timeout"
    assert summary["browser"]["family"] in ("Chrome", "HeadlessChrome", "Chromium")
    assert summary["os"]["family"] == "Linux"

    # Every instrumented call is an xhr action whose trace id is the one the backend received.
    for method, path, status in [("GET", "/api/products", 200), ("GET", "/api/orders", 200),
                                 ("POST", "/checkout", 500)]:  # fmt: skip
        action = by_name[f"{method} {path}"]
        assert (action["type"], action["method"], action["status"]) == ("xhr", method, status)
        assert 0 <= action["duration"] < 5_000
        [received] = shop.api_calls(method, path)
        trace_id = re.match(r"00-([0-9a-f]{32})-", received.headers["traceparent"]).group(1)
        assert action["trace_id"] == trace_id
        assert action["page"].startswith(shop.origin) and "/api/" not in action["page"]
    # The fetch instrumentation ends a span up to 300 ms after the response (it waits for the
    # Resource Timing entry): a call followed at once by a navigation never gets exported.
    assert "POST /api/cart" not in by_name and shop.api_calls("POST", "/api/cart")
    assert by_name["GET /api/orders"]["page"] == shop.url("/cart/history")
    checkout = by_name["POST /checkout"]
    assert checkout["apdex"] == "frustrated" and checkout["error_count"] == 1
    assert checkout["page"] == shop.url("/cart/checkout")

    kinds = {e["kind"]: e for e in errors}
    assert kinds["request"]["message"] == "POST /checkout 500"
    assert kinds["js"]["message"].startswith("TypeError:")
    assert "applyGiftCard" in kinds["js"]["stack"]
    assert rejected_total(server, "otlp") == 0
