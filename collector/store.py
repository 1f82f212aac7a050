"""LMDB environment: the WAL, checkpoints, closed sessions and their indexes, live sessions.

Layout (one environment, named databases; integers are unsigned big-endian so keys sort by
value):

| db         | key                                                   | value                  |
|------------|-------------------------------------------------------|------------------------|
| `wal`      | u64 seq                                               | u8 kind + payload      |
| `meta`     | b"checkpoint", b"wal_pos", b"clock", b"sessionizer"   | state, u64, u64, JSON  |
| `sessions` | session_id (ascii)                                    | summary JSON           |
| `details`  | session_id                                            | detail (see below)     |
| `by_time`  | u64 start_ms + session_id                             | b""                    |
| `by_user`  | user_tag utf-8 + b"\\x00" + u64 start_ms + session_id  | b""                    |
| `by_app`   | app + b"\\x00" + u64 start_ms + session_id             | b""                    |
| `live`     | session_id                                            | summary of an open one |
| `live_details` | session_id                                        | its timeline so far    |
| `live_by_time` etc. | as `by_time`, `by_user`, `by_app`, for the `live` sessions          |
| `live_keys` | session_id                           | u64 start + app + b"\\x00" + user_tag |

`details` and `live_details` hold the detail JSON in its stored form (`_core.pack_detail`:
LZ4-compressed behind a tag byte, ~2.8× smaller for typical visits); a value that starts
with `{` is plain JSON (written before compression, or not smaller compressed).
`_core.unpack_detail` reads both.

The open sessions are indexed like the closed ones, so that a query reads the live sessions it
can match, not all of them (a busy site has 100k open). `put_live` moves a session's index
entries when its start or user tag changed since its last publication; `put_closed` removes
them with its live entry. `live_keys` says what they were made of without parsing the
summary (that parse tripled the cost of republishing a session).

`meta`: the core's checkpointed state, the WAL position it includes, the sessionizer clock
(the last tick), and the sessionizer's status for the fronts' `/readyz`.

WAL entries are of two kinds. `RECORDS`: the framed records of one group commit (the bytes
`_core.prepare` returned). `TICK`: a u64 wall-clock time at which the sessionizer calls
`flush(now)`. Ticks are written into the WAL rather than taken from the clock when replaying
so that the core sees exactly the same sequence of calls after a restart as before it: replay
is deterministic, and a closed session rewritten by a replay is byte-identical (idempotent).

Sequence numbers are assigned inside the write transaction (last key + 1), so WAL order is
commit order, across every process that appends, without gaps a reader could observe.

Concurrency: LMDB lets one process-wide writer and any number of readers run at once (readers
never block writers). Growing the map (`set_mapsize`) is only allowed while the process has
no transaction open, so every transaction here goes through a small shared/exclusive gate:
`read()` and `write()` take it shared; a map resize takes it exclusive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import lmdb
import orjson

from collector._core import pack_detail

if TYPE_CHECKING:
    from collector._core import ClosedSession

log = logging.getLogger(__name__)

DB_NAMES = (
    "wal", "meta", "sessions", "details", "by_time", "by_user", "by_app", "live", "live_details",
    "live_by_time", "live_by_user", "live_by_app", "live_keys",
)  # fmt: skip
# The index dbs of closed and of open sessions, in the order of `index_keys`.
CLOSED_INDEXES = ("by_time", "by_app", "by_user")
LIVE_INDEXES = ("live_by_time", "live_by_app", "live_by_user")
U64 = struct.Struct(">Q")
T = TypeVar("T")

# WAL entry kinds (first byte of the value).
RECORDS = 1
TICK = 2
_RECORDS_PREFIX = bytes([RECORDS])

META_CHECKPOINT = b"checkpoint"
META_WAL_POS = b"wal_pos"
META_CLOCK = b"clock"
META_SESSIONIZER = b"sessionizer"

# LMDB's default maximum key size is 511 bytes; a user tag is at most 256 characters (1 KiB
# of UTF-8), so index keys carry at most this many bytes of it. Whoever looks a tag up must
# compare the summary's `user_tag` when the tag is this long (or contains NUL).
MAX_TAG_KEY_BYTES = 400


class StorageFull(Exception):
    """A WAL append was refused: it would leave less than the reserve for the sessionizer."""


def time_key(start_ms: int, session_id: str) -> bytes:
    return U64.pack(max(start_ms, 0)) + session_id.encode()


def tag_prefix(tag: str) -> bytes:
    """The key prefix of every index entry of `tag` (user tag in `by_user`, app in `by_app`)."""
    return tag.encode()[:MAX_TAG_KEY_BYTES] + b"\x00"


def tag_key(tag: str, start_ms: int, session_id: str) -> bytes:
    return tag_prefix(tag) + time_key(start_ms, session_id)


def index_keys(
    session_id: str, start_ms: int, app: str, user_tag: str | None
) -> tuple[bytes, bytes, bytes | None]:
    """A session's keys in the time, app and user indexes (None: no user tag)."""
    return (
        time_key(start_ms, session_id),
        tag_key(app, start_ms, session_id),
        tag_key(user_tag, start_ms, session_id) if user_tag else None,
    )


