"""The Locust load test works: `loadtests/run_locust.py` (what `make loadtest` runs) drives the
locustfile headless for a few seconds against a real collector over a real LMDB, with no failed
request, and the visits end up as stored sessions. Speed is not asserted (shared machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEACON_KINDS = {"beacon load", "beacon xhr", "beacon custom", "beacon identify", "beacon end"}


def test_locustfile_runs_without_failures_and_sessions_are_stored(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    # Locust runs in its own process: importing it here would monkey-patch this one (gevent).
    result = subprocess.run(
        [sys.executable, "loadtests/run_locust.py", "--run-time", "5s", "--users", "11",
         "--session-timeout", "2s", "--summary", str(summary_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["total_failures"] == 0, summary["failures"]
    names = {r["name"] for r in summary["requests"] if r["count"] > 0}
    assert BEACON_KINDS <= names, names
    assert "sessions list" in names or "user sessions" in names, names
    assert summary["sessions_stored"] > 0
