"""One function per DAG task: resolve the run's cluster and istioctl, then call its step.

Inputs are the run's ResolvedParams (validate's result) and the run id; what a task hands
a later one is a typed `Contract` (contracts.py). The DAG file only wires these together.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from istio_upgrade import (
    approval,
    cluster,
    deadline,
    health,
    plan,
    progress,
    report,
    steps,
    upgrade_lock,
    waves,
)
from istio_upgrade.cluster import Kube
from istio_upgrade.config import allowed_targets, check_allowed
from istio_upgrade.connections import kube_target
from istio_upgrade.deadline import Outcome, Span, WavesPaused, WindowClosed
from istio_upgrade.errors import UpgradeError, WavesFailed
from istio_upgrade.istioctl import Istioctl, Runner, resolve
from istio_upgrade.istioctl_in_cluster import PodIstioctl
from istio_upgrade.model import (
    MeshSnapshot,
    RevisionTag,
    UpgradePhase,
    WorkloadRef,
    revision_version,
)
from istio_upgrade.params import ResolvedParams, parse_params, with_target
from istio_upgrade.references import KeptBy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """The run's validated params with its cluster client and istioctl."""

    rp: ResolvedParams
    kube: Kube
    istioctl: Runner

    @property
    def target(self) -> str:
        return self.rp.target_revision

    @property
    def current(self) -> str:
        return self.rp.current_revision


def _run(rp: ResolvedParams, run_id: str = "") -> Run:
    """`run_id` names the in-cluster istioctl's pods; tasks that run istioctl pass it."""
    target = kube_target(rp.params.kubernetes_conn_id)
    kube = cluster.connect(target)
    if rp.lock_holder:  # every task start renews the run's hold on the cluster
        upgrade_lock.hold(kube, rp.lock_holder, upgrade_lock.lease_seconds(rp.params))
    istioctl: Runner
    if rp.params.istioctl_runner == "pod":
        # validate made sure one of the two names a version
        version = rp.params.istioctl_version or revision_version(rp.target_revision) or ""
        istioctl = PodIstioctl(kube, version, run_id, repository=rp.params.istioctl_image)
    else:
        binary = resolve(rp.params.istioctl, rp.target_revision)
        istioctl = Istioctl(binary, kubeconfig=target.kubeconfig, context=target.context)
    return Run(rp, kube, istioctl)


def validate(
    raw_params: Mapping[str, Any],
    *,
    variable_target: str | None,
    configured_target: str,
    run_start: datetime,
    interval_start: datetime | None,
    interval_end: datetime | None,
    lock_holder: str,
    now: datetime | None = None,
) -> ResolvedParams:
    """Params on their own, then against the cluster (and the istioctl they name).

    An empty target_revision comes from the Variable or the DAG's default (scheduled runs);
    the run's window end is fixed here, once, for every wave to compare with. Raises
    WindowClosed when the window is already over (a late scheduled run changes nothing) and
    NothingToDo when the mesh already runs the target everywhere. Last, the run takes the
    cluster's upgrade lock as `lock_holder` (not a dry run: it changes nothing).
    """
    raw, source = with_target(raw_params, variable_target, configured_target)
    params = parse_params(raw)
    check_allowed(params, allowed_targets(os.environ))
    end, basis = deadline.window_end(
        window_minutes=params.window_minutes,
        run_start=run_start,
        interval_start=interval_start,
        interval_end=interval_end,
    )
    if end is not None and (now or datetime.now(UTC)) >= end:
        raise WindowClosed(end.isoformat(), basis)
    kube = cluster.connect(kube_target(params.kubernetes_conn_id))
    resolved = steps.validate(kube, raw)
    log.info(
        "target=%s source=%s window_end=%s window=%s",
        resolved.target_revision,
        source,
        end.isoformat() if end else "none",
        basis,
    )
    holder = "" if params.dry_run else lock_holder
    if holder:
        upgrade_lock.hold(kube, holder, upgrade_lock.lease_seconds(params))
    until = end.isoformat() if end else None
    return replace(resolved, window_end=until, window_basis=basis, lock_holder=holder)


