"""The plan: what is already done, canary, waves in name order, and the dry-run text."""

from __future__ import annotations

import shlex
from dataclasses import replace
from typing import Any

import pytest

from istio_upgrade.deadline import WavesPaused
from istio_upgrade.errors import UpgradeError
from istio_upgrade.health import GateResult, HealthVerdict
from istio_upgrade.istioctl import install_args, precheck_args, tag_set_args, uninstall_args
from istio_upgrade.model import (
    ControlPlane,
    MeshSnapshot,
    NamespaceState,
    PodState,
    RevisionTag,
    UpgradePhase,
    WorkloadRef,
)
from istio_upgrade.params import check_against_cluster, parse_params
from istio_upgrade.plan import UpgradePlan, build_plan, plan_namespace, render_plan
from istio_upgrade.report import RunReport
from istio_upgrade.tasks import Decision, conclude, decide, phase_of

OLD, NEW = "1-14-6", "1-15-4"


def pod(
    ns: str, name: str, revision: str | None, owner: str | None, phase: str = "Running"
) -> PodState:
    """A pod injected by `revision` (None: not injected), owned by Deployment `owner`."""
    ref = WorkloadRef("Deployment", ns, owner) if owner else None
    version = revision.replace("-", ".") if revision else None
    return PodState(ns, name, f"uid-{ns}-{name}", phase, ref, revision, version)


def namespace(name: str, *pods: PodState, labels: dict[str, str] | None = None) -> NamespaceState:
    owners = sorted({p.owner for p in pods if p.owner}, key=lambda w: w.name)
    return NamespaceState(name, labels or {"istio.io/rev": "default"}, tuple(owners), pods)


def app(name: str, *revisions: str) -> NamespaceState:
    """An application namespace: one Deployment named like it, one pod per revision given."""
    return namespace(name, *(pod(name, f"{name}-{i}", r, name) for i, r in enumerate(revisions)))


def mesh(
    *namespaces: NamespaceState, planes: tuple[str, ...] = (OLD,), tag: str = OLD
) -> MeshSnapshot:
    gateway = namespace("istio-ingress", pod("istio-ingress", "gw-0", tag, "istio-ingressgateway"))
    return MeshSnapshot(
        tuple(ControlPlane(r, True, r.replace("-", "."), True) for r in planes),
        (RevisionTag("default", tag),),
        tuple(sorted((*namespaces, gateway), key=lambda n: n.name)),
        "2025-01-01T00:00:00+00:00",
    )


EXAMPLE = mesh(*(app(n, OLD, OLD) for n in ("foo", "bar", "baz", "qux")))


def plan_for(snapshot: MeshSnapshot, **overrides: Any) -> UpgradePlan:
    params = parse_params({"target_revision": NEW, **overrides})
    return build_plan(check_against_cluster(params, snapshot), snapshot)


# -- one namespace --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "on_target", "restart", "unrestartable"),
    [
        pytest.param(app("foo", OLD, OLD), False, ("foo",), (), id="all-old"),
        pytest.param(app("foo", NEW, NEW), True, (), (), id="all-new"),
        pytest.param(app("foo", NEW, OLD), False, ("foo",), (), id="half-way"),
        pytest.param(namespace("foo"), True, (), (), id="no-pods"),
        pytest.param(namespace("foo", pod("foo", "a", None, "foo")), True, (), (),
                     id="never-injected"),
        pytest.param(namespace("foo", pod("foo", "a", OLD, "foo", "Succeeded")), True, (), (),
                     id="finished-pod"),
        pytest.param(namespace("foo", pod("foo", "a", OLD, None)), False, (), ("a",),
                     id="bare-pod"),
        pytest.param(
            namespace("foo", pod("foo", "a", NEW, "web"), pod("foo", "b", OLD, "api")),
            False, ("api",), (), id="only-the-workload-off-target",
        ),
        pytest.param(
            namespace("foo", pod("foo", "a", OLD, "gw")), False, (), (),
            id="skipped-gateway-holds-back-but-is-not-restarted-here",
        ),
    ],
)  # fmt: skip
def test_plan_namespace(
    ns: NamespaceState, on_target: bool, restart: tuple[str, ...], unrestartable: tuple[str, ...]
) -> None:
    plan = plan_namespace(ns, NEW, skip=[WorkloadRef("Deployment", "foo", "gw")])
    assert plan.already_on_target is on_target
    assert tuple(w.name for w in plan.workloads) == restart
    assert plan.needs_restart is bool(restart)
    assert plan.unrestartable_pods == unrestartable


