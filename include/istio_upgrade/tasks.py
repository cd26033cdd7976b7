"""One function per DAG task: resolve the run's cluster and istioctl, then call its step.

Inputs are the validated params (as the XCom dict of ResolvedParams) and the run id; outputs
are plain JSON. The DAG file only wires these together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from istio_upgrade import cluster, health, plan, report, steps
from istio_upgrade.cluster import Kube
from istio_upgrade.connections import kube_target
from istio_upgrade.errors import UpgradeError
from istio_upgrade.istioctl import Istioctl, resolve
from istio_upgrade.model import MeshSnapshot, RevisionTag, UpgradePhase, WorkloadRef
from istio_upgrade.params import ResolvedParams, parse_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """The run's validated params with its cluster client and istioctl."""

    rp: ResolvedParams
    kube: Kube
    istioctl: Istioctl

    @property
    def target(self) -> str:
        return self.rp.target_revision

    @property
    def current(self) -> str:
        return self.rp.current_revision


def _run(resolved: dict[str, Any]) -> Run:
    rp = ResolvedParams.from_dict(resolved)
    target = kube_target(rp.params.kubernetes_conn_id)
    binary = resolve(rp.params.istioctl, rp.target_revision)
    return Run(
        rp,
        cluster.connect(target),
        Istioctl(binary, kubeconfig=target.kubeconfig, context=target.context),
    )


def validate(raw_params: dict[str, Any]) -> dict[str, Any]:
    """Params on their own, then against the cluster (and the istioctl they name)."""
    params = parse_params(raw_params)
    kube = cluster.connect(kube_target(params.kubernetes_conn_id))
    return steps.validate(kube, raw_params).to_dict()


def show_plan(resolved: dict[str, Any]) -> str:
    """The dry run: the plan as text, nothing changed."""
    run = _run(resolved)
    text = plan.render_plan(plan.build_plan(run.rp, cluster.snapshot(run.kube)))
    log.info("dry run, nothing changed:\n%s", text)
    return text


def precheck(resolved: dict[str, Any]) -> dict[str, Any]:
    """istioctl x precheck, then the state before anything changes (for the report)."""
    run = _run(resolved)
    output = steps.precheck(run.istioctl)
    snap = cluster.snapshot(run.kube)
    return {"precheck": output, "before": snap.to_dict()}


def install(resolved: dict[str, Any]) -> bool:
    run = _run(resolved)
    return steps.install(
        run.kube,
        run.istioctl,
        run.target,
        run.rp.params.install_profile,
        run.rp.params.install_overlay or None,
    )


def control_plane_ready(resolved: dict[str, Any]) -> bool:
    run = _run(resolved)
    return steps.control_plane_ready(run.kube, run.target)


def move_tag(resolved: dict[str, Any], to_current: bool = False) -> bool:
    run = _run(resolved)
    return steps.move_tag(
        run.kube, run.istioctl, run.rp.tag, run.current if to_current else run.target
    )


def _gateways(rp: ResolvedParams) -> list[WorkloadRef]:
    return list(rp.params.gateway_refs)


def restart_gateways(resolved: dict[str, Any], run_id: str) -> list[dict[str, str]]:
    run = _run(resolved)
    return steps.restart_workloads(
        run.kube, _gateways(run.rp), run.target, steps.restart_stamp(run_id, run.target)
    )


def verify_gateways(resolved: dict[str, Any]) -> dict[str, Any]:
    run = _run(resolved)
    return steps.verify_workloads(run.kube, _gateways(run.rp), run.target)


def measure_baseline(resolved: dict[str, Any]) -> list[dict[str, Any]]:
    """The canary's own figures before its restart, for the gate to compare with."""
    rp = ResolvedParams.from_dict(resolved)
    checks = health.run_check(rp.params.prometheus_url, rp.canary, rp.params)
    for c in checks:
        log.info("baseline %s", c.message)
    return [c.to_dict() for c in checks]


def restart_namespaces(
    resolved: dict[str, Any], run_id: str, namespaces: list[str] | None = None
) -> list[dict[str, str]]:
    """Restart the canary namespaces (or the given ones) onto the target revision."""
    run = _run(resolved)
    names = namespaces if namespaces is not None else list(run.rp.canary)
    return steps.restart_namespaces(
        run.kube, names, run.target, steps.restart_stamp(run_id, run.target)
    )


def verify_namespaces(
    resolved: dict[str, Any], namespaces: list[str] | None = None
) -> dict[str, Any]:
    run = _run(resolved)
    names = namespaces if namespaces is not None else list(run.rp.canary)
    return steps.verify_namespaces(run.kube, names, run.target)


def decide(gate: dict[str, Any]) -> bool:
    """Whether the canary passed its gate (the branch continues on True, rolls back on False)."""
    passed = gate.get("verdict") == str(health.HealthVerdict.PASSED)
    log.info("decision=%s gate=%s", "continue" if passed else "rollback", gate.get("message"))
    return passed


