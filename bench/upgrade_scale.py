"""How the upgrade scales with namespaces: the serial runbook, the floor and the DAG, measured
on one sandbox per size, plus the DAG file's parse cost; prints tables and ratios.

Per size N (the seed's foo, bar, baz, qux plus N-4 `mesh-NNNN` namespaces), on a sandbox of
its own, re-seeded to the old revision before each part:

- runbook: `bench/runbook.sh`, the procedure's commands one namespace after another;
- floor:   the same fixed steps timed one by one with istioctl/kubectl, plus per wave of the
           DAG's plan (canary first, then waves of `wave_concurrency` namespaces by name) all
           namespaces of the wave restarted at once and their rollouts awaited; summed;
- dag:     one run of the DAG under `airflow standalone` (scripts/demo.py; warmed up by one
           dry run when it starts), followed to its end: wall time, task instances, task
           instances `running` while the run waits (metric gate and waves), XCom bytes, peak
           RSS of Airflow and of the sandbox;
- API load of each: `apiserver_request_total` deltas by verb per upgraded namespace, the
  sandbox's idle background subtracted;
- parse (once): a fresh `import airflow.sdk` against a fresh import of the DAG file, CPU time
  and peak RSS, median of repeated interleaved runs.

Nothing here asserts a timing: the targets of issue 9 are printed next to the figures. The
exit status is non-zero when a part failed (a command, the DAG run), never for a missed target.

    make bench                                   # BENCH_SIZES, BENCH_POD_READY_MS
    .venv/bin/python bench/upgrade_scale.py --namespaces 8 --wave-concurrency 2 \\
        --pod-ready-ms 500 [--skip runbook,floor,dag,parse] [--json out.json]

Uses the bench sandbox and Airflow of the environment (SANDBOX_HOME, SANDBOX_*_PORT,
DEMO_HOME, DEMO_PORT), by default the ports of the Makefile's BENCH_ENV, never the default
sandbox. Stops the sandbox (down --purge) and the Airflow it started when done.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import sqlite3
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "include", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from sandbox import procfs  # noqa: E402
from sandbox.cli import parse_exports  # noqa: E402
from scripts import demo  # noqa: E402

SANDBOX = str(REPO / "sandbox" / "sandbox")
RUNBOOK = str(REPO / "bench" / "runbook.sh")
DAG_PATH = REPO / "dags" / demo.DAG_FILE
# The Makefile's BENCH_ENV and the bench's Airflow: used when the environment sets nothing,
# so that a bare `python bench/upgrade_scale.py` never touches the default sandbox or demo.
BENCH_DEFAULTS = {
    "SANDBOX_HOME": "/tmp/istio-canary-bench",
    "SANDBOX_ETCD_PORT": "23379",
    "SANDBOX_APISERVER_PORT": "27443",
    "SANDBOX_KWOK_PORT": "31247",
    "SANDBOX_KUBELET_PORT": "31250",
    "SANDBOX_TRAFFIC_PORT": "29564",
    "SANDBOX_PROMETHEUS_PORT": "29190",
    "DEMO_HOME": "/tmp/istio-canary-bench-airflow",
    "DEMO_PORT": "28180",
}
SEEDED = ("foo", "bar", "baz", "qux")  # the seed's application namespaces
WAVE_CONCURRENCY = {50: 10, 200: 25}  # issue 9's sizes; others: see default_wave_concurrency
FAN_OUT_PREFIX = "upgrade_namespace"  # task id (or group id) of the per-namespace fan-out
GATE_PREFIX = "metric_gate"
GATEWAY = "istio-ingress/istio-ingressgateway"
ROLLOUT_TIMEOUT = "10m"
PARTS = ("runbook", "floor", "dag", "parse")
VERBS = ("GET", "LIST", "WATCH", "POST", "PUT", "PATCH", "APPLY", "DELETE")
# The idle apiserver background is measured before each part, after a pause that lets the
# reseed's last pod deletions and status updates pass.
IDLE_SETTLE_SECONDS = 5.0
IDLE_SECONDS = 10.0
# Issue 9's targets.
TARGET_DAG_FLOOR = 1.25
TARGET_RUNBOOK_DAG = {50: 3.0, 200: 8.0}
TARGET_REQUESTS_PER_NS = 25.0
TARGET_SLOTS_WAITING = 0
# A task instance seen `running` this long without a break holds its worker slot while it
# waits; a namespace task's own run on a worker (its start and deferral) takes about a second.
HELD_SECONDS = 5.0
TARGET_PARSE = 1.10


class BenchError(RuntimeError):
    """A part of the benchmark could not be measured; the message says what failed."""


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def default_wave_concurrency(namespaces: int) -> int:
    """Issue 9's pairs (50 -> 10, 200 -> 25); other sizes about one eighth, at least 1."""
    return WAVE_CONCURRENCY.get(namespaces, max(1, round(namespaces / 8)))


def bench_env(base: Mapping[str, str], pod_ready_ms: int) -> dict[str, str]:
    """The environment of every child: the bench sandbox and Airflow, the pod-ready delay."""
    env = dict(base)
    if not env.get("SANDBOX_HOME"):
        env.update({k: v for k, v in BENCH_DEFAULTS.items() if k.startswith("SANDBOX_")})
    for key in ("DEMO_HOME", "DEMO_PORT"):
        env.setdefault(key, BENCH_DEFAULTS[key])
    env["SANDBOX_POD_READY_DELAY_MS"] = str(pod_ready_ms)
    return env


# --- the sandbox ---------------------------------------------------------------------------


