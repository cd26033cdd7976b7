"""Is a revision still in use? The question that guards uninstalling it.

`users_of` names every user (a failed read raises, which blocks removal as a user does).
The users a run knows of before it starts (other tags, pinned or excluded
namespaces, pods no restart moves) are `kept_by`: the old revision is then kept, not failed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from istio_upgrade.model import REV_LABEL, MeshSnapshot, WorkloadRef
from istio_upgrade.progress import TERMINAL_POD_PHASES


@dataclass(frozen=True)
class User:
    """One thing that refers to a revision: a tag, a namespace's label, or a pod."""

    kind: str  # "tag", "namespace" or "pod"
    name: str
    namespace: str = ""  # a pod's
    owner: WorkloadRef | None = None  # a pod's controller; None: no restart moves it

    def __str__(self) -> str:
        if self.kind == "tag":
            return f"tag {self.name}"
        if self.kind == "namespace":
            return f"namespace {self.name} (label {REV_LABEL})"
        return f"pod {self.namespace}/{self.name}"


def users_of(snapshot: MeshSnapshot, revision: str) -> list[User]:
    """Running pods injected by `revision`, namespaces and tags naming it.

    Pods that finished (Succeeded/Failed) no longer need their control plane; every other
    phase (Pending, Running, Unknown) counts as a user.
    """
    users = [User("tag", t.name) for t in snapshot.tags if t.revision == revision]
    for ns in snapshot.namespaces:
        if ns.labels.get(REV_LABEL) == revision:
            users.append(User("namespace", ns.name))
        users += [
            User("pod", p.name, p.namespace, p.owner)
            for p in ns.pods
            if p.revision == revision and p.phase not in TERMINAL_POD_PHASES
        ]
    return users


@dataclass(frozen=True)
class KeptBy:
    """What will keep the old revision in use after a run, known before the run starts.

    `users` are tags, namespace labels and pods no restart moves, by name; `namespaces` are
    namespaces the run does not move whose pods use it (their pods come and go by name).
    """

    users: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.users or self.namespaces)

    def covers(self, user: User, moved: Collection[WorkloadRef] = ()) -> bool:
        """Known before the run; a pod of a workload the run moves (a gateway) never is."""
        if str(user) in self.users:
            return True
        return user.kind == "pod" and user.namespace in self.namespaces and user.owner not in moved

    def describe(self) -> str:
        return ", ".join([*self.users, *(f"the pods of namespace {n}" for n in self.namespaces)])


def kept_by(snapshot: MeshSnapshot, revision: str, tag: str, moving: Collection[str]) -> KeptBy:
    """Who will still use `revision` once a run has moved `tag` away from it and restarted
    every workload of the namespaces `moving`."""
    users: list[str] = []
    namespaces: set[str] = set()
    for user in users_of(snapshot, revision):
        if user.kind == "tag" and user.name == tag:
            continue
        if user.kind != "pod":
            users.append(str(user))
        elif user.namespace not in moving:
            namespaces.add(user.namespace)
        elif user.owner is None:
            users.append(str(user))
    return KeptBy(tuple(users), tuple(sorted(namespaces)))
