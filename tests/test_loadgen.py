"""The Rust load generator works: `loadtests/loadgen` (what bench_ingest drives the servers
with) builds, runs for a moment against a real collector over a real LMDB, reads every durable
204 off its keep-alive connections and reports them in its JSON, with no error. Speed is not
asserted (shared machine)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import orjson

from tests.conftest import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent


def loadgen_binary() -> Path:
    # The first build takes a while (release profile, fat LTO); later ones are no-ops.
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "loadgen"], cwd=REPO,
                   check=True, timeout=600)  # fmt: skip
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return (target if target.is_absolute() else REPO / target) / "release" / "loadgen"


def test_loadgen_gets_204s_from_a_real_collector(server: ServerProcess, tmp_path: Path) -> None:
    binary = loadgen_binary()
    bodies = tmp_path / "bodies.ndjson"
    bodies.write_bytes(b"".join(
        orjson.dumps({"v": 1, "app": "loadgen-smoke", "sid": f"loadgen-smoke-{n:04d}",
                      "vid": "v1", "seq": 1, "sent": 1764126000500,
                      "page": {"url": "https://shop.example.com/"},
                      "events": [{"type": "xhr", "name": "GET /api/cart", "method": "GET",
                                  "url": "https://shop.example.com/api/cart", "status": 200,
                                  "start": 1764126000000, "dur": 120}]}) + b"\n"
        for n in range(20)
    ))  # fmt: skip
    result = subprocess.run(
        [str(binary), "--port", str(server.port), "--body", str(bodies), "--body-lines",
         "--connections", "4", "--duration", "1.5", "--header", "User-Agent: loadgen-smoke"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["errors"] == 0, report["error_kinds"]
    assert report["requests"] > 0
    assert report["statuses"] == {"204": report["requests"]}
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert report["cpu_s"] >= 0
    # The collector saw as many beacon requests as the load generator counted answers.
    status, _, metrics = server.request("GET", "/metrics")
    assert status == 200
    received = re.search(rb'^rumline_beacons_received_total\{receiver="native"\} (\S+)$',
                         metrics, re.MULTILINE)  # fmt: skip
    assert received, metrics.decode()
    assert float(received.group(1)) == report["requests"]


def test_loadgen_counts_refused_connections_as_errors_and_stops(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(b'{"v": 1}')
    result = subprocess.run(
        [str(loadgen_binary()), "--port", str(free_port()), "--body", str(body),
         "--connections", "2", "--duration", "0.5"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["requests"] == 0
    assert report["errors"] > 0
    assert set(report["error_kinds"]) == {"connect ConnectionRefused"}