@dataclass
class Box:
    """The bench sandbox: its environment and the exports of `sandbox/sandbox env`."""

    env: dict[str, str]
    exports: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return Path(self.env["SANDBOX_HOME"])

    @property
    def kubectl_bin(self) -> str:
        return self.exports["SANDBOX_KUBECTL"]

    @property
    def istioctl_new(self) -> str:
        return self.exports["SANDBOX_ISTIOCTL_NEW"]

    @property
    def child_env(self) -> dict[str, str]:
        return {**self.env, **self.exports}

    def sandbox(self, *args: str) -> None:
        """`sandbox/sandbox ARGS`; its log goes to our stderr, its exports are kept."""
        t0 = time.monotonic()
        out = subprocess.run([SANDBOX, *args], env=self.env, stdout=subprocess.PIPE, text=True)
        if out.returncode != 0:
            raise BenchError(f"sandbox/sandbox {' '.join(args)} exited {out.returncode}")
        self.exports.update(parse_exports(out.stdout))
        say(f"sandbox {' '.join(args)}: {time.monotonic() - t0:.1f}s")

    def up(self, extra_namespaces: int) -> None:
        self.sandbox("up", "--seed", "--extra-namespaces", str(extra_namespaces))

    def reset(self) -> None:
        self.sandbox("reset")

    def down(self) -> None:
        subprocess.run([SANDBOX, "down", "--purge"], env=self.env, check=False)

    def kubectl(self, *args: str) -> str:
        out = subprocess.run(
            [self.kubectl_bin, *args], env=self.child_env, capture_output=True, text=True
        )
        if out.returncode != 0:
            raise BenchError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def pids(self) -> set[int]:
        """The sandbox's component processes (each the leader of its process group)."""
        found = set()
        for path in (self.home / "pids").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                found.add(int(path.read_text()))
        return found


@dataclass(frozen=True)
class Revisions:
    old: str
    new: str


@dataclass(frozen=True)
class MeshPlan:
    """The namespaces to move, as the DAG plans them: canary first, then waves by name."""

    canary: str
    waves: tuple[tuple[str, ...], ...]
    workloads: dict[str, tuple[str, ...]]  # namespace -> kind/name to restart

    @property
    def namespaces(self) -> int:
        return 1 + sum(len(w) for w in self.waves)


def mesh_plan(box: Box, wave_concurrency: int, tag: str = "default") -> MeshPlan:
    """Read the meshed namespaces and their workloads (not timed: planning is not the floor)."""
    names: set[str] = set()
    for selector in (f"istio.io/rev={tag}", "istio-injection=enabled"):
        names |= set(box.kubectl("get", "namespaces", "-l", selector, "-o", "name").split())
    gateway_ns = GATEWAY.split("/")[0]
    meshed = sorted(n.removeprefix("namespace/") for n in names if n != f"namespace/{gateway_ns}")
    columns = "custom-columns=NS:.metadata.namespace,KIND:.kind,NAME:.metadata.name"
    rows = box.kubectl(
        "get", "deployment,statefulset,daemonset", "-A", "-o", columns, "--no-headers"
    )
    workloads: dict[str, list[str]] = {}
    for line in rows.splitlines():
        ns, kind, name = line.split()
        workloads.setdefault(ns, []).append(f"{kind.lower()}/{name}")
    movable = [n for n in meshed if workloads.get(n)]
    if not movable:
        raise BenchError(f"no namespace with workloads follows tag {tag!r}")
    rest = movable[1:]
    waves = tuple(
        tuple(rest[i : i + wave_concurrency]) for i in range(0, len(rest), wave_concurrency)
    )
    return MeshPlan(movable[0], waves, {n: tuple(workloads[n]) for n in movable})


# --- sampling: apiserver requests and process memory ---------------------------------------

_REQUEST_LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class ApiserverMetrics:
    """`apiserver_request_total` of the sandbox's apiserver, summed by verb (the apiserver
    does not count the /metrics requests themselves; a WATCH counts when it ends)."""

    def __init__(self, box: Box) -> None:
        pki = box.home / "pki"
        self.url = f"https://127.0.0.1:{box.env['SANDBOX_APISERVER_PORT']}/metrics"
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def scrape(self) -> Counter[str]:
        with urllib.request.urlopen(self.url, context=self.ctx, timeout=30) as resp:
            text = resp.read().decode()
        counts: Counter[str] = Counter()
        for line in text.splitlines():
            m = _REQUEST_LINE.match(line)
            if m:
                labels = dict(_LABEL.findall(m["labels"]))
                counts[labels.get("verb", "?")] += int(float(m["value"]))
        return counts


def idle_rate(metrics: ApiserverMetrics, seconds: float = IDLE_SECONDS) -> dict[str, float]:
    """Requests per second by verb while nothing of ours runs (controllers, kwok, ...)."""
    time.sleep(IDLE_SETTLE_SECONDS)
    t0, before = time.monotonic(), metrics.scrape()
    time.sleep(seconds)
    after = metrics.scrape()
    took = time.monotonic() - t0
    return {verb: (after[verb] - before[verb]) / took for verb in set(after) | set(before)}


@dataclass
class Requests:
    """Apiserver requests of a stretch of time, by verb, the idle background subtracted."""

    by_verb: dict[str, float]
    seconds: float
    background: float = 0.0  # requests subtracted as the idle background

    @classmethod
    def between(
        cls, before: Counter[str], after: Counter[str], seconds: float, idle: Mapping[str, float]
    ) -> Requests:
        verbs = set(before) | set(after) | set(idle)
        return cls(
            {v: after[v] - before[v] - idle.get(v, 0.0) * seconds for v in verbs},
            seconds,
            sum(idle.values()) * seconds,
        )

    @property
    def total(self) -> float:
        return sum(self.by_verb.values())

    def minus(self, other: Requests) -> Requests:
        verbs = set(self.by_verb) | set(other.by_verb)
        return Requests(
            {v: self.by_verb.get(v, 0.0) - other.by_verb.get(v, 0.0) for v in verbs},
            self.seconds - other.seconds,
            self.background - other.background,
        )


def tree_memory(roots: Iterable[int], table: Mapping[int, procfs.Stat]) -> tuple[int, int]:
    """(RSS, PSS) bytes summed over the processes under `roots`, them included. The RSS sum
    counts pages that forked processes share once per process; PSS splits them fairly."""
    rss = pss = 0
    for pid in procfs.descendants(roots, table):
        with contextlib.suppress(OSError, ValueError, IndexError):
            rss += table[pid].rss_bytes
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            pss += int(rollup.split("\nPss:", 1)[1].split()[0]) * 1024
    return rss, pss


