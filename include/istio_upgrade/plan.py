"""The plan of a run: what is already done, the canary, the waves and the commands (dry run)."""

from __future__ import annotations

import shlex
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from istio_upgrade import progress
from istio_upgrade.istioctl import install_args, precheck_args, tag_set_args, uninstall_args
from istio_upgrade.model import MeshSnapshot, NamespaceState, WorkloadRef, revision_version
from istio_upgrade.params import ResolvedParams


@dataclass(frozen=True)
class NamespacePlan:
    """One namespace: the workloads to restart so every proxy in it runs the target revision."""

    name: str
    workloads: tuple[WorkloadRef, ...]  # to restart: those with a pod off the target, by kind, name
    already_on_target: bool  # every live injected pod runs the target: nothing to restart
    unrestartable_pods: tuple[str, ...]  # off target with no controller (bare pod, Job)

    @property
    def needs_restart(self) -> bool:
        return bool(self.workloads)


def plan_namespace(
    namespace: NamespaceState, revision: str, skip: Collection[WorkloadRef] = ()
) -> NamespacePlan:
    """What it takes to move a namespace onto `revision` (the target, or the old one on rollback).

    Reads what pods run (their sidecar status), never labels. Finished pods are left out, and
    pods that were never injected do not hold a namespace back, so a namespace with no
    injected pod counts as already there. Workloads in `skip` (gateways, restarted on their
    own) still count for "already on target" but are not restarted here.
    """
    stuck = progress.unrestartable(namespace, revision)
    return NamespacePlan(
        name=namespace.name,
        workloads=tuple(progress.workloads_to_restart(namespace, revision, skip)),
        already_on_target=not progress.off_revision(namespace, revision) and not stuck,
        unrestartable_pods=tuple(sorted(p.name for p in stuck)),
    )


@dataclass(frozen=True)
class UpgradePlan:
    """The whole run as it would go from the snapshot it was built on."""

    current_revision: str
    target_revision: str
    tag: str
    gateways: tuple[str, ...]  # "namespace/deployment", restarted right after the tag moves
    canary: tuple[str, ...]  # watched by the gate; restarted unless already on target
    waves: tuple[tuple[str, ...], ...]  # the remaining namespaces to restart, in name order
    skipped: tuple[str, ...]  # already on target: not restarted
    commands: tuple[str, ...]  # what is still to run, as a person would type it
    namespaces: tuple[NamespacePlan, ...] = ()  # every namespace in scope, by name
    excluded: tuple[str, ...] = ()  # follow the tag but left alone by request
    done: tuple[str, ...] = ()  # steps an earlier run already completed
    warnings: tuple[str, ...] = ()  # what will keep the old revision in use

    def namespace(self, name: str) -> NamespacePlan | None:
        return next((n for n in self.namespaces if n.name == name), None)


def build_plan(resolved: ResolvedParams, snapshot: MeshSnapshot) -> UpgradePlan:
    """Compare the snapshot with the goal of the run and plan only the difference."""
    params = resolved.params
    target, current, tag = params.target_revision, resolved.current_revision, params.tag
    gateways = params.gateway_refs
    plans = tuple(
        plan_namespace(ns, target, skip=gateways)
        for name in resolved.namespaces
        if (ns := snapshot.namespace(name)) is not None
    )
    by_name = {p.name: p for p in plans}
    rest = [p.name for p in plans if p.name not in resolved.canary and p.needs_restart]
    size = params.wave_concurrency
    waves = tuple(tuple(rest[i : i + size]) for i in range(0, len(rest), size))

    order = (*resolved.canary, *(n for w in waves for n in w))
    restarts = [by_name[n] for n in order if n in by_name]  # a namespace may be gone since
    done, commands = _steps(resolved, snapshot, restarts)
    return UpgradePlan(
        current_revision=current,
        target_revision=target,
        tag=tag,
        gateways=params.gateways,
        canary=resolved.canary,
        waves=waves,
        skipped=tuple(p.name for p in plans if p.already_on_target),
        commands=commands,
        namespaces=plans,
        excluded=resolved.excluded,
        done=done,
        warnings=tuple(_warnings(resolved, snapshot, plans)),
    )


