"""`rumline backup DEST` while the collector serves under load; the copy, used as the data
directory of a new collector, has every session: closed ones, and open ones (from the
checkpoint and the WAL in the copy) that then close there."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson

from tests.conftest import REPO, StartServer
from tests.test_durability import Sender, close_some_sessions, run_senders, stop_senders


def run_backup(data_dir: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", "backup", str(dest), "--data-dir", str(data_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_backup_while_serving_restores_every_session(start_server: StartServer, tmp_path: Path):
    env = {"RUMLINE_SESSION_TIMEOUT": "3s", "RUMLINE_SESSION_MAX_ACTIONS": "1000000",
           "RUMLINE_STORAGE_CHECKPOINT_INTERVAL": "300ms"}  # fmt: skip
    server = start_server(env=env)
    app = f"backup-{uuid.uuid4().hex[:6]}"
    ended = close_some_sessions(server, app, 5)
    senders = [Sender(server.port, app) for _ in range(3)]
    run_senders(senders)
    time.sleep(1.0)
    dest = tmp_path / "copy"
    acked_before_copy = {s.sid: len(s.acked) for s in senders}
    result = run_backup(server.data_dir, dest)  # under load
    time.sleep(0.3)
    stop_senders(senders)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backed up" in result.stdout
    assert (dest / "data.mdb").stat().st_size > 0

    # A backup into a directory that is not empty is refused.
    again = run_backup(server.data_dir, dest)
    assert again.returncode == 1 and "not empty" in again.stdout

    restored = start_server(env=env, data_dir=dest)
    deadline = time.monotonic() + 20
    while True:
        _, body = restored.get_json(f"/api/v1/sessions?app={app}&limit=1000")
        sessions = body["sessions"]  # type: ignore[index]
        if len(sessions) == 5 + len(senders) and not any(s["live"] for s in sessions):
            break
        assert time.monotonic() < deadline, sessions
        time.sleep(0.2)
    by_sid = {s["client_sid"]: s for s in sessions}
    assert set(by_sid) == set(ended) | {s.sid for s in senders}
    for sid in ended:
        assert by_sid[sid]["end_reason"] == "end_event"
    for sender in senders:
        # Everything acknowledged before the copy began is in it (later ones may be).
        _, detail = restored.get_json(f"/api/v1/sessions/{by_sid[sender.sid]['session_id']}")
        names = [a["name"] for a in detail["timeline"]["actions"]]  # type: ignore[index]
        assert set(sender.acked[: acked_before_copy[sender.sid]]) <= set(names)
        assert len(names) == len(set(names)), "a beacon stored twice"
    # The original went on serving meanwhile.
    late = orjson.dumps({"v": 1, "app": app, "sid": uuid.uuid4().hex, "events": []})
    assert server.request("POST", "/beacon", late)[0] == 204
