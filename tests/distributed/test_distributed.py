"""The DAG on docker-compose.yaml's deployment: Celery workers, a triggerer of its own,
PostgreSQL, and maintenance windows that the real scheduler starts runs for."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Any

import pytest
from standalone.standalone_stack import demo
from standalone.test_killed_task import (
    crowded_canary,
    generations,
    kill_after_first_restart,
    wait_running,
    worker_of,
)
from standalone.test_spurious_failures import wait_until

from distributed.conftest import Dist, distributed_stack
from istio_upgrade import cluster
from istio_upgrade.cluster import KubeTarget
from istio_upgrade.steps import restart_stamp

pytestmark = pytest.mark.sandbox

DAG_ID = "istio_canary_upgrade"
TARGET_VARIABLE = "istio_upgrade_target_revision"
# What a whole upgrade skips: the dry run's plan, the approval and the rollback.
SKIPPED = {
    "show_plan",
    "approve_canary",
    "rollback.move_tag_back",
    "rollback.restart_moved",
    "rollback.wait_rolled_back",
    "rollback.verify_rolled_back",
    "rollback.remove_new_revision",
}


def scheduled_runs(dist: Dist) -> list[dict[str, Any]]:
    path = f"/api/v2/dags/{DAG_ID}/dagRuns"
    runs = dist.stack.api.call("GET", path, limit=50, run_type=["scheduled"])["dag_runs"]
    return sorted(runs, key=lambda r: str(r["data_interval_start"]))


def ended_run(dist: Dist, count: int, by: datetime) -> dict[str, Any]:
    """The `count`-th scheduled run, once it ended; the scheduler must start it near `by`."""
    deadline = by.timestamp() + 90
    while time.time() < deadline:
        runs = scheduled_runs(dist)
        if len(runs) >= count:
            run_id = str(runs[count - 1]["dag_run_id"])
            dist.stack.finished(run_id, timeout=400)
            return dict(dist.stack.api.dag_run(run_id))
        time.sleep(2)
    raise AssertionError(f"no scheduled run #{count} after {by}: {scheduled_runs(dist)}")


def assert_upgraded(dist: Dist, run: dict[str, Any]) -> None:
    run_id = str(run["dag_run_id"])
    states = dist.stack.states(run_id)
    assert run["state"] == "success", dist.stack.progress.getvalue()
    assert {t for t, s in states.items() if s == "skipped"} == SKIPPED, states
    assert all(s == "success" for t, s in states.items() if t not in SKIPPED), states
    assert dist.stack.xcom(run_id, "report")["phase"] == "completed"


def test_a_window_opening_starts_the_upgrade_and_the_next_finds_nothing_to_do(
    dist: Dist,
) -> None:
    """The operator's setup: windows in ISTIO_UPGRADE_WINDOWS, the run's params in
    ISTIO_UPGRADE_PARAM_DEFAULTS, the target in the Variable; the DAG unpaused."""
    api, windows = dist.stack.api, dist.windows
    target = dist.stack.box["SANDBOX_NEW_REVISION"]
    api.call("POST", "/api/v2/variables", {"key": TARGET_VARIABLE, "value": target})
    api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})

    first = ended_run(dist, 1, windows.first[0])
    assert_upgraded(dist, first)
    interval = (first["data_interval_start"], first["data_interval_end"])
    assert tuple(map(datetime.fromisoformat, interval)) == windows.first, first

    second = ended_run(dist, 2, windows.second[0])
    states = dist.stack.states(str(second["dag_run_id"]))
    assert second["state"] == "success", dist.stack.progress.getvalue()
    assert datetime.fromisoformat(second["data_interval_start"]) == windows.second[0], second
    assert states["validate"] == "skipped", states  # the mesh runs the target: nothing to do
    assert "failed" not in states.values() and "upstream_failed" not in states.values(), states


BAKE_SECONDS = 75  # long enough to outlive the hand-over (30 s) with checks left to do
KILL_AFTER_SECONDS = 15


def gate_trigger_logs(dist: Dist, run_id: str) -> str:
    folder = (
        dist.stack.airflow_home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
        / "task_id=metric_gate"
    )  # fmt: skip
    return "\n".join(p.read_text() for p in sorted(folder.rglob("*.trigger.*.log")))


def test_a_killed_triggerer_hands_the_gate_on_with_its_checks(dist: Dist) -> None:
    """The triggerer process dies (SIGKILL, as a lost host) while the metric gate bakes; a new
    one takes the gate over once the scheduler sees the old one miss its heartbeats (30 s),
    and goes on with the checks it had counted instead of baking again from zero."""
    distributed_stack.reseed(dist.dist)
    run_id = dist.stack.start(bake_seconds=BAKE_SECONDS, check_interval_seconds=3)
    wait_until(dist.stack, run_id, "metric_gate", "deferred")
    time.sleep(KILL_AFTER_SECONDS)  # a few checks counted and kept
    distributed_stack.kill(dist.dist, "triggerer")
    distributed_stack.restart(dist.dist, "triggerer")
    assert dist.stack.finished(run_id) == "success", dist.stack.progress.getvalue()
    assert_upgraded(dist, dict(dist.stack.api.dag_run(run_id)))
    log = gate_trigger_logs(dist, run_id)
    resumed = re.findall(r"gate resumed: (\d+) checks done", log)
    assert resumed, f"the second triggerer baked again from zero:\n{log[-3000:]}"
    gate = dist.stack.xcom(run_id, "metric_gate")
    assert gate["verdict"] == "passed", json.dumps(gate)
    assert gate["checks_done"] > int(resumed[-1]) >= 2, gate  # it went on counting


def test_a_lost_worker_hands_the_canary_restart_to_the_other(dist: Dist) -> None:
    """The demo's run, triggered by hand, while the Celery worker restarting the canary
    namespace is lost with the task processes it started (SIGKILL, as a lost host): once its
    heartbeats are older than compose's task_instance_heartbeat_timeout the scheduler fails
    the try, the other worker runs the retry, and that restarts only what the first try had
    not. The lost worker stays down to the end, so no other worker could have run it."""
    distributed_stack.reseed(dist.dist)
    kube = cluster.connect(KubeTarget(kubeconfig=dist.stack.box["KUBECONFIG"]))
    with crowded_canary(kube) as before:
        run_id = dist.stack.start(**demo.DEMO_PARAMS)
        stamp = restart_stamp(run_id, dist.stack.box["SANDBOX_NEW_REVISION"])
        lost = distributed_stack.component_of(
            dist.dist, worker_of(wait_running(dist.stack, run_id, "upgrade_canary"))
        )
        assert lost in distributed_stack.WORKERS, lost
        done_when_killed = kill_after_first_restart(
            kube, stamp, lambda: distributed_stack.kill(dist.dist, lost)
        )
        try:
            assert dist.stack.finished(run_id) == "success", dist.stack.progress.getvalue()
            assert_upgraded(dist, dict(dist.stack.api.dag_run(run_id)))
            tis = {t["task_id"]: t for t in dist.stack.api.task_instances(run_id)}
            assert tis["upgrade_canary"]["try_number"] == 2, tis["upgrade_canary"]
            retry = f"run_id={run_id}/task_id=upgrade_canary/attempt=2.log"
            (other,) = set(distributed_stack.WORKERS) - {lost}
            assert retry in dist.dist.log(other).read_text(), f"{other} did not run the retry"
            after = generations(kube)
            # one template change each: a second restart would have bumped it again
            assert after == {n: g + 1 for n, g in before.items()}, (done_when_killed, after)
        finally:
            distributed_stack.restart(dist.dist, lost)
