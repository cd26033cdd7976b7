"""A run that fails half-way is finished by clearing the failed task in the UI.

The failure is real and comes from the cluster: a bare pod (no controller, so no restart
can move it) was injected by the old revision, so `check_old_unused` refuses to remove that
revision. The fix is the one its message names: delete the pod. The task is then cleared
with its downstream tasks through the REST API (`POST /api/v2/dags/{dag}/clearTaskInstances`,
what the UI's Clear sends) and the same run is resumed (see `dag_runs.resume`).
"""

from __future__ import annotations

import time

import pytest
from dag_runs import MESH, RestApi, fast_params, load_dag, resume, revisions, run_dag, states
from sandbox_fixture import Sandbox

from istio_upgrade import cluster, progress

pytestmark = pytest.mark.sandbox

STRAY = ("foo", "stray")  # namespace, pod


def owned_pod_uids(box: Sandbox) -> dict[str, set[str]]:
    """Pods of Deployments and StatefulSets per namespace (the stray pod is not one)."""
    return {
        ns.name: {p.uid for p in progress.live_pods(ns) if p.owner is not None}
        for ns in cluster.namespace_states(box.kube(), MESH)
    }


def stray_revision(box: Sandbox) -> str | None:
    (ns,) = cluster.namespace_states(box.kube(), [STRAY[0]])
    return next((p.revision for p in ns.pods if p.name == STRAY[1]), None)


def test_clear_the_failed_task_after_the_fix_and_the_same_run_completes(
    seeded: Sandbox, rest_api: RestApi
) -> None:
    box, kube = seeded, seeded.kube()
    namespace, pod = STRAY
    box.kubectl("run", pod, "-n", namespace, "--image=busybox", "--restart=Never")
    deadline = time.monotonic() + 30
    while stray_revision(box) != box.old_revision:
        assert time.monotonic() < deadline, "the stray pod was not injected by the old revision"
        time.sleep(0.5)

    dr = run_dag(fast_params(box))
    run = states(dr.run_id)
    assert str(dr.state) == "failed", run
    assert run["finish_waves"] == "success", run  # every workload moved
    assert run["check_old_unused"] == "failed", run  # ... but the stray pod uses the old one
    assert run["uninstall_old"] == "upstream_failed", run
    assert run["conclude"] == "failed", run
    assert cluster.revision_objects(kube, box.old_revision), "removed while still in use"
    assert cluster.tag_revision(kube, "default") == box.new_revision
    assert revisions(box) == {n: {box.new_revision} for n in MESH}
    moved = owned_pod_uids(box)

    box.kubectl("delete", "pod", pod, "-n", namespace, "--wait=true")
    cleared = rest_api.clear(dr.run_id, ["check_old_unused"])
    assert cleared == sorted(
        ["check_old_unused", "uninstall_old", "wait_old_removed", "report", "conclude"]
    )
    again = resume(load_dag(), dr.run_id)

    run = states(dr.run_id)
    assert str(again.state) == "success", run
    assert run["check_old_unused"] == run["uninstall_old"] == run["conclude"] == "success", run
    assert cluster.revision_objects(kube, box.old_revision) == []
    assert owned_pod_uids(box) == moved, "the resumed run restarted workloads again"
    assert rest_api.xcom(dr.run_id, "report")["phase"] == "completed"
