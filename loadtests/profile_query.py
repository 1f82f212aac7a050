"""Profile the query path in-process over a store built by `bench_store.py --store-dir DIR`.

    .venv/bin/python loadtests/profile_query.py --store-dir DIR [--n 200] [--profile]
                                                [--compare GIT_REV]

Runs the benchmark queries (user-tag lookup, 24-hour segmentation, detail, the newest 50) through
`collector.query` exactly as the HTTP handlers do (`parse_query` → `find_sessions`,
`get_session`), without HTTP: prints the wall time per call (p50 / p99) and, with `--profile`,
where that time goes (pyinstrument, a sampling profiler; `pip install pyinstrument`).
`--compare REV` also runs `collector/query.py` as it was at that git revision, call for call
alternating with the current one on the same queries, and prints the CPU time of both (a
before/after ratio measured in one run).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "loadtests"))

from bench_store import Manifest, call_for, percentile, query_paths  # noqa: E402
from multidict import MultiDict  # noqa: E402

from collector.store import Store  # noqa: E402


def query_module_at(rev: str) -> ModuleType:
    """`collector/query.py` as of git revision `rev`, loaded as a separate module."""
    source = subprocess.run(["git", "show", f"{rev}:collector/query.py"], cwd=REPO,
                            capture_output=True, check=True).stdout  # fmt: skip
    module = ModuleType(f"query_at_{rev}")
    module.__file__ = f"{rev}:collector/query.py"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def compare(store: Store, manifest: Manifest, rev: str, n: int) -> None:
    """CPU time per call of the current query path and of `rev`'s, alternating."""
    old = query_module_at(rev)
    print(f"CPU time per call (thread time), {n} calls each, alternating: {rev} vs current")
    for kind, paths in query_paths(manifest, random.Random(2), n + n // 5).items():
        times: dict[str, list[float]] = {"old": [], "new": []}
        for i, path in enumerate(paths):
            new_call = call_for(store, path)
            old_call = old_call_for(old, store, path)
            for name, call in (("old", old_call), ("new", new_call)):
                began = time.thread_time()
                call()
                if i >= n // 5:
                    times[name].append((time.thread_time() - began) * 1000)
        o50, o99 = percentile(times["old"], 50), percentile(times["old"], 99)
        n50, n99 = percentile(times["new"], 50), percentile(times["new"], 99)
        print(f"{kind:8} {rev}: p50 {o50:7.2f} p99 {o99:7.2f} ms   current: p50 {n50:7.2f} "
              f"p99 {n99:7.2f} ms   p50 ratio {o50 / max(n50, 1e-9):5.1f}x")  # fmt: skip


def old_call_for(module: ModuleType, store: Store, path: str) -> Callable[[], Any]:
    """`call_for` for an older query module (whatever its `find_sessions` takes)."""
    route, _, query = path.partition("?")
    params: MultiDict[str] = MultiDict(
        tuple(pair.split("=", 1)) for pair in query.split("&") if pair
    )
    if route.startswith("/api/v1/"):
        if route.startswith("/api/v1/users/"):
            q = module.parse_query(params, user=route.split("/")[4])
        elif route == "/api/v1/sessions":
            q = module.parse_query(params)
        else:
            session_id = route.rsplit("/", 1)[1]
            return lambda: module.get_session(store, session_id)
        if hasattr(module, "LiveSummaries"):  # before the open sessions were indexed
            live = module.__dict__.setdefault("_live_cache", module.LiveSummaries())
            return lambda: module.find_sessions(store, q, live=live)
        return lambda: module.find_sessions(store, q)
    raise ValueError(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store-dir", type=Path, required=True)
    parser.add_argument("--n", type=int, default=200, help="calls per query kind")
    parser.add_argument("--profile", action="store_true", help="pyinstrument report per kind")
    parser.add_argument("--compare", metavar="GIT_REV", help="also time query.py at GIT_REV")
    args = parser.parse_args()
    manifest = Manifest.load(args.store_dir / "manifest.json")
    store = Store(args.store_dir / "data", map_size=1 << 36)
    with store.read() as txn:
        live = txn.stat(store.dbs["live"])["entries"]
    print(f"store: {manifest.stored:,} closed sessions, {live:,} live")
    try:
        if args.compare:
            compare(store, manifest, args.compare, args.n)
            return
        for kind, paths in query_paths(manifest, random.Random(1), args.n).items():
            calls = [call_for(store, p) for p in paths]
            for call in calls[: args.n // 5]:  # warm-up
                call()
            times = []
            for call in calls:
                began = time.perf_counter()
                call()
                times.append((time.perf_counter() - began) * 1000)
            print(f"{kind:8} p50 {percentile(times, 50):8.2f} ms   "
                  f"p99 {percentile(times, 99):8.2f} ms")  # fmt: skip
            if args.profile:
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.0002)
                with profiler:
                    for call in calls:
                        call()
                print(profiler.output_text(unicode=True, color=False, short_mode=False))
    finally:
        store.close()


if __name__ == "__main__":
    main()
