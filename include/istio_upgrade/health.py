"""The metric gate: Prometheus queries, one threshold evaluator, and the verdict over a bake time.

As Flagger and Argo Rollouts do it: each check reads the success rate and the p99 latency of
every canary namespace; "breached", "no data" and "query failed" are distinct outcomes, and
all three count as a failed check (fail closed). Everything but `query_prometheus` is pure, so
the deferrable trigger only has to call `run_check` and `next_state`.
"""

from __future__ import annotations

import http.client
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from istio_upgrade.contracts import Contract, allow
from istio_upgrade.errors import MetricsUnavailable
from istio_upgrade.params import UpgradeParams

QUERY_TIMEOUT_SECONDS = 10.0

# (namespace, metric) -> the namespace's own figure from before its restart
Baseline = Mapping[tuple[str, str], float]


class Metric(StrEnum):
    """The two Istio standard metrics the gate reads, per namespace, at the destination proxy."""

    SUCCESS_RATE = "success_rate"  # share of non-5xx responses; a lower bound
    P99_MS = "p99_ms"  # 99th-percentile request duration in ms; an upper bound

    @property
    def lower_bound(self) -> bool:
        return self is Metric.SUCCESS_RATE


class CheckOutcome(StrEnum):
    """The result of one metric of one namespace in one check."""

    PASSED = "passed"  # a figure within its limit
    BREACHED = "breached"  # a figure beyond its limit: the proxies misbehave
    NO_DATA = "no_data"  # no sample (no traffic in the window): nothing proves health
    QUERY_FAILED = "query_failed"  # Prometheus unreachable or gave garbage: nothing proves health


class HealthVerdict(StrEnum):
    """Where the gate stands after a check."""

    PENDING = "pending"  # keep checking: bake time not over, or the latest check failed
    PASSED = "passed"  # bake time over, failed checks below the limit, latest check passed
    FAILED = "failed"  # failed checks reached failure_limit: roll back


def _promql_string(value: str) -> str:
    """A PromQL string literal; namespaces are DNS labels already, this is belt and braces."""
    return json.dumps(value)


def success_rate_query(namespace: str, window: str) -> str:
    """Share of non-5xx requests served by the namespace's workloads over the window."""
    ns = _promql_string(namespace)
    return (
        f'sum(rate(istio_requests_total{{reporter="destination",'
        f'destination_workload_namespace={ns},response_code!~"5.."}}[{window}]))'
        f' / sum(rate(istio_requests_total{{reporter="destination",'
        f"destination_workload_namespace={ns}}}[{window}]))"
    )


def p99_latency_query(namespace: str, window: str) -> str:
    """99th-percentile request duration (ms) of the namespace's workloads over the window."""
    ns = _promql_string(namespace)
    return (
        f"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket"
        f'{{reporter="destination",destination_workload_namespace={ns}}}[{window}])) by (le))'
    )


QUERIES = {Metric.SUCCESS_RATE: success_rate_query, Metric.P99_MS: p99_latency_query}


def query_prometheus(
    base_url: str, promql: str, timeout: float = QUERY_TIMEOUT_SECONDS
) -> list[float]:
    """Run an instant query and return its sample values; MetricsUnavailable on any failure."""
    url = f"{base_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        # prometheus_url was checked to be http(s), so urlopen cannot be steered to file://
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        # Prometheus explains a rejected query in a JSON body; show that rather than the code
        detail = _error_text(err.read()) or err.reason
        raise MetricsUnavailable(base_url, f"HTTP {err.code}: {detail}") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise MetricsUnavailable(base_url, f"no answer: {reason}") from err
    return _sample_values(base_url, body)


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip()
    return str(data.get("error", "")) if isinstance(data, dict) else ""


def _sample_values(base_url: str, body: bytes) -> list[float]:
    """The values of an instant-query answer (a vector or a scalar)."""
    try:
        data = json.loads(body)
        if data.get("status") != "success":
            raise MetricsUnavailable(base_url, f"query failed: {data.get('error', data)}")
        result: Any = data["data"]["result"]
        kind = data["data"]["resultType"]
        if kind == "scalar":
            return [float(result[1])]
        if kind == "vector":
            return [float(sample["value"][1]) for sample in result]
    except MetricsUnavailable:
        raise
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        raise MetricsUnavailable(base_url, f"not a Prometheus answer: {err!r}") from err
    raise MetricsUnavailable(base_url, f"unexpected result type {kind!r}")


