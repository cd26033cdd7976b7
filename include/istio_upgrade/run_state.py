"""This run's task states and XComs, read from inside a trigger and shared by its neighbours.

A thousand namespace triggers of one run wait in one triggerer process; each looking at the
run on its own would ask the API server a thousand times per poll. Reads here are cached for
a moment per event loop and shared by every trigger that asks the same question, so the
cost of waiting grows with the number of waves in flight, not with the namespaces waiting.
The SDK calls are synchronous (they talk to the supervisor), so they run in a thread of
their own, one at a time: a slow supervisor then holds that thread, not the event loop's
default pool that every trigger's Kubernetes polls need. The triggerer's supervisor builds
Airflow's in-process execution API on the first SDK call it serves (1.5 s of CPU idle, 15 s
measured on a busy 2-core machine, answering nothing meanwhile), so triggers that wait
before the waves `warm_up` it while the machine is quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# How long an answer is reused: shorter than any poll interval, so no trigger reads old news.
TTL_SECONDS = 1.0

# One SDK call at a time: they share one channel to the supervisor anyway, and the in-process
# channel of dag.test() is not safe for two threads at once. Made on first use, in the
# process that runs the triggers.
_sdk_thread: ThreadPoolExecutor | None = None

# key -> (expiry, the read in flight or done); a future belongs to the loop that made it
_cache: dict[tuple[Any, ...], tuple[float, asyncio.Future[Any]]] = {}


async def _sdk(call: Callable[[], T]) -> T:
    """Run one synchronous SDK call on the SDK thread."""
    global _sdk_thread
    if _sdk_thread is None:
        _sdk_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="airflow-sdk")
    return await asyncio.get_running_loop().run_in_executor(_sdk_thread, call)


async def _shared(key: tuple[Any, ...], fetch: Callable[[], T]) -> T:
    """One `fetch` per key and TTL for every trigger of this event loop that asks."""
    loop = asyncio.get_running_loop()
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is not None and hit[0] > now and hit[1].get_loop() is loop:
        return await asyncio.shield(hit[1])
    for k in [k for k, (expires, _) in _cache.items() if expires <= now]:
        del _cache[k]

    future: asyncio.Future[Any] = asyncio.ensure_future(_sdk(fetch))
    _cache[key] = (now + TTL_SECONDS, future)
    try:
        return await asyncio.shield(future)
    except BaseException:
        _cache.pop(key, None)  # a failed read is not shared with the next asker
        raise


def task_key(key: str) -> tuple[str, int]:
    """(task_id, map_index) of a key of the SDK's `get_task_states` answer (-1: not mapped).

    The SDK keys mapped task instances `<task_id>_<map_index>` (its own format; the only
    public way to read many task states at once), so this is the one place that parses it.
    """
    task_id, _, index = key.rpartition("_")
    return (task_id, int(index)) if task_id and index.isdigit() else (key, -1)


def map_index_states(raw: dict[str, Any], run_id: str, task_id: str) -> dict[int, str | None]:
    """The states of one mapped task by map index, from the SDK's `get_task_states` answer."""
    states: dict[int, str | None] = {}
    for key, state in raw.get(run_id, {}).items():
        found, index = task_key(key)
        if found == task_id and index >= 0:
            states[index] = state
    return states


