"""The metric gate: queries, the threshold evaluator, baselines, the verdict, and the HTTP client.

The HTTP tests talk to a tiny in-process server that answers like Prometheus's instant-query
API; the real Prometheus is exercised by the integration tests on the sandbox.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from istio_upgrade.errors import MetricsUnavailable
from istio_upgrade.health import (
    CheckOutcome,
    GateState,
    HealthVerdict,
    Metric,
    MetricCheck,
    baseline_from,
    describe,
    evaluate,
    limit_for,
    next_state,
    p99_latency_query,
    query_failed,
    query_prometheus,
    run_check,
    success_rate_query,
    verdict,
)
from istio_upgrade.params import UpgradeParams, parse_params

RATE, P99 = Metric.SUCCESS_RATE, Metric.P99_MS


def params(**overrides: object) -> UpgradeParams:
    return parse_params({"target_revision": "1-15-4", **overrides})


# -- queries --------------------------------------------------------------------------------------


def test_queries_are_the_ones_in_the_design() -> None:
    assert success_rate_query("bar", "1m") == (
        'sum(rate(istio_requests_total{reporter="destination",'
        'destination_workload_namespace="bar",response_code!~"5.."}[1m]))'
        ' / sum(rate(istio_requests_total{reporter="destination",'
        'destination_workload_namespace="bar"}[1m]))'
    )
    assert p99_latency_query("bar", "90s") == (
        "histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket"
        '{reporter="destination",destination_workload_namespace="bar"}[90s])) by (le))'
    )


# -- the one evaluator ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "value", "limit", "outcome", "words"),
    [
        pytest.param(RATE, 0.999, 0.99, CheckOutcome.PASSED, "at or above", id="rate-ok"),
        pytest.param(RATE, 0.99, 0.99, CheckOutcome.PASSED, "at or above", id="rate-at-limit"),
        pytest.param(RATE, 0.95, 0.99, CheckOutcome.BREACHED, "0.9500 below limit 0.9900",
                     id="rate-breached"),
        pytest.param(P99, 120.0, 500, CheckOutcome.PASSED, "at or below", id="p99-ok"),
        pytest.param(P99, 500.0, 500, CheckOutcome.PASSED, "at or below", id="p99-at-limit"),
        pytest.param(P99, 812.5, 500, CheckOutcome.BREACHED, "812.5ms above limit 500.0ms",
                     id="p99-breached"),
        pytest.param(P99, math.inf, 500, CheckOutcome.BREACHED, "above", id="p99-infinite"),
        pytest.param(RATE, None, 0.99, CheckOutcome.NO_DATA, "no samples", id="rate-none"),
        pytest.param(RATE, math.nan, 0.99, CheckOutcome.NO_DATA, "no samples", id="rate-nan"),
        pytest.param(P99, math.nan, 500, CheckOutcome.NO_DATA, "counts as failed", id="p99-nan"),
    ],
)  # fmt: skip
def test_evaluate(
    metric: Metric, value: float | None, limit: float, outcome: CheckOutcome, words: str
) -> None:
    check = evaluate("bar", metric, value, limit)
    assert check.outcome is outcome
    assert check.ok is (outcome is CheckOutcome.PASSED)
    # the message names the object, and the value and limit in the form the operator reads
    assert check.message.startswith(f"namespace 'bar' {metric.value}")
    assert words in check.message
    if outcome is CheckOutcome.NO_DATA:
        assert check.value is None


def test_query_failed_is_its_own_outcome() -> None:
    check = query_failed("bar", RATE, 0.99, "HTTP 500: boom")
    assert (check.outcome, check.value, check.ok) == (CheckOutcome.QUERY_FAILED, None, False)
    assert "HTTP 500: boom" in check.message


def test_metric_check_round_trips_through_json() -> None:
    for check in (evaluate("bar", P99, 12.5, 500), evaluate("bar", RATE, None, 0.99)):
        assert MetricCheck.from_json(json.loads(json.dumps(check.to_json()))) == check


# -- baseline: the stricter of the fixed threshold and the namespace's own figure --------------


@pytest.mark.parametrize(
    ("metric", "baseline", "overrides", "limit"),
    [
        pytest.param(RATE, None, {}, 0.99, id="rate-no-baseline"),
        pytest.param(RATE, 1.0, {}, 0.99, id="rate-perfect-baseline-same-as-fixed"),
        pytest.param(RATE, 0.95, {}, 0.99, id="rate-poor-baseline-never-lowers-the-bar"),
        pytest.param(RATE, 1.0, {"min_success_rate": 0.9}, 0.99, id="rate-baseline-stricter"),
        pytest.param(RATE, 1.0, {"min_success_rate": 0.9, "baseline_success_drop": 0.05},
                     0.95, id="rate-custom-drop"),
        pytest.param(P99, 100.0, {}, 150.0, id="p99-baseline-stricter"),
        pytest.param(P99, 400.0, {}, 500.0, id="p99-slow-baseline-never-raises-the-bar"),
        pytest.param(P99, 100.0, {"baseline_p99_ratio": 2}, 200.0, id="p99-custom-ratio"),
        pytest.param(P99, math.nan, {}, 500.0, id="p99-nan-baseline-ignored"),
        pytest.param(P99, 100.0, {"compare_baseline": False}, 500.0, id="baseline-switched-off"),
    ],
)  # fmt: skip
def test_limit_for(
    metric: Metric, baseline: float | None, overrides: dict[str, object], limit: float
) -> None:
    figures = {} if baseline is None else {("bar", metric.value): baseline}
    assert limit_for("bar", metric, params(**overrides), figures) == pytest.approx(limit)


def test_baseline_from_a_check_before_the_restart() -> None:
    before = [evaluate("bar", RATE, 0.998, 0.99), evaluate("bar", P99, 80.0, 500)]
    before.append(evaluate("foo", RATE, None, 0.99))  # no traffic: no baseline for foo
    assert baseline_from(before) == {("bar", "success_rate"): 0.998, ("bar", "p99_ms"): 80.0}


# -- the gate over the bake time ----------------------------------------------------------------

GOOD = (evaluate("bar", RATE, 1.0, 0.99), evaluate("bar", P99, 10.0, 500))
BAD = (evaluate("bar", RATE, 0.5, 0.99), evaluate("bar", P99, 10.0, 500))
EMPTY = (evaluate("bar", RATE, None, 0.99), evaluate("bar", P99, None, 500))


@pytest.mark.parametrize(
    ("rounds", "elapsed", "expected"),
    [
        pytest.param([GOOD], 30, HealthVerdict.PENDING, id="good-but-still-baking"),
        pytest.param([GOOD] * 11, 300, HealthVerdict.PASSED, id="baked-and-good"),
        pytest.param([GOOD, BAD, GOOD], 300, HealthVerdict.PASSED, id="one-failure-tolerated"),
        pytest.param([GOOD, GOOD, BAD], 300, HealthVerdict.PENDING, id="baked-but-failing-now"),
        pytest.param([BAD, BAD], 60, HealthVerdict.FAILED, id="limit-reached-early"),
        pytest.param([EMPTY, EMPTY], 60, HealthVerdict.FAILED, id="no-data-fails-closed"),
        pytest.param([(), ()], 60, HealthVerdict.FAILED, id="empty-check-fails-closed"),
        pytest.param([], 300, HealthVerdict.PENDING, id="baked-without-any-check"),
    ],
)
def test_verdict(rounds: list[tuple[MetricCheck, ...]], elapsed: float, expected: str) -> None:
    state = GateState(started_at=1000.0)
    for checks in rounds:
        state = state.record(checks)
    assert verdict(state, 1000.0 + elapsed, params()) is expected


def test_next_state_counts_and_round_trips() -> None:
    p = params(bake_seconds=60, failure_limit=3)
    state, result = next_state(GateState(started_at=0.0), BAD, now=30.0, params=p)
    assert (state.checks_done, state.checks_failed, result) == (1, 1, HealthVerdict.PENDING)
    state, result = next_state(state, GOOD, now=60.0, params=p)
    assert (state.checks_done, state.checks_failed, result) == (2, 1, HealthVerdict.PASSED)
    assert GateState.from_json(json.loads(json.dumps(state.to_json()))) == state


def test_describe_names_counters_limit_and_failing_metric() -> None:
    state = GateState(started_at=0.0).record(BAD).record(BAD)
    text = describe(state, HealthVerdict.FAILED, params())
    assert text.startswith("gate failed: 2 of 2 checks failed (failure_limit 2, bake 300s)")
    assert "namespace 'bar' success_rate=0.5000 below limit 0.9900" in text


# -- the HTTP client against a stand-in Prometheus ----------------------------------------------

Answer = Callable[[str], tuple[int, bytes]]


def vector(*values: str) -> bytes:
    result = [{"metric": {}, "value": [1700000000.0, v]} for v in values]
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": result}}
    ).encode()


class FakePrometheus(BaseHTTPRequestHandler):
    """Answers GET /api/v1/query with whatever the current test's `answer` returns."""

    answer: Answer = staticmethod(lambda query: (200, vector()))

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query).get("query", [""])[0]
        status, body = (404, b"not found") if url.path != "/api/v1/query" else self.answer(query)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def prometheus(server: ThreadingHTTPServer) -> Iterator[Callable[[Answer], str]]:
    """Set how the stand-in answers; returns its base URL."""

    def answering(answer: Answer) -> str:
        FakePrometheus.answer = staticmethod(answer)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield answering
    FakePrometheus.answer = staticmethod(lambda query: (200, vector()))


