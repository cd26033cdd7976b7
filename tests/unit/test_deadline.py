"""Window deadlines: when a run's window ends, how long a wave takes, and whether it starts."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from istio_upgrade.deadline import (
    CANARY_WAVE,
    Call,
    Estimate,
    Outcome,
    Span,
    WavesPaused,
    WindowClosed,
    call_wave,
    paused_reason,
    removal_held,
    wave_seconds,
    waves_outcome,
    window_end,
)
from istio_upgrade.errors import WavesFailed

START = datetime(2026, 3, 3, 2, 0, tzinfo=UTC)
WINDOW = (datetime(2026, 3, 3, 1, 0, tzinfo=UTC), datetime(2026, 3, 3, 3, 0, tzinfo=UTC))
INSTANT = (START, START)  # a manual run outside every window: a zero-length data interval


@pytest.mark.parametrize(
    ("minutes", "interval", "end", "basis"),
    [
        pytest.param(0, WINDOW, WINDOW[1], "maintenance window", id="scheduled-window"),
        pytest.param(30, WINDOW, START + timedelta(minutes=30), "window_minutes=30",
                     id="param-wins-over-window"),
        pytest.param(90, INSTANT, START + timedelta(minutes=90), "window_minutes=90",
                     id="manual-with-minutes"),
        pytest.param(0, INSTANT, None, "no window", id="manual-without-window"),
        pytest.param(0, (None, None), None, "no window", id="no-data-interval"),
    ],
)  # fmt: skip
def test_window_end(
    minutes: int,
    interval: tuple[datetime | None, datetime | None],
    end: datetime | None,
    basis: str,
) -> None:
    found, why = window_end(
        window_minutes=minutes,
        run_start=START,
        interval_start=interval[0],
        interval_end=interval[1],
    )
    assert found == end and basis in why


def test_window_end_is_utc_whatever_zone_it_came_in() -> None:
    tokyo = START.astimezone(ZoneInfo("Asia/Tokyo"))
    found, _ = window_end(window_minutes=1, run_start=tokyo, interval_start=None, interval_end=None)
    assert found == START + timedelta(minutes=1) and found.utcoffset() == timedelta(0)


def span(wave: int, started: float, finished: float, restarted: int = 1) -> Span:
    return Span(wave, (f"ns{wave}-{started}",), started, finished, restarted)


@pytest.mark.parametrize(
    ("spans", "expected"),
    [
        pytest.param([], {}, id="nothing"),
        pytest.param([span(0, 100, 130)], {0: 30}, id="one-namespace"),
        pytest.param([span(0, 100, 130), span(0, 101, 150)], {0: 50},
                     id="side-by-side-count-once"),
        pytest.param([span(0, 100, 130), span(1, 140, 150)], {0: 30, 1: 10}, id="two-waves"),
        pytest.param([span(0, 100, 130, restarted=0)], {}, id="nothing-restarted-measures-nothing"),
        pytest.param([span(CANARY_WAVE, 10, 40)], {CANARY_WAVE: 30}, id="canary"),
    ],
)  # fmt: skip
def test_wave_seconds(spans: list[Span], expected: dict[int, float]) -> None:
    assert wave_seconds(spans) == expected


WAVE = Estimate(30.0, "the longest wave so far (wave 1)")


@pytest.mark.parametrize(
    ("now", "end", "held", "call", "left", "reason"),
    [
        pytest.param(1000, None, (), Call.START, None, "no window", id="no-window"),
        pytest.param(1000, 1100, (), Call.START, 100, "100s left", id="fits"),
        pytest.param(1000, 1030, (), Call.START, 30, "30s left", id="fits-exactly"),
        pytest.param(1000, 1029, (), Call.HOLD, 29, "would not finish", id="one-second-short"),
        pytest.param(1000, 900, (), Call.HOLD, 0, "0s left", id="window-over"),
        pytest.param(1000, 9999, ("foo",), Call.HOLD, 8999, "earlier namespace was held back",
                     id="sticky-after-a-hold"),
        pytest.param(1000, None, ("foo",), Call.HOLD, None, "(foo)", id="sticky-without-window"),
    ],
)  # fmt: skip
def test_call_wave(
    now: float,
    end: float | None,
    held: tuple[str, ...],
    call: Call,
    left: float | None,
    reason: str,
) -> None:
    found = call_wave(now, end, WAVE, held)
    assert (found.call, found.seconds_left, found.estimate_seconds) == (call, left, 30.0)
    assert reason in found.reason
    assert found.start is (call is Call.START)


def test_a_hold_is_final_for_every_later_check() -> None:
    """Time only runs out: once a namespace is held, nothing later in the run starts."""
    first = call_wave(1000, 1020, WAVE)
    later = [call_wave(t, 1020, Estimate(5.0, "shorter"), ["baz"]) for t in (1001, 1010)]
    assert not first.start and not any(c.start for c in later)


@pytest.mark.parametrize(
    ("left", "held", "outcome"),
    [
        pytest.param([], [], Outcome.DONE, id="all-moved"),
        pytest.param([], ["foo"], Outcome.DONE, id="held-but-moved-later"),
        pytest.param(["foo", "qux"], ["foo", "qux"], Outcome.PAUSED, id="only-held-left"),
        pytest.param(["qux"], ["foo", "qux"], Outcome.PAUSED, id="held-subset"),
        pytest.param(["baz", "qux"], ["qux"], Outcome.FAILED, id="started-and-not-arrived"),
        pytest.param(["baz"], [], Outcome.FAILED, id="nothing-held"),
    ],
)
def test_waves_outcome(left: list[str], held: list[str], outcome: Outcome) -> None:
    assert waves_outcome(left, held) is outcome


def test_paused_reason_names_the_count_the_namespaces_and_the_comparison() -> None:
    calls = [
        "an earlier namespace was held back (foo): ...",
        "4s left in the window, a wave takes ~9s (x): it would",
    ]
    text = paused_reason(["qux", "foo"], calls)
    assert text.startswith("2 namespaces left (foo, qux): 4s left in the window")
    assert paused_reason(["foo"], calls[1:]).startswith("1 namespace left (foo): ")
    assert str(WavesPaused(text)) == f"paused: {text}"


@pytest.mark.parametrize(
    "error",
    [
        WindowClosed("2026-03-03T03:00:00+00:00", "x"),
        WavesPaused("2 left"),
        WavesFailed("1-32-0", ["foo", "qux"]),
    ],
)
def test_errors_survive_pickling(error: Exception) -> None:
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_span_seconds() -> None:
    assert Span(2, ("foo", "baz"), 1.5, 9.25, 3).seconds == 7.75
    assert Span(2, ("foo",), 9.0, 1.0, 3).seconds == 0.0


def test_removal_is_held_once_the_window_ended() -> None:
    end = "2026-03-03T03:00:00+00:00"
    at_end = datetime.fromisoformat(end).timestamp()
    assert removal_held(None, at_end, "1-31-0", "1-32-0") is None
    assert removal_held(end, at_end - 1, "1-31-0", "1-32-0") is None
    held = removal_held(end, at_end, "1-31-0", "1-32-0")
    assert held is not None and "1-31-0" in held and end in held
