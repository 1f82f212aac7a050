"""Overload against a real collector: a flood at twice the rate it can sustain, for a bounded
time. It must not crash, its memory must stay bounded, every beacon it acknowledged (204)
must be stored, and `/readyz` must fail while it is overloaded and recover after.

The sustainable rate is made small and measurable by committing one request per fsync
(`batch_max_requests = 1`), so that the test's own client can outrun it on a shared 2-core
machine; the queue in front of the commit is bounded at 100 requests.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import ServerProcess, StartServer

QUEUE_MAX = 100
ENV = {
    "RUMLINE_INGEST_QUEUE_MAX_REQUESTS": str(QUEUE_MAX),
    "RUMLINE_INGEST_BATCH_MAX_REQUESTS": "1",
    "RUMLINE_SESSION_TIMEOUT": "2s",
    "RUMLINE_SESSION_MAX_ACTIONS": "1000000",
}
SESSIONS = 20
FLOOD_S = 30.0
# The process holds at most QUEUE_MAX bodies of < 1 KiB waiting; everything else it answers
# at once. Python, aiohttp, the core and LMDB's pages take ~100 MiB; allow for it, not more.
RSS_BOUND = 300 << 20


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


class Flood:
    """Beacons of `SESSIONS` sessions of one app, each carrying one uniquely named action."""

    def __init__(self, server: ServerProcess) -> None:
        self.url = server.url("/beacon")
        self.app = f"flood-{uuid.uuid4().hex[:6]}"
        self.sids = [uuid.uuid4().hex for _ in range(SESSIONS)]
        self.n = 0
        self.acked: set[str] = set()
        self.statuses: dict[int, int] = {}

    async def send(self, http: aiohttp.ClientSession) -> None:
        self.n += 1
        name = f"beacon {self.n:07d}".replace("0", "o")  # no digit runs: the core masks them
        sid = self.sids[self.n % SESSIONS]
        body = orjson.dumps({"v": 1, "app": self.app, "sid": sid,
                             "events": [{"type": "custom", "name": name, "dur": 5}]})  # fmt: skip
        try:
            async with http.post(self.url, data=body) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 204:
            self.acked.add(name)


async def closed_loop(flood: Flood, http: aiohttp.ClientSession, seconds: float) -> float:
    """Acknowledged beacons per second with 8 senders that wait for each answer."""

    async def sender(deadline: float) -> None:
        while time.monotonic() < deadline:
            await flood.send(http)

    before = len(flood.acked)
    started = time.monotonic()
    await asyncio.gather(*(sender(started + seconds) for _ in range(8)))
    return (len(flood.acked) - before) / (time.monotonic() - started)


async def open_loop(flood: Flood, http: aiohttp.ClientSession, rate: float, seconds: float):
    """Send at `rate` per second whatever the answers (as browsers do)."""
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate) - sent
        for _ in range(due):
            task = asyncio.create_task(flood.send(http))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent += max(due, 0)
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)
    return sent / seconds


async def watch(server: ServerProcess, http: aiohttp.ClientSession, stop: asyncio.Event,
                readiness: list[tuple[int, list[str]]], rss: list[int]) -> None:  # fmt: skip
    while not stop.is_set():
        try:
            async with http.get(server.url("/readyz")) as response:
                body = await response.json()
                readiness.append((response.status, body.get("reasons", [])))
        except (aiohttp.ClientError, TimeoutError):
            readiness.append((0, []))
        rss.append(rss_bytes(server.process.pid))
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_twice_the_sustainable_rate(start_server: StartServer):
    server = start_server(env=ENV)
    flood = Flood(server)
    connector = aiohttp.TCPConnector(limit=400)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        sustainable = await closed_loop(flood, http, 2.0)
        assert sustainable > 20, f"only {sustainable:.0f} beacons/s: the machine is too busy"

        stop = asyncio.Event()
        readiness: list[tuple[int, list[str]]] = []
        rss: list[int] = []
        watcher = asyncio.create_task(watch(server, http, stop, readiness, rss))
        offered = await open_loop(flood, http, 2 * sustainable, FLOOD_S)
        # Recovery: the queue drains and /readyz answers 200 again.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and readiness[-1][0] != 200:
            await asyncio.sleep(0.1)
        stop.set()
        await watcher

    summary = (f"sustainable {sustainable:.0f}/s, offered {offered:.0f}/s, "
               f"answers {flood.statuses}, max RSS {max(rss) >> 20} MiB")  # fmt: skip
    print(summary)
    assert server.process.poll() is None, "the collector died"
    assert set(flood.statuses) <= {204, 503}, summary
    assert flood.statuses.get(503, 0) > 0, "never overloaded: " + summary
    assert (503, ["overloaded"]) in readiness, summary
    assert readiness[-1] == (200, []), summary
    assert max(rss) < RSS_BOUND, summary

    stored = stored_action_names(server, flood)
    missing = flood.acked - stored
    assert not missing, f"{len(missing)} acknowledged beacons lost; " + summary
    assert "Traceback" not in server.log()


def stored_action_names(server: ServerProcess, flood: Flood) -> set[str]:
    """Every action name of the flood's sessions, once all of them are closed."""
    deadline = time.monotonic() + 30
    while True:
        _, body = server.get_json(f"/api/v1/sessions?app={flood.app}&limit=1000")
        sessions = body["sessions"]  # type: ignore[index]
        if sessions and not any(s["live"] for s in sessions):
            break
        assert time.monotonic() < deadline, "the flood's sessions did not close"
        time.sleep(0.2)
    names: set[str] = set()
    for summary in sessions:
        _, detail = server.get_json(f"/api/v1/sessions/{summary['session_id']}")
        names.update(a["name"] for a in detail["timeline"]["actions"])  # type: ignore[index]
    return names
