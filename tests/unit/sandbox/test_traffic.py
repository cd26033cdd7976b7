"""Unit tests of the sandbox traffic simulator (no apiserver: pods come through a seam)."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.traffic import (
    BUCKETS_MS,
    KnobError,
    KnobStore,
    ServingPod,
    Simulator,
    TrafficServer,
    TrafficState,
    image_tag,
    knob_for,
    parse_listen,
    render_metrics,
    serving_pods,
    validate_knobs,
)

OLD, NEW = "1.30.4-dev", "1.31.0-dev"


def pod(
    name: str = "web-7d9f8b6c4-abcde",
    namespace: str = "shop",
    *,
    phase: str = "Running",
    ready: str = "True",
    deleting: bool = False,
    status_annotation: str | None = '{"containers":["istio-proxy"],"revision":"1-30"}',
    proxy_image: str | None = f"docker.io/istio/proxyv2:{OLD}",
    owner: tuple[str, str] | None = ("ReplicaSet", "web-7d9f8b6c4"),
    pod_hash: str | None = "7d9f8b6c4",
) -> dict[str, Any]:
    """A pod as the apiserver returns it, healthy and injected unless told otherwise."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-{name}"}
    if status_annotation is not None:
        metadata["annotations"] = {"sidecar.istio.io/status": status_annotation}
    if pod_hash is not None:
        metadata["labels"] = {"pod-template-hash": pod_hash}
    if owner is not None:
        metadata["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    containers = [{"name": "app", "image": "nginx:1.27"}]
    if proxy_image is not None:
        containers.append({"name": "istio-proxy", "image": proxy_image})
    return {
        "metadata": metadata,
        "spec": {"containers": containers},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]},
    }


def serving(
    name: str, namespace: str = "shop", revision: str = "1-30", version: str = OLD
) -> ServingPod:
    """A serving pod whose workload is its name."""
    return ServingPod(f"uid-{name}", namespace, name, name, revision, version)


Sample = tuple[str, frozenset[tuple[str, str]]]
LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[Sample, float]:
    """Samples of a text exposition, keyed by metric name and label set."""
    samples: dict[Sample, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = LINE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        samples[(name, frozenset(LABEL.findall(labels or "")))] = float(value)
    return samples


def total(samples: dict[Sample, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


# ---------------------------------------------------------------- serving_pods


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({}, ("web", "1-30", OLD), id="deployment-pod-serves"),
        pytest.param({"phase": "Pending"}, None, id="pending-skipped"),
        pytest.param({"ready": "False"}, None, id="not-ready-skipped"),
        pytest.param({"deleting": True}, None, id="terminating-skipped"),
        pytest.param({"status_annotation": None}, None, id="not-injected-skipped"),
        pytest.param({"status_annotation": "{not json"}, None, id="garbled-status-skipped"),
        pytest.param({"status_annotation": '{"containers":[]}'}, None, id="no-revision-skipped"),
        pytest.param({"proxy_image": None}, None, id="no-istio-proxy-skipped"),
        pytest.param(
            {"proxy_image": "reg.local:5000/istio/proxyv2"}, None, id="untagged-proxy-skipped"
        ),
        pytest.param(
            {"status_annotation": '{"revision":"canary"}', "proxy_image": f"proxyv2:{NEW}"},
            ("web", "canary", NEW),
            id="revision-and-version-from-pod",
        ),
        pytest.param(
            {"owner": ("ReplicaSet", "web-other"), "pod_hash": "7d9f8b6c4"},
            ("web-other", "1-30", OLD),
            id="replicaset-without-hash-suffix-keeps-name",
        ),
        pytest.param(
            {"name": "db-0", "owner": ("StatefulSet", "db"), "pod_hash": None},
            ("db", "1-30", OLD),
            id="statefulset-owner",
        ),
        pytest.param(
            {"name": "agent-x1", "owner": ("DaemonSet", "agent"), "pod_hash": None},
            ("agent", "1-30", OLD),
            id="daemonset-owner",
        ),
        pytest.param(
            {"name": "loner", "owner": None, "pod_hash": None},
            ("loner", "1-30", OLD),
            id="bare-pod-uses-pod-name",
        ),
        pytest.param(
            {"name": "batch-x", "owner": ("Job", "batch"), "pod_hash": None},
            ("batch-x", "1-30", OLD),
            id="other-owner-uses-pod-name",
        ),
    ],
)
def test_serving_pods(kwargs: dict[str, Any], expected: tuple[str, str, str] | None) -> None:
    found = serving_pods({"items": [pod(**kwargs)]})
    assert [(p.workload, p.revision, p.proxy_version) for p in found] == (
        [expected] if expected else []
    )


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        pytest.param("docker.io/istio/proxyv2:1.30.4", "1.30.4", id="plain"),
        pytest.param("reg.local:5000/istio/proxyv2:1.31.0-dev", "1.31.0-dev", id="registry-port"),
        pytest.param("reg.local:5000/istio/proxyv2", None, id="port-but-no-tag"),
        pytest.param("proxyv2:1.30.4@sha256:abcd", "1.30.4", id="tag-and-digest"),
        pytest.param("auto", None, id="gateway-placeholder"),
    ],
)
def test_image_tag(image: str, tag: str | None) -> None:
    assert image_tag(image) == tag


