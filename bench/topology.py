"""The demo's upgrade under `airflow standalone` and under docker-compose.yaml's distributed
deployment, on one sandbox: how long a run takes in each, and where the difference is.

    make bench-topology
    .venv/bin/python bench/topology.py [--runs 2] [--pod-ready-ms 5000] [--json out.json]

Per topology, on the bench sandbox (re-seeded to the old revision before each run):

- standalone:  `airflow standalone` as `make demo` starts it (scripts/demo.py: scheduler,
               triggerer and api-server in one process tree, LocalExecutor, SQLite);
- distributed: scripts/distributed_stack.py, as `make distributed-test` starts it (api-server,
               scheduler, dag-processor, triggerer, two Celery workers, PostgreSQL, Redis),
               with docker-compose.yaml's settings.

Each is brought up (timed), warmed up by one dry run (a deployed Airflow has run the DAG
before; a fresh one pays about 3 s once on its first task), then runs `--runs` upgrades with
the demo's params (scripts/demo.py's DEMO_PARAMS). Per run: wall time (the run's start to end
date, from the REST API), the time inside tasks (the union of the task instances' running
intervals), and the rest: hand-overs between tasks (scheduler, executor queue, the worker's
start of the task). Medians per topology and their ratio. No timing is asserted; the exit
status is non-zero only when a run did not succeed or a stack did not come up.

Uses the bench sandbox and ports (the Makefile's BENCH_ENV, as bench/upgrade_scale.py), the
bench's standalone Airflow (DEMO_HOME, DEMO_PORT) and a distributed stack of its own
(DIST_HOME /tmp/istio-canary-bench-dist, ports 28380-28383, 25532, 26479); stops all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "include", REPO, REPO / "scripts", REPO / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import demo  # noqa: E402 - one module for both stacks (distributed_stack imports it so)
import distributed_stack  # noqa: E402
from demo import Api  # noqa: E402
from upgrade_scale import BenchError, bench_env, say, warm_up  # noqa: E402

DIST_DEFAULTS = {
    "DIST_HOME": "/tmp/istio-canary-bench-dist",
    "DIST_PORT": "28380",
    "DIST_PG_PORT": "25532",
    "DIST_REDIS_PORT": "26479",
}
TOPOLOGIES = ("standalone", "distributed")


@dataclass
class RunTimes:
    run_id: str
    state: str
    wall: float  # the run's start_date to end_date
    in_tasks: float  # the union of its task instances' [start, end] intervals
    tasks: int

    @property
    def between(self) -> float:
        return self.wall - self.in_tasks


@dataclass
class TopologyResult:
    name: str
    up_seconds: float
    runs: list[RunTimes] = field(default_factory=list)

    def median(self, what: Callable[[RunTimes], float]) -> float:
        return statistics.median(what(r) for r in self.runs)


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def covered(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of `intervals`."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def run_times(api: Api, run_id: str, state: str) -> RunTimes:
    run = api.dag_run(run_id)
    tis = [t for t in api.task_instances(run_id) if t.get("start_date") and t.get("end_date")]
    spans = [(_ts(t["start_date"]), _ts(t["end_date"])) for t in tis]
    wall = _ts(run["end_date"]) - _ts(run["start_date"])
    return RunTimes(run_id, state, wall, covered(spans), len(tis))


def run_upgrades(
    api: Callable[[], Api], box: dict[str, str], env: dict[str, str], runs: int
) -> list[RunTimes]:
    """One dry run to warm up, then `runs` upgrades with the demo's params, each from the
    seeded state."""
    warm_up(api(), box)
    conf = demo.conf_for(box)
    out = []
    for i in range(runs):
        with contextlib.redirect_stdout(sys.stderr):
            demo.sandbox_up(env)
            run_id = demo.trigger(api(), conf)
            state = demo.follow(api(), run_id, out=sys.stderr, timeout=900)
        out.append(run_times(api(), run_id, state))
        say(f"run {i + 1}/{runs}: {state} in {out[-1].wall:.1f}s")
        if state != "success":
            break
    return out


@contextlib.contextmanager
def running(name: str, env: dict[str, str]) -> Iterator[tuple[Callable[[], Api], dict[str, str]]]:
    """The topology up (its progress on stderr): how to log in, and the sandbox's exports.
    Stopped after, also when it did not come up."""
    alone, dist = demo.Demo.from_env(env), distributed_stack.Dist.from_env(env)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            if name == "standalone":
                stack = demo.bring_up(alone, env)
                login, box = stack.api, stack.box
            else:
                login, box = dist.api, distributed_stack.up(dist, env).box
        yield login, box
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            if name == "standalone":
                demo.stop_demo(alone, env=env)
            else:
                distributed_stack.stop(dist, purge=True)


def measure(name: str, env: dict[str, str], runs: int) -> TopologyResult:
    t0 = time.monotonic()
    with running(name, env) as (api, box):
        result = TopologyResult(name, time.monotonic() - t0)
        say(f"{name}: up in {result.up_seconds:.0f}s")
        result.runs = run_upgrades(api, box, env, runs)
    return result


def report(results: list[TopologyResult], pod_ready_ms: int) -> str:
    lines = [
        f"pod-ready delay {pod_ready_ms} ms, params {json.dumps(demo.DEMO_PARAMS)}",
        "| topology | up s | runs | wall s (median) | in tasks s | between tasks s | tasks |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.up_seconds:.0f} | {len(r.runs)} "
            f"| {r.median(lambda x: x.wall):.1f} ({', '.join(f'{x.wall:.1f}' for x in r.runs)}) "
            f"| {r.median(lambda x: x.in_tasks):.1f} | {r.median(lambda x: x.between):.1f} "
            f"| {r.runs[0].tasks} |"
        )
    if len(results) == 2 and all(r.runs for r in results):
        a, b = results
        ratio = b.median(lambda x: x.wall) / a.median(lambda x: x.wall)
        lines.append(f"\n{b.name} / {a.name} wall time: {ratio:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/topology.py", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="upgrades per topology (2)")
    parser.add_argument("--pod-ready-ms", type=int, default=5000, help="kwok's pod-ready delay")
    parser.add_argument("--only", choices=TOPOLOGIES, help="one topology")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    env = bench_env(dict(os.environ), args.pod_ready_ms)
    for key, value in DIST_DEFAULTS.items():
        env.setdefault(key, value)
    results: list[TopologyResult] = []
    try:
        for name in [args.only] if args.only else TOPOLOGIES:
            results.append(measure(name, env, args.runs))
    except (demo.DemoError, BenchError) as err:
        say(f"error: {err}")
        return 2
    finally:
        subprocess.run([demo.SANDBOX, "down", "--purge"], env=env, check=False)
    print(report(results, args.pod_ready_ms))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0 if all(x.state == "success" for r in results for x in r.runs) else 1


if __name__ == "__main__":
    sys.exit(main())
