"""The per-task failure table: every task of the DAG fails once, at its boundary.

Each row makes one task fail where it meets the outside world: the Kubernetes API refuses
its requests (403), istioctl exits 1, Prometheus gives no answer, a namespace's new pods are
refused (a quota); a task that calls none of these on its way fails as a dead worker would.
The run (`dag.test()`) must then end red, its report must name the task (when the report
could not run, `conclude` fails naming it), and the mesh must still serve: every namespace
has Ready pods injected by an installed revision, with the tag where the row says.

The injected failures are filtered by the task that makes the call, so the rest of the run
talks to the real sandbox. Retries are off in these runs: what is tested is where a failure
leads, not how often a task tries again (test_dag_integrity checks the retry policies, the
standalone tests a retried task).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pytest
from dag_runs import (
    APPS,
    MESH,
    RestApi,
    assert_mesh_serves,
    fast_params,
    load_dag,
    no_room_for_a_new_pod,
    revisions,
    run_dag,
    states,
)
from sandbox_fixture import Sandbox

from istio_upgrade import cluster, upgrade_lock
from istio_upgrade.errors import MetricsUnavailable
from istio_upgrade.istioctl import Istioctl, Result

pytestmark = pytest.mark.sandbox

INJECTED = "injected by the failure table"
CANARY = "bar"
WAVE_NAMESPACE = "qux"


class Boundary(StrEnum):
    API = "every Kubernetes API request of the task is refused (403)"
    ISTIOCTL = "every istioctl command of the task exits 1"
    PROMETHEUS = "every Prometheus query of the task has no answer"
    PODS = f"the new pods of namespace {WAVE_NAMESPACE} are refused (a full quota)"
    WORKER = "the task's try dies on the worker before it does anything"


class Tag(StrEnum):
    OLD = "old"  # the tag never moved, or was moved back
    TARGET = "target"


@dataclass(frozen=True)
class Row:
    task: str
    boundary: Boundary
    tag: Tag
    rolled_back: bool = False
    # what the report's reason names (default: the task); None: no report can (conclude does)
    named: str | None = ""
    also: dict[str, Boundary] = field(default_factory=dict)  # other faults of the same run
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def faults(self) -> dict[str, Boundary]:
        return {**self.also, self.task: self.boundary}


# A rollback row needs a rollback first: the canary's restart fails.
CANARY_FAILS = {"upgrade_canary": Boundary.API}

TABLE = (
    # before the tag moves: the run stops, nothing to undo
    Row("validate", Boundary.API, Tag.OLD, named=None),
    Row("show_plan", Boundary.API, Tag.OLD, named=None, params={"dry_run": True}),
    Row("precheck", Boundary.ISTIOCTL, Tag.OLD, named=None),
    Row("install_revision", Boundary.ISTIOCTL, Tag.OLD),
    Row("move_tag", Boundary.ISTIOCTL, Tag.OLD),
    # after the tag moved, before the decision: rolled back
    Row("measure_baseline", Boundary.WORKER, Tag.OLD, rolled_back=True),
    Row("upgrade_gateways", Boundary.API, Tag.OLD, rolled_back=True),
    Row("upgrade_canary", Boundary.API, Tag.OLD, rolled_back=True),
    Row(
        # Prometheus down is a failed check, not a failed task: the verdict rolls back
        "metric_gate",
        Boundary.PROMETHEUS,
        Tag.OLD,
        rolled_back=True,
        named="gate",
        params={"failure_limit": 1},
    ),
    Row(
        "approve_canary", Boundary.API, Tag.OLD, rolled_back=True, params={"require_approval": True}
    ),
    # the decision and after it: the canary proved the revision, the tag stays
    Row("decide", Boundary.WORKER, Tag.TARGET),
    Row("remaining_namespaces", Boundary.API, Tag.TARGET),
    Row("upgrade_namespace", Boundary.PODS, Tag.TARGET),
    Row("finish_waves", Boundary.API, Tag.TARGET),
    Row("remove_old_revision", Boundary.ISTIOCTL, Tag.TARGET),
    # the rollback itself fails: red, the mesh serves wherever it stopped
    Row("rollback.move_tag_back", Boundary.ISTIOCTL, Tag.TARGET, also=CANARY_FAILS),
    Row("rollback.restart_moved", Boundary.API, Tag.OLD, rolled_back=True, also=CANARY_FAILS),
    Row("rollback.wait_rolled_back", Boundary.API, Tag.OLD, rolled_back=True, also=CANARY_FAILS),
    Row("rollback.verify_rolled_back", Boundary.API, Tag.OLD, rolled_back=True, also=CANARY_FAILS),
    Row(
        "rollback.remove_new_revision",
        Boundary.ISTIOCTL,
        Tag.OLD,
        rolled_back=True,
        also=CANARY_FAILS,
        params={"remove_new_revision_on_rollback": True},
    ),
    # the end of the run
    Row("report", Boundary.API, Tag.TARGET, named=None),
    Row("conclude", Boundary.API, Tag.TARGET, named=None),
)


def test_the_table_has_a_row_for_every_task() -> None:
    assert sorted(r.task for r in TABLE) == sorted(load_dag().task_ids)


def current_task() -> str | None:
    """The task whose code is running here (None: a trigger, or the test itself)."""
    from airflow.sdk import get_current_context

    try:
        return str(get_current_context()["ti"].task_id)
    except Exception:  # noqa: BLE001 - no task context in this thread
        return None


@contextlib.contextmanager
def failing_at(
    monkeypatch: pytest.MonkeyPatch, box: Sandbox, faults: dict[str, Boundary]
) -> Iterator[None]:
    """Make each task of `faults` fail at its boundary while the block runs."""
    from kubernetes.client import ApiClient
    from kubernetes.client.exceptions import ApiException

    def hit(boundary: Boundary) -> bool:
        return faults.get(current_task() or "") is boundary

    call_api = ApiClient.call_api

    def refusing_call_api(self: Any, *args: Any, **kwargs: Any) -> Any:
        if hit(Boundary.API):
            raise ApiException(status=403, reason=f"Forbidden ({INJECTED})")
        return call_api(self, *args, **kwargs)

    run = Istioctl.run

    def failing_run(self: Istioctl, *args: str) -> Result:
        if hit(Boundary.ISTIOCTL):
            return Result(self.argv(*args), 1, "", f"Error: {INJECTED}")
        return run(self, *args)

    from istio_upgrade import health

    query = health.query_prometheus

    def silent_query(base_url: str, *args: Any, **kwargs: Any) -> list[float]:
        if hit(Boundary.PROMETHEUS):
            raise MetricsUnavailable(base_url, f"no answer: {INJECTED}")
        return query(base_url, *args, **kwargs)

    monkeypatch.setattr(ApiClient, "call_api", refusing_call_api)
    monkeypatch.setattr(Istioctl, "run", failing_run)
    monkeypatch.setattr(health, "query_prometheus", silent_query)
    with contextlib.ExitStack() as stack:
        if Boundary.PODS in faults.values():
            stack.enter_context(no_room_for_a_new_pod(box, WAVE_NAMESPACE))
        yield


def prepare(faults: dict[str, Boundary]) -> Any:
    def change(dag: Any) -> None:
        for task in dag.tasks:
            task.retries = 0

        def die(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError(f"the worker died ({INJECTED})")

        for task_id, boundary in faults.items():
            if boundary is Boundary.WORKER:
                dag.get_task(task_id).execute = die

    return change


@pytest.mark.parametrize("row", TABLE, ids=[r.task for r in TABLE])
def test_a_failure_of_any_task_ends_red_names_it_and_leaves_the_mesh_serving(
    seeded: Sandbox, rest_api: RestApi, monkeypatch: pytest.MonkeyPatch, row: Row
) -> None:
    box = seeded
    params = fast_params(box, bake_seconds=0, canary_namespaces=[CANARY], **row.params)
    with failing_at(monkeypatch, box, row.faults):
        dr = run_dag(params, prepare=prepare(row.faults))
    run = states(dr.run_id)
    assert str(dr.state) == "failed", run

    failed = {t.split("[")[0] for t, s in run.items() if s == "failed"}
    expected = {*row.also, "conclude"} | ({row.task} if row.task != "metric_gate" else set())
    if row.boundary is Boundary.PODS:
        expected.add("finish_waves")  # the waves' end names the namespace that failed
    assert failed == expected, run

    if row.named is None:
        # no report names it: the report could not run, or (conclude) ran before it
        assert run["report"] in ("skipped", "failed") or row.task == "conclude", run
    else:
        report = rest_api.xcom(dr.run_id, "report")
        assert (row.named or row.task) in report["reason"], report
        if row.rolled_back:
            assert report["phase"] == "rolled_back", report

    kube = box.kube()
    tag = cluster.tag_revision(kube, "default")
    assert tag == (box.old_revision if row.tag is Tag.OLD else box.new_revision), run
    rollback_ran = run["rollback.move_tag_back"] == "success"
    assert rollback_ran == row.rolled_back, run
    if row.rolled_back:
        assert revisions(box, APPS) == {n: {box.old_revision} for n in APPS}
    assert_mesh_serves(box, MESH)

    held = upgrade_lock.current(kube)
    if row.task == "conclude":
        # the end of the run could not give the cluster's lock back: it expires by itself
        assert held is not None and held.holder.endswith(dr.run_id), held
        upgrade_lock.release(kube, held.holder)
