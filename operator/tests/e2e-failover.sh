#!/usr/bin/env bash
# Failover chaos suite on the local cluster (FAILOVER.md, cases A1–J; K: a scale-down
# below the primary; L: a pod template rollout), through the operator. Each case runs a
# crowd that follows the primary (through the sale's primary Service) and retries every
# purchase with the same key, injects its fault, and checks from the crowd's own record
# of acknowledgements: every acknowledged order is on the
# new primary with the same id, key, sku and quantity; nothing is oversold; a monitor
# sampling every node every 250 ms never saw two nodes holding a live selling lease; the
# nodes converge (the old primary included). It prints the measured fault → first
# acknowledgement at the new epoch, and draws each case's timeline as a PNG beside its
# log ($E2E_OUT, default $FLASHSALE_CACHE/e2e-failover).
#
#   bash operator/tests/e2e-failover.sh          # cluster FLASHSALE_E2E_CLUSTER (default e2e)
#   FAILOVER_CASES="A1 G" bash operator/tests/e2e-failover.sh   # some cases only
set -euo pipefail
E2E_TAG=e2e-failover
# shellcheck source=operator/tests/e2e-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/e2e-lib.sh"
NS=fs-e2e-failover
SALE=fo
QSALE=foq
CASES=${FAILOVER_CASES:-"J A1 B C A2 D E F G H K L I"}
OUT=${E2E_OUT:-$FLASHSALE_CACHE/e2e-failover}
CHAOS=$ROOT/operator/tests/chaos
mkdir -p "$OUT"
rm -f "$OUT"/*.png "$OUT"/*.log "$OUT"/*.jsonl "$OUT"/*.json 2>/dev/null || true
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

e2e_cluster_up
CROWD=$FLASHSALE_BIN_DIR/crowd
e2e_python_venv # matplotlib for the timelines (cached)
crowd_pid=
monitor_pid=
removal_pid=
cleanup() {
  local rc=$?
  [ -n "$crowd_pid" ] && kill "$crowd_pid" 2>/dev/null
  [ -n "$monitor_pid" ] && kill "$monitor_pid" 2>/dev/null
  [ -n "$removal_pid" ] && kill "$removal_pid" 2>/dev/null
  if [ $rc -ne 0 ]; then
    log "--- state at failure"
    kubectl get fsale,pods,jobs -n "$NS" -o wide 2>&1 | sed 's/^/  /' >&2 || true
    kubectl get fsale -n "$NS" -o jsonpath='{range .items[*]}{.metadata.name}{": "}{.status.failover}{"\n"}{end}' 2>&1 | sed 's/^/  /' >&2 || true
    kubectl get events -n "$NS" --sort-by=.lastTimestamp 2>&1 | tail -30 | sed 's/^/  /' >&2 || true
    for p in $(kubectl get pods -n "$OP_NS" -o name 2>/dev/null); do
      kubectl logs -n "$OP_NS" "$p" --tail=25 2>&1 | sed "s|^|  $p: |" >&2 || true
    done
  fi
  for p in "${held[@]}"; do bash testbed/cluster.sh fault --name "$CLUSTER" release "$NS/$p" >/dev/null 2>&1 || true; done
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  $had_release || helm uninstall "$RELEASE" -n "$OP_NS" >/dev/null 2>&1 || true
  if $started_cluster && [ "${FLASHSALE_E2E_KEEP:-0}" != 1 ]; then
    bash testbed/cluster.sh down --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  [ -s "$SUMMARY" ] && { log "--- summary"; sed 's/^/  /' "$SUMMARY" >&2; }
  exit $rc
}
held=()
trap cleanup EXIT

log "helm install the operator, two replicas (the binary just built)"
e2e_install_operator --set replicaCount=2
sale_yaml() { # name mode
  cat <<EOF
apiVersion: flashsale.dev/v1alpha1
kind: FlashSale
metadata: {name: $1}
spec:
  items:
    - {sku: tee, stock: 100000000}
    - {sku: cap, stock: 100000000}
  nodes: {replicas: 3, storage: {size: 128Mi, reclaimPolicy: Delete}}
  replication: {mode: $2}
EOF
}
log "two sales of 3 nodes: $SALE (async), $QSALE (quorum), default failover timings"
sale_yaml "$SALE" async | kubectl apply -n "$NS" -f - >/dev/null
case " $CASES " in *" I "*) sale_yaml "$QSALE" quorum | kubectl apply -n "$NS" -f - >/dev/null ;; esac
wait_for 240 "flashsale/$SALE Ready" kubectl wait -n "$NS" --for=condition=Ready "flashsale/$SALE" --timeout=5s

jp() { kubectl get -n "$NS" "$1" -o jsonpath="$2"; }
TOKEN() { jp "secret/$1-admin" '{.data.token}' | base64 -d; }
ip_of() { jp "pod/$1" '{.status.podIP}'; }
primary_of() { jp "flashsale/$1" '{.status.primary.pod}'; }
epoch_of() { jp "flashsale/$1" '{.status.epoch}'; }
pods_of() {
  kubectl get pods -n "$NS" -l app.kubernetes.io/instance="$1",app.kubernetes.io/name=stock-node \
    -o jsonpath='{range .items[*]}{.metadata.name}{" "}{end}'
}
# The first node pod of SALE other than PRIMARY.
a_secondary() { # sale primary
  local p
  for p in $(pods_of "$1"); do
    if [ "$p" != "$2" ]; then echo "$p"; return 0; fi
  done
  fail "$1 has no node pod besides $2"
}
node_status() { curl -sf --max-time 2 -H "Authorization: Bearer $(TOKEN "$1")" "http://$(ip_of "$2"):8080/admin/v1/status"; }
now_ms() { date +%s%3N; }

# healthy SALE: Ready, no failover under way, one primary labelled, every node answering
# at the sale's epoch in its role, the secondaries at the primary's applied sequence.
healthy() {
  local sale=$1 st
  st=$(kubectl get -n "$NS" "flashsale/$sale" -o json) || return 1
  python3 - "$st" <<'PY' || return 1
import json, sys
s = json.loads(sys.argv[1])["status"]
assert "failover" not in s, s.get("failover")
assert any(c["type"] == "Ready" and c["status"] == "True" for c in s["conditions"]), "not ready"
assert s.get("ready", "").split("/")[0] == s.get("ready", "").split("/")[1], s.get("ready")
PY
  local primary epoch p want seq pseq out
  primary=$(primary_of "$sale"); epoch=$(epoch_of "$sale")
  [ "$(kubectl get pods -n "$NS" -l "app.kubernetes.io/instance=$sale,flashsale.dev/role=primary" -o name | wc -l)" = 1 ] || return 1
  pseq=$(node_status "$sale" "$primary" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["appliedSeq"])') || return 1
  for p in $(pods_of "$sale"); do
    want=secondary; [ "$p" = "$primary" ] && want=primary
    out=$(node_status "$sale" "$p") || return 1
    python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["role"]==sys.argv[1] and d["epoch"]==int(sys.argv[2]), (d["role"], d["epoch"]); assert d["appliedSeq"] >= int(sys.argv[3]) or sys.argv[1]=="primary", (d["appliedSeq"], sys.argv[3])' \
      "$want" "$epoch" "$pseq" <<<"$out" || return 1
  done
}

# The crowd that follows the primary: through the primary Service's ClusterIP, every
# purchase retried with its key until a definitive answer. In A2 and G it goes through
# the client Service instead (every ready node; secondaries forward to the primary): a
# forwarded purchase whose primary dies is a 503, and its same-key retry is answered
# by the new primary, through whichever node the connection lands on.
crowd_start() { # case sale
  local svc service="$2-primary"
  case $1 in A2 | G) service=$2 ;; esac
  svc=$(jp "svc/$service" '{.spec.clusterIP}')
  log "$1: the crowd buys through Service $service ($svc)"
  rm -f "$OUT/$1.stop"
  "$CROWD" --url "http://$svc:8080" --retry --buyers 100000000 --concurrency 8 --customers 100000 \
    --duration-max-s 240 --request-timeout-ms 1500 --retry-for-ms 60000 \
    --acks "$OUT/$1.acks.jsonl" --timeline "$OUT/$1.timeline.jsonl" --stop-file "$OUT/$1.stop" \
    --json >"$OUT/$1.crowd.json" 2>"$OUT/$1.crowd.log" &
  crowd_pid=$!
}
crowd_stop() { # case
  touch "$OUT/$1.stop"
  wait "$crowd_pid" || fail "$1: the crowd failed: $(cat "$OUT/$1.crowd.json" "$OUT/$1.crowd.log")"
  crowd_pid=
  # Nothing oversold, and no buyer gave up: every one retrying its key got its answer.
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["oversold"]==0, d; gave=[k for k in d["rejected"] if k.startswith("gave_up")]; assert not gave, ("buyers gave up", {k: d["rejected"][k] for k in gave}); print(d["attempts"], "buyers,", d["sold"], "acknowledged, oversold", d["oversold"], "retried", d["retried"])' \
    "$OUT/$1.crowd.json" || fail "$1: oversold or buyers gave up: $(cat "$OUT/$1.crowd.json")"
}
monitor_start() { # case sale
  local pods="" p
  for p in $(pods_of "$2"); do pods+="$p=$(ip_of "$p"),"; done
  rm -f "$OUT/$1.monitor.stop"
  python3 "$CHAOS/splitbrain.py" --token "$(TOKEN "$2")" --pods "$pods" \
    --out "$OUT/$1.leases.jsonl" --stop "$OUT/$1.monitor.stop" >"$OUT/$1.monitor.json" &
  monitor_pid=$!
}
monitor_stop() { # case
  touch "$OUT/$1.monitor.stop"
  wait "$monitor_pid" || fail "$1: two nodes held a live lease at once: $(cat "$OUT/$1.monitor.json"; grep -m3 '"live": \["[^]]*",' "$OUT/$1.leases.jsonl")"
  monitor_pid=
}
# Every acknowledged order is on the sale's primary, the same.
check_acks() { # case sale
  local out
  out=$("$CROWD" --url "http://$(ip_of "$(primary_of "$2")"):8080" --verify-acks "$OUT/$1.acks.jsonl" --concurrency 16) ||
    fail "$1: acknowledged orders lost: $out"
  log "ok: $1: every acknowledged order is on the new primary ($out)"
}
# The order ledger across failovers: before each fault a few orders are bought and
# confirmed (through the primary Service, retried with the same key); after it the new
# primary's ledger — through `kubectl flashsale ledger` — holds every order confirmed
# so far in this sale, each once, with the same id, sku, quantity and customer.
export PATH="$ROOT/plugins:$PATH"
confirm_some() { # case sale
  local svc
  svc=$(jp "svc/$2-primary" '{.spec.clusterIP}')
  python3 - "http://$svc:8080" "$1" "$OUT/$2.confirmed.jsonl" <<'PY' || fail "$1: could not buy and confirm orders before the fault"
import json, sys, time, urllib.request, urllib.error
base, case, path = sys.argv[1:4]
def call(method, url, body=None, headers={}):
    for _ in range(40):
        req = urllib.request.Request(url, method=method, data=body and json.dumps(body).encode(),
                                     headers={"content-type": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, timeout=3) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            if e.code != 503:
                raise RuntimeError(f"{method} {url}: {e.code} {e.read()[:200]}")
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{method} {url}: no answer")
with open(path, "a") as out:
    for i in range(10):
        who = f"ledger-{case}-{i}"
        o = call("POST", f"{base}/v1/purchases", {"sku": "cap", "quantity": 1 + i % 2, "customer": who, "idempotencyKey": who})
        c = call("POST", f"{base}/v1/orders/{o['id']}/confirm", {}, {"Flashsale-Customer": who})
        assert c["state"] == "confirmed", c
        out.write(json.dumps({k: o[k] for k in ("id", "sku", "quantity", "customer")}) + "\n")
PY
}
check_ledger() { # case sale
  local ledger
  ledger=$(kubectl flashsale ledger "$2" -n "$NS") || fail "$1: kubectl flashsale ledger failed"
  LEDGER=$ledger python3 - "$OUT/$2.confirmed.jsonl" "$1" <<'PY' || fail "$1: the ledger after the failover is not the confirmed orders"
import json, os, sys
rows = [json.loads(l) for l in os.environ["LEDGER"].splitlines() if l.strip()]
ids = [r["id"] for r in rows]
assert len(ids) == len(set(ids)), "an order twice in the ledger"
mine = [json.loads(l) for l in open(sys.argv[1])]
by_id = {r["id"]: r for r in rows}
for m in mine:
    r = by_id.get(m["id"])
    assert r is not None, f"confirmed order {m} missing from the ledger"
    assert {k: r[k] for k in m} == m, (m, r)
assert len(rows) == len(mine), f"{len(rows)} ledger rows, {len(mine)} orders confirmed"
print(f"e2e-failover: ok: {sys.argv[2]}: the new primary's ledger holds the {len(mine)} orders confirmed so far, each once, unchanged", file=sys.stderr)
PY
}

# fault → first acknowledgement at an epoch above OLD, and the longest gap between two
# acknowledgements in the 60 s after the fault, in ms (from the crowd's own record).
first_ack_after() { # case fault_ms old_epoch → "FIRST GAP"
  python3 - "$OUT/$1.acks.jsonl" "$2" "$3" <<'PY'
import json, sys
acks = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
fault, old = int(sys.argv[2]), int(sys.argv[3])
later = [a["tMs"] for a in acks if a["epoch"] > old and a["tMs"] >= fault]
times = sorted([fault] + [a["tMs"] for a in acks if fault <= a["tMs"] <= fault + 60000])
gap = max((b - a for a, b in zip(times, times[1:])), default=-1)
print(min(later) - fault if later else -1, gap)
PY
}
draw() { # case fault_ms title
  "$E2E_PYTHON" "$CHAOS/timeline.py" "$OUT/$1.acks.jsonl" "$2" "$3" "$OUT/$1.png" 2>>"$OUT/$1.crowd.log" ||
    log "warning: $1: no timeline drawn"
}
event_count() { # sale reason
  kubectl get events -n "$NS" --field-selector "involvedObject.kind=FlashSale,involvedObject.name=$1,reason=$2" \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | grep -c . || true
}
event_note() { # sale reason… → the newest note of those reasons
  local sale=$1 r
  shift
  for r in "$@"; do
    kubectl get events -n "$NS" --field-selector "involvedObject.kind=FlashSale,involvedObject.name=$sale,reason=$r" \
      -o jsonpath='{range .items[*]}{.metadata.creationTimestamp}{"\t"}{.note}{.message}{"\n"}{end}'
  done | sort | tail -1 | cut -f2-
}
fault() { bash testbed/cluster.sh fault --name "$CLUSTER" "$1" "$NS/$2" >/dev/null; }
hold() { fault hold "$1"; held+=("$1"); }
release() { fault release "$1"; }

# One case: crowd + monitor, the fault (the function named by $3), then the checks.
# The fault function prints nothing; it may set after_fault to a command run once the
# failover is done (thaw, restore, release).
run_case() { # case sale faultfn expect(failover|none) title
  local c=$1 sale=$2 fn=$3 expect=$4 title=$5 old_epoch old_primary t_fault t_start
  declare -A events_before=()
  wait_for 120 "$c: $sale healthy before the fault" healthy "$sale"
  old_epoch=$(epoch_of "$sale"); old_primary=$(primary_of "$sale")
  local r
  for r in Fenced CandidateChosen TailRecovered Promoted; do events_before[$r]=$(event_count "$sale" "$r"); done
  confirm_some "$c" "$sale"
  log "$c: $title (primary $old_primary, epoch $old_epoch)"
  t_start=$SECONDS
  crowd_start "$c" "$sale"; monitor_start "$c" "$sale"
  sleep 3
  after_fault=:
  t_fault=$(now_ms)
  "$fn" "$old_primary" "$sale"
  if [ "$expect" = failover ]; then
    wait_for 90 "$c: a new primary at epoch > $old_epoch" bash -c "[ \"\$(kubectl get -n $NS flashsale/$sale -o jsonpath='{.status.epoch}')\" -gt $old_epoch ] && [ -z \"\$(kubectl get -n $NS flashsale/$sale -o jsonpath='{.status.failover}')\" ]"
  fi
  sleep 3
  eval "$after_fault"
  wait_for 120 "$c: $sale healthy again (the old primary rejoined)" healthy "$sale"
  sleep 1
  crowd_stop "$c"; monitor_stop "$c"
  local new_epoch new_primary
  new_epoch=$(epoch_of "$sale"); new_primary=$(primary_of "$sale")
  if [ "$expect" = failover ]; then
    [ "$new_epoch" -gt "$old_epoch" ] || fail "$c: no failover (epoch $new_epoch)"
    # One Event per step, with its facts.
    local r
    for r in Fenced CandidateChosen TailRecovered Promoted; do
      [ "$(event_count "$sale" "$r")" -gt "${events_before[$r]:-0}" ] || fail "$c: no new $r Event"
      log "$c: $r: $(event_note "$sale" "$r")"
    done
    log "$c: $(event_note "$sale" FailoverCompleted SwitchoverCompleted)"
  else
    [ "$new_epoch" = "$old_epoch" ] || fail "$c: a failover happened (epoch $old_epoch → $new_epoch)"
  fi
  check_acks "$c" "$sale"
  check_ledger "$c" "$sale"
  local first gap
  read -r first gap < <(first_ack_after "$c" "$t_fault" "$old_epoch")
  draw "$c" "$t_fault" "$c: $title — fault at the dashed line; no acks for ${gap} ms"
  local last
  last=$(jp "flashsale/$sale" '{.status.lastFailover}')
  printf '%-3s %-50s epoch %s→%s %s→%s  first ack at new epoch %6s ms  longest gap %6s ms  (case %ss)\n' \
    "$c" "$title" "$old_epoch" "$new_epoch" "$old_primary" "$new_primary" "$first" "$gap" "$((SECONDS - t_start))" | tee -a "$SUMMARY" >&2
  [ "$expect" = failover ] && log "$c: lastFailover: $last"
  return 0
}

# --- the faults
f_kill() { fault kill "$1"; }
# B also sends purchases straight to the frozen primary: once thawed, it must answer
# every one 503 (fenced, or not the primary any more), never 201.
inflight=()
f_freeze() {
  fault freeze "$1"
  local ip i
  ip=$(ip_of "$1")
  : >"$OUT/B.inflight"
  for i in 1 2 3 4 5; do
    curl -s -o /dev/null -w '%{http_code}\n' --max-time 90 -X POST "http://$ip:8080/v1/purchases" \
      -d "{\"sku\":\"tee\",\"quantity\":1,\"customer\":\"frozen-$i\",\"idempotencyKey\":\"frozen-$i\"}" >>"$OUT/B.inflight" &
    inflight+=($!)
  done
  after_fault="fault thaw $1; thawed_answers"
}
thawed_answers() {
  local p
  for p in "${inflight[@]}"; do wait "$p" || true; done
  inflight=()
  grep -q '^201$' "$OUT/B.inflight" && fail "B: the thawed primary acknowledged a purchase: $(tr '\n' ' ' <"$OUT/B.inflight")"
  log "ok: B: the thawed primary answered its in-flight purchases $(sort "$OUT/B.inflight" | uniq -c | tr '\n' ' ')"
}
f_cut() { fault cut "$1"; after_fault="fault restore $1"; }
f_hold() { hold "$1"; after_fault="release $1"; }
f_delete() {
  hold "$1"
  kubectl delete pod -n "$NS" "$1" --wait=false >/dev/null
  after_fault="release $1"
}
f_switchover() {
  local target
  target=$(a_secondary "$2" "$1")
  kubectl annotate -n "$NS" "flashsale/$2" "flashsale.dev/switchover-to=$target" --overwrite >/dev/null
}
f_redis_then_kill() {
  local r
  r=$(kubectl get pods -n "$NS" -l "app.kubernetes.io/instance=$2,app.kubernetes.io/name=redis" -o jsonpath='{.items[0].metadata.name}')
  hold "$r"; sleep 2; hold "$1"
  after_fault="release $1; release $r"
}
f_secondary_frozen_then_kill() {
  frozen=$(a_secondary "$2" "$1")
  fault freeze "$frozen"; sleep 1; hold "$1"
  after_fault="fault thaw $frozen; release $1"
}
# K: a scale-down that would remove the primary (on the top ordinal). The operator
# switches over first; a watcher sampling every 250 ms fails the case if the pod the
# status names as primary is ever being deleted (seen deleted, and still named after).
f_scale_down() { # primary sale
  local n
  n=$(jp "flashsale/$2" '{.spec.nodes.replicas}')
  removal_watch "$2" K &
  removal_pid=$!
  kubectl scale -n "$NS" "flashsale/$2" --replicas=$((n - 1)) >/dev/null
  after_fault="removal_checked $2 $n"
}
removal_watch() { # sale case
  local p d
  : >"$OUT/$2.removed"
  while :; do
    p=$(primary_of "$1")
    d=$(kubectl get pod -n "$NS" "$p" -o jsonpath='{.metadata.deletionTimestamp}' 2>&1) || d="absent ($d)"
    if [ -n "$d" ] && [ "$(primary_of "$1")" = "$p" ]; then
      echo "$(now_ms) the primary $p is being removed: $d" >>"$OUT/$2.removed"
    fi
    sleep 0.25
  done
}
removal_checked() { # sale replicas
  local top="$1-$(($2 - 1))"
  gone() { [ "$(jp "statefulset/$1" '{.spec.replicas}')" = "$(($2 - 1))" ] && ! kubectl get pod -n "$NS" "$top" >/dev/null 2>&1; }
  wait_for 60 "K: StatefulSet at $(($2 - 1)) nodes, $top gone" gone "$1" "$2"
  kill "$removal_pid" 2>/dev/null; wait "$removal_pid" 2>/dev/null || true
  removal_pid=
  [ -s "$OUT/K.removed" ] && fail "K: $(head -3 "$OUT/K.removed" | tr '\n' ' ')"
  log "ok: K: $top left only after it was no longer the primary; scaling back to $2"
  kubectl scale -n "$NS" "flashsale/$1" --replicas="$2" >/dev/null
}
case_K() {
  local top
  top="$SALE-$(($(jp "flashsale/$SALE" '{.spec.nodes.replicas}') - 1))"
  wait_for 120 "K: healthy" healthy "$SALE"
  if [ "$(primary_of "$SALE")" != "$top" ]; then
    kubectl annotate -n "$NS" "flashsale/$SALE" "flashsale.dev/switchover-to=$top" --overwrite >/dev/null
    is_top() { [ "$(primary_of "$SALE")" = "$top" ]; }
    wait_for 60 "K: the primary moved to the top ordinal ($top) first" is_top
  fi
  run_case K "$SALE" f_scale_down failover "scale-down below the primary (switchover first)"
}

# L: a pod template rollout (the nodes' memory limit changed) under load. The operator
# replaces the secondaries one at a time, switches over, then replaces the old primary
# as a secondary; K's watcher fails the case if the pod the status names as primary is
# ever being deleted. Then every pod runs the StatefulSet's update revision, one
# PodReplaced Event per pod, and the sale says RolledOut.
f_rollout() { # primary sale
  removal_watch "$2" L &
  removal_pid=$!
  kubectl patch -n "$NS" "flashsale/$2" --type=merge >/dev/null \
    -p '{"spec":{"nodes":{"resources":{"requests":{"cpu":"250m","memory":"128Mi"},"limits":{"memory":"600Mi"}}}}}'
  after_fault="rollout_checked $2"
}
rolled_out() { # sale
  local want
  want=$(jp "statefulset/$1" '{.status.updateRevision}')
  [ -n "$want" ] || return 1
  [ "$(kubectl get pods -n "$NS" -l "app.kubernetes.io/instance=$1,app.kubernetes.io/name=stock-node" \
    -o jsonpath='{range .items[*]}{.metadata.labels.controller-revision-hash}{"\n"}{end}' | sort -u)" = "$want" ] || return 1
  [ "$(jp "flashsale/$1" '{.status.conditions[?(@.type=="Progressing")].reason}')" = RolledOut ]
}
rollout_checked() { # sale
  local n
  n=$(jp "flashsale/$1" '{.spec.nodes.replicas}')
  wait_for 120 "L: every pod of $1 on the new template, RolledOut" rolled_out "$1"
  kill "$removal_pid" 2>/dev/null; wait "$removal_pid" 2>/dev/null || true
  removal_pid=
  [ -s "$OUT/L.removed" ] && fail "L: $(head -3 "$OUT/L.removed" | tr '\n' ' ')"
  [ "$(event_count "$1" PodReplaced)" -ge "$n" ] || fail "L: $(event_count "$1" PodReplaced) PodReplaced Events for $n pods"
  log "ok: L: $n pods replaced, the primary only after it was no longer the primary; last: $(event_note "$1" PodReplaced)"
}

# E: the leading operator killed while the failover fences (a frozen primary: the fence
# waits out its lease), and the new leader killed while it recovers the tail (a Job).
f_kill_leader_twice() {
  fault freeze "$1"
  local step leader
  for want in Fencing Recovering; do
    for _ in $(seq 1 100); do
      step=$(jp "flashsale/$2" '{.status.failover.step}' 2>/dev/null || true)
      [ "$step" = "$want" ] && break
      sleep 0.1
    done
    leader=$(kubectl get lease -n "$OP_NS" "$RELEASE-flashsale-operator" -o jsonpath='{.spec.holderIdentity}')
    log "E: killing the leading operator $leader during $step"
    bash testbed/cluster.sh fault --name "$CLUSTER" kill "$OP_NS/$leader" >/dev/null || true
  done
  after_fault="fault thaw $1"
}

# I: quorum mode, the old primary's volume unreadable (its recovery Job fails), one
# secondary frozen: the failover is blocked until every secondary reports, then the most
# advanced secondary is promoted (each acknowledged sale is durable on a secondary).
case_I() {
  local c=I sale=$QSALE old_epoch old_primary frozen pvdir t_fault t_start
  wait_for 240 "I: $QSALE healthy" healthy "$QSALE"
  old_epoch=$(epoch_of "$sale"); old_primary=$(primary_of "$sale")
  log "I: quorum mode, unreadable volume, a secondary frozen (primary $old_primary)"
  t_start=$SECONDS
  crowd_start I "$sale"; monitor_start I "$sale"
  sleep 3
  frozen=$(a_secondary "$sale" "$old_primary")
  pvdir=$(kubectl get pv "$(jp "pvc/wal-$old_primary" '{.spec.volumeName}')" -o jsonpath='{.spec.hostPath.path}')
  t_fault=$(now_ms)
  fault freeze "$frozen"
  hold "$old_primary"
  mv "$pvdir/wal" "$pvdir/wal.hidden"
  wait_for 60 "I: the failover blocked, waiting for every secondary (QuorumUnsafe)" \
    bash -c "kubectl get -n $NS flashsale/$sale -o jsonpath='{.status.failover.blocked}' | grep -q QuorumUnsafe"
  log "I: $(jp "flashsale/$sale" '{.status.failover.blocked}')"
  fault thaw "$frozen"
  wait_for 60 "I: promoted once every secondary reported" bash -c "[ \"\$(kubectl get -n $NS flashsale/$sale -o jsonpath='{.status.epoch}')\" -gt $old_epoch ] && [ -z \"\$(kubectl get -n $NS flashsale/$sale -o jsonpath='{.status.failover}')\" ]"
  mv "$pvdir/wal.hidden" "$pvdir/wal"
  release "$old_primary"
  wait_for 120 "I: $sale healthy again" healthy "$sale"
  crowd_stop I; monitor_stop I
  check_acks I "$sale"
  local first gap
  read -r first gap < <(first_ack_after I "$t_fault" "$old_epoch")
  draw I "$t_fault" "I: quorum, volume unreadable, a secondary frozen — no acks for ${gap} ms"
  printf '%-3s %-50s epoch %s→%s %s→%s  first ack at new epoch %6s ms  longest gap %6s ms  (case %ss)\n' \
    I "quorum, volume unreadable, a secondary frozen" "$old_epoch" "$(epoch_of "$sale")" "$old_primary" "$(primary_of "$sale")" "$first" "$gap" "$((SECONDS - t_start))" | tee -a "$SUMMARY" >&2
}

for c in $CASES; do
  case $c in
    J)
      # Half a minute at full load (J_SECONDS; seven times the 4 s `unhealthyAfter`), no
      # fault: not one failover.
      wait_for 120 "J: healthy" healthy "$SALE"
      before=$(event_count "$SALE" FailingOver); e0=$(epoch_of "$SALE")
      crowd_start J "$SALE"; monitor_start J "$SALE"
      CROWD_J=1 sleep "${J_SECONDS:-30}"
      crowd_stop J; monitor_stop J
      [ "$(epoch_of "$SALE")" = "$e0" ] || fail "J: the epoch moved without a fault"
      [ "$(event_count "$SALE" FailingOver)" = "$before" ] || fail "J: a spurious failover"
      [ "$(event_count "$SALE" PrimaryUnhealthy)" = 0 ] || log "warning: J: PrimaryUnhealthy Events: $(event_note "$SALE" PrimaryUnhealthy)"
      check_acks J "$SALE"
      draw J 0 "J: ${J_SECONDS:-30} s at full load, no fault"
      printf '%-3s %-52s %s failovers in %s s\n' J "no fault, full load" 0 "${J_SECONDS:-30}" | tee -a "$SUMMARY" >&2
      ;;
    A1) run_case A1 "$SALE" f_kill none "kill -9 the primary (restarted)" ;;
    A2) run_case A2 "$SALE" f_hold failover "kill the primary, keep it down (recovery Job)" ;;
    B) run_case B "$SALE" f_freeze failover "freeze the primary (SIGSTOP), then thaw" ;;
    C) run_case C "$SALE" f_cut failover "cut the primary's network, then restore" ;;
    D) run_case D "$SALE" f_delete failover "delete the primary's pod, its node gone" ;;
    E) run_case E "$SALE" f_kill_leader_twice failover "kill the operator leader mid-fence, mid-recovery" ;;
    F) run_case F "$SALE" f_redis_then_kill failover "Redis down, then the primary killed" ;;
    G) run_case G "$SALE" f_switchover failover "switchover under load (annotation)" ;;
    H) run_case H "$SALE" f_secondary_frozen_then_kill failover "a secondary frozen, the primary killed" ;;
    I) case_I ;;
    K) case_K ;;
    L) run_case L "$SALE" f_rollout failover "pod template rollout (switchover, no lease wait)" ;;
    *) fail "unknown case $c" ;;
  esac
  # Every case leaves one new primary: never two at once.
  n=$(kubectl get pods -n "$NS" -l "app.kubernetes.io/instance=$SALE,flashsale.dev/role=primary" -o name | wc -l)
  [ "$n" = 1 ] || fail "$c: $n pods labelled primary"
done
log "Events of $SALE: $(kubectl get events -n "$NS" --field-selector involvedObject.kind=FlashSale,involvedObject.name=$SALE -o jsonpath='{range .items[*]}{.reason}{"\n"}{end}' | sort | uniq -c | tr '\n' ';')"
log "timelines: $OUT/*.png"
log "PASS"
