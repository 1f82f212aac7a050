"""Microbenchmark: the Rust sessionizer core vs the pure-Python reference on the same stream.

    .venv/bin/python loadtests/bench_core.py [--quick] [--no-write] [--dump FILE]

Generates a realistic stream (by default 20 000 sessions of ~10 actions, a few errors, vitals,
rage clicks and properties, 3 beacons of ~5 events per session, interleaved in time and cut into
batches of 200 requests), then times `Sessionizer.ingest` over every batch plus the final
`flush` for `collector._core` (best of 3 runs) and for `tests/reference` (one run), in the same
process on the same requests. Each implementation ingests what its own fronts write: the core
the records of `_core.prepare` (version 2, the beacons parsed once by the front, as in
production), the reference JSON records (version 1). `prepare`, the fronts' cost, is timed
separately. Prints events/s for both and the ratio, checks that both closed the
same sessions, and replaces the "Sessionizer core vs Python reference" section of
docs/benchmarks.md (between its markers) unless `--no-write`. `--dump FILE` writes the stream
as framed version-1 records (the reference's JSON records, in receive order) and exits, for
`rust/examples/core_profile.rs --wal FILE` and `ingest_profile.rs FILE`.

Targets: ≥ 2 M events/s for the core and ≥ 30× the reference.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import orjson  # noqa: E402
from benchdoc import replace_section  # noqa: E402  (a sibling script module)

from collector import _core  # noqa: E402
from tests.reference import sessionizer as ref  # noqa: E402
from tests.reference.framing import CHROME_UA, IPAD_UA, IPHONE_UA  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
START, END = "<!-- bench_core:start -->", "<!-- bench_core:end -->"
TARGET_EVENTS_PER_S = 2_000_000
TARGET_RATIO = 30

T0 = 1_764_126_000_000
SETTINGS = {"timeout_ms": 5 * 60_000}  # sessions close while the stream runs
USER_AGENTS = [
    CHROME_UA,
    IPHONE_UA,
    IPAD_UA,
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Firefox/121.0",
]
PAGES = ["/", "/cart", "/cart/checkout", "/product/42", "/search", "/account"]
BEACONS_PER_SESSION = 3


def session_beacons(rng: random.Random, number: int) -> list[tuple[int, str, bytes]]:
    """The (recv_ms, user agent, payload) of one session's beacons."""
    sid = f"sid-{number:08d}-{rng.getrandbits(32):08x}"
    start = T0 + number * 40 + rng.randrange(1000)
    user_agent = rng.choice(USER_AGENTS)
    out = []
    for k in range(BEACONS_PER_SESSION):
        recv = start + k * rng.randrange(5_000, 60_000)
        page = "https://shop.example.com" + rng.choice(PAGES)
        events: list[dict[str, Any]] = [
            {"type": "load" if i == 0 else rng.choice(("xhr", "custom")),
             "name": f"action {rng.randrange(20)}", "url": page,
             "start": recv - 4000 + i * 700, "dur": rng.choice((120, 800, 2900, 3000, 5000, 13000)),
             **({"status": rng.choice((200, 200, 200, 500)), "method": "GET"} if i else {})}
            for i in range(rng.choice((3, 3, 4)))
        ]  # fmt: skip
        extras: list[dict[str, Any]] = [
            {"type": "error", "kind": rng.choice(("js", "request")),
             "message": "TypeError: x is undefined", "start": recv - 1000},
            {"type": "vital", "name": rng.choice(("LCP", "INP", "CLS")),
             "value": rng.choice((0.05, 180, 2400, 4200)), "start": recv - 900},
            {"type": "rage_click", "target": "button#pay", "start": recv - 800},
            {"type": "property", "key": "plan", "value": rng.choice(("gold", "free"))},
            {"type": "identify", "user": f"user{number}@example.com"},
        ]  # fmt: skip
        events.append(rng.choice(extras))
        beacon = {"v": 1, "app": rng.choice(("shop", "shop", "blog")), "sid": sid,
                  "vid": f"visitor-{number}", "seq": k, "sent": recv, "page": {"url": page},
                  "device": {"screen": "1920x1080"}, "events": events}  # fmt: skip
        out.append((recv, user_agent, json.dumps(beacon, separators=(",", ":")).encode()))
    return out


