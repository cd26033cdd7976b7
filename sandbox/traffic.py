"""Traffic simulator: stands in for the Envoy sidecars' Istio standard metrics in the sandbox.

The sandbox's nodes are simulated (kwok), so injected pods become Running and Ready but no
Envoy runs and nothing produces `istio_requests_total`. This process lists the pods every
second, pretends each serving pod receives `rps` requests per second from the ingress
gateway, and publishes what the destination sidecars would report, for Prometheus to scrape.
Knobs (a JSON file and `GET`/`PUT /knobs`) set error rate and latency per proxy version or
namespace, so a canary revision can be made to fail on purpose.

Usage: python3 -m sandbox.traffic --server https://127.0.0.1:16443 --pki DIR \
           --listen 127.0.0.1:19464 --knobs PATH [--seed N]

Note: the label `destination_canonical_revision` carries the pod's Istio (control plane)
revision here, so queries can split by revision. In a real mesh it is the application's
canonical revision (label `service.istio.io/canonical-revision`, default "latest").
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

from sandbox.kubeapi import from_files
from sandbox.service import serve_and_poll

log = logging.getLogger("sandbox.traffic")

POLL_SECONDS = 1.0
DEFAULT_LISTEN = "127.0.0.1:19464"
# Istio's default buckets for istio_request_duration_milliseconds.
BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)  # fmt: skip
# Latency of one request is drawn uniformly within this fraction around the knob's
# latency_ms: bounded, so a test or a gate threshold knows which buckets it lands in.
LATENCY_SPREAD = 0.2
SOURCE_WORKLOAD = "istio-ingressgateway"
SOURCE_NAMESPACE = "istio-ingress"
STATUS_ANNOTATION = "sidecar.istio.io/status"
PROXY_CONTAINER = "istio-proxy"

DEFAULT_KNOBS: dict[str, Any] = {
    "rps": 5,
    "default": {"error_rate": 0.0, "latency_ms": 20},
    "versions": {},
    "namespaces": {},
}


# ---------------------------------------------------------------- pods


@dataclass(frozen=True)
class ServingPod:
    """A pod whose sidecar would be receiving traffic, with the labels its metrics carry."""

    uid: str
    namespace: str
    name: str
    workload: str
    revision: str
    proxy_version: str


def _is_ready(status: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _revision(annotations: Mapping[str, str]) -> str | None:
    """The `revision` of the sidecar status annotation: the injector that actually ran."""
    raw = annotations.get(STATUS_ANNOTATION)
    if not raw:
        return None
    try:
        status = json.loads(raw)
    except ValueError:
        return None
    revision = status.get("revision") if isinstance(status, dict) else None
    return revision if isinstance(revision, str) and revision else None


def image_tag(image: str) -> str | None:
    """The tag of an image reference (`reg:5000/proxyv2:1.30.4@sha256:..` -> `1.30.4`)."""
    image = image.split("@", 1)[0]
    _, sep, tag = image.rpartition(":")
    # A ':' before the last '/' belongs to a registry port, not a tag.
    if not sep or "/" in tag or not tag:
        return None
    return tag


def _proxy_version(spec: Mapping[str, Any]) -> str | None:
    for container in spec.get("containers") or []:
        if container.get("name") == PROXY_CONTAINER:
            return image_tag(container.get("image") or "")
    return None


def workload_name(metadata: Mapping[str, Any]) -> str:
    """Name of the workload owning a pod, as Istio derives it for `*_workload` labels."""
    name: str = metadata.get("name", "")
    owners = metadata.get("ownerReferences") or []
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if owner is None:
        return name
    kind, owner_name = owner.get("kind"), str(owner.get("name", ""))
    if kind == "ReplicaSet":
        # A Deployment's ReplicaSet is `<deployment>-<pod-template-hash>`.
        pod_hash = (metadata.get("labels") or {}).get("pod-template-hash")
        suffix = f"-{pod_hash}"
        if pod_hash and owner_name.endswith(suffix):
            return owner_name[: -len(suffix)]
        return owner_name
    if kind in ("StatefulSet", "DaemonSet"):
        return owner_name
    return name


def serving_pods(pod_list: Mapping[str, Any]) -> list[ServingPod]:
    """The pods of a PodList that serve traffic through an injected sidecar."""
    serving = []
    for pod in pod_list.get("items") or []:
        metadata = pod.get("metadata") or {}
        status = pod.get("status") or {}
        if status.get("phase") != "Running" or not _is_ready(status):
            continue
        if metadata.get("deletionTimestamp"):
            continue
        revision = _revision(metadata.get("annotations") or {})
        version = _proxy_version(pod.get("spec") or {})
        if revision is None or version is None:
            continue
        serving.append(
            ServingPod(
                uid=metadata.get("uid") or f"{metadata.get('namespace')}/{metadata.get('name')}",
                namespace=metadata.get("namespace", ""),
                name=metadata.get("name", ""),
                workload=workload_name(metadata),
                revision=revision,
                proxy_version=version,
            )
        )
    return serving


# ---------------------------------------------------------------- knobs


class KnobError(ValueError):
    """Knobs that fail validation; `field` names the offending entry."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path


