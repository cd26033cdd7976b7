"""A failed run finished by clearing its failed task in the UI, under a real scheduler.

A namespace pinned to the old revision while the run goes (after the gate, long before the
old revision's removal is checked) is a user the plan did not know: `remove_old_revision`
refuses to remove that revision and the run ends red. The fix is the one its message names:
remove that user. The task is then cleared with its downstream tasks through the REST API
(`POST /api/v2/dags/{dag}/clearTaskInstances`, what the UI's Clear sends), and the scheduler
runs the same run on to its end.
"""

from __future__ import annotations

import pytest

from istio_upgrade import cluster, progress
from istio_upgrade.cluster import Kube, KubeTarget
from standalone.standalone_stack import EXTRA_NAMESPACES, Stack, reseed
from standalone.test_fanout import kubectl
from standalone.test_spurious_failures import wait_until

pytestmark = pytest.mark.sandbox

MESH = ("foo", "bar", "baz", "qux", *(f"mesh-{i:04d}" for i in range(EXTRA_NAMESPACES)))
PINNED = "late-pinned"  # a namespace labelled with the old revision during the run


def owned_pod_uids(kube: Kube) -> dict[str, set[str]]:
    """Pods of Deployments and StatefulSets per meshed namespace."""
    return {
        ns.name: {p.uid for p in progress.live_pods(ns) if p.owner is not None}
        for ns in cluster.namespace_states(kube, MESH)
    }


def test_clear_the_failed_removal_after_the_fix_and_the_same_run_completes(
    stack: Stack,
) -> None:
    reseed(stack)
    kube = cluster.connect(KubeTarget(kubeconfig=stack.box["KUBECONFIG"]))
    old, new = stack.box["SANDBOX_OLD_REVISION"], stack.box["SANDBOX_NEW_REVISION"]
    try:
        run_id = stack.start(wave_concurrency=4)
        wait_until(stack, run_id, "metric_gate", "success")
        kubectl(stack, "create", "namespace", PINNED)
        kubectl(stack, "label", "namespace", PINNED, f"istio.io/rev={old}")

        assert stack.finished(run_id) == "failed", stack.progress.getvalue()
        states = stack.states(run_id)
        assert states["finish_waves"] == "success", states  # every workload moved
        assert states["remove_old_revision"] == "failed", states  # ... but a new user appeared
        assert states["conclude"] == "failed", states
        assert [t for t, s in states.items() if s == "failed"] == [
            "remove_old_revision",
            "conclude",
        ], states
        report = stack.xcom(run_id, "report")
        assert report["phase"] == "moved", report  # not "canary": every wave finished
        assert "remove_old_revision failed" in report["reason"], report
        assert cluster.revision_objects(kube, old), "removed while still in use"
        assert cluster.tag_revision(kube, "default") == new
        moved = owned_pod_uids(kube)

        kubectl(stack, "delete", "namespace", PINNED, "--wait=true")
        cleared = stack.clear(run_id, ["remove_old_revision"])
        assert cleared == ["conclude", "remove_old_revision", "report"]

        assert stack.finished(run_id) == "success", stack.progress.getvalue()
        states = stack.states(run_id)
        assert all(s in ("success", "skipped") for s in states.values()), states
        assert states["remove_old_revision"] == states["conclude"] == "success", states
        assert cluster.revision_objects(kube, old) == []
        assert owned_pod_uids(kube) == moved, "the resumed run restarted workloads again"
        assert stack.xcom(run_id, "report")["phase"] == "completed"
    finally:
        kubectl(stack, "delete", "namespace", PINNED, "--ignore-not-found", "--wait=true")
