"""The LMDB store on a real environment: WAL order, trimming, map growth (in this process and
by another one), idempotent closed-session writes with their indexes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from collector import Sessionizer, prepare
from collector._core import unpack_detail
from collector.batcher import Batcher
from collector.config import load_settings
from collector.metrics import Metrics
from collector.query import get_session
from collector.readiness import Readiness
from collector.store import RECORDS, TICK, Store, tag_key, time_key
from tests.conftest import REPO, StartServer


@pytest.fixture
def store(tmp_path: Path):
    store = Store(tmp_path / "data", map_size=1 << 20, max_map_size=1 << 30)
    yield store
    store.close()


def test_wal_sequence_is_commit_order_without_gaps(store: Store):
    seqs: list[int] = []

    def writer(n: int) -> None:
        for i in range(50):
            value = b"r%d-%d" % (n, i)
            seqs.append(store.write(lambda txn, v=value: store.append_records(txn, v)))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 201))
    tick = store.write(lambda txn: store.append_tick(txn, 1234))
    entries, more = store.read_wal(0, 1 << 20)
    assert not more
    assert [seq for seq, _, _ in entries] == list(range(1, 202))
    assert entries[-1] == (tick, TICK, (1234).to_bytes(8, "big"))
    assert {kind for _, kind, _ in entries[:-1]} == {RECORDS}
    # Paging: about max_bytes at a time, at least one entry.
    first, more = store.read_wal(0, 1)
    assert len(first) == 1 and more


def test_checkpoint_trim_and_sequence_continues(store: Store):
    for _ in range(10):
        store.write(lambda txn: store.append_records(txn, b"x"))

    def checkpoint(txn):
        store.put_checkpoint(txn, b"state", 10, 99)
        return store.trim_wal(txn, 10)

    assert store.write(checkpoint) == 10
    assert store.load_checkpoint() == (b"state", 10, 99)
    assert store.read_wal(0, 1 << 20) == ([], False)
    assert store.wal_head() == 10
    # An empty WAL continues after the checkpointed position: order is never reused.
    assert store.write(lambda txn: store.append_records(txn, b"y")) == 11


def test_map_grows_when_full_while_readers_read(store: Store):
    stop = threading.Event()
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            with store.read() as txn:
                txn.get(b"k", db=store.dbs["meta"])
            reads[0] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(40):  # 40 × 100 KiB in a 1 MiB map
            store.write(lambda txn: store.append_records(txn, b"x" * 100_000))
    finally:
        stop.set()
        thread.join()
    assert store.env.info()["map_size"] > 1 << 20
    assert store.used_bytes() > 4_000_000
    assert reads[0] > 0
    assert len(store.read_wal(0, 1 << 30)[0]) == 40


GROW_ELSEWHERE = """
import sys
from pathlib import Path
from collector.store import Store
store = Store(Path(sys.argv[1]), map_size=1 << 20)
for _ in range(40):
    store.write(lambda txn: store.append_records(txn, b"x" * 100_000))
