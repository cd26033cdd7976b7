"""istioctl run inside the cluster: one pod of the istioctl image per command.

The image's version is the target's, so the istioctl that installs a revision always matches
it, whatever the Airflow workers have installed. The pod's name is fixed by the run and the
command: a retried task finds the pod its earlier try started and waits for it instead of
running the command twice at once. A failed pod is kept for `kubectl describe` until the
retry replaces it; a succeeded one is deleted once its log is read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from istio_upgrade import cluster
from istio_upgrade.cluster import Kube
from istio_upgrade.errors import ClusterStateError
from istio_upgrade.istioctl import Result
from istio_upgrade.istioctl_pod import (
    CONTAINER,
    DEADLINE_SECONDS,
    IMAGE_REPOSITORY,
    NAMESPACE,
    SERVICE_ACCOUNT,
    istioctl_pod,
)

log = logging.getLogger(__name__)

TERMINAL = ("Succeeded", "Failed")
# Waiting reasons no amount of waiting mends: the image cannot be pulled or the container
# cannot be created. ErrImagePull alone is not here: the kubelet retries it, then reports
# ImagePullBackOff.
STUCK_REASONS = frozenset(
    {"ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}
)
# Scheduling and pulling the image come on top of the pod's own deadline.
START_ALLOWANCE_SECONDS = 300


def phase(pod: dict[str, Any]) -> str:
    return str(pod.get("status", {}).get("phase") or "Pending")


def _container_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == CONTAINER), {})


def exit_code(pod: dict[str, Any]) -> int | None:
    """The container's exit code once it terminated; None when it never ran to an end."""
    terminated = (_container_status(pod).get("state") or {}).get("terminated") or {}
    code = terminated.get("exitCode")
    return int(code) if code is not None else None


def stuck_reason(pod: dict[str, Any]) -> str | None:
    """Why the container can never start (`ImagePullBackOff: ...`), or None."""
    waiting = (_container_status(pod).get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason")
    if reason in STUCK_REASONS:
        return f"{reason}: {waiting.get('message', '')}".rstrip(": ")
    return None


def pending_reason(pod: dict[str, Any]) -> str:
    """What keeps a pod from running, for the timeout's message (`Unschedulable: ...`)."""
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("status") == "False" and cond.get("reason"):
            return f"{cond['reason']}: {cond.get('message', '')}"
    return f"phase {phase(pod)}"


@dataclass(frozen=True)
class PodIstioctl:
    """istioctl `version` from `repository`, run as `service_account` in `namespace`."""

    kube: Kube
    version: str
    key: str  # the DAG run id: the same command in another run gets another pod
    repository: str = IMAGE_REPOSITORY
    namespace: str = NAMESPACE
    service_account: str = SERVICE_ACCOUNT
    poll_seconds: float = 2.0
    timeout_seconds: float = DEADLINE_SECONDS + START_ALLOWANCE_SECONDS

    def pod(self, *args: str) -> dict[str, Any]:
        return istioctl_pod(
            args,
            self.version,
            self.namespace,
            self.service_account,
            key=self.key,
            repository=self.repository,
        )

    def run(self, *args: str) -> Result:
        body = self.pod(*args)
        name = body["metadata"]["name"]
        where = f"pod {self.namespace}/{name}"
        earlier = cluster.read_pod(self.kube, self.namespace, name)
        if earlier is not None and (phase(earlier) == "Failed" or _deleting(earlier)):
            # An earlier try's failure: this try runs the command again in a fresh pod.
            log.info("replacing failed %s", where)
            self._delete(name)
            earlier = None
        if earlier is None:
            cluster.create_pod(self.kube, body)
            log.info("started %s image=%s args=%s", where, _image(body), " ".join(args))
        else:
            log.info("reattached to %s phase=%s", where, phase(earlier))
        done = self._wait(name, where)
        code = exit_code(done)
        output = cluster.pod_log(self.kube, self.namespace, name, CONTAINER)
        if code is None:
            # Killed at its deadline or evicted: the pod's reason says which.
            status = done.get("status", {})
            output += f"\n{where}: {status.get('reason', '')} {status.get('message', '')}"
            code = -1
        result = Result(("istioctl", *args), code, output, "")
        log.info("%s exited returncode=%d\n%s", where, code, output.strip())
        if result.ok:
            cluster.delete_pod(self.kube, self.namespace, name)
        return result

    def _wait(self, name: str, where: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            pod = cluster.read_pod(self.kube, self.namespace, name)
            if pod is None:
                raise ClusterStateError(
                    where, "deleted", "running to its end", "see who deleted it; clear the task"
                )
            if phase(pod) in TERMINAL:
                return pod
            stuck = stuck_reason(pod)
            if stuck or time.monotonic() > deadline:
                why = stuck or (
                    f"not finished after {self.timeout_seconds:.0f}s, {pending_reason(pod)}"
                )
                # Removed so the retry starts clean instead of reattaching to a dead end.
                self._delete(name)
                raise ClusterStateError(
                    where,
                    why,
                    "istioctl to run",
                    f"check that the nodes can pull {_image(pod)} (set istioctl_image to a "
                    f"mirror) and that {self.namespace} admits the pod, or use "
                    "istioctl_runner 'local'",
                )
            time.sleep(self.poll_seconds)

    def _delete(self, name: str) -> None:
        """Delete and wait until the name is free again (the retry creates the same name)."""
        cluster.delete_pod(self.kube, self.namespace, name)
        for _ in range(int(60 / self.poll_seconds) + 1):
            if cluster.read_pod(self.kube, self.namespace, name) is None:
                return
            time.sleep(self.poll_seconds)
        raise ClusterStateError(
            f"pod {self.namespace}/{name}",
            "still there 60s after delete",
            "gone",
            "check its finalizers and the node; delete it, then clear the task",
        )


def _image(pod: dict[str, Any]) -> str:
    return str(pod["spec"]["containers"][0]["image"])


def _deleting(pod: dict[str, Any]) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))
