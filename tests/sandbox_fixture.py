"""The one sandbox a test session shares: started (and seeded) on first use, reset on demand."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from istio_upgrade import cluster
from sandbox.cli import parse_exports

REPO = Path(__file__).resolve().parent.parent
SANDBOX = str(REPO / "sandbox" / "sandbox")


@dataclass(frozen=True)
class Sandbox:
    """Where the running sandbox is: the exports `sandbox/sandbox env` prints."""

    env: dict[str, str]

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG"]

    @property
    def old_revision(self) -> str:
        return self.env["SANDBOX_OLD_REVISION"]

    @property
    def new_revision(self) -> str:
        return self.env["SANDBOX_NEW_REVISION"]

    @property
    def prometheus_url(self) -> str:
        return self.env["SANDBOX_PROMETHEUS_URL"]

    @property
    def traffic_url(self) -> str:
        return self.env["SANDBOX_TRAFFIC_URL"]

    def kube(self) -> cluster.Kube:
        return cluster.connect(cluster.KubeTarget(kubeconfig=self.kubeconfig))

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command (kubectl, istioctl) against the sandbox, output captured."""
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=check,
            env={**os.environ, "KUBECONFIG": self.kubeconfig},
        )

    def kubectl(self, *args: str) -> str:
        return self.run(self.env["SANDBOX_KUBECTL"], *args).stdout

    def resource_versions(self) -> dict[str, str]:
        """Every object a run could touch, by kind/namespace/name: equal means nothing changed.

        Namespaces that integration tests create for themselves (`it-*`) are left out: they
        come and go while other tests run.
        """
        kinds = "namespaces,deployments,statefulsets,pods,services,mutatingwebhookconfigurations"
        out = json.loads(self.kubectl("get", kinds, "-A", "-o", "json"))
        versions = {}
        for obj in out["items"]:
            meta = obj["metadata"]
            ns = meta.get("namespace", "")
            if (ns or (meta["name"] if obj["kind"] == "Namespace" else "")).startswith("it-"):
                continue
            versions[f"{obj['kind']}/{ns}/{meta['name']}"] = meta["resourceVersion"]
        return versions

    def reset(self, installer: str = "istioctl") -> None:
        """Back to the seeded starting state (old revision everywhere, default knobs), the
        old revision installed by `installer` (istioctl, or helm: Istio's charts)."""
        subprocess.run([SANDBOX, "reset", "--installer", installer], check=True)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """Start the sandbox once per session (seeded); stop it after if this session started it."""
    was_running = subprocess.run([SANDBOX, "status"], capture_output=True).returncode == 0
    out = subprocess.run([SANDBOX, "up", "--seed"], check=True, capture_output=True, text=True)
    yield Sandbox(parse_exports(out.stdout))
    if not was_running and not os.environ.get("SANDBOX_KEEP"):
        subprocess.run([SANDBOX, "down"], check=True)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
