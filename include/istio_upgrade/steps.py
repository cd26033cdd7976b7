"""What each task of the DAG does, as plain functions over a cluster and istioctl.

Each step reads the cluster, compares it with the goal of the run and acts only on the
difference, then reads its effect back: a retried task or a re-run DAG converges instead of
repeating work. What a step returns for a later task is a `Contract` (it crosses XCom).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from istio_upgrade import cluster, istioctl_pod, progress
from istio_upgrade.cluster import Kube
from istio_upgrade.contracts import Contract, allow
from istio_upgrade.deadline import Span
from istio_upgrade.errors import (
    ClusterStateError,
    NothingToDo,
    OldRevisionKept,
    ParamError,
    RevisionInUse,
)
from istio_upgrade.injection import check_one_injector
from istio_upgrade.installer import check_istioctl_owns
from istio_upgrade.istioctl import (
    Runner,
    check_version,
    install_args,
    precheck_args,
    resolve,
    tag_set_args,
    uninstall_args,
)
from istio_upgrade.model import (
    MeshSnapshot,
    NamespaceState,
    WorkloadRef,
    points_at_tag,
    revision_version,
)
from istio_upgrade.params import (
    ResolvedParams,
    UpgradeParams,
    check_against_cluster,
    parse_params,
)
from istio_upgrade.references import KeptBy, users_of

log = logging.getLogger(__name__)

# istioctl install and uninstall wait for their objects themselves; reading the result back
# only allows for the API's lag (a finalizer that holds an object shows up as a timeout).
SETTLE_SECONDS = 120.0


def settle(check: Callable[[], bool], seconds: float = SETTLE_SECONDS, every: float = 1.0) -> bool:
    """Ask `check` until it says yes or `seconds` pass; its last answer."""
    end = time.monotonic() + seconds
    while not check():
        if time.monotonic() >= end:
            return False
        time.sleep(every)
    return True


def already_done(params: UpgradeParams, snapshot: MeshSnapshot) -> bool:
    """The tag is on the target, no other control plane remains and every namespace follows."""
    tag = snapshot.tag(params.tag)
    return (
        tag is not None
        and tag.revision == params.target_revision
        and {c.revision for c in snapshot.control_planes} == {params.target_revision}
        and all(
            progress.on_revision(ns, params.target_revision)
            for ns in snapshot.namespaces
            if points_at_tag(ns.labels, params.tag)
        )
    )


def validate(kube: Kube, raw: dict[str, Any]) -> ResolvedParams:
    """Check the params on their own, then against the cluster: nothing changes before this.

    A mesh already on the target raises NothingToDo before istioctl is looked for: a
    scheduled run after the upgrade finished skips even where that istioctl is gone.
    """
    params = parse_params(raw)
    snap = cluster.snapshot(kube)
    if already_done(params, snap):
        raise NothingToDo(params.target_revision, params.tag)
    check_istioctl(kube, params)
    resolved = check_against_cluster(params, snap)
    check_istioctl_owns(snap, (resolved.current_revision, resolved.target_revision))
    moved = set(resolved.namespaces) | {g.namespace for g in params.gateway_refs}
    check_one_injector(
        cluster.injectors(kube), {n.name: n.labels for n in snap.namespaces if n.name in moved}
    )
    log.info(
        "validated target=%s current=%s tag=%s canary=%s namespaces=%d resumed=%s",
        resolved.target_revision,
        resolved.current_revision,
        resolved.tag,
        ",".join(resolved.canary),
        len(resolved.namespaces),
        resolved.resumed,
    )
    return resolved


def check_istioctl(kube: Kube, params: UpgradeParams) -> None:
    """The istioctl the run will use can run: the local binary, or the pods' ServiceAccount."""
    if params.istioctl_runner == "local":
        binary = resolve(params.istioctl, params.target_revision)
        # a path is checked against the version the target spells (when it spells one)
        expected = params.istioctl_version or revision_version(params.target_revision)
        if expected is not None:
            check_version(binary, expected)
    elif not cluster.service_account_exists(
        kube, istioctl_pod.NAMESPACE, istioctl_pod.SERVICE_ACCOUNT
    ):
        raise ParamError(
            "istioctl_runner",
            params.istioctl_runner,
            f"needs the ServiceAccount {istioctl_pod.NAMESPACE}/{istioctl_pod.SERVICE_ACCOUNT}, "
            "which does not exist",
            "kubectl apply -f include/rbac.yaml (it also grants what istioctl needs), or set "
            "istioctl_runner 'local'",
        )


def precheck(istioctl: Runner) -> str:
    """`istioctl x precheck` must find nothing: it exits 1 at Warning level or worse."""
    result = istioctl.run(*precheck_args())
    if not result.ok:
        raise ClusterStateError(
            "istioctl x precheck",
            f"exit {result.returncode}",
            "no issues",
            "fix what it reports:\n" + result.summary(),
        )
    return result.stdout.strip()


def control_plane_ready(kube: Kube, revision: str) -> bool:
    """istiod-<revision> is available and its injector webhook exists."""
    plane = next((c for c in cluster.control_planes(kube) if c.revision == revision), None)
    return plane is not None and plane.ready and plane.injector_webhook