# Airflow's processes by what `airflow standalone` starts; a scheduler's descendants are
# LocalExecutor workers and the task processes they fork (their CPU is the task starts').
ROLES = ("scheduler", "api-server", "triggerer", "dag-processor")
TASKS = "task processes"


def cpu_by_role(airflow_pid: int | None, sandbox_pids: Iterable[int]) -> dict[str, float]:
    """CPU seconds so far of Airflow's processes by role, of the task processes under the
    scheduler, and of the sandbox. A process's children count once reaped (cutime); one that
    started and ended between two readings counts in its parent's figure."""
    table = procfs.stats()
    cpu: Counter[str] = Counter()
    for top in [pid for pid, s in table.items() if s.parent == airflow_pid]:
        role = "other"
        with contextlib.suppress(OSError):
            title = procfs.cmdline(top).replace("_", "-")  # the api-server calls itself api_server
            role = next((r for r in ROLES if f"airflow {r}" in title), "other")
        for pid in procfs.descendants([top], table):
            cpu[TASKS if role == "scheduler" and pid != top else role] += table[pid].cpu_seconds
    for pid in procfs.descendants(sandbox_pids, table):
        cpu["sandbox"] += table[pid].cpu_seconds
    return dict(cpu)


@dataclass
class Sample:
    t: float  # time.time()
    requests: Counter[str]
    airflow: tuple[int, int]  # (RSS, PSS) bytes
    sandbox: tuple[int, int]
    scraped: bool  # `requests` read now (else carried over from the last scrape)


class Sampler:
    """Every ~1 s in a thread: the apiserver's counters and the RSS of Airflow and sandbox."""

    def __init__(
        self,
        metrics: ApiserverMetrics,
        sandbox_pids: Callable[[], set[int]],
        airflow_pid: int | None = None,
        every: float = 1.0,
        scrape_every: int = 2,
    ) -> None:
        self.metrics, self.sandbox_pids, self.airflow_pid = metrics, sandbox_pids, airflow_pid
        self.every, self.scrape_every = every, scrape_every
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.errors = 0

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # a last one, after the measured stretch ended

    def sample(self, scrape: bool = True) -> None:
        """RSS always; the apiserver's counters when `scrape` (its /metrics is ~3 MB)."""
        requests = None
        if scrape or not self.samples:
            try:
                requests = self.metrics.scrape()
            except OSError:
                self.errors += 1
        scraped = requests is not None
        if requests is None:
            requests = self.samples[-1].requests if self.samples else Counter()
        table = procfs.stats()
        airflow = tree_memory([self.airflow_pid], table) if self.airflow_pid else (0, 0)
        sandbox = tree_memory(self.sandbox_pids(), table)
        self.samples.append(Sample(time.time(), requests, airflow, sandbox, scraped))

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.sample(scrape=tick % self.scrape_every == 0)
            tick += 1
            self._stop.wait(max(0.0, self.every - (time.monotonic() - t0)))

    def at_or_before(self, t: float) -> Sample:
        """The last sample with fresh counters at or before `t` (else the first)."""
        scraped = [s for s in self.samples if s.scraped]
        before = [s for s in scraped if s.t <= t]
        return before[-1] if before else scraped[0]

    def at_or_after(self, t: float) -> Sample:
        """The first sample with fresh counters at or after `t` (else the last)."""
        scraped = [s for s in self.samples if s.scraped]
        after = [s for s in scraped if s.t >= t]
        return after[0] if after else scraped[-1]

    def peak(self, what: str) -> tuple[int, int]:
        """The highest (RSS, PSS) sums of `what` (airflow or sandbox), each its own peak."""
        values = [getattr(s, what) for s in self.samples] or [(0, 0)]
        return max(v[0] for v in values), max(v[1] for v in values)


# --- the runbook ---------------------------------------------------------------------------


@dataclass
class RunbookResult:
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    requests: Requests | None = None
    requests_namespaces: Requests | None = None  # the namespaces after the canary
    error: str = ""


def run_runbook(box: Box, metrics: ApiserverMetrics, log: Path, timeout: float) -> RunbookResult:
    """bench/runbook.sh from the seeded state; its `[runbook]` marks time the steps."""
    result = RunbookResult()
    idle = idle_rate(metrics)
    begun: dict[str, float] = {}
    snaps: dict[str, tuple[float, Counter[str]]] = {}
    t0 = time.monotonic()
    snaps["start"] = (t0, metrics.scrape())
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [RUNBOOK], env=box.child_env, stdout=subprocess.PIPE, stderr=err, text=True
        )
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if len(parts) < 4 or parts[0] != "[runbook]" or parts[2] not in ("begin", "end"):
                continue
            stamp, edge, step = float(parts[1]), parts[2], parts[3]
            if step == "namespaces":
                snaps[edge] = (time.monotonic(), metrics.scrape())
            if edge == "begin":
                begun[step] = stamp
            elif step in begun:
                result.steps[step] = stamp - begun[step]
        rc = proc.wait()
        watchdog.cancel()
    t1 = time.monotonic()
    result.seconds = t1 - t0
    end = metrics.scrape()
    result.requests = Requests.between(snaps["start"][1], end, t1 - t0, idle)
    if "begin" in snaps and "end" in snaps:
        (ta, a), (tb, b) = snaps["begin"], snaps["end"]
        result.requests_namespaces = Requests.between(a, b, tb - ta, idle)
    if rc != 0:
        tail = log.read_text().splitlines()[-5:]
        result.error = f"bench/runbook.sh exited {rc}; {log}: " + " | ".join(tail)
    return result


# --- the floor -----------------------------------------------------------------------------


@dataclass
class FloorResult:
    steps: dict[str, float] = field(default_factory=dict)  # fixed steps, in order
    waves: list[float] = field(default_factory=list)  # wall time of each wave
    requests: Requests | None = None
    requests_waves: Requests | None = None
    error: str = ""

    @property
    def seconds(self) -> float:
        return sum(self.steps.values()) + sum(self.waves)