# ---------------------------------------------------------------- knobs

KNOBS = {
    "default": {"error_rate": 0.01, "latency_ms": 30},
    "versions": {NEW: {"error_rate": 0.5, "latency_ms": 900}, "1.29.0": {"latency_ms": 50}},
    "namespaces": {"pinned": {"error_rate": 0.0}, "slow": {"latency_ms": 2000}},
}


@pytest.mark.parametrize(
    ("knobs", "namespace", "version", "expected"),
    [
        pytest.param({}, "shop", OLD, (0.0, 20.0), id="builtin-defaults"),
        pytest.param(
            {"default": {"latency_ms": 40}}, "shop", OLD, (0.0, 40.0), id="partial-default"
        ),
        pytest.param(KNOBS, "shop", OLD, (0.01, 30.0), id="default-level"),
        pytest.param(KNOBS, "shop", NEW, (0.5, 900.0), id="version-over-default"),
        pytest.param(KNOBS, "shop", "1.29.0", (0.01, 50.0), id="partial-version-inherits-default"),
        pytest.param(KNOBS, "pinned", NEW, (0.0, 900.0), id="namespace-over-version"),
        pytest.param(KNOBS, "slow", OLD, (0.01, 2000.0), id="partial-namespace-inherits-default"),
        pytest.param(KNOBS, "slow", NEW, (0.5, 2000.0), id="partial-namespace-inherits-version"),
    ],
)
def test_knob_for(
    knobs: dict[str, Any], namespace: str, version: str, expected: tuple[float, float]
) -> None:
    assert tuple(knob_for(validate_knobs(knobs), namespace, version)) == expected


@pytest.mark.parametrize(
    ("knobs", "field"),
    [
        pytest.param([], "knobs", id="not-an-object"),
        pytest.param({"rps": 0}, "rps", id="rps-zero"),
        pytest.param({"rps": "5"}, "rps", id="rps-string"),
        pytest.param({"rps": True}, "rps", id="rps-bool"),
        pytest.param({"default": {"error_rate": 1.5}}, "default.error_rate", id="rate-above-1"),
        pytest.param({"default": {"error_rate": -0.1}}, "default.error_rate", id="rate-negative"),
        pytest.param({"default": {"latency_ms": 0}}, "default.latency_ms", id="latency-zero"),
        pytest.param({"default": {"latency_ms": float("nan")}}, "default.latency_ms", id="nan"),
        pytest.param({"default": {"errors": 1}}, "default.errors", id="typo-in-entry"),
        pytest.param({"version": {}}, "version", id="typo-at-top"),
        pytest.param({"versions": []}, "versions", id="versions-not-object"),
        pytest.param(
            {"versions": {NEW: {"error_rate": 2}}},
            f"versions[{NEW!r}].error_rate",
            id="bad-version-entry",
        ),
        pytest.param({"namespaces": {"shop": 1}}, "namespaces['shop']", id="entry-not-object"),
    ],
)
def test_validate_knobs_rejects(knobs: Any, field: str) -> None:
    with pytest.raises(KnobError) as err:
        validate_knobs(knobs)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


