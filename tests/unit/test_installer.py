"""A control plane Helm owns is refused before anything changes; istioctl's are not."""

from __future__ import annotations

import pytest

from istio_upgrade.errors import ClusterStateError
from istio_upgrade.installer import check_istioctl_owns, helm_release
from istio_upgrade.model import ControlPlane, MeshSnapshot

OLD, NEW = "1-14-6", "1-15-0"


def snapshot(*planes: ControlPlane) -> MeshSnapshot:
    return MeshSnapshot(planes, (), (), "2025-01-01T00:00:00+00:00")


def plane(revision: str, release: str | None = None) -> ControlPlane:
    return ControlPlane(revision, True, revision.replace("-", "."), True, helm_release=release)


@pytest.mark.parametrize(
    ("annotations", "release"),
    [
        ({"meta.helm.sh/release-name": "istiod-1-14-6"}, "istiod-1-14-6"),
        # what istioctl's objects carry too (it renders the same charts): proves nothing
        ({"helm.sh/chart": "istiod-1.14.6"}, None),
        ({"meta.helm.sh/release-name": ""}, None),
        ({}, None),
        (None, None),
    ],
)
def test_the_release_comes_from_helms_own_annotation(
    annotations: dict[str, str] | None, release: str | None
) -> None:
    assert helm_release(annotations) == release


def test_a_helm_owned_current_revision_is_refused_naming_the_release() -> None:
    with pytest.raises(ClusterStateError) as err:
        check_istioctl_owns(snapshot(plane(OLD, "istiod-old")), [OLD, NEW])
    assert f"istiod-{OLD}" in str(err.value)
    assert "is 'Helm', expected istioctl" in str(err.value)
    assert "Helm release 'istiod-old' owns this one" in str(err.value)
    assert "upgrade a Helm-managed Istio with Helm" in str(err.value)


def test_a_target_helm_began_to_install_is_refused() -> None:
    with pytest.raises(ClusterStateError, match=f"istiod-{NEW}"):
        check_istioctl_owns(snapshot(plane(OLD), plane(NEW, "istiod-new")), [OLD, NEW])


def test_revisions_istioctl_installed_pass() -> None:
    check_istioctl_owns(snapshot(plane(OLD), plane(NEW)), [OLD, NEW])
    # a Helm revision the run does not touch is not this run's business
    check_istioctl_owns(snapshot(plane(OLD), plane("1-13-0", "istiod-1-13-0")), [OLD, NEW])
