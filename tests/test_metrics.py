"""Prometheus metrics: values from the real core's results, bounded labels, the rating buckets,
multiprocess merging, and `/metrics` on real collector processes (`--workers 1` and `2`)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from collector._core import Sessionizer, prepare
from collector.appkeys import METRICS
from collector.metrics import REQUEST_BUCKETS, VITAL_BUCKETS, Metrics, setup_metrics_route
from tests.conftest import ServerProcess, StartServer

T0 = 1_764_126_000_000


def samples(text: str | bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of an exposition."""
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str | bytes, name: str, /, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def run_core(*beacons: dict, close: bool = True) -> list:
    """Results of the real core for beacons received at T0 (flushed an hour later)."""
    core = Sessionizer({"timeout_ms": 60_000})
    request = (T0, "198.51.100.4", "Mozilla/5.0", 0, orjson.dumps(list(beacons)))
    wal, verdicts, _ = prepare([request])
    assert verdicts == [None]
    results = [core.ingest(wal, T0)]
    if close:
        results.append(core.flush(T0 + 3_600_000))
    return results


def shop_session(app: str = "shop", sid: str = "metrics-session-1") -> dict:
    return {
        "app": app, "sid": sid, "sent": T0,
        "events": [
            {"type": "load", "name": "loading of page /", "start": T0 - 9000, "dur": 1000},
            {"type": "load", "name": "loading of page /slow", "start": T0 - 8000, "dur": 5000},
            {"type": "xhr", "name": "POST /checkout", "status": 500, "start": T0 - 2000,
             "dur": 100},
            {"type": "error", "kind": "request", "message": "500", "start": T0 - 1900},
            {"type": "error", "kind": "js", "message": "x", "start": T0 - 1800},
            {"type": "vital", "name": "LCP", "value": 2500, "start": T0 - 7000},
            {"type": "vital", "name": "CLS", "value": 0.3, "start": T0 - 7000},
            {"type": "vital", "name": "MADE_UP", "value": 7, "start": T0 - 7000},
            {"type": "surprise"},
        ],
    }  # fmt: skip


def test_closed_sessions_feed_the_experience_metrics() -> None:
    metrics = Metrics()
    for result in run_core(shop_session()):
        metrics.observe_closed(result)
    text = metrics.exposition()[0]
    assert value(text, "rumline_sessions_closed_total", end_reason="timeout") == 1
    assert value(text, "rumline_actions_total", app="shop", type="load", apdex="satisfied") == 1
    assert value(text, "rumline_actions_total", app="shop", type="load", apdex="tolerating") == 1
    assert value(text, "rumline_actions_total", app="shop", type="xhr", apdex="frustrated") == 1
    assert value(text, "rumline_errors_total", app="shop", kind="request") == 1
    assert value(text, "rumline_errors_total", app="shop", kind="js") == 1
    assert value(text, "rumline_events_dropped_total", reason="unknown_type") == 1
    # LCP 2500 is "good" (≤ 2500): it falls in the le=2500 bucket, not below.
    lcp = {"app": "shop", "name": "LCP"}
    assert value(text, "rumline_web_vital_bucket", le="1800.0", **lcp) == 0
    assert value(text, "rumline_web_vital_bucket", le="2500.0", **lcp) == 1
    assert value(text, "rumline_web_vital_count", **lcp) == 1
    cls = {"app": "shop", "name": "CLS"}
    assert value(text, "rumline_web_vital_bucket", le="0.25", **cls) == 0
    assert value(text, "rumline_web_vital_bucket", le="+Inf", **cls) == 1
    assert "MADE_UP" not in text.decode()


def test_web_vital_buckets_are_the_rating_thresholds() -> None:
    assert VITAL_BUCKETS == (0.1, 0.25, 200, 500, 800, 1800, 2500, 3000, 4000)


def test_an_open_session_is_not_counted_yet() -> None:
    metrics = Metrics()
    for result in run_core(shop_session(), close=False):
        metrics.observe_closed(result)
    text = metrics.exposition()[0]
    assert value(text, "rumline_actions_total", app="shop", type="load", apdex="satisfied") == 0


def test_app_labels_are_capped() -> None:
    metrics = Metrics(max_apps=2)
    apps = ["a1", "a2", "a3", "a4"]
    for result in run_core(*(shop_session(app, f"sid-for-{app}") for app in apps)):
        metrics.observe_closed(result)
    text = metrics.exposition()[0]
    labelled = {labels for name, labels in samples(text) if name == "rumline_errors_total"}
    apps_seen = {dict(labels)["app"] for labels in labelled}
    assert len(apps_seen) == 3 and "other" in apps_seen
    assert value(text, "rumline_errors_total", app="other", kind="js") == 2


def test_configured_apps_are_the_only_app_labels() -> None:
    metrics = Metrics(apps=["shop"])
    for result in run_core(shop_session(), shop_session("blog", "blog-sid-1")):
        metrics.observe_closed(result)
    text = metrics.exposition()[0]
    assert value(text, "rumline_errors_total", app="shop", kind="js") == 1
    assert value(text, "rumline_errors_total", app="other", kind="js") == 1


def test_instances_do_not_share_values() -> None:
    first, second = Metrics(), Metrics()
    first.beacon_received("native", 3)
    first.beacon_rejected("native", "bad_json")
    first.observe_batch(7, 0.002)
    assert value(first.exposition()[0], "rumline_beacons_received_total", receiver="native") == 3
    assert value(second.exposition()[0], "rumline_beacons_received_total", receiver="native") == 0