def test_rollback_plans_the_way_back_with_the_same_question() -> None:
    plan = plan_namespace(app("bar", NEW, NEW), OLD)
    assert [w.name for w in plan.workloads] == ["bar"]


# -- the whole run -------------------------------------------------------------------------------


def test_worked_example_plan() -> None:
    plan = plan_for(EXAMPLE)
    assert (plan.current_revision, plan.target_revision, plan.tag) == (OLD, NEW, "default")
    assert plan.canary == ("bar",)
    # istio-ingress has only the gateway, which moves on its own right after the tag
    assert plan.waves == (("baz", "foo"), ("qux",))
    assert plan.skipped == () and plan.done == () and plan.warnings == ()
    assert plan.commands == (
        "istioctl x precheck",
        f"istioctl install -y --set revision={NEW} --set profile=minimal --readiness-timeout 300s",
        f"istioctl tag set default --revision {NEW} --overwrite -y",
        "kubectl rollout restart deployment/istio-ingressgateway -n istio-ingress",
        "kubectl rollout restart deployment/bar -n bar",
        "kubectl rollout restart deployment/baz -n baz",
        "kubectl rollout restart deployment/foo -n foo",
        "kubectl rollout restart deployment/qux -n qux",
        f"istioctl uninstall --revision {OLD} -y",
    )


@pytest.mark.parametrize(
    ("concurrency", "waves"),
    [
        pytest.param(1, (("baz",), ("foo",), ("qux",)), id="one-at-a-time"),
        pytest.param(2, (("baz", "foo"), ("qux",)), id="two"),
        pytest.param(3, (("baz", "foo", "qux"),), id="three"),
        pytest.param(10, (("baz", "foo", "qux"),), id="more-than-namespaces"),
    ],
)
def test_waves_are_name_ordered_chunks(
    concurrency: int, waves: tuple[tuple[str, ...], ...]
) -> None:
    assert plan_for(EXAMPLE, wave_concurrency=concurrency).waves == waves


def test_resumed_run_plans_only_the_difference() -> None:
    # an earlier run installed 1-15-4, moved the tag and the gateway, and got bar and baz over
    snapshot = mesh(
        app("bar", NEW), app("baz", NEW, NEW), app("foo", NEW, OLD), app("qux", OLD),
        planes=(OLD, NEW), tag=NEW,
    )  # fmt: skip
    plan = plan_for(snapshot)
    assert plan.canary == ("bar",)
    assert plan.waves == (("foo", "qux"),)
    assert plan.skipped == ("bar", "baz", "istio-ingress")
    assert plan.done == (
        f"control plane istiod-{NEW} is installed and ready",
        f"tag default points at {NEW}",
        f"gateway istio-ingress/istio-ingressgateway runs {NEW}",
    )
    assert plan.commands == (
        "istioctl x precheck",
        "kubectl rollout restart deployment/foo -n foo",
        "kubectl rollout restart deployment/qux -n qux",
        f"istioctl uninstall --revision {OLD} -y",
    )


def test_commands_use_the_given_istioctl_and_overlay() -> None:
    plan = plan_for(EXAMPLE, istioctl="/opt/istio 1.15/istioctl", install_overlay="/etc/o.yaml")
    assert plan.commands[1] == (
        f"'/opt/istio 1.15/istioctl' install -y --set revision={NEW} --set profile=minimal "
        "--readiness-timeout 300s -f /etc/o.yaml"
    )


