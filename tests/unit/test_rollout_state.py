"""`kubectl rollout status` semantics, and a progress deadline that is old news after a fix."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from istio_upgrade.cluster import rollout_state

T0 = datetime(2026, 3, 3, 2, 0, tzinfo=UTC).timestamp()


def deployment(updated: int = 2, available: int = 2, exceeded_at: float | None = None) -> object:
    conditions = []
    if exceeded_at is not None:
        when = datetime.fromtimestamp(exceeded_at, UTC)
        conditions.append(
            SimpleNamespace(
                type="Progressing", reason="ProgressDeadlineExceeded", last_update_time=when
            )
        )
    return SimpleNamespace(
        kind="Deployment",
        metadata=SimpleNamespace(namespace="foo", name="foo", generation=2),
        spec=SimpleNamespace(replicas=2),
        status=SimpleNamespace(
            observed_generation=2,
            conditions=conditions,
            updated_replicas=updated,
            replicas=updated,
            available_replicas=available,
        ),
    )


@pytest.mark.parametrize(
    ("obj", "since", "complete", "failed"),
    [
        pytest.param(deployment(), None, True, False, id="rolled-out"),
        pytest.param(deployment(updated=1, available=1), None, False, False, id="pending"),
        pytest.param(deployment(1, 1, exceeded_at=T0), None, False, True, id="deadline-exceeded"),
        pytest.param(deployment(1, 1, exceeded_at=T0), T0 - 30, False, True,
                     id="exceeded-during-this-try"),
        pytest.param(deployment(1, 1, exceeded_at=T0), T0 + 60, False, False,
                     id="exceeded-before-this-try-waits-again"),
    ],
)  # fmt: skip
def test_rollout_state(obj: object, since: float | None, complete: bool, failed: bool) -> None:
    state = rollout_state(obj, since)
    assert (state.complete, state.failed) == (complete, failed), state.message
