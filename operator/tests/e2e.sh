#!/usr/bin/env bash
# End-to-end test of the operator on the local cluster (testbed/cluster.sh), as a user
# would drive it: helm install the chart (the operator runs as a pod; first, on a fresh
# cluster, on the CRD of an earlier release, where it refuses to start, naming the fields
# that CRD lacks), kubectl apply the example sale, wait for Ready, buy through the primary Service's endpoint, read sold and
# remaining in `kubectl get`, see the Events in `kubectl describe`, change the spec and
# see it on the node, scale through the scale subresource, have bad manifests refused
# naming their field, delete the sale and see what it owned go (the WAL volumes stay:
# reclaimPolicy Retain). Every wait is bounded; the namespace is removed even on failure.
#
#   bash operator/tests/e2e.sh   # its own cluster `e2e` (FLASHSALE_E2E_CLUSTER), so a demo
#                                # or a person on `dev` is never disturbed; stopped at the
#                                # end if this run started it (FLASHSALE_E2E_KEEP=1 keeps it)
set -euo pipefail
E2E_TAG=e2e
# shellcheck source=operator/tests/e2e-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/e2e-lib.sh"
NS=fs-e2e
SALE=launch
FIXTURES=operator/tests/fixtures/invalid

e2e_cluster_up
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    log "--- state at failure"
    kubectl get fsale,sts,pods,svc,pvc -n "$NS" -o wide 2>&1 | sed 's/^/e2e:   /' >&2 || true
    kubectl describe fsale -n "$NS" 2>&1 | tail -30 | sed 's/^/e2e:   /' >&2 || true
    kubectl logs -n "$OP_NS" deploy/"$RELEASE"-flashsale-operator --tail=40 2>&1 | sed 's/^/e2e:   /' >&2 || true
  fi
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  $had_release || helm uninstall "$RELEASE" -n "$OP_NS" >/dev/null 2>&1 || true
  if $started_cluster && [ "${FLASHSALE_E2E_KEEP:-0}" != 1 ]; then
    bash testbed/cluster.sh down --name "$CLUSTER" >/dev/null 2>&1 || log "warning: cluster $CLUSTER did not stop cleanly"
  fi
  exit $rc
}
trap cleanup EXIT

# An operator upgraded without its CRD (helm never upgrades crds/) would have the fields
# the older schema lacks dropped from every write, failover state among them: it
# refuses to start, naming them, and starts once the CRD is applied. Only where no
# release and no sale is there to be disturbed (always in CI).
op_deploy=deploy/"$RELEASE"-flashsale-operator
# The newest operator pod's log (`kubectl logs deploy/…` may pick a replaced pod that
# is still terminating: it prefers the one with more restarts).
op_log() {
  local pod
  pod=$(kubectl get pods -n "$OP_NS" -l app.kubernetes.io/name=flashsale-operator \
    --sort-by=.metadata.creationTimestamp -o jsonpath='{.items[-1:].metadata.name}' 2>/dev/null)
  [ -n "$pod" ] && kubectl logs -n "$OP_NS" "$pod" 2>/dev/null
}
op_log_has() { op_log | grep -qF "$1"; }
if ! $had_release && [ -z "$(kubectl get flashsales -A -o name 2>/dev/null)" ]; then
  log "an operator that may not read its CRD, then one on an older CRD, refuses to start"
  kubectl apply --server-side --force-conflicts -f operator/tests/fixtures/crd/before-nodes-durable-seq.yaml >/dev/null
  kubectl create namespace "$OP_NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  # Without the chart's RBAC (rbac.create=false and none granted): a 403, not a pass.
  helm upgrade --install "$RELEASE" charts/flashsale-operator -n "$OP_NS" --set rbac.create=false >/dev/null
  wait_for 90 "the operator's refusal without the right to read the CRD" \
    op_log_has "cannot read the CustomResourceDefinition flashsales.flashsale.dev"
  # --reset-values: without values helm upgrade would keep rbac.create=false.
  helm upgrade --install "$RELEASE" charts/flashsale-operator -n "$OP_NS" --reset-values >/dev/null
  kubectl delete pod -n "$OP_NS" -l app.kubernetes.io/name=flashsale-operator --wait=false >/dev/null
  want='lacks v1alpha1 .status.failover.fromUid, v1alpha1 .status.failover.nodesDurableSeq, v1alpha1 .status.nodes[].roleEpoch'
  wait_for 90 "the operator's refusal of the older CRD in its log" op_log_has "$want"
  ready=$(kubectl get -n "$OP_NS" "$op_deploy" -o jsonpath='{.status.readyReplicas}')
  [ -z "$ready" ] || [ "$ready" = 0 ] || fail "$ready operator replicas ready on the older CRD"
  log "ok: $(op_log | grep -oF -m1 "$want"); none ready"
  kubectl apply --server-side --force-conflicts -f crds/flashsale.dev_flashsales.yaml >/dev/null
  # Its next restart would do; a new pod does not wait out the backoff.
  kubectl delete pod -n "$OP_NS" -l app.kubernetes.io/name=flashsale-operator --wait=false >/dev/null
