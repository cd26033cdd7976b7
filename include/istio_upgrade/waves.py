"""The namespace fan-out after the canary: wave items, each namespace's outcome, and its turn.

Pure decisions over plain data. One mapped task per namespace (named by it in the grid); its
trigger waits for the turn, restarts, waits for the rollout and verifies, all in the
triggerer (see docs/fan-out.md). A namespace's turn is read from the task states and
outcomes of the wave just before it only, so a trigger carries a few numbers and reads
O(wave size) however many namespaces the run moves; outcomes carry forward what later waves need
(the failed namespaces, the longest wave so far, a hold).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from istio_upgrade import deadline
from istio_upgrade.contracts import Contract, allow
from istio_upgrade.deadline import Estimate

# Task states after which a task instance will not change by itself.
TERMINAL_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
FAILED_STATES = frozenset({"failed", "upstream_failed"})


@dataclass(frozen=True)
class WaveItem(Contract):
    """One namespace of the waves, as the mapped task receives it."""

    namespace: str
    wave: int  # 0 for the first wave after the canary
    index: int  # the map index of this namespace's task
    previous_start: int  # map index of the first namespace of the wave before
    previous_count: int  # how many namespaces the wave before has (0 for the first wave)

    @property
    def previous(self) -> range:
        """The map indexes of the wave before."""
        return range(self.previous_start, self.previous_start + self.previous_count)

    @property
    def opens_wave(self) -> bool:
        """The first namespace of its wave (waves are consecutive map indexes)."""
        return self.index == self.previous_start + self.previous_count


class State(StrEnum):
    """How one namespace of the waves ended."""

    MOVED = "moved"  # every pod of its workloads runs the target (restarted now or before)
    HELD = "held"  # the window left no room for its wave: a pause, the mesh stays valid
    NOT_STARTED = "not_started"  # a namespace of an earlier wave failed: not touched
    FAILED = "failed"  # restarted and did not arrive (rollout failed, timed out, or verify)


@dataclass(frozen=True)
class NamespaceOutcome(Contract):
    """What a namespace's task pushes (XCom `outcome`) and later waves read."""

    namespace: str
    wave: int
    state: State
    reason: str
    started: float | None = None  # epoch seconds: the restart began (None: not started)
    finished: float | None = None  # epoch seconds: verified
    restarted: int = 0  # workloads restarted by this run; 0: nothing measured
    # Carried forward so a wave reads only the wave before it:
    longest_before: float | None = None  # the longest wave before this one, seconds
    failed: tuple[str, ...] = ()  # namespaces that failed in earlier waves

    @property
    def span(self) -> deadline.Span | None:
        """This namespace's move as the window arithmetic measures it."""
        if self.started is None or self.finished is None:
            return None
        return deadline.Span(
            self.wave, (self.namespace,), self.started, self.finished, self.restarted
        )


def wave_items(waves: Sequence[Sequence[str]]) -> list[WaveItem]:
    """The mapped items, in wave order: map index = position in this list."""
    items: list[WaveItem] = []
    previous_start = previous_count = 0
    for wave_no, wave in enumerate(waves):
        start = len(items)
        items += [
            WaveItem(ns, wave_no, start + i, previous_start, previous_count)
            for i, ns in enumerate(wave)
        ]
        previous_start, previous_count = start, len(wave)
    return items


class Call(StrEnum):
    """What a waiting namespace does after one look at the wave before it."""

    WAIT = "wait"  # the wave before has not finished yet
    START = "start"  # it moved, and this wave fits in the window
    HOLD = "hold"  # the window is too short (or an earlier namespace was held): pause
    STOP = "stop"  # a namespace of an earlier wave failed: do not touch this one


@dataclass(frozen=True)
class Turn:
    """The decision for one namespace, with what its outcome must carry forward."""

    call: Call
    reason: str
    longest_before: float | None = None
    failed: tuple[str, ...] = ()


def previous_done(
    item: WaveItem,
    states: Mapping[int, str | None],
    outcomes: Mapping[int, NamespaceOutcome] | None = None,
) -> bool:
    """Whether every namespace of the wave before has ended: its task is in a final state,
    or its trigger has told its outcome (the first wave never waits)."""
    told = outcomes or {}
    return all(states.get(i) in TERMINAL_STATES or i in told for i in item.previous)


def longest_wave(
    outcomes: Sequence[NamespaceOutcome], canary_seconds: float | None
) -> float | None:
    """The longest wave up to and including the one of `outcomes` (the canary's for wave 0)."""
    spans = [s for o in outcomes if (s := o.span) is not None]
    measured = deadline.wave_seconds(spans).values()
    carried = [o.longest_before for o in outcomes if o.longest_before is not None]
    known = [*measured, *carried, *([canary_seconds] if canary_seconds is not None else [])]
    return max(known) if known else None


def turn(
    item: WaveItem,
    states: Mapping[int, str | None],
    outcomes: Mapping[int, NamespaceOutcome],
    *,
    now: float,
    window_end: float | None,
    canary_seconds: float | None,
    fallback_seconds: float,
) -> Turn:
    """May `item` start now? Read from the wave before: its task states and its outcomes.

    `outcomes` are those of the wave before, by map index (a failed task may have none); an
    outcome counts as the end of its namespace even before its task state says so.
    Failures stop every later wave; a hold is sticky; otherwise the window decides, with the
    longest wave so far as the estimate (the canary's before any wave; else the fallback).
    """
    if item.wave > 0 and not previous_done(item, states, outcomes):
        return Turn(Call.WAIT, "waiting for the wave before to finish")
    before = [outcomes[i] for i in item.previous if i in outcomes]
    failed = sorted(
        {f for o in before for f in o.failed}
        | {o.namespace for o in before if o.state is State.FAILED}
        # a task that failed before its trigger said anything: named by its place
        | {f"upgrade_namespace[{i}]" for i in item.previous if states.get(i) in FAILED_STATES}
        - {f"upgrade_namespace[{i}]" for i in outcomes}
    )
    longest = longest_wave(before, canary_seconds) if item.wave > 0 else canary_seconds
    if failed:
        return Turn(
            Call.STOP,
            f"not started: {', '.join(failed)} of an earlier wave failed; fix it, then clear "
            "the failed and the not-started upgrade_namespace tasks",
            longest,
            tuple(failed),
        )
    held = sorted(o.namespace for o in before if o.state is State.HELD)
    if held:
        return Turn(
            Call.HOLD,
            f"an earlier namespace was held back ({', '.join(held)}): no new wave starts in "
            "this run",
            longest,
        )
    if longest is None:
        expected = Estimate(
            float(fallback_seconds),
            "rollout_timeout_seconds: nothing was restarted and measured in this run yet",
        )
    elif item.wave == 0:
        expected = Estimate(longest, "the canary's restart and rollout")
    else:
        expected = Estimate(longest, "the longest wave so far")
    call = deadline.call_wave(now, window_end, expected)
    return Turn(Call.START if call.start else Call.HOLD, call.reason, longest)


def held(outcomes: Sequence[NamespaceOutcome]) -> list[NamespaceOutcome]:
    """The namespaces the window held back, in wave order."""
    return [o for o in outcomes if o.state is State.HELD]


def summary(outcomes: Sequence[NamespaceOutcome]) -> dict[str, int]:
    """How many namespaces ended in each state (for logs and the report)."""
    counts = {s.value: 0 for s in State}
    for o in outcomes:
        counts[o.state.value] += 1
    return {k: v for k, v in counts.items() if v}


allow(WaveItem, NamespaceOutcome)
