"""The rollout trigger: serialization, its one event, and passing API errors waited out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from airflow.triggers.base import BaseTrigger
from kubernetes.client.exceptions import ApiException

from istio_upgrade.triggers import RolloutTrigger

WORKLOADS = [{"kind": "Deployment", "namespace": "foo", "name": "foo"}]


def trigger(deadline: float) -> RolloutTrigger:
    return RolloutTrigger("kubernetes_default", WORKLOADS, deadline=deadline, poll_seconds=0)


def first_event(t: BaseTrigger) -> dict[str, Any]:
    async def first() -> dict[str, Any]:
        async for event in t.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(first())


def test_serialize_round_trips_plain_data() -> None:
    path, kwargs = trigger(123.0).serialize()
    assert path == "istio_upgrade.triggers.RolloutTrigger"
    assert RolloutTrigger(**kwargs).serialize() == (path, kwargs)


def polls(*outcomes: Any) -> Iterator[Any]:
    yield from outcomes


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        pytest.param([None, {"status": "success", "message": "1 rolled out"}], "success",
                     id="pending-then-done"),
        pytest.param([ApiException(status=503), ApiException(status=429), OSError("reset"),
                      {"status": "success", "message": "1 rolled out"}], "success",
                     id="passing-errors-waited-out"),
        pytest.param([{"status": "failed", "message": "ProgressDeadlineExceeded"}], "failed",
                     id="failure-is-reported"),
    ],
)  # fmt: skip
def test_first_event(monkeypatch: pytest.MonkeyPatch, outcomes: list[Any], status: str) -> None:
    results = polls(*outcomes)

    def poll(self: RolloutTrigger) -> Any:
        outcome = next(results)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(RolloutTrigger, "_poll", poll)
    assert first_event(trigger(time.time() + 60))["status"] == status


def test_a_refusal_is_not_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(self: RolloutTrigger) -> Any:
        raise ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(RolloutTrigger, "_poll", forbidden)
    with pytest.raises(ApiException):
        first_event(trigger(time.time() + 60))


def test_errors_until_the_deadline_end_in_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(self: RolloutTrigger) -> Any:
        raise OSError("connection refused")

    monkeypatch.setattr(RolloutTrigger, "_poll", unreachable)
    event = first_event(trigger(time.time() - 1))
    assert event["status"] == "timeout" and "connection refused" in event["message"]


def test_namespace_trigger_serializes_plain_data() -> None:
    from istio_upgrade.triggers import NamespaceUpgradeTrigger
    from istio_upgrade.waves import wave_items

    item = wave_items([("foo",), ("bar",)])[1].to_json()
    t = NamespaceUpgradeTrigger(
        conn_id="kubernetes_default",
        dag_id="istio_canary_upgrade",
        run_id="manual__1",
        upgrade_task_id="upgrade_namespace",
        item=item,
        target="1-32-0",
        stamp="1-32-0@manual__1",
        skip=[{"kind": "Deployment", "namespace": "istio-ingress", "name": "gw"}],
        rollout_timeout_seconds=600,
        window_end=None,
        canary_seconds=8.5,
    )
    path, kwargs = t.serialize()
    assert path == "istio_upgrade.triggers.NamespaceUpgradeTrigger"
    assert NamespaceUpgradeTrigger(**kwargs).serialize() == (path, kwargs)
    assert kwargs["item"] == {  # a few numbers, however many namespaces the run moves
        "namespace": "bar",
        "wave": 1,
        "index": 1,
        "previous_start": 0,
        "previous_count": 1,
    }


def gate_params(failure_limit: int, bake_seconds: int) -> Any:
    """The gate's params with checks a second apart."""
    from istio_upgrade.params import parse_params

    return parse_params(
        {
            "target_revision": "1-32-0",
            "failure_limit": failure_limit,
            "check_interval_seconds": 1,
            "bake_seconds": bake_seconds,
        }
    )


