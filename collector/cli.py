"""`rumline serve` (also `python -m collector serve`).

`--workers 1` (the default) runs one process that ingests and sessionizes. `--workers N` runs
N front processes sharing the port (SO_REUSEPORT) and one sessionizer process over the same
LMDB environment, under this process as their supervisor: it restarts a child that dies and,
on SIGTERM or SIGINT, stops the fronts first (they commit what they accepted) and the
sessionizer last (it consumes the WAL to its end and checkpoints).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

import uvloop
from aiohttp import web

from collector import backup
from collector.app import Role, create_app
from collector.appkeys import READINESS
from collector.config import ConfigError, Settings, load_settings
from collector.logs import setup_logging
from collector.metrics import MULTIPROC_ENV, mark_process_dead

log = logging.getLogger("collector")

# How the supervisor of `--workers N` tells a child to drain and exit.
CHILD_STOP_SIGNAL = signal.SIGUSR2
# A child that exits this soon after its start, this many times in a row, is not restarted.
QUICK_EXIT_S = 3.0
MAX_QUICK_EXITS = 5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rumline", description="Real-user-monitoring edge collector."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the collector",
        description="Run the collector. Flags override RUMLINE_* variables, which override "
        "the TOML file.",
    )
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument("--data-dir", type=Path, help="LMDB directory (default ./rumline-data)")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument(
        "--workers", type=int, help="front processes; with N > 1 a sessionizer process is added"
    )
    serve.add_argument("--log-format", choices=("text", "json"), help="log lines (default text)")
    serve.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="default info"
    )
    backup_command = commands.add_parser(
        "backup",
        help="copy the LMDB data consistently, also while the collector serves",
        description="Copy the data directory into DEST (new or empty) as one consistent, "
        "compacted snapshot. Restore: run `rumline serve --data-dir DEST`.",
    )
    backup_command.add_argument("dest", type=Path, help="destination directory (new or empty)")
    backup_command.add_argument("--data-dir", type=Path, help="LMDB directory to copy")
    backup_command.add_argument("--config", type=Path, help="TOML configuration file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "backup":
        try:
            settings = load_settings(args.config, overrides={"data_dir": args.data_dir})
        except ConfigError as err:
            print(f"rumline: configuration error: {err}", file=sys.stderr)
            return 2
        return backup.run(settings.data_dir, args.dest)
    overrides = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "workers": args.workers,
        "log_format": args.log_format,
        "log_level": args.log_level,
    }
    try:
        settings = load_settings(args.config, overrides=overrides)
    except ConfigError as err:
        print(f"rumline: configuration error: {err}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    if settings.workers == 1:
        return uvloop.run(serve_role(settings, "both"))
    return supervise(settings)


async def serve_role(settings: Settings, role: Role, child: bool = False) -> int:
    """Run one process's app until told to stop, then drain; the exit code.

    A single process stops on SIGTERM or SIGINT. A child of `--workers N` stops on
    `CHILD_STOP_SIGNAL` from its supervisor, or by itself when the supervisor is gone; it
    ignores SIGTERM/SIGINT, which a service manager may send to the whole process group at
    once, so that the supervisor alone orders the shutdown (fronts first, sessionizer last).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if child:
        loop.add_signal_handler(CHILD_STOP_SIGNAL, stop.set)
        loop.create_task(_stop_when_orphaned(stop), name="orphan-watch")
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
    timeout_s = settings.shutdown_timeout_ms / 1000
    app = create_app(settings, role)
    runner = web.AppRunner(
        app,
        access_log=None,
        # In-flight requests get half the budget; the rest is for commit and checkpoint.
        shutdown_timeout=timeout_s / 2,
    )
    await runner.setup()
    if role != "sessionizer":
        site = web.TCPSite(
            runner, settings.host, settings.port, backlog=2048,
            reuse_port=settings.workers > 1,  # every front binds the port; the kernel spreads
        )  # fmt: skip
        await site.start()
        log.info("listening", extra={"url": f"http://{settings.host}:{settings.port}",
                                     "role": role, "data_dir": str(settings.data_dir)})  # fmt: skip
    else:
        log.info("sessionizer started", extra={"data_dir": str(settings.data_dir)})
    await stop.wait()
    log.info("draining", extra={"role": role, "timeout_s": timeout_s})
    app[READINESS].set("draining")
    started = time.monotonic()
    try:
        await asyncio.wait_for(runner.cleanup(), timeout_s)
    except TimeoutError:
        log.error("shutdown timed out; acknowledged beacons are in the WAL regardless")
        return 1
    log.info("stopped", extra={"role": role, "seconds": round(time.monotonic() - started, 3)})
    return 0


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    log.error("supervisor is gone; stopping")
    stop.set()


