"""Whole runs of the upgrade DAG (`dag.test()`) against the sandbox, judged by cluster state."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from dag_runs import (
    APPS,
    MESH,
    RestApi,
    fast_params,
    no_room_for_a_new_pod,
    pod_uids,
    resource_versions,
    revisions,
    run_dag,
)
from dag_runs import states as run_states
from sandbox_fixture import Sandbox

from istio_upgrade import cluster, istioctl_pod, plan, progress, steps, upgrade_lock
from istio_upgrade.istioctl import install_args, tag_set_args, uninstall_args
from istio_upgrade.model import revision_version
from istio_upgrade.params import TARGET_VARIABLE

ISTIOCTL_PODS = ",".join(f"{k}={v}" for k, v in istioctl_pod.LABELS.items())

pytestmark = pytest.mark.sandbox


def states(dr: Any) -> dict[str, str]:
    """task_id[map_index] -> state of every task instance of the run."""
    return run_states(dr.run_id)


def set_knobs(box: Sandbox, knobs: dict[str, Any]) -> None:
    req = urllib.request.Request(
        f"{box.traffic_url}/knobs",
        method="PUT",
        data=json.dumps(knobs).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=5).close()


def test_happy_path_then_a_rerun_changes_nothing(seeded: Sandbox, rest_api: RestApi) -> None:
    box, kube = seeded, seeded.kube()
    dr = run_dag(fast_params(box))
    assert str(dr.state) == "success", states(dr)

    assert cluster.tag_revision(kube, "default") == box.new_revision
    snap = cluster.snapshot(kube)
    for ns in snap.namespaces:
        pods = progress.live_pods(ns)
        assert pods and {p.revision for p in pods} == {box.new_revision}, ns.name
        assert {p.proxy_version for p in pods} == {box.env["SANDBOX_NEW_VERSION"]}, ns.name
    assert cluster.revision_objects(kube, box.old_revision) == []
    run_states = states(dr)
    assert run_states["rollback.move_tag_back"] == "skipped"
    mapped = {k: v for k, v in run_states.items() if k.startswith("upgrade_namespace[")}
    assert list(mapped.values()) == ["success"] * 3, run_states  # foo, baz, qux after bar
    assert all(v in ("success", "skipped") for v in run_states.values()), run_states

    # A scheduled run afterwards: no target in its params, the Variable names the revision
    # the mesh already runs, so it skips cleanly and touches nothing.
    before = pod_uids(box, (*APPS, "istio-ingress"))
    rest_api.set_variable(TARGET_VARIABLE, box.new_revision)
    try:
        again = run_dag(fast_params(box, target_revision=""))
    finally:
        rest_api.delete_variable(TARGET_VARIABLE)
    assert str(again.state) == "success"
    assert states(again)["validate"] == "skipped"
    assert pod_uids(box, (*APPS, "istio-ingress")) == before, "a re-run restarted pods"


def test_bad_canary_rolls_back(seeded: Sandbox) -> None:
    box, kube = seeded, seeded.kube()
    untouched = pod_uids(box, ("foo", "baz", "qux"))
    set_knobs(box, {"versions": {box.env["SANDBOX_NEW_VERSION"]: {"error_rate": 0.6}}})
    try:
        dr = run_dag(fast_params(box, remove_new_revision_on_rollback=True))
    finally:
        set_knobs(box, {})
    run_states = states(dr)
    assert str(dr.state) == "failed"
    assert run_states["rollback.verify_rolled_back"] == "success", run_states
    assert run_states["remaining_namespaces"] == "skipped"
    assert run_states["conclude"] == "failed"

    assert cluster.tag_revision(kube, "default") == box.old_revision
    for name in ("bar", "istio-ingress"):
        (ns,) = cluster.namespace_states(kube, [name])
        assert {p.revision for p in progress.live_pods(ns)} == {box.old_revision}, name
    assert pod_uids(box, ("foo", "baz", "qux")) == untouched, "rollback touched other namespaces"
    assert cluster.revision_objects(kube, box.new_revision) == []


def test_dry_run_changes_nothing(seeded: Sandbox) -> None:
    before = resource_versions(seeded)
    dr = run_dag(fast_params(seeded, dry_run=True))
    assert str(dr.state) == "success"
    run_states = states(dr)
    assert run_states["show_plan"] == "success"
    assert run_states["precheck"] == "skipped"
    assert resource_versions(seeded) == before


def test_bad_input_fails_before_any_change(seeded: Sandbox) -> None:
    before = resource_versions(seeded)
    dr = run_dag(fast_params(seeded, canary_namespaces=["nope"]))
    assert str(dr.state) == "failed"
    run_states = states(dr)
    assert run_states["validate"] == "failed"
    assert run_states["precheck"] == "upstream_failed"
    assert resource_versions(seeded) == before


def test_a_second_upgrade_of_the_cluster_is_refused_before_any_change(seeded: Sandbox) -> None:
    """Another Airflow (or a copy of the DAG) holds the cluster: nothing runs, its lock stays."""
    kube = seeded.kube()
    other = "other-airflow/istio_canary_upgrade/manual__elsewhere"
    upgrade_lock.hold(kube, other, 600)
    try:
        before = resource_versions(seeded)
        dr = run_dag(fast_params(seeded))
        run_states = states(dr)
        assert str(dr.state) == "failed", run_states
        assert run_states["validate"] == "failed", run_states  # once: a refusal, not retried
        assert run_states["precheck"] == "upstream_failed", run_states
        assert run_states["conclude"] == "failed", run_states
        assert resource_versions(seeded) == before
        lock = upgrade_lock.current(kube)
        assert lock is not None and lock.holder == other, "the other run's lock was released"
    finally:
        upgrade_lock.release(kube, other)


def test_pod_runner_upgrades_with_istioctl_pods(seeded: Sandbox, rest_api: RestApi) -> None:
    """istioctl_runner 'pod': every istioctl command of the run ran as a pod, none is left.
    With no bake time, the gate's one good check decides on the worker."""
    box, kube = seeded, seeded.kube()
    dr = run_dag(fast_params(box, istioctl_runner="pod", bake_seconds=0))
    assert str(dr.state) == "success", states(dr)
    gate = rest_api.xcom(dr.run_id, "metric_gate")
    assert gate["verdict"] == "passed" and gate["checks_done"] == 1, gate
    assert cluster.tag_revision(kube, "default") == box.new_revision
    assert cluster.revision_objects(kube, box.old_revision) == []
    assert revisions(box) == {ns: {box.new_revision} for ns in MESH}

    # The runtime stand-in keeps each pod's output by pod name, named from the run id.
    logs = Path(box.env["SANDBOX_HOME"]) / "runtime" / "logs" / istioctl_pod.NAMESPACE
    version = revision_version(box.new_revision) or ""
    expected = {
        "x precheck": ("x", "precheck"),
        "install": install_args(box.new_revision, "minimal"),
        "tag set": tag_set_args("default", box.new_revision),
        "uninstall": uninstall_args(box.old_revision),
    }
    for what, args in expected.items():
        name = istioctl_pod.pod_name(args, version, key=dr.run_id)
        assert (logs / name / "istioctl.log").exists(), f"{what} did not run as pod {name}"
    left = box.kubectl(
        "get", "pods", "-n", istioctl_pod.NAMESPACE, "-l", ISTIOCTL_PODS, "-o", "name"
    )
    assert left == "", f"succeeded istioctl pods were not deleted: {left}"