def release_lock(rp: ResolvedParams | None) -> None:
    """Give up the run's hold on the cluster at its end, whatever the end was.

    A release that fails raises: a run that ends green must leave the cluster free for the
    next one, not refuse it until the lease expires.
    """
    if rp is None or not rp.lock_holder:
        return
    kube = cluster.connect(kube_target(rp.params.kubernetes_conn_id))
    upgrade_lock.release(kube, rp.lock_holder)


def show_plan(rp: ResolvedParams) -> str:
    """The dry run: the plan as text, nothing changed."""
    run = _run(rp)
    text = plan.render_plan(plan.build_plan(rp, cluster.snapshot(run.kube)))
    log.info("dry run, nothing changed:\n%s", text)
    return text


def precheck(rp: ResolvedParams, run_id: str) -> report.Prechecked:
    """istioctl x precheck, then the state before anything changes (for the report)."""
    run = _run(rp, run_id)
    output = steps.precheck(run.istioctl)
    return report.Prechecked(output, report.MeshSummary.of(cluster.snapshot(run.kube)))


def install(rp: ResolvedParams, run_id: str) -> bool:
    run = _run(rp, run_id)
    return steps.install(
        run.kube,
        run.istioctl,
        run.target,
        rp.params.install_profile,
        rp.params.install_overlay or None,
    )


def move_tag(rp: ResolvedParams, run_id: str, to_current: bool = False) -> bool:
    run = _run(rp, run_id)
    return steps.move_tag(run.kube, run.istioctl, rp.tag, run.current if to_current else run.target)


def _gateways(rp: ResolvedParams) -> list[WorkloadRef]:
    return list(rp.params.gateway_refs)


def restart_gateways(rp: ResolvedParams, run_id: str) -> list[WorkloadRef]:
    run = _run(rp)
    return steps.restart_workloads(
        run.kube, _gateways(rp), run.target, steps.restart_stamp(run_id, run.target)
    )


def verify_gateways(rp: ResolvedParams) -> steps.Verified:
    run = _run(rp)
    return steps.verify_workloads(run.kube, _gateways(rp), run.target)


def measure_baseline(rp: ResolvedParams) -> list[health.MetricCheck]:
    """The canary's own figures before its restart, for the gate to compare with."""
    checks = health.run_check(rp.params.prometheus_url, rp.canary, rp.params)
    for c in checks:
        log.info("baseline %s", c.message)
    return checks


def restart_canary(rp: ResolvedParams, run_id: str) -> steps.Restart:
    """Restart the canary namespaces onto the target revision."""
    started = time.time()
    run = _run(rp)
    waits, moved = steps.restart_and_count(
        run.kube, list(rp.canary), run.target, steps.restart_stamp(run_id, run.target)
    )
    return steps.Restart(tuple(waits), tuple(moved), started)


def verify_canary(rp: ResolvedParams, restart: steps.Restart | None) -> steps.Verified:
    """Every pod of the canary namespaces runs the target; with the restart's record, also
    the span from its start to now (how long the move took)."""
    run = _run(rp)
    verified = steps.verify_namespaces(run.kube, list(rp.canary), run.target)
    if restart is None:
        return verified
    span = Span(
        deadline.CANARY_WAVE, rp.canary, restart.started, time.time(), len(restart.restarted)
    )
    return replace(verified, span=span)


class Decision(StrEnum):
    """Where the run goes after the canary."""

    CONTINUE = "continue"  # the waves, then the old revision's removal
    ROLLBACK = "rollback"  # the tag back, what moved restarted back
    STOP = "stop"  # neither: nothing was judged, or on_failure 'stop' after a failure