else
  log "skipped: the operator on an older CRD (a release or a sale is on this cluster; a fresh one, as in CI, runs it)"
fi

log "helm install the operator"
# Two replicas: one leads through the Lease, the other waits (checked below).
e2e_install_operator --set replicaCount=2
wait_for 30 "the operator's CRD check in its log" op_log_has "the installed CRD has every field this operator writes"

log "bad manifests are refused, naming the field"
refused=0
for f in "$FIXTURES"/*.yaml; do
  want=$(sed -n 's/.*flashsale.dev\/expect-field: "\(.*\)"/\1/p' "$f")
  if out=$(kubectl apply -n "$NS" -f "$f" 2>&1); then
    kubectl delete -n "$NS" -f "$f" --wait=false >/dev/null 2>&1 || true
    fail "$(basename "$f") was accepted"
  fi
  grep -qF "$want" <<<"$out" || fail "$(basename "$f"): refusal does not name $want: $out"
  log "ok: $(basename "$f") refused: $(grep -oF -- "$want" <<<"$out" >/dev/null; grep -o -- "spec[^ ]*: .*" <<<"$out" | head -1 | cut -c1-160)"
  refused=$((refused + 1))
done
(( refused >= 5 )) || fail "only $refused bad manifests tried"

log "apply the example sale"
kubectl apply -n "$NS" -f examples/flashsale.yaml >/dev/null
wait_for 240 "flashsale/$SALE Ready" kubectl wait -n "$NS" --for=condition=Ready "flashsale/$SALE" --timeout=5s
kubectl get -n "$NS" flashsale "$SALE" >&2

jp() { kubectl get -n "$NS" "$1" -o jsonpath="$2"; }
primary=$(jp "flashsale/$SALE" '{.status.primary.pod}')
[ -n "$primary" ] || fail "no primary in status"
[ "$(jp "pod/$primary" '{.metadata.labels.flashsale\.dev/role}')" = primary ] || fail "$primary lacks the primary label"
n_primary=$(kubectl get pods -n "$NS" -l flashsale.dev/role=primary,app.kubernetes.io/instance="$SALE" -o name | wc -l)
[ "$n_primary" = 1 ] || fail "$n_primary pods labelled primary"
[ "$(jp "flashsale/$SALE" '{.status.epoch}')" = 1 ] || fail "epoch is not 1"

log "buy through the primary Service's endpoint"
slice_ip() {
  kubectl get endpointslices -n "$NS" -l kubernetes.io/service-name="$SALE-primary" \
    -o jsonpath='{.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}'
}
has_slice() { [ -n "$(slice_ip)" ]; }
wait_for 60 "primary Service has a ready endpoint" has_slice
ip=$(slice_ip)
[ "$ip" = "$(jp "pod/$primary" '{.status.podIP}')" ] || fail "primary Service endpoint $ip is not $primary"
out=$("$FLASHSALE_BIN_DIR/crowd" --url "http://$ip:8080" --buyers 400 --concurrency 16 --customers 150 --json)
log "crowd: $out"
sold=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["oversold"]==0; print(d["sold"])' "$out")
(( sold > 0 )) || fail "nothing sold"
status_sold() { [ "$(jp "flashsale/$SALE" '{.status.sold}')" = "$sold" ]; }
wait_for 30 "status.sold = $sold (kubectl get)" status_sold
kubectl get -n "$NS" flashsale "$SALE" >&2
get_out=$(kubectl get -n "$NS" flashsale "$SALE")
grep -qE "\b$sold\b" <<<"$get_out" || fail "kubectl get does not show sold"
stock=$(jp "flashsale/$SALE" '{.status.stock}')
remaining=$(jp "flashsale/$SALE" '{.status.remaining}')
held=$(jp "flashsale/$SALE" '{.status.held}')
(( sold + held + remaining == stock )) || fail "sold $sold + held $held + remaining $remaining != stock $stock"

log "buy through a secondary: every ready node behind the client Service is a front door"
client_ips() {
  kubectl get endpointslices -n "$NS" -l kubernetes.io/service-name="$SALE" \
    -o jsonpath='{.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}'
}
sip=$(tr ' ' '\n' <<<"$(client_ips)" | grep -vx "$ip" | head -1 || true)
[ -n "$sip" ] || fail "the client Service has no ready secondary"
out=$("$FLASHSALE_BIN_DIR/crowd" --url "http://$sip:8080" --buyers 200 --concurrency 16 --customers 150 --json)
log "crowd through the secondary at $sip: $out"
python3 - "$out" <<'PY' || fail "buying through a secondary"
import json, sys
d = json.loads(sys.argv[1])
assert d["oversold"] == 0, "oversold"
assert d["sold"] > 0, "nothing sold through the secondary"
assert d["unconfirmed"] == 0, "a confirm through the secondary failed"
assert "not_primary" not in d["rejected"], f"a front door answered not_primary: {d['rejected']}"
PY
sold=$((sold + $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["sold"])' "$out")))
wait_for 30 "status.sold = $sold after both crowds" status_sold

log "kubectl describe shows the decisions"
events=$(kubectl describe -n "$NS" "flashsale/$SALE")
for reason in Created PrimaryChosen ConfigPushed RoleAssigned Selling; do
  grep -q "$reason" <<<"$events" || fail "no $reason Event in kubectl describe"
done
log "ok: Events Created, PrimaryChosen, ConfigPushed, RoleAssigned, Selling"

log "kubectl flashsale (plugins/kubectl-flashsale), through the API server"
export PATH="$PWD/plugins:$PATH"
out=$(kubectl flashsale status "$SALE" -n "$NS") || fail "kubectl flashsale status failed"
sed 's/^/  /' <<<"$out" >&2
[ "$(grep -cE "^$SALE-[0-9] " <<<"$out")" = 3 ] || fail "status does not list 3 nodes"
grep -qE "^$primary +primary +1 +true +[0-9]+ +[0-9]+ +- " <<<"$out" || fail "status does not show $primary as the ready primary at epoch 1"
[ "$(grep -cE " secondary +1 +true " <<<"$out")" = 2 ] || fail "status does not show 2 ready secondaries"
grep -qE " secondary +1 +true .* [1-9][0-9]*/[1-9][0-9]*b$" <<<"$out" || fail "status shows no secondary that forwarded"
grep -qE "sold $sold / held [0-9]+ / remaining [0-9]+ of [0-9]+ \(live from $primary\)$" <<<"$out" ||
  fail "status does not show the $sold units sold, live from the primary $primary"