Batch = tuple[bytes, int]  # framed records and the `now` to ingest them at


def make_stream(
    sessions: int, batch_records: int, seed: int = 7
) -> tuple[list[Batch], list[Batch], list[list[tuple]], int]:
    """Batches in receive order: JSON records (version 1, for the reference), the core's
    `prepare` of the same requests (version 2), and the requests themselves."""
    rng = random.Random(seed)
    records = [b for n in range(sessions) for b in session_beacons(rng, n)]
    records.sort(key=lambda r: r[0])
    events = sum(len(json.loads(payload)["events"]) for _, _, payload in records)
    json_batches, prepared_batches, requests = [], [], []
    for i in range(0, len(records), batch_records):
        chunk = records[i : i + batch_records]
        now = chunk[-1][0]
        batch = b"".join(
            ref.encode_record(recv, "203.0.113.0", ua, 0, payload) for recv, ua, payload in chunk
        )
        json_batches.append((batch, now))
        chunk_requests = [(recv, "203.0.113.0", ua, 0, payload) for recv, ua, payload in chunk]
        requests.append(chunk_requests)
        wal, verdicts, _ = _core.prepare(chunk_requests)
        assert all(v is None for v in verdicts), verdicts
        prepared_batches.append((wal, now))
    return json_batches, prepared_batches, requests, events


def run(make: Callable[..., Any], batches: list[Batch]) -> tuple[float, list[str]]:
    """CPU seconds of this (single) thread for every ingest plus the final flush, and the ids
    of the closed sessions. CPU time, not wall time, so that other work on a shared machine
    does not count; the two are equal on an idle one."""
    sessionizer = make(SETTINGS)
    closed: list[str] = []
    began = time.thread_time()
    for batch, now in batches:
        result = sessionizer.ingest(batch, now)
        closed += [c.session_id for c in flush_all(sessionizer, now, result)]
    end = batches[-1][1] + 86_400_000
    closed += [c.session_id for c in flush_all(sessionizer, end, sessionizer.flush(end))]
    return time.thread_time() - began, closed


def flush_all(sessionizer: Any, now: int, result: Any) -> list[Any]:
    """The sessions `result` closed, and those of the flushes its call left due (the core
    closes at most `max_closed_per_call` due sessions a call; the reference all at once)."""
    closed = list(result.closed)
    while getattr(result, "more_due", False):
        result = sessionizer.flush(now)
        closed += result.closed
    return closed


def cpu_seconds(work: Callable[[], Any]) -> float:
    began = time.thread_time()
    work()
    return time.thread_time() - began


def parse_each(payloads: list[bytes]) -> None:
    for payload in payloads:  # nothing kept: only the parsing is timed
        orjson.loads(payload)


def breakdown(
    json_batches: list[Batch], batches: list[Batch], requests: list[list[tuple]]
) -> dict[str, float]:
    """Where the core's time goes (CPU seconds, best of 3), with a JSON-parsing floor."""
    payloads = [r[4] for chunk in requests for r in chunk]

    def apply_only(batches: list[Batch]) -> _core.Sessionizer:  # no session closes meanwhile
        sessionizer = _core.Sessionizer({})
        for batch, now in batches:
            sessionizer.ingest(batch, now)
        return sessionizer

    def finalize_all() -> float:
        sessionizer = apply_only(batches)
        end = batches[-1][1] + 86_400_000
        return cpu_seconds(lambda: flush_all(sessionizer, end, sessionizer.flush(end)))

    def prepare_all() -> None:
        for chunk in requests:
            _core.prepare(chunk)

    return {
        "orjson.loads of every payload (a parsing floor)": min(
            cpu_seconds(lambda: parse_each(payloads)) for _ in range(3)
        ),
        "core prepare: validate, parse, write version-2 records (the fronts)": min(
            cpu_seconds(prepare_all) for _ in range(3)
        ),
        "core ingest of version-2 records, no session closing": min(
            cpu_seconds(lambda: apply_only(batches)) for _ in range(3)
        ),
        "(for comparison) the same as JSON records (version 1)": min(
            cpu_seconds(lambda: apply_only(json_batches)) for _ in range(3)
        ),
        "core flush finalizing every session": min(finalize_all() for _ in range(3)),
    }


