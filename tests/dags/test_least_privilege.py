"""Whole upgrades as the ServiceAccounts of include/rbac.yaml instead of the sandbox's admin.

The Airflow connection holds a kubeconfig with a token of a ServiceAccount (TokenRequest
API, as a platform team would issue it), so every permission the upgrade needs is checked by
the real apiserver's RBAC against include/rbac.yaml (which `sandbox/sandbox up --seed`
applies):
- istioctl_runner 'local': `istio-canary-upgrade`, istioctl's own identity, since the
  local istioctl uses the connection's credentials;
- istioctl_runner 'pod': `istio-canary-upgrade-airflow`, which holds only the DAG's roles
  and the runner's: it cannot grant permissions or write cluster-scoped objects; only the
  istioctl pods (as `istio-canary-upgrade`) can.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from dag_runs import fast_params, run_dag
from dag_runs import states as run_states
from kubernetes.client import ApiextensionsV1Api, RbacAuthorizationV1Api
from kubernetes.client.exceptions import ApiException
from sandbox_fixture import Sandbox

from istio_upgrade import cluster, progress
from istio_upgrade.config import CONN_IDS_ENV

pytestmark = pytest.mark.sandbox

CONN_ID = "kubernetes_least_privilege"
NAMESPACE = "istio-system"
ISTIOCTL_ACCOUNT = "istio-canary-upgrade"
AIRFLOW_ACCOUNT = "istio-canary-upgrade-airflow"


def connect_as(box: Sandbox, account: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kubeconfig for the ServiceAccount, and the Airflow connection CONN_ID using it."""
    token = box.kubectl("create", "token", account, "-n", NAMESPACE, "--duration", "1h").strip()
    admin = yaml.safe_load(Path(box.kubeconfig).read_text())
    server = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sandbox", "cluster": server}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "least", "context": {"cluster": "sandbox", "user": account}}],
        "current-context": "least",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": str(path)}}),
    )
    monkeypatch.setenv(CONN_IDS_ENV, f"kubernetes_default,{CONN_ID}")
    return str(path)


@pytest.fixture
def as_istioctl(seeded: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return connect_as(seeded, ISTIOCTL_ACCOUNT, tmp_path, monkeypatch)


@pytest.fixture
def as_airflow(seeded: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return connect_as(seeded, AIRFLOW_ACCOUNT, tmp_path, monkeypatch)


def assert_refused(kubeconfig: str, what: str, call: Callable[[cluster.Kube], object]) -> None:
    """The apiserver answers `call` made with this kubeconfig with 403 Forbidden."""
    kube = cluster.connect(cluster.KubeTarget(kubeconfig=kubeconfig))
    with pytest.raises(ApiException) as refused:
        call(kube)
    assert refused.value.status == 403, f"{what}: {refused.value}"


def assert_upgraded(box: Sandbox, dr: Any) -> None:
    kube = box.kube()
    states = run_states(dr.run_id)
    assert str(dr.state) == "success", states
    assert all(s in ("success", "skipped") for s in states.values()), states
    assert states["remove_old_revision"] == "success", states
    assert cluster.tag_revision(kube, "default") == box.new_revision
    for ns in cluster.snapshot(kube).namespaces:
        assert {p.revision for p in progress.live_pods(ns)} == {box.new_revision}, ns.name
    assert cluster.revision_objects(kube, box.old_revision) == []


def test_the_local_runner_upgrades_as_istioctls_account(seeded: Sandbox, as_istioctl: str) -> None:
    assert_upgraded(seeded, run_dag(fast_params(seeded, kubernetes_conn_id=CONN_ID)))


def test_the_pod_runner_upgrades_as_an_account_that_can_grant_nothing(
    seeded: Sandbox, as_airflow: str
) -> None:
    params = fast_params(seeded, kubernetes_conn_id=CONN_ID, istioctl_runner="pod")
    assert_upgraded(seeded, run_dag(params))


@pytest.mark.parametrize(
    ("what", "call"),
    [
        pytest.param("delete a namespace", lambda k: k.core.delete_namespace("foo"),
                     id="delete-namespace"),
        pytest.param("delete a workload",
                     lambda k: k.apps.delete_namespaced_deployment("foo", "foo"),
                     id="delete-deployment"),
        pytest.param("create a workload outside istio-system",
                     lambda k: k.apps.create_namespaced_deployment(
                         "foo", {"metadata": {"name": "x"}, "spec": {}}),
                     id="create-deployment"),
        pytest.param("delete a pod outside istio-system",
                     lambda k: k.core.delete_collection_namespaced_pod("foo"),
                     id="delete-pods"),
        pytest.param("delete a CRD (and every object of it)",
                     lambda k: ApiextensionsV1Api(k.api).delete_custom_resource_definition(
                         "virtualservices.networking.istio.io"),
                     id="delete-crd"),
    ],
)  # fmt: skip
def test_the_roles_refuse_what_the_upgrade_does_not_need(
    as_istioctl: str, what: str, call: Callable[[cluster.Kube], object]
) -> None:
    assert_refused(as_istioctl, what, call)


@pytest.mark.parametrize(
    ("what", "call"),
    [
        pytest.param("grant itself cluster-admin",
                     lambda k: RbacAuthorizationV1Api(k.api).create_cluster_role_binding({
                         "metadata": {"name": "it-escalate"},
                         "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                     "kind": "ClusterRole", "name": "cluster-admin"},
                         "subjects": [{"kind": "ServiceAccount", "name": AIRFLOW_ACCOUNT,
                                       "namespace": NAMESPACE}]}),
                     id="bind-cluster-admin"),
        pytest.param("write a webhook",
                     lambda k: k.admission.delete_mutating_webhook_configuration(
                         "istio-revision-tag-default"),
                     id="delete-webhook"),
        pytest.param("read a Secret", lambda k: k.core.list_namespaced_secret("istio-system"),
                     id="read-secrets"),
    ],
)  # fmt: skip
def test_the_pod_runners_connection_cannot_grant_or_write_cluster_objects(
    as_airflow: str, what: str, call: Callable[[cluster.Kube], object]
) -> None:
    assert_refused(as_airflow, what, call)
