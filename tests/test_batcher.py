"""The group-commit batcher's storage reserve check, without a server: `Store.space_left` is
measured at every commit near the reserve, and only every `SPACE_CHECK_S` far from it (each
measure lets go of the GIL a dozen times), with the bytes appended in between counted."""

from __future__ import annotations

import lmdb
import pytest

from collector import batcher as batcher_module
from collector.batcher import SPACE_CHECK_S, Batcher
from collector.config import load_settings
from collector.metrics import Metrics
from collector.readiness import Readiness
from collector.store import StorageFull

MIB = 1 << 20


class SpaceStore:
    """A `Store` stand-in with a settable `space_left` that counts its measures."""

    def __init__(self, space: int) -> None:
        self.space = space
        self.measures = 0

    def space_left(self, txn: lmdb.Transaction) -> int:
        self.measures += 1
        return self.space


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(batcher_module.time, "monotonic", lambda: now[0])
    return now


def batcher_over(store: SpaceStore, reserve: int) -> Batcher:
    settings = load_settings(env={"RUMLINE_STORAGE_RESERVE": str(reserve)})
    return Batcher(store, settings, Metrics(), Readiness())  # type: ignore[arg-type]


def commit(batcher: Batcher, size: int) -> None:
    """What `_commit` does around the append: the check, then count what was appended."""
    batcher._check_space(None, size)  # type: ignore[arg-type]
    batcher._appended += size


def test_far_from_the_reserve_space_is_measured_once_per_interval(clock: list[float]) -> None:
    store = SpaceStore(100 * MIB)
    batcher = batcher_over(store, 2 * MIB)
    for _ in range(50):
        commit(batcher, 10_000)
    assert store.measures == 1
    clock[0] += SPACE_CHECK_S
    commit(batcher, 10_000)
    assert store.measures == 2


def test_appended_bytes_bring_the_measure_back_to_every_commit(clock: list[float]) -> None:
    store = SpaceStore(10 * MIB)
    batcher = batcher_over(store, 2 * MIB)
    commit(batcher, 6 * MIB)  # measured: 10 MiB left, 6 MiB appended
    assert store.measures == 1
    store.space = 4 * MIB  # what the append really left
    commit(batcher, 100_000)  # 4 MiB counted as left: within twice the reserve, measured
    commit(batcher, 100_000)
    assert store.measures == 3
    store.space = 2 * MIB + 50_000
    with pytest.raises(StorageFull):
        commit(batcher, 100_000)
    assert store.measures == 4


def test_a_commit_that_would_eat_into_the_reserve_fails_at_once(clock: list[float]) -> None:
    store = SpaceStore(2 * MIB + 10)
    batcher = batcher_over(store, 2 * MIB)
    with pytest.raises(StorageFull):
        commit(batcher, 100)
    store.space = 3 * MIB
    commit(batcher, 100)  # space came back: measured again, accepted
    assert store.measures == 2
