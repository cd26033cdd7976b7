"""The in-cluster istioctl pod: its spec, the KubernetesPodOperator built from it, its RBAC."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
from kubernetes.client import ApiClient

from istio_upgrade import istioctl
from istio_upgrade.errors import ParamError
from istio_upgrade.istioctl_pod import (
    LABELS,
    NAMESPACE,
    SERVICE_ACCOUNT,
    istioctl_pod,
    kpo_kwargs,
    pod_name,
)

ROOT = Path(__file__).resolve().parents[2]
RBAC = ROOT / "include" / "rbac.yaml"
CLUSTER_MODULES = sorted((ROOT / "include" / "istio_upgrade").glob("*.py"))
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

PRECHECK = list(istioctl.precheck_args())
INSTALL = list(istioctl.install_args("1-31-0", "default"))
TAG_SET = list(istioctl.tag_set_args("prod", "1-31-0"))
UNINSTALL = list(istioctl.uninstall_args("1-30-4"))


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


# --- the pod --------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    pytest.param(PRECHECK, id="precheck"),
    pytest.param(INSTALL, id="install"),
    pytest.param(TAG_SET, id="tag-set"),
    pytest.param(UNINSTALL, id="uninstall"),
])  # fmt: skip
def test_pod_runs_the_official_image_with_the_args(args: list[str]) -> None:
    pod = istioctl_pod(args, "1.31.0")
    container = _container(pod)
    assert container["image"] == "docker.io/istio/istioctl:1.31.0"
    assert container["args"] == args
    assert "command" not in container, "istioctl is the image's entrypoint"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["serviceAccountName"] == SERVICE_ACCOUNT
    assert pod["spec"]["automountServiceAccountToken"] is True
    assert pod["metadata"]["namespace"] == NAMESPACE
    assert pod["metadata"]["labels"] == {
        "app.kubernetes.io/name": "istio-canary-upgrade",
        "app.kubernetes.io/component": "istioctl",
    }


def test_pod_is_locked_down_and_bounded() -> None:
    container = _container(istioctl_pod(PRECHECK, "1.31.0"))
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]


def test_pod_is_plain_json_that_kubernetes_reads_back_unchanged() -> None:
    pod = istioctl_pod(INSTALL, "1.31.0", namespace="mesh-admin", service_account="sa")
    assert json.loads(json.dumps(pod)) == pod
    # Through the client's own V1Pod model: a misspelt field would be dropped on the way.
    v1pod = PodGenerator.deserialize_model_dict(pod)
    assert ApiClient().sanitize_for_serialization(v1pod) == pod


@pytest.mark.parametrize(("args", "version", "prefix", "readable"), [
    pytest.param(PRECHECK, "1.31.0", "istioctl", "istioctl-x-precheck-", id="precheck"),
    pytest.param(INSTALL, "1.31.0", "istioctl", "istioctl-install-", id="install"),
    pytest.param(TAG_SET, "1.31.0", "istioctl", "istioctl-tag-set-prod-", id="tag-set"),
    pytest.param(UNINSTALL, "1.31.0", "istioctl", "istioctl-uninstall-", id="uninstall"),
    pytest.param(["version"], "1.32.0-dev", "Mesh_Ops.", "mesh-ops-version-", id="odd-prefix"),
    pytest.param(["--help"], "1.31.0", "---", "istioctl-", id="no-usable-words"),
    pytest.param(["tag", "set", "t" * 80, "-y"], "1.31.0", "istioctl" * 9, "istioctl", id="long"),
])  # fmt: skip
def test_pod_name_is_a_short_dns_label(
    args: list[str], version: str, prefix: str, readable: str
) -> None:
    name = pod_name(args, version, prefix)
    assert DNS_LABEL.fullmatch(name), name
    assert name.startswith(readable)
    # <= 54 leaves room for the operator's "-xxxxxxxx" suffix within 63.
    assert len(name) <= 54


@pytest.mark.parametrize(("other", "same"), [
    pytest.param({}, True, id="same-call-same-name"),
    pytest.param({"args": [*TAG_SET[:-1], "--dry-run"]}, False, id="args"),
    pytest.param({"version": "1.31.1"}, False, id="version"),
    pytest.param({"key": "run-2"}, False, id="key"),
])  # fmt: skip
def test_pod_name_is_fixed_by_args_version_and_key(other: dict[str, Any], same: bool) -> None:
    base: dict[str, Any] = {"args": TAG_SET, "version": "1.31.0", "key": "run-1"}
    first = istioctl_pod(base["args"], base["version"], key=base["key"])
    call = {**base, **other}
    second = istioctl_pod(call["args"], call["version"], key=call["key"])
    assert (first["metadata"]["name"] == second["metadata"]["name"]) is same


@pytest.mark.parametrize(("args", "version", "param"), [
    pytest.param("x precheck", "1.31.0", "args", id="args-as-one-string"),
    pytest.param([], "1.31.0", "args", id="no-args"),
    pytest.param(["x", 1], "1.31.0", "args", id="non-string-arg"),
    pytest.param(PRECHECK, "", "version", id="empty-version"),
    pytest.param(PRECHECK, "1.31.0@sha256:abc", "version", id="not-a-tag"),
])  # fmt: skip
def test_bad_input_is_refused_with_the_fix(args: Any, version: str, param: str) -> None:
    with pytest.raises(ParamError) as err:
        istioctl_pod(args, version)
    assert err.value.param == param
    assert err.value.fix


# --- the KubernetesPodOperator --------------------------------------------------------


def test_kpo_kwargs_are_real_operator_parameters() -> None:
    params = inspect.signature(KubernetesPodOperator.__init__).parameters
    unknown = set(kpo_kwargs(istioctl_pod(PRECHECK, "1.31.0"))) - set(params)
    assert not unknown, f"KubernetesPodOperator has no parameter(s) {sorted(unknown)}"


def test_kpo_builds_the_same_pod() -> None:
    kwargs = kpo_kwargs(istioctl_pod(TAG_SET, "1.31.0", key="run-1"))
    op = KubernetesPodOperator(task_id="tag_set", **kwargs)
    assert op.get_logs is True
    assert op.on_finish_action.value == "delete_succeeded_pod"
    # dry_run: build the request without a cluster or kubeconfig.
    built = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(dry_run=True))
    ours = istioctl_pod(TAG_SET, "1.31.0", key="run-1")
    container = _container(built)
    assert container["image"] == "docker.io/istio/istioctl:1.31.0"
    assert container["args"] == TAG_SET
    assert not container.get("command"), "the image's entrypoint must stay istioctl"
    assert container["securityContext"] == _container(ours)["securityContext"]
    assert container["resources"] == _container(ours)["resources"]
    assert container["volumeMounts"] == _container(ours)["volumeMounts"]
    assert built["spec"]["serviceAccountName"] == SERVICE_ACCOUNT
    assert built["spec"]["restartPolicy"] == "Never"
    assert built["spec"]["volumes"] == ours["spec"]["volumes"]
    assert built["spec"]["securityContext"] == ours["spec"]["securityContext"]
    assert built["spec"]["activeDeadlineSeconds"] == ours["spec"]["activeDeadlineSeconds"]
    assert built["metadata"]["namespace"] == NAMESPACE
    assert LABELS.items() <= built["metadata"]["labels"].items()
    # Our name plus the operator's random suffix (see kpo_kwargs for why).
    name = built["metadata"]["name"]
    assert name.startswith(ours["metadata"]["name"] + "-")
    assert DNS_LABEL.fullmatch(name) and len(name) <= 63


# --- RBAC: include/rbac.yaml ----------------------------------------------------------


def _rbac() -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"]
        and ({resource, "*"} & set(r["resources"]))
        and ({verb, "*"} & set(r["verbs"]))
        for r in rules
    )


def test_rbac_binds_the_pods_service_account() -> None:
    objs = _rbac()
    sa = objs[("ServiceAccount", SERVICE_ACCOUNT)]
    assert sa["metadata"]["namespace"] == NAMESPACE
    subject = {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
    for binding, role in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        obj = objs[(binding, SERVICE_ACCOUNT)]
        assert subject in obj["subjects"]
        assert (role, obj["roleRef"]["name"]) in objs, f"{binding} names a missing {role}"
    assert objs[("Role", SERVICE_ACCOUNT)]["metadata"]["namespace"] == NAMESPACE


_API_GROUPS = {"core": "", "apps": "apps", "admission": "admissionregistration.k8s.io"}
_VERBS = {"read": "get", "list": "list", "patch": "patch", "create": "create",
          "delete": "delete", "replace": "update"}  # fmt: skip


_SUBRESOURCES = {"pod_log": "pods/log"}
# The in-cluster istioctl's pods live in istio-system only, where the runner Role covers them.
RUNNER_ROLE = "istio-canary-upgrade-runner"
RUNNER_RESOURCES = {("", "pods"), ("", "pods/log")}


def dag_api_calls() -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every typed client call in include/istio_upgrade/."""
    calls = set()
    pattern = re.compile(r"\.(core|apps|admission)\.(read|list|patch|create|delete|replace)_(\w+)")
    for module in CLUSTER_MODULES:
        for api, verb, rest in pattern.findall(module.read_text()):
            kind = rest.removeprefix("namespaced_").removesuffix("_for_all_namespaces")
            resource = _SUBRESOURCES.get(kind, kind.replace("_", "") + "s")
            calls.add((_API_GROUPS[api], resource, _VERBS[verb]))
    return calls