def test_a_failed_wave_stops_the_later_waves_at_once(seeded: Sandbox, rest_api: RestApi) -> None:
    """Later waves do not wait out a timeout behind a failed namespace, and it names itself."""
    box, kube = seeded, seeded.kube()
    # The StatefulSet's namespace is the canary: a StatefulSet replaces a pod by deleting it
    # first, which would free room in the quota below.
    params = fast_params(box, wave_concurrency=1, canary_namespaces=["baz"])
    waves = plan.build_plan(steps.validate(kube, params), cluster.snapshot(kube)).waves
    first, later = waves[0][0], [ns for wave in waves[1:] for ns in wave]
    assert later, waves
    # The restart's surge pod is refused, the rollout stalls and its (shortened) progress
    # deadline fails it.
    assert not kube.apps.list_namespaced_stateful_set(first).items, first
    untouched = pod_uids(box, tuple(later))
    with no_room_for_a_new_pod(box, first):
        dr = run_dag(params)
    assert str(dr.state) == "failed"
    run_states = states(dr)
    mapped = [run_states[f"upgrade_namespace[{i}]"] for i in range(1 + len(later))]
    assert mapped == ["failed"] + ["skipped"] * len(later), run_states
    assert run_states["finish_waves"] == "failed"
    for i in range(1, 1 + len(later)):
        outcome = rest_api.xcom(dr.run_id, "upgrade_namespace", "outcome", i)
        assert outcome["state"] == "not_started" and outcome["failed"] == [first], outcome
        assert f"{first} of an earlier wave failed" in outcome["reason"], outcome
    assert pod_uids(box, tuple(later)) == untouched, "a later wave started after a failure"
