"""Async triggers behind the deferrable sensors: rollouts and the metric gate.

They run in the triggerer, not on a worker, so waiting minutes for a rollout or a bake time
holds no worker slot. Arguments are plain JSON-safe data and `serialize()` returns exactly
them; each trigger yields one event `{"status": ..., "message": ...}`. Deadlines are absolute
epoch seconds so a triggerer restart does not extend them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TaskSkippedEvent, TaskSuccessEvent, TriggerEvent

from istio_upgrade import cluster, health, progress, run_notes, run_state, upgrade_lock, waves
from istio_upgrade.errors import UpgradeLocked
from istio_upgrade.model import WorkloadRef
from istio_upgrade.params import UpgradeParams

# One client per cluster and triggerer process: a thousand namespace triggers share it.
_clients: dict[str, cluster.Kube] = {}


def _kube_for(conn_id: str) -> cluster.Kube:
    if conn_id not in _clients:
        from istio_upgrade.connections import kube_target

        _clients[conn_id] = cluster.connect(kube_target(conn_id))
    return _clients[conn_id]


class RolloutTrigger(BaseTrigger):
    """Waits until every workload has rolled out (`kubectl rollout status` semantics).

    It carries the Airflow connection id, resolved in the triggerer (as the cncf.kubernetes
    provider's triggers do), not a worker's kubeconfig path: the triggerer may run elsewhere.
    `run_key` ([dag_id, run_id], optional) lets it warm the triggerer up for the waves while it
    waits (`run_state.warm_up`).
    """

    def __init__(
        self,
        conn_id: str,
        workloads: list[dict[str, str]],
        deadline: float,
        poll_seconds: float = 2.0,
        run_key: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.workloads = workloads
        self.deadline = deadline
        self.poll_seconds = poll_seconds
        self.run_key = run_key or []

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "workloads": self.workloads,
                "deadline": self.deadline,
                "poll_seconds": self.poll_seconds,
                "run_key": self.run_key,
            },
        )

    def _poll(self) -> dict[str, Any] | None:
        kube = _kube_for(self.conn_id)
        refs = [WorkloadRef.from_json(w) for w in self.workloads]
        states = cluster.rollout_states(kube, refs)
        failed = [s.message for s in states if s.failed]
        if failed:
            return {"status": "failed", "message": "; ".join(failed)}
        pending = [s.message for s in states if not s.complete]
        if not pending:
            return {"status": "success", "message": f"{len(states)} workloads rolled out"}
        if time.time() > self.deadline:
            return {
                "status": "timeout",
                "message": "rollout deadline passed: " + "; ".join(pending[:10]),
            }
        return None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        if self.run_key:
            run_state.warm_up(*self.run_key)
        while True:
            try:
                event = await asyncio.to_thread(self._poll)
            except cluster.api_errors() as err:
                # The rollout sensors do not retry (a retry would restart the deadline and
                # hide a stuck rollout), so a passing API error is waited out here instead,
                # until the same absolute deadline.
                if not _transient(err):
                    raise
                self.log.warning("rollout poll failed, polling again: %s", err)
                event = None
                if time.time() > self.deadline:
                    event = {"status": "timeout", "message": f"rollout deadline passed: {err}"}
            if event is not None:
                yield TriggerEvent(event)
                return
            await asyncio.sleep(self.poll_seconds)


def _transient(err: Exception) -> bool:
    """A connection problem, a timeout, 429 or a 5xx: worth polling again; 4xx is not."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(err, ApiException):
        status = int(err.status or 0)
        return status == 0 or status == 429 or status >= 500
    return True


RESUMED_AFTER_SECONDS = 10.0


class MetricGateTrigger(BaseTrigger):
    """Checks the canary's metrics every interval over the bake time and yields the verdict.

    Its arguments are fixed when the task defers, so the counters are also kept after each
    check as a note on the run's lock (`run_notes`, the cluster's Lease, not an XCom:
    Airflow clears those when it retries the task): a triggerer restart (which builds the
    trigger again from its arguments) and a retried task both resume the same bake with the
    checks already counted. Without `lock_holder` the counters live in memory only.
    """

    def __init__(
        self,
        prometheus_url: str,
        namespaces: list[str],
        params: dict[str, Any],
        state: dict[str, Any],
        baseline: list[dict[str, Any]] | None = None,
        conn_id: str = "",
        lock_holder: str = "",
    ) -> None:
        super().__init__()
        self.prometheus_url = prometheus_url
        self.namespaces = namespaces
        self.params = params
        self.state = state
        self.baseline = baseline or []
        self.conn_id = conn_id
        self.lock_holder = lock_holder

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "prometheus_url": self.prometheus_url,
                "namespaces": self.namespaces,
                "params": self.params,
                "state": self.state,
                "baseline": self.baseline,
                "conn_id": self.conn_id,
                "lock_holder": self.lock_holder,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        params = UpgradeParams.from_json(self.params)
        state = await self._saved_state(health.GateState.from_json(self.state))
        baseline = health.baseline_from(health.MetricCheck.from_json(c) for c in self.baseline)
        if state.checks_done:  # a check was just made (on the worker, or before a restart)
            await asyncio.sleep(params.check_interval_seconds)
        while True:
            state, verdict = await asyncio.to_thread(
                health.check_gate,
                self.prometheus_url,
                self.namespaces,
                params,
                state,
                baseline,
            )
            self.log.info(
                "gate check=%d failed=%d verdict=%s",
                state.checks_done,
                state.checks_failed,
                verdict,
            )
            if verdict is not health.HealthVerdict.PENDING:
                await self._save(state)  # a retry after this decides the same at once
                yield TriggerEvent(health.gate_event(state, verdict, params))
                return
            # kept while waiting for the next check, so the store never delays a verdict
            await asyncio.gather(self._save(state), asyncio.sleep(params.check_interval_seconds))

    async def _save(self, state: health.GateState) -> None:
        if self.lock_holder:
            kube = await asyncio.to_thread(_kube_for, self.conn_id)
            await asyncio.to_thread(run_notes.save_gate, kube, self.lock_holder, state)

    async def _saved_state(self, initial: health.GateState) -> health.GateState:
        """The counters this bake already has (from before a triggerer restart), if any.

        A trigger starts within seconds of its deferral; one that starts later may be the
        same trigger again after a triggerer died (its triggers are handed on only after
        the triggerer misses its heartbeats, 30 s by default), so only then is the store read.
        """
        if not self.lock_holder or time.time() - initial.started_at < RESUMED_AFTER_SECONDS:
            return initial
        kube = await asyncio.to_thread(_kube_for, self.conn_id)
        state = await asyncio.to_thread(run_notes.saved_gate, kube, self.lock_holder)
        if state is not None and state.started_at == initial.started_at:  # the same bake
            self.log.info("gate resumed: %d checks done", state.checks_done)
            return state
        return initial


class EarlierAnswerTrigger(BaseTrigger):
    """Reads the answer a person gave to an earlier try of the approval, if any.

    Airflow keeps a task instance's Human-in-the-loop row across retries, answer included,
    until the next try asks (which blanks the answer). Only the triggerer may read it in
    Airflow 3.3 (a worker's task runner has no such call), so a retried approval defers
    here once before it asks again. Yields `{"received": bool, "chosen_options": [...],
    "responded_by_user": {...} | None}`.
    """

    def __init__(self, ti_id: str) -> None:
        super().__init__()
        self.ti_id = ti_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {"ti_id": self.ti_id})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from uuid import UUID

        from airflow.sdk.execution_time.hitl import get_hitl_detail_content_detail
        from asgiref.sync import sync_to_async

        try:
            found = await sync_to_async(get_hitl_detail_content_detail)(ti_id=UUID(self.ti_id))
        except Exception as err:  # noqa: BLE001 - none to read (the earlier try never asked)
            self.log.warning("no earlier answer to read: %s", err)
            yield TriggerEvent({"received": False, "chosen_options": [], "responded_by_user": None})
            return
        by = found.responded_by_user
        yield TriggerEvent(
            {
                "received": bool(found.response_received),
                "chosen_options": list(found.chosen_options or []),
                "responded_by_user": None if by is None else {"id": by.id, "name": by.name},
            }
        )


