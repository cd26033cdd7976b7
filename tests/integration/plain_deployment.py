"""A one-replica Deployment with no mesh labels: what the rollout tests restart and watch."""

from __future__ import annotations

from typing import Any


def plain_deployment(name: str = "web", min_ready_seconds: int = 0) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "minReadySeconds": min_ready_seconds,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": name, "image": f"{name}:1"}]},
            },
        },
    }
