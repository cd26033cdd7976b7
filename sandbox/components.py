"""The sandbox's processes: what each one runs, how it is started, checked and stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Layout:
    """Where a sandbox keeps its state, and the loopback ports it uses."""

    home: Path
    cache: Path
    etcd_port: int = _env_int("SANDBOX_ETCD_PORT", 12379)
    apiserver_port: int = _env_int("SANDBOX_APISERVER_PORT", 16443)
    kwok_port: int = _env_int("SANDBOX_KWOK_PORT", 20247)
    kubelet_port: int = _env_int("SANDBOX_KUBELET_PORT", 20250)
    traffic_port: int = _env_int("SANDBOX_TRAFFIC_PORT", 19464)
    prometheus_port: int = _env_int("SANDBOX_PROMETHEUS_PORT", 19090)
    pod_ready_delay_ms: int = _env_int("SANDBOX_POD_READY_DELAY_MS", 500)

    @property
    def pki(self) -> Path:
        return self.home / "pki"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def pids(self) -> Path:
        return self.home / "pids"

    @property
    def kubeconfig(self) -> Path:
        return self.home / "kubeconfig"

    @property
    def egress_socket(self) -> Path:
        return self.home / "egress.sock"

    @property
    def knobs(self) -> Path:
        return self.home / "traffic-knobs.json"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"


def default_layout() -> Layout:
    home = Path(os.environ.get("SANDBOX_HOME", REPO / ".sandbox"))
    cache = Path(os.environ.get("SANDBOX_CACHE", Path.home() / ".cache" / "istio-canary-upgrade"))
    return Layout(home=home.resolve(), cache=cache)


@dataclass(frozen=True)
class Component:
    """One long-running process of the sandbox and the probe that says it is ready."""

    name: str
    argv: Callable[[Layout], list[str]]
    ready: Callable[[Layout], bool]
    prepare: Callable[[Layout], None] = field(default=lambda _layout: None)
    env: dict[str, str] = field(default_factory=dict)


def pid_of(layout: Layout, name: str) -> int | None:
    """The pid of a running component, or None (a stale pid file counts as not running)."""
    path = layout.pids / f"{name}.pid"
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    # A recycled pid must still be our process: its command line names the sandbox home.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return None
    return pid if str(layout.home) in cmdline else None


def start(layout: Layout, comp: Component, timeout: float = 120.0) -> bool:
    """Start a component unless it runs; wait until it is ready. Returns True if it was started."""
    if pid_of(layout, comp.name) is not None:
        wait_ready(layout, comp, timeout)
        return False
    comp.prepare(layout)
    layout.logs.mkdir(parents=True, exist_ok=True)
    layout.pids.mkdir(parents=True, exist_ok=True)
    log = open(layout.logs / f"{comp.name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        comp.argv(layout),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        env={**os.environ, **comp.env},
        start_new_session=True,  # survives the CLI and gets no terminal signals
    )
    log.close()
    (layout.pids / f"{comp.name}.pid").write_text(str(proc.pid))
    t0 = time.monotonic()
    wait_ready(layout, comp, timeout, proc)
    print(
        f"[sandbox] started {comp.name} (pid {proc.pid}) in {time.monotonic() - t0:.1f}s",
        file=sys.stderr,
    )
    return True


def wait_ready(
    layout: Layout, comp: Component, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not comp.ready(layout):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{comp.name} exited with {proc.returncode}; see "
                f"{layout.logs / (comp.name + '.log')}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{comp.name} not ready after {timeout:.0f}s; see "
                f"{layout.logs / (comp.name + '.log')}"
            )
        time.sleep(0.2)


def stop(layout: Layout, name: str, grace: float = 10.0) -> bool:
    """Stop a component (its whole process group). Returns True if it was running."""
    pid = pid_of(layout, name)
    (layout.pids / f"{name}.pid").unlink(missing_ok=True)
    if pid is None:
        return False
    return stop_group(pid, grace)


def stop_group(pid: int, grace: float = 10.0) -> bool:
    """SIGTERM a process group, SIGKILL it if its leader outlives the grace time.

    Returns False when there was no such group.
    """
    return bool(stop_groups([pid], grace))


def stop_groups(pids: Iterable[int], grace: float = 10.0) -> list[int]:
    """SIGTERM process groups all at once (they shut down side by side), SIGKILL those whose
    leader outlives the grace time; returns the groups that existed."""
    found = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
            found.append(pid)
    deadline = time.monotonic() + grace
    alive = list(found)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if _still_running(pid)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    return found


def _still_running(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it when it is our child, or it never "dies"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- readiness probes ---------------------------------------------------------------------


def _https_ok(layout: Layout, url: str) -> bool:
    ctx = ssl.create_default_context(cafile=str(layout.pki / "ca.crt"))
    ctx.load_cert_chain(str(layout.pki / "admin.crt"), str(layout.pki / "admin.key"))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def versions() -> dict[str, str]:
    """sandbox/versions.env: the version of every component the sandbox builds."""
    out: dict[str, str] = {}
    for line in (REPO / "sandbox" / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def binary(layout: Layout, component: str, name: str) -> str:
    """Path of a built binary: `sandbox/build.sh` prints and fills its cache folder."""
    out = subprocess.run(
        [str(REPO / "sandbox" / "build.sh"), component],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "SANDBOX_CACHE": str(layout.cache)},
    )
    return str(Path(out.stdout.strip().splitlines()[-1]) / name)


# --- the components -----------------------------------------------------------------------


def _etcd(layout: Layout) -> list[str]:
    p = layout.etcd_port
    return [
        binary(layout, "etcd", "etcd"),
        "--name=sandbox",
        f"--data-dir={layout.home / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{p}",
        f"--advertise-client-urls=http://127.0.0.1:{p}",
        f"--listen-peer-urls=http://127.0.0.1:{p + 1}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{p + 1}",
        f"--initial-cluster=sandbox=http://127.0.0.1:{p + 1}",
        "--quota-backend-bytes=4294967296",
        "--unsafe-no-fsync=true",
        "--listen-metrics-urls=",
        "--log-level=warn",
    ]


EGRESS_CONFIG = """apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
# Webhook calls to Services go through the sandbox's CONNECT proxy, which maps each istiod
# ClusterIP to the local injector of that revision: nothing dials a service or pod IP.
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: {socket}
"""


def _apiserver_prepare(layout: Layout) -> None:
    (layout.home / "egress-selector.yaml").write_text(
        EGRESS_CONFIG.format(socket=layout.egress_socket)
    )


def _apiserver(layout: Layout) -> list[str]:
    pki = layout.pki
    return [
        binary(layout, "kubernetes", "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{layout.etcd_port}",
        "--bind-address=127.0.0.1",
        f"--secure-port={layout.apiserver_port}",
        "--advertise-address=127.0.0.1",
        # Nothing can reach a loopback endpoint from a pod; keep the kubernetes Service bare.
        "--endpoint-reconciler-type=none",
        "--service-cluster-ip-range=10.96.0.0/16",
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=true",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--egress-selector-config-file={layout.home / 'egress-selector.yaml'}",
        # Pod logs: the nodes' InternalIP and kubelet port lead to sandbox/runtime.py.
        "--kubelet-preferred-address-types=InternalIP",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
        "--storage-media-type=application/vnd.kubernetes.protobuf",
        f"--cert-dir={layout.home / 'apiserver-certs'}",
        "--v=1",
    ]


def _controller_manager(layout: Layout) -> list[str]:
    return [
        binary(layout, "kubernetes", "kube-controller-manager"),
        f"--kubeconfig={layout.kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        "--secure-port=0",
        f"--root-ca-file={layout.pki / 'ca.crt'}",
        f"--service-account-private-key-file={layout.pki / 'sa.key'}",
        "--use-service-account-credentials=false",
        "--kube-api-qps=500",
        "--kube-api-burst=1000",
        "--concurrent-deployment-syncs=10",
        "--concurrent-replicaset-syncs=10",
        "--concurrent-statefulset-syncs=10",
        "--v=1",
    ]


def _scheduler(layout: Layout) -> list[str]:
    return [
        binary(layout, "kubernetes", "kube-scheduler"),
        f"--kubeconfig={layout.kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        "--secure-port=0",
        "--kube-api-qps=500",
        "--kube-api-burst=1000",
        "--v=1",
    ]


SANDBOX_STAGES = Path(__file__).parent / "kwok"
POD_READY_UNLESS_EXITED = """    matchExpressions:
    - key: '.metadata.annotations["sandbox.istio-canary-upgrade/exit-code"]'
      operator: 'DoesNotExist'
