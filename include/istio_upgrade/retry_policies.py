"""How often each kind of task retries, and how sensors wait: policy, in one place.

A refusal raised on purpose is a finding, never retried: bad params, a revision in use, a
failed rollout, namespaces the waves did not move, another run holding the cluster.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule

from istio_upgrade.errors import (
    ParamError,
    RevisionInUse,
    RolloutFailed,
    UpgradeError,
    UpgradeLocked,
    WavesFailed,
)

FINDINGS_FAIL = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=[ParamError, RevisionInUse, RolloutFailed, UpgradeLocked, WavesFailed],
            action=RetryAction.FAIL,
            reason="a finding about the params or the cluster, not a passing error",
        )
    ]
)
# A try on a worker that runs longer than this is hung (every API call has its own timeout,
# istioctl waits for readiness 3 min at most): it fails, so its retry or the red run shows it.
EXECUTION_TIMEOUT = timedelta(minutes=20)
# Kubernetes API and Prometheus calls: a dropped connection, a 429 or 5xx passes in seconds.
API_RETRY: dict[str, Any] = {
    "retries": 3,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": 2.0,  # a multiplier since Airflow 3 (True meant 1: constant)
    "max_retry_delay": timedelta(minutes=2),
    "retry_policy": FINDINGS_FAIL,
    "execution_timeout": EXECUTION_TIMEOUT,
}
# istioctl install / tag set / uninstall: slow, and they wait for readiness themselves.
ISTIOCTL_RETRY: dict[str, Any] = {
    **API_RETRY,
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "max_retry_delay": timedelta(minutes=5),
}
# The DAG's default: a task without a decided retry policy fails closed.
NO_RETRY: dict[str, Any] = {"retries": 0, "execution_timeout": EXECUTION_TIMEOUT}
# Verdicts: precheck, verifications, rollout waits, the gate, the approval, the decisions.
# What they find (any UpgradeError) fails at once: a retry would hide it. Anything else gets
# one more try: an API hiccup, or Airflow failing the try itself (apache/airflow#71172,
# #72716: seen on the approval). A retried wait keeps its deadline where it can (rollouts:
# from the restart); a retried gate goes on with its counts (run_notes); a retried
# approval keeps an answer given to the failed try, or asks again until the same deadline.
VERDICT_RETRY: dict[str, Any] = {
    "retries": 1,
    "retry_delay": timedelta(seconds=10),
    "retry_policy": ExceptionRetryPolicy(
        rules=[
            RetryRule(
                exception=[UpgradeError],
                action=RetryAction.FAIL,
                reason="the task's own verdict, not a passing error",
            )
        ]
    ),
    "execution_timeout": EXECUTION_TIMEOUT,
}
# Deferring tasks: Airflow counts the time in the triggerer into execution_timeout, and their
# waits have deadlines of their own (rollout_timeout_seconds, the bake, approval_timeout_seconds;
# a namespace waits for the waves before it, however many there are).
DEFERRED_VERDICT_RETRY: dict[str, Any] = {**VERDICT_RETRY, "execution_timeout": None}
DEFERRED_API_RETRY: dict[str, Any] = {**API_RETRY, "execution_timeout": None}
# The approval meets Airflow 3.3.2's race at two points of one question: when it is asked
# and when it is answered (apache/airflow#71172: an answer within seconds of the question).
# A retry keeps what was answered, so both may strike without failing the run.
APPROVAL_RETRY: dict[str, Any] = {**DEFERRED_VERDICT_RETRY, "retries": 2}
