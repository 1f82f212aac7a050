"""Why this process should not get traffic right now; `/readyz` fails while any reason holds.

Reasons: `recovering` (the sessionizer is replaying the WAL from its checkpoint),
`overloaded` (the group-commit queue is full), `draining` (SIGTERM received), `storage_full`
/ `storage_error` (the last WAL commit failed for lack of space / a disk error).
"""

from __future__ import annotations


class Readiness:
    def __init__(self) -> None:
        self._reasons: set[str] = set()

    def set(self, reason: str, active: bool = True) -> None:
        if active:
            self._reasons.add(reason)
        else:
            self._reasons.discard(reason)

    @property
    def reasons(self) -> list[str]:
        return sorted(self._reasons)

    @property
    def ready(self) -> bool:
        return not self._reasons
