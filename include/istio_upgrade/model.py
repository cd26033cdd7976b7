"""Domain types of the mesh (some cross task boundaries in XCom) and pure questions over them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum

from istio_upgrade.contracts import Contract, allow

SIDECAR_STATUS = "sidecar.istio.io/status"
PROXY_CONTAINER = "istio-proxy"
REV_LABEL = "istio.io/rev"
TAG_LABEL = "istio.io/tag"
INJECTION_LABEL = "istio-injection"


class UpgradePhase(StrEnum):
    """Where a run stands; the report and the rollback read it."""

    VALIDATED = "validated"  # params checked against the cluster, nothing changed yet
    INSTALLED = "installed"  # the new control plane runs beside the old one
    CANARY = "canary"  # gateway and canary namespaces restarted onto the new revision
    ROLLED_BACK = "rolled_back"  # tag back on the old revision, moved workloads restarted
    PAUSED = "paused"  # stopped between waves; the mesh is in a valid mixed state
    MOVED = "moved"  # every namespace moved; the old revision's removal failed or did not run
    # every namespace moved and the old revision removed (or kept for users the plan named)
    COMPLETED = "completed"


@dataclass(frozen=True)
class WorkloadRef(Contract):
    """A restartable controller (Deployment, StatefulSet or DaemonSet)."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PodState:
    """One pod and the revision/proxy it really runs (from its sidecar status, not its labels)."""

    namespace: str
    name: str
    uid: str
    phase: str
    owner: WorkloadRef | None  # None: no restartable controller (bare pod, Job)
    revision: str | None  # None: not injected
    proxy_version: str | None
    terminating: bool = False  # being deleted: on its way out, not part of any verdict


@dataclass(frozen=True)
class NamespaceState:
    """A namespace, its labels, its restartable workloads and its pods."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    workloads: tuple[WorkloadRef, ...] = ()
    pods: tuple[PodState, ...] = ()


@dataclass(frozen=True)
class ControlPlane:
    """An installed istiod revision."""

    revision: str
    ready: bool
    version: str | None  # the istiod image tag
    injector_webhook: bool  # MutatingWebhookConfiguration istio-sidecar-injector-<rev> exists
    helm_release: str | None = None  # the Helm release owning istiod-<rev>; None: not Helm


@dataclass(frozen=True)
class RevisionTag:
    """A revision tag: MutatingWebhookConfiguration istio-revision-tag-<name>."""

    name: str
    revision: str


@dataclass(frozen=True)
class MeshSnapshot:
    """What the cluster looked like at one moment: control planes, tags, meshed namespaces."""

    control_planes: tuple[ControlPlane, ...]
    tags: tuple[RevisionTag, ...]
    namespaces: tuple[NamespaceState, ...]
    taken_at: str  # ISO 8601, UTC

    def tag(self, name: str) -> RevisionTag | None:
        return next((t for t in self.tags if t.name == name), None)

    def control_plane(self, revision: str) -> ControlPlane | None:
        return next((c for c in self.control_planes if c.revision == revision), None)

    def namespace(self, name: str) -> NamespaceState | None:
        return next((n for n in self.namespaces if n.name == name), None)


def injected_revision(annotations: dict[str, str] | None) -> str | None:
    """The revision that really injected a pod: `revision` in its sidecar status annotation."""
    raw = (annotations or {}).get(SIDECAR_STATUS)
    if not raw:
        return None
    try:
        status = json.loads(raw)
    except ValueError:
        return None
    rev = status.get("revision") if isinstance(status, dict) else None
    return rev or None


def proxy_version(image: str | None) -> str | None:
    """The proxy version: the tag of the istio-proxy image (`.../proxyv2:1.15.4` -> `1.15.4`)."""
    if not image:
        return None
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1].split("@", 1)[0] if ":" in name else None


def referenced_revision(namespace_labels: dict[str, str], tags: dict[str, str]) -> str | None:
    """The revision a namespace's new pods are injected by, resolving tags to revisions.

    `istio.io/rev` wins over `istio-injection=enabled` (Istio's own precedence); a value that
    names a tag resolves through `tags` (tag -> revision); `istio-injection=enabled` means the
    `default` tag.
    """
    rev = namespace_labels.get(REV_LABEL)
    if rev:
        return tags.get(rev, rev)
    if namespace_labels.get(INJECTION_LABEL) == "enabled":
        return tags.get("default")
    return None


def points_at_tag(namespace_labels: dict[str, str], tag: str) -> bool:
    """Whether a namespace follows `tag` (directly, or by `istio-injection=enabled`: `default`)."""
    rev = namespace_labels.get(REV_LABEL)
    if rev:
        return rev == tag
    return tag == "default" and namespace_labels.get(INJECTION_LABEL) == "enabled"


def revision_version(revision: str) -> str | None:
    """The Istio version a revision name spells (`1-15-4` -> `1.15.4`), None when it spells none.

    Only the plain `MAJOR-MINOR-PATCH` form is read: `1-16-0-beta-1` could be `1.16.0-beta.1`
    or `1.16.0-beta-1`, and guessing wrong would install the wrong istioctl.
    """
    parts = revision.split("-")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return ".".join(str(int(p)) for p in parts)
    return None


allow(WorkloadRef)