ledger=$(kubectl flashsale ledger "$SALE" -n "$NS") || fail "kubectl flashsale ledger failed"
sold_now=$(jp "flashsale/$SALE" '{.status.sold}')
LEDGER=$ledger python3 - "$sold_now" <<'PY' || fail "the ledger is not the sale's confirmed orders"
import json, os, sys
rows = [json.loads(l) for l in os.environ["LEDGER"].splitlines() if l.strip()]
ids = [r["id"] for r in rows]
assert len(ids) == len(set(ids)), "an order twice"
units = sum(r["quantity"] for r in rows)
assert units == int(sys.argv[1]), f"ledger units {units} != status.sold {sys.argv[1]}"
assert all(r["epoch"] == 1 and r["confirmedAtMs"] >= r["createdAtMs"] for r in rows)
print(f"e2e: ok: ledger: {len(rows)} confirmed orders, {units} units = status.sold", file=sys.stderr)
PY
csv=$(kubectl flashsale ledger "$SALE" -n "$NS" --format csv)
[ "$(head -1 <<<"$csv")" = "id,sku,quantity,customer,idempotencyKey,createdAtMs,confirmedAtMs,epoch" ] || fail "CSV header: $(head -1 <<<"$csv")"
[ "$(($(wc -l <<<"$csv") - 1))" = "$(grep -c . <<<"$ledger")" ] || fail "CSV and JSON lines ledgers differ in length"
for bad in "status nope" "promote $SALE nope-9" "promote $SALE $primary"; do
  # shellcheck disable=SC2086
  if err=$(kubectl flashsale $bad -n "$NS" 2>&1); then fail "kubectl flashsale $bad succeeded"; fi
  grep -qE "^error: (no FlashSale 'nope'|no pod 'nope-9'|$primary is the primary)" <<<"$err" || fail "kubectl flashsale $bad: unclear error: $err"
  log "ok: kubectl flashsale $bad: $err"
