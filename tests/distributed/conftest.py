"""The distributed stack of this package: its own sandbox, PostgreSQL, Redis, and each
Airflow component as a process of its own (scripts/distributed_stack.py), stopped after its tests.

It starts with a maintenance-window schedule that opens a few minutes ahead and the
deployment's param defaults, as an operator configures a scheduled upgrade.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from standalone.standalone_stack import FAST_PARAMS, REPO, Stack

from sandbox import procfs

sys.path.insert(0, str(REPO / "scripts"))
import distributed_stack

# Apart from the default sandbox (1xxxx), the standalone tests (22xxx, 26xxx, 28080), a demo
# and the benchmarks; below Linux's ephemeral range (32768-60999).
OWN_PORTS = {
    "SANDBOX_ETCD_PORT": "24379",  # and 24380
    "SANDBOX_APISERVER_PORT": "25443",
    "SANDBOX_KWOK_PORT": "30447",
    "SANDBOX_KUBELET_PORT": "30450",
    "SANDBOX_TRAFFIC_PORT": "29664",
    "SANDBOX_PROMETHEUS_PORT": "29290",
    "DIST_PORT": "28280",  # and 28281-28283
    "DIST_PG_PORT": "25432",
    "DIST_REDIS_PORT": "26379",
}
# The windows: the first opens one to two minutes after the fixture starts, about when the
# stack is up (a run for a window already open starts at once, with that window); the second
# right after the first ends.
LEAD = timedelta(minutes=1)
FIRST_WINDOW = timedelta(minutes=2)
SECOND_WINDOW = timedelta(minutes=2)


@dataclass
class Windows:
    first: tuple[datetime, datetime]
    second: tuple[datetime, datetime]

    @classmethod
    def ahead(cls, now: datetime) -> Windows:
        start = (now + LEAD).replace(second=0, microsecond=0) + timedelta(minutes=1)
        first = (start, start + FIRST_WINDOW)
        return cls(first, (first[1], first[1] + SECOND_WINDOW))

    @property
    def spec(self) -> str:
        return "; ".join(
            f"cron '{a.minute} {a.hour} * * *' for {int((b - a).total_seconds()) // 60}m UTC"
            for a, b in (self.first, self.second)
        )


@dataclass
class Dist:
    """The running stack: the standalone tests' client for it, and what it was started with."""

    stack: Stack
    dist: distributed_stack.Dist
    windows: Windows


def peak_rss(state_of: distributed_stack.Dist, stop: threading.Event) -> dict[str, int]:
    """Sample each component's memory (its process group, children included) every 2 s
    until `stop`; the most seen per component in MiB, for README's figures."""
    peaks: dict[str, int] = {}

    def sample() -> None:
        groups = {pid: name for name, pid in distributed_stack.State.load(state_of).pids.items()}
        used: dict[str, int] = {}
        for stat in procfs.stats().values():
            if name := groups.get(stat.group):
                used[name] = used.get(name, 0) + stat.rss_bytes
        for name, rss in used.items():
            peaks[name] = max(peaks.get(name, 0), rss // 2**20)

    def loop() -> None:
        while not stop.wait(2):
            sample()

    threading.Thread(target=loop, daemon=True).start()
    return peaks


@pytest.fixture(scope="package")
def dist() -> Iterator[Dist]:
    home = Path(os.environ.get("DIST_TEST_HOME") or REPO / "out" / "distributed-test")
    shutil.rmtree(home, ignore_errors=True)
    windows = Windows.ahead(datetime.now(UTC))
    env = {
        **os.environ,
        **OWN_PORTS,
        "DIST_HOME": str(home),
        "SANDBOX_HOME": str(home / "sandbox"),
        "ISTIO_UPGRADE_WINDOWS": windows.spec,
    }
    env.pop("SANDBOX_PROMETHEUS_URL", None)
    own = distributed_stack.Dist.from_env(env)
    t0 = time.monotonic()
    stop = threading.Event()
    peaks: dict[str, int] = {}
    try:
        # What the operator sets for scheduled runs: the test's timings, the sandbox's Prometheus
        prometheus = f"http://127.0.0.1:{OWN_PORTS['SANDBOX_PROMETHEUS_PORT']}"
        defaults = {**FAST_PARAMS, "prometheus_url": prometheus, "wave_concurrency": 2}
        env["ISTIO_UPGRADE_PARAM_DEFAULTS"] = json.dumps(defaults)
        state = distributed_stack.up(own, env)
        print(f"\n[distributed] stack up in {time.monotonic() - t0:.0f}s, windows {windows.spec}")
        peaks = peak_rss(own, stop)
        api = own.api()
        yield Dist(
            Stack(own.url, own.password(), api, state.box, io.StringIO(), own.airflow_home),
            own,
            windows,
        )
    finally:
        stop.set()
        if peaks:
            print(f"\n[distributed] peak RSS, MiB: {json.dumps(peaks)}")
        distributed_stack.stop(own, purge=True)  # its logs stay in DIST_TEST_HOME/logs
