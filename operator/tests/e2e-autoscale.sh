#!/usr/bin/env bash
# End-to-end test of the operator's autoscaler on the local cluster (testbed/cluster.sh).
# Pods share two cores here, so a new node adds no CPU: saturation is the sale's own
# admission rate per node (spec.admissionRate), which makes the test deterministic.
# An open-loop crowd (`crowd --schedule`: a rate per second, whatever the nodes do)
# buys through the client Service's ready endpoints (a file the test refreshes every
# second, as kube-proxy would; every node is a front door, secondaries forward):
#   1. control   autoscaling off, 1 node, twice its admission rate → 429s, replicas stay 1
#   2. ramp      autoscaling on: 5/s → 90/s → 5/s with 40/s admitted per node and a
#                target of 10/s per node: replicas rise during the ramp, the first
#                ScaledUp comes before any refusal, nothing oversold, every ack present
#                on the primary with the same id, replicas fall back to 1 after the load
#                drops (ScaledDown), and the primary is never removed or changed
#   3. HPA       an HPA on the FlashSale (minReplicas 2) scales it through the real HPA
#                controller; the autoscaler stands down (AutoscalingConflict, External)
#   4. deleted   the sale deleted: its autoscaler series leave the operator's /metrics
# Every wait is bounded; the namespace is removed even on failure.
#
#   bash operator/tests/e2e-autoscale.sh   # cluster FLASHSALE_E2E_CLUSTER (default e2e)
set -euo pipefail
E2E_TAG=e2e-autoscale
# shellcheck source=operator/tests/e2e-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/e2e-lib.sh"
NS=fs-e2e-autoscale
SALE=scale

e2e_cluster_up
WORK=$(mktemp -d)
bg_pids=()
cleanup() {
  local rc=$?
  local p
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ $rc -ne 0 ]; then
    log "--- state at failure"
    kubectl get fsale,pods,hpa -n "$NS" -o wide 2>&1 | sed 's/^/e2e-autoscale:   /' >&2 || true
    kubectl get fsale -n "$NS" "$SALE" -o jsonpath='{.status.autoscaler}{"\n"}' 2>&1 | sed 's/^/e2e-autoscale:   /' >&2 || true
    kubectl get events -n "$NS" --sort-by=.metadata.creationTimestamp 2>&1 | tail -25 | sed 's/^/e2e-autoscale:   /' >&2 || true
    kubectl logs -n "$OP_NS" deploy/"$RELEASE"-flashsale-operator --tail=30 2>&1 | sed 's/^/e2e-autoscale:   /' >&2 || true
  fi
  rm -rf "$WORK"
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  $had_release || helm uninstall "$RELEASE" -n "$OP_NS" >/dev/null 2>&1 || true
  if $started_cluster && [ "${FLASHSALE_E2E_KEEP:-0}" != 1 ]; then
    bash testbed/cluster.sh down --name "$CLUSTER" >/dev/null 2>&1 || log "warning: cluster $CLUSTER did not stop cleanly"
  fi
  exit $rc
}
trap cleanup EXIT

log "helm install the operator (the binary just built)"
e2e_install_operator

jp() { kubectl get -n "$NS" "$1" -o jsonpath="$2"; }
replicas() { jp "flashsale/$SALE" '{.spec.nodes.replicas}'; }
# The client Service's ready endpoints, as base URLs: what the crowd spreads over.
endpoints() {
  kubectl get endpointslices -n "$NS" -l kubernetes.io/service-name="$SALE" \
    -o jsonpath='{.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}' |
    tr ' ' '\n' | sed -n 's|^\(..*\)$|http://\1:8080|p'
}
refresh_endpoints() { # keeps $WORK/urls current until killed
  while true; do
    endpoints >"$WORK/urls.new" 2>/dev/null && [ -s "$WORK/urls.new" ] && mv "$WORK/urls.new" "$WORK/urls"
    sleep 1
  done
}

log "a sale of 1 node, 40 purchases/s admitted per node, autoscaling off"
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: flashsale.dev/v1alpha1
kind: FlashSale
metadata:
  name: $SALE
spec:
  items:
    - {sku: tee, stock: 1000000}
    - {sku: cap, stock: 50}
  admissionRate: 40
  nodes:
    replicas: 1
    storage: {size: 128Mi, reclaimPolicy: Delete}
  redis: {managed: true}
  autoscaling:
    enabled: false
    minReplicas: 1
    maxReplicas: 3
    targetPurchasesPerS: 10
    stableWindow: 6s
    panicWindow: 2s
    scaleDownStabilization: 5s
EOF
wait_for 240 "flashsale/$SALE Ready" kubectl wait -n "$NS" --for=condition=Ready "flashsale/$SALE" --timeout=5s
primary=$(jp "flashsale/$SALE" '{.status.primary.pod}')
[ "$primary" = "$SALE-0" ] || fail "the primary is $primary, not $SALE-0"
epoch=$(jp "flashsale/$SALE" '{.status.epoch}')
endpoints >"$WORK/urls"
refresh_endpoints &
bg_pids+=($!)

