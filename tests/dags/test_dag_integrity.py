"""The DAG file imports cleanly, serializes, and follows the house rules."""

from __future__ import annotations

import itertools
import typing

import pytest

DAG_ID = "istio_canary_upgrade"


@pytest.fixture(scope="module")
def dagbag():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder="dags")


def test_no_import_errors(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}, f"DAG import errors: {dagbag.import_errors}"


def test_dag_serializes(dagbag) -> None:  # type: ignore[no-untyped-def]
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dagbag.dags[DAG_ID]
    data = DagSerialization.serialize_dag(dag)
    assert DagSerialization.deserialize_dag(data).dag_id == DAG_ID


@pytest.mark.parametrize(
    ("rule", "holds"),
    [
        pytest.param("one run at a time", lambda d: d.max_active_runs == 1, id="max-active-runs"),
        pytest.param("no catchup", lambda d: d.catchup is False, id="no-catchup"),
        pytest.param("documented", lambda d: bool(d.doc_md), id="doc-md"),
        pytest.param("tagged", lambda d: "istio" in d.tags, id="tags"),
        pytest.param(
            # a rescheduled poke can meet Airflow's stale-state race (apache/airflow#71172)
            "no task waits in reschedule mode",
            lambda d: all(getattr(t, "mode", None) != "reschedule" for t in d.tasks),
            id="no-reschedule",
        ),
        pytest.param(
            # a dict return value would also be stored once per key, the whole value twice
            "no task pushes one XCom per key",
            lambda d: not any(getattr(t, "multiple_outputs", False) for t in d.tasks),
            id="one-xcom-per-result",
        ),
        pytest.param(
            "every param described",
            lambda d: all(d.params.get_param(k).description for k in d.params),
            id="params",
        ),
    ],
)
def test_dag_policy(dagbag, rule: str, holds) -> None:  # type: ignore[no-untyped-def]
    assert holds(dagbag.dags[DAG_ID]), f"DAG {DAG_ID} breaks the rule: {rule}"


def test_no_task_passes_an_untyped_dict(dagbag) -> None:  # type: ignore[no-untyped-def]
    """What a task takes or returns is a typed contract (istio_upgrade.contracts), not a
    `dict[str, Any]` read by key in another module."""
    untyped = []
    for task in dagbag.dags[DAG_ID].tasks:
        fn = getattr(task, "python_callable", None)
        if fn is None:
            continue
        for name, hint in typing.get_type_hints(fn).items():
            parts = [hint, *typing.get_args(hint)]  # X | None: look at X
            if any(typing.get_origin(p) is dict or p is dict for p in parts):
                untyped.append(f"{task.task_id}: {name}")
    assert untyped == []