def rust_version() -> str:
    try:
        return subprocess.run(
            ["rustc", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "rustc unknown"


def met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def write_section(text: str) -> None:
    replace_section(START, END, text, DOC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 000 sessions instead of 20 000")
    parser.add_argument("--no-write", action="store_true", help="do not update the doc")
    parser.add_argument("--sessions", type=int, help="number of sessions (overrides --quick)")
    parser.add_argument(
        "--dump", type=Path, metavar="FILE", help="write the stream as v1 records to FILE, exit"
    )
    args = parser.parse_args()
    sessions = args.sessions or (2_000 if args.quick else 20_000)

    json_batches, batches, requests, events = make_stream(sessions, batch_records=200)
    if args.dump:
        args.dump.write_bytes(b"".join(batch for batch, _ in json_batches))
        print(f"wrote {args.dump}: {sessions} sessions, {events} events")
        return
    records = sessions * BEACONS_PER_SESSION
    print(
        f"stream: {sessions} sessions, {records} records, {events} events, {len(batches)} batches"
    )

    rust_runs = [run(_core.Sessionizer, batches) for _ in range(3)]
    rust_s = min(seconds for seconds, _ in rust_runs)
    ref_s, ref_closed = run(ref.Sessionizer, json_batches)
    same = sorted(rust_runs[0][1]) == sorted(ref_closed)
    rust_rate, ref_rate = events / rust_s, events / ref_s
    ratio = ref_s / rust_s
    print(f"core      {rust_s * 1000:9.1f} ms  {rust_rate:12,.0f} events/s  (best of 3)")
    print(f"reference {ref_s * 1000:9.1f} ms  {ref_rate:12,.0f} events/s")
    print(f"ratio     {ratio:9.1f}x   same closed sessions: {same}")
    core_ok, ratio_ok = rust_rate >= TARGET_EVENTS_PER_S, ratio >= TARGET_RATIO
    print(f"targets: core >= 2M events/s {'met' if core_ok else 'MISSED'}, "
          f">= 30x reference {'met' if ratio_ok else 'MISSED'}")  # fmt: skip
    parts = breakdown(json_batches, batches, requests)
    for what, seconds in parts.items():
        print(f"  {what:50} {seconds * 1000:9.1f} ms  {events / seconds:12,.0f} events/s")
    stream_mb = sum(len(batch) for batch, _ in batches) / 1e6
    json_mb = sum(len(batch) for batch, _ in json_batches) / 1e6
    rows = "\n".join(
        f"| {what} | {seconds * 1000:,.1f} ms | {events / seconds:,.0f} |"
        for what, seconds in parts.items()
    )

    if not args.no_write:
        write_section(
            f"""## Sessionizer core vs Python reference

`loadtests/bench_core.py{" --quick" if args.quick else ""}`: CPU time of `Sessionizer.ingest` over
every batch plus the final `flush`, same requests, same thread; the core best of 3 runs, the
reference one run. Each ingests what its fronts write: the core the records of `_core.prepare`
(version 2: the beacons parsed once by the front, as in production; `prepare` is timed below),
the reference JSON records (version 1).
Stream: {sessions:,} sessions, {records:,} requests of one beacon (~5 events), {events:,} events,
{len(batches)} batches of 200 requests, settings `{json.dumps(SETTINGS)}`.

| implementation | time | events/s | target |
|---|---:|---:|---|
| `collector._core` (Rust) | {rust_s * 1000:,.1f} ms | {rust_rate:,.0f} | ≥ 2 M: {met(core_ok)} |
| `tests/reference` (Python) | {ref_s * 1000:,.1f} ms | {ref_rate:,.0f} | — |
| ratio | {ratio:,.1f}× | | ≥ 30×: {met(ratio_ok)} |

Both closed the same sessions: {"yes" if same else "**no**"}. The reference slows down as the
stream grows (Python's cyclic GC walks every live event), so `--quick` gives a lower ratio.

Where the core's time goes (CPU, best of 3; the stream is {stream_mb:,.1f} MB of version-2
records, {json_mb:,.1f} MB as JSON records; {len(rust_runs[0][1]):,} sessions finalized: a
beacon draws its app, so a client session id often spans two):

| part | time | events/s |
|---|---:|---:|
{rows}

Machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()}; Python
{platform.python_version()}, {rust_version()}, core {_core.__version__};
{datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}.
"""
        )
        print(f"updated {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