def test_the_plan_prints_the_commands_the_run_executes() -> None:
    plan = plan_for(EXAMPLE)
    run = [
        shlex.join(["istioctl", *args])
        for args in (
            precheck_args(),
            install_args(NEW, "minimal"),
            tag_set_args("default", NEW),
            uninstall_args(OLD),
        )
    ]
    istioctl_lines = [c for c in plan.commands if c.startswith("istioctl ")]
    assert istioctl_lines == run


def test_warnings_name_what_keeps_the_old_revision_in_use() -> None:
    snapshot = mesh(
        app("bar", OLD),
        namespace("jobs", pod("jobs", "once", OLD, None), pod("jobs", "web-0", OLD, "web")),
        app("qux", OLD),
        namespace("legacy", pod("legacy", "a", OLD, "a"), labels={"istio.io/rev": OLD}),
    )
    snapshot = replace(snapshot, tags=(*snapshot.tags, RevisionTag("prod-stable", OLD)))
    plan = plan_for(snapshot, exclude_namespaces=["qux"])
    assert plan.excluded == ("qux",)
    assert plan.waves == (("jobs",),)
    assert plan.warnings == (
        "namespace jobs: pods once have no controller to restart (bare pods or Jobs); "
        "delete or recreate them",
        "namespace qux is excluded: its pods keep their proxies and the old revision stays in use",
        f"namespace legacy is labelled istio.io/rev={OLD}: it is pinned to the old revision; "
        "relabel it istio.io/rev=default to move it",
        f"tag prod-stable points at {OLD}: the old revision stays installed for it; move it "
        f"(istioctl tag set prod-stable --revision {NEW} --overwrite -y)",
        f"so revision {OLD} is kept, not removed: the run still completes, its report names "
        "what keeps it",
    )
    # The same users, as the end of the run compares them with what it finds then
    kept = check_against_cluster(
        parse_params({"target_revision": NEW, "exclude_namespaces": ["qux"]}), snapshot
    ).kept_by
    assert kept.users == (
        "tag prod-stable",
        "pod jobs/once",
        "namespace legacy (label istio.io/rev)",
    )
    assert kept.namespaces == ("legacy", "qux")


def test_render_plan_of_the_worked_example() -> None:
    assert (
        render_plan(plan_for(EXAMPLE))
        == f"""\
Istio canary upgrade: {OLD} -> {NEW} (Istio 1.15.4), tag 'default'

Gateways (restarted in place once the tag moves):
  istio-ingress/istio-ingressgateway

Canary (restarted first, then watched by the metric gate):
  bar: restart deployment/bar

Waves (after the gate passes):
  wave 1: baz: restart deployment/baz; foo: restart deployment/foo
  wave 2: qux: restart deployment/qux

Commands (-y always: without a terminal istioctl takes silence as 'no'):
  istioctl x precheck
  istioctl install -y --set revision={NEW} --set profile=minimal --readiness-timeout 300s
  istioctl tag set default --revision {NEW} --overwrite -y
  kubectl rollout restart deployment/istio-ingressgateway -n istio-ingress
  kubectl rollout restart deployment/bar -n bar
  kubectl rollout restart deployment/baz -n baz
  kubectl rollout restart deployment/foo -n foo
  kubectl rollout restart deployment/qux -n qux
  istioctl uninstall --revision {OLD} -y

Rollback (if the gate fails):
  istioctl tag set default --revision {OLD} --overwrite -y
  then restart the gateways and namespaces already moved, back onto {OLD}
"""
    )


def test_render_plan_shows_done_steps_skips_and_warnings() -> None:
    snapshot = mesh(
        app("bar", NEW), app("foo", OLD), namespace("jobs", pod("jobs", "once", OLD, None)),
        planes=(OLD, NEW), tag=NEW,
    )  # fmt: skip
    text = render_plan(plan_for(snapshot))
    assert "Already done:\n  control plane istiod-1-15-4 is installed and ready\n" in text
    assert "Canary (restarted first, then watched by the metric gate):\n" \
        "  bar: already on 1-15-4, not restarted\n" in text  # fmt: skip
    assert "wave 1: foo: restart deployment/foo\n" in text
    assert "Already on 1-15-4 (not restarted):\n  istio-ingress\n" in text
    assert "Warnings:\n  namespace jobs: pods once have no controller" in text


