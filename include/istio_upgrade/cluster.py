"""Kubernetes reads and writes: control planes, tags, namespaces, workloads, restarts,
rollout status and which revision each proxy really runs. The only module that talks to the API."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from istio_upgrade.injection import INJECTOR_SUFFIX, Injector, LabelSelector, Requirement
from istio_upgrade.installer import helm_release
from istio_upgrade.model import (
    INJECTION_LABEL,
    PROXY_CONTAINER,
    REV_LABEL,
    TAG_LABEL,
    ControlPlane,
    MeshSnapshot,
    NamespaceState,
    PodState,
    RevisionTag,
    WorkloadRef,
    injected_revision,
    proxy_version,
)

if TYPE_CHECKING:
    from kubernetes import client

# The Kubernetes client costs more to import than the rest of the DAG file together: it is
# imported where a call needs it, so parsing the DAG (every task start, every DAG-processor
# pass) does not pay for it.

log = logging.getLogger(__name__)

ISTIO_NAMESPACE = "istio-system"
RESTART_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
# On the workload itself (not its pods): when this tool restarted it, so that a retried wait
# keeps the deadline counted from the restart instead of starting a new one.
RESTARTED_AT_ANNOTATION = "istio-canary-upgrade/restarted-at"
# Seconds one API request may take (connect and read): a hung call fails, it never hangs a task.
REQUEST_TIMEOUT = 30
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


@dataclass(frozen=True)
class Kube:
    """The typed API groups over one ApiClient (from a kubeconfig or an Airflow connection)."""

    api: client.ApiClient

    @cached_property
    def core(self) -> client.CoreV1Api:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    @cached_property
    def apps(self) -> client.AppsV1Api:
        from kubernetes import client

        return client.AppsV1Api(self.api)

    @cached_property
    def admission(self) -> client.AdmissionregistrationV1Api:
        from kubernetes import client

        return client.AdmissionregistrationV1Api(self.api)

    @cached_property
    def coordination(self) -> client.CoordinationV1Api:
        from kubernetes import client

        return client.CoordinationV1Api(self.api)


@dataclass(frozen=True)
class KubeTarget:
    """How to reach a cluster, as plain data istioctl can use too."""

    kubeconfig: str | None = None  # None with in_cluster: the pod's service account
    context: str | None = None
    in_cluster: bool = False


def api_errors() -> tuple[type[Exception], ...]:
    """What a call raises about the API rather than a bug (imported on the first failure)."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    return (ApiException, urllib3.exceptions.HTTPError, OSError)


def connect(target: KubeTarget) -> Kube:
    """A Kube for a target: in-cluster credentials or a kubeconfig file.

    Every request it makes has REQUEST_TIMEOUT unless the call gives its own.
    """
    from kubernetes import client, config

    if target.in_cluster:
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
        api = client.ApiClient(cfg)
    else:
        api = config.new_client_from_config(config_file=target.kubeconfig, context=target.context)
    return Kube(_with_default_timeout(api))


