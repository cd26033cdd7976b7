"""What tasks hand each other survives Airflow's own XCom storage as the same typed value.

Each value goes through the real path: `BaseXCom.serialize_value` (Airflow's serde), JSON
text as the metadata DB stores it, then `BaseXCom.deserialize_value`, whose allow-list
refuses a class that `contracts.allow` did not register.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.bases.xcom import BaseXCom

from istio_upgrade import approval, health, report, steps, waves
from istio_upgrade.contracts import Contract
from istio_upgrade.deadline import Span
from istio_upgrade.model import (
    ControlPlane,
    MeshSnapshot,
    NamespaceState,
    PodState,
    RevisionTag,
    WorkloadRef,
)
from istio_upgrade.params import ResolvedParams, check_against_cluster, parse_params
from istio_upgrade.references import KeptBy

OLD, NEW = "1-14-6", "1-15-4"
REF = WorkloadRef("Deployment", "bar", "bar")
POD = PodState("bar", "bar-1", "uid-1", "Running", REF, OLD, "1.14.6")
MESH = MeshSnapshot(
    (ControlPlane(OLD, True, None, True),),
    (RevisionTag("default", OLD),),
    (NamespaceState("bar", {"istio.io/rev": "default"}, (REF,), (POD,)),),
    "2026-01-01T02:00:00+00:00",
)
RESOLVED = check_against_cluster(parse_params({"target_revision": NEW, "gateways": []}), MESH)
CHECK = health.MetricCheck(
    "bar", health.Metric.P99_MS, None, 500.0, health.CheckOutcome.NO_DATA, "no data"
)

# One value of every class passed between tasks, with nested values, tuples, enums and Nones.
SAMPLES: list[Contract] = [
    RESOLVED.params,
    ResolvedParams(
        RESOLVED.params,
        OLD,
        ("bar",),
        ("bar",),
        (),
        False,
        window_end="2026-01-01T04:00:00+00:00",
        lock_holder="dag/run",
        kept_by=KeptBy(("gw",), ("legacy",)),
    ),
    CHECK,
    health.GateState(12.5, 2, 1, (CHECK,)),
    health.GateResult(health.HealthVerdict.FAILED, "gate failed", (CHECK,), 2, 2),
    approval.Answer(approval.REJECT, None, True),
    REF,
    steps.Verified(NEW, ("bar",), (), ("1.15.4",), Span(-1, ("bar",), 1.0, 9.5, 1)),
    steps.Verified(NEW, workloads=(REF,)),
    steps.Restart((REF,), ("bar/bar",), 1.0),
    waves.WaveItem("baz", 1, 3, 1, 2),
    waves.NamespaceOutcome("baz", 1, waves.State.HELD, "window", failed=("foo",)),
    report.Prechecked("No issues found", report.MeshSummary.of(MESH)),
]


def through_xcom(value: Any) -> Any:
    stored = json.dumps(BaseXCom.serialize_value(value))
    return BaseXCom.deserialize_value(SimpleNamespace(value=json.loads(stored)))


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
def test_a_value_comes_back_as_itself(value: Contract) -> None:
    assert through_xcom(value) == value
    assert type(value).from_json(json.loads(json.dumps(value.to_json()))) == value


def test_a_list_comes_back_as_a_list_of_values() -> None:
    items = waves.wave_items([("baz", "foo"), ("qux",)])
    assert through_xcom(items) == items


def test_every_contract_has_a_sample() -> None:
    def subclasses(cls: type) -> set[type]:
        found = set(cls.__subclasses__())
        return found.union(*(subclasses(c) for c in found))

    assert subclasses(Contract) == {type(v) for v in SAMPLES}