def test_validate_knobs_fills_top_level_defaults() -> None:
    assert validate_knobs({"versions": {NEW: {"error_rate": 1}}}) == {
        "rps": 5,
        "default": {"error_rate": 0.0, "latency_ms": 20},
        "versions": {NEW: {"error_rate": 1}},
        "namespaces": {},
    }


def test_knob_store_follows_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "knobs.json"
    store = KnobStore(path)
    assert store.knobs["rps"] == 5, "missing file means defaults"
    path.write_text(json.dumps({"rps": 7}))
    store.reload_if_changed()
    assert store.knobs["rps"] == 7
    path.write_text('{"rps": -1}  ')  # another size, so the mtime surely moves too
    store.reload_if_changed()
    assert store.knobs["rps"] == 7, "an invalid file keeps the last good knobs"
    assert "rps: -1 is not a number > 0" in caplog.text
    path.unlink()
    store.reload_if_changed()
    assert store.knobs["rps"] == 5


# ---------------------------------------------------------------- advance


def state(knobs: dict[str, Any] | None = None, seed: int = 1) -> TrafficState:
    return TrafficState(rng=random.Random(seed), knobs=validate_knobs(knobs or {}))


def counts(s: TrafficState) -> dict[tuple[str, str], int]:
    """Requests per (workload, response code)."""
    out: dict[tuple[str, str], int] = {}
    for key, series in s.series.items():
        out[(key.workload, key.response_code)] = out.get((key.workload, key.response_code), 0)
        out[(key.workload, key.response_code)] += series.count
    return out


@pytest.mark.parametrize(
    ("rps", "steps", "expected"),
    [
        pytest.param(5, [10.0], 50, id="one-long-step"),
        pytest.param(5, [1.0] * 10, 50, id="ten-one-second-steps"),
        # Steps are binary fractions so the float sums are exact.
        pytest.param(5, [0.25] * 10, 12, id="fractions-carry-over"),
        pytest.param(5, [0.125] * 8, 5, id="no-step-alone-reaches-one-request"),
        pytest.param(0.5, [3.0, 3.0], 3, id="below-one-rps"),
    ],
)
def test_advance_issues_rps_times_elapsed(rps: float, steps: list[float], expected: int) -> None:
    s, now, pods = state({"rps": rps}), 100.0, [serving("web")]
    s.advance(pods, now)  # first sight: the stream starts here
    for step in steps:
        now += step
        s.advance(pods, now)
    assert sum(counts(s).values()) == expected


@pytest.mark.parametrize(
    ("knobs", "expected"),
    [
        pytest.param({}, {("old", "200"): 50, ("new", "200"): 50}, id="healthy"),
        pytest.param(
            {"versions": {NEW: {"error_rate": 1}}},
            {("old", "200"): 50, ("new", "503"): 50},
            id="new-version-fails",
        ),
        pytest.param(
            {"default": {"error_rate": 1}, "namespaces": {"shop": {"error_rate": 0}}},
            {("old", "200"): 50, ("new", "200"): 50},
            id="namespace-overrides-default",
        ),
    ],
)
def test_advance_applies_knobs(knobs: dict[str, Any], expected: dict[tuple[str, str], int]) -> None:
    s, pods = state(knobs), [serving("old"), serving("new", revision="1-31", version=NEW)]
    s.advance(pods, 0.0)
    s.advance(pods, 10.0)
    assert counts(s) == expected


def test_advance_error_rate_is_statistical() -> None:
    s = state({"rps": 100, "default": {"error_rate": 0.25}})
    s.advance([serving("web")], 0.0)
    s.advance([serving("web")], 100.0)
    c = counts(s)
    assert c[("web", "200")] + c[("web", "503")] == 10_000
    assert 2_300 < c[("web", "503")] < 2_700


@pytest.mark.parametrize(
    ("latency_ms", "low", "high"),
    [
        pytest.param(20, 10, 25, id="20ms-in-25-bucket"),
        pytest.param(800, 500, 1000, id="800ms-in-1000-bucket"),
    ],
)
def test_advance_latency_within_spread(latency_ms: float, low: float, high: float) -> None:
    s = state({"default": {"latency_ms": latency_ms}})
    s.advance([serving("web")], 0.0)
    s.advance([serving("web")], 20.0)
    (series,) = s.series.values()
    assert series.count == 100
    assert series.buckets[BUCKETS_MS.index(high)] == 100, "all in the (low, high] bucket"
    assert sum(series.buckets) == 100
    assert 0.8 * latency_ms * 100 <= series.sum_ms <= 1.2 * latency_ms * 100
    assert low < series.sum_ms / 100 <= high


