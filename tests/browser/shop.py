"""A small demo shop for the browser tests, served on its own port (another origin than the
collector, as on a real site): home, product, cart and checkout pages, a JSON API where
`POST /checkout` answers 500, a button that throws, a dead banner to rage-click, sign-in and
log-out buttons.

Every page carries the agent under test (`agent_html`, the snippet a site would paste) and
the shop's own script. The shop's script calls `window.shopHooks.identify(email)` and
`window.shopHooks.logout()`, which each agent's snippet defines with its own API. The server
records every API request with its headers, so a test can compare the `traceparent` the
backend received with the one in the session's timeline.

    with Shop(agent_html) as shop:
        page.goto(shop.url("/"))
"""

from __future__ import annotations

import json
import mimetypes
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
BUILD = NODE_MODULES / ".build"  # bundles the tests make (see test_agent_otel.py)

PRODUCTS = [{"id": 42, "name": "Blue running shoes", "price": 89.0},
            {"id": 7, "name": "Red socks", "price": 9.5}]  # fmt: skip

SHOP_JS = r"""
(function () {
  function $(sel) { return document.querySelector(sel); }
  function on(sel, fn) { var el = $(sel); if (el) el.addEventListener("click", fn); }
  var hooks = window.shopHooks || {identify: function () {}, logout: function () {}};
  if ($("#products")) {
    fetch("/api/products").then(function (r) { return r.json(); }).then(function (items) {
      $("#products").innerHTML = items.map(function (p) {
        return '<li><a class="product" href="/product/' + p.id + '">' + p.name + "</a></li>";
      }).join("");
      document.body.setAttribute("data-ready", "1");
    });
  } else {
    document.body.setAttribute("data-ready", "1");
  }
  on("#sign-in", function () {
    hooks.identify($("#email").value);
    $("#greeting").textContent = "Hello " + $("#email").value;
  });
  on("#add-to-cart", function () {
    fetch("/api/cart", {method: "POST", headers: {"Content-Type": "application/json"},
                        body: JSON.stringify({product: 42, qty: 1})})
      .then(function () { location.href = "/cart"; });
  });
  on("#place-order", function () {
    var x = new XMLHttpRequest();
    x.open("POST", "/checkout");
    x.setRequestHeader("Content-Type", "application/json");
    x.onloadend = function () {
      $("#status").textContent =
        x.status === 200 ? "Thank you!" : "Payment failed (" + x.status + ")";
    };
    x.send(JSON.stringify({cart: 1}));
  });
  function applyGiftCard(card) { return card.balance.amount; }
  on("#gift-card", function () {
    $("#status").textContent = "Checking gift card";
    applyGiftCard(undefined);
  });
  on("#history", function () {
    history.pushState({}, "", "/cart/history");
    fetch("/api/orders").then(function (r) { return r.json(); }).then(function (orders) {
      $("#orders").textContent = orders.length ? orders.length + " orders" : "No orders yet";
    });
  });
  on("#log-out", function () {
    hooks.logout();
    $("#status").textContent = "Logged out";
  });
})();
"""

