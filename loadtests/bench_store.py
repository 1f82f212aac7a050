"""Benchmark: memory of open sessions, growth curves of the core, query latency over a big store.

    .venv/bin/python loadtests/bench_store.py [--quick] [--no-write] [--max-stored N]
                                              [--store-dir DIR] [--skip-core] [--only memory|growth]

Real parts only: sessions are made by the real core (`collector._core.prepare` +
`Sessionizer.ingest/flush`) from realistic native beacons, and stored through the real `Store`
(`put_closed`, one write transaction per chunk of 20 000 sessions, fsync'ed) in an LMDB in a
temp directory; queries go over HTTP to a real collector (`python -m collector serve` on
127.0.0.1 and a free port) started over that store. Nothing keeps running after it returns.

1. Memory: RSS growth of a fresh process per 100 000 open sessions of 1 and of 10 actions;
   the two fix a per-session and a per-action cost (target ≤ 2 KiB + ≤ 150 B per action).
2. Core growth at 10k / 100k / 1M open sessions: CPU time of ingesting the same 20 000
   beacons, of a `flush` with nothing due, of `checkpoint` (and its size), of `restore`; the
   WAL bytes that brought the sessions there and the fsync'ed checkpoint write.
3. Query latency at 100k / 1M (/ 3M with `--max-stored 3000000`) stored sessions, with
   3 000 open (live) sessions: user-tag lookup, a 24-hour segmentation (has_error + ux +
   browser), the detail of one session; p50 / p95 / p99 over HTTP (targets at 1M:
   ≤ 10 ms, ≤ 200 ms, ≤ 5 ms p99).
4. Query CPU as the open sessions grow (3k / 30k / 100k open, over the largest store): the
   user-tag lookup and the newest 50 sessions; with `--compare-query REV` also the query
   path of git revision REV on the same store.

`--quick` runs smaller sizes (a few minutes). `--store-dir DIR` keeps the store there and reuses
what an earlier run built (to profile queries without rebuilding); with `--resume` also what
that run measured, so an interrupted run carries on where it stopped. Unless `--no-write`, the
"Memory, growth curves and query latency" section of docs/benchmarks.md (between its markers)
is replaced; with `--only memory` only part 1 runs (a few minutes) and only its sub-section
("Memory of open sessions") of that section is replaced; `--only growth` likewise for part 2
("The core as open sessions grow", ~10 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import http.client
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import lmdb  # noqa: E402
from benchdoc import replace_section  # noqa: E402  (a sibling script module)

from collector import _core  # noqa: E402
from collector.store import Store  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
START, END = "<!-- bench_store:start -->", "<!-- bench_store:end -->"
HOST = "127.0.0.1"
DAY_MS = 86_400_000
TIMEOUT_MS = 30 * 60_000  # the default inactivity timeout
# Stored sessions arrive at this rate, so 1M stored sessions span 10 days and a 24-hour window
# always holds about 100 000 of them, whatever the size of the store.
SESSIONS_PER_DAY = 100_000
# Open sessions while the queries run: a site with 100 000 sessions a day, sessions of ~10
# minutes plus the 30-minute timeout, has about 100 000 / 86 400 s × 2 400 s ≈ 2 800 open.
LIVE_SESSIONS = 3_000
# Open sessions of part 4: from that typical site to a busy one.
LIVE_GROWTH = (3_000, 30_000, 100_000)
# Distinct users: with 1M stored sessions a user tag has ~5 of them (80 % are identified).
USERS = 160_000
CHUNK = 20_000  # sessions per prepare/ingest call and per write transaction
BEACON_ACTIONS = 5  # actions per beacon of the open sessions (memory, growth)

# The core caps open sessions (max_open_sessions, default 500k); the growth curve goes past it.
GROWTH_SETTINGS = {"max_open_sessions": 4_000_000}
TARGET_SESSION_B = 2048
TARGET_ACTION_B = 150
TARGET_P99_MS = {"user": 10.0, "segment": 200.0, "detail": 5.0}

USER_AGENTS = (
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/120.0.0.0 Safari/537.36", 5),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", 1),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
     "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1", 3),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.1 Safari/605.1.15", 1),
)  # fmt: skip
PAGES = ("/", "/search?q=shoes", "/product/42", "/product/7", "/cart", "/cart/checkout",
         "/account", "/orders", "/help")  # fmt: skip
APIS = (("GET", "/api/cart"), ("GET", "/api/recommendations"), ("POST", "/api/cart/items"),
        ("GET", "/api/search"), ("POST", "/checkout"), ("GET", "/api/orders"))  # fmt: skip
CLICKS = ("click on 'Add to cart'", "click on 'Search'", "click on 'Place order'",
          "click on 'Next page'", "click on 'Apply coupon'")  # fmt: skip
DURATIONS = (80, 150, 400, 900, 1800, 2900, 4200, 9000, 14000)
SENT = 1_700_000_000_000  # client clock of every beacon: event starts are relative to it
SID, USER = b"@@SID@@", b"@@USER@@"


# --- realistic beacons, fast -------------------------------------------------------------


def action_events(rng: random.Random, n: int, t0: int, error_rate: float) -> list[dict]:
    """`n` actions (a load first, then XHRs and clicks) from client time t0, with an error,
    a vital or a rage click now and then."""
    events: list[dict[str, Any]] = []
    t = t0
    for i in range(n):
        dur = rng.choice(DURATIONS)
        if i % 4 == 0:
            path = rng.choice(PAGES)
            events.append({
                "type": "load", "name": f"loading of page {path}",
                "url": f"https://shop.example.com{path}", "start": t, "dur": dur,
                "timing": {"ttfb": dur // 8, "fcp": dur // 3, "lcp": dur * 9 // 10,
                           "dom_interactive": dur // 2, "load_end": dur},
                "resources": [
                    {"url": "https://shop.example.com/static/app.js", "initiator": "script",
                     "start": 40, "dur": dur // 4, "status": 200, "size": 48213},
                    {"url": "https://shop.example.com/api/cart", "initiator": "fetch",
                     "start": 120, "dur": 300, "status": 200, "size": 1834}],
            })  # fmt: skip
            events.append({"type": "vital", "name": "LCP", "value": dur * 9 // 10,
                           "start": t + dur})  # fmt: skip
        elif rng.random() < 0.6:
            method, path = rng.choice(APIS)
            status = 500 if rng.random() < error_rate / 2 else 200
            events.append({
                "type": "xhr", "name": f"{method} {path}",
                "url": f"https://shop.example.com{path}", "method": method, "status": status,
                "start": t, "dur": dur // 4,
                "traceparent": f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01",
            })  # fmt: skip
            if status >= 400:
                events.append({"type": "error", "kind": "request",
                               "message": f"{method} {path} {status}", "start": t + dur // 4})
        else:
            events.append({"type": "custom", "name": rng.choice(CLICKS), "start": t,
                           "dur": dur // 10})  # fmt: skip
            if rng.random() < error_rate / 2:
                events.append({"type": "error", "kind": "js",
                               "message": "TypeError: Cannot read properties of undefined",
                               "stack": "at pay (app.js:10:5)\n at onClick (app.js:88:3)",
                               "start": t + 5})  # fmt: skip
            if rng.random() < 0.02:
                events.append({"type": "rage_click", "target": "button#pay", "count": 4,
                               "start": t + 20})  # fmt: skip
        t += dur + rng.randrange(2_000, 30_000)
    return events


def beacon_template(rng: random.Random, events: list[dict], *, identified: bool,
                    end: bool, t_end: int, app: str | None = None) -> bytes:  # fmt: skip
    """One beacon's JSON with the session id and user tag left as placeholders."""
    if end:
        events = [*events, {"type": "end", "reason": "logout", "start": t_end}]
    body: dict[str, Any] = {
        "v": 1, "app": app or rng.choice(("shop", "shop", "shop", "blog")), "sid": SID.decode(),
        "vid": "visitor-" + USER.decode(), "seq": 1, "sent": SENT,
        "page": {"url": "https://shop.example.com" + rng.choice(PAGES)},
        "device": {"screen": rng.choice(("1920x1080", "390x844", "1440x900"))},
        "events": events,
    }  # fmt: skip
    if identified:
        body["user"] = "user" + USER.decode() + "@example.com"
    if rng.random() < 0.3:
        body["events"] = [*events, {"type": "property", "key": "plan",
                                    "value": rng.choice(("gold", "free"))}]  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class Template:
    body: bytes
    user_agent: str
    actions: int


