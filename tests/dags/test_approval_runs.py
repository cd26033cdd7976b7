"""Human approval after the metric gate: Approve continues, Reject rolls back, silence counts
as the configured default.

dag.test() parks the approval task in awaiting_input and waits. A helper thread answers the
way a person does, through Airflow's REST API (`PATCH .../taskInstances/approve_canary/-1/
hitlDetails`, the request the Required Actions page sends, served in process by the
api-server's own app), or, for the timeout, runs the scheduler's own timeout sweep
(`SchedulerJobRunner.check_awaiting_input_timeouts`), which records the task's defaults
once its response timeout has passed.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from dag_runs import (
    APPS,
    MESH,
    RestApi,
    fast_params,
    pod_uids,
    revisions,
    run_dag,
    states,
    sweep_awaiting_input_timeouts,
    wait_for_task,
)
from sandbox_fixture import Sandbox

from istio_upgrade import cluster

pytestmark = pytest.mark.sandbox

TASK = "approve_canary"


def assert_completed(box: Sandbox, dr: Any) -> None:
    run = states(dr.run_id)
    assert str(dr.state) == "success", run
    assert run["conclude"] == "success", run
    assert cluster.tag_revision(box.kube(), "default") == box.new_revision
    assert revisions(box) == {n: {box.new_revision} for n in MESH}
    assert cluster.revision_objects(box.kube(), box.old_revision) == []


def assert_rolled_back(box: Sandbox, dr: Any, untouched: dict[str, set[str]]) -> None:
    run = states(dr.run_id)
    assert str(dr.state) == "failed", run
    assert run["rollback.verify_rolled_back"] == "success", run
    assert run["remaining_namespaces"] == "skipped", run
    assert run["conclude"] == "failed", run
    assert cluster.tag_revision(box.kube(), "default") == box.old_revision
    assert revisions(box) == {n: {box.old_revision} for n in MESH}
    assert pod_uids(box, ("foo", "baz", "qux")) == untouched, "rollback touched other namespaces"


def test_approve_shows_the_canary_figures_and_completes(seeded: Sandbox, rest_api: RestApi) -> None:
    box = seeded
    asked: dict[str, Any] = {}

    def approve() -> None:
        ti = wait_for_task(TASK, "awaiting_input")
        asked.update(rest_api.hitl_detail(ti.run_id, TASK))
        rest_api.answer(ti.run_id, TASK, "Approve")

    dr = run_dag(fast_params(box, require_approval=True), approve)
    assert_completed(box, dr)

    # the question showed the canary's own figures from the gate, and what each answer does
    assert asked["options"] == ["Approve", "Reject"] and asked["defaults"] == ["Reject"]
    body = asked["body"]
    rate = re.search(r"\| bar \| success_rate \| (\d\.\d{4}) \| 0\.9900 \| passed \|", body)
    p99 = re.search(r"\| bar \| p99_ms \| (\d+\.\d)ms \| [\d.]+ms \| passed \|", body)
    assert rate and float(rate.group(1)) >= 0.99, body
    assert p99 and float(p99.group(1)) > 0, body
    assert "**Reject**: move tag `default` back" in body
    # The namespaces still to move, read from the cluster: the gateway's moved already.
    assert "waves of 2 (baz, foo; qux)" in body, body
    answer = rest_api.xcom(dr.run_id, TASK)
    assert answer == {"option": "Approve", "by": "admin", "timed_out": False}


def test_reject_rolls_the_canary_back(seeded: Sandbox, rest_api: RestApi) -> None:
    box = seeded
    untouched = pod_uids(box, ("foo", "baz", "qux"))

    def reject() -> None:
        ti = wait_for_task(TASK, "awaiting_input")
        rest_api.answer(ti.run_id, TASK, "Reject")

    dr = run_dag(fast_params(box, require_approval=True), reject)
    assert_rolled_back(box, dr, untouched)
    assert states(dr.run_id)[TASK] == "success"  # an answer is a success, whatever it says
    report = rest_api.xcom(dr.run_id, "report")
    assert report["phase"] == "rolled_back"
    assert "not approved: rejected by admin" in report["reason"]


@pytest.mark.parametrize(
    ("default", "expect"),
    [
        pytest.param("reject", "rolled_back", id="default-reject-rolls-back"),
        pytest.param("approve", "completed", id="configured-approve-completes"),
    ],
)
def test_no_answer_in_time_takes_the_configured_default(
    seeded: Sandbox, rest_api: RestApi, default: str, expect: str
) -> None:
    box = seeded
    untouched = pod_uids(box, ("foo", "baz", "qux"))
    swept: dict[str, Any] = {}

    def let_it_time_out() -> None:
        ti = wait_for_task(TASK, "awaiting_input")
        assert ti.trigger_timeout is not None, "the approval was parked without a timeout"
        time.sleep(max(0.0, (ti.trigger_timeout - datetime.now(UTC)).total_seconds()) + 0.5)
        sweep_awaiting_input_timeouts()
        swept["detail"] = rest_api.hitl_detail(ti.run_id, TASK)

    conf = fast_params(
        box, require_approval=True, approval_timeout_seconds=2, approval_default=default
    )
    dr = run_dag(conf, let_it_time_out)
    option = "Approve" if default == "approve" else "Reject"
    assert swept["detail"]["chosen_options"] == [option]
    assert swept["detail"]["responded_by_user"] is None
    answer = rest_api.xcom(dr.run_id, TASK)
    assert (answer["option"], answer["by"], answer["timed_out"]) == (option, None, True)
    if expect == "completed":
        assert_completed(box, dr)
    else:
        assert_rolled_back(box, dr, untouched)
        report = rest_api.xcom(dr.run_id, "report")
        assert "no answer in time: approval_default 'Reject' was taken" in report["reason"]
    assert set(APPS) <= set(revisions(box))