done
# The operator's sale views let in only a token of its viewer ServiceAccount (checked
# with a TokenReview): reached straight from inside the cluster, without one, with
# another ServiceAccount's, or with a name that is not one, they refuse.
op_ip=$(kubectl get pods -n "$OP_NS" -l app.kubernetes.io/name=flashsale-operator -o jsonpath='{.items[0].status.podIP}')
views="http://$op_ip:8081/v1/sales/$NS/$SALE/ledger"
code=$(curl -s -o /dev/null -w '%{http_code}' "$views")
[ "$code" = 401 ] || fail "the ledger view answered $code without a token"
other=$(kubectl create token default -n "$NS" --audience flashsale-operator --duration 10m)
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Flashsale-Viewer-Token: $other" "$views")
[ "$code" = 403 ] || fail "the ledger view answered $code to another ServiceAccount's token"
viewer=$(kubectl create token "$RELEASE-flashsale-operator-viewer" -n "$OP_NS" --audience flashsale-operator --duration 10m)
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Flashsale-Viewer-Token: $viewer" "http://$op_ip:8081/v1/sales/$NS/..%2Fx/ledger")
[ "$code" = 400 ] || fail "the ledger view answered $code to a name that is not one"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Flashsale-Viewer-Token: $viewer" "$views")
[ "$code" = 200 ] || fail "the ledger view answered $code to the viewer's token"
log "ok: the sale views: no token 401, another ServiceAccount's 403, a bad name 400, the viewer's 200"
target=$(kubectl get pods -n "$NS" -l app.kubernetes.io/instance="$SALE",flashsale.dev/role=secondary -o jsonpath='{.items[0].metadata.name}')
out=$(kubectl flashsale promote "$SALE" "$target" -n "$NS" --timeout 60) || fail "kubectl flashsale promote $target failed"
log "ok: kubectl flashsale promote: $out"
[ "$(jp "flashsale/$SALE" '{.status.primary.pod}')" = "$target" ] || fail "promote did not make $target the primary"
[ "$(jp "flashsale/$SALE" '{.status.epoch}')" = 2 ] || fail "promote did not move the epoch to 2"
# The new primary's ledger is the sale's: the same orders, each once, sold at epoch 1.
after=$(kubectl flashsale ledger "$SALE" -n "$NS") || fail "kubectl flashsale ledger after the switchover failed"
[ "$after" = "$ledger" ] || fail "the ledger changed across the switchover: $(diff <(echo "$ledger") <(echo "$after") | head -5)"
log "ok: the ledger of the new primary $target is the old one's, row for row"