def stored_templates(rng: random.Random, n: int = 2000) -> list[Template]:
    """Whole visits in one beacon: 3–12 actions; 80 % end with `end` (the rest time out),
    80 % identified. The events span up to minutes before the beacon's `sent`."""
    agents = [ua for ua, weight in USER_AGENTS for _ in range(weight)]
    out = []
    for _ in range(n):
        actions = rng.randint(3, 12)
        error_rate = rng.choice((0.0, 0.0, 0.0, 0.1, 0.3))
        events = action_events(rng, actions, 0, error_rate)
        span = max(e["start"] for e in events) + 20_000
        for e in events:  # relative to `sent`: the core puts them before the receive time
            e["start"] += SENT - span
        body = beacon_template(rng, events, identified=rng.random() < 0.8,
                               end=rng.random() < 0.8, t_end=SENT)  # fmt: skip
        out.append(Template(body, rng.choice(agents), actions))
    return out


def open_templates(rng: random.Random, actions: int, n: int = 500) -> list[Template]:
    """Beacons of `actions` actions (≤ BEACON_ACTIONS), no end: sessions stay open."""
    agents = [ua for ua, weight in USER_AGENTS for _ in range(weight)]
    out = []
    for _ in range(n):
        events = action_events(rng, actions, 0, 0.1)
        span = max(e["start"] for e in events) + 1_000
        for e in events:
            e["start"] += SENT - span
        # One app: the beacons of a session (several templates) must share its key.
        body = beacon_template(rng, events, identified=rng.random() < 0.8, end=False, t_end=0,
                               app="shop")  # fmt: skip
        out.append(Template(body, rng.choice(agents), actions))
    return out


def request(template: Template, recv_ms: int, number: int) -> tuple[int, str, str, int, bytes]:
    """Session `number`'s beacon; its user is one of USERS (a user comes back every ~2 days)."""
    body = template.body.replace(SID, b"s-%010d-bench" % number)
    return (recv_ms, "203.0.113.7", template.user_agent, 0,
            body.replace(USER, b"%d" % (number % USERS)))  # fmt: skip


def framed(requests: list[tuple[int, str, str, int, bytes]]) -> tuple[bytes, int]:
    """`prepare` (the front's validation, as the batcher calls it): WAL bytes, events."""
    records, verdicts, events = _core.prepare(requests)
    if any(verdicts):
        raise RuntimeError(f"a generated beacon was rejected: {next(v for v in verdicts if v)}")
    return records, events


