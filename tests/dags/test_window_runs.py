"""A maintenance window too short for every namespace: the run pauses, the next one finishes."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dag_runs import (
    RestApi,
    fast_params,
    pod_uids,
    resource_versions,
    revisions,
    run_dag,
    states,
    wait_for_task,
)
from sandbox_fixture import Sandbox

from istio_upgrade import cluster, tasks
from istio_upgrade.deadline import WavesPaused

pytestmark = pytest.mark.sandbox

# From the approval's answer to the first wave's window check: resume the approval, decide,
# list the remaining namespaces, expand the waves, first poke (dag.test runs them in turn).
ANSWER_TO_FIRST_CALL_SECONDS = 4.0


def test_short_window_pauses_valid_and_the_next_run_finishes(
    seeded: Sandbox, rest_api: RestApi
) -> None:
    """Run 1 has a one-minute window and one namespace per wave. The approval (answered by
    the helper thread through the REST API) comes late in the window, leaving time for about
    one wave as long as the canary's: the run must hold back the waves that no longer fit,
    end green as "paused", and leave the mesh valid. Run 2 (no window) finishes the upgrade
    and restarts none of the namespaces run 1 moved."""
    box, kube = seeded, seeded.kube()
    new, old = box.new_revision, box.old_revision
    timing: dict[str, Any] = {}

    def approve_late_in_the_window() -> None:
        ti = wait_for_task("approve_canary", "awaiting_input")
        end = datetime.fromisoformat(rest_api.xcom(ti.run_id, "validate")["window_end"])
        span = rest_api.xcom(ti.run_id, "upgrade_canary")["span"]
        canary_seconds = span["finished"] - span["started"]
        # room for one wave like the canary's and a half: the next one will not fit
        answer_at = end.timestamp() - ANSWER_TO_FIRST_CALL_SECONDS - 1.5 * canary_seconds
        timing.update(canary_seconds=canary_seconds, wait=answer_at - time.time())
        time.sleep(max(0.0, answer_at - time.time()))
        rest_api.answer(ti.run_id, "approve_canary", "Approve")

    conf = fast_params(box, wave_concurrency=1, window_minutes=1, require_approval=True)
    first = run_dag(conf, approve_late_in_the_window)
    run = states(first.run_id)
    assert str(first.state) == "success", run
    for task_id in ("finish_waves", "remove_old_revision", "conclude"):
        assert run[task_id] == "skipped", (task_id, run)

    # the mesh is valid: tag on the new revision, old one still installed, every namespace
    # wholly on one revision, the canary and the gateway moved, at least one left behind
    assert cluster.tag_revision(kube, "default") == new
    assert cluster.revision_objects(kube, old), "the old revision was removed during a pause"
    revs = revisions(box)
    assert all(len(r) == 1 for r in revs.values()), f"a namespace is half-moved: {revs}"
    moved = tuple(sorted(n for n, r in revs.items() if r == {new}))
    left = tuple(sorted(n for n, r in revs.items() if r == {old}))
    assert {"bar", "istio-ingress"} <= set(moved) and left, (revs, timing)

    report = rest_api.xcom(first.run_id, "report")
    assert report["phase"] == "paused"
    noun = "namespace" if len(left) == 1 else "namespaces"
    assert report["reason"].startswith(f"{len(left)} {noun} left ({', '.join(left)})")
    assert f"Phase: paused: {len(left)} {noun} left" in report["text"]

    # each held-back namespace says why; the first was held by the comparison itself
    outcomes = [rest_api.xcom(first.run_id, "upgrade_namespace", "outcome", i) for i in range(3)]
    held = [o for o in outcomes if o["state"] == "held"]
    assert sorted(h["namespace"] for h in held) == list(left)
    compared = [h for h in held if "earlier namespace" not in h["reason"]]
    assert len(compared) == 1, held
    assert "it would not finish in time" in compared[0]["reason"], compared

    before = pod_uids(box, moved)
    second = run_dag(fast_params(box, wave_concurrency=1))
    run2 = states(second.run_id)
    assert str(second.state) == "success", run2
    assert run2["conclude"] == "success"
    assert cluster.revision_objects(kube, old) == []
    assert revisions(box) == {n: {new} for n in revs}
    assert pod_uids(box, moved) == before, "the second run restarted a namespace again"
    restarted = sorted(k for k in run2 if k.startswith("upgrade_namespace["))
    assert len(restarted) == len(left), run2


def test_a_run_that_starts_after_its_window_ended_changes_nothing(
    seeded: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a maintenance-window schedule, a run's data interval is its window (here the one
    containing the logical date, as the timetable infers it). A run that starts after that
    window ended (a scheduler that was down, a long queue) skips instead of upgrading."""
    box = seeded
    monkeypatch.setenv("ISTIO_UPGRADE_WINDOWS", "cron '0 0 * * *' for 1h UTC")
    before = resource_versions(box)
    yesterday = datetime.now(UTC).replace(hour=0, minute=30) - timedelta(days=1)
    dr = run_dag(fast_params(box), logical_date=yesterday)
    run = states(dr.run_id)
    assert str(dr.state) == "success", run
    assert run["validate"] == "skipped" and run["precheck"] == "skipped", run
    assert resource_versions(box) == before


def test_the_old_revision_is_not_removed_after_the_window_ended(seeded: Sandbox) -> None:
    """remove_old_revision as the DAG calls it, an instant after the window: nothing is
    removed."""
    start = datetime.now(UTC)
    resolved = tasks.validate(
        fast_params(seeded, window_minutes=1),
        variable_target=None,
        configured_target="",
        run_start=start,
        interval_start=None,
        interval_end=None,
        lock_holder="tests/it-window-over",
    )
    try:
        with pytest.raises(WavesPaused) as paused:
            tasks.remove_old_revision(resolved, "it-window-over", now=start.timestamp() + 61)
    finally:
        tasks.release_lock(resolved)
    assert "kept" in paused.value.reason
    assert cluster.revision_objects(seeded.kube(), seeded.old_revision), "removed after the window"
