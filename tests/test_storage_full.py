"""Storage full, against a real collector over a real LMDB: ingest answers 503 with a clear
log line, a metric and a failing `/readyz`; nothing acknowledged is lost, nothing corrupts,
and ingest recovers by itself when space returns.

- The map at its cap (`max_map_size`): the WAL may not take the last `[storage] reserve`
  bytes, which the sessionizer keeps; it checkpoints, trims the WAL and so frees space.
- The disk full: the collector's file-size limit (RLIMIT_FSIZE, set on the running process
  with prlimit) stops LMDB from growing its file, as a full disk does; then it is lifted.
"""

from __future__ import annotations

import re
import resource
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from collector.store import Store
from tests.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.slow

# 95 property events of 512 characters (the value limit) on one key: the WAL keeps every one
# (~50 KB a beacon), the session only the last value.
FILL = [{"type": "property", "key": "fill", "value": "p" * 512}] * 95


def send(server: ServerProcess, app: str, sid: str) -> tuple[int, dict[str, str], bytes]:
    body = orjson.dumps({"v": 1, "app": app, "sid": sid,
                         "events": [*FILL, {"type": "custom", "name": "fill", "dur": 5},
                                    {"type": "end", "reason": "done"}]})  # fmt: skip
    return server.request("POST", "/beacon", body)


def failures(server: ServerProcess, reason: str) -> float:
    text = server.request("GET", "/metrics")[2].decode()
    pattern = rf'rumline_wal_commit_failures_total{{reason="{reason}"}} (\S+)'
    return float(m.group(1)) if (m := re.search(pattern, text)) else 0.0


class ReadyzWatch(threading.Thread):
    def __init__(self, server: ServerProcess) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.seen: list[tuple[int, tuple[str, ...]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            status, body = self.server.get_json("/readyz")
            self.seen.append((status, tuple(body.get("reasons", ()))))  # type: ignore[union-attr]
            time.sleep(0.02)


def assert_all_stored(server: ServerProcess, app: str, acked: set[str]) -> None:
    deadline = time.monotonic() + 20
    while True:
        _, body = server.get_json(f"/api/v1/sessions?app={app}&live=false&limit=1000")
        stored = {s["client_sid"] for s in body["sessions"]}  # type: ignore[index]
        if acked <= stored:
            return
        assert time.monotonic() < deadline, f"{len(acked - stored)} acknowledged beacons lost"
        time.sleep(0.2)


def assert_store_intact(server: ServerProcess, app: str, acked: set[str]) -> None:
    """Stop the collector, open its LMDB directly, then restart it over the same data."""
    assert server.terminate() == 0, server.log()[-3000:]
    store = Store(server.data_dir)
    try:
        with store.read() as txn:
            for name in ("sessions", "details", "by_time", "by_app"):
                assert sum(1 for _ in txn.cursor(db=store.dbs[name])) >= len(acked)
    finally:
        store.close()


def test_map_at_its_cap_answers_503_then_recovers(start_server: StartServer):
    server = start_server(env={
        "RUMLINE_STORAGE_MAP_SIZE": "8MiB", "RUMLINE_STORAGE_MAX_MAP_SIZE": "8MiB",
        "RUMLINE_STORAGE_RESERVE": "2MiB", "RUMLINE_STORAGE_CHECKPOINT_INTERVAL": "1s",
    })  # fmt: skip
    app = f"full-{uuid.uuid4().hex[:6]}"
    watch = ReadyzWatch(server)
    watch.start()
    # ~60 KB a request from 16 senders: the WAL outgrows what 6 MiB can hold before the
    # sessionizer's next checkpoint trims it.
    sids = [uuid.uuid4().hex for _ in range(400)]
    with ThreadPoolExecutor(16) as pool:
        answers = dict(zip(sids, pool.map(lambda sid: send(server, app, sid), sids), strict=True))
    statuses = {sid: a[0] for sid, a in answers.items()}
    full = [a for a in answers.values() if a[0] == 503]
    assert full, "the map never filled up"
    assert set(statuses.values()) <= {204, 503}, statuses
    for _, headers, body in full:
        assert orjson.loads(body)["error"]["code"] == "storage_full"
        assert headers["retry-after"] == "5"
    assert failures(server, "storage_full") >= 1
    log = server.log()
    assert log.count("storage is full: ingest answers 503") >= 1
    assert "Traceback" not in log

    # Space returns by itself: the sessionizer checkpoints and trims the WAL.
    deadline = time.monotonic() + 15
    while send(server, app, late := uuid.uuid4().hex)[0] != 204:
        assert time.monotonic() < deadline, "ingest did not recover"
        time.sleep(0.2)
    acked = {sid for sid, status in statuses.items() if status == 204} | {late}
    watch.stop.set()
    watch.join()
    assert (503, ("storage_full",)) in watch.seen
    assert server.get_json("/readyz")[0] == 200
    assert "WAL commits succeed again" in server.log()
    assert_all_stored(server, app, acked)
    assert_store_intact(server, app, acked)


def test_disk_full_answers_503_then_recovers(start_server: StartServer):
    server = start_server(env={"RUMLINE_STORAGE_RESERVE": "0"})
    app = f"disk-{uuid.uuid4().hex[:6]}"
    acked: set[str] = set()
    for _ in range(40):  # some data, so that the log file stays far below the limit
        sid = uuid.uuid4().hex
        assert send(server, app, sid)[0] == 204
        acked.add(sid)
    data_file = server.data_dir / "data.mdb"
    pid = server.process.pid
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (data_file.stat().st_size, resource.RLIM_INFINITY))
    try:
        refused = None
        for _ in range(600):  # until LMDB must grow its file (free pages inside come first)
            sid = uuid.uuid4().hex
            status, headers, body = send(server, app, sid)
            if status == 204:
                acked.add(sid)
                continue
            refused = (status, headers, body)
            break
        assert refused is not None, "the file never had to grow"
        assert refused[0] == 503
        assert orjson.loads(refused[2])["error"]["code"] == "storage_error"
        status, body = server.get_json("/readyz")
        assert (status, body["reasons"]) == (503, ["storage_error"])  # type: ignore[index]
        assert failures(server, "storage_error") >= 1
        for _ in range(20):  # still refused, but logged once
            assert send(server, app, uuid.uuid4().hex)[0] == 503
        assert server.log().count("WAL commit failed: ingest answers 503") == 1
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    late = uuid.uuid4().hex
    assert send(server, app, late)[0] == 204
    acked.add(late)
    assert server.get_json("/readyz")[0] == 200
    assert "WAL commits succeed again" in server.log()
    assert_all_stored(server, app, acked)
    assert_store_intact(server, app, acked)
