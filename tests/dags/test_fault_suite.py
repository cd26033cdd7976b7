"""Faults mid-upgrade: the run ends red, names the step, and leaves the mesh serving.

Each test makes one step fail the way it fails in a real cluster, runs the DAG
(`dag.test()`) and asserts the run's state, every task's state that matters, the report
and the cluster: where the tag is, and that every namespace still has Ready pods injected by
an installed revision. A failure after the tag moved and before the decision rolls back.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from dag_runs import (
    MESH,
    RestApi,
    assert_mesh_serves,
    fast_params,
    no_room_for_a_new_pod,
    pod_uids,
    revisions,
    run_dag,
    states,
    wait_for_task,
)
from kubernetes.client.exceptions import ApiException
from sandbox_fixture import Sandbox, wait_for

from istio_upgrade import cluster
from sandbox.components import COMPONENTS, Layout, default_layout, start, stop

pytestmark = pytest.mark.sandbox

ROLLBACK = (
    "rollback.move_tag_back",
    "rollback.restart_moved",
    "rollback.wait_rolled_back",
    "rollback.verify_rolled_back",
)


def assert_rolled_back(box: Sandbox, rest_api: RestApi, dr: Any, because: str) -> None:
    """The run is red, rolled back, the report says `because`, and the mesh serves on the
    old revision."""
    run = states(dr.run_id)
    assert str(dr.state) == "failed", run
    assert run["decide"] == "success", run
    assert all(run[t] == "success" for t in ROLLBACK), run
    assert run["remaining_namespaces"] == "skipped", run
    assert run["upgrade_namespace"] in ("skipped", "upstream_failed"), run  # never ran
    assert run["report"] == "success" and run["conclude"] == "failed", run
    report = rest_api.xcom(dr.run_id, "report")
    assert report["phase"] == "rolled_back", report
    assert because in report["reason"], report
    assert cluster.tag_revision(box.kube(), "default") == box.old_revision
    assert revisions(box) == {n: {box.old_revision} for n in MESH}
    assert_mesh_serves(box)


def test_a_canary_rollout_that_cannot_complete_is_rolled_back(
    seeded: Sandbox, rest_api: RestApi
) -> None:
    box = seeded
    untouched = pod_uids(box, ("foo", "baz", "qux"))
    with no_room_for_a_new_pod(box, "bar"):
        dr = run_dag(fast_params(box, canary_namespaces=["bar"]))
    run = states(dr.run_id)
    assert run["upgrade_canary"] == "failed", run
    assert run["metric_gate"] == run["approve_canary"] == "upstream_failed", run
    assert_rolled_back(box, rest_api, dr, "upgrade_canary failed")
    assert pod_uids(box, ("foo", "baz", "qux")) == untouched, "rollback touched other namespaces"


def test_a_gateway_rollout_that_cannot_complete_is_rolled_back(
    seeded: Sandbox, rest_api: RestApi
) -> None:
    box = seeded
    untouched = pod_uids(box, ("foo", "bar", "baz", "qux"))
    with no_room_for_a_new_pod(box, "istio-ingress"):
        dr = run_dag(fast_params(box))
    run = states(dr.run_id)
    assert run["upgrade_gateways"] == "failed", run
    assert run["upgrade_canary"] == "upstream_failed", run
    assert_rolled_back(box, rest_api, dr, "upgrade_gateways failed")
    assert pod_uids(box, ("foo", "bar", "baz", "qux")) == untouched, "a namespace was restarted"


def test_prometheus_down_during_the_gate_fails_the_gate_and_rolls_back(
    seeded: Sandbox, rest_api: RestApi
) -> None:
    box = seeded
    layout = Layout(home=Path(box.env["SANDBOX_HOME"]), cache=default_layout().cache)
    (prometheus,) = [c for c in COMPONENTS if c.name == "prometheus"]

    def stop_prometheus_while_it_bakes() -> None:
        # the canary's baseline was measured before: from here on only the gate asks
        wait_for_task("upgrade_canary", "success")
        assert stop(layout, prometheus.name), "Prometheus was not running"

    try:
        dr = run_dag(
            fast_params(box, bake_seconds=12),
            while_running=stop_prometheus_while_it_bakes,
        )
    finally:
        start(layout, prometheus)
    run = states(dr.run_id)
    assert run["metric_gate"] == "success", run  # the verdict is its result, not its state
    gate = rest_api.xcom(dr.run_id, "metric_gate")
    assert gate["verdict"] == "failed" and gate["checks_failed"] >= 2, gate
    assert "no answer" in json.dumps(gate), gate  # the checks say why
    # red through conclude only: the failed gate is a verdict, not a failed task
    assert [t for t, s in run.items() if s == "failed"] == ["conclude"], run
    assert_rolled_back(box, rest_api, dr, "gate")


@contextlib.contextmanager
def cluster_refuses_deployment(box: Sandbox, name: str) -> Iterator[None]:
    """A ValidatingAdmissionPolicy that refuses a Deployment called `name` (what a policy
    engine such as Gatekeeper or Kyverno does to an object it does not allow)."""
    admission = box.kube().admission
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "it-refuse-deployment"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["deployments"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": f"object.metadata.name != '{name}'",
                    "message": f"the cluster's policy refuses Deployment {name}",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "it-refuse-deployment"},
        "spec": {"policyName": "it-refuse-deployment", "validationActions": ["Deny"]},
    }
    admission.create_validating_admission_policy(policy)
    admission.create_validating_admission_policy_binding(binding)
    probe = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": "probe"}},
            "template": {
                "metadata": {"labels": {"app": "probe"}},
                "spec": {"containers": [{"name": "probe", "image": "probe"}]},
            },
        },
    }

    def refused() -> bool:
        try:
            box.kube().apps.create_namespaced_deployment("istio-system", probe, dry_run="All")
        except ApiException as err:
            return err.status in (400, 403, 422)
        return False

    try:
        wait_for("the admission policy to take effect", refused, 30)
        yield
    finally:
        admission.delete_validating_admission_policy_binding("it-refuse-deployment")
        admission.delete_validating_admission_policy("it-refuse-deployment")


def test_an_install_the_cluster_refuses_stops_before_the_tag_moves(
    seeded: Sandbox, rest_api: RestApi
) -> None:
    box = seeded
    before = revisions(box)

    def quick_retries(dag: Any) -> None:
        # the same two retries, without the 30 s and 60 s waits between them
        dag.task_dict["install_revision"].retry_delay = timedelta(seconds=1)

    with cluster_refuses_deployment(box, f"istiod-{box.new_revision}"):
        dr = run_dag(fast_params(box), prepare=quick_retries)
    run = states(dr.run_id)
    assert str(dr.state) == "failed", run
    assert run["install_revision"] == "failed", run
    assert rest_api.try_numbers(dr.run_id)["install_revision"] == 3  # two retries, then red
    assert run["move_tag"] == run["upgrade_gateways"] == "upstream_failed", run
    assert all(run[t] == "skipped" for t in ROLLBACK), run  # nothing moved: nothing to undo
    assert run["report"] == "success" and run["conclude"] == "failed", run
    report = rest_api.xcom(dr.run_id, "report")
    assert "install_revision failed" in report["reason"], report
    assert cluster.tag_revision(box.kube(), "default") == box.old_revision
    assert revisions(box) == before
    assert_mesh_serves(box)
