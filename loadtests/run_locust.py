"""`make loadtest`: a collector on a temp data dir and a free port, Locust against it, a summary.

    .venv/bin/python loadtests/run_locust.py [--run-time 30s] [--users 44] [--workers 1]
                                             [--summary FILE.json]

Starts `python -m collector serve` on 127.0.0.1 (real LMDB in a temp directory, deleted at the
end), runs `locust --config loadtests/locust.conf` headless against it for a bounded time, then
prints per request name the count, failures, p50/p95/p99, the failures themselves and how many
sessions were stored, and stops the collector (SIGTERM, then SIGKILL of its process group).
Exits 1 when any request failed. Nothing keeps running after it returns.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchdoc import replace_section  # a sibling script module

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "loadtests" / "locust.conf"
DOC = REPO / "docs" / "benchmarks.md"
START, END = "<!-- loadtest:start -->", "<!-- loadtest:end -->"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextlib.contextmanager
def collector(workdir: Path, workers: int, session_timeout: str) -> Iterator[int]:
    """A collector process on a free port; yields the port; always stops it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUMLINE_")}
    env.update({"PYTHONUNBUFFERED": "1", "RUMLINE_SESSION_TIMEOUT": session_timeout,
                "RUMLINE_LOG_LEVEL": "warning"})  # fmt: skip
    log_path = workdir / "collector.log"
    command = [sys.executable, "-m", "collector", "serve", "--host", HOST, "--port", str(port),
               "--data-dir", str(workdir / "data"), "--workers", str(workers)]  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"collector exited: {log_path.read_text(errors='replace')}")
            with contextlib.suppress(OSError):
                if get(port, "/readyz", timeout=1.0)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("collector not ready after 30 s")
            time.sleep(0.05)
        yield port
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    # The whole group (a --workers N supervisor's children too), whatever happened above.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def seconds(run_time: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    total, number = 0.0, ""
    for char in run_time:
        if char.isdigit() or char == ".":
            number += char
        else:
            total += float(number) * units[char]
            number = ""
    return total + (float(number) if number else 0)


def run_locust(port: int, workdir: Path, args: argparse.Namespace) -> int:
    command = [sys.executable, "-m", "locust", "--config", str(CONF),
               "--locustfile", str(REPO / "loadtests" / "locustfile.py"),
               "--host", f"http://{HOST}:{port}", "--csv", str(workdir / "locust"),
               "--run-time", args.run_time]  # fmt: skip
    if args.users:
        command += ["--users", str(args.users), "--spawn-rate", str(args.users)]
    bound = seconds(args.run_time) + 60  # start-up and stop-timeout included
    with (workdir / "locust.log").open("wb") as log:
        return subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              timeout=bound, check=False).returncode  # fmt: skip


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def stored_sessions(port: int) -> int:
    """Closed sessions the query API returns (every page)."""
    total, cursor = 0, ""
    for _ in range(1000):
        status, body = get(port, f"/api/v1/sessions?live=false&limit=1000{cursor}")
        if status != 200:
            raise RuntimeError(f"/api/v1/sessions answered {status}: {body[:200]!r}")
        page = json.loads(body)
        total += len(page["sessions"])
        if not page["next_cursor"]:
            break
        cursor = "&cursor=" + page["next_cursor"]
    return total


def summarize(rows: list[dict[str, str]], failures: list[dict[str, str]], run_s: float,
              sessions: int) -> dict[str, Any]:  # fmt: skip
    def number(row: dict[str, str], key: str) -> float:
        value = row.get(key, "")
        return float(value) if value not in ("", "N/A") else 0.0

    requests = [
        {"name": row["Name"], "type": row["Type"], "count": int(number(row, "Request Count")),
         "failures": int(number(row, "Failure Count")), "rps": number(row, "Requests/s"),
         "p50_ms": number(row, "50%"), "p95_ms": number(row, "95%"),
         "p99_ms": number(row, "99%")}
        for row in rows
    ]  # fmt: skip
    total = next((r for r in requests if r["name"] == "Aggregated"), None)
    return {
        "run_s": run_s,
        "requests": requests,
        "total_requests": total["count"] if total else 0,
        "total_failures": total["failures"] if total else 0,
        "failures": [
            {"name": f["Name"], "error": f["Error"], "occurrences": f["Occurrences"]}
            for f in failures
        ],  # fmt: skip
        "sessions_stored": sessions,
    }