def decide(
    rp: ResolvedParams | None,
    gate: health.GateResult | None,
    answer: approval.Answer | None,
    failed: Sequence[str] = (),
) -> tuple[Decision, str]:
    """The branch after the canary, and why.

    `failed` are the steps before the decision that failed. After a failure the mesh must
    not stay on a revision that was never judged: when the tag points at the target, roll
    back (unless on_failure is 'stop'). Without a failure, the gate decides, and with
    require_approval the answer too; with no gate verdict (a dry run) nothing happens.
    """
    if rp is None:
        return Decision.STOP, "nothing ran: validate skipped or failed"
    if failed:
        steps_failed = ", ".join(failed)
        run = _run(rp)
        tag = cluster.tag_revision(run.kube, rp.tag)
        if tag != rp.target_revision:
            found = (Decision.STOP, f"{steps_failed} failed with the tag on {tag}: nothing moved")
        elif rp.params.on_failure == "stop":
            found = (Decision.STOP, f"{steps_failed} failed; on_failure is 'stop': left as it is")
        else:
            found = (Decision.ROLLBACK, f"{steps_failed} failed after the tag moved")
    elif gate is None:
        found = (Decision.STOP, "the canary was not judged (dry run, or the gate did not run)")
    else:
        result = approval.verdict(rp.params.require_approval, gate, answer)
        found = (Decision.CONTINUE if result.proceed else Decision.ROLLBACK, result.reason)
    log.info("decision=%s reason=%s", *found)
    return found


def approval_question(rp: ResolvedParams, gate: health.GateResult) -> approval.Question:
    """What to ask a person after the gate passed."""
    run = _run(rp)
    waves = plan.build_plan(rp, cluster.snapshot(run.kube)).waves
    timeout = report.duration_text(rp.params.approval_timeout_seconds)
    return approval.Question(
        subject=approval.subject(rp),
        body=approval.body(rp, gate, timeout, waves),
        default=approval.default_option(rp.params.approval_default),
        timeout_seconds=rp.params.approval_timeout_seconds,
    )


def remaining_waves(rp: ResolvedParams, max_items: int | None = None) -> list[waves.WaveItem]:
    """The namespaces still to move after the canary, one mapped item each, in wave order.

    A namespace already on the target is left out, so a re-run does not restart it again.
    `max_items` is Airflow's limit on mapped task instances ([core] max_map_length).
    """
    run = _run(rp)
    p = plan.build_plan(rp, cluster.snapshot(run.kube))
    items = waves.wave_items(p.waves)
    if max_items is not None and len(items) > max_items:
        raise UpgradeError(
            f"{len(items)} namespaces are left to move, more than Airflow maps in one task "
            f"([core] max_map_length = {max_items}): raise max_map_length in the config of "
            "every Airflow process, or move some with include_namespaces in a first run"
        )
    log.info("remaining namespaces=%d waves=%d", len(items), len(p.waves))
    return items


def _not_on_target(run: Run) -> list[str]:
    states = cluster.namespace_states(run.kube, run.rp.namespaces)
    return [ns.name for ns in states if not progress.on_revision(ns, run.target)]


def finish_waves(rp: ResolvedParams, outcomes: Sequence[waves.NamespaceOutcome]) -> str:
    """After the waves: all moved (go on to remove the old revision), paused, or failed.

    Read from the cluster: a namespace that was held back by the window and is still on the
    old revision is a pause (WavesPaused); one that was started and did not arrive is a
    failure that must not be mistaken for a pause.
    """
    run = _run(rp)
    left = _not_on_target(run)
    held = waves.held(outcomes)
    held_names = [o.namespace for o in held]
    log.info("waves outcomes=%s left=%d", waves.summary(outcomes), len(left))
    outcome = deadline.waves_outcome(left, held_names)
    if outcome is Outcome.PAUSED:
        raise WavesPaused(deadline.paused_reason(left, [h.reason for h in held]))
    if outcome is Outcome.FAILED:
        raise WavesFailed(run.target, sorted(set(left) - set(held_names)))
    return f"{len(rp.namespaces)} namespaces run {run.target}"