def _run(box: Box, *argv: str) -> None:
    out = subprocess.run(argv, env=box.child_env, capture_output=True, text=True)
    if out.returncode != 0:
        cmd = " ".join([Path(argv[0]).name, *argv[1:]])
        raise BenchError(f"{cmd} exited {out.returncode}: {(out.stderr or out.stdout)[-300:]}")


def restart_and_wait(box: Box, namespace: str, workloads: tuple[str, ...]) -> float:
    """`kubectl rollout restart` every workload of a namespace, then `rollout status` each."""
    t0 = time.monotonic()
    _run(box, box.kubectl_bin, "rollout", "restart", "-n", namespace, *workloads)
    for w in workloads:
        status = ["rollout", "status", "-n", namespace, w, f"--timeout={ROLLOUT_TIMEOUT}"]
        _run(box, box.kubectl_bin, *status)
    return time.monotonic() - t0


def run_floor(
    box: Box, metrics: ApiserverMetrics, plan: MeshPlan, revisions: Revisions
) -> FloorResult:
    """The fixed steps one by one, then each wave's namespaces all at once; each timed."""
    result = FloorResult()
    idle = idle_rate(metrics)
    istioctl = box.istioctl_new
    gw_ns, gw = GATEWAY.split("/")
    install = ["install", "--set", f"revision={revisions.new}", "--set", "profile=minimal", "-y"]
    tag = ["tag", "set", "default", "--revision", revisions.new, "--overwrite", "-y"]
    fixed: list[tuple[str, Callable[[], object]]] = [
        ("precheck", lambda: _run(box, istioctl, "x", "precheck")),
        ("install", lambda: _run(box, istioctl, *install)),
        ("tag", lambda: _run(box, istioctl, *tag)),
        ("gateway", lambda: restart_and_wait(box, gw_ns, (f"deployment/{gw}",))),
        ("canary", lambda: restart_and_wait(box, plan.canary, plan.workloads[plan.canary])),
    ]
    t_start, start = time.monotonic(), metrics.scrape()
    try:
        for name, step in fixed:
            t0 = time.monotonic()
            step()
            result.steps[name] = time.monotonic() - t0
        t_waves, waves_start = time.monotonic(), metrics.scrape()
        for wave in plan.waves:
            t0 = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(len(wave)) as pool:
                jobs = [pool.submit(restart_and_wait, box, ns, plan.workloads[ns]) for ns in wave]
                for job in jobs:
                    job.result()
            result.waves.append(time.monotonic() - t0)
        t_end, waves_end = time.monotonic(), metrics.scrape()
        result.requests_waves = Requests.between(waves_start, waves_end, t_end - t_waves, idle)
        t0 = time.monotonic()
        _run(box, istioctl, "uninstall", "--revision", revisions.old, "-y")
        result.steps["uninstall"] = time.monotonic() - t0
    except BenchError as err:
        result.error = str(err)
    end = metrics.scrape()
    result.requests = Requests.between(start, end, time.monotonic() - t_start, idle)
    return result


# --- the DAG under airflow standalone ------------------------------------------------------


