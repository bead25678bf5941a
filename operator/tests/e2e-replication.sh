#!/usr/bin/env bash
# End-to-end test of replication on the local cluster (testbed/cluster.sh), through the
# operator: a sale of 3 nodes; buy through the primary; every secondary's
# `GET /admin/v1/status` converges to exactly the primary's items and appliedSeq; the
# FlashSale status lists the 3 nodes with nobody lagging and ReplicationHealthy True, and
# the operator's metrics show lag 0; the Redis pod deleted mid-sale → once it is back the
# secondaries catch up and converge; a secondary killed mid-sale (testbed fault kill) →
# it restarts and converges. Every wait is bounded; the namespace is removed even on
# failure.
#
#   bash operator/tests/e2e-replication.sh   # cluster FLASHSALE_E2E_CLUSTER (default e2e);
#                                            # started and stopped here if it was not up
#                                            # (FLASHSALE_E2E_KEEP=1 keeps it)
set -euo pipefail
E2E_TAG=e2e-repl
# shellcheck source=operator/tests/e2e-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/e2e-lib.sh"
NS=fs-e2e-repl
SALE=repl
STOCK=1000000

e2e_cluster_up
crowd_pid=
TMPDIR_REPL=$(mktemp -d)
cleanup() {
  local rc=$?
  [ -n "$crowd_pid" ] && kill "$crowd_pid" 2>/dev/null
  rm -rf "$TMPDIR_REPL"
  if [ $rc -ne 0 ]; then
    log "--- state at failure"
    kubectl get fsale,pods -n "$NS" -o wide 2>&1 | sed 's/^/e2e-repl:   /' >&2 || true
    kubectl get fsale -n "$NS" "$SALE" -o jsonpath='{.status.nodes}{"\n"}{.status.conditions}{"\n"}' 2>&1 | sed 's/^/e2e-repl:   /' >&2 || true
    kubectl logs -n "$OP_NS" deploy/"$RELEASE"-flashsale-operator --tail=30 2>&1 | sed 's/^/e2e-repl:   /' >&2 || true
  fi
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

log "a sale of 3 nodes"
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: flashsale.dev/v1alpha1
kind: FlashSale
metadata:
  name: $SALE
spec:
  items:
    - {sku: tee, stock: $STOCK}
    - {sku: cap, stock: 50, perCustomerLimit: 1}
  nodes:
    replicas: 3
    storage: {size: 128Mi, reclaimPolicy: Delete}
  redis: {managed: true}
  replication: {maxLagRecords: 1000, maxLagMs: 5000}
EOF
wait_for 240 "flashsale/$SALE Ready" kubectl wait -n "$NS" --for=condition=Ready "flashsale/$SALE" --timeout=5s

jp() { kubectl get -n "$NS" "$1" -o jsonpath="$2"; }
TOKEN=$(jp "secret/$SALE-admin" '{.data.token}' | base64 -d)
primary=$(jp "flashsale/$SALE" '{.status.primary.pod}')
[ -n "$primary" ] || fail "no primary in status"
pods=$(kubectl get pods -n "$NS" -l app.kubernetes.io/instance="$SALE",app.kubernetes.io/name=stock-node \
  -o jsonpath='{.items[*].metadata.name}')
secondaries=$(tr ' ' '\n' <<<"$pods" | grep -vx "$primary" | tr '\n' ' ')
[ "$(wc -w <<<"$secondaries")" = 2 ] || fail "expected 2 secondaries, got: $secondaries"
log "primary $primary, secondaries $secondaries"
ip_of() { jp "pod/$1" '{.status.podIP}'; }
node_status() { curl -sf --max-time 3 -H "Authorization: Bearer $TOKEN" "http://$(ip_of "$1"):8080/admin/v1/status"; }

# converged: every secondary has exactly the primary's items and appliedSeq (and the
# primary is not moving: two reads of it agree around the secondaries' reads).
converged() {
  local p1 p2 s
  p1=$(node_status "$primary") || return 1
  local all=()
  local x
  for s in $secondaries; do x=$(node_status "$s") || return 1; all+=("$x"); done
  p2=$(node_status "$primary") || return 1
  python3 - "$p1" "$p2" "${all[@]}" <<'PY'
import json, sys
p1, p2, *secs = (json.loads(a) for a in sys.argv[1:])
key = lambda s: (s["appliedSeq"], sorted(json.dumps(i, sort_keys=True) for i in s["items"]))
assert key(p1) == key(p2), "primary still moving"
for s in secs:
    assert s["role"] == "secondary", s["role"]
    assert key(s) == key(p1), (s["appliedSeq"], p1["appliedSeq"])
PY
}
show_seqs() {
  local s line="appliedSeq:"
  for s in $primary $secondaries; do
    line+=" $s=$(node_status "$s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["appliedSeq"])' 2>/dev/null || echo '?')"
  done
  log "$line"
}