log "1. control: autoscaling off, 80/s at one node admitting 40/s draws 429s"
out=$("$FLASHSALE_BIN_DIR/crowd" --url "http://unused" --urls-file "$WORK/urls" \
  --schedule "0:80,6:80" --customers 100000 --request-timeout-ms 3000)
log "control: $out"
python3 - "$out" <<'PY' || fail "the control run"
import json, sys
d = json.loads(sys.argv[1])
assert d["oversold"] == 0, "oversold"
assert d["codes"].get("rate_limited", 0) > 30, f"no 429s without autoscaling: {d['codes']}"
PY
[ "$(replicas)" = 1 ] || fail "replicas moved with autoscaling off: $(replicas)"
[ -z "$(jp "flashsale/$SALE" '{.status.autoscaler}')" ] || fail "status.autoscaler is set with autoscaling off"

log "2. ramp: autoscaling on; 5/s → 90/s → 5/s"
kubectl patch -n "$NS" "flashsale/$SALE" --type merge -p '{"spec":{"autoscaling":{"enabled":true}}}' >/dev/null
has_mode() { [ -n "$(jp "flashsale/$SALE" '{.status.autoscaler.mode}')" ]; }
wait_for 30 "status.autoscaler" has_mode
# The control run's load has left the window once the autoscaler has seen calm.
sleep 3
start=$(date +%s)
( while true; do
    t=$(($(date +%s) - start)) n=$(replicas)
    echo "$t $n $(jp "flashsale/$SALE" '{.status.primary.pod} {.status.epoch} {.status.autoscaler.mode}')"
    echo "$t ${n:-0}|$(jp "flashsale/$SALE" '{.status.autoscaler.scaleDownHeldBy}')" >>"$WORK/held"
    sleep 1
  done >"$WORK/watch" 2>/dev/null ) &
bg_pids+=($!)
out=$("$FLASHSALE_BIN_DIR/crowd" --url "http://unused" --urls-file "$WORK/urls" \
  --schedule "0:5,4:5,20:90,32:90,33:5,38:5" --customers 100000 --request-timeout-ms 3000 \
  --acks "$WORK/acks" --timeline "$WORK/timeline")
log "ramp: $out"
top=$(awk '{ print $2 }' "$WORK/watch" | sort -n | tail -1)
log "replicas per second (t replicas primary epoch mode): $(awk '{ printf "%s:%s%s ", $1, $2, substr($5, 1, 1) }' "$WORK/watch")"
(( top >= 3 )) || fail "replicas rose only to $top during the ramp"
python3 - "$out" "$WORK/timeline" <<'PY' || fail "the ramp"
import json, sys
d = json.loads(sys.argv[1])
assert d["oversold"] == 0, "oversold"
assert d["ok"] > 700, f"only {d['ok']} purchases acknowledged"
for l in open(sys.argv[2]):
    s = json.loads(l)
    print(f"e2e-autoscale:   t={s['second']:>2}s rate {s['rate']:>4.0f} sent {s['sent']:>3} ok {s['ok']:>3} {s['codes'] or ''} p99 {s['p99Ms']} ms", file=sys.stderr)
PY
# The first ScaledUp before any refusal: the crowd's first 429 (if any) comes after it.
ups=$(kubectl get events.events.k8s.io -n "$NS" --field-selector reason=ScaledUp \
  -o jsonpath='{range .items[*]}{.eventTime}{"\n"}{end}' | sort)
first_up=$(head -1 <<<"$ups")
[ -n "$first_up" ] || fail "no ScaledUp Event"
(( $(date -d "$first_up" +%s) >= start )) || fail "a ScaledUp before the ramp: $first_up"
first_refusal=$(python3 - "$WORK/timeline" "$start" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    s = json.loads(l)
    if s["codes"].get("rate_limited") or s["codes"].get("unavailable"):
        print(s["second"]); break
PY
)
up_s=$(( $(date -d "$first_up" +%s) - start ))
log "first ScaledUp at t=${up_s}s, first refusal at t=${first_refusal:-none}s"
[ -z "$first_refusal" ] || (( up_s <= first_refusal )) || fail "the first refusal (t=${first_refusal}s) came before the first ScaledUp (t=${up_s}s)"
# Nothing oversold, from the primary's own books and from the crowd's acks: `cap` (50
# units, half the crowd asks for it) sold out during the control run or the ramp.
items=$(curl -sf --max-time 5 "http://$(jp "pod/$primary" '{.status.podIP}'):8080/v1/items") || fail "reading the primary's items"
python3 - "$items" "$WORK/acks" <<'PY' || fail "oversold"
import json, sys
for i in json.loads(sys.argv[1]):
    assert i["sold"] + i["held"] <= i["stock"], f"oversold: {i}"