def remove_old_revision(rp: ResolvedParams, run_id: str, now: float | None = None) -> str:
    """The procedure's last step, once every namespace moved: hold the old revision when the
    window has ended (WavesPaused: the next run removes it); refuse while anything the plan
    did not name uses it (RevisionInUse); keep it when only users it named do
    (OldRevisionKept); otherwise uninstall it and wait until its objects are gone."""
    run = _run(rp, run_id)
    if not steps.revision_objects(run.kube, run.current):
        # A retry after the removal: done, whatever the window says now.
        return f"revision {run.current} is removed"
    held = deadline.removal_held(
        rp.window_end, time.time() if now is None else now, run.current, run.target
    )
    if held:
        raise WavesPaused(held)
    unused = steps.check_unused(run.kube, run.current, rp.kept_by, _gateways(rp))
    steps.uninstall(run.kube, run.istioctl, run.current)
    return f"{unused}: removed"


# --- rollback -----------------------------------------------------------------------------


def restart_moved_back(rp: ResolvedParams, run_id: str) -> list[WorkloadRef]:
    """Restart everything that runs the target revision (gateways, canary, any wave) back."""
    run = _run(rp)
    stamp = steps.restart_stamp(run_id, run.current)
    gateways = steps.restart_workloads(run.kube, _gateways(rp), run.current, stamp)
    moved = steps.moved_namespaces(run.kube, rp.namespaces, run.target)
    log.info("rollback namespaces=%s", ",".join(moved) or "none")
    return gateways + steps.restart_namespaces(run.kube, moved, run.current, stamp)


def verify_rolled_back(rp: ResolvedParams) -> steps.Verified:
    run = _run(rp)
    steps.verify_workloads(run.kube, _gateways(rp), run.current)
    return steps.verify_namespaces(run.kube, list(rp.namespaces), run.current)


def remove_new_revision(rp: ResolvedParams, run_id: str) -> str:
    """After a rollback, optionally uninstall the target revision once nothing uses it."""
    run = _run(rp, run_id)
    if not rp.params.remove_new_revision_on_rollback:
        return f"kept revision {run.target} (remove_new_revision_on_rollback is off)"
    steps.check_unused(run.kube, run.target, KeptBy())  # nothing may use it: any user refuses
    steps.uninstall(run.kube, run.istioctl, run.target)
    return f"removed revision {run.target}"


# --- the end ------------------------------------------------------------------------------


def phase_of(
    snapshot: MeshSnapshot,
    rp: ResolvedParams,
    rolled_back: bool,
    held: Sequence[str] = (),
    removal_held: bool = False,
    old_kept: bool = False,
) -> UpgradePhase:
    """Where the mesh stands, read from the cluster rather than from which tasks ran.

    PAUSED needs both: namespaces held back by the window (or, with every namespace moved,
    the old revision's removal held back), and no other namespace of the run off the target
    (one that started and did not arrive means a failure, not a pause). With every namespace
    moved, the old revision installed is COMPLETED when only users the plan knew keep it
    (`old_kept`), else MOVED (its removal failed or did not run).
    """
    tag = snapshot.tag(rp.tag)
    on_target = tag is not None and tag.revision == rp.target_revision
    old_installed = snapshot.control_plane(rp.current_revision) is not None
    if on_target and not old_installed:
        return UpgradePhase.COMPLETED
    if on_target:
        left = [
            ns.name
            for ns in snapshot.namespaces
            if ns.name in rp.namespaces and not progress.on_revision(ns, rp.target_revision)
        ]
        if held and deadline.waves_outcome(left, held) is Outcome.PAUSED:
            return UpgradePhase.PAUSED
        if removal_held and not left:
            return UpgradePhase.PAUSED
        if not left:
            return UpgradePhase.COMPLETED if old_kept else UpgradePhase.MOVED
        return UpgradePhase.CANARY
    if rolled_back:
        return UpgradePhase.ROLLED_BACK
    if snapshot.control_plane(rp.target_revision) is not None:
        return UpgradePhase.INSTALLED
    return UpgradePhase.VALIDATED


