"""Which tool installed a revision, and the refusal to upgrade one this DAG does not own.

The DAG installs, tags and removes revisions with istioctl. On a mesh Helm installed,
istioctl's removal finds nothing of its own to prune (its selector needs labels Helm's objects
lack) and `tag set` rewrites the base chart's validating webhook: the upgrade would leave a
mesh owned by neither tool, whose next `helm upgrade` points validation at a deleted istiod.
So a revision Helm owns is refused before anything changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from istio_upgrade.errors import ClusterStateError
from istio_upgrade.model import MeshSnapshot

# Helm records its release on every object it creates; `app.kubernetes.io/managed-by=Helm`
# and `helm.sh/chart` are on istioctl's objects too (they render the same charts).
HELM_RELEASE = "meta.helm.sh/release-name"


def helm_release(annotations: Mapping[str, str] | None) -> str | None:
    """The Helm release that owns an object, from its annotations; None when Helm does not."""
    return (annotations or {}).get(HELM_RELEASE) or None


def check_istioctl_owns(snapshot: MeshSnapshot, revisions: Iterable[str]) -> None:
    """Refuse when Helm owns the control plane of one of `revisions` (the current revision,
    or a target someone began to install with Helm)."""
    for revision in revisions:
        plane = snapshot.control_plane(revision)
        if plane is not None and plane.helm_release:
            raise ClusterStateError(
                f"the installer of deployment istio-system/istiod-{revision}",
                "Helm",
                "istioctl (this DAG installs, tags and removes revisions with it; Helm release "
                f"{plane.helm_release!r} owns this one)",
                "upgrade a Helm-managed Istio with Helm (helm upgrade --install "
                "istiod-<new> istio/istiod --set revision=<new>); nothing was changed",
            )