caps = sum(1 for l in open(sys.argv[2]) if json.loads(l)["sku"] == "cap")
assert caps <= 50, f"{caps} acks for the 50 caps"
print(f"e2e-autoscale: ok: nothing oversold on the primary ({caps} cap acks in the ramp)", file=sys.stderr)
PY
FLASHSALE_ADMIN_TOKEN=$(jp "secret/$SALE-admin" '{.data.token}' | base64 -d) \
  "$FLASHSALE_BIN_DIR/crowd" --url "http://$(jp "pod/$primary" '{.status.podIP}'):8080" --verify-acks "$WORK/acks" >&2 \
  || fail "an acknowledged order is missing on the primary"
back_to_one() { [ "$(replicas)" = 1 ]; }
wait_for 90 "replicas back to 1 after the load dropped" back_to_one
events=$(kubectl describe -n "$NS" "flashsale/$SALE")
for reason in ScaledUp ScaledDown; do
  grep -q "$reason" <<<"$events" || fail "no $reason Event in kubectl describe"
done
grep -E "ScaledUp|ScaledDown|ScaleLimited|AutoscalerPanic" <<<"$events" | sed 's/^/e2e-autoscale:   /' >&2
awk -v p="$primary" -v e="$epoch" '$3 != "" && ($3 != p || $4 != e) { bad = bad " t=" $1 ":" $3 "@" $4 } END { if (bad) { print bad; exit 1 } }' "$WORK/watch" \
  || fail "the primary changed during scaling: $(awk '{ print $3 "@" $4 }' "$WORK/watch" | sort -u | tr '\n' ' ')"
log "ok: the primary stayed $primary at epoch $epoch throughout"
# Between the load's drop (t=33) and the last scale-down, status says what held the
# scale-down back (panic, then the stabilisation window), as an HPA's condition does.
held=$(awk -F'|' '{ split($1, f, " ") } f[1] + 0 >= 33 && f[2] + 0 > 1 && $2 != "" { print $2 }' "$WORK/held" | sort | uniq -c | tr '\n' ';')
[ -n "$held" ] || fail "status.autoscaler.scaleDownHeldBy never said why a scale-down waited"
log "ok: status.autoscaler.scaleDownHeldBy while above 1 node after the drop (seconds each): $held"
last=$(jp "flashsale/$SALE" '{.status.autoscaler.lastScaleTime} {.status.autoscaler.lastScaleReason}')
grep -q "→ 1 nodes" <<<"$last" || fail "status.autoscaler does not show the last scale-down: $last"
log "ok: status.autoscaler: $(jp "flashsale/$SALE" '{.status.autoscaler}')"

owner=$(kubectl get -n "$NS" "flashsale/$SALE" --show-managed-fields -o json | python3 -c '
import json, sys
for m in json.load(sys.stdin)["metadata"]["managedFields"]:
    if m.get("subresource") == "scale" and "f:replicas" in json.dumps(m.get("fieldsV1")):
        print(m["manager"])')
[ "$owner" = flashsale-autoscaler ] || fail "spec.nodes.replicas is not written through the scale subresource by flashsale-autoscaler: $owner"
log "ok: spec.nodes.replicas written through the scale subresource by $owner"

log "3. an HPA on the FlashSale: the real HPA controller scales it, the autoscaler stands down"
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: $SALE
spec:
  scaleTargetRef: {apiVersion: flashsale.dev/v1alpha1, kind: FlashSale, name: $SALE}
  minReplicas: 2
  maxReplicas: 2
EOF
two() { [ "$(replicas)" = 2 ]; }
wait_for 60 "the HPA controller set replicas to 2" two
external() { [ "$(jp "flashsale/$SALE" '{.status.autoscaler.mode}')" = External ]; }
wait_for 30 "status.autoscaler.mode External" external
conflict() { kubectl get events.events.k8s.io -n "$NS" --field-selector reason=AutoscalingConflict -o name | grep -q .; }
wait_for 30 "an AutoscalingConflict Event" conflict
sleep 5
[ "$(replicas)" = 2 ] || fail "replicas moved off the HPA's 2 while it targets the sale: $(replicas)"

log "4. the sale deleted: its autoscaler series leave the operator's metrics"
series() { op_metrics | grep -E "^flashsale_operator_autoscaler_[a-z_]+[{].*sale=\"$SALE\"" || true; }
[ -n "$(series)" ] || fail "no autoscaler series for the sale before its deletion"
kubectl delete -n "$NS" "flashsale/$SALE" --timeout=90s >/dev/null
gone() { m=$(op_metrics) && ! grep -qE "^flashsale_operator_autoscaler_[a-z_]+[{].*sale=\"$SALE\"" <<<"$m"; }
wait_for 15 "no autoscaler series for the deleted sale" gone
log "PASS"
