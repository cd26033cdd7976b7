"""How the mesh snapshot scales with namespaces: ours against a per-namespace baseline.

`cluster.snapshot` lists each kind once for the whole cluster; the baseline asks per
namespace, as a straightforward implementation would. Both run in this process against the
same sandbox, interleaved, and the result is printed as a ratio (no absolute claims).
Usage: eval "$(sandbox/sandbox env)"; python bench/snapshot_scale.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from istio_upgrade import cluster
from istio_upgrade.cluster import Kube, KubeTarget


def per_namespace_baseline(kube: Kube) -> int:
    """The same reads, one namespace at a time; returns how many namespaces it read."""
    meshed = [
        n.metadata.name
        for n in kube.core.list_namespace().items
        if "istio.io/rev" in (n.metadata.labels or {})
    ]
    for ns in meshed:
        kube.core.list_namespaced_pod(ns)
        kube.apps.list_namespaced_deployment(ns)
        kube.apps.list_namespaced_stateful_set(ns)
        kube.apps.list_namespaced_daemon_set(ns)
        kube.apps.list_namespaced_replica_set(ns)
    return len(meshed)


def ours(kube: Kube) -> int:
    return len(cluster.snapshot(kube).namespaces)


def timed(fn: Callable[[Kube], int], kube: Kube) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn(kube)
    return time.perf_counter() - t0, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    kube = cluster.connect(KubeTarget(kubeconfig=os.environ["KUBECONFIG"]))
    base_times, our_times = [], []
    for _ in range(args.rounds):
        t, n_base = timed(per_namespace_baseline, kube)
        base_times.append(t)
        t, n_ours = timed(ours, kube)
        our_times.append(t)
    base, mine = statistics.median(base_times), statistics.median(our_times)
    print(
        f"namespaces: baseline read {n_base}, snapshot read {n_ours} "
        f"(the snapshot also reads control planes and tags)"
    )
    print(
        f"snapshot time / per-namespace baseline time = {mine / base:.2f} "
        f"(median of {args.rounds} interleaved rounds)"
    )


if __name__ == "__main__":
    main()
