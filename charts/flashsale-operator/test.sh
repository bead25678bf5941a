#!/usr/bin/env bash
# The chart on its own (make test): `helm lint --strict` and `helm template` with
# monitoring off and on (off: no monitoring object; on: a ServiceMonitor, a PodMonitor,
# a PrometheusRule and the dashboard ConfigMap, each well formed), the alert rules
# checked and unit-tested with promtool (files/alerts_test.yaml), and — when a cluster
# is given (FLASHSALE_E2E_CLUSTER) — every rendered object applied with a server-side
# dry run against it, the Prometheus operator's CRDs (from its Go module, pinned)
# installed first.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
log() { echo "chart: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
BIN=$(bash "$ROOT/scripts/build-tools.sh")
export PATH="$BIN:$PATH"
KV=--kube-version=1.36.3

log "helm lint --strict (monitoring off, on)"
helm lint --strict . >/dev/null || helm lint --strict .
helm lint --strict . --set monitoring.enabled=true >/dev/null || helm lint --strict . --set monitoring.enabled=true

log "helm template: monitoring off renders none of it, on renders all four"
off=$(helm template t . $KV)
if grep -qE "^kind: (ServiceMonitor|PodMonitor|PrometheusRule)$" <<<"$off" ||
  grep -q -- "-dashboard$" <<<"$off"; then
  fail "monitoring objects rendered with monitoring.enabled=false"
fi
on=$(helm template t . $KV --set monitoring.enabled=true --set monitoring.labels.release=kps)
python3 - "$on" <<'PY'
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(sys.argv[1]) if d]
kinds = {d["kind"]: d for d in docs}
for k in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"):
    assert k in kinds, f"no {k} with monitoring.enabled=true"
    if k != "ConfigMap":
        assert kinds[k]["metadata"]["labels"].get("release") == "kps", f"{k} lacks monitoring.labels"
rules = kinds["PrometheusRule"]["spec"]["groups"][0]["rules"]
names = {r["alert"] for r in rules}
want = {"FlashSaleOversold", "FlashSalePrimaryRefusingForLoad", "FlashSaleReplicationLagging",
        "FlashSaleOperatorNoLeader", "FlashSaleFailoverBlocked"}
assert names == want, names
oversold = [r for r in rules if r["alert"] == "FlashSaleOversold"][0]
assert oversold["labels"]["severity"] == "critical"
dash = json.loads(kinds["ConfigMap"]["data"]["flashsale.json"])
assert dash["title"] == "flashsale" and len(dash["panels"]) >= 6
assert kinds["ConfigMap"]["metadata"]["labels"]["grafana_dashboard"] == "1"
pm = kinds["PodMonitor"]["spec"]
assert pm["selector"]["matchLabels"]["app.kubernetes.io/name"] == "stock-node"
print(f"chart: monitoring on: {', '.join(sorted(kinds))}; alerts {', '.join(sorted(names))}; dashboard of {len(dash['panels'])} panels", file=sys.stderr)
PY

log "promtool check rules + test rules (files/alerts_test.yaml)"
promtool check rules files/alerts.yaml >/dev/null
promtool test rules files/alerts_test.yaml

if [ -n "${FLASHSALE_E2E_CLUSTER:-}" ]; then
  export KUBECONFIG=${FLASHSALE_CACHE:-$HOME/.cache/flashsale}/clusters/$FLASHSALE_E2E_CLUSTER/admin.kubeconfig
  PO_VERSION=v0.94.0
  dir=$(cd "$ROOT" && GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json \
    "github.com/prometheus-operator/prometheus-operator@$PO_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  log "server-side dry run against cluster $FLASHSALE_E2E_CLUSTER (Prometheus operator CRDs $PO_VERSION)"
  for crd in servicemonitors podmonitors prometheusrules; do
    kubectl apply --server-side -f "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml" >/dev/null
  done
  for crd in servicemonitors podmonitors prometheusrules; do
    kubectl wait --for=condition=Established "crd/$crd.monitoring.coreos.com" --timeout=60s >/dev/null
  done
  ns=chart-dry-run
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  out=$(mktemp)
  trap 'rm -f "$out"; kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true' EXIT
  for mon in false true; do
    helm template t . $KV -n "$ns" --set monitoring.enabled=$mon |
      kubectl apply --server-side --dry-run=server -n "$ns" -f - >"$out" 2>&1 ||
      { cat "$out" >&2; fail "server-side dry run, monitoring.enabled=$mon"; }
    log "ok: monitoring.enabled=$mon: $(grep -c 'serverside-applied' "$out") objects accepted by the API server (dry run)"
  done
fi
log "PASS"