def live_keys_value(start_ms: int, app: str, user_tag: str | None) -> bytes:
    """The `live_keys` value of an open session: what its index keys are made of."""
    return U64.pack(max(start_ms, 0)) + app.encode() + b"\x00" + (user_tag or "").encode()


def live_index_keys(session_id: str, value: bytes) -> tuple[bytes, bytes, bytes | None]:
    """The index keys of an open session from its `live_keys` value (apps hold no NUL)."""
    app, _, user_tag = value[U64.size:].partition(b"\x00")
    return index_keys(session_id, U64.unpack_from(value)[0], app.decode(), user_tag.decode())


def summary_index_keys(
    session_id: str, summary: dict
) -> tuple[bytes, bytes | None, bytes | None] | None:
    """The index keys a stored summary was written with (None without a valid start)."""
    start, app, user_tag = summary.get("start"), summary.get("app"), summary.get("user_tag")
    if not isinstance(start, int):
        return None
    return (
        time_key(start, session_id),
        tag_key(app, start, session_id) if isinstance(app, str) else None,
        tag_key(user_tag, start, session_id) if isinstance(user_tag, str) and user_tag else None,
    )


class _Gate:
    """Shared/exclusive lock: transactions share it, a map resize holds it alone (and is
    preferred, so a steady stream of readers cannot starve it)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._waiting = 0
        self._exclusive = False

    def acquire_shared(self) -> None:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1

    def release_shared(self) -> None:
        with self._cond:
            self._shared -= 1
            if not self._shared:
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class Store:
    """The LMDB environment and its databases (`dbs[name]`).

    Use `read()` for read transactions and `write(fn)` for write transactions: both handle a
    map grown by another process, and `write` grows the map itself when it is full.
    """

    def __init__(
        self,
        path: Path,
        *,
        map_size: int = 1 << 30,
        max_map_size: int = 1 << 40,
        sync: bool = True,
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_map_size = max_map_size
        # sync=True: a commit fdatasyncs its data pages before it writes the meta page that
        # points at them, so a crash at any moment leaves a consistent store (LMDB's
        # MDB_NOMETASYNC keeps ACI). The meta page itself is synced by `write(durable=True)`
        # after the commit, outside LMDB's one-writer lock — "a 2xx means durable" rests on
        # that — so the commit of another front or of the sessionizer runs during that sync
        # instead of waiting for two. Other writes (sessions, checkpoints: all derived from
        # the WAL again on replay) are made durable by the next commit's data sync.
        self._sync = sync
        self.env = lmdb.open(
            str(path), map_size=map_size, max_dbs=len(DB_NAMES) + 2, sync=sync,
            metasync=False, max_readers=512, readahead=False,
        )  # fmt: skip
        self.dbs = {name: self.env.open_db(name.encode()) for name in DB_NAMES}
        self._gate = _Gate()

    def close(self) -> None:
        with self._gate.exclusive():
            if self._sync:
                self.env.sync(True)  # the last commit's meta page (see `__init__`)
            self.env.close()

    # --- transactions -------------------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A read transaction (a consistent snapshot; it never blocks writers)."""
        txn = self._begin(write=False)
        try:
            yield txn
        finally:
            txn.abort()
            self._gate.release_shared()

    def write(self, fn: Callable[[lmdb.Transaction], T], *, durable: bool = False) -> T:
        """Run `fn` in one write transaction and commit it (its data pages fsync'ed; with
        `durable`, its meta page too before this returns: what an acknowledgement needs).
        Blocking: call it from a worker thread. When the map is full, the transaction is
        aborted, the map doubled and `fn` run again, so `fn` must only touch the transaction
        it is given."""
        while True:
            txn = self._begin(write=True)
            try:
                result = fn(txn)
                txn.commit()
                if durable and self._sync:
                    # every transaction committed before the sync starts is on disk after it
                    self.env.sync(True)
                return result
            except lmdb.MapFullError:
                txn.abort()
            except BaseException:
                txn.abort()
                raise
            finally:
                self._gate.release_shared()
            self._grow()

    def _begin(self, *, write: bool) -> lmdb.Transaction:
        """Begin a transaction; returns with the gate held shared."""
        while True:
            self._gate.acquire_shared()
            try:
                return self.env.begin(write=write)
            except lmdb.MapResizedError:
                self._gate.release_shared()
            except BaseException:
                self._gate.release_shared()
                raise
            # Another process grew the map beyond ours: adopt its size, then begin again.
            with self._gate.exclusive():
                self.env.set_mapsize(0)

    def _grow(self) -> None:
        with self._gate.exclusive():
            current = self.env.info()["map_size"]
            if current >= self.max_map_size:
                raise lmdb.MapFullError(
                    f"LMDB map is full at its maximum size ({current} bytes, max_map_size)"
                )
            new = min(current * 2, self.max_map_size)
            self.env.set_mapsize(new)
            log.warning("grew the LMDB map", extra={"map_size": new})

    def space_left(self, txn: lmdb.Transaction) -> int:
        """Bytes that can still be written: what the map may still grow by, bounded by the
        free pages inside the file plus the free space of its file system. Pages in use are
        counted from the databases themselves (freed pages are reusable), so the estimate is
        a little optimistic while an old reader pins freed pages: the reserve covers that."""
        pages = 3  # two meta pages and the free-page database's root
        for db in self.dbs.values():
            stat = txn.stat(db)
            pages += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        env_stat = self.env.stat()
        pages += env_stat["branch_pages"] + env_stat["leaf_pages"] + env_stat["overflow_pages"]
        psize = env_stat["psize"]
        in_file = (self.env.info()["last_pgno"] + 1 - pages) * psize
        disk = os.statvfs(self.path)
        return min(self.max_map_size - pages * psize, in_file + disk.f_bavail * disk.f_frsize)

    def used_bytes(self) -> int:
        """Bytes of the map in use: (last page number + 1) × page size."""
        return (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]

    # --- WAL ------------------------------------------------------------------------------

    def _next_seq(self, txn: lmdb.Transaction) -> int:
        cursor = txn.cursor(db=self.dbs["wal"])
        if cursor.last():
            return U64.unpack(cursor.key())[0] + 1
        # Empty WAL (all trimmed): continue after the checkpointed position.
        return self.wal_pos(txn) + 1

    def append_records(self, txn: lmdb.Transaction, records: bytes) -> int:
        """Append one group commit's framed records; the sequence number it got."""
        seq = self._next_seq(txn)
        txn.put(U64.pack(seq), _RECORDS_PREFIX + records, db=self.dbs["wal"], append=True)
        return seq

    def append_tick(self, txn: lmdb.Transaction, now_ms: int) -> int:
        seq = self._next_seq(txn)
        txn.put(U64.pack(seq), bytes([TICK]) + U64.pack(now_ms), db=self.dbs["wal"], append=True)
        return seq

    def read_wal(self, after: int, max_bytes: int) -> tuple[list[tuple[int, int, bytes]], bool]:
        """WAL entries with seq > `after`, in order, as (seq, kind, payload), about `max_bytes`
        in all (at least one entry when there is one), and whether more entries follow."""
        entries: list[tuple[int, int, bytes]] = []
        total = 0
        with self.read() as txn:
            cursor = txn.cursor(db=self.dbs["wal"])
            if not cursor.set_range(U64.pack(after + 1)):
                return entries, False
            for key, value in cursor:
                if total >= max_bytes:
                    return entries, True
                entries.append((U64.unpack(key)[0], value[0], value[1:]))
                total += len(value)
        return entries, False

    def wal_head(self) -> int:
        """The last sequence number written (0 for a new store)."""
        with self.read() as txn:
            cursor = txn.cursor(db=self.dbs["wal"])
            if cursor.last():
                return U64.unpack(cursor.key())[0]
            return self.wal_pos(txn)

    def trim_wal(self, txn: lmdb.Transaction, upto: int) -> int:
        """Delete WAL entries with seq ≤ `upto` (they are in a committed checkpoint)."""
        cursor = txn.cursor(db=self.dbs["wal"])
        deleted = 0
        cursor.first()
        # delete() moves the cursor to the next entry; past the last one the key is empty.
        while (key := cursor.key()) and U64.unpack(key)[0] <= upto:
            cursor.delete()
            deleted += 1
        return deleted

    # --- checkpoint -----------------------------------------------------------------------

    def wal_pos(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(META_WAL_POS, db=self.dbs["meta"])
        return U64.unpack(raw)[0] if raw else 0

    def load_checkpoint(self) -> tuple[bytes | None, int, int]:
        """(core state or None, WAL position it includes, sessionizer clock in ms)."""
        with self.read() as txn:
            meta = self.dbs["meta"]
            state = txn.get(META_CHECKPOINT, db=meta)
            clock = txn.get(META_CLOCK, db=meta)
            return state, self.wal_pos(txn), U64.unpack(clock)[0] if clock else 0

    def put_checkpoint(self, txn: lmdb.Transaction, state: bytes, wal_pos: int, clock: int) -> None:
        meta = self.dbs["meta"]
        txn.put(META_CHECKPOINT, state, db=meta)
        txn.put(META_WAL_POS, U64.pack(wal_pos), db=meta)
        txn.put(META_CLOCK, U64.pack(clock), db=meta)

    # --- sessions ---------------------------------------------------------------------------

    def put_closed(self, txn: lmdb.Transaction, session: ClosedSession) -> None:
        """Store a closed session with its indexes and drop its live entry. Idempotent: a
        replay that closes the same session again overwrites it (and its old index keys)."""
        sid = session.session_id.encode()
        dbs = self.dbs
        old = txn.get(sid, db=dbs["sessions"])
        if old is not None:
            self._delete_closed_indexes(txn, session.session_id, old)
        txn.put(sid, session.summary, db=dbs["sessions"])
        txn.put(sid, pack_detail(session.detail), db=dbs["details"])
        keys = index_keys(session.session_id, session.start_ms, session.app, session.user_tag)
        self._put_indexes(txn, CLOSED_INDEXES, keys)
        made_of = txn.get(sid, db=dbs["live_keys"])
        if made_of is not None:
            self._delete_keys(txn, LIVE_INDEXES, live_index_keys(session.session_id, made_of))
            txn.delete(sid, db=dbs["live_keys"])
        txn.delete(sid, db=dbs["live"])
        txn.delete(sid, db=dbs["live_details"])

    def _put_indexes(
        self, txn: lmdb.Transaction, names: tuple[str, ...], keys: tuple[bytes | None, ...]
    ) -> None:
        for name, key in zip(names, keys, strict=True):
            if key is not None:
                txn.put(key, b"", db=self.dbs[name])

    def _delete_closed_indexes(
        self, txn: lmdb.Transaction, session_id: str, summary: bytes
    ) -> None:
        """Delete the index entries that the stored closed `summary` was written with (open
        sessions keep theirs in `live_keys`)."""
        keys = summary_index_keys(session_id, orjson.loads(summary))
        if keys is not None:
            self._delete_keys(txn, CLOSED_INDEXES, keys)

    def _delete_keys(
        self, txn: lmdb.Transaction, names: tuple[str, ...], keys: tuple[bytes | None, ...]
    ) -> None:
        for name, key in zip(names, keys, strict=True):
            if key is not None:
                txn.delete(key, db=self.dbs[name])

    def delete_closed(self, txn: lmdb.Transaction, session_id: str) -> None:
        """Delete a closed session: summary, detail and every index entry (retention)."""
        sid = session_id.encode()
        old = txn.get(sid, db=self.dbs["sessions"])
        if old is not None:
            self._delete_closed_indexes(txn, session_id, old)
        txn.delete(sid, db=self.dbs["sessions"])
        txn.delete(sid, db=self.dbs["details"])

    def put_live(self, txn: lmdb.Transaction, sessions: Iterable[ClosedSession]) -> int:
        """Publish the summaries and timelines of open sessions (replacing older ones; an
        empty detail, from `live(details=False)`, keeps the timeline published before), with
        their index entries; how many."""
        live, live_details, made = self.dbs["live"], self.dbs["live_details"], self.dbs["live_keys"]
        n = 0
        for session in sessions:
            key = session.session_id.encode()
            # Its index entries move only when a late action moved its start earlier, or when
            # it got a user tag: mostly one get and a comparison.
            made_of = live_keys_value(session.start_ms, session.app, session.user_tag)
            old = txn.get(key, db=made)
            if old != made_of:
                if old is not None:
                    self._delete_keys(txn, LIVE_INDEXES, live_index_keys(session.session_id, old))
                self._put_indexes(txn, LIVE_INDEXES, live_index_keys(session.session_id, made_of))
                txn.put(key, made_of, db=made)
            txn.put(key, session.summary, db=live)
            if session.detail:
                txn.put(key, pack_detail(session.detail), db=live_details)
            n += 1
        return n

    def clear_live(self, txn: lmdb.Transaction) -> None:
        for name in ("live", "live_details", "live_keys", *LIVE_INDEXES):
            txn.drop(self.dbs[name], delete=False)

    # --- sessionizer status (read by every front's /readyz) --------------------------------

    def put_sessionizer_status(self, txn: lmdb.Transaction, state: str) -> None:
        status = {"pid": os.getpid(), "state": state, "at": int(time.time() * 1000)}
        txn.put(META_SESSIONIZER, orjson.dumps(status), db=self.dbs["meta"])

    def sessionizer_status(self) -> dict | None:
        with self.read() as txn:
            raw = txn.get(META_SESSIONIZER, db=self.dbs["meta"])
        return orjson.loads(raw) if raw else None
