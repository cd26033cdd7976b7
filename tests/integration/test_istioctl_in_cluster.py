"""istioctl as a pod (istioctl_runner 'pod') against the sandbox.

The sandbox's runtime stand-in (sandbox/runtime.py) runs the image's istioctl with a token of
the pod's ServiceAccount, so the pod's RBAC (include/rbac.yaml) is the real apiserver's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_fixture import REPO, Sandbox

from istio_upgrade import cluster, istioctl_pod, steps
from istio_upgrade.errors import ClusterStateError, ParamError
from istio_upgrade.istioctl_in_cluster import PodIstioctl, phase
from istio_upgrade.model import revision_version

pytestmark = pytest.mark.sandbox

RBAC = REPO / "include" / "rbac.yaml"


@pytest.fixture
def runner(sandbox: Sandbox, request: pytest.FixtureRequest) -> Iterator[PodIstioctl]:
    """A runner keyed by the test's name, so its pods are the test's own."""
    kube = sandbox.kube()
    version = revision_version(sandbox.new_revision) or ""
    yield PodIstioctl(kube, version, key=request.node.name, poll_seconds=0.2)
    for pod in kube.core.list_namespaced_pod(
        istioctl_pod.NAMESPACE, label_selector="app.kubernetes.io/component=istioctl"
    ).items:
        cluster.delete_pod(kube, istioctl_pod.NAMESPACE, pod.metadata.name)


def runs_of(box: Sandbox, pod: str) -> int:
    """How often the runtime stand-in started a container of this pod name."""
    log = Path(box.env["SANDBOX_HOME"]) / "logs" / "runtime.log"
    return log.read_text().count(f"pod={istioctl_pod.NAMESPACE}/{pod} run=")


def name_of(runner: PodIstioctl, *args: str) -> str:
    return str(runner.pod(*args)["metadata"]["name"])


def test_precheck_runs_as_the_service_account_and_its_pod_is_removed(
    sandbox: Sandbox, runner: PodIstioctl
) -> None:
    result = runner.run("x", "precheck")
    assert result.ok, result.summary()
    assert "No issues found" in result.stdout
    assert cluster.read_pod(runner.kube, runner.namespace, name_of(runner, "x", "precheck")) is None


def test_rbac_lets_the_pod_move_a_tag_and_read_it_back(
    sandbox: Sandbox, runner: PodIstioctl
) -> None:
    # A tag of this test's own, so the mesh's `default` tag is not touched.
    kube = runner.kube
    try:
        assert steps.move_tag(kube, runner, "it-pod-runner", sandbox.old_revision)
        assert cluster.tag_revision(kube, "it-pod-runner") == sandbox.old_revision
    finally:
        kube.admission.delete_mutating_webhook_configuration("istio-revision-tag-it-pod-runner")


def test_failed_pod_is_kept_then_replaced_by_the_retry(
    sandbox: Sandbox, runner: PodIstioctl
) -> None:
    args = ("tag", "set", "--no-such-flag")
    name = name_of(runner, *args)
    runs = runs_of(sandbox, name)  # the log outlives sessions; count this test's runs only
    first = runner.run(*args)
    assert not first.ok and "unknown flag" in first.stdout
    kept = cluster.read_pod(runner.kube, runner.namespace, name)
    assert kept is not None and phase(kept) == "Failed", "a failed pod stays for describe"

    second = runner.run(*args)
    assert second.returncode == first.returncode
    again = cluster.read_pod(runner.kube, runner.namespace, name)
    assert again is not None and again["metadata"]["uid"] != kept["metadata"]["uid"]
    assert runs_of(sandbox, name) - runs == 2


def test_a_retry_reattaches_to_the_pod_its_earlier_try_started(
    sandbox: Sandbox, runner: PodIstioctl
) -> None:
    # The earlier try created the pod and its worker died: the retry must wait for that pod,
    # not run the command a second time.
    args = ("version", "--remote=false")
    body = runner.pod(*args)
    runs = runs_of(sandbox, body["metadata"]["name"])
    assert cluster.create_pod(runner.kube, body)
    result = runner.run(*args)
    assert result.ok, result.summary()
    assert runs_of(sandbox, body["metadata"]["name"]) - runs == 1


def test_an_image_the_nodes_cannot_pull_fails_at_once_and_leaves_no_pod(
    sandbox: Sandbox,
) -> None:
    # The sandbox built no istioctl 9.9.9: its runtime answers as a node that cannot pull it.
    missing = PodIstioctl(sandbox.kube(), "9.9.9", key="it-missing-image", poll_seconds=0.2)
    with pytest.raises(ClusterStateError) as err:
        missing.run("version")
    assert "ImagePullBackOff" in str(err.value)
    assert "istioctl_image" in err.value.fix
    assert cluster.read_pod(missing.kube, missing.namespace, name_of(missing, "version")) is None


def test_validate_refuses_the_pod_runner_without_its_service_account(sandbox: Sandbox) -> None:
    kube = sandbox.kube()
    kube.core.delete_namespaced_service_account(
        istioctl_pod.SERVICE_ACCOUNT, istioctl_pod.NAMESPACE
    )
    try:
        with pytest.raises(ParamError) as err:
            steps.validate(
                kube, {"target_revision": sandbox.new_revision, "istioctl_runner": "pod"}
            )
        assert err.value.param == "istioctl_runner"
        assert "include/rbac.yaml" in err.value.fix
    finally:
        sandbox.kubectl("apply", "-f", str(RBAC))
