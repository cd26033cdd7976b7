"""Driving whole runs of the upgrade DAG in tests, and acting on them as a person would.

- `run_dag`: one `dag.test()` in the main thread (as Airflow requires), optionally with a
  helper thread that acts while it runs (answers an approval, waits for a timeout).
- `RestApi`: Airflow's own REST API (the FastAPI app `airflow api-server` serves), in
  process, logged in as the SimpleAuthManager admin through `POST /auth/token`. Answers to
  Human-in-the-loop tasks go through it, as the UI sends them.
- `sweep_awaiting_input_timeouts`: the scheduler's own timeout sweep for tasks waiting for
  input (dag.test() runs no scheduler, so a response timeout would never fire otherwise).

Airflow internals these helpers use, where no public API does it in process: that sweep, and
the metadata database's models (`states` reads the run's task instances, `fail_running_runs`
ends a run a failed test left waiting). What needs a scheduler beyond that (a cleared run
resumed, a scheduled run) runs under a real one in tests/standalone and tests/distributed.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandbox_fixture import Sandbox, wait_for
from xcom_values import plain

from istio_upgrade import cluster, progress
from istio_upgrade.model import WorkloadRef

DAG_ID = "istio_canary_upgrade"
APPS = ("foo", "bar", "baz", "qux")
MESH = (*APPS, "istio-ingress")


def fast_params(box: Sandbox, **overrides: Any) -> dict[str, Any]:
    """Params for a quick run: short bake time and windows, the sandbox's Prometheus."""
    return {
        "target_revision": box.new_revision,
        "prometheus_url": box.prometheus_url,
        "bake_seconds": 6,
        "check_interval_seconds": 2,
        "failure_limit": 2,
        "metric_window": "10s",
        "rollout_timeout_seconds": 120,
        "wave_concurrency": 2,
        **overrides,
    }


def load_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder="dags").dags[DAG_ID]


@contextlib.contextmanager
def map_order() -> Iterator[None]:
    """Make dag.test() run the mapped task instances it scheduled in map-index order.

    dag.test() runs what it scheduled one at a time, iterating a set of task instances (hash
    order: their memory addresses), and runs a deferred task's trigger to its end before the
    next task. A namespace of a later wave waits in its trigger for the waves before it (map
    indexes below its own), which a real scheduler and triggerer run side by side; here the
    earlier ones must simply go first. Hashing task instances by map index makes the set
    iterate in that order (small ints fill the slots of their own value). Private to
    dag.test()'s loop: the only patch of Airflow in the tests, undone after the run.
    """
    from airflow.models.taskinstance import TaskInstance

    original = TaskInstance.__hash__
    TaskInstance.__hash__ = lambda self: self.map_index + 2  # type: ignore[method-assign]
    try:
        yield
    finally:
        TaskInstance.__hash__ = original  # type: ignore[method-assign]


# When the latest run_dag() began: runs older than this (a killed test's) are not ours.
_run_started_after = datetime.min.replace(tzinfo=UTC)


def run_dag(
    conf: dict[str, Any],
    while_running: Callable[[], None] | None = None,
    logical_date: datetime | None = None,
    prepare: Callable[[Any], None] | None = None,
) -> Any:
    """One dag.test() run; `while_running` runs in a helper thread meanwhile (its error is
    raised here once the run is over, so a failed answer fails the test). A `logical_date`
    gives the run the data interval the DAG's timetable infers for it. `prepare` may change
    the freshly loaded DAG object before the run (dag.test() serializes and runs that one)."""
    global _run_started_after
    errors: list[BaseException] = []
    finished = threading.Event()

    def helper() -> None:
        try:
            assert while_running is not None
            while_running()
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            errors.append(error)
            # dag.test() would wait for an answer forever: end the run so the test fails now
            while not finished.wait(1):
                fail_running_runs()

    dag = load_dag()
    if prepare:
        prepare(dag)
    _import_what_helpers_use()  # imports racing between two threads can deadlock
    _run_started_after = datetime.now(UTC)  # wait_for_task looks at this run only
    thread = threading.Thread(target=helper, daemon=True) if while_running else None
    if thread:
        thread.start()
    try:
        with map_order():
            dr = (
                dag.test(run_conf=conf, logical_date=logical_date)
                if logical_date
                else dag.test(run_conf=conf)
            )
    finally:
        finished.set()
    if thread:
        thread.join(timeout=30)
    if errors:
        raise errors[0]
    return dr