def test_dag_api_calls_are_found() -> None:
    # The restart patches must be among them, or the scan below checks nothing.
    assert {("apps", "deployments", "patch"), ("apps", "statefulsets", "patch"),
            ("apps", "daemonsets", "patch")} <= dag_api_calls()  # fmt: skip


DAG_ROLE = "istio-canary-upgrade-dag"
AIRFLOW_ACCOUNT = "istio-canary-upgrade-airflow"
# What the DAG reads only in istio-system (istiod's Service, the pods' ServiceAccount).
ISTIO_SYSTEM_ONLY = {("", "services"), ("", "serviceaccounts")}


@pytest.mark.parametrize(("group", "resource", "verb"), [
    pytest.param(*call, id=f"{call[2]}-{call[1]}") for call in sorted(dag_api_calls())
])  # fmt: skip
def test_dag_roles_allow_every_dag_call(group: str, resource: str, verb: str) -> None:
    # The DAG reads and restarts in every namespace: its ClusterRole counts, except for what
    # it touches in istio-system only (its Role) and the runner's pods there.
    objs = _rbac()
    rules = list(objs[("ClusterRole", DAG_ROLE)]["rules"])
    for role, limited in ((RUNNER_ROLE, RUNNER_RESOURCES), (DAG_ROLE, ISTIO_SYSTEM_ONLY)):
        if (group, resource) in limited:
            assert objs[("Role", role)]["metadata"]["namespace"] == NAMESPACE
            rules += objs[("Role", role)]["rules"]
    assert allows(rules, group, resource, verb), f"rbac.yaml: no {verb} on {group}/{resource}"


