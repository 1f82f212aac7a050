"""The Rust core and the Python reference (tests/reference) agree on every beacon stream.

The streams come from tests/reference/streams.py. Closed sessions are compared field by field
(summary and detail as parsed JSON, numbers with a tolerance), metric tuples as multisets.

The last section pins, with minimal inputs, where the Rust core does not do what
docs/sessionizer.md says; each of those tests runs against both implementations.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings

from collector import _core
from tests.reference import sessionizer as ref
from tests.reference.framing import (
    RECV_MS,
    beacon,
    custom,
    end,
    error,
    frame,
    load,
    payload_bytes,
    rage_click,
    raw_record,
    record_headers,
    vital,
    xhr,
)
from tests.reference.streams import SIDS, Step, requests, stream

TOLERANCE = 1e-6


# ---- comparing ------------------------------------------------------------------------------


def json_diff(a: Any, b: Any, path: str = "$") -> str | None:
    """Where two JSON values differ (numbers compared with a tolerance), or None."""
    a_num = isinstance(a, int | float) and not isinstance(a, bool)
    b_num = isinstance(b, int | float) and not isinstance(b, bool)
    if a_num and b_num:
        ok = math.isclose(a, b, rel_tol=1e-15, abs_tol=TOLERANCE)
        return None if ok else f"{path}: {a!r} != {b!r}"
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path}: keys {sorted(set(a) ^ set(b))} differ"
        for key in a:
            diff = json_diff(a[key], b[key], f"{path}.{key}")
            if diff:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            diff = json_diff(x, y, f"{path}[{i}]")
            if diff:
                return diff
        return None
    return None if (type(a) is type(b) and a == b) else f"{path}: {a!r} != {b!r}"


def session_view(closed: Any) -> dict[str, Any]:
    return {
        "session_id": closed.session_id,
        "app": closed.app,
        "user_tag": closed.user_tag,
        "start_ms": closed.start_ms,
        "end_ms": closed.end_ms,
        "end_reason": closed.end_reason,
        "summary": json.loads(closed.summary),
        "detail": json.loads(closed.detail) if closed.detail else None,
    }


def metrics_view(result: Any) -> dict[str, Any]:
    """Metric tuples as multisets: counts summed per label set, vitals as a sorted list."""
    actions: Counter[tuple[str, ...]] = Counter()
    for app, kind, category, count in result.actions:
        actions[(app, kind, category)] += count
    errors: Counter[tuple[str, ...]] = Counter()
    for app, kind, count in result.errors:
        errors[(app, kind)] += count
    return {
        "actions": sorted([*key, n] for key, n in actions.items() if n),
        "errors": sorted([*key, n] for key, n in errors.items() if n),
        "vitals": sorted([app, name, float(value)] for app, name, value in result.vitals),
    }


def result_view(result: Any) -> dict[str, Any]:
    return {
        "closed": [session_view(c) for c in result.closed],
        "rejected": [list(r) for r in result.rejected],
        "beacons": result.beacons,
        "events": result.events,
        "dropped": {k: v for k, v in dict(result.dropped).items() if v},
        **metrics_view(result),
    }


def assert_same(rust: Any, python: Any, what: str) -> None:
    diff = json_diff(rust, python)
    assert diff is None, f"{what}: Rust vs reference differ at {diff}"


def run_both(config: dict[str, Any], steps: list[tuple[Any, ...]], stats: bool = False) -> None:
    """Runs the steps on both implementations and compares every output. A batch step with a
    fourth item gives the Rust core that batch instead: what `_core.prepare` wrote (version 2)
    for the JSON records (version 1) the reference reads; `prepare` already kept the refused
    requests and the damaged records out, so rejections are compared only to be none."""
    rust, python = _core.Sessionizer(dict(config)), ref.Sessionizer(dict(config))
    for number, step in enumerate(steps):
        what = f"step {number} {step[0]}"
        if step[0] == "live":
            rust_live = sorted((session_view(s) for s in rust.live()), key=str)
            python_live = sorted((session_view(s) for s in python.live()), key=str)
            assert_same(rust_live, python_live, what)
        else:
            if step[0] == "batch":
                rust_batch = step[3] if len(step) > 3 else step[1]
                rust_result = rust.ingest(rust_batch, step[2])
                python_result = python.ingest(step[1], step[2])
            else:
                rust_result, python_result = rust.flush(step[1]), python.flush(step[1])
            rust_view, python_view = result_view(rust_result), result_view(python_result)
            if len(step) > 3:
                assert rust_view.pop("rejected") == [], what
                python_view.pop("rejected")
            assert_same(rust_view, python_view, what)
            if stats:  # shown by --hypothesis-show-statistics
                for closed in python_result.closed:
                    hypothesis.event(f"end_reason {closed.end_reason}")
                for _, _, reason in python_result.rejected:
                    hypothesis.event(f"rejected {reason}")
        assert rust.open_count() == python.open_count(), what
    assert rust.open_count() == 0


# ---- the properties -------------------------------------------------------------------------


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stream())
def test_rust_core_matches_reference(case: tuple[dict[str, Any], list[Step]]) -> None:
    config, steps = case
    run_both(config, steps, stats=True)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stream(quiet=True))
def test_long_quiet_sessions_match_reference(case: tuple[dict[str, Any], list[Step]]) -> None:
    """Steady beacons with one event each: sessions live until the duration limit."""
    config, steps = case
    run_both(config, steps, stats=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_prepare_matches_reference(case: tuple[list[Any], int, bool]) -> None:
    """Same verdicts and event counts; the core's parsed records (version 2) say what the
    reference's JSON records (version 1) say: same headers, and ingested they give the same
    sessions."""
    batch, max_events, mask = case
    rust_wal, rust_verdicts, rust_events = _core.prepare(batch, max_events, mask)
    ref_wal, ref_verdicts, ref_events = ref.prepare(batch, max_events, mask)
    reasons = [v if v is None else v[0] for v in rust_verdicts]
    assert reasons == [v if v is None else v[0] for v in ref_verdicts]
    assert all(v is None or v[1] for v in rust_verdicts), "every rejection has a message"
    assert rust_events == ref_events
    rust_headers, ref_headers = record_headers(rust_wal), record_headers(ref_wal)
    assert {h[0] for h in rust_headers} <= {2} and {h[0] for h in ref_headers} <= {1}
    assert [h[1:] for h in rust_headers] == [h[1:] for h in ref_headers]
    config = {"max_events": max_events, "mask_ip": mask}
    run_both(config, [("batch", ref_wal, RECV_MS, rust_wal), ("flush", RECV_MS + 10**9)])


def prepared(batch: bytes, config: dict[str, Any]) -> bytes:
    """What the fronts would have written for the intact records of a batch of JSON records:
    `_core.prepare` of their requests, with the same settings (damaged records and refused
    requests never reach the WAL)."""
    requests = [
        (r.recv_ms, r.ip, r.user_agent, r.flags, r.payload)
        for r in ref.parse_records(batch)
        if r is not None
    ]
    wal, _, _ = _core.prepare(requests, config.get("max_events", 500), config.get("mask_ip", True))
    return wal


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stream())
def test_parsed_records_give_what_json_records_give(
    case: tuple[dict[str, Any], list[Step]],
) -> None:
    """The sessionizer fed what `prepare` writes (version 2, parsed once by the front) closes
    exactly the sessions the reference closes from the same requests as JSON (version 1)."""
    config, steps = case
    steps = [(*step, prepared(step[1], config)) if step[0] == "batch" else step for step in steps]
    run_both(config, steps)


def test_a_fixed_stream_reaching_every_closing_rule() -> None:
    """A hand-written stream closes one session per end_reason; both sides agree on it."""
    config = {"timeout_ms": 60_000, "max_duration_ms": 180_000, "max_actions": 3}

    def batch(events: list[Any], recv_ms: int) -> Step:
        body = {"app": "shop", "sid": SIDS[0], "events": events}
        return ("batch", frame(body, recv_ms=recv_ms), recv_ms)

    steps = [batch([{"type": "custom", "dur": 3000}] * 4, RECV_MS)]  # action_limit
    steps += [batch([], RECV_MS + i * 50_000) for i in range(1, 5)]  # duration_limit at 200 s
    steps += [batch([{"type": "end"}], RECV_MS + 250_000)]  # end_event
    steps += [batch([], RECV_MS + 260_000), ("flush", RECV_MS + 320_000)]  # timeout
    python = ref.Sessionizer(config)
    reasons = [
        closed.end_reason
        for step in steps
        for closed in (
            python.ingest(step[1], step[2]) if step[0] == "batch" else python.flush(step[1])
        ).closed
    ]
    assert reasons == ["action_limit", "duration_limit", "end_event", "timeout"]
    run_both(config, steps)


def test_fixed_edge_cases_match_reference() -> None:
    """Limits a random stream rarely reaches: 50 properties, 100 action names, 300 resources,
    every string limit (with PII across the cut and non-ASCII text), boundary numbers."""
    long_name = "n" * 2040 + " mail daniel.adams@example.com and 4111 1111 1111 1111"
    wide = "\u00e9\U0001f600" * 1100  # 2200 scalar values, more bytes
    events = [
        *({"type": "property", "key": f"p{i}", "value": "v"} for i in range(55)),
        {"type": "property", "key": "k" * 64, "value": "x" * 600},
        *({"type": "custom", "name": f"click {i}", "dur": i * 100} for i in range(120)),
        load(name=long_name, url=wide, timing={"k" * 70: 1, "flag": True, "none": None}),
        load(resources=[{"url": f"/r/{i}", "size": i, "status": 200 + i} for i in range(305)]),
        load(start=0, dur=86_400_000),
        load(start=10**13, dur=0.25),
        xhr(status=999, method="M" * 300),
        xhr(status=400, dur=1),
        error(message="m" * 1100, stack="s" * 9000, kind="request"),
        rage_click(target="t" * 300, count=7),
        {"type": "identify", "user": "u" * 300},
        vital(name="cls", value=0.1),
        vital(name="cls", value=0.25),
        vital(name="TTFB", value=1800.5),
    ]
    body = beacon(vid="v" * 300, device={"screen": "s" * 300}, page={"url": wide}, events=events)
    steps: list[Step] = [
        ("batch", frame(body), RECV_MS),
        ("live",),
        ("batch", frame(beacon(sent=RECV_MS + 0.5, events=[custom(start=RECV_MS - 1.5)])), RECV_MS),
        ("flush", RECV_MS + 10**9),
    ]
    run_both({}, steps)
    run_both({"scrub_pii": False, "max_actions": 500, "mask_ip": False}, steps)


# ---- rules pinned with minimal inputs --------------------------------------------------------
# Each test states a rule of docs/sessionizer.md with the smallest input that shows it, and runs
# against both implementations. Most were found by the properties above, where the core and the
# doc once disagreed.

IMPLEMENTATIONS: dict[str, Callable[..., Any]] = {
    "rust": _core.Sessionizer,
    "reference": ref.Sessionizer,
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def core(request: pytest.FixtureRequest) -> Callable[..., Any]:
    return IMPLEMENTATIONS[request.param]


def closed_after(sessionizer: Any, batch: bytes) -> list[Any]:
    """Closed sessions after ingesting `batch` and flushing far in the future."""
    return [*sessionizer.ingest(batch, RECV_MS).closed, *sessionizer.flush(RECV_MS + 10**9).closed]


def test_doc_1_a_bad_version_record_is_skipped_and_the_next_one_applied(core: Any) -> None:
    """§1: a record of an unknown version is reported (bad_record) and skipped; its length
    prefix is intact, so the records after it in the same batch still count."""
    bad_version = raw_record(b"\x09" + frame(beacon())[5:])
    result = core().ingest(bad_version + frame(beacon()), RECV_MS)
    assert [tuple(r) for r in result.rejected] == [(0, 0, "bad_record")]
    assert result.beacons == 1


def test_doc_1_a_cut_header_inside_an_intact_frame_is_skipped(core: Any) -> None:
    """§1: a body too short for its ip_len is cut short: rejected and skipped, not the end."""
    body = frame(beacon())[4:]
    cut = raw_record(body[:10] + b"\xff\x00" + body[12:])
    result = core().ingest(cut + frame(beacon()), RECV_MS)
    assert [tuple(r) for r in result.rejected] == [(0, 0, "bad_record")]
    assert result.beacons == 1


@pytest.mark.parametrize(
    ("duplicated", "reason"),
    [('"sent": 1', "bad_json"), ('"x": 1, "x": 2', None)],
    ids=["read-by-the-core", "ignored"],
)
def test_doc_1_a_duplicate_key_in_a_beacon(core: Any, duplicated: str, reason: str) -> None:
    """§1: a duplicate of a key the core reads makes the request bad_json; duplicates of other
    keys are ignored like the keys themselves."""
    body = b"{" + duplicated.encode() + b", " + payload_bytes(beacon(sent=RECV_MS))[1:]
    result = core().ingest(frame(body), RECV_MS)
    assert [tuple(r) for r in result.rejected] == ([(0, 0, reason)] if reason else [])


@pytest.mark.parametrize(
    ("duplicated", "reason"),
    [('"value": 1, "value": 2', "bad_json"), ('"zz": 1, "zz": 2', None)],
    ids=["read-by-the-core", "ignored"],
)
def test_doc_1_a_duplicate_key_in_an_event(core: Any, duplicated: str, reason: str) -> None:
    event = "{" + duplicated + ", " + json.dumps(load())[1:]
    body = json.dumps(beacon()).replace('"events": []', f'"events": [{event}]')
    result = core().ingest(frame(body), RECV_MS)
    assert [tuple(r) for r in result.rejected] == ([(0, 0, reason)] if reason else [])


def test_duplicates_inside_timing_and_resources(core: Any) -> None:
    """§1: inside `timing` the last value of a key wins. Not in the doc (the core's choice): a
    resource entry with a duplicate of a field the core reads is skipped."""
    event = (
        '{"type": "load", "timing": {"ttfb": 1, "ttfb": 2},'
        ' "resources": [{"url": "/a", "url": "/b"}, {"url": "/c", "x": 1, "x": 2}]}'
    )
    body = json.dumps(beacon()).replace('"events": []', f'"events": [{event}]')
    (closed,) = closed_after(core(), frame(body))
    (action,) = json.loads(closed.detail)["actions"]
    assert (action["timings"], action["resources"]) == ({"ttfb": 2}, [{"url": "/c"}])


def test_doc_3_a_vital_name_is_a_name_truncated_at_2048(core: Any) -> None:
    """§3: "names, URLs and page 2048" (64 is for timing keys and resource initiators)."""
    name = "x" * 100
    (closed,) = closed_after(core(), frame(beacon(events=[vital(name=name)])))
    assert list(json.loads(closed.summary)["vitals"]) == [name.upper()]


@pytest.mark.parametrize(
    ("count", "dropped"), [(4_294_967_295, {}), (4_294_967_296, {"bad_event": 1})]
)
def test_doc_3_a_rage_click_count_is_1_to_u32_max(core: Any, count: int, dropped: dict) -> None:
    result = core().ingest(frame(beacon(events=[rage_click(count=count)])), RECV_MS)
    assert dict(result.dropped) == dropped


@pytest.mark.parametrize(
    "field", [{"timing": [1, 2]}, {"resources": {"url": "x"}}], ids=["timing", "resources"]
)
def test_doc_3_timing_and_resources_of_the_wrong_type_are_bad_events(
    core: Any, field: dict[str, Any]
) -> None:
    result = core().ingest(frame(beacon(events=[load(**field)])), RECV_MS)
    assert dict(result.dropped) == {"bad_event": 1}


@pytest.mark.parametrize("kind", [5, None, ["js"], "JS", "weird"])
def test_doc_3_an_error_kind_of_any_other_value_is_custom(core: Any, kind: Any) -> None:
    sessionizer = core()
    result = sessionizer.ingest(frame(beacon(events=[error(kind=kind)])), RECV_MS)
    assert dict(result.dropped) == {}
    (closed,) = sessionizer.flush(RECV_MS + 10**9).closed
    assert json.loads(closed.detail)["errors"][0]["kind"] == "custom"


def test_doc_3_the_end_reason_is_truncated_at_256(core: Any) -> None:
    (closed,) = core().ingest(frame(beacon(events=[end(reason="r" * 300)])), RECV_MS).closed
    assert json.loads(closed.detail)["end_detail"] == "r" * 256


def test_a_flood_of_ids_forgets_the_oldest_tombstones_on_both_sides() -> None:
    """§5: with `max_open_sessions` 2, closing a third session forgets the oldest tombstone,
    so that key comes back as part 1, while a recent one comes back as part 2."""
    config = {"timeout_ms": 60_000, "max_open_sessions": 2}
    sids = [f"flood-sid-{i}" for i in range(5)]

    def batch(sid: str, recv_ms: int) -> Step:
        body = {"app": "shop", "sid": sid, "events": [{"type": "custom", "dur": 10}]}
        return ("batch", frame(body, recv_ms=recv_ms), recv_ms)

    steps = [batch(sid, RECV_MS + i) for i, sid in enumerate(sids)]
    steps += [batch(sids[0], RECV_MS + 10), batch(sids[2], RECV_MS + 11),
              ("flush", RECV_MS + 200_000)]  # fmt: skip
    python = ref.Sessionizer(config)
    parts = {}
    for step in steps:
        result = python.ingest(step[1], step[2]) if step[0] == "batch" else python.flush(step[1])
        for closed in result.closed:
            summary = json.loads(closed.summary)
            parts.setdefault(summary["client_sid"], []).append(summary["part"])
    assert parts[sids[0]] == [1, 1]  # its tombstone was forgotten
    assert parts[sids[2]] == [1, 2]
    run_both(config, steps)
