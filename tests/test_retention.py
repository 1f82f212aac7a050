"""Retention: closed sessions older than `[storage] retention` are deleted with their detail
and every index entry. `Retention` takes its clock as a parameter: the first test moves
"now" over a real LMDB filled by the real core; the second runs the collector's own task."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import orjson

from collector import Sessionizer, prepare
from collector.retention import Retention
from collector.store import Store
from tests.conftest import StartServer

DAY_MS = 86_400_000
T0 = 1_764_000_000_000


def closed_sessions(starts: list[int], app: str = "shop") -> list:
    """One closed session per start time (its beacon received then, ended by an end event)."""
    core = Sessionizer({})
    sessions = []
    for i, recv in enumerate(starts):
        body = orjson.dumps({"v": 1, "app": app, "sid": f"retention-{i:04d}", "user": f"u{i % 3}",
                             "events": [{"type": "custom", "name": "x", "dur": 5},
                                        {"type": "end", "reason": "done"}]})  # fmt: skip
        records, verdicts, _ = prepare([(recv, "10.0.0.1", "Mozilla/5.0", 0, body)])
        assert verdicts == [None]
        sessions.extend(core.ingest(records, recv).closed)
    return sessions


def counts(store: Store) -> dict[str, int]:
    with store.read() as txn:
        return {name: txn.stat(store.dbs[name])["entries"]
                for name in ("sessions", "details", "by_time", "by_app", "by_user")}  # fmt: skip


def test_sessions_older_than_the_retention_go_with_their_indexes(tmp_path: Path):
    store = Store(tmp_path / "data")
    starts = [T0 + d * DAY_MS for d in range(10)]  # one session a day for ten days
    sessions = closed_sessions(starts)
    store.write(lambda txn: [store.put_closed(txn, s) for s in sessions])
    assert counts(store) == dict.fromkeys(("sessions", "details", "by_time", "by_app",
                                           "by_user"), 10)  # fmt: skip
    now = [T0 + 9 * DAY_MS]
    expired: list[int] = []
    retention = Retention(store, 3 * DAY_MS, 1000, on_expired=expired.append,
                          clock=lambda: now[0])  # fmt: skip
    # Days 0..5 started more than 3 days before day 9; days 6..9 stay.
    assert retention.run_once() == 6
    assert counts(store) == dict.fromkeys(("sessions", "details", "by_time", "by_app",
                                           "by_user"), 4)  # fmt: skip
    with store.read() as txn:
        kept = {k.decode() for k, _ in txn.cursor(db=store.dbs["sessions"])}
    assert kept == {s.session_id for s in sessions[6:]}
    assert retention.run_once() == 0  # nothing more at the same now
    now[0] += 2 * DAY_MS
    assert retention.run_once() == 2
    assert expired == [6, 0, 2]
    store.close()


def test_the_collector_deletes_old_sessions_in_the_background(start_server: StartServer):
    """Client clocks place sessions days in the past (`sent` days after the events), within a
    30-day max_duration; with a 1-day retention the collector's task deletes those only."""
    server = start_server(env={
        "RUMLINE_STORAGE_RETENTION": "1d", "RUMLINE_STORAGE_RETENTION_INTERVAL": "200ms",
        "RUMLINE_SESSION_MAX_DURATION": "30d",
    })  # fmt: skip
    app = f"retention-{uuid.uuid4().hex[:6]}"
    sids = {}
    for days in (0, 0, 3, 5):
        sid = uuid.uuid4().hex
        events = [{"type": "custom", "name": "x", "dur": 5, "start": 1_000},
                  {"type": "end", "reason": "done", "start": 1_010}]  # fmt: skip
        beacon = {"v": 1, "app": app, "sid": sid, "sent": 1_020 + days * DAY_MS,
                  "events": events}  # fmt: skip
        assert server.request("POST", "/beacon", orjson.dumps(beacon))[0] == 204
        sids[sid] = days
    deadline = time.monotonic() + 15
    while True:
        _, body = server.get_json(f"/api/v1/sessions?app={app}&limit=100")
        left = {s["client_sid"] for s in body["sessions"]}  # type: ignore[index]
        if left == {sid for sid, days in sids.items() if days == 0}:
            break
        assert time.monotonic() < deadline, f"left: {[sids[s] for s in left]} days old"
        time.sleep(0.1)
    _, _, metrics = server.request("GET", "/metrics")
    assert b"rumline_sessions_expired_total 2.0" in metrics
