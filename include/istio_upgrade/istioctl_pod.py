"""The pod that runs one istioctl command inside the cluster, as plain data.

istioctl_in_cluster.py runs it; `kpo_kwargs` gives the same pod to a KubernetesPodOperator.

The pod uses the official `docker.io/istio/istioctl:<version>` image (its entrypoint is
istioctl, it runs as uid 1000) and the ServiceAccount `istio-canary-upgrade`, so istioctl
talks to the API with in-cluster credentials and nothing else. What that account may do is
in include/rbac.yaml: apply it once per cluster (`kubectl apply -f include/rbac.yaml`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from istio_upgrade.errors import ParamError

IMAGE_REPOSITORY = "docker.io/istio/istioctl"
NAMESPACE = "istio-system"
SERVICE_ACCOUNT = "istio-canary-upgrade"
NAME_PREFIX = "istioctl"
LABELS = {
    "app.kubernetes.io/name": "istio-canary-upgrade",
    "app.kubernetes.io/component": "istioctl",
}
CONTAINER = "istioctl"
# The same bound as the local runner (istioctl.Istioctl.timeout_seconds): `install` waits up
# to its readiness timeout (300 s by default), so this only cuts off a hung call.
DEADLINE_SECONDS = 900
RESOURCES = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    # `install` renders every chart in memory; 512Mi leaves room without starving the node.
    "limits": {"cpu": "1", "memory": "512Mi"},
}
# Meets the "restricted" Pod Security Standard, so the pod is admitted wherever it runs.
CONTAINER_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# A DNS-1123 label is at most 63 characters; the readable part is cut to fit the hash, and
# kept short enough that KubernetesPodOperator's 9-character random suffix never cuts it.
NAME_MAX = 63
DIGEST_CHARS = 10
READABLE_MAX = NAME_MAX - 9 - 1 - DIGEST_CHARS
# Image tags: https://github.com/distribution/reference (the `tag` rule).
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_NOT_DNS = re.compile(r"[^a-z0-9]+")


def image(version: str, repository: str = IMAGE_REPOSITORY) -> str:
    """The istioctl image of `version` (e.g. `1.31.0`): the official one or a mirror of it."""
    if not _TAG.fullmatch(version):
        raise ParamError(
            "version",
            version,
            "is not an image tag",
            "use an Istio release as published on docker.io/istio/istioctl, e.g. '1.31.0'",
        )
    return f"{repository}:{version}"


def pod_name(
    args: Sequence[str], version: str, name_prefix: str = NAME_PREFIX, key: str = ""
) -> str:
    """A DNS-1123 name fixed by the command, so a retried task finds its earlier pod.

    The readable part is the prefix and the subcommand (`istioctl-tag-set-prod-…`); the hash
    covers version, every argument and `key`.
    """
    digest = hashlib.sha256(json.dumps([version, list(args), key]).encode()).hexdigest()
    words = [name_prefix, *_subcommand(args)]
    readable = _NOT_DNS.sub("-", "-".join(words).lower()).strip("-")
    readable = readable[:READABLE_MAX].rstrip("-") or NAME_PREFIX
    return f"{readable}-{digest[:DIGEST_CHARS]}"


def _subcommand(args: Sequence[str]) -> list[str]:
    # The words before the first flag name the command: `x precheck`, `tag set prod`.
    words: list[str] = []
    for arg in args:
        if arg.startswith("-"):
            break
        words.append(arg)
    return words[:3]


def _check_args(args: Sequence[str]) -> list[str]:
    # A string is a Sequence[str] too: "x precheck" would become ten one-letter arguments.
    if isinstance(args, str) or not args or not all(isinstance(a, str) for a in args):
        raise ParamError(
            "args",
            args,
            "is not a non-empty list of strings",
            "pass the istioctl arguments one per item, e.g. ['x', 'precheck']",
        )
    return list(args)


def istioctl_pod(
    args: Sequence[str],
    version: str,
    namespace: str = NAMESPACE,
    service_account: str = SERVICE_ACCOUNT,
    name_prefix: str = NAME_PREFIX,
    *,
    key: str = "",
    repository: str = IMAGE_REPOSITORY,
) -> dict[str, Any]:
    """A V1Pod as a JSON-safe dict that runs `istioctl <args>` once, with in-cluster credentials.

    `key` (e.g. the DAG run id) goes into the name's hash: two runs issuing the same command
    get different pods, a retry of one task gets the same one.
    """
    argv = _check_args(args)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(argv, version, name_prefix, key),
            "namespace": namespace,
            "labels": dict(LABELS),
        },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": service_account,
            # istioctl finds the API through the mounted token; a namespace or account that
            # turns automounting off would leave it with no credentials at all.
            "automountServiceAccountToken": True,
            "activeDeadlineSeconds": DEADLINE_SECONDS,
            "securityContext": {
                "runAsNonRoot": True,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": CONTAINER,
                    "image": image(version, repository),
                    "imagePullPolicy": "IfNotPresent",
                    "args": argv,
                    # The root filesystem is read-only; istioctl and client-go write config
                    # and caches under $HOME, so HOME is a scratch volume.
                    "env": [{"name": "HOME", "value": "/tmp"}],
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    "resources": copy.deepcopy(RESOURCES),
                    "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def kpo_kwargs(pod: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the cncf.kubernetes KubernetesPodOperator running `pod`
    (from `istioctl_pod`).

    The operator's own fields (image, arguments, name, ...) come from the pod, and the rest
    of it (resources, volumes, pod security context, deadline) rides along as
    `pod_template_dict`, which the operator merges under its own fields.
    """
    container = pod["spec"]["containers"][0]
    return {
        "image": container["image"],
        # No `cmds`: istioctl is the image's entrypoint, the arguments are the command line.
        "arguments": list(container["args"]),
        "name": pod["metadata"]["name"],
        # A retried task reattaches through the operator's labels and task state, not the
        # name. A fixed name would make the retry of a failed (kept) pod fail with 409
        # AlreadyExists, so the operator appends its random suffix.
        "random_name_suffix": True,
        "namespace": pod["metadata"]["namespace"],
        "service_account_name": pod["spec"]["serviceAccountName"],
        "labels": dict(pod["metadata"]["labels"]),
        "container_security_context": dict(container["securityContext"]),
        "pod_template_dict": pod,
        "get_logs": True,
        # A failed pod stays for `kubectl describe`; its log is in the task log already.
        "on_finish_action": "delete_succeeded_pod",
    }
