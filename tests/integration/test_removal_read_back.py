"""An istioctl that reports success is not believed: the removal is read back from the cluster.

`istioctl uninstall --revision <old>` exits 0 and removes nothing when the revision's objects
lack its owner labels (a mesh installed with Helm, issue 15). The upgrade must then fail at
once naming what is left, not report the old revision removed or wait for it. What istioctl
did delete but something holds (a finalizer) is waited for, then named.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sandbox_fixture import Sandbox

from istio_upgrade import cluster, steps
from istio_upgrade.cluster import ISTIO_NAMESPACE, Kube
from istio_upgrade.errors import ClusterStateError
from istio_upgrade.istioctl import Result

pytestmark = pytest.mark.sandbox

FINALIZER = "istio-canary-upgrade.test/hold"


class PrunesNothing:
    """Stands for real istioctl on a revision it does not own: every call exits 0, no change."""

    def run(self, *args: str) -> Result:
        return Result(("istioctl", *args), 0, "No resources will be pruned\n", "")


class DeletesThrough:
    """Stands for real istioctl's uninstall: deletes the revision's objects, exits 0."""

    def __init__(self, kube: Kube, revision: str) -> None:
        self.kube, self.revision = kube, revision

    def run(self, *args: str) -> Result:
        name = f"istiod-{self.revision}"
        self.kube.apps.delete_namespaced_deployment(name, ISTIO_NAMESPACE)
        self.kube.core.delete_namespaced_service(name, ISTIO_NAMESPACE)
        self.kube.admission.delete_mutating_webhook_configuration(
            f"istio-sidecar-injector-{self.revision}"
        )
        return Result(("istioctl", *args), 0, "✔ Uninstall complete\n", "")


@pytest.fixture
def old_revision(sandbox: Sandbox) -> Iterator[tuple[Kube, str]]:
    sandbox.reset()  # the seed: the old revision installed
    kube = sandbox.kube()
    assert cluster.revision_objects(kube, sandbox.old_revision), "no old revision to remove"
    yield kube, sandbox.old_revision
    sandbox.reset()


def test_an_uninstall_that_deleted_nothing_fails_at_once_naming_what_is_left(
    old_revision: tuple[Kube, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    kube, revision = old_revision
    before = cluster.revision_objects(kube, revision)

    def no_wait(*args: object, **kwargs: object) -> bool:
        raise AssertionError("it waited for what nothing was deleting")

    monkeypatch.setattr(steps, "settle", no_wait)
    with pytest.raises(ClusterStateError) as left:
        steps.uninstall(kube, PrunesNothing(), revision)
    message = str(left.value)
    assert f"revision {revision}" in message and "did not delete these" in message
    assert "then clear this task" in message
    assert all(obj in message for obj in before), (before, message)
    assert cluster.revision_objects(kube, revision) == before


def test_a_deletion_held_back_is_waited_for_then_named(old_revision: tuple[Kube, str]) -> None:
    kube, revision = old_revision
    held = f"istiod-{revision}"
    kube.apps.patch_namespaced_deployment(
        held, ISTIO_NAMESPACE, {"metadata": {"finalizers": [FINALIZER]}}
    )
    try:
        with pytest.raises(ClusterStateError) as left:
            steps.uninstall(kube, DeletesThrough(kube, revision), revision, settle_seconds=2)
        message = str(left.value)
        assert f"deployment/{held}" in message and "removed 2 s after" in message, message
        assert "service/" not in message, message  # deleted: not named
    finally:
        kube.apps.patch_namespaced_deployment(
            held, ISTIO_NAMESPACE, {"metadata": {"finalizers": None}}
        )