def final_report(
    rp: ResolvedParams,
    pre: report.Prechecked,
    gate: health.GateResult | None,
    timings: dict[str, float],
    answer: approval.Answer | None = None,
    outcomes: Sequence[waves.NamespaceOutcome] = (),
    removal_held: str | None = None,
    failed: Sequence[str] = (),
    rollback_ran: bool = False,
    old_kept: str | None = None,
) -> report.RunReport:
    """The run report: revisions per namespace before/after, timings, metric figures, phase.

    `outcomes` are those of the namespaces of the waves (the held ones make a pause),
    `removal_held` why the old revision was not removed (remove_old_revision's WavesPaused), if so,
    `failed` the run's failed tasks (named in the reason), `rollback_ran` whether the
    rollback path moved the tag back (after a failed gate, a rejection or a failure),
    `old_kept` why the old revision was kept (remove_old_revision's OldRevisionKept), if so.
    """
    run = _run(rp)
    after = cluster.snapshot(run.kube)
    result = approval.verdict(rp.params.require_approval, gate, answer)
    rolled_back = rollback_ran or (gate is not None and not result.proceed)
    held = waves.held(outcomes)
    held_names = [o.namespace for o in held]
    phase = phase_of(
        after, rp, rolled_back, held_names, removal_held is not None, old_kept is not None
    )
    if phase is UpgradePhase.COMPLETED and old_kept:
        reason = f"every namespace of the run runs {run.target}; {old_kept}"
    elif phase is UpgradePhase.COMPLETED:
        reason = f"every namespace runs {run.target}; revision {run.current} removed"
    elif phase is UpgradePhase.MOVED:
        culprit = ", ".join(failed) or "the removal"
        reason = (
            f"every namespace of the run runs {run.target}, but revision {run.current} was "
            f"not removed: {culprit} failed; see it, fix and clear it"
        )
    elif phase is UpgradePhase.PAUSED and removal_held and not held_names:
        reason = removal_held
    elif phase is UpgradePhase.PAUSED:
        left = [
            ns.name
            for ns in after.namespaces
            if ns.name in rp.namespaces and not progress.on_revision(ns, run.target)
        ]
        reason = deadline.paused_reason(left, [h.reason for h in held])
    elif phase is UpgradePhase.ROLLED_BACK:
        reason = result.reason
    else:
        tag = (after.tag(rp.tag) or RevisionTag(rp.tag, "?")).revision
        culprit = f"{', '.join(failed)} failed" if failed else "stopped"
        reason = f"{culprit} with the tag on {tag}: see the failed task; clear it to resume"
    if failed and phase is UpgradePhase.ROLLED_BACK:
        reason = f"{', '.join(failed)} failed; rolled back: {reason}"
    text = report.render_report(
        before=pre.before,
        after=report.MeshSummary.of(after),
        timings=timings,
        checks=list(gate.checks) if gate else [],
        phase=phase,
        reason=reason,
    )
    log.info("report\n%s", text)
    return {"phase": phase.value, "reason": reason, "text": text}


def conclude(result: report.RunReport | None, failed: Sequence[str] = ()) -> str:
    """End the run: completed passes, paused raises WavesPaused, anything else fails, saying why.

    Needed because Airflow judges a run by its leaf tasks: without this, a failed step whose
    downstream tasks all end skipped would leave the run green. `failed` are the run's failed
    tasks: any one makes the run fail, whatever the report says. No report and no failure:
    the run had nothing to do (the mesh runs the target, the window was over, a dry run).
    A pause is not a failure: the mesh is valid and the next window continues (the DAG skips
    on WavesPaused).
    """
    if failed:
        phase = f" (phase {result['phase']}: {result['reason']})" if result else ""
        raise UpgradeError(f"upgrade not completed: {', '.join(failed)} failed{phase}")
    if result is None:
        return "nothing to do in this run"
    if result["phase"] == UpgradePhase.PAUSED.value:
        raise WavesPaused(str(result["reason"]))
    if result["phase"] != UpgradePhase.COMPLETED.value:
        raise UpgradeError(f"upgrade not completed (phase {result['phase']}): {result['reason']}")
    return str(result["reason"])
