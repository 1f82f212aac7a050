"""Benchmark of the whole ingest path (HTTP → batcher → core → fsync'ed WAL → 204).

    .venv/bin/python loadtests/bench_ingest.py [--duration 10] [--connections 64] [--write]

Runs, on this machine and in the same run:

1. `bare`: an aiohttp + uvloop app whose POST handler reads the body and answers 204 — the
   ceiling of any Python aiohttp service on this machine;
2. `rumline --workers 1` and `--workers 2` with single native beacons (one event each);
3. the same with batched POSTs of 50 events (a browser agent flushing a queue).

The load generator is `loadtests/loadgen` (Rust, built here with `cargo build --release -p
loadgen` when needed): N keep-alive connections, one request in flight on each (the 204 only
comes after the fsync'ed commit, so it measures durable acks), one blocking thread per
connection. `--client python` is the raw HTTP/1.1 client on uvloop it replaced (measured:
about as much CPU per request; most of either is the kernel's loopback TCP). Either runs on
the same machine, so client and server share the CPUs: compare rows with each other, not with
numbers from another machine; each row gives the client's own CPU time too. `--write` replaces the
"Ingest" section of docs/benchmarks.md (between its markers) with the results, and with the
notes of the last profile of this path (`PROFILE_NOTES`). `--compare REV` adds
`rumline --workers 1` as of git revision REV (its Python code, today's Rust core), measured in
the same rounds: a before/after of the ingest path in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import re
import resource
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


USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/131.0.0.0 Safari/537.36")  # fmt: skip


def request_bytes(body: bytes) -> bytes:
    head = (
        "POST /beacon HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
        f"User-Agent: {USER_AGENT}\r\nContent-Length: {len(body)}\r\n\r\n"
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


def loadgen_binary() -> Path:
    """`loadtests/loadgen`, built (release) if missing or out of date: cargo only relinks
    when a source changed, so this costs a fraction of a second after the first build."""
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "loadgen"], cwd=REPO,
                   check=True)  # fmt: skip
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return (target if target.is_absolute() else REPO / target) / "release" / "loadgen"


@dataclass
class Load:
    """What one run of the load generator sends: `bodies` in turn on each connection."""

    bodies: list[bytes]
    connections: int
    client: str  # "rust" (loadtests/loadgen) or "python" (the uvloop client above)
    processes: int = 1  # python client processes
    binary: Path | None = None
    bodies_file: Path | None = None

    def __post_init__(self) -> None:
        if self.client == "rust":
            self.binary = loadgen_binary()
            fd, name = tempfile.mkstemp(prefix="rumline-bench-bodies-")
            with os.fdopen(fd, "wb") as f:
                f.write(b"\n".join(self.bodies) + b"\n")  # orjson output has no newline
            self.bodies_file = Path(name)
        self.requests = [request_bytes(body) for body in self.bodies]

    def close(self) -> None:
        if self.bodies_file:
            self.bodies_file.unlink(missing_ok=True)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_load(port: int, load: Load, seconds: float) -> tuple[float, float, float]:
    """(successful requests per second, errors per second, the client's CPU seconds) over
    `seconds`. The client's CPU is that of the waited-for child processes that ran it (the
    servers are children too, but they are only waited for once stopped, after every run)."""
    cpu_before = children_cpu_seconds()
    if load.client == "rust":
        ok, errors = _run_loadgen(port, load, seconds)
    else:
        ok, errors = _run_python_load(port, load.requests, load.connections, seconds,
                                      load.processes)  # fmt: skip
    return ok / seconds, errors / seconds, children_cpu_seconds() - cpu_before


def _run_loadgen(port: int, load: Load, seconds: float) -> tuple[int, int]:
    assert load.binary and load.bodies_file
    result = subprocess.run(
        [str(load.binary), "--port", str(port), "--body", str(load.bodies_file), "--body-lines",
         "--connections", str(load.connections), "--duration", str(seconds),
         "--header", f"User-Agent: {USER_AGENT}"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    report = json.loads(result.stdout)
    ok = report["statuses"].get("204", 0)
    return ok, report["requests"] - ok + report["errors"]


def _run_python_load(port: int, requests: list[bytes], connections: int, seconds: float,
                     processes: int) -> tuple[int, int]:  # fmt: skip
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
    return sum(r[0] for r in results), sum(r[1] for r in results)


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
    code_dir: Path | None = None  # an exported revision (--compare)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        for directory in (self.data_dir, self.code_dir):
            if directory:
                shutil.rmtree(directory, ignore_errors=True)


def start_bare() -> Server:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port)],
                               start_new_session=True)  # fmt: skip
    wait_ready(port, process)
    return Server("bare aiohttp + uvloop, 204", process, port)


def start_rumline(workers: int, sync: bool = True, code: Path = REPO, label: str = "") -> Server:
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="rumline-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUMLINE_")}
    env["RUMLINE_LOG_LEVEL"] = "error"
    env["RUMLINE_STORAGE_SYNC"] = "true" if sync else "false"
    process = subprocess.Popen(
        [sys.executable, "-m", "collector", "serve", "--port", str(port),
         "--data-dir", str(data_dir), "--workers", str(workers)],
        cwd=code, env=env, start_new_session=True,
    )  # fmt: skip
    wait_ready(port, process)
    name = f"rumline --workers {workers}" + ("" if sync else ", no fsync") + label
    return Server(name, process, port, data_dir)


def export_revision(rev: str) -> tuple[Path, str]:
    """The Python code of git revision `rev` in a temporary directory, with today's built
    Rust core linked in (`python -m collector` run there imports that copy); and its short
    hash."""
    short = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    directory = Path(tempfile.mkdtemp(prefix=f"rumline-{short}-"))
    archive = subprocess.run(["git", "archive", rev, "collector"], cwd=REPO, check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    for core in (REPO / "collector").glob("_core*.so"):
        (directory / "collector" / core.name).symlink_to(core)
    return directory, short


# --- the runs -----------------------------------------------------------------------------


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every live process in a process group (the server and, with
    --workers N, its children)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def fsync_latency_ms(directory: Path, n: int = 50) -> float:
    """Median time of a 4 KiB write + fdatasync in `directory` (what one commit waits for)."""
    path = directory / "fsync-probe"
    times = []
    with path.open("wb") as f:
        for _ in range(n):
            started = time.perf_counter()
            f.write(b"x" * 4096)
            f.flush()
            os.fdatasync(f.fileno())
            times.append(time.perf_counter() - started)
    path.unlink()
    return sorted(times)[n // 2] * 1000


@dataclass
class Row:
    server: str
    load: str
    requests_s: float
    events_s: float
    errors_s: float
    cpu_us: float  # server CPU per request, all processes and threads
    client_cpu_us: float  # the load generator's CPU per request
    client_cpus: float  # the load generator's CPU seconds per second of the run


def settle(server: Server, timeout_s: float = 30.0) -> None:
    """Wait until the server is idle (a sessionizer catching up on a backlog would steal the
    CPU from the next run, whichever server it is for)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = group_cpu_seconds(server.process.pid)
        time.sleep(0.3)
        if group_cpu_seconds(server.process.pid) - before < 0.03:
            return


