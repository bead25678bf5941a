#!/usr/bin/env bash
# The replication benchmark (`make bench-replication`). In one run, with one load shape
# (wrk, 1 thread, $CONNS connections, $DURATION_S s, on its own core; every server —
# nodes and Redis — pinned to the other core, so replication's CPU is paid there too):
#   1. lone     a primary alone, no Redis (the baseline)
#   2. async    the primary publishing to Redis, two secondaries following (default mode)
#   3. quorum   the same with --replication quorum: each write waits for a secondary's ack
# For 2 and 3 it also reads each secondary's lag histogram (publish on the primary, after
# its fsync → applied and fsynced on the secondary) and prints p50/p99, and checks that
# every secondary converged to the primary's sequence.
# Prints a table: purchases/s, p50, p99, ratio to the lone primary, lag p50/p99.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS="${CONNS:-64}"
DURATION_S="${DURATION_S:-10}"
SERVER_CPU="${SERVER_CPU:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
# Where the secondaries and Redis run: by default with the primary, so the table shows
# what replication costs on the primary's own core (on a cluster they have their own).
SECONDARY_CPU="${SECONDARY_CPU:-$SERVER_CPU}"
TOKEN=bench-replication-token
CHANNEL="flashsale:bench:wal"
BENCH=bench-replication
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_setup redis-server redis-cli

start_node() { # name extra-args…: sets PORT and PID (CPU: $NODE_CPU, default SERVER_CPU)
  local name=$1
  shift
  bench_node "${NODE_CPU:-$SERVER_CPU}" "$name" --admin-token "$TOKEN" --node-name "$name" "$@"
}

# Lag quantiles (ms) from a node's flashsale_replication_lag_ms histogram, interpolated
# within buckets.
lag_quantiles() { # metrics-file → "p50 p99 count"
  python3 - "$1" <<'PY'
import re, sys
buckets = []
for line in open(sys.argv[1]):
    m = re.match(r'flashsale_replication_lag_ms_bucket\{le="([^"]+)"\} (\S+)', line)
    if m:
        buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
total = buckets[-1][1] if buckets else 0
def q(p):
    if not total:
        return float("nan")
    want, lo, prev = p * total, 0.0, 0.0
    for le, c in buckets:
        if c >= want:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * ((want - prev) / (c - prev) if c > prev else 1)
        lo, prev = le, c
    return lo
print(f"{q(0.5):.3f} {q(0.99):.3f} {int(total)}")
PY
}

# run_cluster mode: primary + 2 secondaries on Redis, load on the primary, then lag.
run_cluster() {
  local mode=$1 p_port s_ports=() s_pids=()
  start_node "$mode-p" --role primary --config "$WORK/sale.json" \
    --redis-url "redis://127.0.0.1:$RPORT/" --redis-channel "$CHANNEL-$mode" --replication "$mode"
  p_port=$PORT
  PIDS_P=$PID
  wait_http "http://127.0.0.1:$p_port/healthz"
  admin PUT "$p_port" /admin/v1/role '{"role":"primary","epoch":1}' >/dev/null
  for i in 1 2; do
    NODE_CPU=$SECONDARY_CPU start_node "$mode-s$i" --role standby \
      --redis-url "redis://127.0.0.1:$RPORT/" --redis-channel "$CHANNEL-$mode" --replication "$mode"
    s_ports+=("$PORT")
    s_pids+=("$PID")
    wait_http "http://127.0.0.1:$PORT/healthz"
    admin PUT "$PORT" /admin/v1/role "{\"role\":\"secondary\",\"epoch\":1,\"primaryUrl\":\"http://127.0.0.1:$p_port\"}" >/dev/null
  done
  for port in "${s_ports[@]}"; do wait_http "http://127.0.0.1:$port/readyz"; done
  run_wrk "$mode" "http://127.0.0.1:$p_port" "$CONNS"
  local target
  target=$(admin GET "$p_port" /admin/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["durableSeq"])')
  for i in 1 2; do
    local port=${s_ports[$((i - 1))]} applied=0
    for _ in $(seq 600); do
      applied=$(admin GET "$port" /admin/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["appliedSeq"])')
      [ "$applied" -ge "$target" ] && break
      sleep 0.1
    done
    [ "$applied" -ge "$target" ] || echo "  $mode-s$i did not converge: $applied of $target" >&2
    curl -fsS "http://127.0.0.1:$port/metrics" >"$WORK/$mode-s$i.metrics"
    echo "$mode-s$i $(lag_quantiles "$WORK/$mode-s$i.metrics") $applied $target" >>"$WORK/lag"
    echo "  $mode-s$i: lag p50/p99/batches $(lag_quantiles "$WORK/$mode-s$i.metrics"), applied $applied of $target" >&2
  done
  for p in "$PIDS_P" "${s_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$PIDS_P" "${s_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}

echo "bench-replication: $CONNS connections, ${DURATION_S}s per run, servers on CPU $SERVER_CPU, load on CPU $LOAD_CPU" >&2
: >"$WORK/lag"

# Redis without persistence: pub/sub keeps nothing anyway.
RPORT=$(free_port)
mkdir -p "$WORK/redis"
taskset -c "$SECONDARY_CPU" redis-server --bind 127.0.0.1 --port "$RPORT" --dir "$WORK/redis" \
  --save "" --appendonly no --daemonize no --loglevel warning >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

# 1. The lone primary.
start_node lone --role primary --config "$WORK/sale.json"
wait_http "http://127.0.0.1:$PORT/readyz"
run_wrk lone "http://127.0.0.1:$PORT" "$CONNS"
kill -TERM "$PID"; wait "$PID" 2>/dev/null || true

# 2. and 3.
run_cluster async
run_cluster quorum

echo
echo "replication benchmark — $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), primary on CPU $SERVER_CPU, secondaries and Redis on CPU $SECONDARY_CPU, load on CPU $LOAD_CPU, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "load: $CONNS connections, ${DURATION_S}s, POST /v1/purchases with distinct keys, on the primary"
printf '%-8s %12s %10s %10s %8s %10s\n' run purchases/s p50_ms p99_ms errors vs_lone
lone=$(awk '$1 == "lone" { print $2 }' "$WORK/results")
while read -r name rps p50 p99 errs _cpu; do
  printf '%-8s %12s %10s %10s %8s %9.0f%%\n' "$name" "$rps" "$p50" "$p99" "$errs" "$(awk -v a="$rps" -v b="$lone" 'BEGIN { print 100 * a / b }')"
done <"$WORK/results"
echo
echo "replication lag (primary publish after fsync → secondary applied and fsynced), at the peak rate above"
printf '%-10s %10s %10s %10s %12s\n' secondary p50_ms p99_ms batches converged
while read -r name p50 p99 n applied target; do
  printf '%-10s %10s %10s %10s %12s\n' "$name" "$p50" "$p99" "$n" "$([ "$applied" -ge "$target" ] && echo yes || echo "NO $applied/$target")"
done <"$WORK/lag"