PAGES: dict[str, tuple[str, str]] = {
    "/": ("Home", """
      <section class="hero"><h1>Spring sale</h1>
        <p>Everything for your run, shipped tomorrow. Pick a pair and go.</p></section>
      <label>E-mail <input id="email" value="daniel.adams@example.com"></label>
      <button id="sign-in">Sign in</button> <span id="greeting"></span>
      <ul id="products"></ul>"""),
    "/product/42": ("Blue running shoes", """
      <section class="hero"><h1>Blue running shoes</h1>
        <p>Light, quick and blue. 89 EUR.</p></section>
      <button id="add-to-cart">Add to cart</button>"""),
    "/cart": ("Cart", """
      <section class="hero"><h1>Your cart</h1><p>1 × Blue running shoes, 89 EUR</p></section>
      <button id="history">Order history</button> <p id="orders"></p>
      <a id="to-checkout" href="/cart/checkout">Checkout</a>"""),
    "/cart/checkout": ("Checkout", """
      <section class="hero"><h1>Checkout</h1><p>Total: 89 EUR</p></section>
      <div id="promo" class="banner">Free shipping today!</div>
      <button id="place-order">Place order</button>
      <button id="gift-card">Use gift card</button>
      <button id="log-out">Log out</button>
      <p id="status"></p>"""),
}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - Demo shop</title>
<style>body{{font:16px sans-serif;margin:2em}} .hero{{padding:2em;background:#eef}}
.hero h1{{font-size:48px}} .banner{{padding:1em;background:#ffd}}</style>
{agent}
</head><body>
<nav><a href="/">Home</a> | <a href="/cart">Cart</a></nav>
{content}
<script src="/shop.js"></script>
</body></html>"""


@dataclass
class ApiCall:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Shop:
    """The shop on 127.0.0.1:<free port>; `agent_html(shop)` gives the `<head>` snippet."""

    agent_html: Callable[[Shop], str]
    # The name pages are served under (the browser maps it to 127.0.0.1, see conftest).
    host: str = "127.0.0.1"
    calls: list[ApiCall] = field(default_factory=list)
    # Bodies POSTed to /record/… (an agent pointed at the shop instead of the collector, to
    # see what it really sends).
    recorded: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def __enter__(self) -> Shop:
        shop = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep pytest's output clean
                pass

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _api(self) -> bool:
                path = self.path.split("?")[0]
                if not (path.startswith("/api/") or path == "/checkout"):
                    return False
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                shop.calls.append(ApiCall(self.command, path,
                                          {k.lower(): v for k, v in self.headers.items()}))
                if path == "/checkout" and self.command == "POST":
                    self._send(500, b'{"error":"payment backend down"}', "application/json")
                elif path == "/api/products":
                    self._send(200, json.dumps(PRODUCTS).encode(), "application/json")
                elif path == "/api/orders":
                    self._send(200, b"[]", "application/json")
                elif path == "/api/cart" and self.command == "POST":
                    self._send(200, b'{"items":1}', "application/json")
                else:
                    self._send(404, b'{"error":"not found"}', "application/json")
                return True

            def do_OPTIONS(self) -> None:  # noqa: N802
                self.send_response(204)
                self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin", "*"))
                self.send_header("Access-Control-Allow-Methods", "POST, GET, OPTIONS")
                self.send_header("Access-Control-Allow-Headers",
                                 self.headers.get("Access-Control-Request-Headers", "*"))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
                if self.path.startswith("/record/"):
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    shop.recorded.append((self.path, {k.lower(): v for k, v in
                                                      self.headers.items()}, body))
                    self._send(202, b"{}", "application/json")
                elif not self._api():
                    self._send(405, b"", "text/plain")

            def do_GET(self) -> None:  # noqa: N802
                if self._api():
                    return
                path = self.path.split("?")[0]
                if path in PAGES:
                    title, content = PAGES[path]
                    html = PAGE.format(title=title, content=content, agent=shop.agent_html(shop))
                    self._send(200, html.encode(), "text/html; charset=utf-8")
                elif path == "/shop.js":
                    self._send(200, SHOP_JS.encode(), "text/javascript")
                elif path.startswith(("/vendor/", "/build/")):
                    self._file(path)
                else:
                    self._send(404, b"not found", "text/plain")

            def _file(self, path: str) -> None:
                root = NODE_MODULES if path.startswith("/vendor/") else BUILD
                rel = path.split("/", 2)[2]
                file = (root / rel).resolve()
                if root.resolve() not in file.parents or not file.is_file():
                    self._send(404, b"not found", "text/plain")
                    return
                kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                if file.suffix in (".js", ".mjs"):
                    kind = "text/javascript"
                self._send(200, file.read_bytes(), kind)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def origin(self) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.origin + path

    def api_calls(self, method: str, path: str) -> list[ApiCall]:
        return [c for c in self.calls if c.method == method and c.path == path]