async def task_states(dag_id: str, run_id: str, task_id: str) -> dict[int, str | None]:
    """The state of every mapped instance of `task_id` in this run, by map index."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    def fetch() -> dict[int, str | None]:
        raw = RuntimeTaskInstance.get_task_states(
            dag_id=dag_id, task_ids=[task_id], run_ids=[run_id]
        )
        return map_index_states(raw, run_id, task_id)

    return await _shared(("states", dag_id, run_id, task_id), fetch)


async def xcoms(
    key: str, dag_id: str, run_id: str, task_id: str, map_indexes: Iterable[int]
) -> dict[int, Any]:
    """The XCom `key` of the given map indexes of `task_id` (missing ones left out)."""
    from airflow.sdk.execution_time.xcom import XCom

    async def one(index: int) -> Any:
        def fetch() -> Any:
            return XCom.get_one(
                key=key, dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=index
            )

        return await _shared(("xcom", key, dag_id, run_id, task_id, index), fetch)

    indexes = list(map_indexes)
    values = await asyncio.gather(*(one(i) for i in indexes))
    return {i: v for i, v in zip(indexes, values, strict=True) if v is not None}


async def push_xcom(
    key: str, value: Any, dag_id: str, run_id: str, task_id: str, map_index: int
) -> None:
    """Store an XCom for a task instance from its trigger (before the trigger ends the task),
    then tell the triggers of this process that wait for it (`told_since`, `wait_told`)."""
    from airflow.sdk.execution_time.xcom import XCom

    def store() -> None:
        XCom.set(key, value, dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index)

    await _sdk(store)
    _tell((key, dag_id, run_id, task_id, map_index), value)


# What the triggers of this process pushed, (key, dag_id, run_id, task_id, map_index) ->
# (time.monotonic() of the push, value): the next wave learns that the wave before ended as
# soon as its triggers know, instead of a second or two later from the task states. Only
# pushes made after the asking trigger started count, so an outcome of an earlier try (before
# a clear) is never taken for the current one.
_told: dict[tuple[Any, ...], tuple[float, Any]] = {}
TOLD_KEEP_SECONDS = 3600.0  # older ones are read from the store like any other
# the event a trigger waits on for one key, with the loop it belongs to
_arrivals: dict[tuple[Any, ...], tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}


def _tell(told: tuple[Any, ...], value: Any) -> None:
    now = time.monotonic()
    for old in [k for k, (at, _) in _told.items() if at < now - TOLD_KEEP_SECONDS]:
        del _told[old]
    _told[told] = (now, value)
    waiting = _arrivals.pop(told, None)
    if waiting is not None:
        waiting[1].set()


def told_since(
    since: float, key: str, dag_id: str, run_id: str, task_id: str, map_indexes: Iterable[int]
) -> dict[int, Any]:
    """The XComs `key` of the given map indexes pushed by this process at or after `since`
    (`time.monotonic()`), by map index."""
    found: dict[int, Any] = {}
    for index in map_indexes:
        hit = _told.get((key, dag_id, run_id, task_id, index))
        if hit is not None and hit[0] >= since:
            found[index] = hit[1]
    return found


async def wait_told(
    since: float,
    key: str,
    dag_id: str,
    run_id: str,
    task_id: str,
    map_indexes: Sequence[int],
    timeout: float,
) -> None:
    """Wait until this process has pushed `key` for every given map index since `since`, or
    `timeout` seconds pass, whichever comes first."""
    loop = asyncio.get_running_loop()
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        told = told_since(since, key, dag_id, run_id, task_id, map_indexes)
        missing = [i for i in map_indexes if i not in told]
        if not missing:
            return
        wanted = (key, dag_id, run_id, task_id, missing[0])
        waiting = _arrivals.get(wanted)
        if waiting is None or waiting[0] is not loop:
            waiting = _arrivals[wanted] = (loop, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiting[1].wait(), left)


# warm-ups in flight: the loop keeps only weak references to its tasks
_warming: set[asyncio.Task[None]] = set()


def warm_up(dag_id: str, run_id: str) -> None:
    """Start one cheap read of the run (its task states) in the background, so this
    triggerer's supervisor has its execution API built before the waves need it. The caller
    does not wait for it; a failure is only a missed warm-up."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    async def read() -> None:
        with contextlib.suppress(Exception):
            await _sdk(lambda: RuntimeTaskInstance.get_task_states(dag_id=dag_id, run_ids=[run_id]))

    task = asyncio.ensure_future(read())
    _warming.add(task)
    task.add_done_callback(_warming.discard)