def every_check_breaches(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Prometheus stand-in: every check finds foo's success rate at 0.5. Returns the list
    the time of each check is appended to."""
    from istio_upgrade import health

    breach = health.MetricCheck(
        "foo", health.Metric.SUCCESS_RATE, 0.5, 0.99, health.CheckOutcome.BREACHED, "breach"
    )
    checked_at: list[float] = []

    def run_check(*args: Any) -> list[health.MetricCheck]:
        checked_at.append(time.monotonic())
        return [breach]

    monkeypatch.setattr(health, "run_check", run_check)
    return checked_at


def test_the_gate_keeps_its_counts_across_a_triggerer_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restarted triggerer builds the trigger again from its arguments: the failed checks
    counted before must still count (else every restart would extend a failing gate)."""
    from istio_upgrade import health, run_notes, triggers
    from istio_upgrade.triggers import MetricGateTrigger

    # the run's lock (a Lease) stands in as a dict: run_notes is tested against the real one
    notes: dict[str, health.GateState] = {}
    monkeypatch.setattr(triggers, "_kube_for", lambda conn_id: None)
    monkeypatch.setattr(
        run_notes, "save_gate", lambda kube, holder, state: notes.update({holder: state})
    )
    monkeypatch.setattr(run_notes, "saved_gate", lambda kube, holder: notes.get(holder))
    checked_at = every_check_breaches(monkeypatch)
    params = gate_params(failure_limit=3, bake_seconds=600)
    _, kwargs = MetricGateTrigger(
        "http://prom:9090",
        ["foo"],
        params.to_json(),
        # deferred a while ago: a trigger starting now may be a restarted one
        health.GateState(started_at=time.time() - 60).to_json(),
        conn_id="kubernetes_default",
        lock_holder="istio_canary_upgrade/manual__1",
    ).serialize()

    async def killed_after_one_check() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(MetricGateTrigger(**kwargs).run()), 0.5)

    asyncio.run(killed_after_one_check())
    assert len(checked_at) == 1 and notes["istio_canary_upgrade/manual__1"].checks_failed == 1

    checked_at.clear()
    event = first_event(MetricGateTrigger(**kwargs))
    assert event["status"] == "failed" and event["state"]["checks_failed"] == 3
    assert len(checked_at) == 2, "the restarted gate counted from zero again"


def test_the_gate_goes_on_from_a_check_the_worker_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no bake time the operator makes the first check itself; when that one does not
    decide (a failed check below failure_limit), the trigger counts it and checks again one
    interval later, not at once."""
    from istio_upgrade import health
    from istio_upgrade.triggers import MetricGateTrigger

    checked_at = every_check_breaches(monkeypatch)
    params = gate_params(failure_limit=2, bake_seconds=0)
    state, verdict = health.check_gate("http://prom:9090", ["foo"], params, health.GateState(0))
    assert verdict is health.HealthVerdict.PENDING and state.checks_failed == 1
    deferred_at = time.monotonic()
    event = first_event(
        MetricGateTrigger("http://prom:9090", ["foo"], params.to_json(), state.to_json())
    )
    assert event["status"] == "failed", event
    assert event["state"]["checks_done"] == event["state"]["checks_failed"] == 2, event
    assert len(checked_at) == 2, "the trigger checked more than once"
    assert checked_at[1] - deferred_at >= 1.0, "the trigger checked again without waiting"


def test_an_earlier_answer_is_read_and_none_to_read_is_no_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the triggerer's HITL read returns becomes the event; a failed read (the earlier
    try never asked: no Human-in-the-loop row) is no answer, not a failed task."""
    from airflow.sdk.api.datamodels._generated import HITLDetailResponse, HITLUser
    from airflow.sdk.execution_time import hitl

    from istio_upgrade.triggers import EarlierAnswerTrigger

    ti_id = "0198e2a4-5d6c-7c9e-8f00-000000000001"
    answered = HITLDetailResponse(
        response_received=True,
        responded_by_user=HITLUser(id="1", name="admin"),
        responded_at=None,
        chosen_options=["Approve"],
    )
    monkeypatch.setattr(hitl, "get_hitl_detail_content_detail", lambda ti_id: answered)
    event = first_event(EarlierAnswerTrigger(ti_id))
    assert event == {
        "received": True,
        "chosen_options": ["Approve"],
        "responded_by_user": {"id": "1", "name": "admin"},
    }

    def not_found(ti_id: Any) -> Any:
        raise RuntimeError("HITLDetail not found")

    monkeypatch.setattr(hitl, "get_hitl_detail_content_detail", not_found)
    assert first_event(EarlierAnswerTrigger(ti_id))["received"] is False
    assert EarlierAnswerTrigger(ti_id).serialize()[1] == {"ti_id": ti_id}
