"""rumline: a real-user-monitoring edge collector with a Rust sessionizer core."""

from collector._core import (
    ClosedSession,
    IngestResult,
    Sessionizer,
    mask_ip,
    parse_user_agent,
    prepare,
)

__all__ = [
    "ClosedSession",
    "IngestResult",
    "Sessionizer",
    "mask_ip",
    "parse_user_agent",
    "prepare",
]
