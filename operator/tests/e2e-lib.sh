#!/usr/bin/env bash
# What the operator's end-to-end scripts (e2e.sh, e2e-replication.sh) share: paths and
# caches, logging, bounded waits, and the local cluster brought up (or reused) with the
# images current. Sourced, not run; the caller sets E2E_TAG (its log prefix) first.
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
