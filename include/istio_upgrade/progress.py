"""How far a namespace has moved to a revision: pure answers over its pods.

Only what pods really run counts (their sidecar status), never labels. Pods that were never
injected (opted out) neither need a restart nor hold a namespace back.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from istio_upgrade.model import NamespaceState, PodState, WorkloadRef

# Pods in these phases have stopped: their proxy serves no traffic, so they neither need a
# restart nor show which revision a namespace runs.
TERMINAL_POD_PHASES = frozenset({"Succeeded", "Failed"})


def live_pods(ns: NamespaceState) -> list[PodState]:
    """Pods that count: not finished and not on their way out."""
    return [p for p in ns.pods if p.phase not in TERMINAL_POD_PHASES and not p.terminating]


def _off(ns: NamespaceState, revision: str) -> list[PodState]:
    return [p for p in live_pods(ns) if p.revision is not None and p.revision != revision]


def off_revision(ns: NamespaceState, revision: str) -> list[PodState]:
    """Live injected pods of restartable workloads that do not run `revision`."""
    return [p for p in _off(ns, revision) if p.owner is not None]


def unrestartable(ns: NamespaceState, revision: str | None = None) -> list[PodState]:
    """Live injected pods without a Deployment/StatefulSet/DaemonSet (optionally: not on
    `revision`): a restart cannot move them, so they are reported, not waited for."""
    pods = _off(ns, revision) if revision else [p for p in live_pods(ns) if p.revision]
    return [p for p in pods if p.owner is None]


def workloads_to_restart(
    ns: NamespaceState, revision: str, skip: Collection[WorkloadRef] = ()
) -> list[WorkloadRef]:
    """The workloads with a live pod not on `revision`, in a stable order (kind, name).

    A workload whose pods all run `revision` already is left alone: that is what makes a
    re-run or the next window pick up where the last one stopped. `skip` (the gateways,
    restarted on their own) is never restarted with its namespace.
    """
    owners = {p.owner for p in off_revision(ns, revision) if p.owner not in skip}
    return sorted((w for w in owners if w is not None), key=lambda w: (w.kind, w.name))


def on_revision(ns: NamespaceState, revision: str) -> bool:
    """Every live injected pod of a restartable workload runs `revision`."""
    return not off_revision(ns, revision)


def revision_counts(pods: Iterable[PodState]) -> dict[str, int]:
    """How many live injected pods run each revision: the before/after picture."""
    counts: dict[str, int] = {}
    for pod in pods:
        if pod.revision and pod.phase not in TERMINAL_POD_PHASES and not pod.terminating:
            counts[pod.revision] = counts.get(pod.revision, 0) + 1
    return dict(sorted(counts.items()))