# --- 1. memory -------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(sessions: int, actions: int) -> dict[str, Any]:
    """In a fresh process: RSS growth while `sessions` open sessions of `actions` actions are
    ingested (beacons of ≤ 5 actions), the input generated and dropped chunk by chunk."""
    rng = random.Random(actions)
    per_beacon = [min(BEACON_ACTIONS, actions - k) for k in range(0, actions, BEACON_ACTIONS)]
    templates = {n: open_templates(rng, n, 200) for n in set(per_beacon)}
    core = _core.Sessionizer({})
    recv = 1_764_000_000_000
    # Warm up the allocator and the UA cache, then measure from a settled baseline.
    warm = [request(rng.choice(templates[per_beacon[0]]), recv, -1 - i) for i in range(200)]
    core.ingest(framed(warm)[0], recv)
    core = _core.Sessionizer({})
    core.ingest(framed(warm[:1])[0], recv)
    del warm
    gc.collect()
    before = rss_bytes()
    events = 0
    for first in range(0, sessions, 2000):
        numbers = range(first, min(sessions, first + 2000))
        for n_actions in per_beacon:
            reqs = [request(rng.choice(templates[n_actions]), recv, n) for n in numbers]
            records, count = framed(reqs)
            events += count
            core.ingest(records, recv)
            del reqs, records
    gc.collect()
    after = rss_bytes()
    return {"sessions": core.open_count() - 1, "actions": actions, "events": events,
            "rss_growth": after - before, "max_rss": resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss * 1024}  # fmt: skip


def run_child(kind: str, *args: Any) -> dict[str, Any]:
    """Run `--child kind args…` of this script in a fresh process; its JSON result."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, *map(str, args)],
        capture_output=True, text=True, check=True, timeout=1800,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@dataclass
class Memory:
    sessions: int
    per_session_1: float  # RSS growth per session, sessions of 1 action
    per_session_10: float  # … of 10 actions
    per_action: float  # (10 − 1) actions: the slope
    per_session_base: float  # intercept: a session with no action
    events_1: float  # events per session (actions and the errors, vitals… that come with them)
    events_10: float


def measure_memory(sessions: int) -> Memory:
    one = run_child("memory", sessions, 1)
    ten = run_child("memory", sessions, 10)
    p1 = one["rss_growth"] / one["sessions"]
    p10 = ten["rss_growth"] / ten["sessions"]
    per_action = (p10 - p1) / 9
    return Memory(sessions, p1, p10, per_action, p1 - per_action,
                  one["events"] / one["sessions"], ten["events"] / ten["sessions"])  # fmt: skip


# --- 2. core growth --------------------------------------------------------------------


def core_growth_child(open_sizes: list[int], workdir: str) -> dict[str, Any]:
    """Fill one core to each size in turn (beacons of 5 actions, appended to a real WAL), and
    at each: the same 20 000-beacon workload (half to open sessions, half new ones) ingested,
    a flush with nothing due, checkpoint + its fsync'ed write (the WAL trimmed), restore."""
    rng = random.Random(11)
    templates = open_templates(rng, BEACON_ACTIONS, 500)
    core = _core.Sessionizer(GROWTH_SETTINGS)
    store = Store(Path(workdir) / "wal-store", map_size=1 << 34)
    recv = 1_764_000_000_000
    opened, wal_bytes, seq = 0, 0, 0
    rows = []
    for size in open_sizes:
        while opened < size:
            # One group commit of the fronts: 2 000 requests (~3 MiB), one WAL entry.
            numbers = range(opened, min(size, opened + 2000))
            records, _ = framed([request(rng.choice(templates), recv, n) for n in numbers])
            core.ingest(records, recv)
            seq = store.write(lambda txn, records=records: store.append_records(txn, records))
            wal_bytes += len(records)
            opened = numbers[-1] + 1
        used_with_wal = store.used_bytes()
        # The workload: 10 000 beacons to open sessions, 10 000 that open new ones.
        old = rng.sample(range(opened), min(opened, 10_000))
        reqs = [request(rng.choice(templates), recv + 1000, n) for n in old]
        reqs += [request(rng.choice(templates), recv + 1000, 10**9 + size * 10 + k)
                 for k in range(10_000)]  # fmt: skip
        records, events = framed(reqs)
        began = time.thread_time()
        core.ingest(records, recv + 1000)
        ingest_s = time.thread_time() - began
        began = time.thread_time()
        core.flush(recv + 2000)
        flush_s = time.thread_time() - began
        began = time.thread_time()
        state = core.checkpoint()
        checkpoint_s = time.thread_time() - began
        began = time.perf_counter()

        def put(txn: lmdb.Transaction, state: bytes = state, pos: int = seq) -> None:
            store.put_checkpoint(txn, state, pos, recv + 2000)
            store.trim_wal(txn, pos)

        store.write(put)
        write_s = time.perf_counter() - began
        open_count = core.open_count()
        # Restore is timed in a fresh process, as at a start: here, right after a core of
        # 1M sessions was freed, the allocator's clean-up of those frees would be counted too.
        state_file = Path(workdir) / "checkpoint.bin"
        state_file.write_bytes(state)
        restored = run_child("restore", state_file)
        state_file.unlink()
        assert restored["open"] == open_count
        restore_s = restored["restore_s"]
        # The restored core carries on (one core in memory at a time: 1M open sessions take
        # gigabytes).
        del core
        gc.collect()
        core = _core.Sessionizer(GROWTH_SETTINGS)
        core.restore(state)
        assert core.open_count() == open_count
        rows.append({
            "size": size, "open": open_count, "events": events, "ingest_s": ingest_s,
            "flush_s": flush_s, "checkpoint_s": checkpoint_s, "checkpoint_bytes": len(state),
            "checkpoint_write_s": write_s, "restore_s": restore_s, "wal_bytes": wal_bytes,
            "lmdb_used_with_wal": used_with_wal, "lmdb_used_after": store.used_bytes(),
            "rss": rss_bytes(),
        })  # fmt: skip
        del state
        wal_bytes = 0
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    store.close()
    return {"rows": rows}


