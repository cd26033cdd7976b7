"""The procedure's starting state: the old Istio revision behind the `default` tag and a few
meshed namespaces whose pods all run the old proxy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from sandbox import helm
from sandbox.components import REPO, Layout, binary, versions

RBAC = REPO / "include" / "rbac.yaml"
ISTIOCTL_PODS = "app.kubernetes.io/component=istioctl"

APP_NAMESPACES = ("foo", "bar", "baz", "qux")
GATEWAY_NAMESPACE = "istio-ingress"
GATEWAY = "istio-ingressgateway"
NODES = 3


def _labels(app: str) -> dict[str, str]:
    return {"app": app, "version": "v1"}


def _pod_template(
    app: str,
    annotations: dict[str, str] | None = None,
    image: str = "registry.k8s.io/e2e-test-images/agnhost:2.53",
) -> dict[str, Any]:
    name = "istio-proxy" if image == "auto" else "app"
    return {
        "metadata": {"labels": _labels(app), "annotations": annotations or {}},
        "spec": {
            "containers": [{"name": name, "image": image, "ports": [{"containerPort": 8080}]}]
        },
    }


def deployment(namespace: str, name: str, replicas: int = 2, **template: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(name)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": _pod_template(name, **template),
        },
    }


def statefulset(namespace: str, name: str, replicas: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(name)},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": _pod_template(name),
        },
    }


def namespace(name: str, tag: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"istio.io/rev": tag}},
    }


def node(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name},
        },
        "status": {
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "500"},
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "500"},
        },
    }


def mesh_objects(extra_namespaces: int = 0) -> list[dict[str, Any]]:
    """The meshed workloads of the starting state (each namespace before its workloads)."""
    objs: list[dict[str, Any]] = [namespace(GATEWAY_NAMESPACE)]
    objs.append(
        deployment(
            GATEWAY_NAMESPACE,
            GATEWAY,
            image="auto",
            annotations={"inject.istio.io/templates": "gateway"},
        )
    )
    for ns in APP_NAMESPACES:
        objs += [namespace(ns), deployment(ns, ns), deployment(ns, f"{ns}-backend")]
    objs.append(statefulset("baz", "baz-db"))
    for i in range(extra_namespaces):
        ns = f"mesh-{i:04d}"
        objs += [namespace(ns), deployment(ns, ns, replicas=1)]
    return objs


def ensure_nodes(layout: Layout) -> None:
    """The kwok nodes pods are scheduled to (kwok keeps them Ready)."""
    items = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [node(f"kwok-node-{i}") for i in range(NODES)],
    }
    kubectl(layout, "apply", "--server-side", "-f", "-", stdin=json.dumps(items))
    # kwok writes these only when it initializes a node; nodes of an older sandbox lack them.
    endpoint = {
        "status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": layout.kubelet_port}},
        }
    }
    for i in range(NODES):
        kubectl(
            layout,
            "patch",
            "node",
            f"kwok-node-{i}",
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(endpoint),
        )


def kubectl(layout: Layout, *args: str, stdin: str | None = None) -> str:
    cmd = [binary(layout, "kubernetes", "kubectl"), f"--kubeconfig={layout.kubeconfig}", *args]
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def istioctl(layout: Layout, which: str, *args: str) -> str:
    cmd = [
        binary(layout, f"istioctl_{which}", "istioctl"),
        f"--kubeconfig={layout.kubeconfig}",
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(
            f"istioctl {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
        )
    return out.stdout


def istiod(layout: Layout, revision: str) -> dict[str, Any] | None:
    """The Deployment istiod-<revision>, or None."""
    out = kubectl(
        layout, "get", "deployment", "-n", "istio-system", f"istiod-{revision}",
        "--ignore-not-found", "-o", "json",
    )  # fmt: skip
    return json.loads(out) if out.strip() else None


def available(deployment: dict[str, Any] | None) -> bool:
    """The control plane exists and is available (a half-finished install counts as not)."""
    status = (deployment or {}).get("status", {})
    return bool(status.get("availableReplicas")) and not status.get("unavailableReplicas")


def helm_owned(deployment: dict[str, Any] | None) -> bool:
    annotations = (deployment or {}).get("metadata", {}).get("annotations", {})
    return helm.HELM_RELEASE in annotations


def tag_revision(layout: Layout, tag: str) -> str | None:
    out = kubectl(
        layout,
        "get",
        "mutatingwebhookconfiguration",
        f"istio-revision-tag-{tag}",
        "--ignore-not-found",
        "-o",
        "json",
    )
    return json.loads(out)["metadata"]["labels"].get("istio.io/rev") if out.strip() else None


def wait_for_mesh(layout: Layout, revision: str, timeout: float = 180.0) -> None:
    """Wait until every pod in the meshed namespaces is Ready and injected by `revision`."""
    deadline = time.monotonic() + timeout
    while True:
        pods = json.loads(kubectl(layout, "get", "pods", "-A", "-l", "app", "-o", "json"))
        pending = []
        for pod in pods["items"]:
            meta = pod["metadata"]
            if meta["namespace"] == "istio-system":
                continue
            status = json.loads(meta.get("annotations", {}).get("sidecar.istio.io/status", "{}"))
            ready = any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod.get("status", {}).get("conditions", [])
            )
            if not ready or status.get("revision") != revision:
                pending.append(f"{meta['namespace']}/{meta['name']}")
        if not pending and pods["items"]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"pods not ready on revision {revision}: {pending[:10]}")
        time.sleep(1)


def restart_all(layout: Layout, namespaces: list[str]) -> None:
    """`kubectl rollout restart` every workload in the namespaces (a fresh timestamp)."""
    for ns in namespaces:
        for kind in ("deployment", "statefulset"):
            names = kubectl(layout, "get", kind, "-n", ns, "-o", "name").split()
            if names:
                kubectl(layout, "rollout", "restart", "-n", ns, *names)


INSTALLERS = ("istioctl", "helm")


def helm_releases(layout: Layout) -> list[str]:
    """Helm releases in istio-system, from Helm's release Secrets (no helm process)."""
    out = kubectl(
        layout, "get", "secrets", "-n", "istio-system",
        "--field-selector=type=helm.sh/release.v1", "-o", "json",
    )  # fmt: skip
    return sorted({s["metadata"]["labels"]["name"] for s in json.loads(out)["items"]})


