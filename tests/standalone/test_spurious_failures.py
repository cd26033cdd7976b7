"""Airflow failing a waiting task by itself must not fail the upgrade.

Airflow 3.3's scheduler can fail a try from a stale executor event (apache/airflow#71172,
#72716; seen here on the approval). It then calls `TaskInstance.handle_failure` on the task
instance, as `emulate_spurious_failure` does from outside, against the stack's own
metadata DB, while the task waits: the gate baking, a namespace waiting for its wave, the
approval awaiting its answer. Each run must still complete, every task green, the failed
task on its second try.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from istio_upgrade import approval, cluster, run_notes, upgrade_lock
from istio_upgrade.cluster import KubeTarget
from sandbox import procfs
from standalone.standalone_stack import Stack, reseed

pytestmark = pytest.mark.sandbox

ANSWER_AFTER_SECONDS = 10
ASKED = re.compile(r"asking for approval default=\w+ timeout=([0-9.]+)s")

# What the scheduler does on "Executor reported that the task instance ... finished with
# state success, but the task instance's state attribute is ..." (scheduler_job_runner.py).
EMULATE = """
import sys
from sqlalchemy import select
from airflow.models.dagbag import DBDagBag
from airflow.models.taskinstance import TaskInstance as TI
from airflow.utils.session import create_session

dag_id, run_id, task_id, map_index, expected = sys.argv[1:6]
with create_session() as session:
    ti = session.scalar(
        select(TI).where(
            TI.dag_id == dag_id, TI.run_id == run_id, TI.task_id == task_id,
            TI.map_index == int(map_index),
        )
    )
    if ti is None or ti.state != expected:
        sys.exit(f"task instance is {ti and ti.state}, not {expected}")
    dag = DBDagBag().get_dag_for_run(dag_run=ti.dag_run, session=session)
    ti.task = dag.get_task(task_id)
    ti.handle_failure(
        error="Executor reported that the task instance finished with state success, but "
        f"the task instance's state attribute is {expected} (emulated by the test)",
        session=session,
    )
    print(ti.state)
