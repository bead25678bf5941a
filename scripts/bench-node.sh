#!/usr/bin/env bash
# The stock node HTTP benchmark (`make bench-node`). In one run, with one load shape
# (wrk, 1 thread, $CONNS connections (default 256: a sale is a crowd), $DURATION_S s, on its own core; the server
# pinned to the other core):
#   1. ceiling   `stock-node bench-noop`: same listener, JSON extractor and answer, no engine
#   2. durable   `stock-node serve` with group commit (one fdatasync per batch, the default)
#   3. nosync    `stock-node serve --durability no-sync`
#   4. redis     redis-server `appendfsync always`, the classic Lua check-and-decrement
#                through `redis-benchmark … EVALSHA` (same connection count)
# then the durable node again at 80% of its peak rate, for its p99 (wrk with a per-
# connection delay: wrk2 is not in Debian; see the README for what that measures).
# Prints a table: purchases/s, p50, p99, and the ratios node/ceiling and node/redis.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS="${CONNS:-256}"
DURATION_S="${DURATION_S:-10}"
SERVER_CPU="${SERVER_CPU:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
BENCH=bench-node
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_setup redis-server redis-benchmark redis-cli

stop_server() { # pid: SIGTERM, wait for the drain and the final sync
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

start_node() { # name extra-args…: a node on a fresh data dir; sets PORT and PID
  local name=$1
  shift
  PORT=$(free_port)
  taskset -c "$SERVER_CPU" "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/$name-data" \
    --config "$WORK/sale.json" "$@" 2>"$WORK/$name.log" &
  PID=$!
  PIDS+=("$PID")
  wait_http "http://127.0.0.1:$PORT/readyz"
}

# How busy the machine was, so a reader can tell a quiet run from a contended one:
# the share of time some runnable task waited for a CPU (Linux PSI), over the last minute.
cpu_pressure() { awk '/^some/ { sub("avg60=", "", $3); print $3 "%" }' /proc/pressure/cpu 2>/dev/null || echo "n/a"; }
PRESSURE_BEFORE=$(cpu_pressure)
echo "bench-node: $CONNS connections, ${DURATION_S}s per run, server on CPU $SERVER_CPU, load on CPU $LOAD_CPU" >&2

# 1. The HTTP ceiling.
port=$(free_port)
taskset -c "$SERVER_CPU" "$BIN" bench-noop --listen "127.0.0.1:$port" 2>"$WORK/noop.log" &
PID=$!
PIDS+=("$PID")
wait_http "http://127.0.0.1:$port/v1/purchases" any
run_wrk ceiling "http://127.0.0.1:$port" "$CONNS" "$PID"
stop_server "$PID"

# 2. and 3. The node, durable then without fsync.
start_node durable
run_wrk durable "http://127.0.0.1:$PORT" "$CONNS" "$PID"
curl -fsS "http://127.0.0.1:$PORT/metrics" >"$WORK/durable.metrics"
stop_server "$PID"
start_node nosync --durability no-sync
run_wrk nosync "http://127.0.0.1:$PORT" "$CONNS" "$PID"
stop_server "$PID"

# 4. Redis, appendfsync always, Lua check-and-decrement.
rport=$(free_port)
mkdir -p "$WORK/redis"
taskset -c "$SERVER_CPU" redis-server --bind 127.0.0.1 --port "$rport" --dir "$WORK/redis" \
  --appendonly yes --appendfsync always --save "" --daemonize no --loglevel warning \
  >"$WORK/redis.log" 2>&1 &
RPID=$!
PIDS+=("$RPID")
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$rport" set stock:bench 1000000000000 >/dev/null
LUA_DECR='local s = tonumber(redis.call("GET", KEYS[1]) or "0"); local q = tonumber(ARGV[1]); if s >= q then return redis.call("DECRBY", KEYS[1], q) else return -1 end'
sha=$(redis-cli -p "$rport" script load "$LUA_DECR")
# redis-benchmark counts requests, not time: a short run sets the count for ~DURATION_S.
probe=$(taskset -c "$LOAD_CPU" redis-benchmark -p "$rport" -c "$CONNS" -n 20000 --csv EVALSHA "$sha" 1 stock:bench 1 | tail -1)
probe_rps=$(echo "$probe" | awk -F'"' '{ printf "%d", $4 }')
n=$(( probe_rps * DURATION_S ))
t0=$(cpu_ticks "$RPID")
line=$(taskset -c "$LOAD_CPU" redis-benchmark -p "$rport" -c "$CONNS" -n "$n" --csv EVALSHA "$sha" 1 stock:bench 1 | tail -1)
# "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
t1=$(cpu_ticks "$RPID")
echo "$line" | awk -F'"' -v cpu="$(cpu_us_per_req $((t1 - t0)) "$n")" '{ printf "redis %d %s %s 0 %s\n", $4, $10, $14, cpu }' >>"$WORK/results"
echo "  redis: $(tail -1 "$WORK/results")" >&2
stop_server "$RPID"

# 5. The durable node at 80% of its peak: each connection pauses between requests.
peak=$(awk '$1 == "durable" { print $2 }' "$WORK/results")
target=$(( peak * 8 / 10 ))
pause_ms=20
conns80=$(( (target * pause_ms + 999) / 1000 ))
[ "$conns80" -ge 1 ] || conns80=1
start_node durable80
run_wrk durable@80% "http://127.0.0.1:$PORT" "$conns80" "$PID" "$pause_ms"
curl -fsS "http://127.0.0.1:$PORT/metrics" >"$WORK/durable80.metrics"
stop_server "$PID"

echo
echo "stock node benchmark — $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), server on CPU $SERVER_CPU, load on CPU $LOAD_CPU"
echo "load: $CONNS connections, ${DURATION_S}s, POST /v1/purchases with distinct keys (redis: EVALSHA check-and-decrement)"
echo "CPU pressure (PSI some, avg60) before: $PRESSURE_BEFORE, after: $(cpu_pressure) — near 0% is a quiet machine"
printf '%-14s %12s %10s %10s %8s %16s\n' run purchases/s p50_ms p99_ms errors server_cpu_us/req
while read -r name rps p50 p99 errs cpu; do
  printf '%-14s %12s %10s %10s %8s %16s\n' "$name" "$rps" "$p50" "$p99" "$errs" "$cpu"
done <"$WORK/results"
awk -v target="$target" -v conns="$conns80" -v pause="$pause_ms" '
  { rps[$1] = $2; p99[$1] = $4 }
  END {
    printf "\ndurable / ceiling: %.0f%%   (target >= 75%%)\n", 100 * rps["durable"] / rps["ceiling"]
    printf "nosync  / ceiling: %.0f%%\n", 100 * rps["nosync"] / rps["ceiling"]
    printf "durable / redis appendfsync always: %.2fx   (target >= 1)\n", rps["durable"] / rps["redis"]
    printf "durable at 80%% of peak (asked %d/s via %d conns pausing %d ms): got %d/s, p99 %s ms   (target <= 5 ms)\n",
      target, conns, pause, rps["durable@80%"], p99["durable@80%"]
  }' "$WORK/results"
echo
echo "group commit (durable run): $(awk '/^flashsale_engine_batch_records_sum/ { s = $2 } /^flashsale_engine_batch_records_count/ { c = $2 } END { if (c) printf "%.1f records/batch over %d batches", s / c, c }' "$WORK/durable.metrics"), $(awk '/^flashsale_engine_fsync_us_sum/ { s = $2 } /^flashsale_engine_fsync_us_count/ { c = $2 } END { if (c) printf "mean fdatasync %.0f us", s / c }' "$WORK/durable.metrics")"

# Where the 80% run's tail goes: quantiles of the engine's fsync histogram (bucket
# upper bounds, so "<=").
hist_q() { # file metric q
  awk -v m="$2" -v q="$3" '
    index($0, m "_bucket{") == 1 { split($0, a, "\""); le[++n] = a[2]; c[n] = $NF }
    index($0, m "_count") == 1 { total = $NF }
    END { for (i = 1; i <= n; i++) if (c[i] >= q * total) { print le[i]; exit } }' "$1"
}
echo "fdatasync at 80% of peak: p50 <= $(hist_q "$WORK/durable80.metrics" flashsale_engine_fsync_us 0.5) us, p99 <= $(hist_q "$WORK/durable80.metrics" flashsale_engine_fsync_us 0.99) us; batch p50 <= $(hist_q "$WORK/durable80.metrics" flashsale_engine_batch_records 0.5) records"

