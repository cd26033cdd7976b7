"""The rollout trigger: serialization, its one event, and passing API errors waited out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from istio_upgrade.triggers import RolloutTrigger

TARGET = {"kubeconfig": "/tmp/kubeconfig", "context": None}
WORKLOADS = [{"kind": "Deployment", "namespace": "foo", "name": "foo"}]


def trigger(deadline: float) -> RolloutTrigger:
    return RolloutTrigger(TARGET, WORKLOADS, deadline=deadline, poll_seconds=0)


def first_event(t: RolloutTrigger) -> dict[str, Any]:
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
    from istio_upgrade.waves import item_to_json, wave_items

    item = item_to_json(wave_items([("foo",), ("bar",)])[1])
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
