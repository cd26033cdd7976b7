"""A user of the old revision known before the run keeps that revision, and the run completes.

A bare pod (no controller, so no restart can move it) injected by the old revision before
the run is in its plan: the run completes and keeps the old revision, saying why. A user
that appears during the run fails it instead: tests/standalone/test_clear_and_rerun.py.
"""

from __future__ import annotations

import time

import pytest
from dag_runs import (
    MESH,
    RestApi,
    fast_params,
    revisions,
    run_dag,
    states,
)
from sandbox_fixture import Sandbox

from istio_upgrade import cluster

pytestmark = pytest.mark.sandbox

STRAY = ("foo", "stray")  # namespace, pod


def stray_revision(box: Sandbox) -> str | None:
    (ns,) = cluster.namespace_states(box.kube(), [STRAY[0]])
    return next((p.revision for p in ns.pods if p.name == STRAY[1]), None)


def test_a_user_known_before_the_run_keeps_the_old_revision_and_the_run_completes(
    seeded: Sandbox, rest_api: RestApi
) -> None:
    box, kube = seeded, seeded.kube()
    namespace, pod = STRAY
    box.kubectl("run", pod, "-n", namespace, "--image=busybox", "--restart=Never")
    try:
        deadline = time.monotonic() + 30
        while stray_revision(box) != box.old_revision:
            assert time.monotonic() < deadline, "the stray pod was not injected by the old one"
            time.sleep(0.5)

        dr = run_dag(fast_params(box))
        run = states(dr.run_id)
        assert str(dr.state) == "success", run
        assert run["finish_waves"] == "success", run
        assert run["remove_old_revision"] == "skipped", run  # kept, as the plan said
        assert run["conclude"] == "success", run
        assert not [t for t, s in run.items() if s == "failed"], run
        report = rest_api.xcom(dr.run_id, "report")
        assert report["phase"] == "completed", report
        assert (
            f"revision {box.old_revision} kept: used by pod {namespace}/{pod}" in (report["reason"])
        )
        assert cluster.revision_objects(kube, box.old_revision), "removed while still in use"
        assert revisions(box) == {n: {box.new_revision} for n in MESH}
    finally:
        box.kubectl("delete", "pod", pod, "-n", namespace, "--wait=true", "--ignore-not-found")
