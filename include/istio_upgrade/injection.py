"""Which sidecar-injection webhooks would inject a namespace's pods, and the refusal when more
than one would (Istio's analyzer IST0139).

Two webhook configurations that both select a namespace inject its pods twice, or by the
revision whose webhook the apiserver happens to call last: a legacy `istio-sidecar-injector`
left beside the tag's webhook is the usual cause (istio/istio #36114, #43932). Restarting
such a namespace cannot be trusted to land on the target, so validate refuses it first.
Selectors are evaluated as the apiserver does; a pod is taken as plain (no injection labels
of its own), as most workloads' pods are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from istio_upgrade.errors import ClusterStateError

# Istio names every injection webhook `<scope>.sidecar-injector.istio.io`.
INJECTOR_SUFFIX = "sidecar-injector.istio.io"


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        raise ValueError(f"unknown label selector operator {self.operator!r}")


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector; the empty one (or none at all) selects everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )


@dataclass(frozen=True)
class Injector:
    """One injection webhook of a MutatingWebhookConfiguration."""

    configuration: str
    webhook: str
    namespace_selector: LabelSelector
    object_selector: LabelSelector

    def injects(self, namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str]) -> bool:
        return self.namespace_selector.matches(namespace_labels) and self.object_selector.matches(
            pod_labels
        )


def injecting(injectors: Iterable[Injector], namespace_labels: Mapping[str, str]) -> list[str]:
    """The configurations that would inject a plain pod of a namespace with these labels."""
    return sorted({i.configuration for i in injectors if i.injects(namespace_labels, {})})


def check_one_injector(
    injectors: Sequence[Injector], namespaces: Mapping[str, Mapping[str, str]]
) -> None:
    """Refuse when a namespace's pods would be injected by more than one configuration."""
    overlaps = {
        name: found
        for name, labels in sorted(namespaces.items())
        if len(found := injecting(injectors, labels)) > 1
    }
    if overlaps:
        shown = "; ".join(f"{ns}: {', '.join(found)}" for ns, found in overlaps.items())
        raise ClusterStateError(
            "sidecar injection of namespaces",
            shown,
            "one injection webhook configuration per namespace (Istio's IST0139)",
            "delete the stale configuration (often a legacy istio-sidecar-injector left by an "
            "install without revision) or change the namespace's labels; nothing was changed",
        )