class Knob(NamedTuple):
    """How the sidecars of one pod behave."""

    error_rate: float
    latency_ms: float


_ENTRY_FIELDS = ("error_rate", "latency_ms")


def _number(value: Any) -> bool:
    # bool is an int in Python but never a meaningful rate or latency.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validate_entry(path: str, entry: Any) -> dict[str, float]:
    if not isinstance(entry, dict):
        raise KnobError(path, f"must be an object with {' and/or '.join(_ENTRY_FIELDS)}")
    for key in entry:
        if key not in _ENTRY_FIELDS:
            raise KnobError(f"{path}.{key}", f"unknown field; use {', '.join(_ENTRY_FIELDS)}")
    if "error_rate" in entry:
        rate = entry["error_rate"]
        if not _number(rate) or not 0 <= rate <= 1:
            raise KnobError(f"{path}.error_rate", f"{rate!r} is not a number in [0, 1]")
    if "latency_ms" in entry:
        latency = entry["latency_ms"]
        if not _number(latency) or latency <= 0:
            raise KnobError(f"{path}.latency_ms", f"{latency!r} is not a number > 0")
    return dict(entry)


def validate_knobs(knobs: Any) -> dict[str, Any]:
    """Checked knobs with the top-level defaults filled in; raises KnobError naming the field."""
    if not isinstance(knobs, dict):
        raise KnobError("knobs", "must be a JSON object")
    for key in knobs:
        if key not in DEFAULT_KNOBS:
            raise KnobError(key, f"unknown field; use {', '.join(DEFAULT_KNOBS)}")
    rps = knobs.get("rps", DEFAULT_KNOBS["rps"])
    if not _number(rps) or rps <= 0:
        raise KnobError("rps", f"{rps!r} is not a number > 0")
    default = {**DEFAULT_KNOBS["default"], **_validate_entry("default", knobs.get("default", {}))}
    result: dict[str, Any] = {"rps": rps, "default": default}
    for section in ("versions", "namespaces"):
        entries = knobs.get(section, {})
        if not isinstance(entries, dict):
            raise KnobError(section, "must be an object keyed by name")
        result[section] = {
            name: _validate_entry(f"{section}[{name!r}]", entry) for name, entry in entries.items()
        }
    return result


def knob_for(knobs: Mapping[str, Any], namespace: str, version: str) -> Knob:
    """The behaviour of a pod in `namespace` whose proxy runs `version`."""
    # Precedence: namespace over version over default. Each level may set only some fields;
    # a missing field comes from the next level down, ending at the built-in default.
    merged: dict[str, float] = dict(DEFAULT_KNOBS["default"])
    merged.update(knobs.get("default") or {})
    merged.update((knobs.get("versions") or {}).get(version) or {})
    merged.update((knobs.get("namespaces") or {}).get(namespace) or {})
    return Knob(error_rate=float(merged["error_rate"]), latency_ms=float(merged["latency_ms"]))


