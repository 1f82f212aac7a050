""" "A 2xx means durable": kill -9 and SIGTERM of a loaded collector, then restart over the
same LMDB. Every acknowledged beacon must be in its session exactly once, no closed session
may be lost or duplicated, and sessions open at the restart must continue (same session)."""

from __future__ import annotations

import http.client
import os
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest

from collector.store import Store
from tests.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.slow

# Long enough that the kill-restart-recover gap never closes a session by inactivity, even on
# a loaded machine (checked: see `assert_gap_below_timeout`).
TIMEOUT_S = 8
TIMEOUT_ENV = {
    "RUMLINE_SESSION_TIMEOUT": f"{TIMEOUT_S}s",
    "RUMLINE_SESSION_MAX_ACTIONS": "1000000",
    # Checkpoints during the load, so that a restart restores one and replays the WAL after it.
    "RUMLINE_STORAGE_CHECKPOINT_INTERVAL": "300ms",
}


def letters_only(hex_id: str) -> str:
    """Action names without digit runs: the core masks runs of 9+ digits as possible PII."""
    return hex_id.translate(str.maketrans("0123456789", "ghijklmnop"))


class Sender(threading.Thread):
    """Sends beacons for one session id over keep-alive connections until stopped; each
    beacon carries one action whose name is unique. Remembers which ones got a 204."""

    def __init__(self, port: int, app: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.app = app
        self.sid = uuid.uuid4().hex
        self.tag = letters_only(self.sid)
        self.acked: list[str] = []
        self.acked_at: list[float] = []
        self.unacked = 0
        self.stop = threading.Event()
        self.conn: http.client.HTTPConnection | None = None

    def send(self, n: int) -> bool:
        name = f"{self.tag}:{n}"
        body = orjson.dumps({
            "v": 1, "app": self.app, "sid": self.sid, "user": f"user-{self.sid[:6]}",
            "events": [{"type": "custom", "name": name, "dur": 5}],
        })  # fmt: skip
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            self.conn.request("POST", "/beacon", body, {"Content-Type": "text/plain"})
            response = self.conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            self.unacked += 1
            time.sleep(0.02)
            return False
        if response.status == 204:
            self.acked.append(name)
            self.acked_at.append(time.monotonic())
            return True
        self.unacked += 1
        time.sleep(0.02)
        return False

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            self.send(n)
            n += 1
        self.close()


def closed_sessions_of(server: ServerProcess, app: str, timeout: float = 30.0) -> list[dict]:
    """Every session of `app` with its timeline, once none of them is live any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = server.get_json(f"/api/v1/sessions?app={app}&limit=1000")
        assert status == 200
        sessions = body["sessions"]  # type: ignore[index]
        if sessions and not any(s["live"] for s in sessions):
            details = []
            for summary in sessions:
                status, detail = server.get_json(f"/api/v1/sessions/{summary['session_id']}")
                assert status == 200
                details.append(detail)
            return details
        time.sleep(0.2)
    raise AssertionError(f"sessions of {app} still live after {timeout}s")


def action_names(session: dict) -> list[str]:
    return [action["name"] for action in session["timeline"]["actions"]]


def close_some_sessions(server: ServerProcess, app: str, n: int) -> dict[str, list[str]]:
    """Sessions ended by an `end` event, stored before anything goes wrong."""
    ended: dict[str, list[str]] = {}
    for _ in range(n):
        sid = uuid.uuid4().hex
        names = [f"{letters_only(sid)}:a", f"{letters_only(sid)}:b"]
        events = [{"type": "custom", "name": name, "dur": 5} for name in names]
        events.append({"type": "end", "reason": "logout"})
        body = orjson.dumps({"v": 1, "app": app, "sid": sid, "events": events})
        assert server.request("POST", "/beacon", body)[0] == 204
        ended[sid] = names
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, body = server.get_json(f"/api/v1/sessions?app={app}&live=false&limit=1000")
        if len(body["sessions"]) == n:  # type: ignore[index]
            return ended
        time.sleep(0.1)
    raise AssertionError("ended sessions were not stored")


def check_sessions(
    sessions: list[dict], senders: list[Sender], ended: dict[str, list[str]]
) -> None:
    by_sid: dict[str, list[dict]] = {}
    for session in sessions:
        by_sid.setdefault(session["client_sid"], []).append(session)
    assert len({s["session_id"] for s in sessions}) == len(sessions), "duplicate session ids"
    assert set(by_sid) == {s.sid for s in senders} | set(ended)
    # Closed before the crash: still there, exactly once, unchanged.
    for sid, names in ended.items():
        [session] = by_sid[sid]
        assert session["end_reason"] == "end_event"
        assert action_names(session) == names
    # Open across the crash: one session that continued after the restart, holding every
    # acknowledged beacon exactly once (an unacknowledged one may or may not be there).
    for sender in senders:
        parts = [(s["part"], s["end_reason"], s["action_count"]) for s in by_sid[sender.sid]]
        assert len(parts) == 1, f"session split in parts (part, end_reason, actions): {parts}"
        [session] = by_sid[sender.sid]
        assert session["part"] == 1
        assert session["end_reason"] == "timeout"
        names = action_names(session)
        duplicates = [name for name, count in Counter(names).items() if count > 1]
        assert not duplicates, f"{len(duplicates)} beacons stored twice"
        missing = set(sender.acked) - set(names)
        assert not missing, f"{len(missing)} acknowledged beacons lost"
        assert set(names) <= set(sender.acked) | {
            f"{sender.tag}:{n}" for n in range(len(sender.acked) + sender.unacked + 1)
        }


def assert_gap_below_timeout(senders: list[Sender]) -> None:
    """The restart must be shorter than the inactivity timeout for sessions to continue."""
    for sender in senders:
        gap = max(b - a for a, b in zip(sender.acked_at, sender.acked_at[1:], strict=False))
        assert gap < TIMEOUT_S - 1, f"the restart took {gap:.1f}s: too slow for this test"


def run_senders(senders: list[Sender]) -> None:
    for sender in senders:
        sender.start()


def stop_senders(senders: list[Sender]) -> None:
    for sender in senders:
        sender.stop.set()
    for sender in senders:
        sender.join(timeout=10)


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_mid_load_loses_no_acknowledged_beacon(start_server: StartServer, workers: int):
    first = start_server(env=TIMEOUT_ENV, workers=workers)
    app = f"crash-{uuid.uuid4().hex[:6]}"
    ended = close_some_sessions(first, app, 3)
    senders = [Sender(first.port, app) for _ in range(6)]
    run_senders(senders)
    time.sleep(1.5)
    acked_before_kill = sum(len(s.acked) for s in senders)
    first.kill()
    assert acked_before_kill > 50, "the load did not get going"

    second = start_server(env=TIMEOUT_ENV, workers=workers, data_dir=first.data_dir,
                          port=first.port)  # fmt: skip
    time.sleep(1.0)
    stop_senders(senders)
    assert sum(len(s.acked) for s in senders) > acked_before_kill, "no beacon after restart"
    assert_gap_below_timeout(senders)
    # The restart restored a checkpoint taken under load and replayed the WAL after it.
    replay = re.search(r"recovering from_seq=(\d+) to_seq=(\d+)", second.log())
    assert replay and 0 < int(replay[1]) < int(replay[2]), second.log()

    check_sessions(closed_sessions_of(second, app), senders, ended)


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_at_random_moments_over_several_restarts(start_server: StartServer, workers: int):
    """Under continuous load, kill -9 after a random 0.2-1.5 s, restart, three times over:
    every acknowledged beacon is in its session exactly once, no closed session is lost or
    duplicated, and open sessions carry on across every restart."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    server = start_server(env=TIMEOUT_ENV, workers=workers)
    port, data_dir = server.port, server.data_dir
    app = f"kills-{uuid.uuid4().hex[:6]}"
    ended = close_some_sessions(server, app, 2)
    senders = [Sender(port, app) for _ in range(4)]
    run_senders(senders)
    acked = [0]
    for _ in range(3):
        time.sleep(rng.uniform(0.2, 1.5))
        server.kill()
        acked.append(sum(len(s.acked) for s in senders))
        server = start_server(env=TIMEOUT_ENV, workers=workers, data_dir=data_dir, port=port)
    time.sleep(0.5)
    stop_senders(senders)
    assert acked == sorted(acked) and acked[-1] > 50, f"seed {seed}: acked before kills {acked}"
    assert_gap_below_timeout(senders)
    check_sessions(closed_sessions_of(server, app), senders, ended)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_checkpoints_and_sessions_resume(start_server: StartServer, workers: int):
    first = start_server(env=TIMEOUT_ENV, workers=workers)
    app = f"term-{uuid.uuid4().hex[:6]}"
    ended = close_some_sessions(first, app, 2)
    senders = [Sender(first.port, app) for _ in range(4)]
    run_senders(senders)
    time.sleep(1.0)

    started = time.monotonic()
    exit_code = first.terminate(timeout=15)
    took = time.monotonic() - started
    assert exit_code == 0, first.log()
    assert took < 10.0, f"shutdown took {took:.1f}s, over the 10s shutdown timeout"
    assert "stopped" in first.log()
    assert_wal_consumed(first.data_dir)

    # The sessions were not force-closed: after the restart they are live and continue.
    second = start_server(env=TIMEOUT_ENV, workers=workers, data_dir=first.data_dir,
                          port=first.port)  # fmt: skip
    _, body = second.get_json(f"/api/v1/sessions?app={app}&live=true&limit=1000")
    assert {s["client_sid"] for s in body["sessions"]} == {s.sid for s in senders}  # type: ignore[index]
    time.sleep(1.0)
    stop_senders(senders)
    assert_gap_below_timeout(senders)

    check_sessions(closed_sessions_of(second, app), senders, ended)
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(timeout=15) == 0


def assert_wal_consumed(data_dir: Path) -> None:
    """After a clean stop the checkpoint covers the whole WAL (and the WAL is trimmed)."""
    store = Store(data_dir)
    try:
        _, wal_pos, _ = store.load_checkpoint()
        assert wal_pos > 0
        assert store.wal_head() == wal_pos
        entries, more = store.read_wal(0, 1 << 20)
        assert entries == [] and not more
        assert store.sessionizer_status()["state"] == "stopped"  # type: ignore[index]
    finally:
        store.close()


def test_a_dead_sessionizer_is_restarted_and_catches_up(start_server: StartServer):
    """--workers 2: kill -9 the sessionizer process alone. Fronts keep acknowledging (the WAL
    is the queue), /readyz says so, the supervisor restarts it and it catches up."""
    server = start_server(env=TIMEOUT_ENV, workers=2)
    store = Store(server.data_dir)
    try:
        pid = store.sessionizer_status()["pid"]  # type: ignore[index]
        os.kill(pid, signal.SIGKILL)
        app = f"orphan-{uuid.uuid4().hex[:6]}"
        sender = Sender(server.port, app)
        for n in range(20):
            assert sender.send(n)
        sender.close()
        deadline = time.monotonic() + 30
        states = []
        while time.monotonic() < deadline:
            status, body = server.get_json("/readyz")
            states.append(status)
            if status == 200 and store.sessionizer_status()["pid"] != pid:  # type: ignore[index]
                break
            time.sleep(0.05)
        assert states[-1] == 200 and 503 in states, states
    finally:
        store.close()
    sessions = closed_sessions_of(server, app)
    assert [sorted(action_names(s)) for s in sessions] == [sorted(sender.acked)]
    assert "child exited; restarting it" in server.log()