def _steps(
    resolved: ResolvedParams, snapshot: MeshSnapshot, restarts: list[NamespacePlan]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The procedure's steps as (already done, commands still to run), in procedure order."""
    params = resolved.params
    target, current, tag = params.target_revision, resolved.current_revision, params.tag
    done: list[str] = []
    cmd: list[str] = []
    istioctl = params.istioctl if params.istioctl and not params.istioctl_version else "istioctl"

    def run(args: Sequence[str]) -> str:
        """The command line the run executes (the same argument builders)."""
        return shlex.join([istioctl, *args])

    cmd.append(run(precheck_args()))  # cheap and read-only: always again
    installed = snapshot.control_plane(target)
    if installed is not None and installed.ready:
        done.append(f"control plane istiod-{target} is installed and ready")
    else:
        overlay = params.install_overlay or None
        cmd.append(run(install_args(target, params.install_profile, overlay)))
    found = snapshot.tag(tag)
    tag_moved = found is not None and found.revision == target
    if tag_moved:
        done.append(f"tag {tag} points at {target}")
    else:
        cmd.append(run(tag_set_args(tag, target)))
    for gateway, ref in zip(params.gateways, params.gateway_refs, strict=True):
        ns = snapshot.namespace(ref.namespace)
        # before the tag moves, a gateway "on target" can only be a coincidence: restart anyway
        if (
            tag_moved
            and ns is not None
            and plan_namespace(_only(ns, ref), target).already_on_target
        ):
            done.append(f"gateway {gateway} runs {target}")
        else:
            cmd.append(_restart_command(ref.namespace, (ref,)))
    cmd += [_restart_command(p.name, p.workloads) for p in restarts if p.needs_restart]
    if snapshot.control_plane(current) is not None:
        cmd.append(run(uninstall_args(current)))
    else:
        done.append(f"control plane istiod-{current} is removed")
    return tuple(done), tuple(cmd)


def _only(namespace: NamespaceState, ref: WorkloadRef) -> NamespaceState:
    """The namespace reduced to the pods of one workload (to ask whether a gateway moved)."""
    pods = tuple(p for p in namespace.pods if p.owner == ref)
    return NamespaceState(namespace.name, namespace.labels, (ref,), pods)


def _restart_command(namespace: str, workloads: Collection[WorkloadRef]) -> str:
    names = [f"{w.kind.lower()}/{w.name}" for w in workloads]
    return shlex.join(["kubectl", "rollout", "restart", *names, "-n", namespace])


def _warnings(
    resolved: ResolvedParams, snapshot: MeshSnapshot, plans: tuple[NamespacePlan, ...]
) -> list[str]:
    """What will still use the old revision after the run (`ResolvedParams.kept_by`), so it
    will be kept; anything else found using it at the end fails the removal."""
    current = resolved.current_revision
    out = [
        f"namespace {p.name}: pods {', '.join(p.unrestartable_pods)} have no controller to "
        "restart (bare pods or Jobs); delete or recreate them"
        for p in plans
        if p.unrestartable_pods
    ]
    out += [
        f"namespace {name} is excluded: its pods keep their proxies and the old revision "
        "stays in use"
        for name in resolved.excluded
    ]
    out += [
        f"namespace {ns.name} is labelled istio.io/rev={current}: it is pinned to the old "
        f"revision; relabel it istio.io/rev={resolved.tag} to move it"
        for ns in snapshot.namespaces
        if ns.labels.get("istio.io/rev") == current
    ]
    out += [
        f"tag {t.name} points at {current}: the old revision stays installed for it; move it "
        f"(istioctl tag set {t.name} --revision {resolved.target_revision} --overwrite -y)"
        for t in snapshot.tags
        if t.revision == current and t.name != resolved.tag
    ]
    if out:
        out.append(
            f"so revision {current} is kept, not removed: the run still completes, its report "
            "names what keeps it"
        )
    return out


def render_plan(plan: UpgradePlan) -> str:
    """The dry-run text: what is done, what moves in which order, and the commands."""
    version = revision_version(plan.target_revision)
    lines = [
        f"Istio canary upgrade: {plan.current_revision} -> {plan.target_revision}"
        f"{f' (Istio {version})' if version else ''}, tag {plan.tag!r}",
    ]

    def section(title: str, items: Sequence[str]) -> None:
        lines.extend(["", f"{title}:", *(f"  {item}" for item in (items or ["(none)"]))])

    def restarts(name: str) -> str:
        p = plan.namespace(name)
        if p is None or p.already_on_target:
            return f"{name}: already on {plan.target_revision}, not restarted"
        if not p.needs_restart:
            return f"{name}: no workload of its own to restart (gateways or bare pods only)"
        return f"{name}: restart " + ", ".join(f"{w.kind.lower()}/{w.name}" for w in p.workloads)

    if plan.done:
        section("Already done", plan.done)
    section("Gateways (restarted in place once the tag moves)", plan.gateways)
    section(
        "Canary (restarted first, then watched by the metric gate)",
        [restarts(n) for n in plan.canary],
    )
    section(
        "Waves (after the gate passes)",
        [
            f"wave {i}: " + "; ".join(restarts(n) for n in wave)
            for i, wave in enumerate(plan.waves, 1)
        ],
    )
    skipped = [n for n in plan.skipped if n not in plan.canary]
    if skipped:
        section(f"Already on {plan.target_revision} (not restarted)", skipped)
    if plan.warnings:
        section("Warnings", plan.warnings)
    section(
        "Commands (-y always: without a terminal istioctl takes silence as 'no')",
        plan.commands,
    )
    section(
        "Rollback (if the gate fails)",
        [
            shlex.join(["istioctl", *tag_set_args(plan.tag, plan.current_revision)]),
            "then restart the gateways and namespaces already moved, back onto "
            f"{plan.current_revision}",
        ],
    )
    return "\n".join(lines) + "\n"