@dataclass
class DagResult:
    seconds: float = 0.0  # trigger to the run's end
    state: str = ""
    run_id: str = ""
    task_instances: int = 0
    ti_states: dict[str, int] = field(default_factory=dict)
    retries: int = 0  # tries beyond the first, summed
    slots_held: int | None = None  # most TIs at once `running` >= HELD_SECONDS while it waits
    slots_waiting: int | None = None  # most TIs `running` at once while the run waits
    slots_waiting_tasks: list[str] = field(default_factory=list)  # running at that peak
    slots_mean_waiting: float | None = None
    deferred_peak: int = 0
    fan_out_seconds: float | None = None  # first fan-out start to last fan-out end
    xcom_entries: int | None = None
    xcom_bytes: int | None = None
    xcom_largest: list[tuple[str, int]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds in the run, by process
    airflow_memory: tuple[int, int] = (0, 0)  # peak (RSS, PSS) sums, bytes
    sandbox_memory: tuple[int, int] = (0, 0)
    requests: Requests | None = None
    requests_waves: Requests | None = None
    failures: list[str] = field(default_factory=list)
    error: str = ""


def warm_up(api: demo.Api, box: dict[str, str]) -> None:
    """One dry run before any measured run: a deployed Airflow has run the DAG before,
    and a fresh one spends about 3 s once on its first task (measured: the first task's
    start waits that long for the execution API, later ones 20 ms)."""
    run_id = demo.trigger(api, {**demo.conf_for(box), "dry_run": True})
    say(f"warm-up: dry run {run_id}")
    with contextlib.redirect_stdout(sys.stderr):
        state = demo.follow(api, run_id, timeout=300)
    if state != "success":
        raise BenchError(f"the warm-up dry run {run_id} ended {state}")


class Airflow:
    """The bench's `airflow standalone` (scripts/demo.py), started on first use."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.demo = demo.Demo.from_env(env)
        self.stack: demo.Stack | None = None
        self.api: demo.Api | None = None
        self.started = False  # a start was attempted: stop() must run, even if it failed

    def up(self) -> demo.Stack:
        if self.stack is None:
            self.started = True
            with contextlib.redirect_stdout(sys.stderr):  # demo.py's progress lines
                self.stack = demo.bring_up(self.demo, self.env)
            self.api = self.stack.api()
            warm_up(self.api, self.stack.box)
        self.api = self.stack.api()
        return self.stack

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """The REST API; logs in again when the token expired."""
        assert self.stack is not None and self.api is not None
        try:
            return self.api.call(method, path, body, **query)
        except demo.ApiError as err:
            if err.status != 401:
                raise
            self.api = self.stack.api()
            return self.api.call(method, path, body, **query)

    def task_instances(self, run_id: str, **query: Any) -> tuple[int, list[dict[str, Any]]]:
        """Every task instance of the run (paged), and the API's total_entries."""
        path = f"/api/v2/dags/{demo.DAG_ID}/dagRuns/{run_id}/taskInstances"
        out: list[dict[str, Any]] = []
        total = 0
        while True:
            page = self.call("GET", path, limit=100, offset=len(out), **query)
            total = int(page.get("total_entries", 0))
            out += page["task_instances"]
            if not page["task_instances"] or len(out) >= total:
                return total, out

    def stop(self) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            demo.stop_demo(self.demo, purge=True, env=self.env)


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def xcom_size(airflow_home: Path, run_id: str) -> tuple[int, int, list[tuple[str, int]]]:
    """(entries, bytes, the three largest task ids by bytes) of the run's XComs, read from
    Airflow's SQLite DB (the REST API lists XComs but not their size)."""
    db = sqlite3.connect(f"file:{airflow_home / 'airflow.db'}?mode=ro", uri=True, timeout=30)
    try:
        where = "WHERE dag_id = ? AND run_id = ?"
        n, size = db.execute(
            f"SELECT count(*), coalesce(sum(length(CAST(value AS BLOB))), 0) FROM xcom {where}",
            (demo.DAG_ID, run_id),
        ).fetchone()
        largest = db.execute(
            f"SELECT task_id, sum(length(CAST(value AS BLOB))) AS b FROM xcom {where} "
            "GROUP BY task_id ORDER BY b DESC LIMIT 3",
            (demo.DAG_ID, run_id),
        ).fetchall()
    finally:
        db.close()
    return int(n), int(size), [(str(t), int(b)) for t, b in largest]


def run_dag(
    airflow: Airflow,
    box: Box,
    metrics: ApiserverMetrics,
    wave_concurrency: int,
    timeout: float,
    out: TextIO,
) -> DagResult:
    """One DAG run followed to its end, sampling running task instances every ~1 s."""
    result = DagResult()
    stack = airflow.up()
    conf = {
        **demo.conf_for(stack.box),
        "wave_concurrency": wave_concurrency,
        "bake_seconds": 0,
        "require_approval": False,
    }
    idle = idle_rate(metrics)
    api = airflow.api
    assert api is not None
    follower = demo.Follower(out, explain=lambda ti: demo.failure_of(api, run_id, ti))
    # (time, running task instances as (task_id, map_index), how many deferred)
    running: list[tuple[float, list[tuple[str, int]], int]] = []
    cpu_before = cpu_by_role(stack.pid, box.pids())
    with Sampler(metrics, box.pids, stack.pid) as sampler:
        t_trigger = time.time()
        run_id = demo.trigger(api, conf)
        result.run_id = run_id
        say(f"triggered {run_id}: {json.dumps(conf)}")
        deadline = time.monotonic() + timeout
        last_full = 0.0
        while True:
            run = airflow.call("GET", f"/api/v2/dags/{demo.DAG_ID}/dagRuns/{run_id}")
            _, active = airflow.task_instances(run_id, state=["running", "deferred"])
            now = time.time()
            running.append(
                (
                    now,
                    sorted(
                        (t["task_id"], t["map_index"]) for t in active if t["state"] == "running"
                    ),
                    sum(t["state"] == "deferred" for t in active),
                )
            )
            if time.monotonic() - last_full > 5 or run["state"] in ("success", "failed"):
                last_full = time.monotonic()
                follower.update(airflow.task_instances(run_id)[1])
            if run["state"] in ("success", "failed"):
                follower.finish()
                result.state = str(run["state"])
                end = _ts(run.get("end_date")) or now
                result.seconds = end - t_trigger
                break
            if time.monotonic() > deadline:
                result.state = str(run["state"])
                result.seconds = now - t_trigger
                result.error = f"run {run_id} still {run['state']} after {timeout:.0f}s"
                break
            time.sleep(max(0.0, 1.0 - (time.time() - now)))
    cpu_after = cpu_by_role(stack.pid, box.pids())
    result.cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_after.items()}
    total, tis = airflow.task_instances(run_id)
    result.task_instances = total
    result.ti_states = dict(Counter(str(t["state"]) for t in tis))
    result.retries = sum(max(0, int(t.get("try_number") or 1) - 1) for t in tis)
    result.failures = [
        f"{demo.label(t)} {t['state']}: {demo.failure_of(api, run_id, t) or 'see its log'}"
        for t in tis
        if t["state"] in ("failed", "up_for_retry")
    ][:10]
    if result.state != "success" and not result.error:
        result.error = f"run {run_id} ended {result.state}"

    # The run waits from the metric gate (or the first fan-out task) to the last fan-out end.
    fan = [t for t in tis if t["task_id"].startswith(FAN_OUT_PREFIX)]
    gate = [t for t in tis if t["task_id"].startswith(GATE_PREFIX)]
    starts = [s for t in fan if (s := _ts(t.get("start_date")))]
    ends = [e for t in fan if (e := _ts(t.get("end_date")))]
    wait_from = min([s for t in gate if (s := _ts(t.get("start_date")))] or starts or [0.0])
    wait_to = max(ends) if ends else max((s[0] for s in running), default=0.0)
    waiting = [r for r in running if wait_from <= r[0] <= wait_to]
    if waiting:
        result.slots_held = held_slots(waiting)
        peak = max(waiting, key=lambda r: len(r[1]))
        result.slots_waiting = len(peak[1])
        # mapped instances are named (map_index_template) only once they ran: name them now
        names = {(t["task_id"], t["map_index"]): demo.label(t) for t in tis}
        result.slots_waiting_tasks = [names.get(k, f"{k[0]}[{k[1]}]") for k in peak[1][:8]]
        result.slots_mean_waiting = statistics.fmean(len(r[1]) for r in waiting)
    result.deferred_peak = max((r[2] for r in running), default=0)

    samples = [s for s in sampler.samples if s.scraped]
    if samples:
        first, last = samples[0], samples[-1]
        result.requests = Requests.between(first.requests, last.requests, last.t - first.t, idle)
        if starts and ends:
            result.fan_out_seconds = max(ends) - min(starts)
            a, b = sampler.at_or_before(min(starts)), sampler.at_or_after(max(ends))
            result.requests_waves = Requests.between(a.requests, b.requests, b.t - a.t, idle)
    result.airflow_memory = sampler.peak("airflow")
    result.sandbox_memory = sampler.peak("sandbox")
    try:
        result.xcom_entries, result.xcom_bytes, result.xcom_largest = xcom_size(
            airflow.demo.airflow_home, run_id
        )
    except sqlite3.Error as err:
        say(f"xcom size unreadable: {err}")
    return result