store.close()
"""


def test_map_grown_by_another_process_is_adopted(store: Store):
    store.write(lambda txn: store.append_records(txn, b"first"))
    subprocess.run([sys.executable, "-c", GROW_ELSEWHERE, str(store.path)], cwd=REPO,
                   check=True, timeout=60)  # fmt: skip
    entries, _ = store.read_wal(0, 1 << 30)
    assert len(entries) == 41
    assert store.write(lambda txn: store.append_records(txn, b"last")) == 42


def closed_session(sid: str, actions: int = 1):
    now = int(time.time() * 1000)
    events = [{"type": "load", "name": "home", "dur": 100}]
    url = "https://shop.example.com/api/item/"
    events += [{"type": "xhr", "name": f"GET /api/item/{i}", "url": f"{url}{i}", "method": "GET",
                "status": 200, "dur": 80 + i} for i in range(actions - 1)]  # fmt: skip
    body = orjson.dumps({"v": 1, "app": "shop", "sid": sid, "user": "daniel.adams@example.com",
                         "events": events})  # fmt: skip
    records, verdicts, _ = prepare([(now, "10.0.0.1", "Mozilla/5.0", 0, body)])
    assert verdicts == [None]
    core = Sessionizer({"timeout_ms": 1000})
    core.ingest(records, now)
    live = core.live()
    [closed] = core.flush(now + 5000).closed
    return live, closed


def test_closed_session_with_indexes_replaces_live_and_is_idempotent(store: Store):
    live, session = closed_session("abcdefgh-1")
    store.write(lambda txn: store.put_live(txn, live))
    # while open, the session's timeline so far is served with its summary
    detail = orjson.loads(get_session(store, session.session_id) or b"null")
    assert detail["live"] is True
    with store.read() as txn:
        user_key = tag_key("daniel.adams@example.com", live[0].start_ms, session.session_id)
        assert list(txn.cursor(db=store.dbs["live_by_user"]).iternext(values=False)) == [user_key]
    assert [a["name"] for a in detail["timeline"]["actions"]] == ["home"]
    for _ in range(2):  # a replay writes it again: same keys, nothing duplicated
        store.write(lambda txn: store.put_closed(txn, session))
    sid = session.session_id
    with store.read() as txn:

        def keys(db: str) -> list[bytes]:
            return list(txn.cursor(db=store.dbs[db]).iternext(values=False))

        assert keys("sessions") == [sid.encode()] == keys("details")
        assert keys("by_time") == [time_key(session.start_ms, sid)]
        assert keys("by_user") == [tag_key("daniel.adams@example.com", session.start_ms, sid)]
        assert keys("by_app") == [tag_key("shop", session.start_ms, sid)]
        assert keys("live") == [] == keys("live_details") == keys("live_keys")
        assert keys("live_by_time") == [] == keys("live_by_user") == keys("live_by_app")
        assert orjson.loads(txn.get(sid.encode(), db=store.dbs["sessions"]))["live"] is False


def test_details_are_stored_compressed_and_read_back_exactly(store: Store):
    live, session = closed_session("abcdefgh-2", actions=40)
    store.write(lambda txn: store.put_live(txn, live))
    key = session.session_id.encode()
    with store.read() as txn:
        stored_live = bytes(txn.get(key, db=store.dbs["live_details"]))
    assert stored_live[0] == 0x01 and len(stored_live) * 3 < len(live[0].detail)
    assert get_session(store, session.session_id) == _with_timeline(live[0])

    store.write(lambda txn: store.put_closed(txn, session))
    with store.read() as txn:
        stored = bytes(txn.get(key, db=store.dbs["details"]))
    assert stored[0] == 0x01 and len(stored) * 3 < len(session.detail)
    assert unpack_detail(stored) == session.detail
    assert get_session(store, session.session_id) == _with_timeline(session)

    # a store written before compression keeps plain JSON: still served as it is
    store.write(lambda txn: txn.put(key, session.detail, db=store.dbs["details"]))
    assert get_session(store, session.session_id) == _with_timeline(session)

    # a damaged value is an error, not a wrong timeline
    for damaged in (stored[:-3], b"\x01\xff\xff\xff\x7f" + stored[5:], b"[]"):
        with pytest.raises(ValueError):
            unpack_detail(damaged)


def test_a_live_summary_without_its_detail_keeps_the_published_timeline(store: Store):
    now = int(time.time() * 1000)
    core = Sessionizer({"timeout_ms": 60_000})

    def beacon(*names: str) -> bytes:
        events = [{"type": "custom", "name": n, "dur": 10} for n in names]
        body = orjson.dumps({"v": 1, "app": "shop", "sid": "abcdefgh-4", "events": events})
        records, verdicts, _ = prepare([(now, "10.0.0.1", "Mozilla/5.0", 0, body)])
        assert verdicts == [None]
        return records

    def published() -> dict:
        [sid] = [s.session_id for s in first]
        return orjson.loads(get_session(store, sid) or b"null")

    core.ingest(beacon("open cart"), now)
    first = core.live(details=False)  # a new session: its detail comes with it anyway
    store.write(lambda txn: store.put_live(txn, first))
    assert [a["name"] for a in published()["timeline"]["actions"]] == ["open cart"]
    core.ingest(beacon("pay"), now + 1)
    summaries = core.live(details=False)
    assert [s.detail for s in summaries] == [b""]
    store.write(lambda txn: store.put_live(txn, summaries))
    after = published()
    assert after["action_count"] == 2  # the new summary, the timeline published before
    assert [a["name"] for a in after["timeline"]["actions"]] == ["open cart"]
    store.write(lambda txn: store.put_live(txn, core.live(details=True)))
    assert [a["name"] for a in published()["timeline"]["actions"]] == ["open cart", "pay"]


def _with_timeline(session) -> bytes:
    return session.summary[:-1] + b',"timeline":' + session.detail + b"}"


class _SyncsCounted:
    """The real environment; its `sync` calls recorded (the store's only way to make a
    commit's meta page durable, which no test here can observe otherwise: it takes a power
    cut, not a killed process, to lose a page the kernel holds)."""

    def __init__(self, env) -> None:
        self._env = env
        self.syncs: list[bool] = []

    def __getattr__(self, name: str):
        return getattr(self._env, name)

    def sync(self, force: bool = False) -> None:
        self.syncs.append(force)
        self._env.sync(force)


def test_a_durable_write_syncs_after_its_commit(store: Store):
    env = store.env = _SyncsCounted(store.env)
    seq = store.write(lambda txn: store.append_records(txn, b"a"))
    assert env.syncs == []  # data pages only (LMDB's own fdatasync at commit)
    assert store.write(lambda txn: store.append_records(txn, b"b"), durable=True) == seq + 1
    assert env.syncs == [True]
    unsynced = Store(store.path.parent / "nosync", map_size=1 << 20, sync=False)
    try:
        env2 = unsynced.env = _SyncsCounted(unsynced.env)
        unsynced.write(lambda txn: unsynced.append_records(txn, b"c"), durable=True)
        assert env2.syncs == []  # storage.sync = false: never
    finally:
        unsynced.close()


async def test_group_commits_are_durable_before_their_futures_resolve(store: Store):
    """Every batch the batcher acknowledges was synced after its commit, before the verdicts
    came back."""
    env = store.env = _SyncsCounted(store.env)
    settings = load_settings(env={})
    batcher = Batcher(store, settings, Metrics(), Readiness())
    batcher.start()
    body = orjson.dumps({"v": 1, "app": "shop", "sid": "abcdefgh-3", "events": []})
    now = int(time.time() * 1000)
    try:
        futures = [batcher.submit(now, "10.0.0.1", "Mozilla/5.0", 0, body) for _ in range(5)]
        synced_when_acked = []
        for future in futures:
            assert await future is None
            synced_when_acked.append(len(env.syncs))
    finally:
        await batcher.close()
    assert min(synced_when_acked) >= 1
    assert store.wal_head() >= 1


def test_collector_grows_its_map_under_load(start_server: StartServer):
    server = start_server(env={"RUMLINE_STORAGE_MAP_SIZE": "1MiB"})
    padding = "p" * 8192  # an error stack up to its limit: what the WAL keeps (parsed beacons)
    for i in range(100):  # 3 MB of beacons into a 1 MiB map
        body = orjson.dumps(
            {
                "v": 1,
                "app": "grow",
                "sid": f"grow-session-{i % 5}",
                "events": [{"type": "error", "stack": padding}] * 4,
            }
        )
        assert server.request("POST", "/beacon", body)[0] == 204
    assert "grew the LMDB map" in server.log()
    assert server.terminate() == 0
