"""Is a revision still in use? The question that guards uninstalling it.

Three answers, as in Sail Operator: yes (with every user named), no, and unknown. Unknown is
what a failed read gives, and it blocks removal exactly as "yes" does.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from istio_upgrade.model import REV_LABEL, MeshSnapshot
from istio_upgrade.progress import TERMINAL_POD_PHASES


class Usage(StrEnum):
    """Whether anything still refers to a revision."""

    IN_USE = "in_use"  # at least one pod, namespace or tag refers to it
    UNUSED = "unused"  # nothing refers to it: safe to remove
    UNKNOWN = "unknown"  # the cluster could not be read: treat as in use


@dataclass(frozen=True)
class RevisionUsage:
    """The answer and the users that make it so (or why it is unknown)."""

    revision: str
    usage: Usage
    users: tuple[str, ...]

    @property
    def safe_to_remove(self) -> bool:
        return self.usage is Usage.UNUSED

    def describe(self) -> str:
        if self.usage is Usage.UNUSED:
            return f"revision {self.revision} is not used by any pod, namespace or tag"
        shown = ", ".join(self.users[:20])
        more = f" and {len(self.users) - 20} more" if len(self.users) > 20 else ""
        what = "still used by" if self.usage is Usage.IN_USE else "usage unknown:"
        return f"revision {self.revision} {what} {shown}{more}"


def revision_usage(snapshot: MeshSnapshot, revision: str) -> RevisionUsage:
    """Who refers to `revision`: running pods injected by it, namespaces and tags naming it.

    Pods that finished (Succeeded/Failed) no longer need their control plane; every other
    phase (Pending, Running, Unknown) counts as a user.
    """
    users = [f"tag {t.name}" for t in snapshot.tags if t.revision == revision]
    for ns in snapshot.namespaces:
        if ns.labels.get(REV_LABEL) == revision:
            users.append(f"namespace {ns.name} (label {REV_LABEL}={revision})")
        users += [
            f"pod {p.namespace}/{p.name}"
            for p in ns.pods
            if p.revision == revision and p.phase not in TERMINAL_POD_PHASES
        ]
    return RevisionUsage(revision, Usage.IN_USE if users else Usage.UNUSED, tuple(users))


def unknown_usage(revision: str, reason: str) -> RevisionUsage:
    """The answer when the cluster could not be read."""
    return RevisionUsage(revision, Usage.UNKNOWN, (reason,))