# status_in_sync: the FlashSale status lists every node, answering, nobody lagging,
# ReplicationHealthy True; and the operator's metrics show lag 0 for each secondary.
status_in_sync() {
  local st m s
  st=$(kubectl get -n "$NS" "flashsale/$SALE" -o json) || return 1
  python3 - "$st" "$primary" <<'PY' || return 1
import json, sys
st, primary = json.loads(sys.argv[1])["status"], sys.argv[2]
nodes = st.get("nodes", [])
assert len(nodes) == 3, nodes
for n in nodes:
    assert n["answering"] and n["ready"] and not n["lagging"], n
    assert n["role"] == ("primary" if n["name"] == primary else "secondary"), n
c = [c for c in st["conditions"] if c["type"] == "ReplicationHealthy"]
assert len(c) == 1 and c[0]["status"] == "True" and c[0]["reason"] == "InSync", c
PY
  m=$(op_metrics) || return 1
  for s in $secondaries; do
    grep -qE "^flashsale_operator_node_lag_records\{namespace=\"$NS\",sale=\"$SALE\",node=\"$s\"\} 0$" <<<"$m" || return 1
  done
}

endpoint="http://$(ip_of "$primary"):8080"
crowd() { "$FLASHSALE_BIN_DIR/crowd" --url "$endpoint" --json --concurrency "${CROWD_CONCURRENCY:-8}" --customers 500 "$@"; }
check_crowd() {
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["oversold"]==0, d; assert d["sold"]>0, d; print(d["sold"])' "$1"
}

log "1. buy through the primary; the secondaries converge"
out=$(crowd --buyers 600) || fail "crowd: $out"
log "crowd: $out"
check_crowd "$out" >/dev/null || fail "crowd outcome: $out"
wait_for 30 "every secondary has exactly the primary's items and appliedSeq" converged
show_seqs
wait_for 30 "status.nodes: 3 nodes answering, none lagging, ReplicationHealthy True; metrics lag 0" status_in_sync
kubectl get -n "$NS" "flashsale/$SALE" -o jsonpath='{range .status.nodes[*]}{.name} {.role} ready={.ready} redis={.redisConnected} lagging={.lagging}{"\n"}{end}' | sed 's/^/e2e-repl:   /' >&2

log "2. the Redis pod deleted mid-sale"
redis_pod=$(kubectl get pods -n "$NS" -l app.kubernetes.io/instance="$SALE",app.kubernetes.io/name=redis -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)
if [ -z "$redis_pod" ]; then
  redis_pod=$(kubectl get pods -n "$NS" -o name | grep -- "$SALE-redis" | head -1 | cut -d/ -f2)
fi
[ -n "$redis_pod" ] || fail "no Redis pod found"
# 20 s of buying (more buyers than it gets through): the fault lands half a second in and
# the sale goes on around it, through the outage and the recovery.
crowd --buyers 40000 --duration-max-s 20 >"$TMPDIR_REPL/crowd2.json" 2>/dev/null &
crowd_pid=$!
sleep 0.5
kubectl delete pod -n "$NS" "$redis_pod" --wait=false >/dev/null
log "deleted $redis_pod while buying"
wait "$crowd_pid" || fail "crowd during the Redis deletion failed: $(cat "$TMPDIR_REPL/crowd2.json")"
crowd_pid=
log "crowd: $(cat "$TMPDIR_REPL/crowd2.json")"
check_crowd "$(cat "$TMPDIR_REPL/crowd2.json")" >/dev/null || fail "crowd outcome"
redis_back() {
  [ "$(kubectl get pods -n "$NS" -o name | grep -- "$SALE-redis" | grep -vc "/$redis_pod$")" -ge 1 ] &&
    kubectl wait -n "$NS" --for=condition=Ready "pod/$(kubectl get pods -n "$NS" -o name | grep -- "$SALE-redis" | grep -v "/$redis_pod$" | head -1 | cut -d/ -f2)" --timeout=2s
}
wait_for 90 "a new Redis pod is ready" redis_back
# Secondaries resubscribe on their own; the primary reconnects its publisher on the next
# batch after its backoff, so buy a little until it reports Redis again.
secondaries_subscribed() {
  local s
  for s in $secondaries; do
    node_status "$s" | python3 -c 'import json,sys; assert json.load(sys.stdin)["replication"]["redisConnected"]' || return 1
  done
}
wait_for 60 "every secondary resubscribed to Redis" secondaries_subscribed
primary_publishing() {
  crowd --buyers 20 >/dev/null || return 1
  node_status "$primary" | python3 -c 'import json,sys; assert json.load(sys.stdin)["replication"]["redisConnected"]'
}
wait_for 60 "the primary publishes to Redis again" primary_publishing
out=$(crowd --buyers 300) || fail "crowd after Redis came back: $out"
check_crowd "$out" >/dev/null || fail "crowd outcome: $out"
wait_for 60 "after Redis came back, every secondary converged to the primary" converged
show_seqs
repairs() {
  local s
  for s in $primary $secondaries; do
    node_status "$s" | python3 -c 'import json,sys; r=json.load(sys.stdin)["replication"]; print(sys.argv[1], "gaps", r["gaps"], "publishDropped", r["publishDropped"], "state", r["state"])' "$s"
  done | tr '\n' ';'
}
log "repairs: $(repairs)"
wait_for 60 "status in sync again (lag 0)" status_in_sync

