"""Start-up recovery is the sessionizer loop itself: /readyz fails with `recovering` while the
WAL after the last checkpoint is replayed, then the replayed sessions are there."""

from __future__ import annotations

import time

import orjson

from collector import prepare
from collector.store import Store
from tests.conftest import StartServer, free_port


def fill_wal(store: Store, entries: int, requests: int, events: int) -> int:
    """Append what fronts would have committed: real `prepare` output, `entries` commits."""
    now = int(time.time() * 1000)
    event = {"type": "xhr", "name": "GET /api/cart", "status": 200, "dur": 120}
    for e in range(entries):
        batch = []
        for r in range(requests):
            body = orjson.dumps({"v": 1, "app": "recover", "sid": f"recover-{r:05d}",
                                 "events": [event] * events})  # fmt: skip
            batch.append((now + e, "10.1.2.3", "Mozilla/5.0", 0, body))
        records, verdicts, _ = prepare(batch)
        assert verdicts == [None] * requests
        store.write(lambda txn, records=records: store.append_records(txn, records))
    return entries * requests * events


def test_readyz_fails_while_recovering_then_sessions_are_back(start_server: StartServer, tmp_path):
    data_dir = tmp_path / "data"
    store = Store(data_dir)
    total = fill_wal(store, entries=100, requests=50, events=40)  # 200k events to replay
    store.close()

    server = start_server(data_dir=data_dir, port=free_port(), wait=False,
                          env={"RUMLINE_SESSION_MAX_ACTIONS": "100000"})  # fmt: skip
    seen: list[tuple[int, object]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status, body = server.get_json("/readyz")
        except OSError:
            time.sleep(0.01)
            continue
        if not seen or seen[-1] != (status, body):
            seen.append((status, body))
        if status == 200:
            break
        time.sleep(0.01)
    assert seen[0] == (503, {"status": "not_ready", "reasons": ["recovering"]}), seen
    assert seen[-1] == (200, {"status": "ready"}), seen

    status, body = server.get_json("/api/v1/sessions?app=recover&limit=100")
    assert status == 200
    sessions = body["sessions"]  # type: ignore[index]
    assert len(sessions) == 50
    assert all(s["live"] for s in sessions)
    assert sum(s["action_count"] for s in sessions) == total


def test_open_sessions_of_a_store_without_live_indexes_are_indexed_at_start(
    start_server: StartServer,
) -> None:
    """A store written before open sessions were indexed (its `live` db alone): after a
    restart the user-tag lookup finds the open session again."""
    env = {"RUMLINE_SESSION_TIMEOUT": "1h"}
    server = start_server(env=env)
    body = orjson.dumps({"v": 1, "app": "upgrade", "sid": "upgrade-session-1",
                         "user": "ann@example.com",
                         "events": [{"type": "load", "name": "home", "dur": 100}]})  # fmt: skip
    assert server.request("POST", "/beacon", body)[0] == 204
    path = "/api/v1/users/ann@example.com/sessions"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, found = server.get_json(path)
        if status == 200 and found["sessions"]:  # type: ignore[index]
            break
        time.sleep(0.05)
    [live] = found["sessions"]  # type: ignore[index]
    assert live["live"] is True
    assert server.terminate() == 0

    store = Store(server.data_dir)
    try:
        def forget_indexes(txn) -> None:  # what an older version left: summaries only
            for name in ("live_keys", "live_by_time", "live_by_user", "live_by_app"):
                txn.drop(store.dbs[name], delete=False)

        store.write(forget_indexes)
        with store.read() as txn:
            assert txn.stat(store.dbs["live"])["entries"] == 1
    finally:
        store.close()

    again = start_server(env=env, data_dir=server.data_dir)
    status, found = again.get_json(path)
    assert status == 200
    assert [s["session_id"] for s in found["sessions"]] == [live["session_id"]]  # type: ignore[index]


def test_sessions_all_due_after_an_outage_are_closed_a_write_at_a_time(
    start_server: StartServer,
) -> None:
    """Open sessions restored after an outage longer than the timeout are all due at once
    (here: restarted with a shorter timeout); they are closed `max_closed_per_write` at a time,
    each stored exactly once, none left open."""
    server = start_server(env={"RUMLINE_SESSION_TIMEOUT": "1h"})
    beacons = [{"v": 1, "app": "outage", "sid": f"outage-session-{i:03d}",
                "events": [{"type": "load", "name": "home", "dur": 100}]}
               for i in range(50)]  # fmt: skip
    assert server.request("POST", "/beacon", orjson.dumps(beacons))[0] == 204
    assert server.terminate() == 0  # checkpointed: the 50 stay open

    again = start_server(data_dir=server.data_dir, env={
        "RUMLINE_SESSION_TIMEOUT": "1s", "RUMLINE_SESSION_MAX_CLOSED_PER_WRITE": "7"})  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, body = again.get_json("/api/v1/sessions?app=outage&limit=100")
        sessions = body["sessions"]  # type: ignore[index]
        if len(sessions) == 50 and not any(s["live"] for s in sessions):
            break
        time.sleep(0.1)
    assert sorted(s["client_sid"] for s in sessions) == [b["sid"] for b in beacons]
    assert {s["end_reason"] for s in sessions} == {"timeout"}
    assert "more sessions are due than one write closes" in again.log()
