"""Deferrable sensors: they check once on the worker, then hand the waiting to a trigger.

Deferral needs class-based operators; the checking itself lives in `cluster`, `health` and
`triggers`, so these classes only decide when to defer and what a trigger event means.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowSkipException

from istio_upgrade import approval, cluster, health, run_notes, tasks, upgrade_lock, waves
from istio_upgrade.connections import kube_target
from istio_upgrade.errors import RolloutFailed
from istio_upgrade.model import WorkloadRef
from istio_upgrade.params import ResolvedParams
from istio_upgrade.run_state import task_key
from istio_upgrade.steps import restart_stamp
from istio_upgrade.triggers import (
    EarlierAnswerTrigger,
    MetricGateTrigger,
    NamespaceUpgradeTrigger,
    RolloutTrigger,
)


def record_timing(context: Context) -> None:
    """Push how long this task took, from its first try (a rescheduled or deferred task
    restarts its clock otherwise); the report reads these as XCom `timing`."""
    ti = context["ti"]
    first = ti.get_first_reschedule_date(context) or ti.start_date
    seconds = (datetime.now(UTC) - first).total_seconds() if first else 0.0
    ti.xcom_push("timing", round(seconds, 1))


def pull_all(context: Context, task_id: str, key: str = "return_value") -> list[Any]:
    """Every XCom `key` of a task in this run, all map indexes, as a list (missing: [])."""
    found = context["ti"].xcom_pull(task_ids=task_id, key=key)
    # one value comes back bare, none as None (xcom_pull's shape rules for a single task id)
    if found is None:
        return []
    return list(found) if isinstance(found, list) else [found]


def failed_tasks(context: Context, among: Collection[str] | None = None) -> list[str]:
    """The task instances of this run that failed (of `among` only, when given), as
    `task_id` or `task_id[map_index]`, read from Airflow's task states. Those upstream_failed
    are left out: a failed one upstream of them says why."""
    ti = context["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})
    failed = []
    for key, state in states.items():
        task_id, index = task_key(key)
        if state == "failed" and (among is None or task_id in among):
            failed.append(task_id if index < 0 else f"{task_id}[{index}]")
    return sorted(failed)


def notes_kube(rp: ResolvedParams) -> cluster.Kube | None:
    """Where a task keeps what must survive its retries (the run's lock, `run_notes`);
    None: a run without a lock (a dry run)."""
    if not rp.lock_holder:
        return None
    return cluster.connect(kube_target(rp.params.kubernetes_conn_id))


class RolloutSensor(BaseOperator):
    """Waits until the given workloads have rolled out; fails fast on a progress deadline.

    Subclasses restart the workloads first (`start`) and verify them after (`verify`), so a
    restart, its wait and its verification are one task: one worker start before the wait
    and one after it, instead of three tasks in a row.
    """

    template_fields: tuple[str, ...] = ("workloads", "resolved")
    ui_color = "#e6f1f2"

    def __init__(
        self, *, resolved: Any, workloads: Any = None, poll_seconds: float = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.workloads = workloads
        self.resolved = resolved
        self.poll_seconds = poll_seconds

    def start(self, context: Context) -> list[WorkloadRef]:
        """The workloads to wait for (here: as given)."""
        return list(self.workloads or [])

    def verify(self, context: Context, message: str) -> Any:
        """The task's result once every workload rolled out (here: the rollout's message)."""
        return message

    def _arrived(self, context: Context, message: str) -> Any:
        self.log.info("rollout complete: %s", message)
        result = self.verify(context, message)
        record_timing(context)
        return result

    def waited_for(self, context: Context) -> str:
        """What the task waits for, to name in a failure."""
        return ", ".join(map(str, self.workloads))

    def execute(self, context: Context) -> Any:
        rp: ResolvedParams = self.resolved
        refs = self.start(context)
        kube = cluster.connect(kube_target(rp.params.kubernetes_conn_id))
        states = cluster.rollout_states(kube, refs)
        # Already done (a retry, a re-run, or nothing to restart): no need to defer at all.
        if all(s.complete for s in states):
            return self._arrived(context, f"{len(refs)} workloads rolled out")
        # The deadline counts from this run's restart, so a retry of this task does not
        # extend it (a restart before the run started belongs to another run).
        run_started = context["dag_run"].start_date
        run_start = run_started.timestamp() if run_started else time.time()
        ours = [t for t in cluster.restart_times(kube, refs) if t >= run_start - 1]
        began = min(ours, default=time.time())
        self.defer(
            trigger=RolloutTrigger(
                rp.params.kubernetes_conn_id,
                [r.to_json() for r in refs],
                deadline=began + rp.params.rollout_timeout_seconds,
                poll_seconds=self.poll_seconds,
                run_key=[context["ti"].dag_id, context["ti"].run_id],
            ),
            method_name="execute_complete",
        )
        raise AssertionError("defer() returned")  # pragma: no cover - defer always raises

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        if event["status"] != "success":
            raise RolloutFailed(
                self.waited_for(context),
                event["message"],
                "inspect the workloads (kubectl rollout status), fix and clear this task",
            )
        return self._arrived(context, str(event["message"]))


class GatewayUpgrade(RolloutSensor):
    """Restarts the gateways onto the target, waits for their rollout in the triggerer, then
    checks that every gateway pod runs the target (the result: the verification)."""

    template_fields = ("resolved",)

    def start(self, context: Context) -> list[WorkloadRef]:
        return tasks.restart_gateways(self.resolved, str(context["run_id"]))

    def waited_for(self, context: Context) -> str:
        return ", ".join(map(str, self.resolved.params.gateway_refs))

    def verify(self, context: Context, message: str) -> Any:
        return tasks.verify_gateways(self.resolved)


class CanaryUpgrade(RolloutSensor):
    """Restarts the canary namespaces, waits for their rollout in the triggerer, then checks
    every pod (the result: the verification, with the span the waves are estimated by).

    The restart's record is kept in the task's XCom `restart`, which a deferral keeps, so the
    span starts at the restart even when the check comes back in another process.
    """

    template_fields = ("resolved",)

    def start(self, context: Context) -> list[WorkloadRef]:
        restart = tasks.restart_canary(self.resolved, str(context["run_id"]))
        context["ti"].xcom_push("restart", restart)
        return list(restart.workloads)

    def waited_for(self, context: Context) -> str:
        return "the canary namespaces " + ", ".join(self.resolved.canary)

    def verify(self, context: Context, message: str) -> Any:
        ti = context["ti"]
        restart = ti.xcom_pull(task_ids=self.task_id, key="restart", map_indexes=ti.map_index)
        return tasks.verify_canary(self.resolved, restart)


class MetricGateSensor(BaseOperator):
    """Judges the canary namespaces by Prometheus over the bake time; returns the verdict.

    The verdict (passed or failed) is the result, not the task state: the branch after it
    chooses rollback or continue, and the run ends failed when it rolled back.
    """

    template_fields = ("resolved", "baseline")
    ui_color = "#fdf1e0"

    def __init__(self, *, resolved: Any, baseline: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.resolved = resolved
        self.baseline = baseline

    def execute(self, context: Context) -> Any:
        rp: ResolvedParams = self.resolved
        baseline: list[health.MetricCheck] = (
            (self.baseline or []) if rp.params.compare_baseline else []
        )
        self.log.info(
            "gate namespaces=%s bake=%ss interval=%ss failure_limit=%d",
            ",".join(rp.canary),
            rp.params.bake_seconds,
            rp.params.check_interval_seconds,
            rp.params.failure_limit,
        )
        kube = notes_kube(rp)
        saved = run_notes.saved_gate(kube, rp.lock_holder) if kube else None
        state = saved or health.GateState(started_at=time.time())
        if state.checks_done:
            # an earlier try of this task baked (Airflow failed or retried it): go on from
            # its counts rather than bake again from zero, so a retry never forgives a check
            self.log.info(
                "gate resumed from an earlier try: %d checks done, %d failed",
                state.checks_done,
                state.checks_failed,
            )
            found = health.verdict(state, time.time(), rp.params)
            if found is not health.HealthVerdict.PENDING:
                return self.execute_complete(context, health.gate_event(state, found, rp.params))
        elif rp.params.bake_seconds == 0:
            # No bake time: the first check may decide at once, and a deferral round trip
            # costs more than the check. If it does not decide, the trigger goes on from it.
            state, found = health.check_gate(
                rp.params.prometheus_url,
                list(rp.canary),
                rp.params,
                state,
                health.baseline_from(baseline),
            )
            if found is not health.HealthVerdict.PENDING:
                return self.execute_complete(context, health.gate_event(state, found, rp.params))
        if kube:
            run_notes.save_gate(kube, rp.lock_holder, state)
        self.defer(
            trigger=MetricGateTrigger(
                rp.params.prometheus_url,
                list(rp.canary),
                rp.params.to_json(),
                state.to_json(),
                [c.to_json() for c in baseline],
                conn_id=rp.params.kubernetes_conn_id,
                lock_holder=rp.lock_holder,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> health.GateResult:
        self.log.info("gate verdict=%s %s", event["status"], event["message"])
        rp: ResolvedParams = self.resolved
        if kube := notes_kube(rp):
            run_notes.forget_gate(kube, rp.lock_holder)
        record_timing(context)
        return health.GateResult.of_event(event)


class CanaryApproval(HITLOperator):
    """Asks a person whether the upgrade may go on after the canary passed its metric gate.

    Skipped (no one is asked) when require_approval is off or the gate failed. The question
    shows the canary's figures; the options are Approve and Reject; without an answer
    within approval_timeout_seconds the scheduler records approval_default. The answer is
    the result (an `approval.Answer`), not the task state: the `decide` branch weighs it with the
    gate's verdict, so Reject leads to the rollback instead of skipping everything after.
    On Airflow 3.3 the task waits in the awaiting_input state (no worker, no triggerer).
    A retry (Airflow may fail a try by itself, even after the person answered) first looks
    for an answer given to the earlier try and keeps it; it asks again only without one,
    and then only until the first question's deadline (kept on the run's lock).
    """

    template_fields = (*HITLOperator.template_fields, "resolved", "gate")
    ui_color = "#f4e8fd"

    def __init__(self, *, resolved: Any, gate: Any, **kwargs: Any) -> None:
        # subject, body, defaults and timeout come from the run's params at execute time
        super().__init__(
            subject="Approve the Istio canary?",
            options=list(approval.OPTIONS),
            defaults=approval.REJECT,
            **kwargs,
        )
        self.resolved = resolved
        self.gate = gate

    def execute(self, context: Context) -> Any:
        rp: ResolvedParams = self.resolved
        skip = approval.skip_reason(rp.params.require_approval, self.gate)
        if skip:
            raise AirflowSkipException(skip)
        kube = notes_kube(rp)
        if kube and run_notes.asked_until(kube, rp.lock_holder) is not None:
            # An earlier try asked and handed no answer over (Airflow failed or retried it,
            # maybe after the person answered): look for that answer before asking again.
            self.defer(
                trigger=EarlierAnswerTrigger(str(context["ti"].id)),
                method_name="execute_earlier_answer",
            )
        return self._ask(context, kube, None)

    def execute_earlier_answer(
        self, context: Context, event: dict[str, Any]
    ) -> approval.Answer | None:
        rp: ResolvedParams = self.resolved
        kube = notes_kube(rp)
        if event["received"]:
            answer = approval.answer_from(
                event["chosen_options"], event["responded_by_user"], timed_out=False
            )
            self.log.info("kept the answer given to an earlier try: %s", answer.message)
            return self._hand_over(kube, answer)
        deadline = run_notes.asked_until(kube, rp.lock_holder) if kube else None
        self.log.info("an earlier try asked and got no answer: asking again")
        return self._ask(context, kube, deadline)

    def _ask(
        self, context: Context, kube: cluster.Kube | None, deadline: float | None
    ) -> approval.Answer | None:
        """Ask (the task then awaits input), or take the default when `deadline` passed."""
        rp: ResolvedParams = self.resolved
        question = tasks.approval_question(rp, self.gate)
        now = time.time()
        deadline = deadline or now + question.timeout_seconds
        if deadline <= now:
            self.log.info("the question's deadline passed while Airflow retried the task")
            return self._hand_over(kube, approval.Answer(question.default, None, timed_out=True))
        if kube:
            run_notes.save_asked(kube, rp.lock_holder, deadline)
        self.subject = question.subject
        self.body = question.body
        self.defaults = [question.default]
        # a retry asks until the first try's deadline, not for the whole timeout again
        self.response_timeout = timedelta(seconds=max(1, round(deadline - now)))
        self.log.info(
            "asking for approval default=%s timeout=%ss",
            question.default,
            self.response_timeout.total_seconds(),
        )
        super().execute(context)
        return None  # not reached: the task awaits input, then resumes in execute_complete

    def execute_complete(self, context: Context, event: dict[str, Any]) -> approval.Answer:
        response: Mapping[str, Any] = super().execute_complete(context=context, event=event)
        answer = approval.answer_from(
            response["chosen_options"],
            response["responded_by_user"],
            timed_out=bool(event.get("timedout")),
        )
        self.log.info("approval option=%s by=%s", answer.option, answer.by or "nobody (timeout)")
        return self._hand_over(notes_kube(self.resolved), answer)

    def _hand_over(self, kube: cluster.Kube | None, answer: approval.Answer) -> approval.Answer:
        if kube:
            run_notes.forget_asked(kube, self.resolved.lock_holder)
        return answer


class NamespaceUpgrade(BaseOperator):
    """One namespace of the waves, mapped per namespace (the grid names each by it).

    On the worker it only hands the namespace to its trigger, which waits for the turn,
    restarts, waits for the rollout and verifies in the triggerer, then ends the task itself
    (moved: success; held back by the window or stopped by an earlier failure: skipped).
    `execute_complete` runs only when the namespace failed (to fail the task with the reason
    and its retry policy) and under `dag.test()`, which resumes every deferred task.
    """

    template_fields = ("item", "resolved", "canary")
    ui_color = "#e6f1f2"

    def __init__(
        self, *, item: Any, resolved: Any, canary: Any = None, poll_seconds: float = 2.0, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.item = item
        self.resolved = resolved
        self.canary = canary
        self.poll_seconds = poll_seconds

    def execute(self, context: Context) -> None:
        rp: ResolvedParams = self.resolved
        item: waves.WaveItem = self.item
        ti = context["ti"]
        canary = self.canary.span if self.canary else None
        self.defer(
            trigger=NamespaceUpgradeTrigger(
                conn_id=rp.params.kubernetes_conn_id,
                dag_id=ti.dag_id,
                run_id=ti.run_id,
                upgrade_task_id=ti.task_id,
                item=item.to_json(),
                target=rp.target_revision,
                stamp=restart_stamp(ti.run_id, rp.target_revision),
                skip=[g.to_json() for g in rp.params.gateway_refs],
                rollout_timeout_seconds=rp.params.rollout_timeout_seconds,
                window_end=datetime.fromisoformat(rp.window_end).timestamp()
                if rp.window_end
                else None,
                canary_seconds=canary.seconds if canary and canary.restarted else None,
                poll_seconds=self.poll_seconds,
                lock_holder=rp.lock_holder,
                lock_seconds=upgrade_lock.lease_seconds(rp.params),
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: Any) -> None:
        if isinstance(event, dict) and event.get("status") == "failed":
            raise RolloutFailed(
                f"namespace {self.item.namespace}",
                str(event.get("message")),
                "fix the cause (kubectl rollout status in that namespace), then clear this task "
                "and the not-started upgrade_namespace tasks after it",
            )
        # Only under dag.test(): a real triggerer ended the task without coming back here.
        outcome: waves.NamespaceOutcome = context["ti"].xcom_pull(
            task_ids=self.task_id, key="outcome", map_indexes=context["ti"].map_index
        )
        if outcome.state is not waves.State.MOVED:
            raise AirflowSkipException(outcome.reason)