# --- the parse cost ------------------------------------------------------------------------


@dataclass
class ParseResult:
    runs: int
    sdk_cpu: float = 0.0  # median user+sys seconds of `import airflow.sdk`
    dag_cpu: float = 0.0  # median user+sys seconds of importing the DAG file
    sdk_rss: int = 0  # median peak RSS, bytes
    dag_rss: int = 0
    sdk_wall: float = 0.0
    dag_wall: float = 0.0
    error: str = ""

    @property
    def ratio(self) -> float:
        return self.dag_cpu / self.sdk_cpu if self.sdk_cpu else float("nan")


IMPORT_DAG = (
    "import importlib.util as u, sys; "
    "s = u.spec_from_file_location('istio_canary_upgrade', sys.argv[1]); "
    "m = u.module_from_spec(s); s.loader.exec_module(m)"
)


def child_cost(argv: list[str], env: Mapping[str, str]) -> tuple[float, int, float]:
    """(user+sys seconds, peak RSS bytes, wall seconds) of one child, from its own rusage
    (os.wait4: the child's figures alone, which RUSAGE_CHILDREN's maxrss cannot give)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise BenchError(
            f"{' '.join(argv[-2:])} exited {proc.returncode}: "
            f"{err.decode(errors='replace').strip()[-500:]}"
        )
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, wall


def run_parse(runs: int, home: Path) -> ParseResult:
    """Fresh interpreters, interleaved, one warm-up each: `import airflow.sdk` vs the DAG."""
    result = ParseResult(runs)
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'include'}{os.pathsep}{REPO}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    }
    sdk = [sys.executable, "-c", "import airflow.sdk"]
    dag = [sys.executable, "-c", IMPORT_DAG, str(DAG_PATH)]
    costs: dict[str, list[tuple[float, int, float]]] = {"sdk": [], "dag": []}
    try:
        for i in range(runs + 1):
            for name, argv in (("sdk", sdk), ("dag", dag)):
                cost = child_cost(argv, env)
                if i:  # the first round warms the page cache and writes .pyc files
                    costs[name].append(cost)
    except BenchError as err:
        result.error = str(err)
    for name, got in costs.items():
        if got:
            setattr(result, f"{name}_cpu", statistics.median(c[0] for c in got))
            setattr(result, f"{name}_rss", int(statistics.median(c[1] for c in got)))
            setattr(result, f"{name}_wall", statistics.median(c[2] for c in got))
    return result


# --- one size ------------------------------------------------------------------------------


@dataclass
class SizeResult:
    namespaces: int
    wave_concurrency: int
    pod_ready_ms: int
    plan_waves: int = 0
    runbook: RunbookResult | None = None
    floor: FloorResult | None = None
    dag: DagResult | None = None
    errors: list[str] = field(default_factory=list)


def run_size(
    namespaces: int,
    wave_concurrency: int,
    pod_ready_ms: int,
    parts: set[str],
    env: dict[str, str],
    airflow: Airflow,
    logs: Path,
) -> SizeResult:
    """One fresh sandbox with `namespaces` meshed namespaces: runbook, floor, DAG on it."""
    result = SizeResult(namespaces, wave_concurrency, pod_ready_ms)
    box = Box(env)
    say(f"size {namespaces}: fresh sandbox, pod ready after {pod_ready_ms} ms")
    box.down()
    box.up(namespaces - len(SEEDED))
    revisions = Revisions(box.exports["SANDBOX_OLD_REVISION"], box.exports["SANDBOX_NEW_REVISION"])
    metrics = ApiserverMetrics(box)
    plan = mesh_plan(box, wave_concurrency)
    result.plan_waves = len(plan.waves)
    if plan.namespaces != namespaces:
        say(f"the sandbox has {plan.namespaces} meshed namespaces, not {namespaces}")
    # generous: the runbook's rollouts one after another, plus the fixed steps
    timeout = 600 + namespaces * (pod_ready_ms / 1000 + 10)
    fresh = True
    for part in ("runbook", "floor", "dag"):
        if part not in parts:
            continue
        try:
            if not fresh:
                box.reset()
            fresh = False
            say(f"size {namespaces}: {part}")
            if part == "runbook":
                result.runbook = run_runbook(
                    box, metrics, logs / f"runbook-{namespaces}.log", timeout
                )
                error = result.runbook.error
            elif part == "floor":
                result.floor = run_floor(box, metrics, plan, revisions)
                error = result.floor.error
            else:
                result.dag = run_dag(airflow, box, metrics, wave_concurrency, timeout, sys.stderr)
                error = result.dag.error
        except (BenchError, demo.DemoError, OSError) as err:
            error = f"{type(err).__name__}: {err}"
        if error:
            result.errors.append(f"{part}: {error}")
            say(f"size {namespaces}: {part} FAILED: {error}")
    return result


# --- the report ----------------------------------------------------------------------------


def _s(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _mib(value: int | None) -> str:
    return "-" if not value else f"{value / 2**20:.0f} MiB"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


Rows = list[list[str]]


_NUMBER = re.compile(r"^([<>]=? )?-?[\d.,]+")  # a cell that starts with a figure


def table(rows: Rows, out: TextIO) -> None:
    """A plain text table: the first row is the header; figures right-aligned, text left."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    numeric = [
        i > 0 and all(_NUMBER.match(r[i]) or r[i] in ("", "-") for r in rows[1:])
        for i in range(len(widths))
    ]
    for n, row in enumerate(rows):
        cells = [
            c.rjust(w) if right else c.ljust(w)
            for c, w, right in zip(row, widths, numeric, strict=True)
        ]
        print("  " + "  ".join(cells).rstrip(), file=out)
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths), file=out)
    print("", file=out)


