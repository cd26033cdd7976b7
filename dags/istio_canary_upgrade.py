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
6. **metric gate**: success rate and p99 from Prometheus over the bake time;
7. **branch**: *continue* upgrades the remaining namespaces in waves (one mapped task
   group per namespace), then removes the old revision once nothing uses it; *rollback*
   moves the tag back, restarts what moved, verifies the old proxies and ends the run failed;
8. **report**: revisions per namespace before and after, timings and metric figures.

Every task is safe to clear and re-run: it compares the cluster with the goal and acts
only on the difference. `dry_run` prints the plan and changes nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import pendulum
from airflow.sdk import Param, TriggerRule, dag, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowSkipException

from istio_upgrade import tasks
from istio_upgrade.errors import NothingToDo
from istio_upgrade.operators import MetricGateSensor, RolloutSensor, record_timing
from istio_upgrade.params import PARAM_SPECS

T = TypeVar("T")

PARAMS = {
    name: Param(
        spec.default, type=spec.type, title=spec.title, description=spec.description, **spec.schema
    )
    for name, spec in PARAM_SPECS.items()
}

# API calls and istioctl retry; verifications do not, so a real failure is never retried away.
RETRY = {"retries": 2, "retry_delay": timedelta(seconds=15), "retry_exponential_backoff": True}
NO_RETRY = {"retries": 0}
WAIT = {"poke_interval": 5, "timeout": 3600, "mode": "reschedule"}


# The main steps whose durations the report lists, in order.
STEPS = (
    "validate",
    "precheck",
    "install_revision",
    "wait_control_plane",
    "move_tag",
    "restart_gateways",
    "wait_gateways",
    "verify_gateways",
    "restart_canary",
    "wait_canary",
    "verify_canary",
    "metric_gate",
    "remaining_namespaces",
    "check_old_unused",
    "uninstall_old",
    "wait_old_removed",
    "rollback.move_tag_back",
    "rollback.restart_moved",
    "rollback.wait_rolled_back",
    "rollback.verify_rolled_back",
)


