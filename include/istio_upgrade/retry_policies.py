"""How often each kind of task retries, and how sensors wait: policy, in one place.

A refusal raised on purpose is a finding, never retried: bad params, a revision in use, a
failed rollout, namespaces the waves did not move.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule

from istio_upgrade.errors import ParamError, RevisionInUse, RolloutFailed, WavesFailed

FINDINGS_FAIL = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=[ParamError, RevisionInUse, RolloutFailed, WavesFailed],
            action=RetryAction.FAIL,
            reason="a finding about the params or the cluster, not a passing error",
        )
    ]
)
# Kubernetes API and Prometheus calls: a dropped connection, a 429 or 5xx passes in seconds.
API_RETRY: dict[str, Any] = {
    "retries": 3,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": 2.0,  # a multiplier since Airflow 3 (True meant 1: constant)
    "max_retry_delay": timedelta(minutes=2),
    "retry_policy": FINDINGS_FAIL,
}
# istioctl install / tag set / uninstall: slow, and they wait for readiness themselves.
ISTIOCTL_RETRY: dict[str, Any] = {
    **API_RETRY,
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "max_retry_delay": timedelta(minutes=5),
}
# Validation, verifications, verdicts, waits with a deadline and human answers: the failure
# is the finding (a retry would hide it, restart a deadline or ask the person again).
NO_RETRY: dict[str, Any] = {"retries": 0}
# Sensors give their worker slot back between pokes; an hour bounds any wait.
WAIT: dict[str, Any] = {"poke_interval": 5, "timeout": 3600, "mode": "reschedule"}
