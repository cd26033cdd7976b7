"""The cluster-side upgrade lock, against the sandbox's real apiserver (Lease semantics,
optimistic concurrency and MicroTime parsing are the apiserver's, not ours)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sandbox_fixture import Sandbox

from istio_upgrade import cluster, upgrade_lock
from istio_upgrade.errors import UpgradeLocked


@pytest.fixture
def kube(sandbox: Sandbox) -> Iterator[cluster.Kube]:
    kube = cluster.connect(cluster.KubeTarget(kubeconfig=sandbox.kubeconfig))
    _drop(kube)
    yield kube
    _drop(kube)


def _drop(kube: cluster.Kube) -> None:
    lock = upgrade_lock.current(kube)
    if lock is not None:
        upgrade_lock.release(kube, lock.holder)


def test_one_run_holds_the_cluster_and_renews_on_retry(kube: cluster.Kube) -> None:
    first = upgrade_lock.hold(kube, "dag/run-a", 60)
    again = upgrade_lock.hold(kube, "dag/run-a", 60)  # a retried or cleared task of run a
    assert again.holder == "dag/run-a" and again.renewed >= first.renewed

    with pytest.raises(UpgradeLocked) as refused:
        upgrade_lock.hold(kube, "dag/run-b", 60)
    assert refused.value.holder == "dag/run-a" and "Lease istio-system/" in str(refused.value)

    assert upgrade_lock.release(kube, "dag/run-b") is False  # not b's to give up
    assert upgrade_lock.current(kube) is not None
    assert upgrade_lock.release(kube, "dag/run-a") is True
    assert upgrade_lock.current(kube) is None
    assert upgrade_lock.hold(kube, "dag/run-b", 60).holder == "dag/run-b"


def test_a_lock_nobody_renews_is_taken_over_after_it_expires(kube: cluster.Kube) -> None:
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    upgrade_lock.hold(kube, "dag/gone", 60, now=long_ago)
    with pytest.raises(UpgradeLocked):  # still valid at the time it was taken
        upgrade_lock.hold(kube, "dag/next", 60, now=long_ago + timedelta(seconds=30))
    assert upgrade_lock.hold(kube, "dag/next", 60).holder == "dag/next"
    current = upgrade_lock.current(kube)
    assert current is not None and current.holder == "dag/next"


def test_of_runs_racing_for_a_free_lock_exactly_one_wins(kube: cluster.Kube) -> None:
    def take(holder: str) -> str:
        try:
            return upgrade_lock.hold(kube, holder, 60).holder
        except UpgradeLocked:
            return ""

    with ThreadPoolExecutor(4) as pool:
        winners = [w for w in pool.map(take, [f"dag/run-{i}" for i in range(4)]) if w]
    current = upgrade_lock.current(kube)
    assert len(winners) == 1 and current is not None and current.holder == winners[0]


def test_the_gate_keeps_its_counts_with_the_lock_of_its_run(kube: cluster.Kube) -> None:
    """What a retried task must not lose (XComs are cleared then) lives on the run's Lease:
    a renewal keeps it, another run neither sees nor writes it, the run's end removes it."""
    from istio_upgrade import run_notes
    from istio_upgrade.health import GateState

    upgrade_lock.hold(kube, "dag/run-a", 60)
    assert run_notes.saved_gate(kube, "dag/run-a") is None
    counted = GateState(started_at=1_800_000_000.5, checks_done=3, checks_failed=1)
    run_notes.save_gate(kube, "dag/run-a", counted)
    upgrade_lock.hold(kube, "dag/run-a", 60)  # every task start renews the lock
    assert run_notes.saved_gate(kube, "dag/run-a") == counted

    assert run_notes.saved_gate(kube, "dag/run-b") is None  # not b's note
    assert upgrade_lock.write_note(kube, "dag/run-b", run_notes.GATE, "{}") is False
    assert run_notes.saved_gate(kube, "dag/run-a") == counted

    run_notes.forget_gate(kube, "dag/run-a")  # the verdict was handed over: a clear starts afresh
    assert run_notes.saved_gate(kube, "dag/run-a") is None

    run_notes.save_gate(kube, "dag/run-a", counted)
    upgrade_lock.release(kube, "dag/run-a")
    upgrade_lock.hold(kube, "dag/run-b", 60)
    assert run_notes.saved_gate(kube, "dag/run-b") is None  # a new run starts with no notes
