"""The triggerer dies while the metric gate bakes: another triggerer takes the gate over and
it goes on with the checks it had counted, instead of baking again from zero.

The stack's triggerer (a child of `airflow standalone`, with its trigger-runner child) is
killed with SIGKILL, as a lost host would be; a new `airflow triggerer` is started with the
same environment. The scheduler hands the dead triggerer's triggers to it once the dead one
misses its heartbeats (`triggerer_health_check_threshold`, 30 s).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from standalone.standalone_stack import OWN_AIRFLOW_PORT, Stack, demo, reseed
from standalone.test_spurious_failures import wait_until

pytestmark = pytest.mark.sandbox

BAKE_SECONDS = 75  # long enough to outlive the hand-over (30 s) with checks left to do
KILL_AFTER_SECONDS = 15


def processes() -> Iterator[tuple[int, int, str, bytes]]:
    """(pid, parent pid, command line, environment) of every process we may read."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        yield int(proc.name), parent, cmdline, environ


def kill_triggerer(stack: Stack) -> list[int]:
    """SIGKILL this stack's triggerer and its children; returns their pids."""
    home = f"AIRFLOW_HOME={stack.airflow_home}".encode()
    table = list(processes())
    roots = [
        pid for pid, _, cmd, env in table if "airflow triggerer" in cmd and home in env.split(b"\0")
    ]
    assert roots, "no triggerer runs for this stack"
    doomed = set(roots)
    grew = True
    while grew:
        children = {pid for pid, parent, _, _ in table if parent in doomed} - doomed
        doomed |= children
        grew = bool(children)
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    return sorted(doomed)


def gate_trigger_logs(stack: Stack, run_id: str) -> str:
    folder = (
        stack.airflow_home / "logs" / "dag_id=istio_canary_upgrade" / f"run_id={run_id}"
        / "task_id=metric_gate"
    )  # fmt: skip
    return "\n".join(p.read_text() for p in sorted(folder.rglob("*.trigger.*.log")))


def test_a_killed_triggerer_hands_the_gate_on_with_its_checks(stack: Stack) -> None:
    reseed(stack)
    run_id = stack.start(wave_concurrency=4, bake_seconds=BAKE_SECONDS, check_interval_seconds=3)
    wait_until(stack, run_id, "metric_gate", "deferred")
    time.sleep(KILL_AFTER_SECONDS)  # a few checks counted and kept
    kill_triggerer(stack)
    own = demo.Demo(home=stack.airflow_home.parent, port=OWN_AIRFLOW_PORT)
    env = demo.airflow_env(own, stack.box, dict(os.environ))
    second = demo.spawn_airflow("triggerer", env, own.home / "triggerer-2.log")
    stack.extra_pids.append(second.pid)  # the stack's triggerer from now on
    state = stack.finished(run_id)
    logs = gate_trigger_logs(stack, run_id)
    assert state == "success", stack.progress.getvalue()
    states = stack.states(run_id)
    assert all(s in ("success", "skipped") for s in states.values()), states
    resumed = re.search(r"gate resumed: (\d+) checks done", logs)
    assert resumed, f"the second triggerer baked again from zero:\n{logs[-3000:]}"
    kept = int(resumed.group(1))
    assert kept >= 2, kept
    gate = stack.xcom(run_id, "metric_gate")
    assert gate["verdict"] == "passed", json.dumps(gate)
    assert gate["checks_done"] > kept, gate  # and it went on counting
