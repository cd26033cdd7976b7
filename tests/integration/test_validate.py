"""Bad params are refused before anything in the cluster changes, naming the param and the fix."""

from __future__ import annotations

from typing import Any

import pytest
from sandbox_fixture import Sandbox

from istio_upgrade import cluster, steps
from istio_upgrade.errors import ClusterStateError, ParamError

pytestmark = pytest.mark.sandbox


def params(box: Sandbox, **overrides: Any) -> dict[str, Any]:
    return {"target_revision": box.new_revision, **overrides}


BAD = [
    pytest.param({"target_revision": "1.32.0"}, "target_revision", "e.g.", id="dotted-revision"),
    pytest.param({"target_revision": ""}, "target_revision", "", id="missing-target"),
    pytest.param(
        {"target_revision": "OLD", "current_revision": "OLD"},
        "current_revision",
        "",
        id="old-equals-new",
    ),
    pytest.param({"tag": "prod"}, "tag", "istioctl tag set", id="unknown-tag"),
    pytest.param({"canary_namespaces": ["nope"]}, "canary_namespaces", "", id="unknown-canary"),
    pytest.param(
        {"canary_namespaces": ["bar"], "exclude_namespaces": ["bar"]},
        "canary_namespaces",
        "exclude_namespaces",
        id="canary-also-excluded",
    ),
    pytest.param({"min_success_rate": -0.5}, "min_success_rate", "", id="negative-rate"),
    pytest.param({"max_p99_ms": 0}, "max_p99_ms", "", id="zero-latency-limit"),
    pytest.param({"wave_concurrency": 0}, "wave_concurrency", "", id="zero-concurrency"),
    pytest.param({"gateways": ["istio-ingress"]}, "gateways", "", id="gateway-without-name"),
    pytest.param({"gateways": ["istio-ingress/nope"]}, "gateways", "", id="unknown-gateway"),
    pytest.param(
        {"include_namespaces": ["kube-system"]},
        "include_namespaces",
        "namespaces following tag",
        id="namespace-not-following-tag",
    ),
    pytest.param(
        {"exclude_namespaces": ["fooo"]}, "exclude_namespaces", "spelling", id="misspelt-exclusion"
    ),
    pytest.param({"current_revision": "1-0-0"}, "current_revision", "", id="unknown-current"),
    pytest.param({"metric_window": "soon"}, "metric_window", "", id="bad-window"),
    pytest.param({"istioctl": "/no/such/istioctl"}, "istioctl", "", id="missing-istioctl"),
    pytest.param(
        {"istioctl_runner": "pod", "istioctl": "/usr/local/bin/istioctl"},
        "istioctl",
        "'1.31.0'",
        id="pod-runner-given-a-path",
    ),
    pytest.param({"istioctl_runner": "remote"}, "istioctl_runner", "'pod'", id="unknown-runner"),
    pytest.param(
        {"istioctl_runner": "pod", "install_overlay": "/opt/overlay.yaml"},
        "install_overlay",
        "istioctl_runner 'local'",
        id="pod-runner-with-worker-file",
    ),
    pytest.param(
        {"istioctl_runner": "pod", "istioctl_image": "docker.io/istio/istioctl:1.32.0"},
        "istioctl_image",
        "tag comes from",
        id="image-with-tag",
    ),
]


@pytest.mark.parametrize(("overrides", "param", "fix_hint"), BAD)
def test_bad_params_are_refused_before_any_change(
    sandbox: Sandbox, overrides: dict[str, Any], param: str, fix_hint: str
) -> None:
    overrides = {k: sandbox.old_revision if v == "OLD" else v for k, v in overrides.items()}
    before = sandbox.resource_versions()
    with pytest.raises(ParamError) as err:
        steps.validate(sandbox.kube(), params(sandbox, **overrides))
    assert err.value.param == param, str(err.value)
    assert err.value.fix, "every refusal says how to fix it"
    assert fix_hint in str(err.value)
    assert sandbox.resource_versions() == before


def test_a_mesh_helm_installed_is_refused_before_any_change(sandbox: Sandbox) -> None:
    """A mesh installed with Istio's charts (`sandbox reset --installer helm`: base, then
    istiod-<old>, tags from the chart's templates): the run refuses to go on with istioctl."""
    kube = sandbox.kube()
    old = sandbox.old_revision
    sandbox.reset(installer="helm")
    try:
        releases = kube.core.list_namespaced_secret(
            cluster.ISTIO_NAMESPACE, field_selector="type=helm.sh/release.v1"
        ).items
        assert {s.metadata.labels["name"] for s in releases} == {"istio-base", f"istiod-{old}"}
        snapshot = cluster.snapshot(kube)
        plane = snapshot.control_plane(old)
        assert plane is not None and plane.helm_release == f"istiod-{old}", plane
        assert cluster.tag_revision(kube, "default") == old
        before = sandbox.resource_versions()
        with pytest.raises(ClusterStateError) as err:
            steps.validate(kube, params(sandbox))
        assert f"installer of deployment istio-system/istiod-{old} is 'Helm'" in str(err.value)
        assert "upgrade a Helm-managed Istio with Helm" in str(err.value)
        assert sandbox.resource_versions() == before
    finally:
        sandbox.reset()  # istioctl takes the mesh back
    plane = cluster.snapshot(kube).control_plane(old)
    assert plane is not None and plane.helm_release is None, plane
    steps.validate(kube, params(sandbox))  # the same mesh, istioctl's again, passes


def test_a_legacy_injector_beside_the_tag_is_refused_before_any_change(sandbox: Sandbox) -> None:
    """An `istio-sidecar-injector` left by an install without revision selects the same
    namespaces as the `default` tag (IST0139): the run refuses, naming both."""
    kube = sandbox.kube()
    tag = kube.admission.read_mutating_webhook_configuration("istio-revision-tag-default")
    legacy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "istio-sidecar-injector"},
        "webhooks": [
            {**kube.api.sanitize_for_serialization(w), "failurePolicy": "Ignore"}
            for w in tag.webhooks
        ],
    }
    kube.admission.create_mutating_webhook_configuration(legacy)
    try:
        before = sandbox.resource_versions()
        with pytest.raises(ClusterStateError) as err:
            steps.validate(kube, params(sandbox))
        message = str(err.value)
        assert "foo: istio-revision-tag-default, istio-sidecar-injector" in message, message
        assert "IST0139" in message
        assert sandbox.resource_versions() == before
    finally:
        kube.admission.delete_mutating_webhook_configuration("istio-sidecar-injector")
