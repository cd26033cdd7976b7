"""An istioctl that reports success is not believed: the removal is read back from the cluster.

`istioctl uninstall --revision <old>` exits 0 and removes nothing when the revision's objects
lack its owner labels (a mesh installed with Helm, issue 15). The upgrade must then fail
naming what is left, not report the old revision removed or wait for an hour.
"""

from __future__ import annotations

import time

import pytest
from sandbox_fixture import Sandbox

from istio_upgrade import cluster, steps
from istio_upgrade.errors import ClusterStateError
from istio_upgrade.istioctl import Result

pytestmark = pytest.mark.sandbox


class PrunesNothing:
    """Stands for real istioctl on a revision it does not own: every call exits 0, no change."""

    def run(self, *args: str) -> Result:
        return Result(("istioctl", *args), 0, "No resources will be pruned\n", "")


def test_an_uninstall_that_removed_nothing_fails_naming_what_is_left(sandbox: Sandbox) -> None:
    sandbox.reset()  # the seed: the old revision installed
    seeded, kube = sandbox, sandbox.kube()
    before = cluster.revision_objects(kube, seeded.old_revision)
    assert before, "the seeded mesh has no old revision to remove"
    started = time.monotonic()
    with pytest.raises(ClusterStateError) as left:
        steps.uninstall(kube, PrunesNothing(), seeded.old_revision, settle_seconds=2)
    assert time.monotonic() - started < 30, "it waited far beyond its read-back time"
    message = str(left.value)
    assert f"revision {seeded.old_revision}" in message and "then clear this task" in message
    assert all(obj in message for obj in before), (before, message)
    assert cluster.revision_objects(kube, seeded.old_revision) == before