def _import_what_helpers_use() -> None:
    import airflow.jobs.scheduler_job_runner
    import airflow.models
    import airflow.models.dagrun
    import airflow.utils.session  # noqa: F401


def fail_running_runs() -> None:
    """Fail every unfinished task of this DAG's running runs (an awaiting_input one too), so
    dag.test() finds nothing left to run or wait for and ends the run."""
    from airflow.models import TaskInstance
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, State, TaskInstanceState

    with create_session() as session:
        for dr in session.query(DagRun).filter_by(dag_id=DAG_ID, state=DagRunState.RUNNING):
            for ti in session.query(TaskInstance).filter_by(dag_id=DAG_ID, run_id=dr.run_id):
                if ti.state not in State.finished:
                    ti.state = TaskInstanceState.FAILED


def states(run_id: str) -> dict[str, str]:
    """task_id[map_index] -> state of every task instance of the run."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(dag_id=DAG_ID, run_id=run_id).all()
        return {
            (t.task_id if t.map_index < 0 else f"{t.task_id}[{t.map_index}]"): str(t.state)
            for t in tis
        }


def wait_for_task(task_id: str, state: str, timeout: float = 300) -> Any:
    """The task instance `task_id` in `state` in the run run_dag() is running (polling)."""
    from airflow.models import TaskInstance
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with create_session() as session:
            ti = (
                session.query(TaskInstance)
                .join(
                    DagRun,
                    (DagRun.dag_id == TaskInstance.dag_id) & (DagRun.run_id == TaskInstance.run_id),
                )
                .filter(
                    TaskInstance.dag_id == DAG_ID,
                    TaskInstance.task_id == task_id,
                    TaskInstance.state == state,
                    DagRun.state == DagRunState.RUNNING,
                    DagRun.start_date >= _run_started_after,
                )
                .first()
            )
            if ti is not None:
                session.expunge(ti)
                return ti
        time.sleep(0.5)
    raise AssertionError(f"task {task_id} did not reach {state} within {timeout}s")


def pod_uids(box: Sandbox, names: tuple[str, ...]) -> dict[str, set[str]]:
    return {
        ns.name: {p.uid for p in progress.live_pods(ns)}
        for ns in cluster.namespace_states(box.kube(), names)
    }


def revisions(box: Sandbox, names: tuple[str, ...] = MESH) -> dict[str, set[str | None]]:
    """Per namespace, the set of revisions its live pods run (one element: not half-moved)."""
    return {
        ns.name: {p.revision for p in progress.live_pods(ns) if p.owner is not None}
        for ns in cluster.namespace_states(box.kube(), names)
    }


@contextlib.contextmanager
def no_room_for_a_new_pod(box: Sandbox, namespace: str) -> Iterator[list[str]]:
    """A pod quota that fits the namespace's Deployments' pods but not one more, and a 3 s
    progress deadline on them: a restart's surge pod is refused, so the rollout never
    completes and the Deployment reports ProgressDeadlineExceeded soon. Yields their names."""
    kube = box.kube()
    listed = kube.apps.list_namespaced_deployment(namespace).items
    assert listed, f"no Deployment in {namespace}"
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "it-no-surge"},
        "spec": {"hard": {"pods": str(sum(d.spec.replicas for d in listed))}},
    }
    kube.core.create_namespaced_resource_quota(namespace, quota)
    names = [d.metadata.name for d in listed]
    try:
        for name in names:
            kube.apps.patch_namespaced_deployment(
                name, namespace, {"spec": {"progressDeadlineSeconds": 3}}
            )
        yield names
    finally:
        kube.core.delete_namespaced_resource_quota("it-no-surge", namespace)
        for name in names:
            kube.apps.patch_namespaced_deployment(
                name, namespace, {"spec": {"progressDeadlineSeconds": 600}}
            )
        # the refused rollout goes on once there is room: let it end before the next test
        refs = [WorkloadRef("Deployment", namespace, n) for n in names]
        wait_for(
            f"the Deployments of {namespace} to roll out",
            lambda: all(s.complete for s in cluster.rollout_states(kube, refs)),
            120,
        )


def assert_mesh_serves(box: Sandbox, names: tuple[str, ...] = MESH) -> None:
    """Every namespace has pods, each Ready and injected by a revision that is installed."""
    kube = box.kube()
    installed = {c.revision for c in cluster.control_planes(kube)}
    for ns in cluster.namespace_states(kube, names):
        pods = [p for p in progress.live_pods(ns) if p.owner is not None]
        assert pods, f"{ns.name}: no pod serves"
        strays = [f"{p.name} ({p.revision})" for p in pods if p.revision not in installed]
        assert not strays, f"{ns.name}: pods of a revision not installed ({installed}): {strays}"
        raw = kube.core.list_namespaced_pod(ns.name).items
        ready = {
            p.metadata.name
            for p in raw
            if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        }
        unready = [p.name for p in pods if p.name not in ready]
        assert not unready, f"{ns.name}: pods not Ready: {unready}"


def resource_versions(box: Sandbox) -> dict[str, str]:
    """Every object a run could touch (see Sandbox.resource_versions)."""
    return box.resource_versions()


class RestApi:
    """Airflow's public REST API in process (the app `airflow api-server` serves)."""

    def __init__(self) -> None:
        from airflow.api_fastapi.app import create_app
        from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import (
            SimpleAuthManager,
        )
        from fastapi.testclient import TestClient

        self.client = TestClient(create_app(apps="core"))
        # creating the app initialised the auth manager, which wrote the admin's password
        passwords = json.loads(Path(SimpleAuthManager.get_generated_password_file()).read_text())
        login = self.client.post(
            "/auth/token", json={"username": "admin", "password": passwords["admin"]}
        )
        login.raise_for_status()
        self.headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, f"/api/v2{path}", headers=self.headers, **kwargs)
        assert response.status_code < 300, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return response.json()

    def hitl_detail(self, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails"
        return dict(self._call("GET", path))

    def answer(self, run_id: str, task_id: str, option: str, map_index: int = -1) -> Any:
        """What the Required Actions page sends when a person clicks an option."""
        path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails"
        return self._call("PATCH", path, json={"chosen_options": [option], "params_input": {}})

    def xcom(
        self, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        """An XCom value as stored (typed values as their JSON), or None when the task
        pushed none under that key."""
        path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        response = self.client.get(
            f"/api/v2{path}", headers=self.headers, params={"map_index": map_index}
        )
        if response.status_code == 404:
            return None
        assert response.status_code == 200, f"GET {path}: {response.text}"
        return plain(response.json()["value"])

    def try_numbers(self, run_id: str) -> dict[str, int]:
        """task_id -> try number of the run's unmapped task instances."""
        path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances"
        tis = self._call("GET", path, params={"limit": 100})["task_instances"]
        return {t["task_id"]: int(t["try_number"]) for t in tis if t["map_index"] < 0}

    def set_variable(self, key: str, value: str) -> None:
        self.client.delete(f"/api/v2/variables/{key}", headers=self.headers)
        self._call("POST", "/variables", json={"key": key, "value": value})

    def delete_variable(self, key: str) -> None:
        response = self.client.delete(f"/api/v2/variables/{key}", headers=self.headers)
        assert response.status_code in (204, 404), response.text


def sweep_awaiting_input_timeouts() -> None:
    """One pass of the scheduler's sweep that applies a Human-in-the-loop task's defaults
    once its response timeout has passed (SchedulerJobRunner.check_awaiting_input_timeouts)."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    SchedulerJobRunner(job=Job()).check_awaiting_input_timeouts()