log "3. a secondary killed mid-sale (testbed fault kill)"
victim=${secondaries%% *}
restarts_before=$(jp "pod/$victim" '{.status.containerStatuses[0].restartCount}')
crowd --buyers 40000 --duration-max-s 20 >"$TMPDIR_REPL/crowd3.json" 2>/dev/null &
crowd_pid=$!
sleep 0.5
bash testbed/cluster.sh fault --name "$CLUSTER" kill "$NS/$victim" >&2
log "killed $victim while buying"
wait "$crowd_pid" || fail "crowd during the secondary kill failed: $(cat "$TMPDIR_REPL/crowd3.json")"
crowd_pid=
log "crowd: $(cat "$TMPDIR_REPL/crowd3.json")"
check_crowd "$(cat "$TMPDIR_REPL/crowd3.json")" >/dev/null || fail "crowd outcome"
restarted() { [ "$(jp "pod/$victim" '{.status.containerStatuses[0].restartCount}')" -gt "$restarts_before" ]; }
wait_for 60 "$victim restarted" restarted
wait_for 120 "$victim ready again" kubectl wait -n "$NS" --for=condition=Ready "pod/$victim" --timeout=2s
wait_for 90 "the restarted secondary converged to the primary" converged
show_seqs
wait_for 60 "status in sync again (lag 0)" status_in_sync
log "4. thresholds: a negative one is refused; at 0 a secondary behind by any record under load lags (Event), then catches up (Event)"
if out=$(kubectl patch -n "$NS" "flashsale/$SALE" --type=merge -p '{"spec":{"replication":{"maxLagRecords":-1}}}' 2>&1); then
  fail "maxLagRecords -1 accepted"
fi
grep -q "spec.replication.maxLagRecords" <<<"$out" || fail "refusal does not name spec.replication.maxLagRecords: $out"
log "ok: refused: $(grep -o 'spec.replication.maxLagRecords.*' <<<"$out" | head -1)"
kubectl patch -n "$NS" "flashsale/$SALE" --type=merge -p '{"spec":{"replication":{"maxLagRecords":0,"maxLagMs":0}}}' >/dev/null
# The messages of the sale's Events with reason $1.
event_notes() {
  kubectl get events -n "$NS" --field-selector "involvedObject.kind=FlashSale,reason=$1" \
    -o jsonpath='{range .items[*]}{.message}{"\n"}{end}'
}
# event_seen REASON [TEXT]: an Event with that reason (whose message has TEXT).
# (No `| grep -q`: under pipefail, grep quitting early can fail the pipeline with SIGPIPE.)
event_seen() {
  local notes
  notes=$(event_notes "$1") || return 1
  grep -qF -- "${2:-}" <<<"$notes" && [ -n "$notes" ]
}
caught_up_before=$(event_notes ReplicationCaughtUp | grep -c . || true)
more_caught_up() { [ "$(event_notes ReplicationCaughtUp | grep -c .)" -gt "$caught_up_before" ]; }
# Whether a reconcile (every 5 s) samples a secondary mid-batch is a matter of timing:
# up to 5 crowds.
for attempt in 1 2 3 4 5; do
  CROWD_CONCURRENCY=32 crowd --buyers 40000 --duration-max-s 20 >/dev/null
  event_seen ReplicationLagging "limits 0 records, 0 ms" && break
  log "no ReplicationLagging Event after crowd $attempt"
done
event_seen ReplicationLagging "limits 0 records, 0 ms" || fail "no ReplicationLagging Event with maxLagRecords 0 under load"
log "ok: $(event_notes ReplicationLagging | grep -F "limits 0 records, 0 ms" | head -1)"
wait_for 60 "a ReplicationCaughtUp Event once the crowd stopped (a verdict holds 30 s)" more_caught_up
wait_for 60 "status in sync again (lag 0)" status_in_sync
# The hold bounds the flips: at most one pair per secondary per 30 s, not one per sample.
flips=$(kubectl get events -n "$NS" --field-selector involvedObject.kind=FlashSale,reason=ReplicationLagging -o jsonpath='{range .items[*]}{.count}{"\n"}{end}' | awk '{n += ($1 ? $1 : 1)} END {print n+0}')
log "ReplicationLagging Events: $flips"
(( flips <= 10 )) || fail "$flips ReplicationLagging Events: the verdict flaps"

events=$(kubectl get events -n "$NS" --field-selector involvedObject.kind=FlashSale -o jsonpath='{range .items[*]}{.reason}{"\n"}{end}' | sort | uniq -c | tr '\n' ';')
log "FlashSale Events: $events"
log "PASS"