def remove_helm_mesh(layout: Layout, releases: list[str]) -> None:
    """Every Istio release Helm installed, and the tags rendered beside them."""
    for release in releases:
        if release != helm.BASE_RELEASE:
            helm.helm(layout, "uninstall", release, "--wait")
    kubectl(
        layout, "delete", "mutatingwebhookconfiguration,service", "-A",
        "-l", "istio.io/tag", "--ignore-not-found",
    )  # fmt: skip
    if helm.BASE_RELEASE in releases:
        helm.helm(layout, "uninstall", helm.BASE_RELEASE, "--wait")


def install_old(layout: Layout, old_revision: str, installer: str) -> None:
    """The old revision installed and tagged `default` by `installer`, converting a mesh the
    other installer owns (its pods keep running: the revision's name stays the same)."""
    v = versions()
    old_version = v["ISTIO_OLD_VERSION"]
    plane = istiod(layout, old_revision)
    if installer == "helm":
        if plane and not helm_owned(plane):
            istioctl(layout, "old", "uninstall", "--purge", "-y")
            plane = None
        helm.set_base(layout, "old", old_version, old_revision)
        if not available(plane):
            helm.install_revision(layout, "old", old_version, old_revision)
        if tag_revision(layout, "default") != old_revision:
            tag = helm.tag_manifest(layout, "old", "default", old_revision)
            kubectl(layout, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=tag)
        return
    if releases := helm_releases(layout):
        remove_helm_mesh(layout, releases)
        plane = istiod(layout, old_revision)
    if not available(plane):
        istioctl(
            layout, "old", "install", "-y", "--set", f"revision={old_revision}",
            "--set", "profile=minimal", "--readiness-timeout", "3m",
        )  # fmt: skip
    if tag_revision(layout, "default") != old_revision:
        istioctl(
            layout, "old", "tag", "set", "default", "--revision", old_revision, "--overwrite", "-y"
        )


def seed(
    layout: Layout,
    old_revision: str,
    new_revision: str,
    extra_namespaces: int = 0,
    installer: str = "istioctl",
) -> None:
    """Converge to the procedure's starting state, from an empty cluster or from whatever a
    test or demo left behind: the old revision installed (by `installer`) and tagged
    `default`, every meshed pod on it, the new revision absent, traffic knobs at their
    defaults."""
    t0 = time.monotonic()
    layout.knobs.unlink(missing_ok=True)
    install_old(layout, old_revision, installer)
    # What README asks of a real cluster: the ServiceAccount in-cluster istioctl runs as.
    kubectl(layout, "apply", "--server-side", "--force-conflicts", "-f", str(RBAC))
    # Kept failed istioctl pods of earlier runs (istioctl_runner 'pod').
    kubectl(layout, "delete", "pods", "-n", "istio-system", "-l", ISTIOCTL_PODS, "--wait=false")
    items = {"apiVersion": "v1", "kind": "List", "items": mesh_objects(extra_namespaces)}
    kubectl(
        layout, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(items)
    )
    pods = json.loads(kubectl(layout, "get", "pods", "-A", "-l", "app", "-o", "json"))
    stale = sorted(
        {
            p["metadata"]["namespace"]
            for p in pods["items"]
            if p["metadata"]["namespace"] != "istio-system"
            and json.loads(
                p["metadata"].get("annotations", {}).get("sidecar.istio.io/status", "{}")
            ).get("revision")
            != old_revision
        }
    )
    restart_all(layout, stale)
    if available(new := istiod(layout, new_revision)):
        if helm_owned(new):
            helm.uninstall_revision(layout, new_revision)
        else:
            istioctl(layout, "new", "uninstall", "--revision", new_revision, "-y")
    wait_for_mesh(layout, old_revision)
    print(
        f"[sandbox] seeded revision {old_revision} ({installer}) in {time.monotonic() - t0:.1f}s "
        f"(restarted: {', '.join(stale) or 'nothing'})",
        file=sys.stderr,
    )
