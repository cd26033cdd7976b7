"""The namespace fan-out's pure decisions: items, a namespace's turn, what outcomes carry."""

from __future__ import annotations

import pytest

from istio_upgrade.run_state import map_index_states, task_key
from istio_upgrade.waves import (
    Call,
    NamespaceOutcome,
    State,
    WaveItem,
    longest_wave,
    summary,
    turn,
    wave_items,
)

ITEMS = wave_items([("baz", "foo"), ("qux",), ("zed",)])
BAZ, FOO, QUX, ZED = ITEMS
NOW = 1_000.0


def moved(ns: str, wave: int, started: float, finished: float, **kw: object) -> NamespaceOutcome:
    return NamespaceOutcome(ns, wave, State.MOVED, "ok", started, finished, 1, **kw)  # type: ignore[arg-type]


def test_items_carry_only_the_wave_before() -> None:
    assert [(i.namespace, i.wave, i.index) for i in ITEMS] == [
        ("baz", 0, 0),
        ("foo", 0, 1),
        ("qux", 1, 2),
        ("zed", 2, 3),
    ]
    assert QUX.previous == range(0, 2)
    assert ZED.previous == range(2, 3)
    assert BAZ.previous == range(0) and FOO.previous == range(0)


def test_items_stay_small_at_a_thousand_namespaces() -> None:
    names = [f"mesh-{i:04d}" for i in range(1000)]
    items = wave_items([names[i : i + 10] for i in range(0, 1000, 10)])
    assert max(len(i.previous) for i in items) == 10
    assert len(str([i.to_json() for i in items])) < 120_000  # O(n), not O(n^2)


def test_contracts_round_trip_through_json() -> None:
    assert WaveItem.from_json(QUX.to_json()) == QUX
    out = NamespaceOutcome("qux", 1, State.HELD, "why", longest_before=9.5, failed=("foo",))
    data = out.to_json()
    assert data["state"] == "held" and data["failed"] == ["foo"]
    assert NamespaceOutcome.from_json(data) == out


def decide(item: WaveItem, states: dict[int, str | None], outcomes: list[NamespaceOutcome], **kw):  # type: ignore[no-untyped-def]
    args = {"now": NOW, "window_end": None, "canary_seconds": 8.0, "fallback_seconds": 600.0}
    index = {i.namespace: i.index for i in ITEMS}
    return turn(item, states, {index[o.namespace]: o for o in outcomes}, **{**args, **kw})