def run_once(server: Server, load: Load, args: argparse.Namespace) -> tuple[float, ...]:
    settle(server)
    cpu_before = group_cpu_seconds(server.process.pid)
    rate, errors, client_cpu = run_load(server.port, load, args.duration)
    cpu = group_cpu_seconds(server.process.pid) - cpu_before
    requests = max(1.0, rate * args.duration)
    client_us = client_cpu / requests * 1e6
    return rate, errors, cpu / requests * 1e6, client_us, client_cpu / args.duration


def measure_all(servers: list[Server], load: str, events: int,
                args: argparse.Namespace) -> list[Row]:  # fmt: skip
    """Rounds of one run per server, interleaved, so that every server meets the same noise
    of a shared machine; per server the best of `--repeat` runs (the least disturbed)."""
    bodies = [beacon_body(events, n) for n in range(1000)]
    client = Load(bodies, args.connections, args.client, args.clients)
    try:
        for server in servers:  # warm-up
            run_load(server.port, client, min(2.0, args.duration))
        runs: dict[str, list[tuple[float, ...]]] = {server.name: [] for server in servers}
        for _ in range(args.repeat):
            for server in servers:
                runs[server.name].append(run_once(server, client, args))
    finally:
        client.close()
    rows = []
    sys.stdout.flush()
    for server in servers:
        rate, errors, cpu_us, client_us, client_cpus = max(runs[server.name])
        rows.append(Row(server.name, load, rate, rate * events, errors, cpu_us, client_us,
                        client_cpus))  # fmt: skip
        print(f"{server.name:<34} {load:<26} {rate:>9,.0f} req/s {rate * events:>10,.0f} "
              f"events/s  {cpu_us:>6.0f} µs CPU/req  errors {errors:,.0f}/s  client "
              f"{client_us:.0f} µs/req, {client_cpus:.2f} CPU")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--client", choices=("rust", "python"), default="rust",
                        help="load generator: loadtests/loadgen or the uvloop client")  # fmt: skip
    parser.add_argument("--clients", type=int, default=1,
                        help="load generator processes (--client python)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the best counts")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--compare", metavar="REV",
                        help="also run `rumline --workers 1` as of git revision REV")  # fmt: skip
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    probe_dir = Path(tempfile.mkdtemp(prefix="rumline-bench-"))
    fsync_ms = fsync_latency_ms(probe_dir)
    shutil.rmtree(probe_dir, ignore_errors=True)
    print(f"fsync latency (4 KiB write + fdatasync, median): {fsync_ms:.2f} ms", flush=True)
    servers = [start_bare()]
    try:
        for workers, sync in ((1, True), (2, True), (1, False)):
            servers.append(start_rumline(workers, sync))
        if args.compare:
            code, short = export_revision(args.compare)
            servers.insert(2, start_rumline(1, True, code, f" at {short}"))
            servers[2].code_dir = code
        rows = measure_all(servers, "single beacon (1 event)", 1, args)
        rows += measure_all(servers, "batched POST (50 events)", 50, args)
    finally:
        for server in servers:
            server.stop()
    rows.sort(key=lambda row: ("batched" in row.load, servers.index(
        next(s for s in servers if s.name == row.server))))  # fmt: skip
    if args.write:
        write_section(rows, args, fsync_ms, (load_before, os.getloadavg()[0]))