def install(kube: Kube, istioctl: Runner, revision: str, profile: str, overlay: str | None) -> bool:
    """Install the revision beside the old one unless it already runs, and wait until its
    control plane is ready. True if installed now."""
    if control_plane_ready(kube, revision):
        log.info("install skipped revision=%s reason=already-installed", revision)
        return False
    result = istioctl.run(*install_args(revision, profile, overlay))
    if not result.ok:
        raise ClusterStateError(
            f"istiod-{revision}",
            "not installed",
            "installed",
            "see istioctl's output:\n" + result.summary(),
        )
    if not settle(lambda: control_plane_ready(kube, revision)):
        raise ClusterStateError(
            f"istiod-{revision}",
            "not ready",
            f"ready with its injector webhook {SETTLE_SECONDS:.0f} s after istioctl install",
            f"see why its pods are not ready (kubectl -n istio-system get pods -l "
            f"istio.io/rev={revision}), then clear install_revision",
        )
    return True


def move_tag(kube: Kube, istioctl: Runner, tag: str, revision: str) -> bool:
    """Point the tag at `revision` and read it back (istioctl exits 0 even when it did nothing)."""
    if cluster.tag_revision(kube, tag) == revision:
        log.info("tag unchanged tag=%s revision=%s", tag, revision)
        return False
    result = istioctl.run(*tag_set_args(tag, revision))
    now = cluster.tag_revision(kube, tag)
    if now != revision:
        raise ClusterStateError(
            f"webhook istio-revision-tag-{tag} label istio.io/rev",
            now,
            repr(revision),
            "istioctl did not move the tag:\n" + result.summary(),
        )
    log.info("tag moved tag=%s revision=%s", tag, revision)
    return True


def restart_stamp(run_id: str, revision: str) -> str:
    """The restartedAt value for one run moving workloads to one revision.

    The same run retrying the same move writes the same value, which the API sees as no
    change; a rollback (another revision) writes a new one and restarts again.
    """
    return f"{revision}@{run_id}"


def _namespaces(kube: Kube, names: Iterable[str]) -> list[NamespaceState]:
    return list(cluster.namespace_states(kube, names))


@dataclass(frozen=True)
class Verified(Contract):
    """What a verification found: every pod of these namespaces or workloads runs `revision`.

    For the canary, also the span of its move, which the window check estimates waves by.
    """

    revision: str
    namespaces: tuple[str, ...] = ()
    workloads: tuple[WorkloadRef, ...] = ()
    proxy_versions: tuple[str, ...] = ()
    span: Span | None = None


@dataclass(frozen=True)
class Restart(Contract):
    """A restart of namespaces: the workloads to wait for, those restarted now
    ("namespace/name"), and when it began (epoch seconds): the start of the span the window
    check measures waves by."""

    workloads: tuple[WorkloadRef, ...]
    restarted: tuple[str, ...]
    started: float


def restart_namespaces(
    kube: Kube, names: Sequence[str], revision: str, stamp: str
) -> list[WorkloadRef]:
    """Restart every workload in `names` whose pods are not all on `revision`.

    Returns every workload of those namespaces, restarted now or before, for the rollout
    wait; pods that no restart can move (no controller) are logged, not hidden.
    """
    return restart_and_count(kube, names, revision, stamp)[0]


def restart_and_count(
    kube: Kube, names: Sequence[str], revision: str, stamp: str
) -> tuple[list[WorkloadRef], list[str]]:
    """`restart_namespaces`, plus the workloads restarted by this call ("namespace/name").

    An empty second list means nothing moved now (already on `revision`, or a retry of a
    restart that already happened): such a restart measures nothing about how long one takes.
    """
    waits: list[WorkloadRef] = []
    moved: list[str] = []
    for ns in _namespaces(kube, names):
        stuck = progress.unrestartable(ns)
        if stuck:
            log.warning(
                "cannot restart namespace=%s pods=%s reason=no-controller",
                ns.name,
                ",".join(p.name for p in stuck),
            )
        todo = progress.workloads_to_restart(ns, revision)
        restarted = [w.name for w in todo if cluster.restart(kube, w, stamp)]
        moved += [f"{ns.name}/{name}" for name in restarted]
        log.info(
            "restart namespace=%s revision=%s restarted=%s skipped=%d",
            ns.name,
            revision,
            ",".join(restarted) or "none",
            len(ns.workloads) - len(restarted),
        )
        waits += ns.workloads
    return waits, moved


def restart_workloads(
    kube: Kube, refs: Sequence[WorkloadRef], revision: str, stamp: str
) -> list[WorkloadRef]:
    """Restart the given workloads (gateways) unless their pods already run `revision`.

    Returns the workloads restarted, for the rollout wait. One whose pods all run `revision`
    is not waited for: its rollout may be stuck on a change that never started (a surge pod
    the quota refused), which moving back does not need to finish.
    """
    states = {ns.name: ns for ns in _namespaces(kube, {r.namespace for r in refs})}
    restarted = []
    for ref in refs:
        ns = states.get(ref.namespace)
        if ns is not None and ref in progress.workloads_to_restart(ns, revision):
            cluster.restart(kube, ref, stamp)
            restarted.append(ref)
        else:
            log.info(
                "restart skipped kind=%s namespace=%s name=%s reason=on-revision",
                ref.kind,
                ref.namespace,
                ref.name,
            )
    return restarted