def _scalar() -> bytes:
    data = {"resultType": "scalar", "result": [1700000000.0, "0.5"]}
    return json.dumps({"status": "success", "data": data}).encode()


@pytest.mark.parametrize(
    ("status", "body", "values"),
    [
        pytest.param(200, vector("0.998"), [0.998], id="one-sample"),
        pytest.param(200, vector("0.9", "0.8"), [0.9, 0.8], id="two-samples"),
        pytest.param(200, vector(), [], id="empty-result"),
        pytest.param(200, _scalar(), [0.5], id="scalar"),
    ],
)
def test_query_returns_sample_values(
    prometheus: Callable[[Answer], str], status: int, body: bytes, values: list[float]
) -> None:
    url = prometheus(lambda query: (status, body))
    assert query_prometheus(url, "up", timeout=5) == values


def test_query_sends_the_promql(prometheus: Callable[[Answer], str]) -> None:
    seen: list[str] = []

    def record(query: str) -> tuple[int, bytes]:
        seen.append(query)
        return 200, vector("1")

    url = prometheus(record)
    query_prometheus(url + "/", success_rate_query("bar", "1m"), timeout=5)
    assert seen == [success_rate_query("bar", "1m")]


def test_nan_sample_is_kept_for_the_evaluator(prometheus: Callable[[Answer], str]) -> None:
    url = prometheus(lambda query: (200, vector("NaN")))
    [value] = query_prometheus(url, "up", timeout=5)
    assert math.isnan(value)
    assert evaluate("bar", RATE, value, 0.99).outcome is CheckOutcome.NO_DATA


