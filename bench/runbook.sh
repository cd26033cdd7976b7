#!/usr/bin/env bash
# The serial runbook a person runs: the procedure's istioctl and kubectl commands one after
# another against $KUBECONFIG, one namespace after another (the canary first), with
# `kubectl rollout status` after each restart. The baseline the DAG is measured against.
#
# Usage: KUBECONFIG=... bench/runbook.sh
#   eval "$(sandbox/sandbox env)"; bench/runbook.sh       # against the sandbox
# Optional environment (defaults in brackets):
#   KUBECTL            kubectl binary [$SANDBOX_KUBECTL, else the sandbox's build cache]
#   ISTIOCTL_NEW       istioctl of the target version [$SANDBOX_ISTIOCTL_NEW, else the cache]
#   NEW_REVISION       revision to install [from sandbox/versions.env: ISTIO_NEW_VERSION]
#   OLD_REVISION       revision to remove at the end [from ISTIO_OLD_VERSION]
#   TAG                revision tag the namespaces follow [default]
#   GATEWAY            namespace/deployment of the ingress gateway
#                      [istio-ingress/istio-ingressgateway]
#   CANARY             the canary namespace [the first meshed namespace by name]
#   ROLLOUT_TIMEOUT    per `kubectl rollout status` [10m]
# Every step prints `[runbook] <epoch seconds> begin|end <step>` on stdout, so a driver can
# time the steps (bench/upgrade_scale.py reads them); command output goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../sandbox/versions.env
source "$here/sandbox/versions.env"
cache="${SANDBOX_CACHE:-$HOME/.cache/istio-canary-upgrade}"
revision_of() { local v="${1%%-*}"; echo "${v//./-}"; }  # 1.32.0-dev -> 1-32-0

: "${KUBECONFIG:?set KUBECONFIG, e.g. eval \"\$(sandbox/sandbox env)\"}"
export KUBECONFIG
KUBECTL="${KUBECTL:-${SANDBOX_KUBECTL:-$cache/kubernetes-$KUBERNETES_VERSION/kubectl}}"
ISTIOCTL_NEW="${ISTIOCTL_NEW:-${SANDBOX_ISTIOCTL_NEW:-$cache/istioctl-$ISTIO_NEW_VERSION/istioctl}}"
NEW_REVISION="${NEW_REVISION:-$(revision_of "$ISTIO_NEW_VERSION")}"
OLD_REVISION="${OLD_REVISION:-$(revision_of "$ISTIO_OLD_VERSION")}"
TAG="${TAG:-default}"
GATEWAY="${GATEWAY:-istio-ingress/istio-ingressgateway}"
ROLLOUT_TIMEOUT="${ROLLOUT_TIMEOUT:-10m}"
for bin in "$KUBECTL" "$ISTIOCTL_NEW"; do
  [ -x "$bin" ] || { echo "runbook: no executable $bin; run sandbox/build.sh" >&2; exit 2; }
done

mark() { printf '[runbook] %s %s\n' "$(date +%s.%N)" "$*"; }
run() { printf '+ %s\n' "$*" >&2; "$@" >&2; }

# Restart every Deployment, StatefulSet and DaemonSet of a namespace, then wait for each.
restart_namespace() {
  local ns=$1 names workloads
  names=$("$KUBECTL" get deployment,statefulset,daemonset -n "$ns" -o name)
  [ -n "$names" ] || return 0
  mapfile -t workloads <<<"$names"
  run "$KUBECTL" rollout restart -n "$ns" "${workloads[@]}"
  for w in "${workloads[@]}"; do
    run "$KUBECTL" rollout status -n "$ns" "$w" --timeout="$ROLLOUT_TIMEOUT"
  done
}

mark begin runbook
# The meshed namespaces: those following the tag (istio-injection=enabled too for default).
selectors=("istio.io/rev=$TAG")
[ "$TAG" = default ] && selectors+=("istio-injection=enabled")
found=""
for sel in "${selectors[@]}"; do
  found+=$("$KUBECTL" get namespaces -l "$sel" -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
  found+=$'\n'
done
gateway_ns="${GATEWAY%%/*}"
mapfile -t namespaces < <(printf '%s' "$found" | grep -vx -e "$gateway_ns" -e '' | LC_ALL=C sort -u)
[ "${#namespaces[@]}" -gt 0 ] || { echo "runbook: no namespace follows tag $TAG" >&2; exit 2; }
CANARY="${CANARY:-${namespaces[0]}}"
mark plan "canary=$CANARY namespaces=${#namespaces[@]} $OLD_REVISION->$NEW_REVISION"

mark begin precheck
run "$ISTIOCTL_NEW" x precheck
mark end precheck

mark begin install
run "$ISTIOCTL_NEW" install --set "revision=$NEW_REVISION" --set profile=minimal -y
mark end install

mark begin tag
run "$ISTIOCTL_NEW" tag set "$TAG" --revision "$NEW_REVISION" --overwrite -y
mark end tag

mark begin gateway
run "$KUBECTL" rollout restart deployment "${GATEWAY#*/}" -n "$gateway_ns"
run "$KUBECTL" rollout status deployment "${GATEWAY#*/}" -n "$gateway_ns" --timeout="$ROLLOUT_TIMEOUT"
mark end gateway

mark begin canary
restart_namespace "$CANARY"
mark end canary

mark begin namespaces
for ns in "${namespaces[@]}"; do
  [ "$ns" = "$CANARY" ] && continue
  restart_namespace "$ns"
done
mark end namespaces

mark begin uninstall
run "$ISTIOCTL_NEW" uninstall --revision "$OLD_REVISION" -y
mark end uninstall
mark end runbook