class NamespaceUpgradeTrigger(BaseTrigger):
    """Moves one namespace of the waves: waits for its turn, restarts, waits, verifies.

    All of it runs in the triggerer, so a namespace costs no worker slot while it waits, and
    no worker at all when it moves or is held back: the trigger ends its task itself
    (TaskSuccessEvent, TaskSkippedEvent) after pushing the outcome (XCom `outcome`). A
    failure returns to the worker as a plain event, where the task fails with the reason
    and its retry policy (a finding is not retried). Restarting is one idempotent PATCH per
    workload (the stamp comes from the run), so a triggerer restart that runs the trigger
    again changes nothing that was done.
    """

    def __init__(
        self,
        *,
        conn_id: str,
        dag_id: str,
        run_id: str,
        upgrade_task_id: str,
        item: dict[str, Any],
        target: str,
        stamp: str,
        skip: list[dict[str, str]],
        rollout_timeout_seconds: float,
        window_end: float | None,
        canary_seconds: float | None,
        poll_seconds: float = 2.0,
        lock_holder: str = "",
        lock_seconds: int = 0,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.dag_id = dag_id
        self.run_id = run_id
        self.upgrade_task_id = upgrade_task_id
        self.item = item
        self.target = target
        self.stamp = stamp
        self.skip = skip
        self.rollout_timeout_seconds = rollout_timeout_seconds
        self.window_end = window_end
        self.canary_seconds = canary_seconds
        self.poll_seconds = poll_seconds
        self.lock_holder = lock_holder
        self.lock_seconds = lock_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "dag_id": self.dag_id,
                "run_id": self.run_id,
                "upgrade_task_id": self.upgrade_task_id,
                "item": self.item,
                "target": self.target,
                "stamp": self.stamp,
                "skip": self.skip,
                "rollout_timeout_seconds": self.rollout_timeout_seconds,
                "window_end": self.window_end,
                "canary_seconds": self.canary_seconds,
                "poll_seconds": self.poll_seconds,
                "lock_holder": self.lock_holder,
                "lock_seconds": self.lock_seconds,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        item = waves.WaveItem.from_json(self.item)
        decision = await self._await_turn(item)
        if decision.call is not waves.Call.START:
            state = (
                waves.State.HELD if decision.call is waves.Call.HOLD else waves.State.NOT_STARTED
            )
            await self._push(
                waves.NamespaceOutcome(
                    item.namespace,
                    item.wave,
                    state,
                    decision.reason,
                    longest_before=decision.longest_before,
                    failed=decision.failed,
                )
            )
            self.log.info("namespace=%s call=%s: %s", item.namespace, state, decision.reason)
            yield TaskSkippedEvent()
            return
        outcome = await self._move(item, decision)
        await self._push(outcome)
        self.log.info("namespace=%s outcome=%s: %s", item.namespace, outcome.state, outcome.reason)
        if outcome.state is waves.State.MOVED:
            yield TaskSuccessEvent()
        else:
            yield TriggerEvent({"status": "failed", "message": outcome.reason})

    async def _await_turn(self, item: waves.WaveItem) -> waves.Turn:
        since = time.monotonic()  # outcomes told from now on are of this try's wave before
        where = (self.dag_id, self.run_id, self.upgrade_task_id)
        while True:
            states: dict[int, str | None] = {}
            outcomes: dict[int, waves.NamespaceOutcome] = {}
            if item.wave > 0:
                states = await run_state.task_states(*where)
                outcomes = run_state.told_since(since, "outcome", *where, item.previous)
                if waves.previous_done(item, states, outcomes):
                    rest = [i for i in item.previous if i not in outcomes]
                    found = await run_state.xcoms("outcome", *where, rest)
                    outcomes |= found
            decision = waves.turn(
                item,
                states,
                outcomes,
                now=time.time(),
                window_end=self.window_end,
                canary_seconds=self.canary_seconds,
                fallback_seconds=self.rollout_timeout_seconds,
            )
            if decision.call is not waves.Call.WAIT:
                return decision
            self.log.debug("namespace=%s %s: %s", item.namespace, decision.reason, states)
            # Woken when the wave before has told its outcomes in this triggerer; else as
            # often as run_state refreshes the states (shared by every waiting namespace).
            await run_state.wait_told(
                since,
                "outcome",
                *where,
                item.previous,
                timeout=min(self.poll_seconds, run_state.TTL_SECONDS),
            )

    async def _move(self, item: waves.WaveItem, turn: waves.Turn) -> waves.NamespaceOutcome:
        """Restart what is off the target, wait for every rollout, verify every pod."""
        ns = item.namespace
        started = time.time()
        kube = await asyncio.to_thread(_kube_for, self.conn_id)
        if self.lock_holder and item.opens_wave:
            # No task starts while the waves run: each wave renews the run's hold on the cluster
            try:
                await asyncio.to_thread(
                    upgrade_lock.hold, kube, self.lock_holder, self.lock_seconds
                )
            except UpgradeLocked as locked:
                return waves.NamespaceOutcome(
                    ns,
                    item.wave,
                    waves.State.FAILED,
                    str(locked),
                    longest_before=turn.longest_before,
                )
        view = await asyncio.to_thread(cluster.namespace_view, kube, ns)
        skip = [WorkloadRef.from_json(w) for w in self.skip]
        todo = progress.workloads_to_restart(view.state, self.target, skip)
        restart = [w for w in todo if view.stamps.get(w) != self.stamp]
        for ref in restart:
            await asyncio.to_thread(cluster.stamp_restart, kube, ref, self.stamp)

        def outcome(state: waves.State, reason: str) -> waves.NamespaceOutcome:
            return waves.NamespaceOutcome(
                ns,
                item.wave,
                state,
                reason,
                started=started,
                finished=time.time(),
                restarted=len(restart),
                longest_before=turn.longest_before,
            )

        deadline = started + self.rollout_timeout_seconds
        kinds = {w.kind for w in view.state.workloads}
        while True:
            try:
                rollouts = await asyncio.to_thread(
                    cluster.workload_rollouts, kube, ns, kinds, started
                )
            except cluster.api_errors() as err:
                if not _transient(err) or time.time() > deadline:
                    return outcome(waves.State.FAILED, f"{ns}: rollout not readable: {err}")
                self.log.warning("rollout poll failed, polling again: %s", err)
                await asyncio.sleep(self.poll_seconds)
                continue
            failed = [s.message for s in rollouts.values() if s.failed]
            pending = [s.message for s in rollouts.values() if not s.complete]
            if failed:
                return outcome(waves.State.FAILED, "; ".join(failed))
            if not pending:
                break
            if time.time() > deadline:
                return outcome(
                    waves.State.FAILED,
                    f"rollout_timeout_seconds={self.rollout_timeout_seconds:.0f} passed: "
                    + "; ".join(pending[:10]),
                )
            await asyncio.sleep(self.poll_seconds)
        view = await asyncio.to_thread(cluster.namespace_view, kube, ns)
        wrong = progress.off_revision(view.state, self.target)
        if wrong:
            pods = ", ".join(f"{p.name} ({p.revision or 'no sidecar'})" for p in wrong[:10])
            return outcome(
                waves.State.FAILED,
                f"{ns}: pods not on revision {self.target} after the rollout: {pods}; check the "
                "injector webhook and the tag",
            )
        moved = f"restarted {len(restart)} workloads" if restart else "nothing to restart"
        return outcome(waves.State.MOVED, f"{ns}: every pod runs {self.target} ({moved})")

    async def _push(self, outcome: waves.NamespaceOutcome) -> None:
        await run_state.push_xcom(
            "outcome",
            outcome,
            self.dag_id,
            self.run_id,
            self.upgrade_task_id,
            waves.WaveItem.from_json(self.item).index,
        )
