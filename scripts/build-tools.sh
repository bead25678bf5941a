#!/usr/bin/env bash
# Builds the real upstream control-plane binaries, etcd, kubectl, helm and promtool from the
# Go module proxy (no release downloads are reachable here) into a cache keyed by
# version, outside the checkout. A second run finds them and returns at once.
#
#   scripts/build-tools.sh            # build what is missing, print the bin dir
#
# Versions are pinned here and nowhere else.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
# Prometheus 3.16's Go module version (its promtool unit-tests the chart's alerts).
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}
CACHE=${FLASHSALE_CACHE:-$HOME/.cache/flashsale}
BIN="$CACHE/tools/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"

log() { echo "build-tools: $*" >&2; }

need() { for b in "$@"; do [ -x "$BIN/$b" ] || return 0; done; return 1; }

export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod
mkdir -p "$BIN"

# Two callers at once (CI and a cluster `up`) wait for one build instead of racing.
exec 8>"$BIN/.build.lock"
flock 8
started=$SECONDS

# -- Kubernetes: a wrapper module that replaces every staging module with its tag.
if need kube-apiserver kube-controller-manager kube-scheduler kubectl; then
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  staging_version="v0.${K8S_VERSION#v1.}"
  work=$(mktemp -d "$CACHE/k8s-build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  log "building Kubernetes $K8S_VERSION (with every tool below, ~13 min on 2 cores with an empty Go cache) in $work"
  {
    echo "module flashsale.local/k8s-build"
    echo
    echo "go 1.26.0"
    echo
    echo "godebug default=go1.26"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    for m in api apiextensions-apiserver apimachinery apiserver cli-runtime client-go \
      cloud-provider cluster-bootstrap code-generator component-base component-helpers \
      controller-manager cri-api cri-client cri-streaming csi-translation-lib \
      dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator \
      kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics \
      mount-utils pod-security-admission sample-apiserver streaming; do
      echo "replace k8s.io/$m => k8s.io/$m $staging_version"
    done
  } > "$work/go.mod"
  ver_flags=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ver_flags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ver_flags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$work" && go mod download k8s.io/kubernetes && \
    go build -trimpath -ldflags "-s -w $ver_flags" -o "$work/out/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl)
  mv "$work"/out/* "$BIN/"
  rm -rf "$work"; trap - EXIT
fi

# -- etcd 3.6: its main package is the server module's root; same wrapper trick.
if need etcd; then
  work=$(mktemp -d "$CACHE/etcd-build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  log "building etcd $ETCD_VERSION"
  printf 'module flashsale.local/etcd-build\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
    "$ETCD_VERSION" > "$work/go.mod"
  (cd "$work" && go mod download go.etcd.io/etcd/server/v3 && \
    go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
      -o "$work/etcd" go.etcd.io/etcd/server/v3)
  mv "$work/etcd" "$BIN/etcd"
  rm -rf "$work"; trap - EXIT
fi

# -- helm
if need helm; then
  work=$(mktemp -d "$CACHE/helm-build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  log "building helm $HELM_VERSION"
  printf 'module flashsale.local/helm-build\n\ngo 1.26.0\n\nrequire helm.sh/helm/v3 %s\n' \
    "$HELM_VERSION" > "$work/go.mod"
  (cd "$work" && go mod download helm.sh/helm/v3 && \
    go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
      -o "$work/helm" helm.sh/helm/v3/cmd/helm)
  mv "$work/helm" "$BIN/helm"
  rm -rf "$work"; trap - EXIT
fi

# -- promtool (Prometheus' rule checker and rule unit tests), without the service
# discovery plugins it does not need for that (the `remove_all_sd` build tag).
if need promtool; then
  work=$(mktemp -d "$CACHE/promtool-build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  log "building promtool (Prometheus module $PROMETHEUS_VERSION)"
  printf 'module flashsale.local/promtool-build\n\ngo 1.26.0\n\nrequire github.com/prometheus/prometheus %s\n' \
    "$PROMETHEUS_VERSION" > "$work/go.mod"
  (cd "$work" && go mod download github.com/prometheus/prometheus && \
    go build -tags remove_all_sd -trimpath -ldflags "-s -w" \
      -o "$work/promtool" github.com/prometheus/prometheus/cmd/promtool)
  mv "$work/promtool" "$BIN/promtool"
  rm -rf "$work"; trap - EXIT
fi

[ $((SECONDS - started)) -gt 1 ] && log "done in $((SECONDS - started)) s"
echo "$BIN"