def test_main_flow_reads_like_the_procedure(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags[DAG_ID]
    order = [
        "validate",
        "precheck",
        "install_revision",
        "move_tag",
        "upgrade_gateways",
        "upgrade_canary",
        "metric_gate",
        "approve_canary",
        "decide",
    ]
    for before, after in itertools.pairwise(order):
        assert before in dag.get_task(after).get_flat_relative_ids(upstream=True), (
            f"{before} must run before {after}"
        )
    # the canary's own figures are taken before anything in the data plane changes
    baseline_after = dag.get_task("measure_baseline").get_flat_relative_ids(upstream=True)
    assert "move_tag" not in baseline_after and "install_revision" not in baseline_after
    assert "measure_baseline" in dag.get_task("upgrade_canary").upstream_task_ids
    branches = dag.get_task("decide").downstream_task_ids
    assert branches == {"remaining_namespaces", "rollback.move_tag_back"}
    after = ["upgrade_namespace", "finish_waves", "remove_old_revision", "report", "conclude"]
    for before, later in itertools.pairwise(after):
        assert before in dag.get_task(later).upstream_task_ids, f"{before} must run before {later}"


def load(monkeypatch: pytest.MonkeyPatch, **environ: str):  # type: ignore[no-untyped-def]
    """The DAG as parsed with these deployment settings in the environment."""
    from airflow.dag_processing.dagbag import DagBag

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return DagBag(dag_folder="dags")


def test_without_windows_there_is_no_schedule(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.dags[DAG_ID].schedule is None


def test_windows_become_the_schedule_and_serialize(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    bag = load(monkeypatch, ISTIO_UPGRADE_WINDOWS="Tue,Thu 02:00-04:00 Asia/Tokyo")
    assert bag.import_errors == {}
    dag = bag.dags[DAG_ID]
    assert type(dag.timetable).__name__ == "MaintenanceWindowTimetable"
    restored = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    assert restored.timetable.summary == "Tue,Thu 02:00-04:00 Asia/Tokyo"


def test_a_bad_window_is_an_import_error_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bag = load(monkeypatch, ISTIO_UPGRADE_WINDOWS="Tue 02:00-04:00")
    (error,) = bag.import_errors.values()
    assert "ISTIO_UPGRADE_WINDOWS" in error and "IANA time zone" in error


def test_deployment_defaults_become_the_form_and_scheduled_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bag = load(
        monkeypatch,
        ISTIO_UPGRADE_PARAM_DEFAULTS='{"bake_seconds": 45, "prometheus_url": "http://prom:9090"}',
    )
    assert bag.import_errors == {}
    params = bag.dags[DAG_ID].params
    assert (params["bake_seconds"], params["prometheus_url"]) == (45, "http://prom:9090")
    assert params.get_param("bake_seconds").schema["minimum"] == 0  # the schema stays
    assert params["check_interval_seconds"] == 30  # the DAG's own default


@pytest.mark.parametrize(
    ("defaults", "named"),
    [
        pytest.param('{"bake": 45}', "bake, not params of the DAG", id="unknown-name"),
        pytest.param("bake_seconds=45", "is not JSON", id="not-json"),
        pytest.param('{"bake_seconds": -1}', "bake_seconds", id="value-outside-its-schema"),
    ],
)
def test_bad_deployment_defaults_are_an_import_error_naming_them(
    monkeypatch: pytest.MonkeyPatch, defaults: str, named: str
) -> None:
    bag = load(monkeypatch, ISTIO_UPGRADE_PARAM_DEFAULTS=defaults)
    (error,) = bag.import_errors.values()
    assert named in error, error


# Retries by what a task does. Verdicts: what they find fails at once (a retry would hide
# it), anything else (an API hiccup, Airflow failing the try spuriously) gets one more try;
# the approval two (Airflow's race may strike when it asks and again when it is answered).
VERDICT_RETRIES = {"approve_canary": 2}
VERDICTS = (
    "precheck",
    "upgrade_gateways",
    "upgrade_canary",
    "metric_gate",
    "approve_canary",
    "decide",
    "rollback.wait_rolled_back",
    "rollback.verify_rolled_back",
    "conclude",
)
ISTIOCTL = ("install_revision", "move_tag", "remove_old_revision", "rollback.move_tag_back")


def test_retries_follow_what_a_task_does(dagbag) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk import RetryAction

    from istio_upgrade.errors import ClusterStateError, RolloutFailed

    finding = RolloutFailed("Deployment/foo/foo", "ProgressDeadlineExceeded", "fix it")
    for task in dagbag.dags[DAG_ID].tasks:
        assert task.retry_policy is not None, f"{task.task_id}: no retry policy"
        act = task.retry_policy.evaluate
        assert act(finding, 1, 2).action is RetryAction.FAIL, task.task_id
        assert act(OSError("connection reset"), 1, 2).action is not RetryAction.FAIL, task.task_id
        if task.task_id in VERDICTS:
            retries = VERDICT_RETRIES.get(task.task_id, 1)
            assert task.retries == retries, f"{task.task_id} is a verdict: {retries} retries"
            verdict = ClusterStateError("pods", ["foo/a"], "on 1-32-0", "check the tag")
            assert act(verdict, 1, 2).action is RetryAction.FAIL, task.task_id
        else:
            assert task.retries >= 2, f"{task.task_id} calls an API or istioctl: retry it"
            assert task.retry_exponential_backoff == 2.0, task.task_id
        if task.task_id in ISTIOCTL:
            assert task.retry_delay.total_seconds() == 30, task.task_id


# Deferring tasks wait in the triggerer, where execution_timeout would count too: their
# triggers carry the deadlines (rollout, bake, approval; a namespace waits for earlier waves).
DEFERRING = (
    "upgrade_gateways",
    "upgrade_canary",
    "metric_gate",
    "approve_canary",
    "upgrade_namespace",
    "rollback.wait_rolled_back",
)


def test_every_task_on_a_worker_has_a_time_limit(dagbag) -> None:  # type: ignore[no-untyped-def]
    for task in dagbag.dags[DAG_ID].tasks:
        if task.task_id in DEFERRING:
            assert task.execution_timeout is None, task.task_id
        else:
            assert task.execution_timeout is not None, f"{task.task_id} could hang a worker"


# Tasks that change the mesh. A task that runs whatever happened before it (ALL_DONE: the
# decision, the waves' end, the report, the end of the run) must not start while one of
# these may still be running or start later: the decision would miss a tag that moves after
# it, the end of the run would release the cluster's lock while a restart goes on.
CHANGES_THE_MESH = (
    "install_revision",
    "move_tag",
    "upgrade_gateways",
    "upgrade_canary",
    "upgrade_namespace",
    "remove_old_revision",
    "rollback.move_tag_back",
    "rollback.restart_moved",
    "rollback.remove_new_revision",
)


def settled_before(dag, done: str, step: str) -> bool:  # type: ignore[no-untyped-def]
    """Whether `step` has ended (or can no longer start) whenever task `done` has ended.

    An ALL_SUCCESS task ends (upstream_failed) as soon as any one upstream fails, so it
    settles `step` only if every upstream does or is an ancestor of `step` (whose failure
    means `step` never starts); an ALL_DONE task ends when all upstreams have, so one that
    settles `step` is enough.
    """
    if done == step:
        return True
    task = dag.get_task(done)
    ups = task.upstream_task_ids
    settles = [u for u in ups if settled_before(dag, u, step)]
    if task.trigger_rule == "all_done":
        return bool(settles)
    ancestors = dag.get_task(step).get_flat_relative_ids(upstream=True)
    return bool(settles) and all(u in settles or u in ancestors for u in ups)


@pytest.mark.parametrize("task_id", ["decide", "finish_waves", "report", "conclude"])
def test_a_task_that_runs_after_failures_waits_for_every_change_before_it(  # type: ignore[no-untyped-def]
    dagbag, task_id: str
) -> None:
    dag = dagbag.dags[DAG_ID]
    assert dag.get_task(task_id).trigger_rule == "all_done"
    before = dag.get_task(task_id).get_flat_relative_ids(upstream=True)
    unsettled = [s for s in CHANGES_THE_MESH if s in before and not settled_before(dag, task_id, s)]
    assert not unsettled, f"{task_id} can start while these may still run: {unsettled}"