def _with_default_timeout(api: client.ApiClient) -> client.ApiClient:
    # The client has no default timeout: a call without `_request_timeout` can wait forever
    # on a half-open connection (urllib3 treats the None it passes as "no timeout").
    call_api = api.call_api

    def timed_call_api(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = REQUEST_TIMEOUT
        return call_api(*args, **kwargs)

    api.call_api = timed_call_api
    return api


# --- control planes and tags --------------------------------------------------------------


def control_planes(kube: Kube) -> tuple[ControlPlane, ...]:
    """Every istiod revision in istio-system, with readiness and injector webhook presence."""
    deps = kube.apps.list_namespaced_deployment(ISTIO_NAMESPACE, label_selector="app=istiod")
    webhooks = {w.metadata.name for w in kube.admission.list_mutating_webhook_configuration().items}
    planes = []
    for dep in deps.items:
        rev = (dep.metadata.labels or {}).get(REV_LABEL) or "default"
        image = next(
            (c.image for c in dep.spec.template.spec.containers if c.name == "discovery"), None
        )
        planes.append(
            ControlPlane(
                revision=rev,
                ready=rollout_state(dep).complete,
                version=proxy_version(image),
                injector_webhook=f"istio-sidecar-injector-{rev}" in webhooks
                or (rev == "default" and "istio-sidecar-injector" in webhooks),
                helm_release=helm_release(dep.metadata.annotations),
            )
        )
    return tuple(sorted(planes, key=lambda c: c.revision))


def revision_tags(kube: Kube) -> tuple[RevisionTag, ...]:
    """Revision tags: MutatingWebhookConfigurations labelled istio.io/tag, read from the cluster."""
    hooks = kube.admission.list_mutating_webhook_configuration(label_selector=TAG_LABEL)
    tags = [
        RevisionTag(name=w.metadata.labels[TAG_LABEL], revision=w.metadata.labels[REV_LABEL])
        for w in hooks.items
        if REV_LABEL in (w.metadata.labels or {})
    ]
    return tuple(sorted(tags, key=lambda t: t.name))


def injectors(kube: Kube) -> tuple[Injector, ...]:
    """Every sidecar-injection webhook of every MutatingWebhookConfiguration."""
    found = []
    for config in kube.admission.list_mutating_webhook_configuration().items:
        for hook in config.webhooks or []:
            if hook.name.endswith(INJECTOR_SUFFIX):
                found.append(
                    Injector(
                        config.metadata.name,
                        hook.name,
                        _selector(hook.namespace_selector),
                        _selector(hook.object_selector),
                    )
                )
    return tuple(found)


def _selector(selector: Any) -> LabelSelector:
    if selector is None:
        return LabelSelector()
    return LabelSelector(
        tuple(sorted((selector.match_labels or {}).items())),
        tuple(
            Requirement(e.key, e.operator, tuple(e.values or ()))
            for e in selector.match_expressions or []
        ),
    )


def tag_revision(kube: Kube, tag: str) -> str | None:
    """The revision a tag points at now, or None if the tag does not exist."""
    return next((t.revision for t in revision_tags(kube) if t.name == tag), None)


def revision_objects(kube: Kube, revision: str) -> list[str]:
    """The objects a revision's install owns that are still present (empty once uninstalled)."""
    return [name for name, _ in _revision_objects(kube, revision)]


def revision_objects_kept(kube: Kube, revision: str) -> list[str]:
    """Those of `revision_objects` that no one asked to delete (no deletionTimestamp): what
    an uninstall left alone, rather than what is still on its way out."""
    return [name for name, meta in _revision_objects(kube, revision) if not meta.deletion_timestamp]


def _revision_objects(kube: Kube, revision: str) -> list[tuple[str, Any]]:
    """(kind/name, metadata) of the revision's istiod Deployment, Service and injector webhook."""
    by_name = f"metadata.name=istiod-{revision}"
    listed = [
        (
            "deployment",
            kube.apps.list_namespaced_deployment(ISTIO_NAMESPACE, field_selector=by_name),
        ),
        ("service", kube.core.list_namespaced_service(ISTIO_NAMESPACE, field_selector=by_name)),
        (
            "mutatingwebhookconfiguration",
            kube.admission.list_mutating_webhook_configuration(
                field_selector=f"metadata.name=istio-sidecar-injector-{revision}"
            ),
        ),
    ]
    return [
        (f"{kind}/{o.metadata.name}", o.metadata) for kind, found in listed for o in found.items
    ]


# --- namespaces, workloads and pods -------------------------------------------------------


def _owner(meta: Any, rs_owner: dict[tuple[str, str], WorkloadRef]) -> WorkloadRef | None:
    for ref in meta.owner_references or []:
        if not ref.controller:
            continue
        if ref.kind == "ReplicaSet":
            return rs_owner.get((meta.namespace, ref.name))
        if ref.kind in WORKLOAD_KINDS:
            return WorkloadRef(ref.kind, meta.namespace, ref.name)
    return None


def pod_state(pod: Any, rs_owner: dict[tuple[str, str], WorkloadRef]) -> PodState:
    # Istio 1.27+ injects istio-proxy as a native sidecar (an init container) where it can.
    containers = [*(pod.spec.init_containers or []), *pod.spec.containers]
    proxy = next((c.image for c in containers if c.name == PROXY_CONTAINER), None)
    return PodState(
        namespace=pod.metadata.namespace,
        name=pod.metadata.name,
        uid=pod.metadata.uid,
        phase=(pod.status.phase if pod.status else None) or "Unknown",
        owner=_owner(pod.metadata, rs_owner),
        revision=injected_revision(pod.metadata.annotations),
        proxy_version=proxy_version(proxy),
        terminating=pod.metadata.deletion_timestamp is not None,
    )


def _meshed(labels: dict[str, str]) -> bool:
    return REV_LABEL in labels or INJECTION_LABEL in labels


def _rs_owners(replica_sets: Iterable[Any]) -> dict[tuple[str, str], WorkloadRef]:
    """ReplicaSet (namespace, name) -> the Deployment that controls it."""
    owners: dict[tuple[str, str], WorkloadRef] = {}
    for rs in replica_sets:
        dep = next(
            (
                r
                for r in rs.metadata.owner_references or []
                if r.controller and r.kind == "Deployment"
            ),
            None,
        )
        if dep is not None:
            owners[(rs.metadata.namespace, rs.metadata.name)] = WorkloadRef(
                "Deployment", rs.metadata.namespace, dep.name
            )
    return owners


def namespace_states(kube: Kube, names: Iterable[str] | None = None) -> tuple[NamespaceState, ...]:
    """Meshed namespaces and those running injected pods (or exactly `names`), in name order.

    Lists each kind once for the whole cluster so a mesh of hundreds of namespaces costs a
    handful of requests, not a few per namespace.
    """
    wanted = set(names) if names is not None else None
    nss = {n.metadata.name: dict(n.metadata.labels or {}) for n in kube.core.list_namespace().items}
    rs_owner = _rs_owners(kube.apps.list_replica_set_for_all_namespaces().items)
    pods: dict[str, list[PodState]] = defaultdict(list)
    for pod in kube.core.list_pod_for_all_namespaces().items:
        pods[pod.metadata.namespace].append(pod_state(pod, rs_owner))
    if wanted is not None:
        keep = wanted & nss.keys()
    else:
        # A namespace whose label was removed can still run injected pods: they count too.
        keep = {
            n
            for n, labels in nss.items()
            if _meshed(labels) or any(p.revision for p in pods.get(n, ()))
        }
    workloads: dict[str, list[WorkloadRef]] = defaultdict(list)
    for kind, items in (
        ("Deployment", kube.apps.list_deployment_for_all_namespaces().items),
        ("StatefulSet", kube.apps.list_stateful_set_for_all_namespaces().items),
        ("DaemonSet", kube.apps.list_daemon_set_for_all_namespaces().items),
    ):
        for obj in items:
            if obj.metadata.namespace in keep:
                workloads[obj.metadata.namespace].append(
                    WorkloadRef(kind, obj.metadata.namespace, obj.metadata.name)
                )
    return tuple(
        NamespaceState(
            name=n,
            labels=nss[n],
            workloads=tuple(sorted(workloads[n], key=lambda w: (w.kind, w.name))),
            pods=tuple(sorted(pods[n], key=lambda p: p.name)),
        )
        for n in sorted(keep)
    )


@dataclass(frozen=True)
class NamespaceView:
    """One namespace as a wave's trigger reads it: pods, workloads, restart stamps, rollouts."""

    state: NamespaceState  # labels are not read (the plan already chose the namespace)
    stamps: dict[WorkloadRef, str | None]  # the restartedAt annotation of each pod template
    rollouts: dict[WorkloadRef, RolloutState]


def _list_workloads(kube: Kube, namespace: str, kind: str) -> list[Any]:
    lister = {
        "Deployment": kube.apps.list_namespaced_deployment,
        "StatefulSet": kube.apps.list_namespaced_stateful_set,
        "DaemonSet": kube.apps.list_namespaced_daemon_set,
    }[kind]
    items = list(lister(namespace, _request_timeout=REQUEST_TIMEOUT).items)
    for obj in items:
        obj.kind = kind  # list items come without their kind
    return items


def namespace_view(kube: Kube, namespace: str) -> NamespaceView:
    """Read one namespace with namespaced lists: five requests, whatever the cluster's size."""
    rs_owner = _rs_owners(
        kube.apps.list_namespaced_replica_set(namespace, _request_timeout=REQUEST_TIMEOUT).items
    )
    pods = kube.core.list_namespaced_pod(namespace, _request_timeout=REQUEST_TIMEOUT).items
    objects = [o for kind in WORKLOAD_KINDS for o in _list_workloads(kube, namespace, kind)]
    refs = {WorkloadRef(o.kind, namespace, o.metadata.name): o for o in objects}
    state = NamespaceState(
        name=namespace,
        workloads=tuple(sorted(refs, key=lambda w: (w.kind, w.name))),
        pods=tuple(sorted((pod_state(p, rs_owner) for p in pods), key=lambda p: p.name)),
    )
    return NamespaceView(
        state=state,
        stamps={
            ref: (o.spec.template.metadata.annotations or {}).get(RESTART_ANNOTATION)
            for ref, o in refs.items()
        },
        rollouts={ref: rollout_state(o) for ref, o in refs.items()},
    )


def workload_rollouts(
    kube: Kube, namespace: str, kinds: Iterable[str], since: float | None = None
) -> dict[WorkloadRef, RolloutState]:
    """Rollout status of every workload of the given kinds in one namespace (a list per kind);
    `since` as in `rollout_state`."""
    return {
        WorkloadRef(o.kind, namespace, o.metadata.name): rollout_state(o, since)
        for kind in sorted(set(kinds))
        for o in _list_workloads(kube, namespace, kind)
    }


def snapshot(kube: Kube) -> MeshSnapshot:
    """Control planes, tags and meshed namespaces as they are now."""
    return MeshSnapshot(
        control_planes=control_planes(kube),
        tags=revision_tags(kube),
        namespaces=namespace_states(kube),
        taken_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


# --- restarts and rollouts ----------------------------------------------------------------


def _read(kube: Kube, ref: WorkloadRef) -> Any:
    if ref.kind == "Deployment":
        return kube.apps.read_namespaced_deployment(ref.name, ref.namespace)
    if ref.kind == "StatefulSet":
        return kube.apps.read_namespaced_stateful_set(ref.name, ref.namespace)
    if ref.kind == "DaemonSet":
        return kube.apps.read_namespaced_daemon_set(ref.name, ref.namespace)
    raise ValueError(f"cannot restart a {ref.kind}; only {', '.join(WORKLOAD_KINDS)}")


def _patch(kube: Kube, ref: WorkloadRef, body: dict[str, Any]) -> None:
    patch = {
        "Deployment": kube.apps.patch_namespaced_deployment,
        "StatefulSet": kube.apps.patch_namespaced_stateful_set,
        "DaemonSet": kube.apps.patch_namespaced_daemon_set,
    }[ref.kind]
    patch(ref.name, ref.namespace, body, _request_timeout=REQUEST_TIMEOUT)


def restart(kube: Kube, ref: WorkloadRef, stamp: str) -> bool:
    """Restart a workload as `kubectl rollout restart` does, keyed by `stamp`.

    The annotation value comes from the run, so a retried task finds it already set and does
    not restart the workload again. Returns whether a restart was requested now.
    """
    obj = _read(kube, ref)
    annotations = obj.spec.template.metadata.annotations or {}
    if annotations.get(RESTART_ANNOTATION) == stamp:
        return False
    stamp_restart(kube, ref, stamp)
    return True


def stamp_restart(kube: Kube, ref: WorkloadRef, stamp: str) -> None:
    """Write the restart stamp into the pod template (and the time onto the workload): one
    PATCH. Callers skip workloads that already carry the stamp, so the time stays the first."""
    body = {
        "metadata": {
            "annotations": {
                RESTARTED_AT_ANNOTATION: datetime.now(UTC).isoformat(timespec="seconds")
            }
        },
        "spec": {"template": {"metadata": {"annotations": {RESTART_ANNOTATION: stamp}}}},
    }
    _patch(kube, ref, body)
    log.info(
        "restarted kind=%s namespace=%s name=%s stamp=%s", ref.kind, ref.namespace, ref.name, stamp
    )


@dataclass(frozen=True)
class RolloutState:
    """What `kubectl rollout status` would say about one workload."""

    complete: bool
    failed: bool  # the rollout exceeded its progress deadline: waiting longer will not help
    message: str


def _deadline_exceeded(cond: Any, since: float | None) -> bool:
    """A Deployment's progress deadline passed, and not before `since` (epoch seconds).

    A condition older than `since` is old news: it stays until the controller sees progress,
    which after a fix (a quota raised, a webhook back) may take a while; the caller's own
    deadline bounds the wait instead.
    """
    if cond.type != "Progressing" or cond.reason != "ProgressDeadlineExceeded":
        return False
    updated = cond.last_update_time
    # the API keeps whole seconds: allow the one the caller began in
    return since is None or updated is None or updated.timestamp() >= since - 1


# How long a Deployment may fail to create pods before its rollout counts as failed: the
# controllers retry a refused pod (a webhook that timed out once, a quota freed a moment
# later), but an injector that is down or a quota that is full refuses every retry, and the
# progress deadline (10 min by default) would report it far later.
CREATE_FAILURE_GRACE_SECONDS = 30.0


def _create_failure(cond: Any, since: float | None, now: float) -> float | None:
    """How long the Deployment has failed to create pods (its ReplicaFailure condition,
    counted from `since` at the earliest, so a fix made before a retry has its grace)."""
    if cond.type != "ReplicaFailure" or cond.status != "True":
        return None
    began = cond.last_transition_time.timestamp() if cond.last_transition_time else now
    return now - max(began, since if since is not None else began)


def rollout_state(obj: Any, since: float | None = None, now: float | None = None) -> RolloutState:
    """`kubectl rollout status` semantics for a Deployment, StatefulSet or DaemonSet object,
    and a Deployment that cannot create pods for `CREATE_FAILURE_GRACE_SECONDS` fails.

    With `since`, a progress deadline exceeded before then does not count as failed (see
    `_deadline_exceeded`): a namespace retried after a fix waits for its rollout again.
    """
    kind = obj.kind or type(obj).__name__.removeprefix("V1")
    name = str(WorkloadRef(kind, obj.metadata.namespace, obj.metadata.name))
    st, spec = obj.status, obj.spec
    if (st.observed_generation or 0) < (obj.metadata.generation or 0):
        return RolloutState(False, False, f"{name}: waiting for the spec update to be observed")
    if kind == "Deployment":
        for cond in st.conditions or []:
            if _deadline_exceeded(cond, since):
                return RolloutState(False, True, f"{name}: exceeded its progress deadline")
            failing = _create_failure(cond, since, time.time() if now is None else now)
            if failing is not None and failing >= CREATE_FAILURE_GRACE_SECONDS:
                return RolloutState(
                    False, True, f"{name}: cannot create pods ({failing:.0f}s): {cond.message}"
                )
        want, updated = spec.replicas if spec.replicas is not None else 1, st.updated_replicas or 0
        if updated < want:
            return RolloutState(False, False, f"{name}: {updated} of {want} updated")
        if (st.replicas or 0) > updated:
            return RolloutState(
                False, False, f"{name}: {st.replicas - updated} old replicas pending termination"
            )
        if (st.available_replicas or 0) < updated:
            return RolloutState(
                False, False, f"{name}: {st.available_replicas or 0} of {updated} available"
            )
        return RolloutState(True, False, f"{name}: rolled out")
    if kind == "StatefulSet":
        want = spec.replicas if spec.replicas is not None else 1
        if (st.ready_replicas or 0) < want:
            return RolloutState(False, False, f"{name}: {st.ready_replicas or 0} of {want} ready")
        if st.update_revision and st.current_revision != st.update_revision:
            return RolloutState(
                False, False, f"{name}: {st.updated_replicas or 0} of {want} updated"
            )
        return RolloutState(True, False, f"{name}: rolled out")
    if kind == "DaemonSet":
        want = st.desired_number_scheduled or 0
        if (st.updated_number_scheduled or 0) < want:
            return RolloutState(
                False, False, f"{name}: {st.updated_number_scheduled or 0} of {want} updated"
            )
        if (st.number_available or 0) < want:
            return RolloutState(
                False, False, f"{name}: {st.number_available or 0} of {want} available"
            )
        return RolloutState(True, False, f"{name}: rolled out")
    raise ValueError(f"no rollout status for {name}")


def rollout_states(kube: Kube, refs: Iterable[WorkloadRef]) -> list[RolloutState]:
    from kubernetes.client.exceptions import ApiException

    states = []
    for ref in refs:
        try:
            obj = _read(kube, ref)
        except ApiException as exc:
            if exc.status == 404:
                states.append(
                    RolloutState(
                        False,
                        True,
                        f"{ref}: not found (deleted during the upgrade?)",
                    )
                )
                continue
            raise
        obj.kind = ref.kind
        states.append(rollout_state(obj))
    return states


def restart_times(kube: Kube, refs: Iterable[WorkloadRef]) -> list[float]:
    """When this tool last restarted each workload (epoch seconds), for those it ever did."""
    times = []
    for ref in refs:
        annotations = _read(kube, ref).metadata.annotations or {}
        if value := annotations.get(RESTARTED_AT_ANNOTATION):
            try:
                times.append(datetime.fromisoformat(value).timestamp())
            except ValueError:  # edited by hand: no anchor from it
                continue
    return times


# --- one-off pods (the in-cluster istioctl) -------------------------------------------------


def read_pod(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    """A pod as its JSON dict (camelCase, as the API serves it), or None when there is none."""
    from kubernetes.client.exceptions import ApiException

    try:
        pod = kube.core.read_namespaced_pod(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(kube.api.sanitize_for_serialization(pod))


def create_pod(kube: Kube, body: dict[str, Any]) -> bool:
    """Create a pod; False when one of that name already exists (a retry raced us)."""
    from kubernetes.client.exceptions import ApiException

    try:
        kube.core.create_namespaced_pod(body["metadata"]["namespace"], body)
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


def delete_pod(kube: Kube, namespace: str, name: str) -> None:
    """Delete a pod; one already gone is fine."""
    from kubernetes.client.exceptions import ApiException

    try:
        kube.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    except ApiException as exc:
        if exc.status != 404:
            raise


def pod_log(kube: Kube, namespace: str, name: str, container: str) -> str:
    """What a container printed (the kubelet keeps it until the pod is deleted)."""
    # Raw bytes: with content preloading the client json-decodes a log that looks like JSON.
    from kubernetes.client.exceptions import ApiException

    try:
        resp = kube.core.read_namespaced_pod_log(
            name, namespace, container=container, _preload_content=False
        )
    except ApiException as exc:
        if exc.status in (400, 404):  # the container never started, or the pod is gone
            return ""
        raise
    return bytes(resp.data).decode(errors="replace")


def service_account_exists(kube: Kube, namespace: str, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        kube.core.read_namespaced_service_account(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True
