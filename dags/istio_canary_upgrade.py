"""
### Istio canary upgrade

Moves the mesh from one Istio control-plane revision to the next, the revision-based
("canary") way, verifying every step from the cluster itself:

1. **validate** the params against the cluster (nothing changes before this), then
   `istioctl x precheck` and a snapshot of the mesh;
2. **install** the target revision beside the current one and wait for its control plane;
3. **move the tag** (`istioctl tag set <tag> --revision <target> --overwrite -y`, read back);
4. **restart the gateways** and wait for their rollout; every gateway pod must run the target;
5. **restart the canary namespaces**, wait, verify;
6. **metric gate**: success rate and p99 from Prometheus over the bake time; with
   `require_approval`, then **a person approves** (Approve / Reject, with the canary's figures);
7. **branch**: *continue* upgrades the remaining namespaces in waves (one task per
   namespace, named by it, which waits for its turn, restarts and verifies in the
   triggerer), then removes the old revision once nothing uses it; *rollback* (after a
   failed gate, a rejection, or any step failing after the tag moved: `on_failure`) moves
   the tag back, restarts what moved, verifies the old proxies and ends the run failed;
8. **report**: revisions per namespace before and after, timings and metric figures.

Every task is safe to clear and re-run: it compares the cluster with the goal and acts
only on the difference. `dry_run` prints the plan and changes nothing.

istioctl runs on the worker (`istioctl_runner: local`, the binary of the target's version)
or as one pod per command in istio-system (`pod`, the image `istioctl_image:<version>`,
ServiceAccount `istio-canary-upgrade` from include/rbac.yaml); a retried task reattaches to
the pod its earlier try started.

#### Schedule
With `ISTIO_UPGRADE_WINDOWS` set (e.g. `Tue,Thu 02:00-04:00 Asia/Tokyo`; several windows
split by `;`) a run starts when a maintenance window opens and its data interval is that
window. Unset or empty: no schedule, runs are triggered by hand. A run with an empty
`target_revision` takes the Airflow Variable `istio_upgrade_target_revision`, else
`ISTIO_UPGRADE_TARGET_REVISION`; its other params are the defaults, which
`ISTIO_UPGRADE_PARAM_DEFAULTS` (a JSON object) sets for the deployment. A run skips (and ends
green) when the mesh already runs the target everywhere, or when it starts after its window
has ended.

#### Windows and pauses
Before each wave, the run compares the time left in its window with the longest wave it
has measured so far (before the first wave: the canary's restart and rollout; when nothing
was restarted in this run: `rollout_timeout_seconds`). The window ends with the data
interval of a scheduled run (or of a manual run triggered inside a window); `window_minutes`
sets one for a manual run, counted from its start. A wave that would not fit does not start,
nor does any after it: the mesh stays in its valid mixed state (both revisions installed,
the tag on the target, each namespace wholly on one revision), the old revision is kept,
and the report says **paused: N namespaces left**. A paused run ends **success** with
`conclude` skipped: nothing is broken and nobody needs to act (a failed run would alert and
count towards auto-pausing the DAG); the next run continues where it stopped, skipping the
namespaces already on the target. Removing the old revision does not start after the window
either: with every namespace moved, the run pauses the same way and the next one removes it.

#### Approval
With `require_approval`, `approve_canary` waits for a person (Required Actions in the UI,
or `PATCH .../taskInstances/approve_canary/-1/hitlDetails`). Approve continues, Reject rolls
back; no answer within `approval_timeout_seconds` counts as `approval_default` (reject by
default). Without `require_approval` the task is skipped and the gate alone decides.

#### Retries
Kubernetes API and Prometheus calls retry (3, from 10 s, doubling); istioctl actions retry
less often and later (2, from 30 s); prechecks, verifications, the gate, the approval and
the rollout waits retry once, and only for an error that is not their finding (Airflow can
fail a try by itself): a finding is never retried away, and a refusal raised on purpose (bad
params, a revision in use, a failed rollout) fails at once even where retries are allowed.
A retried rollout wait keeps its deadline, a retried gate goes on with the checks it counted
(kept on the run's Lease), a retried approval asks again. A task killed mid-way is retried
without redoing what it did (a restart carries the run's stamp).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pendulum
from airflow.sdk import (
    Param,
    TriggerRule,
    Variable,
    conf,
    dag,
    get_current_context,
    task,
    task_group,
)
from airflow.sdk.exceptions import AirflowSkipException
from maintenance_window import MaintenanceWindowTimetable

from istio_upgrade import config, tasks
from istio_upgrade.approval import Answer
from istio_upgrade.deadline import WavesPaused, WindowClosed
from istio_upgrade.errors import NothingToDo, OldRevisionKept
from istio_upgrade.health import GateResult, MetricCheck
from istio_upgrade.model import WorkloadRef
from istio_upgrade.operators import (
    CanaryApproval,
    CanaryUpgrade,
    GatewayUpgrade,
    MetricGateSensor,
    NamespaceUpgrade,
    RolloutSensor,
    failed_tasks,
    pull_all,
    record_timing,
)
from istio_upgrade.params import TARGET_VARIABLE, ResolvedParams, form_params
from istio_upgrade.report import Prechecked, RunReport
from istio_upgrade.retry_policies import (
    API_RETRY,
    APPROVAL_RETRY,
    DEFERRED_API_RETRY,
    DEFERRED_VERDICT_RETRY,
    ISTIOCTL_RETRY,
    NO_RETRY,
    VERDICT_RETRY,
)
from istio_upgrade.steps import Verified
from istio_upgrade.upgrade_lock import holder_of
from istio_upgrade.waves import NamespaceOutcome, WaveItem

T = TypeVar("T")

# Deployment settings from the environment (no Variable or cluster is read while parsing).
PARAMS = {
    name: Param(**kwargs) for name, kwargs in form_params(config.param_defaults(os.environ)).items()
}
WINDOWS = config.windows(os.environ)
SCHEDULE = MaintenanceWindowTimetable(*WINDOWS) if WINDOWS else None
DEFAULT_TARGET = config.default_target(os.environ)

# The main steps whose durations the report lists, in order.
STEPS = (
    "validate",
    "precheck",
    "install_revision",
    "move_tag",
    "upgrade_gateways",
    "upgrade_canary",
    "metric_gate",
    "remaining_namespaces",
    "remove_old_revision",
    "rollback.move_tag_back",
    "rollback.restart_moved",
    "rollback.wait_rolled_back",
    "rollback.verify_rolled_back",
)


BRANCHES = {
    tasks.Decision.CONTINUE: ["remaining_namespaces"],
    tasks.Decision.ROLLBACK: ["rollback.move_tag_back"],
    tasks.Decision.STOP: [],
}


def timed(fn: Callable[..., T]) -> Callable[..., T]:
    """Record the task's duration for the report (wraps the function before @task)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        out = fn(*args, **kwargs)
        record_timing(get_current_context())
        return out

    return wrapper


