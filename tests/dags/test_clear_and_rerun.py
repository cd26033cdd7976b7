"""What keeps the old revision in use: kept when the plan knew it, a failure when it appeared
during the run, and a failed run finished by clearing the failed task in the UI.

A bare pod (no controller, so no restart can move it) injected by the old revision before
the run is in its plan: the run completes and keeps the old revision, saying why. A
namespace pinned to the old revision while the run goes is not: `remove_old_revision`
refuses to remove that revision. The fix is the one its message names: remove that user. The task
is then cleared with its downstream tasks through the REST API (`POST
/api/v2/dags/{dag}/clearTaskInstances`, what the UI's Clear sends) and the same run is
resumed (see `dag_runs.resume`).
"""

from __future__ import annotations

import time

import pytest
from dag_runs import (
    MESH,
    RestApi,
    fast_params,
    load_dag,
    resume,
    revisions,
    run_dag,
    states,
    wait_for_task,
)
from sandbox_fixture import Sandbox

from istio_upgrade import cluster, progress

pytestmark = pytest.mark.sandbox

STRAY = ("foo", "stray")  # namespace, pod
PINNED = "late-pinned"  # a namespace labelled with the old revision during the run


def owned_pod_uids(box: Sandbox) -> dict[str, set[str]]:
    """Pods of Deployments and StatefulSets per namespace (the stray pod is not one)."""
    return {
        ns.name: {p.uid for p in progress.live_pods(ns) if p.owner is not None}
        for ns in cluster.namespace_states(box.kube(), MESH)
    }


def stray_revision(box: Sandbox) -> str | None:
    (ns,) = cluster.namespace_states(box.kube(), [STRAY[0]])
    return next((p.revision for p in ns.pods if p.name == STRAY[1]), None)


def test_a_user_known_before_the_run_keeps_the_old_revision_and_the_run_completes(
    seeded: Sandbox, rest_api: RestApi
) -> None:
    box, kube = seeded, seeded.kube()
    namespace, pod = STRAY
    box.kubectl("run", pod, "-n", namespace, "--image=busybox", "--restart=Never")
    try:
        deadline = time.monotonic() + 30
        while stray_revision(box) != box.old_revision:
            assert time.monotonic() < deadline, "the stray pod was not injected by the old one"
            time.sleep(0.5)

        dr = run_dag(fast_params(box))
        run = states(dr.run_id)
        assert str(dr.state) == "success", run
        assert run["finish_waves"] == "success", run
        assert run["remove_old_revision"] == "skipped", run  # kept, as the plan said
        assert run["conclude"] == "success", run
        assert not [t for t, s in run.items() if s == "failed"], run
        report = rest_api.xcom(dr.run_id, "report")
        assert report["phase"] == "completed", report
        assert (
            f"revision {box.old_revision} kept: used by pod {namespace}/{pod}" in (report["reason"])
        )
        assert cluster.revision_objects(kube, box.old_revision), "removed while still in use"
        assert revisions(box) == {n: {box.new_revision} for n in MESH}
    finally:
        box.kubectl("delete", "pod", pod, "-n", namespace, "--wait=true", "--ignore-not-found")


def test_clear_the_failed_task_after_the_fix_and_the_same_run_completes(
    seeded: Sandbox, rest_api: RestApi
) -> None:
    box, kube = seeded, seeded.kube()

    def pin_a_namespace_to_the_old_revision() -> None:
        # once the canary is judged, long before the old revision's removal is checked
        wait_for_task("metric_gate", "success")
        box.kubectl("create", "namespace", PINNED)
        box.kubectl("label", "namespace", PINNED, f"istio.io/rev={box.old_revision}")

    try:
        dr = run_dag(fast_params(box), while_running=pin_a_namespace_to_the_old_revision)
        run = states(dr.run_id)
        assert str(dr.state) == "failed", run
        assert run["finish_waves"] == "success", run  # every workload moved
        assert run["remove_old_revision"] == "failed", run  # ... but a new user appeared
        assert run["conclude"] == "failed", run
        report = rest_api.xcom(dr.run_id, "report")
        assert report["phase"] == "moved", report  # not "canary": every wave finished
        assert "remove_old_revision failed" in report["reason"], report
        assert cluster.revision_objects(kube, box.old_revision), "removed while still in use"
        assert cluster.tag_revision(kube, "default") == box.new_revision
        assert revisions(box) == {n: {box.new_revision} for n in MESH}
        moved = owned_pod_uids(box)

        box.kubectl("delete", "namespace", PINNED, "--wait=true")
        cleared = rest_api.clear(dr.run_id, ["remove_old_revision"])
        assert cleared == ["conclude", "remove_old_revision", "report"]
        again = resume(load_dag(), dr.run_id)

        run = states(dr.run_id)
        assert str(again.state) == "success", run
        assert run["remove_old_revision"] == run["conclude"] == "success", run
        assert cluster.revision_objects(kube, box.old_revision) == []
        assert owned_pod_uids(box) == moved, "the resumed run restarted workloads again"
        assert rest_api.xcom(dr.run_id, "report")["phase"] == "completed"
    finally:
        box.kubectl("delete", "namespace", PINNED, "--ignore-not-found", "--wait=true")