def time_rows(r: SizeResult) -> Rows:
    rb, fl, dg = r.runbook, r.floor, r.dag
    rows = [["part", "seconds", "what"]]
    if rb:
        steps = ", ".join(f"{k} {v:.1f}" for k, v in rb.steps.items() if k != "runbook")
        rows.append(["runbook", _s(rb.seconds), rb.error or steps])
    if fl:
        steps = ", ".join(f"{k} {v:.1f}" for k, v in fl.steps.items())
        slowest = max(fl.waves or [0.0])
        waves = f"{len(fl.waves)} waves {sum(fl.waves):.1f} (slowest {slowest:.1f})"
        fixed = sum(fl.steps.values())
        rows.append(["floor", _s(fl.seconds), fl.error or f"fixed {fixed:.1f}: {steps}; {waves}"])
    if dg:
        fan = ""
        if dg.fan_out_seconds:
            rest = dg.seconds - dg.fan_out_seconds
            fan = f": fan-out {dg.fan_out_seconds:.1f}, the rest {rest:.1f}"
        rows.append(["DAG", _s(dg.seconds), f"run {dg.state or '-'}{fan}"])
    return rows


def ratio_rows(r: SizeResult) -> Rows:
    rb, fl, dg = r.runbook, r.floor, r.dag
    runbook = rb.seconds if rb and not rb.error else None
    floor = fl.seconds if fl and not fl.error else None
    dag = dg.seconds if dg and dg.state == "success" else None
    dag_floor, runbook_dag = _ratio(dag, floor), _ratio(runbook, dag)
    target = TARGET_RUNBOOK_DAG.get(r.namespaces)
    return [
        ["ratio", "value", "target", ""],
        [
            "DAG / floor",
            _s(dag_floor, 2),
            f"<= {TARGET_DAG_FLOOR}",
            _verdict(None if dag_floor is None else dag_floor <= TARGET_DAG_FLOOR),
        ],
        [
            "runbook / DAG",
            _s(runbook_dag, 2),
            f">= {target}" if target else "none at this size",
            _verdict(None if runbook_dag is None or target is None else runbook_dag >= target),
        ],
        ["runbook / floor", _s(_ratio(runbook, floor), 2), "", ""],
    ]


def held_slots(samples: list[tuple[float, list[tuple[str, int]], int]]) -> int:
    """The most task instances at once that had been `running` for HELD_SECONDS or more."""
    since: dict[tuple[str, int], float] = {}
    peak = 0
    for t, keys, _ in samples:
        since = {k: since.get(k, t) for k in keys}  # a break in the samples starts it anew
        peak = max(peak, sum(1 for k in keys if t - since[k] >= HELD_SECONDS))
    return peak


def dag_rows(dg: DagResult) -> Rows:
    def pss(memory: tuple[int, int]) -> str:
        return f"PSS {_mib(memory[1])} (shared pages split)"

    states = ", ".join(f"{k} {v}" for k, v in sorted(dg.ti_states.items()))
    slots = dg.slots_held
    xcom = "-" if dg.xcom_bytes is None else f"{dg.xcom_bytes:,} B in {dg.xcom_entries}"
    largest = ", ".join(f"{t} {b:,} B" for t, b in dg.xcom_largest)
    rows = [
        ["DAG run", "value", "target", ""],
        ["task instances", str(dg.task_instances), "", states],
        ["tries beyond the first", str(dg.retries), "", ""],
        [
            f"worker slots held while waiting (running >= {HELD_SECONDS:.0f} s)",
            "-" if slots is None else str(slots),
            str(TARGET_SLOTS_WAITING),
            _verdict(None if slots is None else slots <= TARGET_SLOTS_WAITING),
        ],
    ]
    if dg.slots_mean_waiting is not None:
        at_peak = "at the peak: " + (", ".join(dg.slots_waiting_tasks) or "none")
        rows.append(
            [
                "  most running at once then (task starts)",
                str(dg.slots_waiting),
                "",
                f"mean {dg.slots_mean_waiting:.1f}; {at_peak}",
            ]
        )
    rows += [
        ["most task instances deferred at once", str(dg.deferred_peak), "", ""],
        ["XCom of the run", xcom, "bounded", f"largest: {largest}" if largest else ""],
        ["peak RSS, Airflow processes", _mib(dg.airflow_memory[0]), "", pss(dg.airflow_memory)],
        ["peak RSS, sandbox processes", _mib(dg.sandbox_memory[0]), "", pss(dg.sandbox_memory)],
    ]
    if dg.cpu:
        total = sum(dg.cpu.values())
        ran = max(1, dg.task_instances - dg.ti_states.get("skipped", 0))
        each = f"{dg.cpu.get(TASKS, 0.0) / ran:.2f} s per task instance that ran"
        rows.append(["CPU seconds in the run, all processes", f"{total:.0f}", "", ""])
        for role in (*ROLES, TASKS, "other", "sandbox"):
            if role in dg.cpu:
                note = each if role == TASKS else ""
                rows.append([f"  {role}", f"{dg.cpu[role]:.1f}", "", note])
    return rows


def request_rows(r: SizeResult) -> Rows:
    """Requests per upgraded namespace by verb (the waves: per namespace after the canary)."""
    rb, fl, dg = r.runbook, r.floor, r.dag
    n, rest = r.namespaces, max(1, r.namespaces - 1)
    rows = [["apiserver requests per namespace", "total", *VERBS, "target"]]

    def add(name: str, req: Requests | None, per: int, target: bool = False) -> None:
        if req is None:
            return
        each = req.total / per
        verdict = _verdict(each <= TARGET_REQUESTS_PER_NS)
        rows.append(
            [
                name,
                f"{each:.1f}",
                *(f"{req.by_verb.get(v, 0.0) / per:.1f}" for v in VERBS),
                f"<= {TARGET_REQUESTS_PER_NS:.0f} {verdict}" if target else "",
            ]
        )

    add("runbook", rb and rb.requests, n)
    add("  its namespaces after the canary", rb and rb.requests_namespaces, rest)
    add("floor", fl and fl.requests, n)
    add("  its waves", fl and fl.requests_waves, rest)
    add("DAG", dg and dg.requests, n, target=True)
    add("  its fan-out", dg and dg.requests_waves, rest)
    if dg and dg.requests and dg.requests_waves:
        fixed = dg.requests.minus(dg.requests_waves)
        by_verb = (f"{fixed.by_verb.get(v, 0.0):.0f}" for v in VERBS)
        rows.append(["  its other steps (in all, not per ns)", f"{fixed.total:.0f}", *by_verb, ""])
    if dg and fl and dg.requests and fl.requests:
        add("DAG - floor (the DAG's own)", dg.requests.minus(fl.requests), n, target=True)
    if dg and fl and dg.requests_waves and fl.requests_waves:
        add("  fan-out - floor waves", dg.requests_waves.minus(fl.requests_waves), rest, True)
    return rows


