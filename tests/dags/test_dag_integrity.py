"""The DAG file imports cleanly, serializes, and follows the house rules."""

from __future__ import annotations

import itertools

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
            "every param described",
            lambda d: all(d.params.get_param(k).description for k in d.params),
            id="params",
        ),
    ],
)
def test_dag_policy(dagbag, rule: str, holds) -> None:  # type: ignore[no-untyped-def]
    assert holds(dagbag.dags[DAG_ID]), f"DAG {DAG_ID} breaks the rule: {rule}"


def test_main_flow_reads_like_the_procedure(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags[DAG_ID]
    order = [
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
        "decide",
    ]
    for before, after in itertools.pairwise(order):
        assert before in dag.get_task(after).get_flat_relative_ids(upstream=True), (
            f"{before} must run before {after}"
        )
    branches = dag.get_task("decide").downstream_task_ids
    assert branches == {"remaining_namespaces", "rollback.move_tag_back"}