"""


def emulate_spurious_failure(
    stack: Stack, run_id: str, task_id: str, expected: str, map_index: int = -1
) -> str:
    env = {**os.environ, "AIRFLOW_HOME": str(stack.airflow_home)}
    env = {k: v for k, v in env.items() if not k.startswith("AIRFLOW__")}
    out = subprocess.run(
        [sys.executable, "-c", EMULATE, "istio_canary_upgrade", run_id, task_id, str(map_index),
         expected],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def instances(stack: Stack, run_id: str) -> dict[str, dict[str, Any]]:
    return {
        (t["task_id"] if t["map_index"] < 0 else f"{t['task_id']}[{t['map_index']}]"): t
        for t in stack.api.task_instances(run_id)
    }


def wait_until(stack: Stack, run_id: str, key: str, state: str, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if str(instances(stack, run_id).get(key, {}).get("state")) == state:
            return
        time.sleep(0.5)
    raise AssertionError(f"{key} never became {state}: {stack.states(run_id)}")


def assert_completed_with_one_retry(stack: Stack, run_id: str, retried: str) -> None:
    assert_completed_with_retries(stack, run_id, retried, tries=2)


def assert_completed_with_retries(stack: Stack, run_id: str, retried: str, tries: int) -> None:
    assert stack.finished(run_id) == "success", stack.progress.getvalue()
    tis = instances(stack, run_id)
    states = {k: str(t["state"]) for k, t in tis.items()}
    assert all(s in ("success", "skipped") for s in states.values()), states
    assert states[retried] == "success", states
    assert tis[retried]["try_number"] == tries, tis[retried]
    assert stack.xcom(run_id, "report")["phase"] == "completed"


def test_a_gate_failed_by_airflow_while_baking_goes_on_with_its_counts(stack: Stack) -> None:
    reseed(stack)
    run_id = stack.start(wave_concurrency=4, bake_seconds=15)
    wait_until(stack, run_id, "metric_gate", "deferred")
    kube = cluster.connect(KubeTarget(kubeconfig=stack.box["KUBECONFIG"]))
    holder = upgrade_lock.holder_of("istio_canary_upgrade", run_id)
    end = time.monotonic() + 60
    while (counted := run_notes.saved_gate(kube, holder)) is None or not counted.checks_done:
        assert time.monotonic() < end, "the gate kept no count on the run's lock"
        time.sleep(0.2)
    assert emulate_spurious_failure(stack, run_id, "metric_gate", "deferred") == "up_for_retry"
    assert_completed_with_one_retry(stack, run_id, "metric_gate")
    gate = stack.xcom(run_id, "metric_gate")
    # the retry went on from the first try's checks and bake start, it did not start over
    assert gate["checks_done"] > counted.checks_done, (counted, gate)
    folder = (
        stack.airflow_home / "logs" / "dag_id=istio_canary_upgrade" / f"run_id={run_id}"
        / "task_id=metric_gate"
    )  # fmt: skip
    retried = "\n".join(p.read_text() for p in sorted(folder.glob("attempt=2*.log")))
    assert "gate resumed from an earlier try" in retried, retried[-3000:]


def test_a_namespace_failed_by_airflow_while_waiting_for_its_wave_still_moves(
    stack: Stack,
) -> None:
    reseed(stack)
    run_id = stack.start(wave_concurrency=1)
    wait_until(stack, run_id, "remaining_namespaces", "success")
    # one namespace a wave: the last one waits for all the others
    last = len(stack.xcom(run_id, "remaining_namespaces")) - 1
    key = f"upgrade_namespace[{last}]"
    wait_until(stack, run_id, key, "deferred")
    state = emulate_spurious_failure(stack, run_id, "upgrade_namespace", "deferred", last)
    assert state == "up_for_retry"
    assert_completed_with_one_retry(stack, run_id, key)


def scheduler_pid() -> int:
    """The scheduler `airflow standalone` started (not a process it forked)."""
    commands, table = procfs.commands(), procfs.stats()
    found = [
        pid
        for pid, command in commands.items()
        if "airflow scheduler" in command
        and pid in table
        and "airflow standalone" in commands.get(table[pid].parent, "")
    ]
    assert len(found) == 1, found
    return found[0]


@contextmanager
def scheduler_stopped() -> Iterator[None]:
    """The scheduler frozen (SIGSTOP): a task it was about to queue stays scheduled."""
    pid = scheduler_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def attempt_log(stack: Stack, run_id: str, task_id: str, attempt: int) -> str:
    folder = stack.airflow_home / "logs" / "dag_id=istio_canary_upgrade" / f"run_id={run_id}"
    return "\n".join(
        p.read_text() for p in sorted((folder / f"task_id={task_id}").glob(f"attempt={attempt}*"))
    )


def test_an_approval_failed_by_airflow_keeps_its_deadline_and_the_answer_given(
    stack: Stack,
) -> None:
    reseed(stack)
    run_id = stack.start(wave_concurrency=4, require_approval=True)
    wait_until(stack, run_id, "approve_canary", "awaiting_input")
    # failed while it waits: the retry finds no answer and asks again, until the same deadline
    state = emulate_spurious_failure(stack, run_id, "approve_canary", "awaiting_input")
    assert state == "up_for_retry"
    wait_until(stack, run_id, "approve_canary", "awaiting_input")
    asked = [float(t) for t in ASKED.findall(attempt_log(stack, run_id, "approve_canary", 2))]
    full = float(ASKED.findall(attempt_log(stack, run_id, "approve_canary", 1))[0])
    assert len(asked) == 1 and asked[0] < full, (asked, full)
    # Answered, then failed by Airflow before the answer reaches the task, as 3.3.2 does to an
    # approval answered before the executor reported the try that asked (#71172). The
    # scheduler is frozen so that the answered task is still waiting to be queued.
    path = f"/api/v2/dags/istio_canary_upgrade/dagRuns/{run_id}/taskInstances/approve_canary"
    time.sleep(ANSWER_AFTER_SECONDS)  # the executor has reported the try that asked
    with scheduler_stopped():
        stack.api.call(
            "PATCH", f"{path}/-1/hitlDetails", {"chosen_options": [approval.APPROVE],
                                                 "params_input": {}}
        )  # fmt: skip
        assert emulate_spurious_failure(stack, run_id, "approve_canary", "scheduled") == (
            "up_for_retry"
        )
    assert_completed_with_retries(stack, run_id, "approve_canary", tries=3)
    third = attempt_log(stack, run_id, "approve_canary", 3)
    assert "kept the answer given to an earlier try: approved by admin" in third, third[-3000:]
    assert not ASKED.findall(third), third[-3000:]  # not asked a third time
    answer = stack.xcom(run_id, "approve_canary")
    assert (answer["option"], answer["by"], answer["timed_out"]) == ("Approve", "admin", False)