def report(sizes: list[SizeResult], parse: ParseResult | None, out: TextIO) -> None:
    for r in sizes:
        print(
            f"\n== {r.namespaces} namespaces, wave_concurrency {r.wave_concurrency} "
            f"(1 canary + {r.plan_waves} waves), pod ready {r.pod_ready_ms} ms\n",
            file=out,
        )
        if r.runbook or r.floor or r.dag:
            table(time_rows(r), out)
            table(ratio_rows(r), out)
        if r.dag:
            table(dag_rows(r.dag), out)
            for line in r.dag.failures:
                print(f"  !! {line}", file=out)
            if r.dag.failures:
                print("", file=out)
        requests = request_rows(r)
        if len(requests) > 1:
            table(requests, out)
            parts = {"runbook": r.runbook, "floor": r.floor, "DAG": r.dag}
            idle = ", ".join(
                f"{name} {part.requests.background:.0f} in {part.requests.seconds:.0f} s"
                for name, part in parts.items()
                if part and part.requests
            )
            print(
                "  apiserver_request_total deltas by verb; every client counts (the controllers "
                "and kwok\n  react to each restart in all three parts). Idle background "
                f"subtracted: {idle}.\n",
                file=out,
            )
        for e in r.errors:
            print(f"  ERROR {e}", file=out)
    if parse:
        print(f"\n== parse: median of {parse.runs} fresh interpreters each\n", file=out)
        ok = None if parse.error or not parse.sdk_cpu else parse.ratio <= TARGET_PARSE
        rss = _ratio(parse.dag_rss, parse.sdk_rss)
        table(
            [
                ["import", "CPU s", "wall s", "peak RSS"],
                ["airflow.sdk", _s(parse.sdk_cpu, 2), _s(parse.sdk_wall, 2), _mib(parse.sdk_rss)],
                [
                    f"dags/{DAG_PATH.name}",
                    _s(parse.dag_cpu, 2),
                    _s(parse.dag_wall, 2),
                    _mib(parse.dag_rss),
                ],
            ],
            out,
        )
        cpu = _s(parse.ratio if parse.sdk_cpu else None, 2)
        print(
            f"  DAG file / airflow.sdk: CPU {cpu} (target <= {TARGET_PARSE}: {_verdict(ok)}), "
            f"peak RSS {_s(rss, 2)}",
            file=out,
        )
        if parse.error:
            print(f"  ERROR parse: {parse.error}", file=out)


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/upgrade_scale.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--namespaces",
        type=int,
        nargs="+",
        default=[50, 200],
        metavar="N",
        help="sizes: meshed namespaces in all (the seed's 4 plus N-4); default 50 200",
    )
    parser.add_argument(
        "--wave-concurrency",
        type=int,
        nargs="+",
        default=None,
        metavar="W",
        help="per size, in the same order (default: 50 -> 10, 200 -> 25, else about N/8)",
    )
    parser.add_argument("--pod-ready-ms", type=int, default=5000, help="kwok's pod-ready delay")
    parser.add_argument(
        "--skip", default="", help=f"comma-separated parts to skip: {','.join(PARTS)}"
    )
    parser.add_argument("--parse-runs", type=int, default=7, help="interpreters per import")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(PARTS):
        parser.error(f"--skip: unknown {', '.join(sorted(skip - set(PARTS)))}; parts: {PARTS}")
    args.parts = set(PARTS) - skip
    if any(n < len(SEEDED) for n in args.namespaces):
        parser.error(f"--namespaces: at least {len(SEEDED)} (the seed's {', '.join(SEEDED)})")
    if args.wave_concurrency is None:
        args.wave_concurrency = [default_wave_concurrency(n) for n in args.namespaces]
    if len(args.wave_concurrency) != len(args.namespaces):
        parser.error("--wave-concurrency: give one per size of --namespaces")
    if any(w < 1 for w in args.wave_concurrency):
        parser.error("--wave-concurrency: at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = bench_env(os.environ, args.pod_ready_ms)
    if Path(env["SANDBOX_HOME"]).resolve() == (REPO / ".sandbox").resolve():
        say("refusing to run on the default sandbox (.sandbox/): set SANDBOX_HOME elsewhere")
        return 2
    airflow = Airflow(env)
    if airflow.demo.home == demo.Demo.from_env({}).home:
        say("refusing to use make demo's Airflow (out/demo): set DEMO_HOME elsewhere")
        return 2
    logs = airflow.demo.home / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    parse = None
    if "parse" in args.parts:
        say(f"parse: {args.parse_runs} runs of each import")
        parse = run_parse(args.parse_runs, logs / "parse-airflow-home")
    sizes: list[SizeResult] = []
    try:
        if args.parts - {"parse"}:
            for n, w in zip(args.namespaces, args.wave_concurrency, strict=True):
                try:
                    sizes.append(run_size(n, w, args.pod_ready_ms, args.parts, env, airflow, logs))
                except (BenchError, demo.DemoError, OSError) as err:
                    sizes.append(SizeResult(n, w, args.pod_ready_ms, errors=[f"setup: {err}"]))
    finally:
        if airflow.started:
            airflow.stop()  # Airflow and the sandbox (purged)
        else:
            Box(env).down()
    report(sizes, parse, sys.stdout)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"sizes": [asdict(s) for s in sizes], "parse": parse and asdict(parse)},
                indent=1,
                default=str,
            )
        )
    failed = any(s.errors for s in sizes) or bool(parse and parse.error)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