def timed(fn: Callable[..., T]) -> Callable[..., T]:
    """Record the task's duration for the report (wraps the function before @task)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        out = fn(*args, **kwargs)
        if out is not False or not fn.__name__.startswith("wait"):  # a poke that waits on
            record_timing(get_current_context())
        return out

    return wrapper


def _run_id() -> str:
    return str(get_current_context()["run_id"])


def _name_map_index(namespace: str) -> None:
    # map_index_template reads this, so the UI lists mapped instances by namespace.
    get_current_context()["namespace"] = namespace  # type: ignore[typeddict-unknown-key]


@dag(
    dag_id="istio_canary_upgrade",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    doc_md=__doc__,
    tags=["istio", "upgrade", "canary"],
    default_args=RETRY,
)
def istio_canary_upgrade() -> None:
    @task(**NO_RETRY)
    @timed
    def validate() -> dict[str, Any]:
        try:
            return tasks.validate(dict(get_current_context()["params"]))
        except NothingToDo as done:
            # A scheduled run after the upgrade finished: skip cleanly, do not fail.
            raise AirflowSkipException(str(done)) from done

    @task.branch(**NO_RETRY)
    def choose_mode(resolved: dict[str, Any]) -> str:
        return "show_plan" if resolved["params"]["dry_run"] else "precheck"

    @task(**NO_RETRY)
    def show_plan(resolved: dict[str, Any]) -> str:
        return tasks.show_plan(resolved)

    @task
    @timed
    def precheck(resolved: dict[str, Any]) -> dict[str, Any]:
        return tasks.precheck(resolved)

    @task
    @timed
    def install_revision(resolved: dict[str, Any]) -> bool:
        return tasks.install(resolved)

    @task.sensor(**WAIT)
    @timed
    def wait_control_plane(resolved: dict[str, Any]) -> bool:
        return tasks.control_plane_ready(resolved)

    @task
    @timed
    def move_tag(resolved: dict[str, Any]) -> bool:
        return tasks.move_tag(resolved)

    @task
    @timed
    def restart_gateways(resolved: dict[str, Any]) -> list[dict[str, str]]:
        return tasks.restart_gateways(resolved, _run_id())

    @task(**NO_RETRY)
    @timed
    def verify_gateways(resolved: dict[str, Any]) -> dict[str, Any]:
        return tasks.verify_gateways(resolved)

    @task
    def measure_baseline(resolved: dict[str, Any]) -> list[dict[str, Any]]:
        return tasks.measure_baseline(resolved)

    @task
    @timed
    def restart_canary(resolved: dict[str, Any]) -> list[dict[str, str]]:
        return tasks.restart_namespaces(resolved, _run_id())

    @task(**NO_RETRY)
    @timed
    def verify_canary(resolved: dict[str, Any]) -> dict[str, Any]:
        return tasks.verify_namespaces(resolved)

    @task.branch(**NO_RETRY)
    def decide(gate: dict[str, Any]) -> str:
        return "remaining_namespaces" if tasks.decide(gate) else "rollback.move_tag_back"

    @task
    @timed
    def remaining_namespaces(resolved: dict[str, Any]) -> list[dict[str, Any]]:
        return tasks.remaining_waves(resolved)

    @task_group
    def upgrade_namespace(item: dict[str, Any], resolved: dict[str, Any]) -> None:
        @task.sensor(map_index_template="{{ namespace }}", **WAIT)
        def wait_turn(item: dict[str, Any], resolved: dict[str, Any]) -> bool:
            _name_map_index(item["namespace"])
            return tasks.turn_reached(resolved, item)

        @task(map_index_template="{{ namespace }}")
        def restart(item: dict[str, Any], resolved: dict[str, Any]) -> list[dict[str, str]]:
            _name_map_index(item["namespace"])
            return tasks.restart_namespaces(resolved, _run_id(), [item["namespace"]])

        @task(map_index_template="{{ namespace }}", **NO_RETRY)
        def verify(item: dict[str, Any], resolved: dict[str, Any]) -> dict[str, Any]:
            _name_map_index(item["namespace"])
            return tasks.verify_namespaces(resolved, [item["namespace"]])

        restarted = restart(item, resolved)
        waited = RolloutSensor(
            task_id="wait_rollout",
            workloads=restarted,
            resolved=resolved,
            map_index_template="{{ task.workloads[0]['namespace'] if task.workloads else '' }}",
        )
        wait_turn(item, resolved) >> restarted >> waited >> verify(item, resolved)

    @task(**NO_RETRY)
    @timed
    def check_old_unused(resolved: dict[str, Any]) -> str:
        return tasks.check_old_unused(resolved)

    @task
    @timed
    def uninstall_old(resolved: dict[str, Any]) -> bool:
        return tasks.uninstall_old(resolved)

    @task.sensor(**WAIT)
    @timed
    def wait_old_removed(resolved: dict[str, Any]) -> bool:
        return tasks.old_removed(resolved)

    @task_group
    def rollback(resolved: dict[str, Any]) -> None:
        @task
        @timed
        def move_tag_back(resolved: dict[str, Any]) -> bool:
            return tasks.move_tag(resolved, to_current=True)

        @task
        @timed
        def restart_moved(resolved: dict[str, Any]) -> list[dict[str, str]]:
            return tasks.restart_moved_back(resolved, _run_id())

        @task(**NO_RETRY)
        @timed
        def verify_rolled_back(resolved: dict[str, Any]) -> dict[str, Any]:
            return tasks.verify_rolled_back(resolved)

        @task
        def remove_new_revision(resolved: dict[str, Any]) -> str:
            return tasks.remove_new_revision(resolved)

        moved = restart_moved(resolved)
        move_tag_back(resolved) >> moved
        waited = RolloutSensor(task_id="wait_rolled_back", workloads=moved, resolved=resolved)
        waited >> verify_rolled_back(resolved) >> remove_new_revision(resolved)

    @task(trigger_rule=TriggerRule.ALL_DONE, **NO_RETRY)
    def report(
        resolved: dict[str, Any] | None, pre: dict[str, Any] | None, gate: dict[str, Any] | None
    ) -> dict[str, Any]:
        # ALL_DONE: a run that failed half-way still reports where the mesh stands.
        if resolved is None or pre is None:
            raise AirflowSkipException("nothing ran against the cluster (dry run or bad params)")
        ti = get_current_context()["ti"]
        timings = {
            tid: t["seconds"] for tid in STEPS if (t := ti.xcom_pull(task_ids=tid, key="timing"))
        }
        return tasks.final_report(resolved, pre, gate, timings)

    @task(**NO_RETRY)
    def conclude(result: dict[str, Any]) -> str:
        return tasks.conclude(result)

    resolved = validate()
    mode = choose_mode(resolved)
    pre = precheck(resolved)
    mode >> [show_plan(resolved), pre]

    gateways = restart_gateways(resolved)
    gateways_done = RolloutSensor(task_id="wait_gateways", workloads=gateways, resolved=resolved)
    baseline = measure_baseline(resolved)
    canary = restart_canary(resolved)
    canary_done = RolloutSensor(task_id="wait_canary", workloads=canary, resolved=resolved)
    gate = MetricGateSensor(task_id="metric_gate", resolved=resolved, baseline=baseline)
    (
        pre
        >> install_revision(resolved)
        >> wait_control_plane(resolved)
        >> move_tag(resolved)
        >> gateways
        >> gateways_done
        >> verify_gateways(resolved)
        >> baseline
        >> canary
        >> canary_done
        >> verify_canary(resolved)
        >> gate
    )
    branch = decide(gate.output)

    remaining = remaining_namespaces(resolved)
    upgraded = upgrade_namespace.partial(resolved=resolved).expand(item=remaining)
    removed = wait_old_removed(resolved)
    branch >> remaining
    upgraded >> check_old_unused(resolved) >> uninstall_old(resolved) >> removed

    rolled_back = rollback(resolved)
    branch >> rolled_back

    result = report(resolved, pre, gate.output)
    [removed, rolled_back] >> result
    conclude(result)


istio_canary_upgrade()