@pytest.mark.parametrize(
    ("item", "states", "outcomes", "kw", "call", "says"),
    [
        pytest.param(BAZ, {}, [], {}, Call.START, "no window", id="first-wave-starts"),
        pytest.param(QUX, {0: "success", 1: "running"}, [], {}, Call.WAIT, "waiting",
                     id="waits-for-the-wave-before"),
        pytest.param(QUX, {0: "success"}, [], {}, Call.WAIT, "waiting",
                     id="an-unscheduled-neighbour-is-not-done"),
        pytest.param(QUX, {0: "success", 1: "success"},
                     [moved("baz", 0, 10, 20), moved("foo", 0, 11, 25)], {}, Call.START,
                     "no window", id="starts-after-the-wave-before"),
        pytest.param(QUX, {0: "deferred", 1: "running"},
                     [moved("baz", 0, 10, 20), moved("foo", 0, 11, 25)], {}, Call.START,
                     "no window", id="told-outcomes-end-the-wave-before-their-task-states"),
        pytest.param(QUX, {0: "deferred", 1: "deferred"},
                     [moved("baz", 0, 10, 20)], {}, Call.WAIT, "waiting",
                     id="one-told-outcome-is-not-the-wave"),
        pytest.param(QUX, {0: "deferred", 1: "deferred"},
                     [moved("baz", 0, 10, 20),
                      NamespaceOutcome("foo", 0, State.FAILED, "rollout failed")], {},
                     Call.STOP, "foo of an earlier wave failed",
                     id="a-told-failure-stops-it-at-once"),
        pytest.param(QUX, {0: "success", 1: "failed"},
                     [moved("baz", 0, 10, 20),
                      NamespaceOutcome("foo", 0, State.FAILED, "rollout failed")],
                     {}, Call.STOP, "foo of an earlier wave failed", id="a-failure-stops-it"),
        pytest.param(QUX, {0: "success", 1: "failed"}, [moved("baz", 0, 10, 20)], {},
                     Call.STOP, "upgrade_namespace[1] of an earlier wave failed",
                     id="a-failed-task-without-outcome-stops-it-too"),
        pytest.param(ZED, {2: "skipped"},
                     [NamespaceOutcome("qux", 1, State.NOT_STARTED, "x", failed=("foo",))], {},
                     Call.STOP, "foo of an earlier wave failed", id="failures-carry-forward"),
        pytest.param(ZED, {2: "skipped"}, [NamespaceOutcome("qux", 1, State.HELD, "window")],
                     {}, Call.HOLD, "earlier namespace was held back (qux)",
                     id="a-hold-is-sticky"),
        pytest.param(BAZ, {}, [], {"window_end": NOW + 5}, Call.HOLD, "canary",
                     id="the-canary-estimates-the-first-wave"),
        pytest.param(BAZ, {}, [], {"window_end": NOW + 9}, Call.START, "canary",
                     id="the-first-wave-fits"),
        pytest.param(QUX, {0: "success", 1: "success"},
                     [moved("baz", 0, 10, 20), moved("foo", 0, 11, 25)],
                     {"window_end": NOW + 14}, Call.HOLD, "~15s",
                     id="the-longest-wave-estimates-the-next"),
        pytest.param(BAZ, {}, [], {"window_end": NOW + 100, "canary_seconds": None},
                     Call.HOLD, "rollout_timeout_seconds", id="nothing-measured-assumes-worst"),
    ],
)  # fmt: skip
def test_turn(
    item: WaveItem,
    states: dict[int, str | None],
    outcomes: list[NamespaceOutcome],
    kw: dict[str, object],
    call: Call,
    says: str,
) -> None:
    decision = decide(item, states, outcomes, **kw)
    assert decision.call is call
    assert says in decision.reason


def test_a_stop_names_the_failures_for_later_waves() -> None:
    failed = NamespaceOutcome("foo", 0, State.FAILED, "rollout failed")
    decision = decide(QUX, {0: "success", 1: "failed"}, [moved("baz", 0, 10, 20), failed])
    assert decision.failed == ("foo",)


def test_longest_wave_carries_the_longest_before() -> None:
    wave = [moved("qux", 1, 100, 104, longest_before=30.0)]
    assert longest_wave(wave, None) == 30.0
    assert longest_wave([moved("qux", 1, 100, 160, longest_before=30.0)], None) == 60.0
    nothing_moved = [NamespaceOutcome("qux", 1, State.MOVED, "ok", 100, 160, restarted=0)]
    assert longest_wave(nothing_moved, 12.0) == 12.0


def test_summary_counts_states() -> None:
    outs = [moved("a", 0, 0, 1), moved("b", 0, 0, 1), NamespaceOutcome("c", 1, State.HELD, "")]
    assert summary(outs) == {"moved": 2, "held": 1}


def test_map_index_states_reads_only_this_task_and_run() -> None:
    raw = {
        "run": {"upgrade_namespace_0": "success", "upgrade_namespace_12": None, "other_1": "x"},
        "other-run": {"upgrade_namespace_3": "failed"},
    }
    assert map_index_states(raw, "run", "upgrade_namespace") == {0: "success", 12: None}


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        pytest.param("upgrade_namespace_12", ("upgrade_namespace", 12), id="mapped"),
        pytest.param("move_tag", ("move_tag", -1), id="not-mapped"),
        pytest.param("rollback.move_tag_back", ("rollback.move_tag_back", -1), id="group"),
    ],
)
def test_task_key_reads_the_sdks_state_keys(key: str, parsed: tuple[str, int]) -> None:
    assert task_key(key) == parsed
