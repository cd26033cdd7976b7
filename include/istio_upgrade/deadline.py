"""When a run must stop starting waves: the window's end, how long a wave takes, and the call.

Pure arithmetic over plain data (epoch seconds, as the tasks record them in XCom):

- The window ends `window_minutes` after the run started when that param is set (manual
  runs); otherwise at the end of the run's data interval when it has a length (a run of the
  maintenance-window timetable, or a manual run triggered inside one of its windows);
  otherwise never.
- A wave lasts from the first restart of its namespaces to the last verification
  (`max(finished) - min(started)`), so namespaces restarted side by side count once.
- The next wave is expected to take as long as the longest wave measured so far in this
  run; before any wave finished, as long as the canary's restart, rollout and verification
  (when the canary was restarted in this run); before either, `rollout_timeout_seconds`, the
  longest a rollout may take before the run fails anyway (fail closed: nothing measured,
  assume the worst allowed).
- A wave starts when the time left is at least that estimate. Once a namespace was held
  back, no later namespace of the run starts (the call is sticky): a wave never waits for an
  earlier namespace that will not move, and the mesh stops in its valid mixed state.
- Removing the old revision is a change too: it does not start after the window ended.
  Every namespace is on the target then, and the run pauses with the old revision kept.
- A namespace whose earlier wave has a failed namespace does not start either: not a pause
  but a failure, reported at the end of the waves (see `waves`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from istio_upgrade.errors import UpgradeError

CANARY_WAVE = -1  # the wave number a canary span carries


class WindowClosed(UpgradeError):
    """The run's window ended before the run began: a run skips instead of starting late."""

    def __init__(self, window_end: str, basis: str) -> None:
        self.window_end = window_end
        self.basis = basis
        super().__init__(
            f"the window ({basis}) ended at {window_end}, before this run started: nothing "
            "was changed; the next window's run picks up from here"
        )

    def __reduce__(self) -> tuple[type[WindowClosed], tuple[str, str]]:
        return (type(self), (self.window_end, self.basis))


class WavesPaused(UpgradeError):
    """The window left no room for the next wave, or for removing the old revision: the run
    stops in a valid mixed state."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"paused: {reason}")

    def __reduce__(self) -> tuple[type[WavesPaused], tuple[str]]:
        return (type(self), (self.reason,))


def window_end(
    *,
    window_minutes: int,
    run_start: datetime,
    interval_start: datetime | None,
    interval_end: datetime | None,
) -> tuple[datetime | None, str]:
    """When the run must stop starting waves, and the rule that said so (for messages)."""
    if window_minutes > 0:
        end = run_start + timedelta(minutes=window_minutes)
        return end.astimezone(UTC), f"window_minutes={window_minutes} from the run's start"
    if interval_start is not None and interval_end is not None and interval_end > interval_start:
        return interval_end.astimezone(UTC), "the maintenance window of the run's data interval"
    return None, "no window"


@dataclass(frozen=True)
class Span:
    """One restart of a wave (or the canary) that was waited for and verified, epoch seconds."""

    wave: int  # CANARY_WAVE for the canary
    namespaces: tuple[str, ...]
    started: float  # the restart task began
    finished: float  # the verification passed
    restarted: int  # workloads restarted in this run; 0: nothing moved, so nothing measured

    @property
    def seconds(self) -> float:
        return max(0.0, self.finished - self.started)


def wave_seconds(spans: Iterable[Span]) -> dict[int, float]:
    """Per wave: first start to last finish of its namespaces that really moved in this run."""
    started: dict[int, float] = {}
    finished: dict[int, float] = {}
    for span in spans:
        if span.restarted <= 0:
            continue
        started[span.wave] = min(started.get(span.wave, span.started), span.started)
        finished[span.wave] = max(finished.get(span.wave, span.finished), span.finished)
    return {w: max(0.0, finished[w] - started[w]) for w in sorted(started)}


@dataclass(frozen=True)
class Estimate:
    """How long the next wave is expected to take, and what that figure rests on."""

    seconds: float
    basis: str


class Call(StrEnum):
    """What a namespace of the waves does before it starts."""

    START = "start"  # the wave fits in what is left of the window (or there is no window)
    HOLD = "hold"  # it would not fit, or an earlier namespace was held: pause the run here


@dataclass(frozen=True)
class WaveCall:
    """The decision before a namespace's wave starts, with the figures behind it."""

    call: Call
    reason: str
    seconds_left: float | None  # None: the run has no window
    estimate_seconds: float

    @property
    def start(self) -> bool:
        return self.call is Call.START


def call_wave(
    now: float, end: float | None, expected: Estimate, held_back: Sequence[str] = ()
) -> WaveCall:
    """Start the wave only if it fits before the window ends and nothing was held back yet."""
    left = None if end is None else max(0.0, end - now)
    if held_back:
        return WaveCall(
            Call.HOLD,
            f"an earlier namespace was held back ({', '.join(sorted(held_back))}): "
            "no new wave starts in this run",
            left,
            expected.seconds,
        )
    if left is None:
        return WaveCall(Call.START, "the run has no window", None, expected.seconds)
    figures = f"{left:.0f}s left in the window, a wave takes ~{expected.seconds:.0f}s "
    if left >= expected.seconds:
        return WaveCall(Call.START, figures + f"({expected.basis})", left, expected.seconds)
    return WaveCall(
        Call.HOLD,
        figures + f"({expected.basis}): it would not finish in time",
        left,
        expected.seconds,
    )


class Outcome(StrEnum):
    """How the waves of a run ended, read from the cluster and the recorded calls."""

    DONE = "done"  # every namespace of the run runs the target revision
    PAUSED = "paused"  # the ones left were all held back by the window: valid mixed state
    FAILED = "failed"  # a namespace that was started did not arrive: a task failed


def waves_outcome(not_on_target: Sequence[str], held_back: Iterable[str]) -> Outcome:
    """DONE, PAUSED (only held-back namespaces left) or FAILED (one started and did not arrive)."""
    if not not_on_target:
        return Outcome.DONE
    if set(not_on_target) <= set(held_back):
        return Outcome.PAUSED
    return Outcome.FAILED


def paused_reason(left: Sequence[str], reasons: Sequence[str]) -> str:
    """Why a paused run stopped: "2 namespaces left (foo, qux): <the first hold's reason>".

    `reasons` are those of the holds, in wave order. The report prints it after
    "Phase: paused: "; the skip message after "paused: ".
    """
    names = ", ".join(sorted(left))
    reasons = [r for r in reasons if r]
    # the hold that compared time left with a wave, rather than a sticky one that followed it
    why = next((r for r in reasons if "earlier namespace" not in r), None)
    why = why or next(iter(reasons), "the window ended")
    return (
        f"{len(left)} namespace{'s' if len(left) != 1 else ''} left ({names}): {why}; "
        "the mesh is in a valid mixed state (tag on the target, old revision kept); the next "
        "run continues from here"
    )


def removal_held(window_end: str | None, now: float, old: str, target: str) -> str | None:
    """Why the old revision must not be removed now (its window is over), or None."""
    if window_end is None or now < datetime.fromisoformat(window_end).timestamp():
        return None
    return (
        f"every namespace runs {target}; the window ended at {window_end} before revision "
        f"{old} was removed, so it is kept (unused) and the next run removes it"
    )
