"""A task's process killed in the middle of its restarts (the OOM killer, a lost worker): the
retry finishes them without restarting any workload twice.

`upgrade_canary` restarts the canary namespace's workloads one after another. The canary
namespace gets many Deployments so that this takes a moment; the test watches for the first
one stamped by the run and SIGKILLs the task's process right then (the task runner titles
itself `airflow worker -- <task instance id>`). Airflow fails the try and retries it; the
retry finds the stamped workloads already restarted and restarts only the rest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from signal import SIGKILL

import pytest
from integration.plain_deployment import plain_deployment
from sandbox_fixture import wait_for

from istio_upgrade import cluster
from istio_upgrade.cluster import RESTART_ANNOTATION, Kube, KubeTarget
from istio_upgrade.model import WorkloadRef
from istio_upgrade.steps import restart_stamp
from sandbox import procfs
from standalone.standalone_stack import Stack, reseed
from standalone.test_spurious_failures import assert_completed_with_one_retry, instances

pytestmark = pytest.mark.sandbox

CANARY = "bar"
EXTRA_DEPLOYMENTS = 30  # restarted one by one: a window of a second or so to kill in


def generations(kube: Kube) -> dict[str, int]:
    return {
        d.metadata.name: d.metadata.generation
        for d in kube.apps.list_namespaced_deployment(CANARY).items
    }


def stamped(kube: Kube, stamp: str) -> list[str]:
    """The canary's Deployments this run has restarted (its stamp in kubectl's annotation)."""
    return [
        d.metadata.name
        for d in kube.apps.list_namespaced_deployment(CANARY).items
        if (d.spec.template.metadata.annotations or {}).get(RESTART_ANNOTATION) == stamp
    ]


def worker_of(ti_id: str, timeout: float = 60) -> int:
    """The pid of the process running task instance `ti_id`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = [p for p, cmd in procfs.commands().items() if f"airflow worker -- {ti_id}" in cmd]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no process runs task instance {ti_id}")


def wait_running(stack: Stack, run_id: str, key: str, timeout: float = 240) -> str:
    """The id of task instance `key` once it runs on a worker."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ti = instances(stack, run_id).get(key, {})
        if ti.get("state") == "running":
            return str(ti["id"])
        time.sleep(0.05)
    raise AssertionError(f"{key} never ran: {stack.states(run_id)}")


@contextmanager
def crowded_canary(kube: Kube) -> Iterator[dict[str, int]]:
    """The canary namespace with EXTRA_DEPLOYMENTS more Deployments, rolled out; yields every
    Deployment's generation before the run, and deletes the extra ones after."""
    names = [f"it-killed-{i:02d}" for i in range(EXTRA_DEPLOYMENTS)]
    for name in names:
        kube.apps.create_namespaced_deployment(CANARY, plain_deployment(name))
    refs = [WorkloadRef("Deployment", CANARY, n) for n in names]
    try:
        wait_for(
            "the extra Deployments to roll out",
            lambda: all(s.complete for s in cluster.rollout_states(kube, refs)),
            120,
        )
        yield generations(kube)
    finally:
        for name in names:
            kube.apps.delete_namespaced_deployment(name, CANARY)


def kill_after_first_restart(kube: Kube, stamp: str, kill: Callable[[], None]) -> int:
    """Call `kill` as soon as the run's first canary Deployment is stamped; how many were
    stamped by then (the test is void when that is all of them)."""
    end = time.monotonic() + 120
    while not stamped(kube, stamp):
        assert time.monotonic() < end, f"no Deployment of {CANARY} was restarted by the run"
        time.sleep(0.01)
    kill()
    done = len(stamped(kube, stamp))
    assert done < EXTRA_DEPLOYMENTS, "the kill came after every restart"
    return done


def test_a_task_killed_mid_restart_is_retried_without_restarting_twice(stack: Stack) -> None:
    reseed(stack)
    kube = cluster.connect(KubeTarget(kubeconfig=stack.box["KUBECONFIG"]))
    with crowded_canary(kube) as before:
        run_id = stack.start(canary_namespaces=[CANARY], wave_concurrency=4)
        stamp = restart_stamp(run_id, stack.box["SANDBOX_NEW_REVISION"])
        pid = worker_of(wait_running(stack, run_id, "upgrade_canary"))
        # os.kill raises if the task had already left its process
        done_when_killed = kill_after_first_restart(kube, stamp, lambda: os.kill(pid, SIGKILL))

        assert_completed_with_one_retry(stack, run_id, "upgrade_canary")
        after = generations(kube)
        # one template change each: a second restart would have bumped it again
        assert after == {n: g + 1 for n, g in before.items()}, (done_when_killed, before, after)
