"""Profile the query path in-process over a store built by `bench_store.py --store-dir DIR`.

    .venv/bin/python loadtests/profile_query.py --store-dir DIR [--n 200] [--profile]

Runs the three benchmark queries (user-tag lookup, 24-hour segmentation, detail) through
`collector.query` exactly as the HTTP handlers do (`parse_query` → `find_sessions`,
`get_session`), without HTTP: prints the wall time per call (p50 / p99) and, with `--profile`,
where that time goes (pyinstrument, a sampling profiler; `pip install pyinstrument`).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "loadtests"))

from bench_store import Manifest, call_for, percentile, query_paths  # noqa: E402

from collector.query import LiveSummaries  # noqa: E402
from collector.store import Store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store-dir", type=Path, required=True)
    parser.add_argument("--n", type=int, default=200, help="calls per query kind")
    parser.add_argument("--profile", action="store_true", help="pyinstrument report per kind")
    args = parser.parse_args()
    manifest = Manifest.load(args.store_dir / "manifest.json")
    store = Store(args.store_dir / "data", map_size=1 << 36)
    with store.read() as txn:
        live = txn.stat(store.dbs["live"])["entries"]
    print(f"store: {manifest.stored:,} closed sessions, {live:,} live")
    try:
        for kind, paths in query_paths(manifest, random.Random(1), args.n).items():
            live_summaries = LiveSummaries()
            calls = [call_for(store, live_summaries, p) for p in paths]
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
