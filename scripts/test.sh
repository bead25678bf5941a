#!/usr/bin/env bash
# Every test. Called by `make test` and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step's wall time, printed as it ends and again as a table at the end (even on a
# failure), so a run that nears the 45 min (cold) / 25 min (warm) bar says where it went.
times=""
step() {
  local t0=$SECONDS rc=0
  "$@" || rc=$?
  times+=$(printf '\n  %5d s  %s' $((SECONDS - t0)) "$*")
  echo "test: $((SECONDS - t0)) s: $*" >&2
  return $rc
}
report() { echo "test: the steps' wall times ($SECONDS s in all):$times" >&2; }
step bash scripts/install-deps.sh
# On a fresh machine the cluster's tools (scripts/build-tools.sh: Go, ~13 min on 2 cores)
# and the workspace (Rust) are built from nothing: the tools start here, beside fmt,
# clippy and the build, so each fills the other's downloads and one-threaded links.
# cluster.sh's own call waits for this one (a lock) and finds them built; with the
# cache warm it returns at once. Stopped with this script.
tools_log=$(mktemp)
setsid bash scripts/build-tools.sh >"$tools_log" 2>&1 &
tools_pid=$!
trap 'kill -- -"$tools_pid" 2>/dev/null || true; rm -f "$tools_log"; report' EXIT
step cargo fmt --all --check
step cargo clippy --workspace --all-targets -- -D warnings
# The local-cluster e2e tests (testbed/pod-runner/tests/cluster, ...) share one cluster,
# `test`, started here and taken down even when a test fails.
export FLASHSALE_CLUSTER=test
# The cluster's binaries are the debug build `cargo test` makes anyway (testbed/cluster.sh).
export FLASHSALE_PROFILE=dev
trap 'kill -- -"$tools_pid" 2>/dev/null || true; rm -f "$tools_log"; bash testbed/cluster.sh down --name test; report' EXIT
step bash testbed/cluster.sh up --name test >/dev/null
# (cluster.sh built whatever that build left undone; its log, when it failed:)
step wait "$tools_pid" || { echo "test: the early tools build failed:" >&2; tail -20 "$tools_log" >&2; }
step cargo test --workspace
# The node's OpenAPI document against the node (schemathesis, 3 runs of 15 s).
step bash node/tests/openapi/run.sh 15
# The checked-in document linted, a TypeScript client generated from it, a shop's test
# through that client against a node (clients/typescript/run.sh).
step bash clients/typescript/run.sh
# The operator end to end on the same cluster, after the workspace tests: helm install,
# bad manifests refused, a sale bought from, the kubectl plugin (status, ledger, promote),
# changed, scaled and deleted (operator/tests/e2e.sh).
FLASHSALE_E2E_CLUSTER=test step bash operator/tests/e2e.sh
# The chart alone: helm lint --strict and template with monitoring off and on, promtool
# test rules on its alerts, a server-side dry run of what it renders on the same cluster.
FLASHSALE_E2E_CLUSTER=test step bash charts/flashsale-operator/test.sh
# Replication through the operator on the same cluster: convergence, Redis deleted and a
# secondary killed mid-sale, status.nodes and the lag Events (operator/tests/e2e-replication.sh).
FLASHSALE_E2E_CLUSTER=test step bash operator/tests/e2e-replication.sh
# The autoscaler on the same cluster: an open-loop ramp through the client Service's
# endpoints, a control without it, an HPA it stands down for (operator/tests/e2e-autoscale.sh).
FLASHSALE_E2E_CLUSTER=test step bash operator/tests/e2e-autoscale.sh
# Failover chaos on the same cluster: cases A1–J of FAILOVER.md and K (a scale-down below the primary), each under a crowd that
# follows the primary and retries with the same key (operator/tests/e2e-failover.sh).
FLASHSALE_E2E_CLUSTER=test step bash operator/tests/e2e-failover.sh
