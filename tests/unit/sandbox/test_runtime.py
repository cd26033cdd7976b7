"""The sandbox's container runtime stand-in and its kwok stage, without a cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox.components import kwok_config
from sandbox.runtime import EXIT_ANNOTATION, find_binary, istioctl_tag, kubeconfig, needs_run


def pod(image: str = "docker.io/istio/istioctl:1.32.0", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "istio-system", "uid": "u"},
        "spec": {"containers": [{"name": "istioctl", "image": image}]},
        "status": {"phase": "Running", **status},
    }


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        ("docker.io/istio/istioctl:1.32.0", "1.32.0"),
        ("registry.example.com:5000/mirror/istio/istioctl:1.31.0-dev", "1.31.0-dev"),
        ("istio/istioctl:1.32.0", "1.32.0"),
        ("docker.io/istio/proxyv2:1.32.0", None),
        ("docker.io/istio/istioctl", None),
    ],
)
def test_only_the_istioctl_image_is_run(image: str, tag: str | None) -> None:
    assert istioctl_tag(pod(image)) == tag


def test_a_pod_runs_once_while_running_and_not_deleted() -> None:
    assert needs_run(pod())
    assert not needs_run(pod(phase="Pending"))
    done = pod()
    done["metadata"]["annotations"] = {EXIT_ANNOTATION: "0"}
    assert not needs_run(done)
    going = pod()
    going["metadata"]["deletionTimestamp"] = "2026-11-25T00:00:00Z"
    assert not needs_run(going)
    two = pod()
    two["spec"]["containers"].append({"name": "sidecar", "image": "x"})
    assert not needs_run(two)


def test_an_image_tag_finds_the_dev_build_of_its_version(tmp_path: Path) -> None:
    built = tmp_path / "istioctl-1.32.0-dev" / "istioctl"
    built.parent.mkdir()
    built.write_text("")
    assert find_binary(tmp_path, "1.32.0") == built
    assert find_binary(tmp_path, "1.31.0") is None


def test_kubeconfig_carries_the_token_and_the_ca() -> None:
    config = json.loads(kubeconfig("https://127.0.0.1:1", "/ca.crt", "tok"))
    assert config["users"][0]["user"] == {"token": "tok"}
    assert config["clusters"][0]["cluster"]["certificate-authority"] == "/ca.crt"


def test_pod_ready_leaves_pods_the_runtime_finished(tmp_path: Path) -> None:
    (tmp_path / "pod-ready.yaml").write_text(
        "kind: Stage\nmetadata:\n  name: pod-ready\nspec:\n  selector:\n"
        "    matchExpressions:\n    - key: '.status.phase'\n      operator: 'In'\n"
        "      values: ['Pending']\n  next:\n    statusTemplate: ''\n"
    )
    stages = {d["metadata"]["name"]: d for d in yaml.safe_load_all(kwok_config(tmp_path, 250))}
    assert set(stages) == {"pod-ready", "pod-exit"}
    ready = stages["pod-ready"]["spec"]
    assert ready["delay"]["durationMilliseconds"] == 250
    keys = {(e["key"], e["operator"]) for e in ready["selector"]["matchExpressions"]}
    annotation = f'.metadata.annotations["{EXIT_ANNOTATION}"]'
    assert (annotation, "DoesNotExist") in keys
    exit_keys = {
        (e["key"], e["operator"])
        for e in stages["pod-exit"]["spec"]["selector"]["matchExpressions"]
    }
    assert (annotation, "Exists") in exit_keys