def _bound_to(account: str) -> list[dict[str, Any]]:
    """The roles rbac.yaml binds to a ServiceAccount of istio-system."""
    objs = _rbac()
    subject = {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    return [
        objs[(b["roleRef"]["kind"], b["roleRef"]["name"])]
        for (kind, _), b in objs.items()
        if kind in ("ClusterRoleBinding", "RoleBinding") and subject in b["subjects"]
    ]


def test_the_airflow_identity_of_the_pod_runner_can_grant_nothing() -> None:
    roles = _bound_to(AIRFLOW_ACCOUNT)
    assert {r["metadata"]["name"] for r in roles} == {DAG_ROLE, RUNNER_ROLE}
    for role in roles:
        for rule in role["rules"]:
            assert not {"escalate", "bind", "impersonate", "*"} & set(rule["verbs"]), rule
            assert "*" not in rule["resources"], rule
        if role["kind"] == "ClusterRole":  # cluster-wide: reads, and restarts of workloads
            writes = {v for r in role["rules"] for v in r["verbs"]} - {"get", "list", "watch"}
            assert writes == {"patch"}, writes


def test_istioctls_account_also_holds_the_dags_roles() -> None:
    # With the local runner the connection is istioctl's identity: it needs both.
    names = {r["metadata"]["name"] for r in _bound_to(SERVICE_ACCOUNT)}
    assert {SERVICE_ACCOUNT, DAG_ROLE} <= names and RUNNER_ROLE not in names


@pytest.mark.parametrize(("role", "group", "resource", "verb"), [
    pytest.param("ClusterRole", "authorization.k8s.io", "selfsubjectaccessreviews", "create",
                 id="precheck-asks-what-it-may-do"),
    pytest.param("ClusterRole", "apiextensions.k8s.io", "customresourcedefinitions", "patch",
                 id="install-applies-crds"),
    pytest.param("ClusterRole", "rbac.authorization.k8s.io", "clusterroles", "escalate",
                 id="install-grants-istiod-its-role"),
    pytest.param("ClusterRole", "rbac.authorization.k8s.io", "clusterroles", "bind",
                 id="install-binds-istiod-its-role"),
    pytest.param("ClusterRole", "admissionregistration.k8s.io",
                 "mutatingwebhookconfigurations", "create", id="tag-set-writes-webhook"),
    pytest.param("ClusterRole", "admissionregistration.k8s.io",
                 "validatingwebhookconfigurations", "delete", id="uninstall-removes-validator"),
    pytest.param("ClusterRole", "networking.istio.io", "envoyfilters", "list",
                 id="uninstall-lists-envoyfilters"),
    pytest.param("ClusterRole", "", "secrets", "list", id="uninstall-lists-everywhere"),
    pytest.param("Role", "apps", "deployments", "create", id="install-creates-istiod"),
    pytest.param("Role", "apps", "deployments", "delete", id="uninstall-deletes-istiod"),
    pytest.param("Role", "", "configmaps", "patch", id="install-applies-configmaps"),
    pytest.param("Role", "rbac.authorization.k8s.io", "roles", "escalate",
                 id="install-grants-istiod-its-namespaced-role"),
])  # fmt: skip
def test_rbac_allows_what_istioctl_needs(role: str, group: str, resource: str, verb: str) -> None:
    rules = _rbac()[(role, SERVICE_ACCOUNT)]["rules"]
    assert allows(rules, group, resource, verb), f"{role}: no {verb} on {group}/{resource}"


@pytest.mark.parametrize(("group", "resource", "verb"), [
    pytest.param("apiextensions.k8s.io", "customresourcedefinitions", "delete",
                 id="crds-take-user-config-with-them"),
    pytest.param("", "secrets", "delete", id="secrets-written-only-in-istio-system"),
    pytest.param("apps", "deployments", "delete", id="workloads-deleted-only-in-istio-system"),
])  # fmt: skip
def test_cluster_role_withholds(group: str, resource: str, verb: str) -> None:
    rules = _rbac()[("ClusterRole", SERVICE_ACCOUNT)]["rules"]
    assert not allows(rules, group, resource, verb)
