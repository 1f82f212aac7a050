"""Type stubs for the Rust extension `collector._core` (rules: docs/sessionizer.md)."""

from collections.abc import Mapping, Sequence
from typing import Any

__version__: str

class ClosedSession:
    """A closed (or, from `live`, an open) session ready to store."""

    session_id: str
    app: str
    user_tag: str | None
    start_ms: int
    end_ms: int
    end_reason: str | None
    summary: bytes
    detail: bytes

class IngestResult:
    closed: list[ClosedSession]
    # (record index in the batch, beacon index in the record, reason)
    rejected: list[tuple[int, int, str]]
    beacons: int
    events: int
    # reason -> count of dropped events (unknown_type, bad_event)
    dropped: dict[str, int]
    # metrics of the sessions closed by this call
    actions: list[tuple[str, str, str, int]]  # (app, type, apdex category, count)
    errors: list[tuple[str, str, int]]  # (app, kind, count)
    vitals: list[tuple[str, str, float]]  # (app, name, value)
    # more sessions were due than one call closes (max_closed_per_call): flush again
    more_due: bool

class Sessionizer:
    def __init__(self, settings: Mapping[str, Any] | Any | None = None) -> None: ...
    def ingest(self, batch: bytes, now_ms: int) -> IngestResult:
        """Apply framed WAL records (version 1, JSON, or 2, from prepare) in order, then close
        what is due at now_ms (as flush)."""
    def flush(self, now_ms: int) -> IngestResult: ...
    def live(self, details: bool = True) -> list[ClosedSession]:
        """Open sessions changed since the last call: summary (live: true) and detail; with
        details=False the detail is empty (b"") but for new sessions, and owed to the next
        call with details."""
    def checkpoint(self) -> bytes: ...
    def restore(self, state: bytes) -> None: ...
    def open_count(self) -> int: ...

def prepare(
    requests: Sequence[tuple[int, str, str, int, bytes]],
    max_events: int = 500,
    mask_ip: bool = True,
) -> tuple[bytes, list[tuple[str, str] | None], int]:
    """Validate (recv_ms, ip, user_agent, flags, body) requests; return the WAL value of the
    accepted ones (version-2 records: their beacons parsed once, docs/sessionizer.md section 1),
    a verdict per request (None or (reason, message)) and the accepted events."""

def mask_ip(ip: str) -> str | None: ...
def parse_user_agent(ua: str) -> dict[str, Any]:
    """{"browser": {family, version}, "os": {family, version}, "device_type", "robot"}"""
def pack_detail(detail: bytes) -> bytes:
    """The stored form of a session's detail JSON (LZ4 behind a tag byte, or the JSON itself
    when that is not smaller)."""
def unpack_detail(stored: bytes) -> bytes:
    """The detail JSON of a stored value of either form; ValueError when it is damaged."""
