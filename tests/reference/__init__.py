"""Pure-Python reference of docs/sessionizer.md (the executable specification) and fixtures."""

from tests.reference.sessionizer import (
    ClosedSession,
    IngestResult,
    Sessionizer,
    make_settings,
    parse_records,
    prepare,
)

__all__ = [
    "ClosedSession",
    "IngestResult",
    "Sessionizer",
    "make_settings",
    "parse_records",
    "prepare",
]
