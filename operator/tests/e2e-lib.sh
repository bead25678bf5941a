#!/usr/bin/env bash
# What the operator's end-to-end scripts share: paths and caches, logging, bounded
# waits, the local cluster brought up (or reused) with the images current, and the
# operator installed. Sourced, not run; the caller sets E2E_TAG (its log prefix) first.
# shellcheck disable=SC2034 # CLUSTER, started_cluster, had_release… are read by the callers
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
export FLASHSALE_CACHE=${FLASHSALE_CACHE:-$HOME/.cache/flashsale}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FLASHSALE_CACHE/target}
CLUSTER=${FLASHSALE_E2E_CLUSTER:-e2e}
OP_NS=flashsale-system
RELEASE=flashsale

log() { echo "$E2E_TAG: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
# wait_for SECONDS WHAT CMD...: polls CMD every second until it succeeds.
wait_for() {
  local limit=$1 what=$2 t0=$SECONDS; shift 2
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - t0 < limit )) || fail "timed out after ${limit}s waiting for $what"
    sleep 1
  done
  log "ok: $what ($((SECONDS - t0))s)"
}

# e2e_cluster_up: the cluster $CLUSTER up (started_cluster=true if this run started it),
# kubectl/helm on PATH, the operator and node binaries (the images) current, and
# had_release=true if the operator's helm release was already installed.
e2e_cluster_up() {
  started_cluster=false
  # Captured first: `… | grep -q` under pipefail fails at random (grep quits early, SIGPIPE).
  local status
  status=$(bash testbed/cluster.sh status --name "$CLUSTER" 2>&1 || true)
  grep -q 'kube-apiserver *running' <<<"$status" || started_cluster=true
  bash testbed/cluster.sh up --name "$CLUSTER" >&2
  eval "$(bash testbed/cluster.sh env --name "$CLUSTER")"
  # The cluster may have been up before the last change: make sure the images are current.
  # Built with the cluster's profile (FLASHSALE_PROFILE from its env), into
  # $FLASHSALE_BIN_DIR, where the cluster's images and the crowd are.
  cargo build --profile "$FLASHSALE_PROFILE" -q -p flashsale-operator
  # Best effort, like testbed/cluster.sh: a node mid-edit must not hide the last good binary.
  cargo build --profile "$FLASHSALE_PROFILE" -q -p stock-node 2>/dev/null ||
    echo "warning: stock-node did not build; using the last built binary" >&2
  had_release=false
  if helm status "$RELEASE" -n "$OP_NS" >/dev/null 2>&1; then had_release=true; fi
}

# e2e_install_operator [HELM_ARGS...]: the operator's chart from this checkout installed
# (or upgraded) with HELM_ARGS, the cluster's CRD current, a release that was already
# there restarted onto the binary just built, and the sale namespace $NS made afresh.
e2e_install_operator() {
  kubectl create namespace "$OP_NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  # crds/ is never upgraded by helm: keep the cluster's CRD current for this checkout,
  # first, as the README's upgrade says (the operator refuses an older one).
  kubectl apply --server-side --force-conflicts -f crds/flashsale.dev_flashsales.yaml >/dev/null
  wait_for 60 "CRD established" kubectl wait --for=condition=Established crd/flashsales.flashsale.dev --timeout=5s
  helm upgrade --install "$RELEASE" charts/flashsale-operator -n "$OP_NS" "$@" --wait --timeout 180s >/dev/null
  # The local cluster runs the image as the workspace's binary: an operator already
  # running may be an older build (on a real cluster a new tag does this).
  if $had_release; then
    kubectl rollout restart deploy/"$RELEASE"-flashsale-operator -n "$OP_NS" >/dev/null
  fi
  wait_for 120 "operator ready" kubectl rollout status deploy/"$RELEASE"-flashsale-operator -n "$OP_NS" --timeout=5s
  kubectl delete namespace "$NS" --wait=true --timeout=120s >/dev/null 2>&1 || true
  kubectl create namespace "$NS" >/dev/null
}

# e2e_python_venv: a Python with matplotlib (the chaos suite draws its timelines), in a
# venv cached under $FLASHSALE_CACHE; E2E_PYTHON is its python.
e2e_python_venv() {
  local venv=$FLASHSALE_CACHE/venv-plots
  E2E_PYTHON=$venv/bin/python
  if ! "$E2E_PYTHON" -c 'import matplotlib' >/dev/null 2>&1; then
    log "installing matplotlib into $venv (once)"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check 'matplotlib==3.9.*' >&2
  fi
}

# op_metrics: the leading operator's /metrics (Prometheus text).
op_metrics() {
  local leader ip
  leader=$(kubectl get lease -n "$OP_NS" "$RELEASE-flashsale-operator" -o jsonpath='{.spec.holderIdentity}')
  ip=$(kubectl get pod -n "$OP_NS" "$leader" -o jsonpath='{.status.podIP}')
  curl -sf --max-time 3 "http://$ip:8081/metrics"
}