def test_gone_pods_keep_their_counters_and_return_without_backfill() -> None:
    s = state()
    s.advance([serving("web")], 0.0)
    s.advance([serving("web")], 10.0)
    s.advance([], 20.0)
    assert counts(s) == {("web", "200"): 50}, "series of a gone pod keeps its value"
    s.advance([serving("web")], 100.0)
    s.advance([serving("web")], 101.0)
    assert counts(s) == {("web", "200"): 55}, "no requests for the time it was away"
    assert s.pods == [serving("web")]


def test_pods_of_one_workload_share_series() -> None:
    a = ServingPod("uid-a", "shop", "web-1", "web", "1-30", OLD)
    b = ServingPod("uid-b", "shop", "web-2", "web", "1-30", OLD)
    s = state()
    s.advance([a, b], 0.0)
    s.advance([a, b], 1.0)
    assert counts(s) == {("web", "200"): 10}


def test_same_seed_same_metrics() -> None:
    def run(seed: int) -> str:
        s = state({"default": {"error_rate": 0.3}}, seed=seed)
        s.advance([serving("web")], 0.0)
        s.advance([serving("web")], 30.0)
        return render_metrics(s)

    assert run(7) == run(7)
    assert run(7) != run(8)


# ---------------------------------------------------------------- render


def test_render_metrics_exact_series() -> None:
    s = state({"default": {"latency_ms": 20}})
    web = ServingPod("uid-1", "shop", "web-1", 'we"b', "1-30", OLD)
    s.advance([web], 0.0)
    s.advance([web], 2.0)
    text = render_metrics(s)
    labels = (
        'reporter="destination",source_workload="istio-ingressgateway",'
        'source_workload_namespace="istio-ingress",destination_workload="we\\"b",'
        'destination_workload_namespace="shop",destination_canonical_revision="1-30",'
        'response_code="200",request_protocol="http"'
    )
    assert f"istio_requests_total{{{labels}}} 10\n" in text
    assert f'istio_request_duration_milliseconds_bucket{{{labels},le="10"}} 0\n' in text
    assert f'istio_request_duration_milliseconds_bucket{{{labels},le="25"}} 10\n' in text
    assert f'istio_request_duration_milliseconds_bucket{{{labels},le="3600000"}} 10\n' in text
    assert f'istio_request_duration_milliseconds_bucket{{{labels},le="+Inf"}} 10\n' in text
    assert f"istio_request_duration_milliseconds_count{{{labels}}} 10\n" in text
    assert f"istio_request_duration_milliseconds_sum{{{labels}}} " in text
    assert (
        'sandbox_serving_pods{namespace="shop",workload="we\\"b",revision="1-30",'
        f'proxy_version="{OLD}"}} 1\n'
    ) in text
    assert "# TYPE istio_requests_total counter\n" in text
    assert "# TYPE istio_request_duration_milliseconds histogram\n" in text
    assert "# TYPE sandbox_serving_pods gauge\n" in text


def test_render_metrics_buckets_are_istio_defaults_and_cumulative() -> None:
    s = state({"default": {"latency_ms": 800}})
    s.advance([serving("web")], 0.0)
    s.advance([serving("web")], 4.0)
    samples = parse(render_metrics(s))
    buckets = sorted(
        (float(dict(ls)["le"]), v)
        for (name, ls), v in samples.items()
        if name == "istio_request_duration_milliseconds_bucket"
    )
    assert [b for b, _ in buckets] == [*map(float, BUCKETS_MS), float("inf")]
    values = [v for _, v in buckets]
    assert values == sorted(values), "buckets are cumulative"
    assert values[BUCKETS_MS.index(500)] == 0
    assert values[BUCKETS_MS.index(1000)] == 20