# -- where a run ended (tasks.phase_of) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "removal_held", "phase"),
    [
        pytest.param(
            mesh(*(app(n, NEW) for n in ("foo", "bar")), planes=(OLD, NEW), tag=NEW),
            True,
            UpgradePhase.PAUSED,
            id="all-moved-removal-held",
        ),
        pytest.param(
            mesh(*(app(n, NEW) for n in ("foo", "bar")), planes=(OLD, NEW), tag=NEW),
            False,
            UpgradePhase.MOVED,  # every wave done: the report must not say "canary"
            id="all-moved-removal-failed",
        ),
        pytest.param(
            mesh(app("foo", NEW), app("bar", OLD), planes=(OLD, NEW), tag=NEW),
            True,
            UpgradePhase.CANARY,
            id="one-left-is-no-pause",
        ),
        pytest.param(
            mesh(*(app(n, NEW) for n in ("foo", "bar")), planes=(NEW,), tag=NEW),
            False,
            UpgradePhase.COMPLETED,
            id="removed",
        ),
    ],
)
def test_phase_pauses_on_a_held_removal_only_with_every_namespace_moved(
    after: MeshSnapshot, removal_held: bool, phase: UpgradePhase
) -> None:
    before = mesh(app("foo", OLD), app("bar", OLD))
    rp = check_against_cluster(parse_params({"target_revision": NEW}), before)
    assert phase_of(after, rp, rolled_back=False, removal_held=removal_held) is phase


def test_an_old_revision_kept_for_known_users_completes_the_run() -> None:
    before = mesh(app("foo", OLD), app("bar", OLD))
    rp = check_against_cluster(parse_params({"target_revision": NEW}), before)
    after = mesh(app("foo", NEW), app("bar", NEW), planes=(OLD, NEW), tag=NEW)
    assert phase_of(after, rp, rolled_back=False, old_kept=True) is UpgradePhase.COMPLETED
    assert phase_of(after, rp, rolled_back=False, old_kept=False) is UpgradePhase.MOVED


# -- how a run ends (tasks.conclude) and where it goes after the canary (tasks.decide) -----------


@pytest.mark.parametrize(
    ("result", "failed", "ends"),
    [
        pytest.param({"phase": "completed", "reason": "done"}, [], "done", id="completed"),
        pytest.param(None, [], "nothing to do", id="nothing-ran-nothing-failed"),
        pytest.param(None, ["precheck"], UpgradeError, id="failed-precheck-is-red"),
        pytest.param({"phase": "completed", "reason": "done"}, ["measure_baseline"],
                     UpgradeError, id="a-failed-task-in-a-completed-run-is-red"),
        pytest.param({"phase": "rolled_back", "reason": "gate"}, [], UpgradeError,
                     id="rolled-back-is-red"),
        pytest.param({"phase": "paused", "reason": "window"}, [], WavesPaused, id="paused"),
    ],
)  # fmt: skip
def test_conclude(result: RunReport | None, failed: list[str], ends: object) -> None:
    if isinstance(ends, str):
        assert ends in conclude(result, failed)
    else:
        with pytest.raises(ends) as raised:  # type: ignore[call-overload]
            conclude(result, failed)
        assert all(f in str(raised.value) for f in failed)


def test_decide_skips_both_branches_when_nothing_ran_or_nothing_was_judged() -> None:
    assert decide(None, None, None)[0] is Decision.STOP
    resolved = check_against_cluster(parse_params({"target_revision": NEW}), EXAMPLE)
    assert decide(resolved, None, None)[0] is Decision.STOP  # a dry run
    passed = GateResult(HealthVerdict.PASSED, "ok", (), 1, 0)
    assert decide(resolved, passed, None)[0] is Decision.CONTINUE
    failed = GateResult(HealthVerdict.FAILED, "5xx", (), 2, 2)
    assert decide(resolved, failed, None)[0] is Decision.ROLLBACK