class KnobStore:
    """The current knobs, backed by an optional JSON file that is re-read when it changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._knobs: dict[str, Any] = validate_knobs({})
        self._mtime_ns: int | None = None
        self.reload_if_changed()

    @property
    def knobs(self) -> dict[str, Any]:
        with self._lock:
            return self._knobs

    def reload_if_changed(self) -> None:
        """Re-read the file if its mtime moved; keep the last good knobs if it is invalid."""
        if self.path is None:
            return
        try:
            mtime_ns: int | None = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime_ns = None
        with self._lock:
            if mtime_ns == self._mtime_ns:
                return
            self._mtime_ns = mtime_ns
            if mtime_ns is None:
                self._knobs = validate_knobs({})
                log.info("knobs file=%s missing: using defaults", self.path)
                return
            try:
                self._knobs = validate_knobs(json.loads(self.path.read_text()))
            except (OSError, ValueError) as exc:
                log.error("knobs file=%s rejected, keeping previous knobs: %s", self.path, exc)
                return
            log.info("knobs file=%s loaded: %s", self.path, json.dumps(self._knobs))

    def replace(self, knobs: Any) -> dict[str, Any]:
        """Validate, store and (if there is a file) write new knobs; raises KnobError."""
        checked = validate_knobs(knobs)
        with self._lock:
            if self.path is not None:
                self._mtime_ns = _write_atomically(self.path, json.dumps(checked, indent=2) + "\n")
            self._knobs = checked
        log.info("knobs replaced via PUT: %s", json.dumps(checked))
        return checked


def _write_atomically(path: Path, text: str) -> int:
    """Write through a rename so a concurrent reader never sees half a file; returns mtime."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat().st_mtime_ns


# ---------------------------------------------------------------- traffic


class SeriesKey(NamedTuple):
    """Labels of one Istio metric series that vary (the rest are constant)."""

    workload: str
    namespace: str
    revision: str
    response_code: str


@dataclass
class Series:
    """Counter and histogram of one series; never decreases."""

    count: int = 0
    sum_ms: float = 0.0
    # Non-cumulative: bucket i counts requests in (BUCKETS_MS[i-1], BUCKETS_MS[i]]; the last
    # slot is the +Inf overflow. Rendered cumulatively.
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_MS) + 1))

    def observe(self, latency_ms: float) -> None:
        self.count += 1
        self.sum_ms += latency_ms
        self.buckets[bisect.bisect_left(BUCKETS_MS, latency_ms)] += 1


@dataclass
class TrafficState:
    """Accumulated metrics plus per-pod bookkeeping of the simulated request stream."""

    rng: random.Random = field(default_factory=random.Random)
    knobs: dict[str, Any] = field(default_factory=lambda: validate_knobs({}))
    series: dict[SeriesKey, Series] = field(default_factory=dict)
    pods: list[ServingPod] = field(default_factory=list)
    # uid -> (time of last advance, fractional requests not yet issued).
    _clock: dict[str, tuple[float, float]] = field(default_factory=dict)

    def advance(self, pods: Iterable[ServingPod], now: float) -> int:
        """Issue the requests the serving pods received since the last call; returns how many."""
        rps = float(self.knobs["rps"])
        clock: dict[str, tuple[float, float]] = {}
        issued = 0
        self.pods = sorted(pods, key=lambda p: (p.namespace, p.name))
        for pod in self.pods:
            # A pod seen for the first time starts its stream now; pods that left are dropped
            # from the bookkeeping (not from the series), so no credit for time not serving.
            last, carry = self._clock.get(pod.uid, (now, 0.0))
            due = carry + rps * max(0.0, now - last)
            n = int(due)
            clock[pod.uid] = (now, due - n)
            if n:
                self._issue(pod, n)
                issued += n
        self._clock = clock
        return issued

    def _issue(self, pod: ServingPod, n: int) -> None:
        knob = knob_for(self.knobs, pod.namespace, pod.proxy_version)
        for _ in range(n):
            code = "503" if self.rng.random() < knob.error_rate else "200"
            key = SeriesKey(pod.workload, pod.namespace, pod.revision, code)
            spread = self.rng.uniform(1 - LATENCY_SPREAD, 1 + LATENCY_SPREAD)
            self.series.setdefault(key, Series()).observe(knob.latency_ms * spread)


