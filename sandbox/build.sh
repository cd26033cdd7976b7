#!/usr/bin/env bash
# Builds the sandbox binaries from their Go modules into a cache outside the repo, one folder
# per component and version, so a warm machine rebuilds nothing.
# Usage: sandbox/build.sh [component ...]   (default: all; prints the bin folder of each)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
CACHE="${SANDBOX_CACHE:-$HOME/.cache/istio-canary-upgrade}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOFLAGS=-mod=mod CGO_ENABLED=0

log() { printf '[build] %s\n' "$*" >&2; }

# build_into DIR NAME... : runs the body (a function) in a scratch module unless DIR has all NAMEs.
have_all() { local dir=$1; shift; for b in "$@"; do [ -x "$dir/$b" ] || return 1; done; }

timed() {
  local what=$1; shift
  local t0=$SECONDS
  log "building $what"
  "$@"
  log "built $what in $((SECONDS - t0))s"
}

kubernetes() {
  local v=$KUBERNETES_VERSION dir="$CACHE/kubernetes-$KUBERNETES_VERSION"
  local bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  have_all "$dir" "${bins[@]}" && { echo "$dir"; return; }
  local work; work=$(mktemp -d)
  (
    cd "$work"
    go mod init sandbox/kubernetes >/dev/null 2>&1
    # k8s.io/kubernetes pins its staging modules at v0.0.0 with local replaces that a
    # consumer ignores: point each at the release tag that matches.
    local gomod staging minor="${v#v1.}"
    gomod=$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    staging=$(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod")
    for m in $staging; do go mod edit -replace "$m=$m@v0.$minor"; done
    go get "k8s.io/kubernetes@$v" >/dev/null 2>&1
    local major=1 kminor="${minor%%.*}" date
    date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    local ld="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$kminor"
      ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
    done
    mkdir -p "$dir"
    for b in "${bins[@]}"; do
      local path="k8s.io/kubernetes/cmd/$b"
      timed "$b $v" go build -trimpath -ldflags "$ld" -o "$dir/$b" "$path"
    done
  )
  rm -rf "$work"
  echo "$dir"
}

etcd() {
  local dir="$CACHE/etcd-$ETCD_VERSION"
  have_all "$dir" etcd && { echo "$dir"; return; }
  local work; work=$(mktemp -d)
  (
    cd "$work"
    # The etcd root module carries replace directives that a dependency cannot honour, so a
    # small main module calls the server's own entry point instead.
    go mod init sandbox/etcd >/dev/null 2>&1
    cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1
    go mod tidy >/dev/null 2>&1
    mkdir -p "$dir"
    timed "etcd $ETCD_VERSION" go build -trimpath -ldflags "-s -w" -o "$dir/etcd" .
  )
  rm -rf "$work"
  echo "$dir"
}

# module_build DIR BIN MODULE VERSION PKG LDFLAGS: builds package PKG of MODULE@VERSION into
# DIR/BIN from a scratch module (the module's own go.mod replaces do not apply to a dependency).
module_build() {
  local dir=$1 bin=$2 module=$3 version=$4 pkg=$5 ld=$6
  local work; work=$(mktemp -d)
  (
    cd "$work"
    go mod init "sandbox/$bin" >/dev/null 2>&1
    go get "$module@$version" >/dev/null 2>&1
    mkdir -p "$dir"
    timed "$bin $version" go build -trimpath -ldflags "-s -w $ld" -o "$dir/$bin" "$pkg"
  )
  rm -rf "$work"
}

kwok() {
  local dir="$CACHE/kwok-$KWOK_VERSION"
  have_all "$dir" kwok && [ -d "$dir/stages" ] && { echo "$dir"; return; }
  module_build "$dir" kwok sigs.k8s.io/kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok \
    "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
  # kwok's own stage definitions (node and pod lifecycles) ship in the module: keep them
  # beside the binary so the sandbox can compose its config from them.
  local src; src="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
  mkdir -p "$dir/stages"
  cp "$src"/node/fast/node-initialize.yaml "$src"/node/heartbeat/node-heartbeat.yaml \
    "$src"/pod/fast/pod-ready.yaml "$src"/pod/fast/pod-complete.yaml \
    "$src"/pod/fast/pod-delete.yaml "$dir/stages/"
  chmod 644 "$dir"/stages/*
  echo "$dir"
}

istioctl_build() {
  local module=$1 version=$2 dir="$CACHE/istioctl-$2"
  have_all "$dir" istioctl && { echo "$dir"; return; }
  local work; work=$(mktemp -d)
  (
    cd "$work"
    go mod init sandbox/istioctl >/dev/null 2>&1
    # Some of istio's pinned dependencies are unknown to the checksum database: start from
    # istio's own go.sum, so those are verified against the hashes istio committed.
    local src
    src=$(go mod download -json "istio.io/istio@$module" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    cp "$src/go.sum" go.sum && chmod 644 go.sum
    go get "istio.io/istio@$module" >/dev/null 2>&1
    local p=istio.io/istio/pkg/version
    mkdir -p "$dir"
    timed "istioctl $version" go build -trimpath \
      -ldflags "-s -w -X $p.buildVersion=$version -X $p.buildTag=$version -X $p.buildHub=docker.io/istio -X $p.buildStatus=Clean" \
      -o "$dir/istioctl" istio.io/istio/istioctl/cmd/istioctl
  )
  rm -rf "$work"
  echo "$dir"
}

istioctl_old() { istioctl_build "$ISTIO_OLD_MODULE" "$ISTIO_OLD_VERSION"; }
istioctl_new() { istioctl_build "$ISTIO_NEW_MODULE" "$ISTIO_NEW_VERSION"; }

helm() {
  local dir="$CACHE/helm-$HELM_VERSION"
  have_all "$dir" helm && { echo "$dir"; return; }
  module_build "$dir" helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  echo "$dir"
}

# Istio's charts of one version (base, istiod, gateway), packaged from the istio module with
# the chart and app version set (the module's charts carry development placeholders).
istio_charts() {
  local module=$1 version=$2 dir="$CACHE/istio-charts-$2"
  local charts=(base istiod gateway)
  local all_there=1
  for c in "${charts[@]}"; do [ -f "$dir/$c.tgz" ] || all_there=0; done
  [ "$all_there" = 1 ] && { echo "$dir"; return; }
  local helm_bin src work
  helm_bin="$(helm)/helm"
  src=$(go mod download -json "istio.io/istio@$module" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  work=$(mktemp -d)
  mkdir -p "$dir"
  local -A from=([base]=base [istiod]=istio-control/istio-discovery [gateway]=gateway)
  for c in "${charts[@]}"; do
    # a copy: the module cache is read-only, and helm package writes nothing there anyway
    cp -r "$src/manifests/charts/${from[$c]}" "$work/$c" && chmod -R u+w "$work/$c"
    "$helm_bin" package "$work/$c" --version "$version" --app-version "$version" \
      -d "$work/out" >/dev/null
    mv "$work/out/"*"-$version.tgz" "$dir/$c.tgz"
  done
  rm -rf "$work"
  log "packaged istio charts $version"
  echo "$dir"
}

istio_charts_old() { istio_charts "$ISTIO_OLD_MODULE" "$ISTIO_OLD_VERSION"; }
istio_charts_new() { istio_charts "$ISTIO_NEW_MODULE" "$ISTIO_NEW_VERSION"; }

all=(etcd kwok kubernetes istioctl_old istioctl_new helm istio_charts_old istio_charts_new)
for c in "${@:-${all[@]}}"; do
  case " ${all[*]} " in *" $c "*) "$c" ;; *) echo "unknown component '$c'; use one of: ${all[*]}" >&2; exit 2 ;; esac
done
