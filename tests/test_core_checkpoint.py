"""Checkpoint → restore into a fresh Sessionizer → continue gives exactly the closed sessions of
an uninterrupted run (the durability contract: a restart changes nothing, DESIGN.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector import _core
from tests.reference import sessionizer as ref
from tests.reference.framing import RECV_MS, beacon, frame, load
from tests.reference.streams import Step, stream

IMPLEMENTATIONS: dict[str, Callable[..., Any]] = {
    "rust": _core.Sessionizer,
    "reference": ref.Sessionizer,
}


@st.composite
def interrupted_stream(draw: st.DrawFn) -> tuple[dict[str, Any], list[Step], set[int]]:
    """A stream without live() calls (a restored process republishes every open session) and
    the steps before which the process restarts."""
    config, steps = draw(stream())
    steps = [step for step in steps if step[0] != "live"]
    restarts = draw(st.sets(st.integers(0, len(steps) - 1), min_size=1, max_size=3))
    return config, steps, restarts


def step_output(sessionizer: Any, step: Step) -> tuple[Any, ...]:
    """Everything a step returns, exactly (bytes compared as bytes)."""
    result = (
        sessionizer.ingest(step[1], step[2]) if step[0] == "batch" else sessionizer.flush(step[1])
    )
    closed = [
        (c.session_id, c.app, c.user_tag, c.start_ms, c.end_ms, c.end_reason, c.summary, c.detail)
        for c in result.closed
    ]
    return (
        closed,
        [tuple(r) for r in result.rejected],
        result.beacons,
        result.events,
        dict(result.dropped),
        sorted(result.actions),
        sorted(result.errors),
        sorted(result.vitals),
        sessionizer.open_count(),
    )


def check_restart_changes_nothing(
    make: Callable[..., Any], config: dict[str, Any], steps: list[Step], restarts: set[int]
) -> None:
    straight = make(config)
    expected = [step_output(straight, step) for step in steps]

    current = make(config)
    for number, step in enumerate(steps):
        if number in restarts:
            state = current.checkpoint()
            open_before = current.open_count()
            current = make(config)
            current.restore(state)
            assert current.open_count() == open_before
            assert current.checkpoint() == state, "a restored state checkpoints to the same bytes"
        assert step_output(current, step) == expected[number], f"step {number} after a restart"


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(interrupted_stream())
def test_rust_restart_changes_nothing(case: tuple[dict[str, Any], list[Step], set[int]]) -> None:
    check_restart_changes_nothing(_core.Sessionizer, *case)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(interrupted_stream())
def test_reference_restart_changes_nothing(
    case: tuple[dict[str, Any], list[Step], set[int]],
) -> None:
    check_restart_changes_nothing(ref.Sessionizer, *case)


@pytest.mark.parametrize("name", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize(
    "garbage",
    [b"garbage", b"", b"\xff\x00\x13", b"{}", b'{"version": 99}'],
    ids=["text", "empty", "binary", "empty-object", "unknown-version"],
)
def test_restoring_garbage_raises_and_keeps_the_sessionizer_usable(
    name: str, garbage: bytes
) -> None:
    sessionizer = IMPLEMENTATIONS[name]({"timeout_ms": 60_000})
    sessionizer.ingest(frame(beacon(events=[load()])), RECV_MS)
    state = sessionizer.checkpoint()

    with pytest.raises(ValueError):
        sessionizer.restore(garbage)
    with pytest.raises(ValueError):
        sessionizer.restore(state[: len(state) // 2])

    assert sessionizer.checkpoint() == state, "a failed restore changes nothing"
    assert sessionizer.open_count() == 1
    sessionizer.ingest(frame(beacon(events=[load()]), recv_ms=RECV_MS + 1000), RECV_MS + 1000)
    (closed,) = sessionizer.flush(RECV_MS + 1000 + 60_000).closed
    assert closed.end_reason == "timeout"
    assert b'"action_count":2' in closed.summary
