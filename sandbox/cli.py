"""`sandbox/sandbox up|down|reset|status|env`: the local Kubernetes + Istio + Prometheus sandbox."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from sandbox import pki
from sandbox.components import (
    COMPONENTS,
    REPO,
    Layout,
    default_layout,
    pid_of,
    start,
    stop,
    versions,
)
from sandbox.seed import INSTALLERS, ensure_nodes, seed

KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: sandbox
  cluster:
    server: {server}
    certificate-authority: {pki}/ca.crt
users:
- name: admin
  user:
    client-certificate: {pki}/admin.crt
    client-key: {pki}/admin.key
contexts:
- name: sandbox
  context: {{cluster: sandbox, user: admin}}
current-context: sandbox
"""


def revision_of(version: str) -> str:
    """Istio's revision naming: `1.30.4-dev` -> `1-30-4`."""
    return "-".join(version.split("-", 1)[0].split("."))


def parse_exports(text: str) -> dict[str, str]:
    """The `export K=V` lines that `up` and `env` print (see env_lines), as a dict."""
    return dict(
        line.removeprefix("export ").split("=", 1)
        for line in text.splitlines()
        if line.startswith("export ")
    )


def env_lines(layout: Layout) -> list[str]:
    v = versions()
    cache = layout.cache
    return [
        f"export KUBECONFIG={layout.kubeconfig}",
        f"export SANDBOX_HOME={layout.home}",
        f"export SANDBOX_PROMETHEUS_URL={layout.prometheus_url}",
        f"export SANDBOX_TRAFFIC_URL=http://127.0.0.1:{layout.traffic_port}",
        f"export SANDBOX_KUBECTL={cache}/kubernetes-{v['KUBERNETES_VERSION']}/kubectl",
        f"export SANDBOX_ISTIOCTL_OLD={cache}/istioctl-{v['ISTIO_OLD_VERSION']}/istioctl",
        f"export SANDBOX_ISTIOCTL_NEW={cache}/istioctl-{v['ISTIO_NEW_VERSION']}/istioctl",
        f"export SANDBOX_HELM={cache}/helm-{v['HELM_VERSION']}/helm",
        f"export SANDBOX_CHARTS_OLD={cache}/istio-charts-{v['ISTIO_OLD_VERSION']}",
        f"export SANDBOX_CHARTS_NEW={cache}/istio-charts-{v['ISTIO_NEW_VERSION']}",
        f"export SANDBOX_OLD_VERSION={v['ISTIO_OLD_VERSION']}",
        f"export SANDBOX_NEW_VERSION={v['ISTIO_NEW_VERSION']}",
        f"export SANDBOX_OLD_REVISION={revision_of(v['ISTIO_OLD_VERSION'])}",
        f"export SANDBOX_NEW_REVISION={revision_of(v['ISTIO_NEW_VERSION'])}",
    ]


def up(layout: Layout, do_seed: bool, extra_namespaces: int, installer: str) -> None:
    t0 = time.monotonic()
    subprocess.run(
        [str(REPO / "sandbox" / "build.sh")],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "SANDBOX_CACHE": str(layout.cache)},
    )
    layout.home.mkdir(parents=True, exist_ok=True)
    pki.ensure_pki(layout.pki)
    layout.kubeconfig.write_text(KUBECONFIG.format(server=layout.server, pki=layout.pki))
    started = [c.name for c in COMPONENTS if start(layout, c)]
    ensure_nodes(layout)
    if do_seed:
        v = versions()
        seed(
            layout,
            revision_of(v["ISTIO_OLD_VERSION"]),
            revision_of(v["ISTIO_NEW_VERSION"]),
            extra_namespaces,
            installer,
        )
    what = f"started {', '.join(started)}" if started else "everything was already running"
    print(f"[sandbox] up in {time.monotonic() - t0:.1f}s: {what}", file=sys.stderr)
    print("\n".join(env_lines(layout)))


def down(layout: Layout, purge: bool) -> None:
    for comp in reversed(COMPONENTS):
        if stop(layout, comp.name):
            print(f"[sandbox] stopped {comp.name}", file=sys.stderr)
    if purge and layout.home.exists():
        shutil.rmtree(layout.home)
        print(f"[sandbox] removed {layout.home}", file=sys.stderr)


def status(layout: Layout) -> int:
    down_count = 0
    for comp in COMPONENTS:
        pid = pid_of(layout, comp.name)
        ok = pid is not None and comp.ready(layout)
        down_count += not ok
        print(f"{comp.name:26} {'ready' if ok else 'down':6} {pid or ''}")
    return 1 if down_count else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sandbox/sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="build what is missing, start every component")
    p_up.add_argument(
        "--seed",
        action="store_true",
        help="install the old Istio revision, the default tag and meshed apps",
    )
    p_up.add_argument(
        "--extra-namespaces",
        type=int,
        default=0,
        metavar="N",
        help="with --seed: N more meshed namespaces (one Deployment each)",
    )
    p_reset = sub.add_parser("reset", help="back to the seeded state (old revision everywhere)")
    for p in (p_up, p_reset):
        p.add_argument(
            "--installer",
            choices=INSTALLERS,
            default="istioctl",
            help="what installs the old revision when seeding (helm: Istio's charts)",
        )
    p_down = sub.add_parser("down", help="stop every component")
    p_down.add_argument("--purge", action="store_true", help="also delete the sandbox state")
    sub.add_parser("status", help="which components run")
    sub.add_parser("env", help="print shell exports for the sandbox (KUBECONFIG, ...)")
    args = parser.parse_args(argv)
    layout = default_layout()
    if args.command == "up":
        if args.extra_namespaces < 0:
            parser.error("--extra-namespaces must be 0 or more")
        up(layout, args.seed, args.extra_namespaces, args.installer)
    elif args.command == "down":
        down(layout, args.purge)
    elif args.command == "reset":
        v = versions()
        seed(
            layout,
            revision_of(v["ISTIO_OLD_VERSION"]),
            revision_of(v["ISTIO_NEW_VERSION"]),
            installer=args.installer,
        )
    elif args.command == "status":
        return status(layout)
    else:
        print("\n".join(env_lines(layout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
