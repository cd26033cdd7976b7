"""How far a namespace has moved to a revision: pure answers over a NamespaceState."""

from __future__ import annotations

from istio_upgrade.model import NamespaceState, PodState, WorkloadRef

FINISHED_PHASES = ("Succeeded", "Failed")


def live_pods(ns: NamespaceState) -> list[PodState]:
    """Pods that count: not finished and not on their way out."""
    return [p for p in ns.pods if p.phase not in FINISHED_PHASES and not p.terminating]


def off_revision(ns: NamespaceState, revision: str) -> list[PodState]:
    """Live pods of restartable workloads that do not run `revision` (not injected counts)."""
    return [p for p in live_pods(ns) if p.owner is not None and p.revision != revision]


def unrestartable(ns: NamespaceState) -> list[PodState]:
    """Live injected pods without a Deployment/StatefulSet/DaemonSet: a restart cannot move them."""
    return [p for p in live_pods(ns) if p.owner is None and p.revision is not None]


def workloads_to_restart(ns: NamespaceState, revision: str) -> list[WorkloadRef]:
    """The workloads with at least one live pod not on `revision`, in a stable order.

    A workload whose pods all run `revision` already is left alone: that is what makes a
    re-run or the next window pick up where the last one stopped.
    """
    owners = {p.owner for p in off_revision(ns, revision) if p.owner is not None}
    return [w for w in ns.workloads if w in owners]


def on_revision(ns: NamespaceState, revision: str) -> bool:
    """Every live pod of a restartable workload runs `revision`."""
    return not off_revision(ns, revision)


def revision_counts(ns: NamespaceState) -> dict[str, int]:
    """How many live pods run each revision ("none" for pods without a sidecar)."""
    counts: dict[str, int] = {}
    for p in live_pods(ns):
        key = p.revision or "none"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