log "operator HA: one of two replicas holds the Lease; killing it hands over"
LEASE="$RELEASE-flashsale-operator"
holder() { kubectl get lease -n "$OP_NS" "$LEASE" -o jsonpath='{.spec.holderIdentity}'; }
has_holder() { [ -n "$(holder)" ]; }
wait_for 60 "Lease $LEASE held" has_holder
leader=$(holder)
kubectl get pod -n "$OP_NS" "$leader" >/dev/null || fail "Lease holder $leader is not an operator pod"
degraded() { kubectl get events -n "$NS" --field-selector "involvedObject.name=$SALE,reason=Degraded" -o name | wc -l; }
degraded_before=$(degraded)
kubectl delete pod -n "$OP_NS" "$leader" --wait=false >/dev/null
new_leader() { h=$(holder); [ -n "$h" ] && [ "$h" != "$leader" ]; }
wait_for 90 "another replica took the Lease" new_leader
log "ok: Lease moved from $leader to $(holder)"

log "a spec change rolls out (through the new leader): stock of sneaker-42 100 -> 160"
kubectl patch -n "$NS" "flashsale/$SALE" --type=json \
  -p '[{"op":"replace","path":"/spec/items/0/stock","value":160}]' >/dev/null
node_stock() {
  curl -sf "http://$ip:8080/v1/items/sneaker-42" | python3 -c 'import json,sys; assert json.load(sys.stdin)["stock"]==160'
}
wait_for 60 "the primary node sells 160 sneaker-42" node_stock
status_stock() { [ "$(jp "flashsale/$SALE" '{.status.items[?(@.sku=="sneaker-42")].stock}')" = 160 ]; }
wait_for 30 "status shows the new stock" status_stock
for pod in $(kubectl get pods -n "$NS" -l app.kubernetes.io/instance="$SALE",app.kubernetes.io/name=stock-node -o name); do
  pip=$(kubectl get -n "$NS" "$pod" -o jsonpath='{.status.podIP}')
  has160() { curl -sf "http://$pip:8080/v1/items/sneaker-42" | python3 -c 'import json,sys; assert json.load(sys.stdin)["stock"]==160'; }
  wait_for 60 "$pod has the new stock" has160
done

# A new leader decides nothing before its caches have listed: an empty pod cache would
# read as "the primary's pod does not exist".
[ "$(degraded)" = "$degraded_before" ] || fail "the leader hand-over raised Degraded: $(kubectl get events -n "$NS" --field-selector "involvedObject.name=$SALE,reason=Degraded" -o jsonpath='{.items[*].message}')"

log "a StatefulSet made by an operator before OnDelete (RollingUpdate) is moved to OnDelete"
# Applied again as that operator did (its field manager, no updateStrategy): the API
# server defaults RollingUpdate with a rollingUpdate no manager owns, and an apply of
# OnDelete alone is then refused. Without the operator's patch every reconcile fails.
kubectl get -n "$NS" "statefulset/$SALE" -o json | python3 -c '
import json, sys
o = json.load(sys.stdin)
meta = {k: v for k, v in o["metadata"].items() if k in ("name", "namespace", "labels", "annotations", "ownerReferences")}
spec = o["spec"]
spec.pop("updateStrategy", None)
print(json.dumps({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta, "spec": spec}))' |
  kubectl apply --server-side --force-conflicts --field-manager=flashsale-operator -f - >/dev/null
