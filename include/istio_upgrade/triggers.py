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

import urllib3
from airflow.triggers.base import BaseTrigger, TriggerEvent
from kubernetes.client.exceptions import ApiException

from istio_upgrade import cluster, health
from istio_upgrade.model import WorkloadRef
from istio_upgrade.params import UpgradeParams


class RolloutTrigger(BaseTrigger):
    """Waits until every workload has rolled out (`kubectl rollout status` semantics)."""

    def __init__(
        self,
        target: dict[str, Any],
        workloads: list[dict[str, str]],
        deadline: float,
        poll_seconds: float = 2.0,
    ) -> None:
        super().__init__()
        self.target = target
        self.workloads = workloads
        self.deadline = deadline
        self.poll_seconds = poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "target": self.target,
                "workloads": self.workloads,
                "deadline": self.deadline,
                "poll_seconds": self.poll_seconds,
            },
        )

    def _poll(self) -> dict[str, Any] | None:
        kube = cluster.connect(cluster.KubeTarget.from_dict(self.target))
        refs = [WorkloadRef(**w) for w in self.workloads]
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
        while True:
            try:
                event = await asyncio.to_thread(self._poll)
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as err:
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
    if isinstance(err, ApiException):
        status = int(err.status or 0)
        return status == 0 or status == 429 or status >= 500
    return True


class MetricGateTrigger(BaseTrigger):
    """Checks the canary's metrics every interval over the bake time and yields the verdict."""

    def __init__(
        self,
        prometheus_url: str,
        namespaces: list[str],
        params: dict[str, Any],
        state: dict[str, Any],
        baseline: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.prometheus_url = prometheus_url
        self.namespaces = namespaces
        self.params = params
        self.state = state
        self.baseline = baseline or []

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "prometheus_url": self.prometheus_url,
                "namespaces": self.namespaces,
                "params": self.params,
                "state": self.state,
                "baseline": self.baseline,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        params = UpgradeParams.from_dict(self.params)
        state = health.GateState.from_dict(self.state)
        baseline = (
            health.baseline_from(health.MetricCheck.from_dict(c) for c in self.baseline) or None
        )
        while True:
            checks = await asyncio.to_thread(
                health.run_check, self.prometheus_url, self.namespaces, params, baseline
            )
            state, verdict = health.next_state(state, checks, time.time(), params)
            self.log.info(
                "gate check=%d failed=%d verdict=%s",
                state.checks_done,
                state.checks_failed,
                verdict,
            )
            if verdict is not health.HealthVerdict.PENDING:
                yield TriggerEvent(
                    {
                        "status": str(verdict),
                        "message": health.describe(state, verdict, params),
                        "state": state.to_dict(),
                    }
                )
                return
            await asyncio.sleep(params.check_interval_seconds)
