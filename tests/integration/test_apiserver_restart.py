"""The sandbox's real kube-apiserver stops and starts again while a rollout is waited on: the
rollout trigger waits the outage out and reports the rollout when it completes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from plain_deployment import plain_deployment
from sandbox_fixture import Sandbox, wait_for

from istio_upgrade import cluster, triggers
from istio_upgrade.model import WorkloadRef
from sandbox.components import COMPONENTS, Layout, default_layout, start, stop

NS = "it-apiserver-restart"
CONN_ID = "it_apiserver_restart"
# The new pod counts as available only this long after it is Ready: long enough to stop and
# start the apiserver in between.
MIN_READY_SECONDS = 20


@pytest.fixture
def kube(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[cluster.Kube]:
    kube = sandbox.kube()
    # the trigger's client for its connection id: this sandbox (no Airflow connection here)
    monkeypatch.setitem(triggers._clients, CONN_ID, kube)
    sandbox.kubectl("create", "namespace", NS)
    try:
        yield kube
    finally:
        sandbox.kubectl("delete", "namespace", NS, "--wait=false")


def layout_of(sandbox: Sandbox) -> Layout:
    return Layout(home=Path(sandbox.env["SANDBOX_HOME"]), cache=default_layout().cache)


def test_a_rollout_wait_outlives_an_apiserver_restart(sandbox: Sandbox, kube: cluster.Kube) -> None:
    ref = WorkloadRef("Deployment", NS, "web")
    kube.apps.create_namespaced_deployment(
        NS, plain_deployment(min_ready_seconds=MIN_READY_SECONDS)
    )
    wait_for("the first rollout", lambda: cluster.rollout_states(kube, [ref])[0].complete, 120)
    cluster.stamp_restart(kube, ref, "it-run")
    trigger = triggers.RolloutTrigger(
        CONN_ID, [ref.to_json()], deadline=time.time() + 300, poll_seconds=1
    )

    async def first_event() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    layout = layout_of(sandbox)
    (apiserver,) = [c for c in COMPONENTS if c.name == "kube-apiserver"]
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(asyncio.run, first_event())
        time.sleep(2)  # the trigger has polled at least once
        assert stop(layout, apiserver.name), "the apiserver was not running"
        time.sleep(3)  # polls fail: connection refused
        assert not waiting.done(), "the trigger gave up while the apiserver was down"
        start(layout, apiserver)
        event = waiting.result(timeout=240)
    assert event["status"] == "success", event
    assert cluster.rollout_states(kube, [ref])[0].complete
