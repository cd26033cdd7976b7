"""Deferrable sensors: they check once on the worker, then hand the waiting to a trigger.

Deferral needs class-based operators; the checking itself lives in `cluster`, `health` and
`triggers`, so these classes only decide when to defer and what a trigger event means.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import BaseOperator, Context

from istio_upgrade import cluster, health
from istio_upgrade.connections import kube_target
from istio_upgrade.errors import RolloutFailed
from istio_upgrade.model import WorkloadRef
from istio_upgrade.params import ResolvedParams
from istio_upgrade.triggers import MetricGateTrigger, RolloutTrigger


def record_timing(context: Context) -> None:
    """Push how long this task took, from its first try (a rescheduled or deferred task
    restarts its clock otherwise); the report reads these as XCom `timing`."""
    ti = context["ti"]
    first = ti.get_first_reschedule_date(context) or ti.start_date
    seconds = (datetime.now(UTC) - first).total_seconds() if first else 0.0
    ti.xcom_push("timing", {"seconds": round(seconds, 1)})


class RolloutSensor(BaseOperator):
    """Waits until the given workloads have rolled out; fails fast on a progress deadline."""

    template_fields = ("workloads", "resolved")
    ui_color = "#e6f1f2"

    def __init__(
        self, *, workloads: Any, resolved: Any, poll_seconds: float = 2.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.workloads = workloads
        self.resolved = resolved
        self.poll_seconds = poll_seconds

    def execute(self, context: Context) -> str:
        rp = ResolvedParams.from_dict(self.resolved)
        target = kube_target(rp.params.kubernetes_conn_id)
        refs = [WorkloadRef(**w) for w in self.workloads or []]
        states = cluster.rollout_states(cluster.connect(target), refs)
        # Already done (a retry, a re-run, or nothing to restart): no need to defer at all.
        if all(s.complete for s in states):
            record_timing(context)
            return f"{len(refs)} workloads rolled out"
        self.defer(
            trigger=RolloutTrigger(
                target.to_dict(),
                [r.__dict__ for r in refs],
                deadline=time.time() + rp.params.rollout_timeout_seconds,
                poll_seconds=self.poll_seconds,
            ),
            method_name="execute_complete",
        )
        raise AssertionError("defer() returned")  # pragma: no cover - defer always raises

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str:
        if event["status"] != "success":
            raise RolloutFailed(
                ", ".join(f"{w['kind']}/{w['namespace']}/{w['name']}" for w in self.workloads),
                event["message"],
                "inspect the workloads (kubectl rollout status), fix and clear this task",
            )
        self.log.info("rollout complete: %s", event["message"])
        record_timing(context)
        return str(event["message"])


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

    def execute(self, context: Context) -> None:
        rp = ResolvedParams.from_dict(self.resolved)
        baseline = self.baseline if rp.params.compare_baseline else None
        self.log.info(
            "gate namespaces=%s bake=%ss interval=%ss failure_limit=%d",
            ",".join(rp.canary),
            rp.params.bake_seconds,
            rp.params.check_interval_seconds,
            rp.params.failure_limit,
        )
        self.defer(
            trigger=MetricGateTrigger(
                rp.params.prometheus_url,
                list(rp.canary),
                rp.params.to_dict(),
                health.GateState(started_at=time.time()).to_dict(),
                baseline,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        self.log.info("gate verdict=%s %s", event["status"], event["message"])
        record_timing(context)
        return {
            "verdict": event["status"],
            "message": event["message"],
            "checks": event["state"]["last"],
            "checks_done": event["state"]["checks_done"],
            "checks_failed": event["state"]["checks_failed"],
        }
