"""`rumline backup DEST`: a consistent copy of the LMDB environment while the collector
serves.

LMDB's own copy (`mdb_env_copy2` with compaction) reads one snapshot in a read transaction,
so writers go on meanwhile and the copy is the state of one commit: every WAL entry, the
checkpoint, closed sessions and indexes as they were at that moment. Compaction leaves out
free pages (the copy is as small as the data). Restoring is starting a collector with the
copy as its data directory: it restores the checkpoint and replays the WAL after it, as after
any restart.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import lmdb


class BackupError(Exception):
    pass


def backup(data_dir: Path, dest: Path) -> int:
    """Copy the environment at `data_dir` into the new or empty directory `dest`; the size
    of the copy in bytes."""
    if not (data_dir / "data.mdb").exists():
        raise BackupError(f"{data_dir} holds no rumline data (no data.mdb)")
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    # Read-only, but with the lock file: the copy's read transaction is then registered like
    # any reader, so the collector's writers never reuse the pages it is copying.
    env = lmdb.open(str(data_dir), readonly=True, lock=True, max_dbs=16, readahead=False)
    try:
        partial = dest / "data.mdb"
        env.copy(str(dest), compact=True)
        with partial.open("rb") as f:  # the copy is on disk before we say it is done
            os.fsync(f.fileno())
        return partial.stat().st_size
    finally:
        env.close()


def run(data_dir: Path, dest: Path) -> int:
    started = time.monotonic()
    try:
        size = backup(data_dir, dest)
    except (BackupError, lmdb.Error, OSError) as err:
        print(f"rumline: backup failed: {err}", flush=True)
        return 1
    print(f"rumline: backed up {data_dir} to {dest} ({size} bytes, "
          f"{time.monotonic() - started:.1f}s)", flush=True)  # fmt: skip
    return 0
