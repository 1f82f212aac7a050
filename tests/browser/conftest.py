"""Browser-test fixtures: Debian's Chromium driven by Playwright for Python, and helpers to
read what the collector made of a browsing session.

Chromium comes from `apt-get install chromium` (scripts/setup-test-tools.sh); Playwright's own
browser download is never used (it fails on the CI machines), so the launch names the
executable. The flags keep Chromium off the network: no background services to call home.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import ServerProcess

CHROMIUM = Path(os.environ.get("RUMLINE_TEST_CHROMIUM", "/usr/bin/chromium"))
SHOP_HOST = "shop.test"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic",
    # A host name for the shop: Boomerang keeps its session in a cookie, which a bare IP
    # cannot have (each page would start a new session).
    f"--host-resolver-rules=MAP {SHOP_HOST} 127.0.0.1",
]  # fmt: skip
NODE_MODULES = Path(__file__).resolve().parent / "node_modules"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module; each test opens its own context (fresh storage).

    Not per session: Playwright's sync API keeps an asyncio loop running in this thread while
    it is open, which would break the async tests of the modules that run after it.
    """
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/setup-test-tools.sh` (make test)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context()
    yield ctx
    ctx.close()


def require_node_module(name: str) -> Path:
    path = NODE_MODULES / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `bash scripts/setup-test-tools.sh` (make test)")
    return path


def wait_for(probe: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout}s (last: {last!r})")


def sessions(server: ServerProcess, **params: str) -> list[dict[str, Any]]:
    status, body = server.get_json("/api/v1/sessions?" + urlencode({"limit": "1000", **params}))
    assert status == 200, body
    assert isinstance(body, dict)
    return body["sessions"]


def closed_session(server: ServerProcess, timeout: float = 20.0, **params: str) -> dict:
    """The detail (summary + timeline) of the one closed session matching `params`."""
    found = wait_for(lambda: sessions(server, live="false", **params), timeout,
                     f"a closed session with {params}")  # fmt: skip
    assert len(found) == 1, [s["client_sid"] for s in found]
    status, detail = server.get_json(f"/api/v1/sessions/{found[0]['session_id']}")
    assert status == 200 and isinstance(detail, dict), detail
    return detail


def rejected_total(server: ServerProcess, receiver: str) -> float:
    _, _, body = server.request("GET", "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("rumline_beacons_rejected_total{") and f'receiver="{receiver}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def closed_parts(server: ServerProcess, app: str, client_sid: str, timeout: float = 20.0) -> list:
    """The details of every part of a client session, once all are closed (agents without an
    end event: the collector's inactivity timeout ends them; a pause longer than the timeout
    in the middle makes a second part)."""

    def all_closed() -> list[dict] | None:
        mine = [s for s in sessions(server, app=app) if s["client_sid"] == client_sid]
        return mine if mine and not any(s["live"] for s in mine) else None

    parts = wait_for(all_closed, timeout, f"every part of session {client_sid} closed")
    details = [server.get_json(f"/api/v1/sessions/{p['session_id']}")[1] for p in parts]
    return sorted(details, key=lambda d: d["part"])