@dataclass(frozen=True)
class MetricCheck(Contract):
    """One metric of one namespace in one check: the figure, its limit and the outcome."""

    namespace: str
    metric: Metric
    value: float | None  # None: no sample, or the query failed
    limit: float
    outcome: CheckOutcome
    message: str

    @property
    def ok(self) -> bool:
        return self.outcome is CheckOutcome.PASSED


def figure(metric: Metric | str, value: float | None, missing: str = "no data") -> str:
    """A metric's value as every message, table and report shows it."""
    if value is None or math.isnan(value):
        return missing
    return f"{value:.4f}" if metric == Metric.SUCCESS_RATE else f"{value:.1f}ms"


def evaluate(namespace: str, metric: Metric, value: float | None, limit: float) -> MetricCheck:
    """The one threshold evaluator: success rate is a lower bound, p99 an upper; NaN is no data."""
    # 0/0 (no requests in the window) comes back from Prometheus as NaN: absence, not health
    if value is None or math.isnan(value):
        return MetricCheck(
            namespace,
            metric,
            None,
            limit,
            CheckOutcome.NO_DATA,
            f"namespace {namespace!r} {metric}: no samples in the window (no traffic?), "
            f"limit {figure(metric, limit)}; counts as failed",
        )
    if metric.lower_bound:
        breached, relation = value < limit, ("below", "at or above")
    else:
        breached, relation = value > limit, ("above", "at or below")
    word = relation[0] if breached else relation[1]
    return MetricCheck(
        namespace,
        metric,
        value,
        limit,
        CheckOutcome.BREACHED if breached else CheckOutcome.PASSED,
        f"namespace {namespace!r} {metric}={figure(metric, value)} {word} "
        f"limit {figure(metric, limit)}",
    )


def query_failed(namespace: str, metric: Metric, limit: float, problem: str) -> MetricCheck:
    """The check of a metric Prometheus could not answer; it fails like a breach."""
    return MetricCheck(
        namespace,
        metric,
        None,
        limit,
        CheckOutcome.QUERY_FAILED,
        f"namespace {namespace!r} {metric}: query failed ({problem}); counts as failed",
    )


def limit_for(
    namespace: str, metric: Metric, params: UpgradeParams, baseline: Baseline | None = None
) -> float:
    """The stricter of the fixed threshold and the namespace's own baseline with its tolerance.

    Success rate: not below `baseline - baseline_success_drop`; p99: not above
    `baseline * baseline_p99_ratio`. The fixed threshold stays the floor of what passes: a
    namespace that was already bad before its restart does not lower the bar. A missing or
    NaN baseline (no traffic before the restart) leaves the fixed threshold alone.
    """
    fixed = params.min_success_rate if metric.lower_bound else params.max_p99_ms
    base = (baseline or {}).get((namespace, metric.value)) if params.compare_baseline else None
    if base is None or math.isnan(base):
        return fixed
    if metric.lower_bound:
        return max(fixed, base - params.baseline_success_drop)
    return min(fixed, base * params.baseline_p99_ratio)


def _worst(metric: Metric, values: list[float]) -> float | None:
    """One figure per namespace is expected; if a query yields several, judge by the worst."""
    real = [v for v in values if not math.isnan(v)]
    if not real:
        return None
    return min(real) if metric.lower_bound else max(real)


def run_check(
    prometheus_url: str,
    namespaces: Iterable[str],
    params: UpgradeParams,
    baseline: Baseline | None = None,
    timeout: float = QUERY_TIMEOUT_SECONDS,
) -> list[MetricCheck]:
    """One check: both metrics of every namespace, blocking (async callers use a thread)."""
    checks = []
    for namespace in namespaces:
        for metric, query in QUERIES.items():
            limit = limit_for(namespace, metric, params, baseline)
            promql = query(namespace, params.metric_window)
            try:
                values = query_prometheus(prometheus_url, promql, timeout)
            except MetricsUnavailable as err:
                checks.append(query_failed(namespace, metric, limit, err.problem))
                continue
            checks.append(evaluate(namespace, metric, _worst(metric, values), limit))
    return checks


