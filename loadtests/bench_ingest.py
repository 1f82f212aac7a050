"""Benchmark of the whole ingest path (HTTP → batcher → core → fsync'ed WAL → 204).

    .venv/bin/python loadtests/bench_ingest.py [--duration 10] [--connections 64] [--write]

Runs, on this machine and in the same run:

1. `bare`: an aiohttp + uvloop app whose POST handler reads the body and answers 204 — the
   ceiling of any Python aiohttp service on this machine;
2. `rumline --workers 1` and `--workers 2` with single native beacons (one event each);
3. the same with batched POSTs of 50 events (a browser agent flushing a queue).

The load generator is a raw HTTP/1.1 keep-alive client on uvloop (one request in flight per
connection; the 204 only comes after the fsync'ed commit, so it measures durable acks). It
runs in its own process(es) on the same machine, so client and server share the CPUs: compare
rows with each other, not with numbers from another machine. `--write` replaces the
"Ingest" section of docs/benchmarks.md (between its markers) with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
START, END = "<!-- bench_ingest:start -->", "<!-- bench_ingest:end -->"

BARE_APP = """
import sys, uvloop
from aiohttp import web

async def beacon(request):
    await request.read()
    return web.Response(status=204)

app = web.Application()
app.router.add_post("/beacon", beacon)
app.router.add_get("/readyz", lambda r: web.Response(text="ok"))
uvloop.run(web._run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
                        print=None))
"""


def beacon_body(events: int, n: int) -> bytes:
    event = {"type": "xhr", "name": "GET /api/cart", "url": "https://shop.example.com/api/cart",
             "method": "GET", "status": 200, "start": 1764126000000, "dur": 120}  # fmt: skip
    body = {
        "v": 1, "app": "shop", "sid": f"bench-session-{n:06d}", "vid": "visitor-7c1",
        "seq": 1, "sent": 1764126000500, "user": f"user{n}@example.com",
        "page": {"url": "https://shop.example.com/cart"}, "device": {"screen": "1920x1080"},
        "events": [event] * events,
    }  # fmt: skip
    return orjson.dumps(body)


def request_bytes(body: bytes) -> bytes:
    head = (
        "POST /beacon HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/131.0.0.0 Safari/537.36\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# --- load generator ----------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """Sends `requests[i % n]` again each time the previous response is complete."""

    def __init__(self, requests: list[bytes], counts: list[int], stop_at: float) -> None:
        self.requests = requests
        self.counts = counts  # [ok, errors]
        self.stop_at = stop_at
        self.buffer = b""
        self.i = 0
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        self.transport.write(self.requests[self.i % len(self.requests)])  # type: ignore[attr-defined]
        self.i += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
            length = int(match.group(1)) if match else 0
            if len(self.buffer) < end + 4 + length:
                return
            status = head[9:12]
            self.buffer = self.buffer[end + 4 + length :]
            self.counts[0 if status == b"204" else 1] += 1
            if time.monotonic() >= self.stop_at:
                self.transport.close()  # type: ignore[attr-defined]
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _load(port: int, requests: list[bytes], connections: int, seconds: float) -> list[int]:
    loop = asyncio.get_running_loop()
    counts = [0, 0]
    stop_at = time.monotonic() + seconds
    conns = []
    for _ in range(connections):
        _, proto = await loop.create_connection(
            lambda: _Conn(requests, counts, stop_at), "127.0.0.1", port
        )
        conns.append(proto)
    await asyncio.gather(*(c.done for c in conns))
    return counts


def _load_process(port: int, requests: list[bytes], connections: int, seconds: float,
                  out: multiprocessing.Queue) -> None:  # fmt: skip
    import uvloop

    out.put(uvloop.run(_load(port, requests, connections, seconds)))


def run_load(port: int, requests: list[bytes], connections: int, seconds: float,
             processes: int) -> tuple[float, float]:  # fmt: skip
    """(successful requests per second, errors per second) over `seconds`."""
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    per = [connections // processes + (i < connections % processes) for i in range(processes)]
    procs = [ctx.Process(target=_load_process, args=(port, requests, n, seconds, out))
             for n in per]  # fmt: skip
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    ok = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    return ok / seconds, errors / seconds


# --- servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server not ready")


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    data_dir: Path | None = None

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def start_bare() -> Server:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port)],
                               start_new_session=True)  # fmt: skip
    wait_ready(port, process)
    return Server("bare aiohttp + uvloop, 204", process, port)


def start_rumline(workers: int) -> Server:
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="rumline-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUMLINE_")}
    env["RUMLINE_LOG_LEVEL"] = "warning"
    process = subprocess.Popen(
        [sys.executable, "-m", "collector", "serve", "--port", str(port),
         "--data-dir", str(data_dir), "--workers", str(workers)],
        cwd=REPO, env=env, start_new_session=True,
    )  # fmt: skip
    wait_ready(port, process)
    return Server(f"rumline --workers {workers}", process, port, data_dir)


# --- the runs -----------------------------------------------------------------------------


@dataclass
class Row:
    server: str
    load: str
    requests_s: float
    events_s: float
    errors_s: float


def measure(server: Server, load: str, events: int, args: argparse.Namespace) -> Row:
    requests = [request_bytes(beacon_body(events, n)) for n in range(1000)]
    run_load(server.port, requests, args.connections, min(2.0, args.duration), args.clients)
    rate, errors = run_load(server.port, requests, args.connections, args.duration, args.clients)
    row = Row(server.name, load, rate, rate * events, errors)
    print(f"{row.server:<30} {row.load:<26} {rate:>10,.0f} req/s {rate * events:>12,.0f} "
          f"events/s  errors {errors:,.0f}/s", flush=True)  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--clients", type=int, default=1, help="load generator processes")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    rows: list[Row] = []
    bare = start_bare()
    try:
        rows.append(measure(bare, "single beacon (1 event)", 1, args))
        rows.append(measure(bare, "batched POST (50 events)", 50, args))
    finally:
        bare.stop()
    for workers in (1, 2):
        server = start_rumline(workers)
        try:
            rows.append(measure(server, "single beacon (1 event)", 1, args))
            rows.append(measure(server, "batched POST (50 events)", 50, args))
        finally:
            server.stop()
    if args.write:
        write_section(rows, args)


def write_section(rows: list[Row], args: argparse.Namespace) -> None:
    bare_single = rows[0].requests_s
    lines = [
        START,
        "## Ingest: HTTP to durable acknowledgement",
        "",
        f"`loadtests/bench_ingest.py --duration {args.duration:g} --connections "
        f"{args.connections} --clients {args.clients}` on {os.cpu_count()} CPUs "
        f"({platform.machine()}, Python {platform.python_version()}), client and server on "
        "the same machine. Every rumline 204 is sent after the beacon's group commit was "
        "fsync'ed; `bare` is an aiohttp + uvloop handler that reads the body and answers 204.",
        "",
        "| server | load | requests/s | events/s | vs bare (single) |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        ratio = f"{row.requests_s / bare_single:.2f}×" if "single" in row.load else ""
        lines.append(f"| {row.server} | {row.load} | {row.requests_s:,.0f} | "
                     f"{row.events_s:,.0f} | {ratio} |")  # fmt: skip
    lines += ["", END]
    section = "\n".join(lines)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