PROFILE_TABLE = [
    ("cost found (event loop, per single beacon)", "about", "fix", "measured"),
    ("prometheus-client `.labels(…)` twice a request (`beacons_received{receiver}`, "
     "`request_duration_seconds{route}`): `str()` of every value, a lock, a dict",
     "2–3 µs", "the labelled children kept per label value (`Metrics`)",
     "together: 94 → 78 µs CPU/request, 0.44× → 0.53× bare (same run)"),
    ("`asyncio.get_running_loop()` in `Batcher.submit`: CPython 3.11 makes a `getpid()` "
     "system call in it (~1.5 µs in this VM; 3.8 `getpid` per request in all), plus the "
     "coroutine of `submit`",
     "2–3 µs", "`submit` returns the future made by the loop kept at `start`",
     "(in the line above)"),
    ("five `request.app[…]` lookups, the CORS headers built with no `Origin`, the "
     "`Content-Type` parsed for `text/plain`",
     "1–2 µs", "one lookup per handler; skipped when not needed", "(in the line above)"),
    ("the group-commit hand-off: an asyncio task awaited `run_in_executor` per batch, and the "
     "busy loop resumed it ~1 ms after the commit had ended (a commit cycle took 1.5–2.5 ms)",
     "latency", "one commit thread goes from one commit straight to the next; verdicts "
     "return with one `call_soon_threadsafe` per batch",
     "3,852 → 4,620 requests/s, 91 → 87 µs (a loaded hour)"),
    ("`asyncio.timeout()` around the body read (`read_body`): 3 `getpid()` calls, a "
     "`Timeout` and a timer per request",
     "5–9 µs", "skipped when the body is already complete (`request.content.is_eof()`)",
     "76 → 67 µs"),
    ("eight `request.app[…]` lookups; `app.get()` / `in app` on an aiohttp `Application` "
     "raise and catch a `KeyError` when the key is absent (three a beacon with the rate "
     "limits off); a coroutine for the buffered body and one for `accept`",
     "5–10 µs", "one `app[INGEST]` object a request; `buffered_body()` returns a body that "
     "has arrived without an `await`; the native POST awaits the batcher's future itself; "
     "one `HistogramObserver` per route (the same samples as `Histogram.observe`)",
     "156 → 139 µs (a loaded hour)"),
    ("`Store.space_left` at every commit: 12 LMDB/statvfs calls, each handing the GIL to "
     "the event loop and back",
     "commit thread 18 → 11–17 µs", "measured every 0.25 s, or at every commit once within "
     "twice the reserve", "0.24–0.39 → 0.19–0.20 context switches a request"),
    ("the sessionizer thread stepping every 20 ms under load (each step takes the GIL back a "
     "dozen times, plus a `run_in_executor` and a timer)",
     "sessionizer 8.5–9.9 → 5.1–6.8 µs", "a busy step waits 100 ms for the next (sessions "
     "show up ≤ 100 ms after their 204; live summaries still every 800 ms)",
     "133 → 122 µs median, 8 of 8 rounds"),
    ("with `--workers 2`, each front's group commit held LMDB's one writer lock for two "
     "fdatasyncs (data, then meta page), so the fronts' commits (and the sessionizer's) "
     "queued behind each other",
     "latency", "the meta page is synced after the commit, outside the lock (`metasync=False` "
     "+ `env.sync()` before any acknowledgement; the data pages are still synced first, so a "
     "crash leaves a consistent store)",
     "2 workers, single beacons: 3,320 → 5,571 requests/s (same run, loaded hour)"),
]  # fmt: skip