def remaining_waves(resolved: dict[str, Any]) -> list[dict[str, Any]]:
    """The namespaces still to move after the canary, each with its wave and those before it.

    A namespace already on the target is left out, so a re-run does not restart it again.
    """
    run = _run(resolved)
    p = plan.build_plan(run.rp, cluster.snapshot(run.kube))
    items: list[dict[str, Any]] = []
    before: list[str] = []
    for wave_no, wave in enumerate(p.waves):
        items += [{"namespace": ns, "wave": wave_no, "after": list(before)} for ns in wave]
        before += list(wave)
    log.info("remaining namespaces=%d waves=%d", len(items), len(p.waves))
    return items


def turn_reached(resolved: dict[str, Any], item: dict[str, Any]) -> bool:
    """A namespace's wave may start once every namespace of the earlier waves is on target."""
    run = _run(resolved)
    return steps.namespaces_on(run.kube, item["after"], run.target)


def check_old_unused(resolved: dict[str, Any]) -> str:
    run = _run(resolved)
    return steps.check_unused(run.kube, run.current)


def uninstall_old(resolved: dict[str, Any]) -> bool:
    run = _run(resolved)
    return steps.uninstall(run.kube, run.istioctl, run.current)


def old_removed(resolved: dict[str, Any]) -> bool:
    run = _run(resolved)
    left = steps.revision_objects(run.kube, run.current)
    if left:
        log.info("waiting for removal revision=%s left=%s", run.current, ",".join(left))
    return not left


# --- rollback -----------------------------------------------------------------------------


def restart_moved_back(resolved: dict[str, Any], run_id: str) -> list[dict[str, str]]:
    """Restart everything that runs the target revision (gateways, canary, any wave) back."""
    run = _run(resolved)
    stamp = steps.restart_stamp(run_id, run.current)
    gateways = steps.restart_workloads(run.kube, _gateways(run.rp), run.current, stamp)
    moved = steps.moved_namespaces(run.kube, run.rp.namespaces, run.target)
    log.info("rollback namespaces=%s", ",".join(moved) or "none")
    return gateways + steps.restart_namespaces(run.kube, moved, run.current, stamp)


def verify_rolled_back(resolved: dict[str, Any]) -> dict[str, Any]:
    run = _run(resolved)
    steps.verify_workloads(run.kube, _gateways(run.rp), run.current)
    return steps.verify_namespaces(run.kube, list(run.rp.namespaces), run.current)


def remove_new_revision(resolved: dict[str, Any]) -> str:
    """After a rollback, optionally uninstall the target revision once nothing uses it."""
    run = _run(resolved)
    if not run.rp.params.remove_new_revision_on_rollback:
        return f"kept revision {run.target} (remove_new_revision_on_rollback is off)"
    steps.check_unused(run.kube, run.target)
    steps.uninstall(run.kube, run.istioctl, run.target)
    return f"removed revision {run.target}"


# --- the end ------------------------------------------------------------------------------


def phase_of(snapshot: MeshSnapshot, rp: ResolvedParams, gate_failed: bool) -> UpgradePhase:
    """Where the mesh stands, read from the cluster rather than from which tasks ran."""
    tag = snapshot.tag(rp.tag)
    on_target = tag is not None and tag.revision == rp.target_revision
    old_installed = snapshot.control_plane(rp.current_revision) is not None
    if on_target and not old_installed:
        return UpgradePhase.COMPLETED
    if on_target:
        return UpgradePhase.CANARY
    if gate_failed:
        return UpgradePhase.ROLLED_BACK
    if snapshot.control_plane(rp.target_revision) is not None:
        return UpgradePhase.INSTALLED
    return UpgradePhase.VALIDATED


def final_report(
    resolved: dict[str, Any],
    pre: dict[str, Any],
    gate: dict[str, Any] | None,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The run report: revisions per namespace before/after, timings, metric figures, phase."""
    run = _run(resolved)
    after = cluster.snapshot(run.kube)
    gate_failed = gate is not None and not decide(gate)
    phase = phase_of(after, run.rp, gate_failed)
    if phase is UpgradePhase.COMPLETED:
        reason = f"every namespace runs {run.target}; revision {run.current} removed"
    elif phase is UpgradePhase.ROLLED_BACK:
        reason = str((gate or {}).get("message", "the canary failed its metric gate"))
    else:
        reason = (
            f"stopped with the tag on "
            f"{(after.tag(run.rp.tag) or RevisionTag(run.rp.tag, '?')).revision}: "
            "see the failed task; clear it to resume"
        )
    checks = [health.MetricCheck.from_dict(c) for c in (gate or {}).get("checks", [])]
    text = report.render_report(
        before=MeshSnapshot.from_dict(pre["before"]),
        after=after,
        timings=timings,
        checks=checks,
        phase=phase,
        reason=reason,
    )
    log.info("report\n%s", text)
    return {"phase": phase.value, "reason": reason, "text": text}


def conclude(result: dict[str, Any]) -> str:
    """End the run: anything but a completed upgrade fails the run, saying why.

    Needed because Airflow judges a run by its leaf tasks: without this, a failed step
    upstream of an always-running report would still leave the run green.
    """
    if result["phase"] != UpgradePhase.COMPLETED.value:
        raise UpgradeError(f"upgrade not completed (phase {result['phase']}): {result['reason']}")
    return str(result["reason"])