"""


def kwok_config(stages_dir: Path, pod_ready_delay_ms: int) -> str:
    """kwok's own fast node and pod stages, with a delay before Ready, and the sandbox's."""
    docs = []
    for f in [*sorted(stages_dir.glob("*.yaml")), *sorted(SANDBOX_STAGES.glob("*.yaml"))]:
        text = f.read_text()
        if f.name == "pod-ready.yaml":
            # A short delay makes rollouts take observable time, as real pods do.
            text = text.replace(
                "  next:\n",
                f"  delay:\n    durationMilliseconds: {pod_ready_delay_ms}\n  next:\n",
                1,
            )
            # A pod the runtime stand-in has finished with (pod-exit.yaml) stays as it left it.
            text = text.replace("    matchExpressions:\n", POD_READY_UNLESS_EXITED, 1)
        docs.append(text.strip())
    return "\n---\n".join(docs) + "\n"


def _kwok_prepare(layout: Layout) -> None:
    stages = Path(binary(layout, "kwok", "kwok")).parent / "stages"
    (layout.home / "kwok.yaml").write_text(kwok_config(stages, layout.pod_ready_delay_ms))


def _kwok(layout: Layout) -> list[str]:
    return [
        binary(layout, "kwok", "kwok"),
        f"--kubeconfig={layout.kubeconfig}",
        f"--config={layout.home / 'kwok.yaml'}",
        "--manage-all-nodes=true",
        f"--server-address=127.0.0.1:{layout.kwok_port}",
        # Where the apiserver asks for pod logs: sandbox/runtime.py, through the egress proxy.
        "--node-ip=127.0.0.1",
        f"--node-port={layout.kubelet_port}",
    ]


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _injector(layout: Layout) -> list[str]:
    return _python(
        "sandbox.injector",
        "--server",
        layout.server,
        "--pki",
        str(layout.pki),
        "--socket",
        str(layout.egress_socket),
        "--workdir",
        str(layout.home / "injector"),
        "--kubelet-port",
        str(layout.kubelet_port),
    )


def _runtime(layout: Layout) -> list[str]:
    return _python(
        "sandbox.runtime",
        "--server",
        layout.server,
        "--pki",
        str(layout.pki),
        "--cache",
        str(layout.cache),
        "--workdir",
        str(layout.home / "runtime"),
        "--listen",
        f"127.0.0.1:{layout.kubelet_port}",
    )


def _traffic(layout: Layout) -> list[str]:
    return _python(
        "sandbox.traffic",
        "--server",
        layout.server,
        "--pki",
        str(layout.pki),
        "--listen",
        f"127.0.0.1:{layout.traffic_port}",
        "--knobs",
        str(layout.knobs),
    )


PROMETHEUS_CONFIG = """global:
  scrape_interval: 2s
  evaluation_interval: 2s