def _markdown_table(rows: list[tuple[str, str, str, str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


# The last profile of this path, kept here because `--write` regenerates the whole section.
PROFILE_NOTES = """\
### Profile and fix: ingest path

Profiled on 2026-11-26 (`7fa6663` → `4b7a665`, then `71c8279` → `29d7717`): py-spy 0.4.3
(`record --native --threads --format raw`) on `rumline serve` under this script's client,
CPU per thread from `/proc/PID/task`, `strace -c` for the system calls per request. Before
the fixes a single beacon cost ~92 µs of CPU at a quiet moment: the event loop ~75 µs, the
commit thread ~11 µs, the sessionizer thread ~5 µs (bare: 37–44 µs, one thread); a 50-event
POST ~210 µs: the event loop 80–100 µs, the commit thread and the sessionizer thread 40–80
µs each. Figures below: CPU per request of `rumline --workers 1`, best of 4–5 runs
interleaved with the version before the change in the same minutes (this machine's load
moved them by ±25% between runs).

{table}

Measured and dropped (no gain beyond the noise): `gc.freeze()` after start-up (40k objects;
the collector never showed in the profiles), a GIL switch interval of 1 or 0.5 ms (more CPU,
no more requests/s), skipping the per-commit `space_left` statistics of LMDB (same CPU), and
a two-stage pipeline validating the next batch (`_core.prepare`, a quarter of a 50-event
commit cycle) while the previous one syncs (same requests/s, single and 50-event).

What remains, single beacon (per-thread CPU from `/proc`, after the fixes): the event loop's
system time is the bare handler's (14–17 µs); its user time is 45–50 µs against bare's 31:
the handler (~9 µs in many pieces under 1 µs), the second task step after the commit, the
request timer and the per-commit callback. The commit thread takes ~10 µs a request (half
of it the kernel's pwrite and fdatasync), the sessionizer thread ~5 µs. Requests/s is
bounded by the commit cycle more than by CPU: with 64 connections a commit carries ~37
requests, and a response waits for the commit in flight and then its own; on a slow disk
hour (fsync 4 ms instead of 0.2 ms) that, not CPU, set the rate. For 50-event POSTs the
commit thread (`prepare`) and the sessionizer thread (`ingest`, closing sessions of 200
actions, publishing the live ones) take most of the CPU."""


def profile_notes(rows: list[Row], bare: dict[str, float]) -> list[str]:
    """`PROFILE_NOTES`, and with `--compare` the before/after of this run."""
    lines = PROFILE_NOTES.format(table=_markdown_table(PROFILE_TABLE)).splitlines()
    before = [row for row in rows if " at " in row.server]
    if before:
        lines += ["", "In this run (`--compare`):"]
        for old in before:
            new = next(row for row in rows if row.load == old.load
                       and row.server == "rumline --workers 1")  # fmt: skip
            lines.append(
                f"- {old.load}: {old.server.split(' at ')[1]} {old.cpu_us:,.0f} µs CPU/request, "
                f"{old.requests_s / bare[old.load]:.2f}× bare → now {new.cpu_us:,.0f} µs, "
                f"{new.requests_s / bare[new.load]:.2f}× bare."
            )
    return lines


# The Python client's cost, measured before loadtests/loadgen replaced it (same machine).
PYTHON_CLIENT_NOTE = ("Until 2026-11-26 this script's client was a raw HTTP/1.1 client in "
                      "Python on uvloop: {python}")  # fmt: skip
PYTHON_CLIENT_MEASURED = (
    "15–25 µs of CPU per request, at most 0.33 of a CPU (`--client python --duration 10 "
    "--repeat 1`, the same hour), not the whole CPU it was thought to take. Against the bare "
    "server for 5 s, Python took 0.70 s user + 0.96 s system for 92k requests (18 µs each) "
    "and `loadgen` 0.31 s + 1.35 s for 106k (16 µs each): Rust removed most of the user time, "
    "and the rest is the kernel's loopback TCP, which any client on this machine pays (a "
    "send on loopback also runs the receiving side's TCP processing), plus here a thread "
    "wake-up per response. So the client was not what kept the ratios below their targets."
)


def client_notes(rows: list[Row], args: argparse.Namespace) -> list[str]:
    """What the load generator is and what it cost in this run."""
    busiest = max(rows, key=lambda row: row.client_cpus)
    per_request = sorted(row.client_cpu_us for row in rows)
    if args.client == "python":
        return [f"The load generator is the Python client (`--client python`, {args.clients} "
                f"process(es)): {per_request[0]:,.0f}–{per_request[-1]:,.0f} µs of CPU per "
                f"request, up to {busiest.client_cpus:.2f} of a CPU ({busiest.server}, "
                f"{busiest.load})."]  # fmt: skip
    return [
        "The load generator is `loadtests/loadgen` (Rust, std only: one blocking thread per "
        "keep-alive connection, built by this script with `cargo build --release -p loadgen`):"
        f" {per_request[0]:,.0f}–{per_request[-1]:,.0f} µs of CPU per request in this run, "
        f"mostly kernel time of the loopback TCP send and receive, and at most "
        f"{busiest.client_cpus:.2f} of a CPU ({busiest.server}, {busiest.load}). "
        + PYTHON_CLIENT_NOTE.format(python=PYTHON_CLIENT_MEASURED)
    ]


def server_cpus(row: Row) -> float:
    """CPUs the server kept busy during the run (all its processes and threads)."""
    return row.requests_s * row.cpu_us / 1e6


def scaling_notes(rows: list[Row]) -> list[str]:
    """`--workers 2` against one, with the CPUs each used: on a machine of few cores shared
    with the load generator, what a second front can add is bounded by the cores left."""
    notes = []
    for load in dict.fromkeys(row.load for row in rows):
        by_name = {row.server: row for row in rows if row.load == load}
        one, two = by_name.get("rumline --workers 1"), by_name.get("rumline --workers 2")
        if not (one and two):
            continue
        left = os.cpu_count() - one.client_cpus
        notes.append(
            f"- {load}: 2 workers {two.requests_s / one.requests_s:.2f}× one. One worker kept "
            f"{server_cpus(one):.2f} CPUs busy and its client {one.client_cpus:.2f}; two workers "
            f"{server_cpus(two):.2f} + {two.client_cpus:.2f}, at {two.cpu_us:,.0f} µs of CPU a "
            f"request instead of {one.cpu_us:,.0f}. At one worker's CPU per request, the "
            f"{left:.2f} CPUs its client left would carry at most "
            f"{left / server_cpus(one):.2f}× its rate."
        )
    return ["`--workers 2` against `--workers 1` (the same client, the same 2 cores):", "", *notes]


def write_section(
    rows: list[Row], args: argparse.Namespace, fsync_ms: float, load: tuple[float, float]
) -> None:
    bare = {row.load: row.requests_s for row in rows if row.server.startswith("bare")}
    lines = [
        START,
        "## Ingest: HTTP to durable acknowledgement",
        "",
        f"`loadtests/bench_ingest.py --duration {args.duration:g} --connections "
        f"{args.connections} --client {args.client}"
        f"{f' --clients {args.clients}' if args.client == 'python' else ''} --repeat {args.repeat}"
        f"{f' --compare {args.compare}' if args.compare else ''}` (best run of "
        f"{args.repeat} per row, runs of the servers interleaved) on {os.cpu_count()} CPUs "
        f"({platform.machine()}, Python {platform.python_version()}), client and server on "
        f"the same machine (load average {load[0]:.1f} before, {load[1]:.1f} after: other "
        "work was running too). Every rumline 204 is sent after the beacon's group commit was "
        "fsync'ed; `bare` is an aiohttp + uvloop handler that reads the body and answers 204. "
        f"A 4 KiB write + fdatasync takes {fsync_ms:.1f} ms (median) on this disk; an LMDB "
        "commit syncs twice (data, then meta page). `no fsync` (`storage.sync = false`, not "
        "durable on power loss) shows the CPU path alone. `CPU/request` is the CPU time of all "
        "the server's processes and threads per request; `events/CPU-s` = events per second "
        "of one core; `client CPU` is the load generator's own CPU time per request and, in "
        "parentheses, the share of one CPU it took during the run.",
        "",
        *client_notes(rows, args),
        "",
        "| server | load | requests/s | events/s | vs bare | CPU/request | events/CPU-s "
        "| server CPUs | client CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        per_core = row.events_s / row.requests_s * 1e6 / row.cpu_us if row.cpu_us else 0
        lines.append(f"| {row.server} | {row.load} | {row.requests_s:,.0f} | "
                     f"{row.events_s:,.0f} | {row.requests_s / bare[row.load]:.2f}× | "
                     f"{row.cpu_us:,.0f} µs | {per_core:,.0f} | {server_cpus(row):.2f} | "
                     f"{row.client_cpu_us:,.0f} µs ({row.client_cpus:.2f}) |")  # fmt: skip
    lines += [
        "",
        *scaling_notes(rows),
        "",
        "What bounds rumline here: one process keeps about one CPU busy, as the bare "
        "handler does: its event loop, commit thread and sessionizer thread share one GIL, so "
        "`--workers 1` runs at ~1 / (CPU per request). Per single beacon aiohttp's own path "
        "costs what the bare handler costs (~40 µs); on top of it rumline's event loop spends "
        "~15 µs (the handler, the second task step after the commit, the hand-offs with the "
        "commit thread) and the commit and sessionizer threads ~15 µs (half of it the kernel "
        "time of LMDB's pwrite and fdatasync). For 50-event POSTs the commit thread "
        "(`_core.prepare` parses and validates every event) and the sessionizer thread "
        "(`ingest`; closing sessions of 200 actions; publishing the live ones) take most of "
        "the CPU. With 64 closed-loop connections that each wait for an fsync'ed commit, "
        "requests/s is also bounded by 64 / (commit latency + one round trip). `--workers 2` "
        "adds a second GIL but, on these 2 cores shared with the load generator, more CPU per "
        "request (two event loops each less busy, commits half the size, a third process). "
        "`CPU/request` is the steadiest figure across runs on a shared machine; requests/s "
        "varied by ±40% between runs of this script.",
        "",
        *profile_notes(rows, bare),
        "",
        END,
    ]
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