on_delete() { [ "$(jp "statefulset/$SALE" '{.spec.updateStrategy}')" = '{"type":"OnDelete"}' ]; }
wait_for 60 "the StatefulSet's updateStrategy back to OnDelete, rollingUpdate gone" on_delete
log "ok: updateStrategy $(jp "statefulset/$SALE" '{.spec.updateStrategy}')"

log "a WAL volume size change is refused (a StatefulSet cannot resize its claims)"
if out=$(kubectl patch -n "$NS" "flashsale/$SALE" --type=merge \
  -p '{"spec":{"nodes":{"storage":{"size":"2Gi"}}}}' 2>&1); then
  fail "storage size change accepted"
fi
grep -q "spec.nodes.storage" <<<"$out" || fail "storage change refused without naming the field: $out"
log "ok: storage change refused: $out"

log "kubectl scale (scale subresource) 3 -> 2"
# A scale-down never removes the primary: on ordinal 2 it is switched over first
# (e2e-failover.sh case K checks that under load, sampling the pods).
primary=$(jp "flashsale/$SALE" '{.status.primary.pod}')
kubectl scale -n "$NS" "flashsale/$SALE" --replicas=2 >/dev/null
sts_replicas() { [ "$(jp "statefulset/$SALE" '{.spec.replicas}')" = 2 ]; }
wait_for 60 "StatefulSet scaled to 2" sts_replicas
ready_2() { [ "$(jp "flashsale/$SALE" '{.status.ready}')" = 2/2 ]; }
wait_for 90 "status ready 2/2" ready_2
now=$(jp "flashsale/$SALE" '{.status.primary.pod}')
if [ "$primary" = "$SALE-2" ]; then
  [ "$now" != "$primary" ] || fail "the primary $primary is on the removed ordinal and still primary"
  grep -q "SwitchoverCompleted" <<<"$(kubectl describe -n "$NS" "flashsale/$SALE")" || fail "no SwitchoverCompleted Event"
  log "ok: the primary $primary was on the removed ordinal: switched over to $now first"
else
  [ "$now" = "$primary" ] || fail "primary changed on scale-down ($primary -> $now)"
fi

log "switching to an external Redis deletes the managed one"
kubectl create secret generic ext-redis -n "$NS" --from-literal=url=redis://127.0.0.1:6399 >/dev/null
kubectl patch -n "$NS" "flashsale/$SALE" --type=merge \
  -p '{"spec":{"redis":{"managed":false,"externalUrlSecretRef":{"name":"ext-redis","key":"url"}}}}' >/dev/null
redis_gone() { [ -z "$(kubectl get -n "$NS" deployment,service "$SALE-redis" -o name 2>/dev/null)" ]; }
wait_for 60 "managed Redis Deployment and Service deleted" redis_gone
# The Event follows the deletion (published after the pass that deleted): wait for it.
has_redis_removed() { kubectl describe -n "$NS" "flashsale/$SALE" | grep -q RedisRemoved; }
wait_for 15 "a RedisRemoved Event" has_redis_removed

log "delete the sale: what it owned goes, the WAL volumes stay (Retain)"
kubectl delete -n "$NS" "flashsale/$SALE" --timeout=120s >/dev/null
gone() {
  [ -z "$(kubectl get -n "$NS" statefulset,deployment,service,secret,poddisruptionbudget,pod \
    -l app.kubernetes.io/instance="$SALE" -o name 2>/dev/null)" ]
}
wait_for 90 "StatefulSet, Deployment, Services, Secret, PDB and pods gone" gone
pvcs=$(kubectl get pvc -n "$NS" -o name | grep -c "wal-$SALE-" || true)
(( pvcs >= 2 )) || fail "expected the WAL PVCs to be retained, found $pvcs"
log "ok: $pvcs WAL PVCs retained"
log "PASS"