PROM_ERROR = json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"})


@pytest.mark.parametrize(
    ("status", "body", "problem"),
    [
        pytest.param(500, b"internal error", "HTTP 500: internal error", id="http-500"),
        pytest.param(400, PROM_ERROR.encode(), "HTTP 400: parse error", id="http-400-explained"),
        pytest.param(200, b"<html>not json", "not a Prometheus answer", id="garbage"),
        pytest.param(200, b'{"status": "success"}', "not a Prometheus answer", id="no-data-key"),
        pytest.param(200, b"[1, 2]", "not a Prometheus answer", id="json-list"),
        pytest.param(200, PROM_ERROR.encode(), "query failed: parse error", id="status-error"),
        pytest.param(
            200,
            b'{"status":"success","data":{"resultType":"matrix","result":[]}}',
            "unexpected result type 'matrix'",
            id="matrix",
        ),
    ],
)
def test_query_problems_raise_metrics_unavailable(
    prometheus: Callable[[Answer], str], status: int, body: bytes, problem: str
) -> None:
    url = prometheus(lambda query: (status, body))
    with pytest.raises(MetricsUnavailable) as err:
        query_prometheus(url, "up", timeout=5)
    assert problem in err.value.problem
    assert url in str(err.value) and "prometheus_url" in str(err.value)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_connection_refused_raises_metrics_unavailable() -> None:
    with pytest.raises(MetricsUnavailable, match="no answer"):
        query_prometheus(f"http://127.0.0.1:{_closed_port()}", "up", timeout=5)


def test_slow_answer_times_out(prometheus: Callable[[Answer], str]) -> None:
    def slow(query: str) -> tuple[int, bytes]:
        time.sleep(1.0)
        return 200, vector("1")

    url = prometheus(slow)
    # The server does answer 200 after 1 s: raising proves the 0.2 s timeout cut it short.
    with pytest.raises(MetricsUnavailable, match="no answer"):
        query_prometheus(url, "up", timeout=0.2)


def test_run_check_reads_both_metrics_of_every_namespace(
    prometheus: Callable[[Answer], str],
) -> None:
    figures = {
        ("bar", "success"): "0.999", ("bar", "latency"): "42",
        ("foo", "success"): "0.9", ("foo", "latency"): "42",
    }  # fmt: skip

    def answer(query: str) -> tuple[int, bytes]:
        ns = re.search(r'destination_workload_namespace="([^"]+)"', query)
        kind = "success" if "response_code" in query else "latency"
        value = figures.get((ns.group(1) if ns else "", kind))
        return 200, vector(value) if value else vector()

    url = prometheus(answer)
    checks = run_check(url, ["bar", "foo", "qux"], params(), timeout=5)
    got = [(c.namespace, c.metric, c.outcome) for c in checks]
    assert got == [
        ("bar", RATE, CheckOutcome.PASSED),
        ("bar", P99, CheckOutcome.PASSED),
        ("foo", RATE, CheckOutcome.BREACHED),
        ("foo", P99, CheckOutcome.PASSED),
        ("qux", RATE, CheckOutcome.NO_DATA),
        ("qux", P99, CheckOutcome.NO_DATA),
    ]
    # with bar's own baseline of 10ms, 42ms is more than 1.5x: stricter than the fixed 500ms
    strict = run_check(url, ["bar"], params(), baseline={("bar", "p99_ms"): 10.0}, timeout=5)
    assert [(c.outcome, c.limit) for c in strict] == [
        (CheckOutcome.PASSED, 0.99),
        (CheckOutcome.BREACHED, 15.0),
    ]


def test_run_check_without_prometheus_fails_every_metric() -> None:
    checks = run_check(f"http://127.0.0.1:{_closed_port()}", ["bar"], params(), timeout=5)
    assert [c.outcome for c in checks] == [CheckOutcome.QUERY_FAILED] * 2
    _, result = next_state(GateState(0.0), checks, now=1.0, params=params(failure_limit=1))
    assert result is HealthVerdict.FAILED
