"""Turning Airflow connections into plain targets the library, triggers and istioctl can use."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from istio_upgrade.cluster import KubeTarget
from istio_upgrade.errors import ParamError

KUBECONFIG_DIR = Path(tempfile.gettempdir()) / "istio-canary-upgrade"


def _extra(extras: dict[str, Any], key: str) -> Any:
    # The cncf.kubernetes provider accepts both plain and prefixed extra names.
    return extras.get(key, extras.get(f"extra__kubernetes__{key}"))


def kube_target_from_extras(conn_id: str, extras: dict[str, Any]) -> KubeTarget:
    """A KubeTarget from a kubernetes connection's extras, as KubernetesHook reads them.

    istioctl needs a kubeconfig file, so an inline `kube_config` is written to a file named
    by its hash (the same content always lands in the same file, safe across retries).
    """
    in_cluster = _extra(extras, "in_cluster")
    if isinstance(in_cluster, str):
        # The provider treats any non-empty string as true; a string "false" is a trap.
        raise ParamError(
            "kubernetes_conn_id",
            conn_id,
            f"has extra in_cluster={in_cluster!r} (a string)",
            'use a JSON boolean: "in_cluster": true or false',
        )
    context = _extra(extras, "cluster_context") or None
    if in_cluster:
        return KubeTarget(in_cluster=True)
    path = _extra(extras, "kube_config_path")
    inline = _extra(extras, "kube_config")
    if inline:
        text = inline if isinstance(inline, str) else json.dumps(inline)
        KUBECONFIG_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = str(KUBECONFIG_DIR / f"kubeconfig-{hashlib.sha256(text.encode()).hexdigest()[:16]}")
        if not os.path.exists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
    if not path:
        path = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
    if not os.path.exists(path):
        raise ParamError(
            "kubernetes_conn_id",
            conn_id,
            f"points at kubeconfig {path}, which does not exist",
            "set the connection's kube_config_path, kube_config or in_cluster extra",
        )
    return KubeTarget(kubeconfig=path, context=context)


def kube_target(conn_id: str) -> KubeTarget:
    """The KubeTarget of an Airflow kubernetes connection."""
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as err:  # the SDK raises its own not-found type
        raise ParamError(
            "kubernetes_conn_id",
            conn_id,
            f"is not a connection ({err})",
            "create it (Admin > Connections, type Kubernetes) or use kubernetes_default",
        ) from err
    return kube_target_from_extras(conn_id, conn.extra_dejson)