def report(summary: dict[str, Any]) -> None:
    print(f"{'request':<22} {'count':>8} {'fail':>6} {'req/s':>8} {'p50':>7} {'p95':>7} "
          f"{'p99':>7}  (ms)")  # fmt: skip
    for r in summary["requests"]:
        print(f"{r['name']:<22} {r['count']:>8,} {r['failures']:>6,} {r['rps']:>8,.1f} "
              f"{r['p50_ms']:>7.0f} {r['p95_ms']:>7.0f} {r['p99_ms']:>7.0f}")  # fmt: skip
    if summary["failures"]:
        print("failures:")
        for f in summary["failures"]:
            print(f"  {f['occurrences']:>6} × {f['name']}: {f['error']}")
    else:
        print("failures: none")
    print(f"sessions stored: {summary['sessions_stored']:,}")


def write_section(summary: dict[str, Any], args: argparse.Namespace) -> None:
    """Replace the section between the load-test markers of docs/benchmarks.md."""
    users = f"{args.users} users" if args.users else "44 users (locust.conf)"
    lines = [
        "## Load test (Locust)",
        "",
        f"`loadtests/run_locust.py --run-time {args.run_time}` (`make loadtest`): "
        f"{users}, 10 browser tabs sending visits (page loads, XHRs, clicks, errors",
        "now and then, identify, end) for each support engineer listing, opening and",
        "segmenting sessions meanwhile, against a collector "
        f"(`--workers {args.workers}`)",
        "on a temp LMDB, Locust and collector on the same machine. Every beacon must be",
        "answered 204 (durable); latencies in ms, as Locust rounds them.",
        "",
        "| request | count | failures | req/s | p50 | p95 | p99 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["requests"]:
        lines.append(f"| {r['name']} | {r['count']:,} | {r['failures']:,} | {r['rps']:,.1f} | "
                     f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} |")  # fmt: skip
    lines += [
        "",
        f"Failures: {summary['total_failures']}. Sessions stored by the end: "
        f"{summary['sessions_stored']:,}.",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()}; Python "
        f"{platform.python_version()}, locust {locust_version()}; "
        f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
    ]
    replace_section(START, END, "\n".join(lines), DOC)
    print(f"updated {DOC.relative_to(REPO)}")


def locust_version() -> str:
    from importlib.metadata import version

    return version("locust")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-time", default="30s", help="Locust run time (default 30s)")
    parser.add_argument("--users", type=int, help="users (default: locust.conf)")
    parser.add_argument("--workers", type=int, default=1, help="collector --workers")
    parser.add_argument(
        "--session-timeout",
        default="10s",
        help="inactivity timeout, so abandoned visits close during the run",
    )
    parser.add_argument("--summary", type=Path, help="also write the summary as JSON here")
    parser.add_argument("--write", action="store_true",
                        help="replace the load-test section of docs/benchmarks.md")  # fmt: skip
    args = parser.parse_args()
    # SIGTERM/SIGINT unwind like an exception, so the collector and the temp dir go too.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))

    workdir = Path(tempfile.mkdtemp(prefix="rumline-loadtest-"))
    try:
        with collector(workdir, args.workers, args.session_timeout) as port:
            print(f"collector on {HOST}:{port} (data in {workdir}); locust for {args.run_time}",
                  flush=True)  # fmt: skip
            began = time.monotonic()
            code = run_locust(port, workdir, args)
            run_s = time.monotonic() - began
            rows = read_csv(workdir / "locust_stats.csv")
            if not rows:
                print((workdir / "locust.log").read_text(errors="replace")[-4000:])
                print(f"locust exited {code} without statistics")
                return 1
            # Visits that ended are stored within a sessionizer step (≤ a second).
            time.sleep(1.5)
            summary = summarize(rows, read_csv(workdir / "locust_failures.csv"), run_s,
                                stored_sessions(port))  # fmt: skip
        report(summary)
        if args.summary:
            args.summary.write_text(json.dumps(summary, indent=2))
        if args.write:
            write_section(summary, args)
        return 1 if summary["total_failures"] else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
