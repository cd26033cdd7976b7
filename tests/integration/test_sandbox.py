"""The sandbox is a real Kubernetes + Istio + Prometheus: what the upgrade relies on holds there.

These tests drive the real binaries (kube-apiserver, istioctl of two Istio minors, Prometheus)
and assert on objects read back from the API, each in namespaces of its own.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from sandbox_fixture import Sandbox, wait_for

from istio_upgrade import cluster, health, progress, steps
from istio_upgrade.model import WorkloadRef

pytestmark = pytest.mark.sandbox


def make_namespace(
    kube: cluster.Kube, name: str, tag: str = "default", replicas: int = 2
) -> WorkloadRef:
    """A namespace following `tag` with one Deployment `web` of `replicas` pods."""
    kube.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"istio.io/rev": tag}))
    )
    labels = {"app": "web"}
    kube.apps.create_namespaced_deployment(
        name,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=replicas,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[
                            client.V1Container(
                                name="app", image="registry.k8s.io/e2e-test-images/agnhost:2.53"
                            )
                        ]
                    ),
                ),
            ),
        ),
    )
    return WorkloadRef("Deployment", name, "web")


@pytest.fixture
def namespaces(sandbox: Sandbox) -> Iterator[Callable[[str], str]]:
    """Gives each test fresh namespace names (a deleted one lingers a while); deletes them."""
    created: list[str] = []

    def fresh(prefix: str) -> str:
        created.append(f"{prefix}-{uuid.uuid4().hex[:6]}")
        return created[-1]

    yield fresh
    kube = sandbox.kube()
    for name in created:
        kube.core.delete_namespace(name)


def rolled_out(kube: cluster.Kube, ref: WorkloadRef) -> bool:
    return all(s.complete for s in cluster.rollout_states(kube, [ref]))


def namespace(kube: cluster.Kube, name: str) -> Any:
    return cluster.namespace_states(kube, [name])[0]


def test_apiserver_reports_its_real_version(sandbox: Sandbox) -> None:
    info = client.VersionApi(sandbox.kube().api).get_code()
    assert info.git_version.startswith("v1.37."), info.git_version
    assert (info.major, info.minor) == ("1", "37")


def test_istioctl_precheck_passes(sandbox: Sandbox) -> None:
    out = sandbox.run(sandbox.env["SANDBOX_ISTIOCTL_NEW"], "x", "precheck", check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_two_consecutive_istio_minors(sandbox: Sandbox) -> None:
    old = sandbox.run(sandbox.env["SANDBOX_ISTIOCTL_OLD"], "version", "--remote=false").stdout
    new = sandbox.run(sandbox.env["SANDBOX_ISTIOCTL_NEW"], "version", "--remote=false").stdout
    old_minor = int(old.split(":")[-1].strip().split(".")[1])
    new_minor = int(new.split(":")[-1].strip().split(".")[1])
    assert new_minor == old_minor + 1, (old, new)


def test_seeded_mesh_runs_the_old_revision(sandbox: Sandbox) -> None:
    kube = sandbox.kube()
    assert cluster.tag_revision(kube, "default") == sandbox.old_revision
    snap = cluster.snapshot(kube)
    names = {ns.name for ns in snap.namespaces}
    assert {"foo", "bar", "baz", "qux", "istio-ingress"} <= names
    for ns in snap.namespaces:
        assert progress.on_revision(ns, sandbox.old_revision), ns.name
    baz = snap.namespace("baz")
    assert baz is not None and WorkloadRef("StatefulSet", "baz", "baz-db") in baz.workloads
    gateway = snap.namespace("istio-ingress")
    assert gateway is not None
    assert {p.proxy_version for p in gateway.pods} == {sandbox.env["SANDBOX_OLD_VERSION"]}


def test_new_pod_in_tagged_namespace_gets_the_tags_revision(
    sandbox: Sandbox, namespaces: Callable[[str], str]
) -> None:
    kube = sandbox.kube()
    name = namespaces("it-inject")
    ref = make_namespace(kube, name)
    wait_for("the deployment to roll out", lambda: rolled_out(kube, ref))
    pods = namespace(kube, name).pods
    assert len(pods) == 2
    assert {p.revision for p in pods} == {sandbox.old_revision}
    assert {p.proxy_version for p in pods} == {sandbox.env["SANDBOX_OLD_VERSION"]}


def success_rate(sandbox: Sandbox, ns: str) -> float | None:
    """The namespace's success rate now, or None while Prometheus has no rate for it yet."""
    values = health.query_prometheus(sandbox.prometheus_url, health.success_rate_query(ns, "20s"))
    return values[0] if values and not math.isnan(values[0]) else None