scrape_configs:
- job_name: istio-mesh
  scrape_interval: 1s
  static_configs:
  - targets: ['127.0.0.1:{port}']
"""


def _prometheus_prepare(layout: Layout) -> None:
    if shutil.which("prometheus") is None:
        raise RuntimeError(
            "prometheus is not installed; run `apt-get install -y prometheus` (make setup does)"
        )
    (layout.home / "prometheus.yml").write_text(PROMETHEUS_CONFIG.format(port=layout.traffic_port))


def _prometheus(layout: Layout) -> list[str]:
    return [
        "prometheus",
        f"--config.file={layout.home / 'prometheus.yml'}",
        f"--storage.tsdb.path={layout.home / 'prometheus'}",
        f"--web.listen-address=127.0.0.1:{layout.prometheus_port}",
        "--storage.tsdb.retention.time=2d",
        "--log.level=warn",
    ]


COMPONENTS: tuple[Component, ...] = (
    Component("etcd", _etcd, lambda lo: _http_ok(f"http://127.0.0.1:{lo.etcd_port}/health")),
    Component(
        "kube-apiserver",
        _apiserver,
        lambda lo: _https_ok(lo, f"{lo.server}/readyz"),
        prepare=_apiserver_prepare,
    ),
    Component("injector", _injector, lambda lo: lo.egress_socket.exists()),
    Component("kube-controller-manager", _controller_manager, lambda lo: True),
    Component("kube-scheduler", _scheduler, lambda lo: True),
    Component(
        "kwok",
        _kwok,
        lambda lo: _http_ok(f"http://127.0.0.1:{lo.kwok_port}/healthz"),
        prepare=_kwok_prepare,
    ),
    Component("runtime", _runtime, lambda lo: _port_open(lo.kubelet_port)),
    Component(
        "traffic", _traffic, lambda lo: _http_ok(f"http://127.0.0.1:{lo.traffic_port}/metrics")
    ),
    Component(
        "prometheus",
        _prometheus,
        lambda lo: _http_ok(f"{lo.prometheus_url}/-/ready"),
        prepare=_prometheus_prepare,
    ),
)
