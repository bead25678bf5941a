#!/usr/bin/env bash
# `make demo`: a flash sale end to end on a fresh machine. Installs what it needs, builds,
# brings up the local Kubernetes cluster, installs the operator with helm, applies the
# example FlashSale, turns its autoscaler on, sends a crowd of buyers (many times the
# stock) through the client Service — every ready node takes purchases, secondaries
# forward them to the primary in batches — and prints the outcome, how the load spread
# over the nodes, what the autoscaler did, and what kubectl says. The cluster stays up to explore.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export FLASHSALE_CACHE=${FLASHSALE_CACHE:-$HOME/.cache/flashsale}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FLASHSALE_CACHE/target}
CLUSTER=${FLASHSALE_CLUSTER:-dev}
NS=${DEMO_NAMESPACE:-shop}
OP_NS=flashsale-system
RELEASE=flashsale
SALE=launch
# The crowd: this many buyers per unit of stock.
CROWD_FACTOR=${CROWD_FACTOR:-10}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }
t0=$SECONDS

say "1/6 packages and tools (first run: builds Kubernetes from source, 20-40 min; then cached)"
bash scripts/install-deps.sh
bash scripts/build-tools.sh >/dev/null

say "2/6 local cluster '$CLUSTER' (real control plane + the project's pod runner)"
bash testbed/cluster.sh up --name "$CLUSTER"
eval "$(bash testbed/cluster.sh env --name "$CLUSTER")"
cargo build --release -q -p flashsale-operator
# Best effort, like testbed/cluster.sh: a node mid-edit must not hide the last good binary.
cargo build --release -q -p stock-node 2>/dev/null ||
  echo "warning: stock-node did not build; using the last built binary" >&2

say "3/6 helm install the operator"
# helm never upgrades crds/: keep the CRD in step with this checkout, first (the
# operator refuses to run on an older one).
kubectl apply --server-side --force-conflicts -f crds/flashsale.dev_flashsales.yaml >/dev/null
kubectl wait --for=condition=Established crd/flashsales.flashsale.dev --timeout=60s >/dev/null
helm upgrade --install "$RELEASE" charts/flashsale-operator -n "$OP_NS" --create-namespace \
  --wait --timeout 180s
# The local cluster runs the image as the workspace's binary: restart the operator so a
# reused cluster runs the binary just built (on a real cluster a new tag does this).
kubectl rollout restart deploy/"$RELEASE"-flashsale-operator -n "$OP_NS" >/dev/null
kubectl rollout status deploy/"$RELEASE"-flashsale-operator -n "$OP_NS" --timeout=180s

say "4/6 the example sale (examples/flashsale.yaml)"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
if kubectl get -n "$NS" flashsale "$SALE" >/dev/null 2>&1; then
  echo "a previous demo's sale exists: deleting it and its WAL volumes for a fresh start"
  kubectl delete -n "$NS" flashsale "$SALE" --timeout=180s
  kubectl get pvc -n "$NS" -o name | grep "/wal-$SALE-" | xargs -r kubectl delete -n "$NS" --timeout=120s
fi
kubectl apply -n "$NS" -f examples/flashsale.yaml
kubectl wait -n "$NS" --for=condition=Ready "flashsale/$SALE" --timeout=300s
kubectl get -n "$NS" flashsale "$SALE"

say "5/6 the crowd, through the client Service (every ready node is a front door)"
# The local cluster has no kube-proxy: the crowd spreads over the client Service's ready
# endpoints itself, re-read every second (a file this script keeps current).
endpoints() {
  kubectl get endpointslices -n "$NS" -l kubernetes.io/service-name="$SALE" \
    -o jsonpath='{.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}' |
    tr ' ' '\n' | sed -n 's|^\(..*\)$|http://\1:8080|p'
}
urls=$(mktemp)
for _ in $(seq 60); do
  endpoints >"$urls" 2>/dev/null || true
  [ -s "$urls" ] && break
  sleep 1
done
[ -s "$urls" ] || die "the client Service has no ready endpoint"
( while sleep 1; do endpoints >"$urls.new" 2>/dev/null && [ -s "$urls.new" ] && mv "$urls.new" "$urls"; done ) &
refresher=$!
trap 'kill $refresher 2>/dev/null || true; rm -f "$urls" "$urls.new"' EXIT
# The autoscaler on, with a demo-sized target, so the crowd makes it act.
kubectl patch -n "$NS" flashsale "$SALE" --type merge -p \
  '{"spec":{"autoscaling":{"enabled":true,"minReplicas":3,"maxReplicas":5,"targetPurchasesPerS":100,"stableWindow":"10s","panicWindow":"2s","scaleDownStabilization":"10s"}}}' >/dev/null
stock=$(kubectl get -n "$NS" flashsale "$SALE" -o jsonpath='{.status.stock}')
buyers=$((stock * CROWD_FACTOR))
first=$(head -1 "$urls")
echo "client Service $SALE -> $(tr '\n' ' ' <"$urls"); $stock units on sale; sending $buyers buyers"
"$CARGO_TARGET_DIR/release/crowd" --url "$first" --urls-file "$urls" --buyers "$buyers" \
  --concurrency 64 --customers $((buyers / 3))
echo
echo "how the crowd spread over the nodes (FORWARDED: a secondary's purchases, confirms and"
echo "cancels sent to the primary / the batches they went in), and what the autoscaler did:"
PATH="$ROOT/plugins:$PATH" kubectl flashsale status "$SALE" -n "$NS" || true
kubectl get events.events.k8s.io -n "$NS" --sort-by=.metadata.creationTimestamp \
  -o custom-columns=REASON:.reason,NOTE:.note 2>/dev/null |
  grep -E "^(REASON|ScaledUp|ScaledDown|AutoscalerPanic|ScaleLimited|PrimarySaturated)" || true
ip=$(kubectl get -n "$NS" pod "$(kubectl get -n "$NS" flashsale "$SALE" -o jsonpath='{.status.primary.pod}')" -o jsonpath='{.status.podIP}')

say "6/6 what kubectl says (status refreshes every few seconds)"
sleep 6
kubectl get -n "$NS" flashsale
kubectl describe -n "$NS" flashsale "$SALE" | sed -n '/^Status:/,$p'

cat <<EOT

Demo done in $((SECONDS - t0))s. The cluster is still up. Explore:
  eval "\$(bash testbed/cluster.sh env --name $CLUSTER)"
  kubectl get fsale,sts,pods,svc,pvc -n $NS -o wide
  kubectl describe fsale $SALE -n $NS
  kubectl patch fsale $SALE -n $NS --type=json -p '[{"op":"replace","path":"/spec/items/0/stock","value":200}]'
  kubectl scale fsale $SALE -n $NS --replicas=2
  curl -s http://$ip:8080/v1/items
  kubectl logs -n $OP_NS deploy/$RELEASE-flashsale-operator
Tear down:
  kubectl delete fsale $SALE -n $NS          # stops the nodes; WAL volumes are retained
  bash testbed/cluster.sh down --name $CLUSTER
EOT
