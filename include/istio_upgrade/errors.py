"""The errors the upgrade raises on purpose; each names the object, the value and the fix."""

from __future__ import annotations

from collections.abc import Sequence


def _show(value: object) -> str:
    """A value as it appears in a message: tuples read like the lists the user typed."""
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


class UpgradeError(Exception):
    """Base of every error raised on purpose, so callers can tell a refusal from a bug."""


class ParamError(UpgradeError, ValueError):
    """A run parameter is wrong; raised before anything in the cluster changes."""

    def __init__(self, param: str, value: object, problem: str, fix: str) -> None:
        self.param = param
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(f"param {param!r}={_show(value)} {problem}; {fix}")

    def __reduce__(self) -> tuple[type[ParamError], tuple[str, object, str, str]]:
        # the custom constructor would break pickling (process pools, some log handlers)
        return (type(self), (self.param, self.value, self.problem, self.fix))


class ClusterStateError(UpgradeError):
    """The cluster is not as the step expects (read back after an action, or found at start)."""

    def __init__(self, obj: str, value: object, expectation: str, fix: str) -> None:
        self.obj = obj
        self.value = value
        self.expectation = expectation
        self.fix = fix
        super().__init__(f"{obj} is {_show(value)}, expected {expectation}; {fix}")

    def __reduce__(self) -> tuple[type[ClusterStateError], tuple[str, object, str, str]]:
        return (type(self), (self.obj, self.value, self.expectation, self.fix))


class RolloutFailed(UpgradeError):
    """A restarted workload did not finish its rollout (deadline exceeded or timed out)."""

    def __init__(self, workload: str, problem: str, fix: str) -> None:
        self.workload = workload
        self.problem = problem
        self.fix = fix
        super().__init__(f"rollout of {workload} failed: {problem}; {fix}")

    def __reduce__(self) -> tuple[type[RolloutFailed], tuple[str, str, str]]:
        return (type(self), (self.workload, self.problem, self.fix))


class WavesFailed(UpgradeError):
    """After the waves, namespaces that were not held back are still off the target."""

    def __init__(self, revision: str, namespaces: Sequence[str]) -> None:
        self.revision = revision
        self.namespaces = list(namespaces)
        super().__init__(
            f"namespaces {', '.join(self.namespaces)} are not on revision {revision!r} (see "
            "the failed upgrade_namespace tasks; those after them did not start): fix the "
            "cause, then clear the failed and skipped upgrade_namespace tasks"
        )

    def __reduce__(self) -> tuple[type[WavesFailed], tuple[str, list[str]]]:
        return (type(self), (self.revision, self.namespaces))


class RevisionInUse(UpgradeError):
    """A revision about to be removed is still referenced by pods, namespaces or tags."""

    def __init__(self, revision: str, users: Sequence[str]) -> None:
        self.revision = revision
        self.users = list(users)
        shown = ", ".join(self.users[:10]) + (" ..." if len(self.users) > 10 else "")
        super().__init__(
            f"revision {revision!r} is still in use by {len(self.users)} object(s): {shown}; "
            f"move them to another revision (relabel or restart) before removing it"
        )

    def __reduce__(self) -> tuple[type[RevisionInUse], tuple[str, list[str]]]:
        return (type(self), (self.revision, self.users))


class MetricsUnavailable(UpgradeError):
    """Prometheus could not answer a query; the gate counts this as a failed check (fail closed)."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(
            f"Prometheus at {url} gave no usable answer: {problem}; "
            f"check prometheus_url and that Prometheus is up"
        )

    def __reduce__(self) -> tuple[type[MetricsUnavailable], tuple[str, str]]:
        return (type(self), (self.url, self.problem))


class NothingToDo(UpgradeError):
    """The mesh already runs the target revision everywhere: a run skips instead of failing."""

    def __init__(self, target: str, tag: str) -> None:
        self.target = target
        self.tag = tag
        super().__init__(
            f"tag {tag!r} already points at {target!r}, no other control plane is installed "
            "and every namespace runs it: nothing to upgrade"
        )

    def __reduce__(self) -> tuple[type[NothingToDo], tuple[str, str]]:
        return (type(self), (self.target, self.tag))


class UpgradeLocked(UpgradeError):
    """Another run holds the cluster's upgrade lock (istio_upgrade.upgrade_lock)."""

    def __init__(self, holder: str, lease: str, expires: str) -> None:
        self.holder = holder
        self.lease = lease
        self.expires = expires
        super().__init__(
            f"another upgrade of this cluster is running: {holder} holds Lease {lease} until "
            f"{expires} (renewed while it runs); wait for it to end, or, if that run is gone, "
            "delete the Lease or wait for it to expire"
        )

    def __reduce__(self) -> tuple[type[UpgradeLocked], tuple[str, str, str]]:
        return (type(self), (self.holder, self.lease, self.expires))


class OldRevisionKept(UpgradeError):
    """Only users known before the run (and listed in its plan) still use the old revision:
    it is kept, not removed, and the run still completes."""

    def __init__(self, revision: str, users: str) -> None:
        self.revision = revision
        self.users = users
        super().__init__(f"revision {revision} kept: used by {users}, as the plan said")

    def __reduce__(self) -> tuple[type[OldRevisionKept], tuple[str, str]]:
        return (type(self), (self.revision, self.users))