# --- 3. the store and queries ----------------------------------------------------------


@dataclass
class Manifest:
    """What a built store holds (kept next to it, so `--store-dir` can reuse it)."""

    stored: int = 0
    generated: int = 0
    first_recv: int = 0
    next_recv: int = 0
    sample_ids: list[str] = field(default_factory=list)
    sample_users: list[str] = field(default_factory=list)
    build_s: float = 0.0
    build_cpu_s: float = 0.0
    build_rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))


class StoreBuilder:
    """Closed sessions made by the real core and stored by the real Store, in bulk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.manifest_path = directory / "manifest.json"
        self.manifest = Manifest.load(self.manifest_path)
        self.rng = random.Random(self.manifest.generated + 1)
        self.templates = stored_templates(self.rng)
        # The core keeps the sessions that time out until they do; it is rebuilt per run, so
        # a reused store resumes with a short gap in time (more than the timeout).
        self.core = _core.Sessionizer({})

    def grow_to(self, target: int, first_recv: int) -> None:
        m = self.manifest
        if not m.first_recv:
            m.first_recv = m.next_recv = first_recv
        elif m.generated:
            m.next_recv += 2 * TIMEOUT_MS
        gap = DAY_MS / SESSIONS_PER_DAY
        store = Store(self.directory / "data", map_size=1 << 36)
        began, cpu_began = time.perf_counter(), time.process_time()
        try:
            while m.stored < target:
                n = min(CHUNK, target - m.stored + CHUNK // 10)
                reqs = []
                for k in range(n):
                    recv = int(m.next_recv + k * gap)
                    reqs.append(request(self.rng.choice(self.templates), recv, m.generated + k))
                m.generated += n
                m.next_recv = reqs[-1][0] + int(gap)
                records, _ = framed(reqs)
                result = self.core.ingest(records, reqs[-1][0])
                closed = result.closed
                while result.more_due:  # more than one call closes (max_closed_per_call)
                    result = self.core.flush(reqs[-1][0])
                    closed += result.closed
                store.write(lambda txn, closed=closed: [store.put_closed(txn, s) for s in closed])
                m.stored += len(closed)
                for s in self.rng.sample(closed, min(len(closed), 50)):
                    m.sample_ids.append(s.session_id)
                    if s.user_tag:
                        m.sample_users.append(s.user_tag)
                del reqs, records, closed
        finally:
            store.close()
        m.build_s += time.perf_counter() - began
        m.build_cpu_s += time.process_time() - cpu_began
        m.build_rows.append({"stored": m.stored, "build_s": m.build_s,
                             "build_cpu_s": m.build_cpu_s})  # fmt: skip
        m.sample_ids = m.sample_ids[-20_000:]
        m.sample_users = m.sample_users[-20_000:]
        m.save(self.manifest_path)

    def put_live(self, count: int, now_ms: int) -> None:
        """A checkpoint holding `count` open sessions received just now: the collector restores
        it at start and publishes every one of them as a live summary."""
        rng = random.Random(now_ms)
        templates = open_templates(rng, BEACON_ACTIONS, 200)
        core = _core.Sessionizer({})
        # received over the last 10 minutes at most: well within the 30-minute timeout
        step = min(100, 600_000 // count)
        reqs = [request(rng.choice(templates), now_ms - (count - k) * step, 2 * 10**9 + k)
                for k in range(count)]  # fmt: skip
        core.ingest(framed(reqs)[0], now_ms)
        if core.open_count() != count:
            raise RuntimeError(f"{core.open_count()} sessions open, not {count}")
        state = core.checkpoint()
        store = Store(self.directory / "data", map_size=1 << 36)
        try:
            head = store.wal_head()

            def put(txn: lmdb.Transaction) -> None:
                store.put_checkpoint(txn, state, head, now_ms)
                store.trim_wal(txn, head)

            store.write(put)
        finally:
            store.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def collector(data_dir: Path, log_path: Path) -> Iterator[int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUMLINE_")}
    env.update({"PYTHONUNBUFFERED": "1", "RUMLINE_LOG_LEVEL": "warning",
                "RUMLINE_STORAGE_MAP_SIZE": str(1 << 36)})  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "collector", "serve", "--host", HOST, "--port", str(port),
             "--data-dir", str(data_dir)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"collector exited:\n{log_path.read_text(errors='replace')}")
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection(HOST, port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("collector not ready after 120 s")
            time.sleep(0.1)
        yield port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def query_paths(m: Manifest, rng: random.Random, n: int) -> dict[str, list[str]]:
    last = m.next_recv
    first_to = min(last, m.first_recv + DAY_MS)

    def segment() -> str:
        to = rng.randint(first_to, last)
        return (f"/api/v1/sessions?from={to - DAY_MS}&to={to}&has_error=true&ux=frustrating"
                "&browser=Chrome")  # fmt: skip

    return {
        "user": [f"/api/v1/users/{rng.choice(m.sample_users)}/sessions" for _ in range(n)],
        "segment": [segment() for _ in range(n)],
        "detail": [f"/api/v1/sessions/{rng.choice(m.sample_ids)}" for _ in range(n)],
        "newest": ["/api/v1/sessions?limit=50"] * n,
    }


# What part 3 measures (part 4: user and newest).
QUERY_KINDS = ("user", "segment", "detail")


def measure_queries(port: int, m: Manifest, n: int) -> dict[str, dict[str, float]]:
    """Each kind in turn, one keep-alive connection, one request at a time, after a warm-up;
    latency = request sent → whole body read."""
    rng = random.Random(m.stored)
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    out: dict[str, dict[str, float]] = {}
    try:
        for kind, paths in query_paths(m, rng, n + n // 5).items():
            if kind not in QUERY_KINDS:
                continue
            times, found = [], 0
            for i, path in enumerate(paths):
                began = time.perf_counter()
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                elapsed = time.perf_counter() - began
                if response.status != 200:
                    raise RuntimeError(f"{path}: {response.status} {body[:300]!r}")
                if i >= n // 5:  # the first ones warm the page cache and the code paths up
                    times.append(elapsed * 1000)
                    found += len(json.loads(body).get("sessions", [1]))
            out[kind] = {"n": len(times), "p50": percentile(times, 50),
                         "p95": percentile(times, 95), "p99": percentile(times, 99),
                         "max": max(times), "results": found / len(times)}  # fmt: skip
            print(f"  {kind:8} p50 {out[kind]['p50']:7.2f} ms  p95 {out[kind]['p95']:7.2f} ms  "
                  f"p99 {out[kind]['p99']:7.2f} ms  ({out[kind]['results']:.1f} results)",
                  flush=True)  # fmt: skip
    finally:
        conn.close()
    return out


def call_for(store: Store, path: str) -> Callable[[], Any]:
    """What the HTTP handler of `path` runs (its blocking part)."""
    from multidict import MultiDict

    from collector.query import find_sessions, get_session, parse_query

    route, _, query = path.partition("?")
    params: MultiDict[str] = MultiDict(
        tuple(pair.split("=", 1)) for pair in query.split("&") if pair
    )
    if route.startswith("/api/v1/users/"):
        q = parse_query(params, user=route.split("/")[4])
        return lambda: find_sessions(store, q)
    if route == "/api/v1/sessions":
        q = parse_query(params)
        return lambda: find_sessions(store, q)
    session_id = route.rsplit("/", 1)[1]
    return lambda: get_session(store, session_id)


def measure_cpu(
    data_dir: Path, m: Manifest, n: int, kinds: tuple[str, ...] = QUERY_KINDS,
    calls: Callable[[Store, str], Callable[[], Any]] | None = None,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """The same queries in this process, without HTTP: CPU time of this thread per call
    (what a query costs, whatever else runs on the machine). `calls`: another query path
    than the current one's `call_for`."""
    store = Store(data_dir, map_size=1 << 36)
    out: dict[str, dict[str, float]] = {}
    try:
        for kind, paths in query_paths(m, random.Random(m.stored + 1), n + n // 5).items():
            if kind not in kinds:
                continue
            times = []
            for i, path in enumerate(paths):
                call = (calls or call_for)(store, path)
                began = time.thread_time()
                call()
                if i >= n // 5:
                    times.append((time.thread_time() - began) * 1000)
            out[kind] = {"p50": percentile(times, 50), "p99": percentile(times, 99)}
            print(f"  {kind:8} CPU p50 {out[kind]['p50']:7.2f} ms  p99 {out[kind]['p99']:7.2f} ms",
                  flush=True)  # fmt: skip
    finally:
        store.close()
    return out


def query_growth(store_dir: Path, sizes: list[int], requests: int,
                 results: Results) -> list[dict[str, Any]]:  # fmt: skip
    builder = StoreBuilder(store_dir)
    first = builder.manifest.first_recv or int(time.time() * 1000) - 40 * DAY_MS
    rows = results.data.setdefault("queries", [])
    for size in sizes:
        if any(row.get("size") == size for row in rows):
            continue  # measured by the run this one resumes
        builder.grow_to(size, first)
        m = builder.manifest
        print(f"store: {m.stored:,} closed sessions, built in {m.build_s:,.0f} s "
              f"({m.stored / m.build_s:,.0f}/s)", flush=True)  # fmt: skip
        # In a fresh process, so the checkpoint is made by the core on disk, the one the
        # collector loads (another build may have replaced it since this process started).
        run_child("live", store_dir, LIVE_SESSIONS, int(time.time() * 1000))
        data = store_dir / "data"
        disk = sum(p.stat().st_size for p in data.iterdir())
        with collector(data, store_dir / "collector.log") as port:
            latencies = measure_queries(port, m, requests)
        load = os.getloadavg()[0]  # the machine is shared: how busy it was meanwhile
        cpu = measure_cpu(data, m, requests)
        rows.append({"size": size, "stored": m.stored, "live": LIVE_SESSIONS,
                     "disk_bytes": disk, "load": load, "build_s": m.build_s,
                     "build_cpu_s": m.build_cpu_s, "latency": latencies,
                     "cpu": cpu})  # fmt: skip
        results.save()
    return rows


def live_growth(store_dir: Path, counts: tuple[int, ...], requests: int, results: Results,
                compare: str | None) -> list[dict[str, Any]]:  # fmt: skip
    """Query CPU with more and more sessions open, over the store as built: the collector
    restores a checkpoint of `count` open sessions and publishes them (with their index
    entries), then the queries run in this process."""
    m = StoreBuilder(store_dir).manifest
    data = store_dir / "data"
    rows = results.data.setdefault("live_growth", [])
    old_calls = None
    if compare:
        from profile_query import old_call_for, query_module_at

        old = query_module_at(compare)
        old_calls = lambda store, path: old_call_for(old, store, path)  # noqa: E731
    kinds = ("user", "newest")
    try:
        for count in counts:
            if any(row["live"] == count for row in rows):
                continue  # measured by the run this one resumes
            run_child("live", store_dir, count, int(time.time() * 1000))
            with collector(data, store_dir / "collector.log"):
                pass  # ready once it has published every open session
            store = Store(data, map_size=1 << 36)
            try:
                with store.read() as txn:
                    published = txn.stat(store.dbs["live"])["entries"]
            finally:
                store.close()
            if published != count:
                raise RuntimeError(f"{published} open sessions published, not {count}")
            print(f"{count:,} open sessions over {m.stored:,} closed:", flush=True)
            row = {"live": count, "stored": m.stored,
                   "cpu": measure_cpu(data, m, requests, kinds)}  # fmt: skip
            if old_calls is not None:
                print(f"  the query path at {compare}:", flush=True)
                row["before"] = measure_cpu(data, m, requests, kinds, old_calls)
                row["before_rev"] = compare
            rows.append(row)
            results.save()
    finally:
        # back to what part 3 runs with (published: profile_query.py reads the store as is)
        run_child("live", store_dir, LIVE_SESSIONS, int(time.time() * 1000))
        with collector(data, store_dir / "collector.log"):
            pass
    return rows


class Results:
    """What a run measured so far, saved after each part (`--resume` carries on from it: a
    long run on a shared machine can be cut short)."""

    def __init__(self, path: Path | None, resume: bool) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        if path is not None and resume and path.exists():
            self.data = json.loads(path.read_text())

    def save(self) -> None:
        if self.path is not None:
            self.path.write_text(json.dumps(self.data))


# --- the report --------------------------------------------------------------------------


def met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def si(n: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if n >= scale and n % scale == 0:
            return f"{n / scale:g}{unit}"
    return f"{n:,.0f}"


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def render(args: argparse.Namespace, memory: Memory | None, growth: list[dict] | None,
           queries: list[dict], live: list[dict] | None = None) -> str:  # fmt: skip
    lines = ["## Memory, growth curves and query latency", ""]
    cmd = "loadtests/bench_store.py" + (" --quick" if args.quick else "")
    if args.max_stored:
        cmd += f" --max-stored {args.max_stored}"
    lines += [
        f"`{cmd}`. Real core, real LMDB on disk (temp dir): sessions made by",
        "`_core.prepare` + `Sessionizer.ingest` from native beacons (load actions with timings",
        "and 2 resources, XHRs with traceparent, clicks, errors, vitals, identify, end), stored",
        f"by `Store.put_closed` in write transactions of {CHUNK:,} sessions.",
        "",
    ]
    if memory is not None:
        budget10 = TARGET_SESSION_B + 10 * TARGET_ACTION_B
        per_event = (memory.per_session_10 - memory.per_session_1) / (
            memory.events_10 - memory.events_1
        )
        lines += [
            "### Memory of open sessions (Rust core)",
            "",
            f"RSS growth of a fresh process while {memory.sessions:,} open sessions are ingested",
            "(beacons of ≤ 5 actions; the input is made and dropped in chunks). Two runs, 1 and",
            "10 actions per session, give the per-session and the per-action cost. An action",
            "brings its share of the other events: a session of 1 action has "
            f"{memory.events_1:.1f} events, one of 10 has {memory.events_10:.1f} (a load action",
            "carries 5 timings, 2 resources and an LCP vital; errors, rage clicks, properties",
            f"come now and then); per event the slope is {per_event:,.0f} B.",
            "",
            "Where an action's bytes go (`rust/src/session.rs`, sizes checked by its test",
            "`an_action_stays_small`): 40 bytes inline in the session's action list; its name,",
            "URL and method one shared `Arc` per sessionizer (as are timing keys, resource URLs",
            "and initiators, page URLs, vital names, user agents); a load or an XHR adds one",
            "56-byte box (the traceparent as 25 bytes) and a load its numbers (timings, resource",
            "start/dur/status/size) as `f32` when exact.",
            "",
            "| measure | per 100k sessions | per session | target |",
            "|---|---:|---:|---|",
            f"| sessions of 10 actions | {mib(memory.per_session_10 * 1e5)} | "
            f"{memory.per_session_10:,.0f} B | ≤ {budget10:,} B (2 KiB + 10 × 150 B): "
            f"{met(memory.per_session_10 <= budget10)} |",
            f"| sessions of 1 action | {mib(memory.per_session_1 * 1e5)} | "
            f"{memory.per_session_1:,.0f} B | — |",
            f"| a session without its actions (intercept) | "
            f"{mib(memory.per_session_base * 1e5)} | {memory.per_session_base:,.0f} B | "
            f"≤ 2,048 B: {met(memory.per_session_base <= TARGET_SESSION_B)} |",
            f"| one action (slope) | {mib(memory.per_action * 1e5)} | "
            f"{memory.per_action:,.0f} B | ≤ 150 B: "
            f"{met(memory.per_action <= TARGET_ACTION_B)} |",
            "",
        ]
    if growth:
        lines += [
            "### The core as open sessions grow",
            "",
            "One core (`max_open_sessions` raised past the default 500k cap) filled to each",
            "size with sessions of 5 actions (one beacon each, the",
            "records appended to a real WAL as group commits of 2,000 requests). At each",
            "size: CPU time of ingesting the same 20,000 beacons (10,000 to open sessions,",
            "10,000 opening new ones; ~5.5 events each), of a `flush` that closes nothing, of",
            "`checkpoint()` and of `restore()` in a fresh process (as at a start); the wall time",
            "of the fsync'ed transaction that stores the checkpoint and trims the WAL behind it;",
            "the WAL bytes since the previous size and the LMDB file in use before and after",
            "that checkpoint.",
            "",
            "| open sessions | ingest events/s | flush, nothing due | checkpoint | checkpoint "
            "size | checkpoint write (fsync) | restore | WAL since previous | LMDB used: with "
            "WAL → after | RSS |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for r in growth:
            lines.append(
                f"| {r['size']:,} | {r['events'] / r['ingest_s']:,.0f} | "
                f"{r['flush_s'] * 1000:,.1f} ms | {r['checkpoint_s'] * 1000:,.0f} ms | "
                f"{mib(r['checkpoint_bytes'])} | {r['checkpoint_write_s'] * 1000:,.0f} ms | "
                f"{r['restore_s'] * 1000:,.0f} ms | {mib(r['wal_bytes'])} | "
                f"{mib(r['lmdb_used_with_wal'])} → {mib(r['lmdb_used_after'])} | "
                f"{mib(r['rss'])} |"
            )
        lines.append("")
    if queries:
        lines += [
            "### Query latency as the store grows",
            "",
            f"Closed sessions arrive at {SESSIONS_PER_DAY:,} a day (1M span 10 days), so a",
            f"24-hour window holds ~{SESSIONS_PER_DAY:,} of them at every size; "
            f"{LIVE_SESSIONS:,} open",
            "sessions are live (restored from a checkpoint, published by the collector). Over",
            "HTTP to a real collector on that store, one keep-alive connection, one request at",
            "a time, client and server on the same 2 cores; after a warm-up of 20 %:",
            "",
            "- **user**: `GET /api/v1/users/{tag}/sessions` (a tag that has sessions);",
            "- **segment**: `GET /api/v1/sessions?from=…&to=…` (24 h ending at a random time)",
            "  `&has_error=true&ux=frustrating&browser=Chrome` — the first page (50);",
            "- **detail**: `GET /api/v1/sessions/{id}` (summary + timeline).",
            "",
            f"Load average (1 min) of the machine after each size: "
            f"{', '.join(format(r['load'], '.1f') for r in queries)} on {os.cpu_count()} cores "
            "(other work shares it: the p99s include its noise).",
            "",
            "`CPU p50 / p99`: the same queries called in-process after the collector stopped",
            "(`find_sessions` / `get_session` as the handlers call them), CPU time of the",
            "calling thread: what a query costs, without the",
            "waits for a CPU that a busy machine adds to the wall-clock columns.",
            "",
            "| stored | disk | built in | query | p50 | p95 | p99 | CPU p50 / p99 | "
            "results/request | target (p99, at 1M) |",
            "|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in queries:
            for kind, lat in r["latency"].items():
                target = TARGET_P99_MS[kind]
                verdict = f"≤ {target:g} ms: {met(lat['p99'] <= target)}"
                lines.append(
                    f"| {si(r['stored'])} | {r['disk_bytes'] / 2**30:,.1f} GiB | "
                    f"{r['build_s']:,.0f} s | {kind} | {lat['p50']:,.2f} ms | "
                    f"{lat['p95']:,.2f} ms | {lat['p99']:,.2f} ms | "
                    f"{r['cpu'][kind]['p50']:,.2f} / {r['cpu'][kind]['p99']:,.2f} ms | "
                    f"{lat['results']:,.1f} | "
                    f"{verdict} |"
                )
        rate = queries[-1]["stored"] / queries[-1]["build_s"]
        lines += ["", f"Building the store: {rate:,.0f} sessions/s (core + LMDB, in bulk).", ""]
    if live:
        before = live[0].get("before_rev")
        lines += [
            "### Queries as the open sessions grow",
            "",
            f"The store of the last row above ({live[0]['stored']:,} closed sessions) with",
            f"{', '.join(format(r['live'], ',') for r in live)} sessions open, restored from a",
            "checkpoint and published by the collector; CPU time per call in-process (as",
            "above) of a user-tag lookup and of the newest 50 sessions (`GET /api/v1/sessions`,",
            "no filter)"
            + (f"; `before`: the query path of `{before}`, on the same store." if before else "."),
            "",
        ]
        head = "| open | user p50 / p99 | newest 50 p50 / p99 |"
        rule = "|---:|---:|---:|"
        if before:
            head += " user before | newest 50 before |"
            rule += "---:|---:|"
        lines += [head, rule]

        def cell(cpu: dict[str, dict[str, float]], kind: str) -> str:
            return f"{cpu[kind]['p50']:,.2f} / {cpu[kind]['p99']:,.2f} ms"

        for r in live:
            line = f"| {r['live']:,} | {cell(r['cpu'], 'user')} | {cell(r['cpu'], 'newest')} |"
            if before:
                line += f" {cell(r['before'], 'user')} | {cell(r['before'], 'newest')} |"
            lines.append(line)
        lines.append("")
    lines += [
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()}; Python "
        f"{platform.python_version()}, core {_core.__version__}, lmdb {lmdb.__version__} "
        f"(LMDB {'.'.join(map(str, lmdb.version()))});",
        f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
    replace_section(START, END, text, DOC)


SUBSECTION_HEADINGS = {
    "memory": "### Memory of open sessions (Rust core)",
    "growth": "### The core as open sessions grow",
}


def write_subsection(text: str, part: str) -> None:
    """Replace only one sub-section (up to the next heading) inside this script's section of
    the doc, keeping the other tables of an earlier full run."""
    heading = SUBSECTION_HEADINGS[part]
    new = text.split(heading, 1)[1].split("\n### ", 1)[0].split("\nMachine: ", 1)[0]
    doc = DOC.read_text()
    head, rest = doc.split(START, 1)
    section, tail = rest.split(END, 1)
    if heading not in section:
        raise SystemExit(f"{DOC.name}: no '{heading}' in the bench_store section")
    before, after = section.split(heading, 1)
    after = after[after.index("\n### "):] if "\n### " in after else "\n"
    stamp = (f"\n(Measured with `loadtests/bench_store.py --only {part}`, core "
             f"{_core.__version__}, "
             f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}; the "
             "other tables of this section come from the last full run, dated at its end.)\n")
    section = before + heading + new.rstrip() + "\n" + stamp + after
    DOC.write_text(head + START + section + END + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    parser.add_argument("--no-write", action="store_true", help="do not update the doc")
    parser.add_argument("--max-stored", type=int, help="largest store (default 1M; quick 100k)")
    parser.add_argument("--store-dir", type=Path, help="keep (and reuse) the store here")
    parser.add_argument("--skip-core", action="store_true", help="only the query latency")
    parser.add_argument("--resume", action="store_true",
                        help="with --store-dir: keep what an interrupted run measured there")
    parser.add_argument("--only", choices=tuple(SUBSECTION_HEADINGS),
                        help="run only this part and rewrite only its sub-section of the doc")
    parser.add_argument("--compare-query", metavar="REV",
                        help="part 4 also measures the query path of git revision REV")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "memory":
            result = memory_child(int(rest[0]), int(rest[1]))
        elif kind == "restore":
            state = Path(rest[0]).read_bytes()
            core = _core.Sessionizer(GROWTH_SETTINGS)
            began = time.thread_time()
            core.restore(state)
            result = {"restore_s": time.thread_time() - began, "open": core.open_count()}
        elif kind == "live":
            StoreBuilder(Path(rest[0])).put_live(int(rest[1]), int(rest[2]))
            result = {}
        else:
            result = core_growth_child([int(x) for x in rest[1:]], rest[0])
        print(json.dumps(result))
        return

    # SIGTERM/SIGINT unwind like an exception, so the collector and the temp dir go too.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    memory_sessions = 20_000 if args.quick else 100_000
    open_sizes = [1_000, 10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    if args.only:
        memory, growth = None, None
        if args.only == "memory":
            memory = measure_memory(memory_sessions)
            print(f"  {memory}", flush=True)
        else:
            with tempfile.TemporaryDirectory(prefix="rumline-bench-store-") as workdir:
                growth = run_child("growth", Path(workdir), *open_sizes)["rows"]
        text = render(args, memory, growth, [])
        print(text)
        if not args.no_write:
            write_subsection(text, args.only)
            print(f"updated {DOC.relative_to(REPO)} ({args.only} sub-section)")
        return
    max_stored = args.max_stored or (100_000 if args.quick else 1_000_000)
    sizes = (20_000, 100_000) if args.quick else (100_000, 1_000_000, 3_000_000)
    stored_sizes = [s for s in sizes if s < max_stored] + [max_stored]
    requests = 200 if args.quick else 500

    memory, growth = None, None
    workdir = Path(tempfile.mkdtemp(prefix="rumline-bench-store-"))
    try:
        store_dir = args.store_dir or workdir / "store"
        store_dir.mkdir(parents=True, exist_ok=True)
        results = Results(store_dir / "results.json" if args.store_dir else None, args.resume)
        if not args.skip_core:
            if "memory" not in results.data:
                print(f"memory: {memory_sessions:,} open sessions of 1 and of 10 actions",
                      flush=True)  # fmt: skip
                results.data["memory"] = asdict(measure_memory(memory_sessions))
                results.save()
            memory = Memory(**results.data["memory"])
            print(f"  {memory}", flush=True)
            if "growth" not in results.data:
                print(f"core growth at {open_sizes} open sessions", flush=True)
                results.data["growth"] = run_child("growth", workdir, *open_sizes)["rows"]
                results.save()
            growth = results.data["growth"]
        print(f"query latency at {stored_sizes} stored sessions (store in {store_dir})",
              flush=True)  # fmt: skip
        queries = query_growth(store_dir, stored_sizes, requests, results)
        print(f"query CPU at {LIVE_GROWTH} open sessions", flush=True)
        live = live_growth(store_dir, LIVE_GROWTH, requests, results, args.compare_query)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = render(args, memory, growth, queries, live)
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"updated {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