def put_knobs(sandbox: Sandbox, knobs: dict[str, Any]) -> None:
    req = urllib.request.Request(
        f"{sandbox.traffic_url}/knobs",
        method="PUT",
        data=json.dumps(knobs).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def test_success_rate_has_data_and_drops_with_the_knob(
    sandbox: Sandbox, namespaces: Callable[[str], str]
) -> None:
    kube = sandbox.kube()
    name = namespaces("it-metrics")
    ref = make_namespace(kube, name)
    wait_for("the deployment to roll out", lambda: rolled_out(kube, ref))
    healthy = wait_for("a success rate", lambda: success_rate(sandbox, name))
    assert healthy == pytest.approx(1.0)
    put_knobs(sandbox, {"namespaces": {name: {"error_rate": 0.5}}})
    try:
        wait_for(
            "the success rate to drop below 0.9",
            lambda: (success_rate(sandbox, name) or 1.0) < 0.9,
        )
    finally:
        put_knobs(sandbox, {})


@pytest.fixture
def fresh_mesh(sandbox: Sandbox) -> Iterator[Sandbox]:
    """A test that changes revisions or tags starts and leaves the seeded state."""
    sandbox.reset()
    yield sandbox
    sandbox.reset()


def test_canary_upgrade_by_hand_with_the_real_istioctl(
    fresh_mesh: Sandbox, namespaces: Callable[[str], str]
) -> None:
    box, kube = fresh_mesh, fresh_mesh.kube()
    old, new = box.old_revision, box.new_revision
    istioctl_new = box.env["SANDBOX_ISTIOCTL_NEW"]
    name = namespaces("it-upgrade")
    ref = make_namespace(kube, name)
    wait_for("the deployment to roll out", lambda: rolled_out(kube, ref))

    box.run(istioctl_new, "install", "-y", "--set", f"revision={new}", "--set", "profile=minimal")
    planes = {c.revision: c for c in cluster.control_planes(kube)}
    assert planes[new].ready and planes[new].injector_webhook
    assert planes[old].ready, "the old control plane keeps running beside the new one"

    box.run(istioctl_new, "tag", "set", "default", "--revision", new, "--overwrite", "-y")
    assert cluster.tag_revision(kube, "default") == new

    before_restart = time.time()
    assert cluster.restart(kube, ref, "it-upgrade-1")
    (restarted,) = cluster.restart_times(kube, [ref])
    assert restarted >= int(before_restart) - 1, "the restart's time is on the workload"
    time.sleep(1.1)
    assert not cluster.restart(kube, ref, "it-upgrade-1"), "the same stamp restarts nothing"
    assert cluster.restart_times(kube, [ref]) == [restarted], "a retry keeps the first time"
    wait_for(
        "the restart to roll out",
        lambda: rolled_out(kube, ref) and progress.on_revision(namespace(kube, name), new),
    )
    pods = progress.live_pods(namespace(kube, name))
    assert {p.revision for p in pods} == {new}
    assert {p.proxy_version for p in pods} == {box.env["SANDBOX_NEW_VERSION"]}

    box.run(istioctl_new, "uninstall", "--revision", old, "-y")
    wait_for("the old revision's objects to go", lambda: not cluster.revision_objects(kube, old))
    assert old not in {c.revision for c in cluster.control_planes(kube)}


def test_restart_step_run_twice_restarts_once(
    sandbox: Sandbox, namespaces: Callable[[str], str]
) -> None:
    """A retried restart task (same run, same revision) finds its stamp and restarts nothing."""
    kube = sandbox.kube()
    name = namespaces("it-retry")
    ref = make_namespace(kube, name)
    wait_for("the deployment to roll out", lambda: rolled_out(kube, ref))
    before = {p.uid for p in progress.live_pods(namespace(kube, name))}
    # Restart onto a revision the pods do not run, as a rollback would: the step acts.
    stamp = steps.restart_stamp("run-1", "other")
    assert steps.restart_namespaces(kube, [name], "other", stamp)
    wait_for(
        "the restart to roll out",
        lambda: (
            rolled_out(kube, ref)
            and not before & {p.uid for p in progress.live_pods(namespace(kube, name))}
        ),
    )
    after = {p.uid for p in progress.live_pods(namespace(kube, name))}
    steps.restart_namespaces(kube, [name], "other", stamp)
    time.sleep(2)  # long enough for a restart to have replaced pods (ready delay 0.5 s)
    assert rolled_out(kube, ref)
    assert {p.uid for p in progress.live_pods(namespace(kube, name))} == after