def verify_namespaces(kube: Kube, names: Sequence[str], revision: str) -> Verified:
    """Every pod of a restartable workload in `names` runs `revision`; else fail naming them."""
    states = _namespaces(kube, names)
    wrong = [
        f"{p.namespace}/{p.name} ({p.revision or 'no sidecar'})"
        for ns in states
        for p in progress.off_revision(ns, revision)
    ]
    if wrong:
        raise ClusterStateError(
            "pods",
            wrong[:20],
            f"every pod on revision {revision}",
            "check the injector webhook and the tag, then retry",
        )
    versions = sorted(
        {
            p.proxy_version or "?"
            for ns in states
            for p in progress.live_pods(ns)
            if p.owner is not None
        }
    )
    log.info(
        "verified namespaces=%s revision=%s proxy_versions=%s",
        ",".join(names),
        revision,
        ",".join(versions),
    )
    return Verified(revision, namespaces=tuple(names), proxy_versions=tuple(versions))


def verify_workloads(kube: Kube, refs: Sequence[WorkloadRef], revision: str) -> Verified:
    """Every pod of the given workloads (gateways) runs `revision`."""
    wrong = []
    for ns in _namespaces(kube, {r.namespace for r in refs}):
        wrong += [
            f"{p.namespace}/{p.name} ({p.revision or 'no sidecar'})"
            for p in progress.off_revision(ns, revision)
            if p.owner in refs
        ]
    if wrong:
        raise ClusterStateError(
            "gateway pods",
            wrong[:20],
            f"every pod on revision {revision}",
            "check the gateway injection template and the tag, then retry",
        )
    return Verified(revision, workloads=tuple(refs))


def namespaces_on(kube: Kube, names: Sequence[str], revision: str) -> bool:
    """Whether every namespace in `names` runs `revision` everywhere (for waves to wait on)."""
    return all(progress.on_revision(ns, revision) for ns in _namespaces(kube, names))


def moved_namespaces(kube: Kube, names: Sequence[str], revision: str) -> list[str]:
    """The namespaces in `names` with at least one pod on `revision` (what a rollback restarts)."""
    return [
        ns.name
        for ns in _namespaces(kube, names)
        if any(p.revision == revision for p in progress.live_pods(ns))
    ]


def check_unused(
    kube: Kube, revision: str, kept: KeptBy, moved: Collection[WorkloadRef] = ()
) -> str:
    """Refuse to go on while anything the run did not expect refers to `revision` (a failed
    read refuses too); OldRevisionKept when only the users `kept` (known before the run,
    listed in its plan) do. A pod of a workload in `moved` (the gateways) is never expected.
    """
    users = users_of(cluster.snapshot(kube), revision)
    unexpected = [str(u) for u in users if not kept.covers(u, moved)]
    if unexpected:
        raise RevisionInUse(revision, unexpected)
    if users:
        raise OldRevisionKept(revision, kept.describe())
    return f"revision {revision} is not used by any pod, namespace or tag"


def uninstall(
    kube: Kube, istioctl: Runner, revision: str, settle_seconds: float = SETTLE_SECONDS
) -> bool:
    """Remove a revision's control plane unless it is gone already, and wait until its
    objects are. True if removed now."""
    if not revision_objects(kube, revision):
        log.info("uninstall skipped revision=%s reason=not-installed", revision)
        return False
    result = istioctl.run(*uninstall_args(revision))
    if not result.ok:
        raise ClusterStateError(
            f"revision {revision}",
            "still installed",
            "uninstalled",
            "see istioctl's output:\n" + result.summary(),
        )
    kept = cluster.revision_objects_kept(kube, revision)
    if kept:
        # istioctl's delete calls have returned: what is not even being deleted was left
        # alone (its pruning selects by istioctl's owner labels), and waiting will not help
        raise ClusterStateError(
            f"revision {revision}",
            ", ".join(kept),
            "deleted by istioctl uninstall, which exited 0 but did not delete these",
            "they lack istioctl's owner labels (installed with Helm or another installer?): "
            "remove them with that installer, then clear this task",
        )
    if not settle(lambda: not revision_objects(kube, revision), settle_seconds):
        raise ClusterStateError(
            f"revision {revision}",
            ", ".join(revision_objects(kube, revision)),
            f"removed {settle_seconds:.0f} s after istioctl uninstall",
            "see what holds them (finalizers, another installer such as Helm), remove them, "
            "then clear this task",
        )
    return True


def revision_objects(kube: Kube, revision: str) -> list[str]:
    """The revision's own objects still present: Deployment, Service, injector webhook."""
    return cluster.revision_objects(kube, revision)


allow(Verified, Restart)
