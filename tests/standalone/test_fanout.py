"""The namespace fan-out under a real scheduler and triggerer (`airflow standalone`).

dag.test() runs one task at a time and resumes every deferred task; these runs go through
the scheduler, the LocalExecutor and the triggerer, where namespace triggers of a wave wait
side by side and end their tasks themselves. Each test asserts the run's state, every task's
state and the cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from standalone.standalone_stack import OWN_PORTS, Stack, UiRun, reseed

pytestmark = pytest.mark.sandbox

ROLLBACK = {
    "rollback.move_tag_back",
    "rollback.restart_moved",
    "rollback.wait_rolled_back",
    "rollback.verify_rolled_back",
    "rollback.remove_new_revision",
}
NOT_ON_THE_HAPPY_PATH = {"show_plan", "approve_canary", *ROLLBACK}


def kubectl(stack: Stack, *args: str) -> str:
    env = {**os.environ, **OWN_PORTS, "KUBECONFIG": stack.box["KUBECONFIG"]}
    out = subprocess.run(
        [stack.box["SANDBOX_KUBECTL"], *args], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout


def outcomes(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    items = stack.xcom(run_id, "remaining_namespaces")
    return [stack.xcom(run_id, "upgrade_namespace", "outcome", i) for i in range(len(items))]


def test_waves_run_in_order_and_every_task_ends_green(stack: Stack, ui_run: UiRun) -> None:
    assert ui_run.state == "success", stack.progress.getvalue()
    states = stack.states(ui_run.run_id)
    skipped = {t for t, s in states.items() if s == "skipped"}
    assert skipped == NOT_ON_THE_HAPPY_PATH, states
    assert all(s == "success" for t, s in states.items() if t not in skipped), states

    done = outcomes(stack, ui_run.run_id)
    assert len(done) == 7, done  # baz, foo, mesh-0000..0003, qux after the canary bar
    assert {o["state"] for o in done} == {"moved"}, done
    waves: dict[int, list[dict[str, Any]]] = {}
    for o in done:
        waves.setdefault(o["wave"], []).append(o)
    assert [len(w) for _, w in sorted(waves.items())] == [2, 2, 2, 1]  # wave_concurrency 2
    for k in range(1, len(waves)):
        earlier_end = max(o["finished"] for o in waves[k - 1])
        assert min(o["started"] for o in waves[k]) >= earlier_end, (k, waves)
    assert all(o["restarted"] > 0 for o in done), done
    assert stack.xcom(ui_run.run_id, "report")["phase"] == "completed"


def test_a_failed_namespace_stops_the_later_waves_and_clearing_resumes(stack: Stack) -> None:
    reseed(stack)
    # bar goes first after the canary baz (a StatefulSet's namespace: it deletes a pod before
    # creating its replacement, which the quota below would let through).
    first = "bar"
    deployments = kubectl(stack, "get", "deploy", "-n", first, "-o", "name").split()
    pods = sum(
        int(kubectl(stack, "get", d, "-n", first, "-o", "jsonpath={.spec.replicas}"))
        for d in deployments
    )
    kubectl(stack, "create", "quota", "it-no-surge", "-n", first, f"--hard=pods={pods}")
    for d in deployments:
        kubectl(stack, "patch", d, "-n", first, "-p", '{"spec":{"progressDeadlineSeconds":3}}')
    try:
        # a long rollout timeout: after the fix the ReplicaSet controller may take a while to
        # try the refused pod again (its retries back off)
        run_id, state = stack.run(
            wave_concurrency=2, canary_namespaces=["baz"], rollout_timeout_seconds=300
        )
        states = stack.states(run_id)
        assert state == "failed", states
        mapped = [states[f"upgrade_namespace[{i}]"] for i in range(7)]
        assert mapped == ["failed", "success"] + ["skipped"] * 5, states  # bar, foo | the rest
        assert states["finish_waves"] == "failed", states
        assert states["remove_old_revision"] == "upstream_failed", states
        assert states["conclude"] == "failed", states
        assert {t for t, s in states.items() if s == "skipped"} >= ROLLBACK, states
        later = outcomes(stack, run_id)[2:]
        assert {o["state"] for o in later} == {"not_started"}, later
        assert all(o["failed"] == [first] for o in later), later
    finally:
        kubectl(stack, "delete", "quota", "it-no-surge", "-n", first)
        for d in deployments:
            restore = {"spec": {"progressDeadlineSeconds": 600}}
            kubectl(stack, "patch", d, "-n", first, "-p", json.dumps(restore))

    # The fix is in: clear the namespaces' task with what follows it, as a person would.
    stack.clear(run_id, ["upgrade_namespace"])
    assert stack.finished(run_id) == "success", stack.progress.getvalue()
    states = stack.states(run_id)
    assert all(s in ("success", "skipped") for s in states.values()), states
    assert {o["state"] for o in outcomes(stack, run_id)} == {"moved"}
    assert stack.xcom(run_id, "report")["phase"] == "completed"


def test_a_window_too_short_for_a_wave_pauses_the_run_green(stack: Stack) -> None:
    reseed(stack)
    # The bake time outlasts the one-minute window: no wave fits any more after the gate.
    run_id, state = stack.run(wave_concurrency=2, window_minutes=1, bake_seconds=50)
    states = stack.states(run_id)
    assert state == "success", states
    assert {states[f"upgrade_namespace[{i}]"] for i in range(7)} == {"skipped"}, states
    for task_id in ("finish_waves", "remove_old_revision", "conclude"):
        assert states[task_id] == "skipped", (task_id, states)
    assert not [t for t, s in states.items() if s not in ("success", "skipped")], states
    held = outcomes(stack, run_id)
    assert {o["state"] for o in held} == {"held"}, held
    assert "it would not finish in time" in held[0]["reason"], held[0]
    report = stack.xcom(run_id, "report")
    assert report["phase"] == "paused" and report["reason"].startswith("7 namespaces left")