def test_openmetrics_on_request() -> None:
    body, content_type = Metrics().exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


async def test_request_duration_is_labelled_by_route_pattern() -> None:
    app = web.Application()
    app[METRICS] = Metrics()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app.router.add_get("/api/v1/sessions/{session_id}", hello)
    setup_metrics_route(app)
    async with TestClient(TestServer(app)) as client:
        for sid in ("a" * 32, "b" * 32):
            assert (await client.get(f"/api/v1/sessions/{sid}")).status == 200
        assert (await client.get("/no/such/path")).status == 404
        text = await (await client.get("/metrics")).read()
    count = "rumline_request_duration_seconds_count"
    assert value(text, count, route="/api/v1/sessions/{session_id}") == 2
    assert value(text, count, route="unmatched") == 1
    assert b"a" * 32 not in text


def test_request_duration_observer_writes_what_observe_writes() -> None:
    """`observe_request` bypasses prometheus-client's `Histogram.observe` (pinned version):
    the same values, on and between the bucket bounds, give the same exposition."""
    seconds = [0.0, 1e-6, *REQUEST_BUCKETS, *(b * 1.5 for b in REQUEST_BUCKETS), 7.0, 1e9]
    fast, reference = Metrics(), Metrics()
    for s in seconds:
        fast.observe_request("/beacon", s)
        reference.request_duration.labels("/beacon").observe(s)
    def observed(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return {key: v for key, v in samples(metrics.exposition()[0]).items()
                if key[0].startswith("rumline_request_duration_seconds")
                and not key[0].endswith("_created")}  # fmt: skip

    assert observed(fast) == observed(reference)
    assert value(fast.exposition()[0], "rumline_request_duration_seconds_count",
                 route="/beacon") == len(seconds)  # fmt: skip


def test_multiprocess_values_are_merged(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR: values of several processes add up in one scrape, counters
    of a dead process stay, its live gauge goes."""
    script = textwrap.dedent("""
        import multiprocessing, sys
        from collector.metrics import Metrics, mark_process_dead

        def child(n):
            m = Metrics()
            m.beacon_received("native", n)
            m.set_queue_depth(n)

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("spawn")
            procs = [ctx.Process(target=child, args=(n,)) for n in (2, 5)]
            for p in procs: p.start()
            for p in procs: p.join()
            mark_process_dead(procs[0].pid)
            sys.stdout.buffer.write(Metrics().exposition()[0])
    """)
    (tmp_path / "metrics_dir").mkdir()
    (tmp_path / "children.py").write_text(script)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics_dir"),
           "PYTHONPATH": str(Path(__file__).parent.parent)}  # fmt: skip
    out = subprocess.run(
        [sys.executable, str(tmp_path / "children.py")], env=env, capture_output=True,
        check=True, timeout=60,
    ).stdout  # fmt: skip
    assert value(out, "rumline_beacons_received_total", receiver="native") == 7
    # livesum: the dead process's 2 is gone; the other child's 5 stays until it is marked dead.
    assert value(out, "rumline_queue_depth") == 5


# --- real processes ---------------------------------------------------------------------------


def post(server: ServerProcess, body: dict) -> None:
    status, _, answer = server.request("POST", "/beacon", orjson.dumps(body))
    assert status == 204, answer


def scrape(server: ServerProcess) -> bytes:
    status, headers, body = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return body


def live_beacon(sid: str) -> dict:
    now = int(time.time() * 1000)
    return {
        "app": "shop", "sid": sid, "sent": now,
        "events": [
            {"type": "xhr", "name": "POST /checkout", "status": 500, "start": now - 900,
             "dur": 100},
            {"type": "vital", "name": "INP", "value": 350, "start": now - 500},
            {"type": "end", "reason": "logout", "start": now - 1},
        ],
    }  # fmt: skip


def wait_for_sample(server: ServerProcess, name: str, labels: dict[str, str], at_least: float,
                    timeout: float = 20.0) -> bytes:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(server)
        if value(text, name, **labels) >= at_least:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} < {at_least}:\n{text.decode()}")
        time.sleep(0.2)


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_of_a_real_collector(start_server: StartServer, workers: int) -> None:
    server = start_server(workers=workers)
    for i in range(6):  # with 2 fronts the kernel spreads the connections over both
        post(server, live_beacon(f"metrics-real-{i:02d}"))
    status, _, _ = server.request("POST", "/beacon", b"{broken")
    assert status == 400
    text = wait_for_sample(server, "rumline_sessions_closed_total", {"end_reason": "end_event"}, 6)
    assert value(text, "rumline_beacons_received_total", receiver="native") == 7
    assert value(text, "rumline_beacons_rejected_total", receiver="native", reason="bad_json") == 1
    assert value(text, "rumline_actions_total", app="shop", type="xhr", apdex="frustrated") == 6
    inp = {"app": "shop", "name": "INP"}
    assert value(text, "rumline_web_vital_bucket", le="200.0", **inp) == 0
    assert value(text, "rumline_web_vital_bucket", le="500.0", **inp) == 6
    assert value(text, "rumline_batch_size_count") >= 1
    assert value(text, "rumline_wal_commit_seconds_count") >= 1
    assert value(text, "rumline_lmdb_used_bytes") > 0
    assert value(text, "rumline_sessions_open") == 0
    assert value(text, "rumline_request_duration_seconds_count", route="/beacon") >= 6
    for name in ("rumline_queue_depth", "rumline_sessions_open", "rumline_lmdb_used_bytes"):
        assert any(n == name for n, _ in samples(text)), name
