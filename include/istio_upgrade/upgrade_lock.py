"""One upgrade per cluster at a time: a coordination.k8s.io Lease in istio-system.

Two runs moving the same mesh (two Airflows, a copy of the DAG, a manual run during a
scheduled one) would restart and remove each other's revisions. The lock lives in the
cluster, so it holds across Airflows. Its holder is the DAG run; every task of the run
holds it again as it starts (idempotent: a retry, or a cleared task of the same run, simply
renews it), the run's end releases it, and a holder that stopped renewing (a deleted run,
a dead Airflow) loses it when its lease expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from istio_upgrade.cluster import ISTIO_NAMESPACE, REQUEST_TIMEOUT, Kube
from istio_upgrade.errors import UpgradeError, UpgradeLocked
from istio_upgrade.params import UpgradeParams

LEASE_NAME = "istio-canary-upgrade"
NOTE_PREFIX = "istio-canary-upgrade/"  # annotations of the Lease: notes of the holding run
# Renewed by every task start and by each wave's start; a lease lasts this long plus the
# longest stretch without either (a rollout wait, the gate's bake, the approval wait).
LEASE_SECONDS = 15 * 60


@dataclass(frozen=True)
class Lock:
    holder: str
    renewed: datetime
    seconds: int

    @property
    def expires(self) -> datetime:
        return self.renewed + timedelta(seconds=self.seconds)


def holder_of(dag_id: str, run_id: str) -> str:
    return f"{dag_id}/{run_id}"


def lease_seconds(params: UpgradeParams) -> int:
    approval = params.approval_timeout_seconds if params.require_approval else 0
    return LEASE_SECONDS + params.rollout_timeout_seconds + params.bake_seconds + approval


def hold(kube: Kube, holder: str, seconds: int, now: datetime | None = None) -> Lock:
    """Take or renew the lock for `holder`; raise UpgradeLocked while another run holds it.

    Optimistic: a create or replace that meets a concurrent writer (409) reads again, so of
    two runs racing for a free lock exactly one wins.
    """
    from kubernetes.client.exceptions import ApiException

    for _ in range(3):
        now = now or datetime.now(UTC)
        lease = _read(kube)
        if lease is not None:
            current = _lock_of(lease)
            if current.holder not in ("", holder) and current.expires > now:
                raise UpgradeLocked(
                    current.holder,
                    f"{ISTIO_NAMESPACE}/{LEASE_NAME}",
                    current.expires.isoformat(timespec="seconds"),
                )
        body = _lease(holder, now, seconds, lease)
        try:
            if lease is None:
                kube.coordination.create_namespaced_lease(
                    ISTIO_NAMESPACE, body, _request_timeout=REQUEST_TIMEOUT
                )
            else:
                kube.coordination.replace_namespaced_lease(
                    LEASE_NAME, ISTIO_NAMESPACE, body, _request_timeout=REQUEST_TIMEOUT
                )
        except ApiException as error:
            if error.status == 409:  # someone wrote in between: look again
                now = None
                continue
            raise
        return Lock(holder, now, seconds)
    raise UpgradeError(f"Lease {ISTIO_NAMESPACE}/{LEASE_NAME} kept changing; retry the task")


def release(kube: Kube, holder: str) -> bool:
    """Give the lock up if `holder` has it (a lock taken over meanwhile is left alone)."""
    from kubernetes.client.exceptions import ApiException

    lease = _read(kube)
    if lease is None or _lock_of(lease).holder != holder:
        return False
    try:
        kube.coordination.delete_namespaced_lease(
            LEASE_NAME,
            ISTIO_NAMESPACE,
            body={"preconditions": {"resourceVersion": lease.metadata.resource_version}},
            _request_timeout=REQUEST_TIMEOUT,
        )
    except ApiException as error:
        if error.status in (404, 409):  # gone, or renewed by another holder in between
            return False
        raise
    return True


def note(kube: Kube, holder: str, key: str) -> str | None:
    """A note `holder` left on the lock under `key` (None: none, or the lock is not its)."""
    lease = _read(kube)
    if lease is None or _lock_of(lease).holder != holder:
        return None
    value = (lease.metadata.annotations or {}).get(NOTE_PREFIX + key)
    return None if value is None else str(value)


def write_note(kube: Kube, holder: str, key: str, value: str | None) -> bool:
    """Keep a note (None: drop it) on the lock while `holder` has it: what a task must not
    lose when Airflow retries it (its XComs are cleared then) lives with the run's lock.
    Returns False when `holder` no longer has the lock."""
    from kubernetes.client.exceptions import ApiException

    for _ in range(3):
        lease = _read(kube)
        if lease is None or _lock_of(lease).holder != holder:
            return False
        notes = dict(lease.metadata.annotations or {})
        if notes.get(NOTE_PREFIX + key) == value:
            return True  # already so: no write (forgetting a note never written is common)
        if value is None:
            notes.pop(NOTE_PREFIX + key)
        else:
            notes[NOTE_PREFIX + key] = value
        lease.metadata.annotations = notes
        try:  # the read's resourceVersion makes this a compare-and-swap
            kube.coordination.replace_namespaced_lease(
                LEASE_NAME, ISTIO_NAMESPACE, lease, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status == 409:
                continue
            raise
        return True
    raise UpgradeError(f"Lease {ISTIO_NAMESPACE}/{LEASE_NAME} kept changing; retry the task")


def current(kube: Kube) -> Lock | None:
    lease = _read(kube)
    return None if lease is None else _lock_of(lease)


def _read(kube: Kube) -> Any:
    from kubernetes.client.exceptions import ApiException

    try:
        return kube.coordination.read_namespaced_lease(
            LEASE_NAME, ISTIO_NAMESPACE, _request_timeout=REQUEST_TIMEOUT
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _lock_of(lease: Any) -> Lock:
    spec = lease.spec
    renewed = spec.renew_time or spec.acquire_time or lease.metadata.creation_timestamp
    return Lock(spec.holder_identity or "", renewed, spec.lease_duration_seconds or 0)


def _lease(holder: str, now: datetime, seconds: int, previous: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": LEASE_NAME, "namespace": ISTIO_NAMESPACE}
    acquired = now
    if previous is not None:
        metadata["resourceVersion"] = previous.metadata.resource_version
        if _lock_of(previous).holder == holder:  # a renewal keeps the run's start and notes
            acquired = previous.spec.acquire_time or now
            metadata["annotations"] = dict(previous.metadata.annotations or {})
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": seconds,
            "acquireTime": _micro(acquired),
            "renewTime": _micro(now),
        },
    }


def _micro(moment: datetime) -> str:
    # Lease times are MicroTime: RFC 3339 with exactly six fractional digits
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