def test_render_metrics_passes_promtool() -> None:
    # promtool ships with Debian's prometheus package, which `make system-deps` installs.
    assert shutil.which("promtool"), "promtool missing: run `make system-deps`"
    s = state({"default": {"error_rate": 0.5}})
    s.advance([serving("web"), serving("db", namespace="data")], 0.0)
    s.advance([serving("web"), serving("db", namespace="data")], 10.0)
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=render_metrics(s),
        capture_output=True,
        text=True,
        check=False,
    )
    # Istio's own metric name breaks the base-unit naming lint; nothing else may be reported.
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line and 'instead of "milliseconds"' not in line
    ]
    assert problems == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("127.0.0.1:19464", ("127.0.0.1", 19464), id="host-port"),
        pytest.param(":19464", ("127.0.0.1", 19464), id="port-only"),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


# ---------------------------------------------------------------- HTTP, in process


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[str, Simulator, FakeClock, Path]]:
    """A simulator on an ephemeral port, fed a fixed pod list: one old and one new pod."""
    pod_list = {
        "items": [
            pod("web-7d9f8b6c4-aaaaa"),
            pod(
                "api-5c6d7e8f9-bbbbb",
                status_annotation='{"revision":"1-31"}',
                proxy_image=f"docker.io/istio/proxyv2:{NEW}",
                owner=("ReplicaSet", "api-5c6d7e8f9"),
                pod_hash="5c6d7e8f9",
            ),
        ]
    }
    clock, knobs_path = FakeClock(), tmp_path / "knobs.json"
    sim = Simulator(lambda: pod_list, KnobStore(knobs_path), rng=random.Random(3), clock=clock)
    server = TrafficServer(("127.0.0.1", 0), sim)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", sim, clock, knobs_path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def http(method: str, url: str, body: Any = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(base: str) -> dict[Sample, float]:
    status, text = http("GET", f"{base}/metrics")
    assert status == 200
    return parse(text)


def requests(samples: dict[Sample, float], workload: str, code: str) -> float:
    return total(samples, "istio_requests_total", destination_workload=workload, response_code=code)


def test_http_counters_grow_and_knob_fails_only_that_version(
    running: tuple[str, Simulator, FakeClock, Path],
) -> None:
    base, sim, clock, knobs_path = running
    sim.tick()
    clock.now += 10
    sim.tick()
    first = scrape(base)
    assert requests(first, "web", "200") == 50
    assert requests(first, "api", "200") == 50
    assert total(first, "sandbox_serving_pods", revision="1-31", proxy_version=NEW) == 1

    clock.now += 10
    sim.tick()
    second = scrape(base)
    assert requests(second, "web", "200") == 100, "counters grow with elapsed time"
    assert requests(second, "api", "200") == 100

    status, body = http("PUT", f"{base}/knobs", {"versions": {NEW: {"error_rate": 1}}})
    assert status == 200, body
    assert json.loads(knobs_path.read_text())["versions"] == {NEW: {"error_rate": 1}}
    status, body = http("GET", f"{base}/knobs")
    assert json.loads(body)["versions"] == {NEW: {"error_rate": 1}}

    clock.now += 10
    sim.tick()
    third = scrape(base)
    assert requests(third, "api", "200") == 100, "the failing version's successes stop"
    assert requests(third, "api", "503") == 50, "and only its 503s grow"
    assert requests(third, "web", "200") == 150
    assert requests(third, "web", "503") == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"rps": -1}, "rps", id="negative-rps"),
        pytest.param(
            {"versions": {NEW: {"error_rate": 2}}}, f"versions[{NEW!r}].error_rate", id="rate"
        ),
        pytest.param({"default": {"latency_ms": 0}}, "default.latency_ms", id="latency"),
    ],
)
def test_http_put_bad_knobs_is_400_naming_field(
    running: tuple[str, Simulator, FakeClock, Path], body: Any, field: str
) -> None:
    base, _, _, knobs_path = running
    status, text = http("PUT", f"{base}/knobs", body)
    assert status == 400
    assert json.loads(text)["field"] == field
    assert field in json.loads(text)["error"]
    assert not knobs_path.exists(), "a rejected PUT writes nothing"


def test_http_put_not_json_is_400(running: tuple[str, Simulator, FakeClock, Path]) -> None:
    base = running[0]
    req = urllib.request.Request(f"{base}/knobs", data=b"{nope", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 400


def test_http_unknown_path_is_404(running: tuple[str, Simulator, FakeClock, Path]) -> None:
    assert http("GET", f"{running[0]}/nope")[0] == 404