def baseline_from(checks: Iterable[MetricCheck]) -> dict[tuple[str, str], float]:
    """The figures to compare with later, from a check taken before the restart.

    Tuple keys do not survive JSON: the checks cross XCom, and the baseline is rebuilt from
    them where it is used.
    """
    return {(c.namespace, c.metric.value): c.value for c in checks if c.value is not None}


@dataclass(frozen=True)
class GateState(Contract):
    """The gate's counters (as Flagger's failedChecks): plain data the trigger carries along."""

    started_at: float  # epoch seconds when the bake time began
    checks_done: int = 0
    checks_failed: int = 0  # checks in which at least one metric did not pass
    last: tuple[MetricCheck, ...] = ()  # the latest check, for the message and the report

    def record(self, checks: Sequence[MetricCheck]) -> GateState:
        """Count one check; it fails when any metric of it did not pass (or it has none)."""
        # an empty check proves nothing about health, so it counts as failed as well
        failed = not checks or not all(c.ok for c in checks)
        return replace(
            self,
            checks_done=self.checks_done + 1,
            checks_failed=self.checks_failed + int(failed),
            last=tuple(checks),
        )


def verdict(state: GateState, now: float, params: UpgradeParams) -> HealthVerdict:
    """FAILED at failure_limit; PASSED once baked with the latest check good; else PENDING."""
    if state.checks_failed >= params.failure_limit:
        return HealthVerdict.FAILED
    baked = now - state.started_at >= params.bake_seconds
    # the latest check must pass too: never promote a canary that is failing right now
    latest_ok = bool(state.last) and all(c.ok for c in state.last)
    return HealthVerdict.PASSED if baked and latest_ok else HealthVerdict.PENDING


def next_state(
    state: GateState, checks: Sequence[MetricCheck], now: float, params: UpgradeParams
) -> tuple[GateState, HealthVerdict]:
    """Record one check and judge the gate: what the trigger calls after each `run_check`."""
    new = state.record(checks)
    return new, verdict(new, now, params)


def check_gate(
    prometheus_url: str,
    namespaces: Sequence[str],
    params: UpgradeParams,
    state: GateState,
    baseline: Baseline | None = None,
) -> tuple[GateState, HealthVerdict]:
    """One check of the gate and its verdict so far (blocking)."""
    checks = run_check(prometheus_url, namespaces, params, baseline)
    return next_state(state, checks, time.time(), params)


@dataclass(frozen=True)
class GateResult(Contract):
    """The metric gate's verdict, what the approval, `decide` and the report read.

    The verdict is the task's result, not its state: a failed gate leads to the rollback.
    """

    verdict: HealthVerdict  # PASSED or FAILED
    message: str
    checks: tuple[MetricCheck, ...]  # the latest check
    checks_done: int
    checks_failed: int

    @property
    def passed(self) -> bool:
        return self.verdict is HealthVerdict.PASSED

    @classmethod
    def of_event(cls, event: Mapping[str, Any]) -> GateResult:
        """From the trigger's event (`gate_event`)."""
        state = GateState.from_json(event["state"])
        return cls(
            HealthVerdict(event["status"]),
            str(event["message"]),
            state.last,
            state.checks_done,
            state.checks_failed,
        )


def gate_event(state: GateState, result: HealthVerdict, params: UpgradeParams) -> dict[str, Any]:
    """The gate's outcome as its trigger reports it (and the sensor reads it)."""
    return {
        "status": str(result),
        "message": describe(state, result, params),
        "state": state.to_json(),
    }


def describe(state: GateState, result: HealthVerdict, params: UpgradeParams) -> str:
    """One line for the trigger event and the log: counters, limit and the failing metrics."""
    head = (
        f"gate {result}: {state.checks_failed} of {state.checks_done} checks failed "
        f"(failure_limit {params.failure_limit}, bake {params.bake_seconds}s)"
    )
    bad = [c.message for c in state.last if not c.ok]
    return head + ("; " + "; ".join(bad) if bad else "")


allow(MetricCheck, GateState, GateResult)
