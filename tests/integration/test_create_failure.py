"""A rollout whose pods are refused is reported failed from the Deployment's own condition.

The sandbox's real kube-controller-manager sets ReplicaFailure/FailedCreate on the new
ReplicaSet and copies it onto the Deployment when the apiserver refuses its pods (here a
ResourceQuota; an unreachable injector webhook with failurePolicy Fail is refused the same
way), so the rollout fails after a short grace instead of at the progress deadline (600 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from plain_deployment import plain_deployment
from sandbox_fixture import Sandbox, wait_for

from istio_upgrade import cluster
from istio_upgrade.model import WorkloadRef

NS = "it-create-failure"
WAIT_SECONDS = 60


@pytest.fixture
def kube(sandbox: Sandbox) -> Iterator[cluster.Kube]:
    kube = cluster.connect(cluster.KubeTarget(kubeconfig=sandbox.kubeconfig))
    sandbox.kubectl("create", "namespace", NS)
    try:
        yield kube
    finally:
        sandbox.kubectl("delete", "namespace", NS, "--wait=false")


def test_a_refused_pod_fails_the_rollout_after_the_grace(kube: cluster.Kube) -> None:
    ref = WorkloadRef("Deployment", NS, "web")
    kube.apps.create_namespaced_deployment(NS, plain_deployment())
    wait_for(
        "the first rollout", lambda: cluster.rollout_states(kube, [ref])[0].complete, WAIT_SECONDS
    )
    # room for the one pod it has, none for the surge pod its restart needs
    kube.core.create_namespaced_resource_quota(
        NS, {"metadata": {"name": "one-pod"}, "spec": {"hard": {"pods": "1"}}}
    )
    wait_for(
        "the quota to count the pod",
        lambda: (
            (kube.core.read_namespaced_resource_quota("one-pod", NS).status.used or {}).get("pods")
            == "1"
        ),
        WAIT_SECONDS,
    )
    cluster.stamp_restart(kube, ref, "it-run")

    def refused() -> Any:
        obj = kube.apps.read_namespaced_deployment("web", NS)
        conds = [c for c in obj.status.conditions or [] if c.type == "ReplicaFailure"]
        return (obj, conds[0]) if conds and conds[0].status == "True" else None

    obj, cond = wait_for("the controller to report the refused pod", refused, WAIT_SECONDS)
    began = cond.last_transition_time.timestamp()

    soon = cluster.rollout_state(obj, now=began + 1)
    assert not soon.failed and not soon.complete, soon.message
    later = cluster.rollout_state(obj, now=began + cluster.CREATE_FAILURE_GRACE_SECONDS + 1)
    assert later.failed, later.message
    assert "exceeded quota" in later.message and "Deployment/it-create-failure/web" in (
        later.message
    )