def _child(settings: Settings, role: Role) -> None:
    """Entry point of a child process of `--workers N`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(settings.log_level, settings.log_format)
    sys.exit(uvloop.run(serve_role(settings, role, child=True)))


def supervise(settings: Settings) -> int:
    """Run N fronts and one sessionizer; restart a child that dies; stop them in order."""
    metrics_dir = tempfile.mkdtemp(prefix="rumline-metrics-")
    # prometheus-client's multiprocess mode: every child writes its values under this dir
    # and any front merges them when scraped (see metrics.py).
    os.environ[MULTIPROC_ENV] = metrics_dir
    spawn = multiprocessing.get_context("spawn")
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def start(role: Role, index: int) -> BaseProcess:
        process = spawn.Process(target=_child, args=(settings, role), name=f"{role}-{index}")
        process.start()
        log.info("started child", extra={"role": role, "child_pid": process.pid})
        return process

    children: dict[tuple[Role, int], BaseProcess] = {("sessionizer", 0): start("sessionizer", 0)}
    for i in range(settings.workers):
        children[("front", i)] = start("front", i)
    started_at = dict.fromkeys(children, time.monotonic())
    quick_exits = dict.fromkeys(children, 0)
    failed = False
    try:
        while not stopping:
            time.sleep(0.1)
            for key, process in list(children.items()):
                if process.is_alive() or stopping:
                    continue
                mark_process_dead(process.pid or 0)
                lived = time.monotonic() - started_at[key]
                quick_exits[key] = quick_exits[key] + 1 if lived < QUICK_EXIT_S else 0
                if quick_exits[key] >= MAX_QUICK_EXITS:  # e.g. the port is taken, a bad store
                    log.error("child keeps exiting at start; giving up",
                              extra={"role": key[0], "exit_code": process.exitcode})  # fmt: skip
                    stopping = failed = True
                    break
                log.error("child exited; restarting it",
                          extra={"role": key[0], "child_pid": process.pid,
                                 "exit_code": process.exitcode})  # fmt: skip
                time.sleep(0.1 * 2 ** quick_exits[key])  # back off while it keeps failing
                children[key] = start(*key)
                started_at[key] = time.monotonic()
        log.info("stopping children")
        timeout_s = settings.shutdown_timeout_ms / 1000 + 1
        fronts = [p for (role, _), p in children.items() if role == "front"]
        code = _stop(fronts, timeout_s)
        code |= _stop([children[("sessionizer", 0)]], timeout_s)
        return 1 if failed else code
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _stop(processes: list[BaseProcess], timeout_s: float) -> int:
    """Tell the processes to stop, wait for them (SIGKILL after `timeout_s`); 0 if all exit 0."""
    for process in processes:
        if process.is_alive() and process.pid:
            os.kill(process.pid, CHILD_STOP_SIGNAL)
    deadline = time.monotonic() + timeout_s
    code = 0
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("child did not stop in time; killing it", extra={"child_pid": process.pid})
            process.kill()
            process.join()
        if process.exitcode != 0:
            code = 1
        mark_process_dead(process.pid or 0)
    return code
