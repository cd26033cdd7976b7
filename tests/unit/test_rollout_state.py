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


def refused(since_failing: float, status: str = "True") -> object:
    """A Deployment whose new ReplicaSet has been refused pods (quota, webhook) since then."""
    obj = deployment(updated=1, available=1)
    obj.status.conditions.append(  # type: ignore[attr-defined]
        SimpleNamespace(
            type="ReplicaFailure",
            status=status,
            reason="FailedCreate",
            message='pods "foo-7d9" is forbidden: exceeded quota: it-no-surge',
            last_transition_time=datetime.fromtimestamp(since_failing, UTC),
        )
    )
    return obj


@pytest.mark.parametrize(
    ("obj", "since", "now", "failed"),
    [
        pytest.param(refused(T0), None, T0 + 10, False, id="refused-for-a-moment-waits"),
        pytest.param(refused(T0), None, T0 + 31, True, id="refused-past-the-grace-fails"),
        pytest.param(refused(T0), T0 + 20, T0 + 31, False,
                     id="a-retry-gives-a-fix-its-grace-again"),
        pytest.param(refused(T0, status="False"), None, T0 + 600, False,
                     id="a-cleared-failure-is-not-one"),
    ],
)  # fmt: skip
def test_pods_that_cannot_be_created_fail_the_rollout_early(
    obj: object, since: float | None, now: float, failed: bool
) -> None:
    state = rollout_state(obj, since, now=now)
    assert (state.complete, state.failed) == (False, failed), state.message
    if failed:
        assert "exceeded quota" in state.message
