"""How the in-cluster runner reads a pod's status (the runs themselves: tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest

from istio_upgrade.errors import ParamError
from istio_upgrade.istioctl_in_cluster import exit_code, pending_reason, phase, stuck_reason
from istio_upgrade.params import parse_params


def pod(state: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    statuses = [{"name": "istioctl", "state": state}] if state is not None else []
    return {"status": {"containerStatuses": statuses, **status}}


def test_exit_code_only_once_terminated() -> None:
    assert exit_code(pod({"terminated": {"exitCode": 3}})) == 3
    assert exit_code(pod({"terminated": {"exitCode": 0}})) == 0
    assert exit_code(pod({"running": {}})) is None
    assert exit_code(pod()) is None


@pytest.mark.parametrize(
    ("reason", "stuck"),
    [
        ("ImagePullBackOff", True),
        ("InvalidImageName", True),
        ("CreateContainerConfigError", True),
        ("ErrImagePull", False),  # the kubelet retries it first
        ("ContainerCreating", False),
    ],
)
def test_stuck_only_on_reasons_waiting_does_not_mend(reason: str, stuck: bool) -> None:
    found = stuck_reason(pod({"waiting": {"reason": reason, "message": "why"}}))
    assert (found is not None) == stuck
    if stuck:
        assert found == f"{reason}: why"


def test_pending_reason_names_the_failing_condition() -> None:
    unschedulable = pod(
        phase="Pending",
        conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "m"}
        ],
    )
    assert pending_reason(unschedulable) == "Unschedulable: m"
    assert pending_reason(pod()) == "phase Pending"
    assert phase({}) == "Pending"


def test_pod_runner_takes_a_version_not_a_path() -> None:
    base = {"target_revision": "1-32-0", "istioctl_runner": "pod"}
    assert parse_params({**base, "istioctl": "1.32.0"}).istioctl_runner == "pod"
    with pytest.raises(ParamError) as err:
        parse_params({**base, "istioctl": "/usr/local/bin/istioctl"})
    assert err.value.param == "istioctl"
    assert parse_params({**base}).istioctl_image == "docker.io/istio/istioctl"