# ---------------------------------------------------------------- exposition


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _le(bound: float) -> str:
    # Envoy writes integral bounds without a fraction (le="25", not le="25.0").
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def _istio_labels(key: SeriesKey) -> list[tuple[str, str]]:
    return [
        ("reporter", "destination"),
        ("source_workload", SOURCE_WORKLOAD),
        ("source_workload_namespace", SOURCE_NAMESPACE),
        ("destination_workload", key.workload),
        ("destination_workload_namespace", key.namespace),
        ("destination_canonical_revision", key.revision),
        ("response_code", key.response_code),
        ("request_protocol", "http"),
    ]


def render_metrics(state: TrafficState) -> str:
    """The state in Prometheus text exposition format 0.0.4."""
    keys = sorted(state.series)
    lines = [
        "# HELP istio_requests_total Requests seen by the destination sidecar (simulated).",
        "# TYPE istio_requests_total counter",
    ]
    lines.extend(
        f"istio_requests_total{_labels(_istio_labels(key))} {state.series[key].count}"
        for key in keys
    )
    lines += [
        "# HELP istio_request_duration_milliseconds Request duration at the sidecar (simulated).",
        "# TYPE istio_request_duration_milliseconds histogram",
    ]
    for key in keys:
        series, labels = state.series[key], _istio_labels(key)
        cumulative = 0
        for bound, n in zip((*map(_le, BUCKETS_MS), "+Inf"), series.buckets, strict=True):
            cumulative += n
            lines.append(
                f"istio_request_duration_milliseconds_bucket{_labels([*labels, ('le', bound)])}"
                f" {cumulative}"
            )
        lines.append(f"istio_request_duration_milliseconds_sum{_labels(labels)} {series.sum_ms!r}")
        lines.append(f"istio_request_duration_milliseconds_count{_labels(labels)} {series.count}")
    lines += [
        "# HELP sandbox_serving_pods Pods the simulator currently sends traffic to.",
        "# TYPE sandbox_serving_pods gauge",
    ]
    counts: dict[tuple[str, str, str, str], int] = {}
    for pod in state.pods:
        group = (pod.namespace, pod.workload, pod.revision, pod.proxy_version)
        counts[group] = counts.get(group, 0) + 1
    for (namespace, workload, revision, version), n in sorted(counts.items()):
        gauge_labels = _labels(
            [
                ("namespace", namespace),
                ("workload", workload),
                ("revision", revision),
                ("proxy_version", version),
            ]
        )
        lines.append(f"sandbox_serving_pods{gauge_labels} {n}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- process


class Simulator:
    """Ties the pod source, the knobs and the state together; safe to use across threads."""

    def __init__(
        self,
        list_pods: Callable[[], Mapping[str, Any]],
        knobs: KnobStore,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.list_pods = list_pods
        self.knob_store = knobs
        self.clock = clock
        self.state = TrafficState(rng=rng or random.Random(), knobs=knobs.knobs)
        self._lock = threading.Lock()
        self._groups: dict[tuple[str, str, str], int] | None = None

    def tick(self) -> None:
        """One poll: re-read knobs, list pods, advance the simulated traffic."""
        self.knob_store.reload_if_changed()
        try:
            pods = serving_pods(self.list_pods())
        except Exception as exc:  # noqa: BLE001 - any failure of one poll must not end the loop
            # Skip this advance: pods keep their clocks, so the next good poll catches up.
            log.warning("list pods failed, will retry: %s", exc)
            return
        with self._lock:
            self.state.knobs = self.knob_store.knobs
            self.state.advance(pods, self.clock())
        self._log_changes(pods)

    def _log_changes(self, pods: list[ServingPod]) -> None:
        """Log the serving set once per change, not once per poll."""
        groups: dict[tuple[str, str, str], int] = {}
        for pod in pods:
            group = (pod.namespace, pod.revision, pod.proxy_version)
            groups[group] = groups.get(group, 0) + 1
        if groups != self._groups:
            summary = " ".join(
                f"{ns}/{rev}/{ver}={n}" for (ns, rev, ver), n in sorted(groups.items())
            )
            log.info("serving pods=%d namespace/revision/version: %s", len(pods), summary or "-")
            self._groups = groups

    def metrics(self) -> str:
        with self._lock:
            return render_metrics(self.state)

    def put_knobs(self, knobs: Any) -> dict[str, Any]:
        """Replace the knobs; they apply from the next tick's advance on."""
        return self.knob_store.replace(knobs)


class Handler(BaseHTTPRequestHandler):
    """GET /metrics, GET /knobs, PUT /knobs."""

    server: TrafficServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._reply(200, self.server.sim.metrics(), "text/plain; version=0.0.4; charset=utf-8")
        elif self.path == "/knobs":
            self._json(200, self.server.sim.knob_store.knobs)
        elif self.path == "/healthz":
            self._reply(200, "ok\n", "text/plain")
        else:
            self._json(404, {"error": f"no such path {self.path}; use /metrics or /knobs"})

    def do_PUT(self) -> None:
        if self.path != "/knobs":
            self._json(405, {"error": f"PUT {self.path} not allowed; use PUT /knobs"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError as exc:
            self._json(400, {"error": f"body: not JSON: {exc}"})
            return
        try:
            knobs = self.server.sim.put_knobs(body)
        except KnobError as exc:
            self._json(400, {"error": str(exc), "field": exc.field})
            return
        except OSError as exc:
            self._json(500, {"error": f"knobs not written: {exc}"})
            return
        self._json(200, knobs)

    def _json(self, status: int, body: Any) -> None:
        self._reply(status, json.dumps(body, indent=2) + "\n", "application/json")

    def _reply(self, status: int, text: str, content_type: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: Any) -> None:
        # Scrapes every few seconds would drown the log; requests show at debug level only.
        log.debug("http %s %s", self.address_string(), fmt % args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Knob changes and errors are worth a line; successful GETs are not.
        status = int(code) if str(code).isdigit() else 0
        if self.command != "GET" or status >= HTTPStatus.BAD_REQUEST:
            log.info("http method=%s path=%s status=%s", self.command, self.path, status)


class TrafficServer(ThreadingHTTPServer):
    """HTTP server that hands its handlers the simulator."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        super().__init__(address, Handler)
        self.sim = sim


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(
            f"--listen {value!r} is not host:port, e.g. {DEFAULT_LISTEN}"
        )
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    """Run the poll loop in the main thread and the HTTP server beside it until SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python3 -m sandbox.traffic", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--server", required=True, help="apiserver URL, e.g. https://127.0.0.1:16443"
    )
    parser.add_argument("--pki", required=True, help="folder with ca.crt, admin.crt, admin.key")
    parser.add_argument("--listen", type=parse_listen, default=DEFAULT_LISTEN, help="host:port")
    parser.add_argument("--knobs", type=Path, help="knobs JSON file (missing = defaults)")
    parser.add_argument("--seed", type=int, help="seed of the request outcomes and latencies")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s traffic %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    api = from_files(args.server, args.pki)
    sim = Simulator(
        lambda: api.get("/api/v1/pods"), KnobStore(args.knobs), rng=random.Random(args.seed)
    )
    server = TrafficServer(args.listen, sim)
    host, port = server.server_address[:2]
    log.info(
        "listening on http://%s:%s/metrics server=%s knobs=%s", host, port, args.server, args.knobs
    )
    serve_and_poll(server, sim.tick, POLL_SECONDS, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