def _run_id() -> str:
    return str(get_current_context()["run_id"])


def _outcomes() -> list[NamespaceOutcome]:
    """How each namespace of the waves ended (XCom `outcome` of every upgrade_namespace)."""
    return pull_all(get_current_context(), "upgrade_namespace", "outcome")


@dag(
    dag_id="istio_canary_upgrade",
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    doc_md=__doc__,
    tags=["istio", "upgrade", "canary"],
    default_args=NO_RETRY,  # a task without a decided retry policy fails closed
)
def istio_canary_upgrade() -> None:
    @task(**API_RETRY)
    @timed
    def validate() -> ResolvedParams:
        context = get_current_context()
        try:
            return tasks.validate(
                dict(context["params"]),
                variable_target=Variable.get(TARGET_VARIABLE, default=None),
                configured_target=DEFAULT_TARGET,
                run_start=context["dag_run"].start_date or datetime.now(UTC),
                interval_start=context.get("data_interval_start"),
                interval_end=context.get("data_interval_end"),
                lock_holder=holder_of(context["dag"].dag_id, context["run_id"]),
            )
        except (NothingToDo, WindowClosed) as done:
            # A scheduled run after the upgrade finished, or one that started too late for
            # its window: skip cleanly, do not fail.
            raise AirflowSkipException(str(done)) from done

    # show_plan and precheck both follow validate and each skips itself in the other's mode
    # (a branch between would be one more task in a row).
    @task(**API_RETRY)
    def show_plan(resolved: ResolvedParams) -> str:
        if not resolved.params.dry_run:
            raise AirflowSkipException("not a dry run: the upgrade runs")
        return tasks.show_plan(resolved)

    @task(**VERDICT_RETRY)
    @timed
    def precheck(resolved: ResolvedParams) -> Prechecked:
        if resolved.params.dry_run:
            raise AirflowSkipException("dry run: show_plan prints the plan, nothing changes")
        return tasks.precheck(resolved, _run_id())

    @task(**ISTIOCTL_RETRY)
    @timed
    def install_revision(resolved: ResolvedParams) -> bool:
        return tasks.install(resolved, _run_id())

    @task(**ISTIOCTL_RETRY)
    @timed
    def move_tag(resolved: ResolvedParams) -> bool:
        return tasks.move_tag(resolved, _run_id())

    @task(**API_RETRY)
    def measure_baseline(resolved: ResolvedParams) -> list[MetricCheck]:
        return tasks.measure_baseline(resolved)

    @task.branch(trigger_rule=TriggerRule.ALL_DONE, **VERDICT_RETRY)
    def decide(
        resolved: ResolvedParams | None,
        gate: GateResult | None,
        answer: Answer | None,
    ) -> list[str]:
        # ALL_DONE: a failure before the decision must still reach the rollback
        context = get_current_context()
        failed = failed_tasks(context, context["task"].get_flat_relative_ids(upstream=True))
        decision, _ = tasks.decide(resolved, gate, answer, failed)
        return BRANCHES[decision]

    @task(**API_RETRY)
    @timed
    def remaining_namespaces(resolved: ResolvedParams) -> list[WaveItem]:
        return tasks.remaining_waves(resolved, conf.getint("core", "max_map_length"))

    @task(trigger_rule=TriggerRule.ALL_DONE, **API_RETRY)
    def finish_waves(resolved: ResolvedParams, remaining: list[WaveItem] | None) -> str:
        # ALL_DONE: wait for every namespace (a skipped one must not end the waves early).
        if remaining is None:
            raise AirflowSkipException("no waves in this run (rolled back or stopped before)")
        try:
            return tasks.finish_waves(resolved, _outcomes())
        except WavesPaused as paused:
            # Skips remove_old_revision after it: the old revision stays.
            raise AirflowSkipException(str(paused)) from paused

    @task(**ISTIOCTL_RETRY)
    @timed
    def remove_old_revision(resolved: ResolvedParams) -> str:
        # Both skips keep the old revision and end the run green; the report reads why.
        ti = get_current_context()["ti"]
        try:
            return tasks.remove_old_revision(resolved, _run_id())
        except OldRevisionKept as kept:
            # Only users the plan named keep it (known before the run, listed in its plan).
            ti.xcom_push("kept", str(kept))
            raise AirflowSkipException(str(kept)) from kept
        except WavesPaused as paused:
            # The window ended: no change after it; the next run removes it.
            ti.xcom_push("held", paused.reason)
            raise AirflowSkipException(str(paused)) from paused

    @task_group
    def rollback(resolved: ResolvedParams) -> None:
        @task(**ISTIOCTL_RETRY)
        @timed
        def move_tag_back(resolved: ResolvedParams) -> bool:
            return tasks.move_tag(resolved, _run_id(), to_current=True)

        @task(**API_RETRY)
        @timed
        def restart_moved(resolved: ResolvedParams) -> list[WorkloadRef]:
            return tasks.restart_moved_back(resolved, _run_id())

        @task(**VERDICT_RETRY)
        @timed
        def verify_rolled_back(resolved: ResolvedParams) -> Verified:
            return tasks.verify_rolled_back(resolved)

        @task(**ISTIOCTL_RETRY)
        def remove_new_revision(resolved: ResolvedParams) -> str:
            return tasks.remove_new_revision(resolved, _run_id())

        moved = restart_moved(resolved)
        move_tag_back(resolved) >> moved
        waited = RolloutSensor(
            task_id="wait_rolled_back", workloads=moved, resolved=resolved, **DEFERRED_VERDICT_RETRY
        )
        waited >> verify_rolled_back(resolved) >> remove_new_revision(resolved)

    # The report is plain JSON (a TypedDict), so not one XCom per key.
    @task(trigger_rule=TriggerRule.ALL_DONE, multiple_outputs=False, **API_RETRY)
    def report(
        resolved: ResolvedParams | None,
        pre: Prechecked | None,
        gate: GateResult | None,
        answer: Answer | None,
    ) -> RunReport:
        # ALL_DONE: a run that failed half-way still reports where the mesh stands.
        if resolved is None or pre is None:
            raise AirflowSkipException("nothing ran against the cluster (dry run or bad params)")
        ti = get_current_context()["ti"]
        timings = {
            tid: t for tid in STEPS if (t := ti.xcom_pull(task_ids=tid, key="timing")) is not None
        }
        removal_held = ti.xcom_pull(task_ids="remove_old_revision", key="held")
        old_kept = ti.xcom_pull(task_ids="remove_old_revision", key="kept")
        failed = failed_tasks(get_current_context())
        rollback_ran = ti.xcom_pull(task_ids="rollback.move_tag_back") is not None
        return tasks.final_report(
            resolved,
            pre,
            gate,
            timings,
            answer,
            _outcomes(),
            removal_held,
            failed,
            rollback_ran,
            old_kept,
        )

    @task(trigger_rule=TriggerRule.ALL_DONE, **VERDICT_RETRY)
    def conclude(result: RunReport | None, resolved: ResolvedParams | None) -> str:
        # ALL_DONE: the run is green only when nothing in it failed (see tasks.conclude)
        try:
            return tasks.conclude(result, failed_tasks(get_current_context()))
        except WavesPaused as paused:
            # A pause ends the run green, this task skipped: see "Windows and pauses" above.
            raise AirflowSkipException(str(paused)) from paused
        finally:
            # after the verdict, so a cluster that cannot be reached does not hide it
            tasks.release_lock(resolved)

    resolved = validate()
    pre = precheck(resolved)
    show_plan(resolved)

    # Restart, rollout wait (in the triggerer) and verification are one task each.
    gateways = GatewayUpgrade(
        task_id="upgrade_gateways", resolved=resolved, **DEFERRED_VERDICT_RETRY
    )
    canary = CanaryUpgrade(task_id="upgrade_canary", resolved=resolved, **DEFERRED_VERDICT_RETRY)
    # The canary's figures before anything changes, taken while the new revision installs.
    baseline = measure_baseline(resolved)
    gate = MetricGateSensor(
        task_id="metric_gate", resolved=resolved, baseline=baseline, **DEFERRED_VERDICT_RETRY
    )
    approve = CanaryApproval(
        task_id="approve_canary", resolved=resolved, gate=gate.output, **APPROVAL_RETRY
    )
    (
        pre
        >> install_revision(resolved)
        >> move_tag(resolved)
        >> gateways
        >> canary
        >> gate
        >> approve
    )
    pre >> baseline >> canary
    branch = decide(resolved, gate.output, approve.output)
    # A failed baseline fails the canary's chain at once while the install, the tag and the
    # gateways may still be under way: the decision waits for them (their chain ends here).
    gateways >> branch

    remaining = remaining_namespaces(resolved)
    # One task per namespace, named by it; waiting, restarting and verifying all happen in
    # its trigger (docs/fan-out.md), so the waves hold no worker slot.
    upgraded = NamespaceUpgrade.partial(
        task_id="upgrade_namespace",
        resolved=resolved,
        canary=canary.output,
        map_index_template="{{ task.item.namespace }}",
        **DEFERRED_API_RETRY,
    ).expand(item=remaining)
    removed = remove_old_revision(resolved)
    branch >> remaining
    upgraded >> finish_waves(resolved, remaining) >> removed

    rolled_back = rollback(resolved)
    branch >> rolled_back

    result = report(resolved, pre, gate.output, approve.output)
    [removed, rolled_back] >> result
    conclude(result, resolved)


istio_canary_upgrade()
