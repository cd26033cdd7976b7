"""Trigger-side reads and writes of the run: a slow supervisor must not stall the polls.

Measured under `airflow standalone` with 50 namespaces: the triggerer's supervisor spent 15 s
building its in-process execution API on the first SDK call, and the XCom pushes waiting for
it filled the event loop's default thread pool, so the namespaces' rollout polls (which run
there too) stopped until it answered and a whole wave ended 25 s late.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from airflow.sdk.execution_time import xcom

from istio_upgrade import run_state

HANGING_PUSHES = 20  # more than the default pool's threads (min(32, cores + 4))


def test_hanging_sdk_calls_leave_the_default_pool_free(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = threading.Event()
    stored: list[str] = []

    def slow_set(key: str, value: Any, **_: Any) -> None:
        answer.wait(timeout=30)
        stored.append(key)

    monkeypatch.setattr(xcom.XCom, "set", staticmethod(slow_set))

    async def scenario() -> str:
        pushes = [
            asyncio.ensure_future(run_state.push_xcom(f"k{i}", i, "d", "r", "t", i))
            for i in range(HANGING_PUSHES)
        ]
        await asyncio.sleep(0.2)  # every push is now waiting for the supervisor
        try:
            # A rollout poll: plain blocking work in the default pool, as the triggers do it.
            return await asyncio.wait_for(asyncio.to_thread(lambda: "polled"), timeout=10)
        finally:
            answer.set()
            await asyncio.gather(*pushes)

    assert asyncio.run(scenario()) == "polled"
    assert sorted(stored) == sorted(f"k{i}" for i in range(HANGING_PUSHES))


def test_warm_up_reads_the_run_and_swallows_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    asked: list[tuple[str, list[str]]] = []

    def states(*, dag_id: str, run_ids: list[str], **_: Any) -> dict[str, Any]:
        asked.append((dag_id, run_ids))
        raise RuntimeError("supervisor gone")

    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(states))

    async def scenario() -> None:
        run_state.warm_up("istio_canary_upgrade", "manual__1")
        while run_state._warming:
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert asked == [("istio_canary_upgrade", ["manual__1"])]


def told_pusher(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    stored: list[str] = []
    monkeypatch.setattr(xcom.XCom, "set", staticmethod(lambda key, value, **_: stored.append(key)))
    return stored


def test_a_push_wakes_the_trigger_waiting_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    told_pusher(monkeypatch)
    where = ("d", "wake", "t")

    async def scenario() -> tuple[bool, dict[int, Any]]:
        since = time.monotonic()
        waiter = asyncio.ensure_future(
            run_state.wait_told(since, "outcome", *where, [0, 1], timeout=60)
        )
        await run_state.push_xcom("outcome", "a", *where, 0)
        await asyncio.sleep(0.05)
        still_waiting = not waiter.done()  # one of the two is not the wave
        await run_state.push_xcom("outcome", "b", *where, 1)
        await asyncio.wait_for(waiter, timeout=10)  # not the 60 s timeout
        return still_waiting, run_state.told_since(since, "outcome", *where, [0, 1, 2])

    still_waiting, told = asyncio.run(scenario())
    assert still_waiting
    assert told == {0: "a", 1: "b"}


def test_pushes_before_the_asker_started_are_not_told(monkeypatch: pytest.MonkeyPatch) -> None:
    # An outcome of an earlier try (before the namespace was cleared) must not end the wave.
    told_pusher(monkeypatch)
    where = ("d", "stale", "t")

    async def scenario() -> tuple[dict[int, Any], dict[int, Any]]:
        await run_state.push_xcom("outcome", "earlier try", *where, 0)
        since = time.monotonic()
        before = run_state.told_since(since, "outcome", *where, [0])
        await run_state.push_xcom("outcome", "this try", *where, 0)
        return before, run_state.told_since(since, "outcome", *where, [0])

    before, after = asyncio.run(scenario())
    assert before == {}
    assert after == {0: "this try"}


def test_waiting_for_nothing_told_times_out() -> None:
    async def scenario() -> None:
        await run_state.wait_told(time.monotonic(), "outcome", "d", "none", "t", [0], timeout=0.1)

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))
