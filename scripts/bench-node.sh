#!/usr/bin/env bash
# The stock node HTTP benchmark (`make bench-node`). In one run, with one load shape
# (wrk, 1 thread, $CONNS connections (default 256: a sale is a crowd), $DURATION_S s, on its own core; the server
# pinned to the other core):
#   1. ceiling   `stock-node bench-noop`: same listener, JSON extractor and answer, no engine
#   2. durable   `stock-node serve` with group commit (one fdatasync per batch, the default)
#   3. nosync    `stock-node serve --durability no-sync`
#   4. redis     redis-server `appendfsync always`, the classic Lua check-and-decrement
#                through `redis-benchmark … EVALSHA` (same connection count)
# then the durable node under an open-loop load (testbed/openloop: a fixed rate, each
# request timed from when it was due) at 50% and 80% of its peak, and at 80%
# with frequent snapshots, the node without fdatasync at that 80% rate (the tail that is
# not the sync's), and the no-op ceiling at that 80% rate (the latency floor of
# the machine and the load generator), and the disk's own fdatasync latency at the sync
# rate of the 80% run (the floor a durable answer cannot go below). Prints a table: purchases/s, p50, p99, p99.9, server CPU µs
# per purchase, the ratios node/ceiling and node/redis, the node's resident memory per
# million orders held, and its group commits.
# The four closed-loop runs go in ROUNDS rounds (default 3); the table gives each run's
# median and the ratios per round as well.
# PROFILE_RUN=<run>[,<run>…] records the server's CPU profile during those runs (first
# round) with perf: call graphs in profile-<run>.txt, a flat profile in
# profile-<run>.flat.txt; with PROFILE_RUN=durable,ceiling the script ends with where
# the durable node's CPU per purchase goes beyond the no-op's (scripts/lib/profile-diff.py).
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS="${CONNS:-256}"
DURATION_S="${DURATION_S:-10}"
SERVER_CPU="${SERVER_CPU:-1}" # one CPU (its steal time is read from /proc/stat)
LOAD_CPU="${LOAD_CPU:-0}"
BENCH=bench-node
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_setup redis-server redis-benchmark redis-cli
bench_openloop

stop_server() { # pid: SIGTERM, wait for the drain and the final sync
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

start_node() { # name extra-args…: a node on a fresh data dir; sets PORT and PID
  local name=$1
  shift
  bench_node "$SERVER_CPU" "$name" --config "$WORK/sale.json" "$@"
  wait_http "http://127.0.0.1:$PORT/readyz"
}

start_noop() { # the no-op ceiling server; sets PORT and PID
  PORT=$(free_port)
  taskset -c "$SERVER_CPU" "$BIN" bench-noop --listen "127.0.0.1:$PORT" 2>"$WORK/noop.log" &
  PID=$!
  PIDS+=("$PID")
  wait_http "http://127.0.0.1:$PORT/v1/purchases" any
}

# How busy the machine was, so a reader can tell a quiet run from a contended one:
# the share of time some runnable task waited for a CPU (Linux PSI), over the last minute.
cpu_pressure() { awk '/^some/ { sub("avg60=", "", $3); print $3 "%" }' /proc/pressure/cpu 2>/dev/null || echo "n/a"; }
PRESSURE_BEFORE=$(cpu_pressure)
: >"$WORK/steal"
echo "bench-node: $CONNS connections, ${DURATION_S}s per run, server on CPU $SERVER_CPU, load on CPU $LOAD_CPU" >&2

run_redis() { # 4. Redis, appendfsync always, Lua check-and-decrement.
  local rport probe probe_rps n t0 t1 line sha
  rport=$(free_port)
  rm -rf "$WORK/redis"
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
  steal_start
  line=$(taskset -c "$LOAD_CPU" redis-benchmark -p "$rport" -c "$CONNS" -n "$n" --csv EVALSHA "$sha" 1 stock:bench 1 | tail -1)
  steal_stop redis
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  t1=$(cpu_ticks "$RPID")
  echo "$line" | awk -F'"' -v cpu="$(cpu_us_per_req $((t1 - t0)) "$n")" '{ printf "redis %d %s %s 0 %s\n", $4, $10, $14, cpu }' >>"$WORK/results"
  echo "  redis: $(tail -1 "$WORK/results")" >&2
  stop_server "$RPID"
}

# 1.–4. The closed-loop runs, in ROUNDS rounds (default 3) of the four in turn: this
# machine's speed drifts by tens of percent within minutes, so each figure below is
# the median of its rounds, and each ratio is also shown per round (runs minutes apart
# share one machine state). A profiled run (PROFILE_RUN) is profiled in the first round.
ROUNDS="${ROUNDS:-3}"
PROFILE_ASKED="${PROFILE_RUN:-}"
for round in $(seq "$ROUNDS"); do
  echo "bench-node: round $round of $ROUNDS" >&2
  [ "$round" -eq 1 ] || PROFILE_RUN=
  # 1. The HTTP ceiling.
  start_noop
  run_wrk ceiling "http://127.0.0.1:$PORT" "$CONNS" "$PID"
  stop_server "$PID"

  # 2. and 3. The node, durable then without fsync.
  start_node durable
  rss_start=$(rss_kb "$PID")
  # Resident memory per million orders held (every durable purchase is an order kept),
  # whole process and marginal: a 1 s warm-up with the same connections first, so the
  # marginal figure leaves out what does not grow with the orders (the connections'
  # buffers, the allocator's first pages). Measured in the first round.
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s -s "$WORK/purchase.lua" "http://127.0.0.1:$PORT" -- 0 warm >/dev/null
  rss_warm=$(rss_kb "$PID")
  curl -fsS "http://127.0.0.1:$PORT/metrics" >"$WORK/warm.metrics"
  orders_warm=$(metric "$WORK/warm.metrics" flashsale_engine_records_total)
  run_wrk durable "http://127.0.0.1:$PORT" "$CONNS" "$PID"
  if [ "$round" -eq 1 ]; then
    curl -fsS "http://127.0.0.1:$PORT/metrics" >"$WORK/durable.metrics"
    orders=$(metric "$WORK/durable.metrics" flashsale_engine_records_total)
    echo "memory $(rss_kb "$PID") $rss_start $orders $rss_warm $orders_warm" >"$WORK/memory"
  fi
  stop_server "$PID"
  start_node nosync --durability no-sync
  run_wrk nosync "http://127.0.0.1:$PORT" "$CONNS" "$PID"
  stop_server "$PID"

  run_redis
  sed "s/^/$round /" "$WORK/results" >>"$WORK/rounds"
  : >"$WORK/results"
  sed "s/^/$round /" "$WORK/steal" >>"$WORK/steal-rounds"
  : >"$WORK/steal"
done
PROFILE_RUN=$PROFILE_ASKED
# Each run's median over the rounds, field by field.
python3 - "$WORK/rounds" >"$WORK/results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    _, name, *fields = line.split()
    runs.setdefault(name, []).append(fields)
def med(col):
    vals = [float(v) for v in col if v != "-"]
    return statistics.median(vals) if vals else None
for name, rows in runs.items():
    m = [med(col) for col in zip(*rows)]
    print(name, "%d" % m[0], "%.3f" % m[1], "%.3f" % m[2], "%d" % m[3], "-" if m[4] is None else "%.1f" % m[4])
PY

# 5. Open loop: openloop sends at a fixed rate whatever the node does, and times each
# request from when it was due, not from when a connection was free (no coordinated
# omission; see testbed/openloop for why not oha). 50% and 80% of the durable peak, each
# on a fresh node; then 80% again with a snapshot every SNAP_EVERY records (the runs
# before keep the default, 200 000: one or two in a run; the script prints how many), for the
# snapshot's effect.
peak=$(awk '$1 == "durable" { print $2 }' "$WORK/results")
SNAP_EVERY="${SNAP_EVERY:-50000}"
open_loop() { # name percent extra-args…
  local name=$1 pct=$2 rate sampler=
  shift 2
  rate=$(( peak * pct / 100 ))
  start_node "$name" "$@"
  # In the 80% run, the node's slow syncs, its core's steal and its sequencer's wait
  # for the core, four times a second, to set beside each second's p99
  # (scripts/lib/second-sampler.py; on the load's core, no forks).
  if [ "$name" = "open@80%" ]; then
    taskset -c "$LOAD_CPU" python3 scripts/lib/second-sampler.py "$PORT" "$SERVER_CPU" "$PID" "$WORK/$name.samples" &
    sampler=$!
    PIDS+=("$sampler")
  fi
  run_openloop "$name" "http://127.0.0.1:$PORT" "$rate" "$PID"
  if [ -n "$sampler" ]; then
    kill -TERM "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
  fi
  curl -fsS "http://127.0.0.1:$PORT/metrics" >"$WORK/$name.metrics"
  stop_server "$PID"
}
open_loop open@50% 50
open_loop open@80% 80
open_loop open@80%+snap 80 --snapshot-every-records "$SNAP_EVERY"
# The same rate without the sync (--durability no-sync: the same engine, sequencer and
# HTTP path, answers sent without waiting for fdatasync): what of the 80% run's tail is
# the sync's, the disk's latency and the waits behind a slow one.
open_loop nosync@80% 80 --durability no-sync
# The floor this machine sets: the no-op at the same rate as open@80%.
start_noop
run_openloop ceiling@80% "http://127.0.0.1:$PORT" $(( peak * 80 / 100 )) "$PID"
stop_server "$PID"
# The floor the disk sets under a durable answer: its own fdatasync latency at the
# sync rate the node had at 80%, with nothing else running (scripts/lib/fsync-probe.py).
# With no sync counted the probe prints dashes.
SYNCS_PER_S=$(( $(metric "$WORK/open@80%.metrics" flashsale_engine_batches_total) / DURATION_S ))
taskset -c "$SERVER_CPU" python3 scripts/lib/fsync-probe.py "$WORK" "$SYNCS_PER_S" "$DURATION_S" >"$WORK/fsync-probe"

echo
echo "stock node benchmark — $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), server on CPU $SERVER_CPU, load on CPU $LOAD_CPU"
echo "closed loop: wrk, $CONNS connections, ${DURATION_S}s, POST /v1/purchases with distinct keys (redis: EVALSHA check-and-decrement)"
echo "open loop: openloop --rate <rate>, $CONNS connections, ${DURATION_S}s, a distinct purchase per request, timed from when it was due"
echo "CPU pressure (PSI some, avg60) before: $PRESSURE_BEFORE, after: $(cpu_pressure) — near 0% is a quiet machine"
echo "CPU steal on the server's core (time the hypervisor gave CPU $SERVER_CPU to something else), ms in each ${DURATION_S}s run — near 0 is a core of its own:"
awk '{ line[$1] = line[$1] sprintf(" %s %s,", $2, $3) } END { for (r = 1; r in line; r++) printf "  round %d:%s\n", r, substr(line[r], 1, length(line[r]) - 1) }' "$WORK/steal-rounds"
echo "  open loop:$(awk '{ printf " %s %s,", $1, $2 }' "$WORK/steal" | sed 's/,$//')"
echo "closed loop, each round:"
printf '%-5s %-15s %12s %9s %9s %8s %16s\n' round run purchases/s p50_ms p99_ms errors server_cpu_us/req
while read -r round name rps p50 p99 errs cpu; do
  printf '%-5s %-15s %12s %9s %9s %8s %16s\n' "$round" "$name" "$rps" "$p50" "$p99" "$errs" "$cpu"
done <"$WORK/rounds"
awk '{ rps[$1, $2] = $3; n = $1 > n ? $1 : n }
  END { for (r = 1; r <= n; r++) printf "round %d: durable / ceiling %.2f, nosync / ceiling %.2f, durable / redis %.2fx\n",
    r, rps[r, "durable"] / rps[r, "ceiling"], rps[r, "nosync"] / rps[r, "ceiling"], rps[r, "durable"] / rps[r, "redis"] }' "$WORK/rounds"
echo
echo "the closed-loop runs' medians over the $ROUNDS rounds, then the open-loop runs:"
printf '%-15s %12s %9s %9s %9s %8s %16s\n' run purchases/s p50_ms p99_ms p99.9_ms errors server_cpu_us/req
while read -r name rps p50 p99 errs cpu p999; do
  printf '%-15s %12s %9s %9s %9s %8s %16s\n' "$name" "$rps" "$p50" "$p99" "${p999:--}" "$errs" "$cpu"
done <"$WORK/results"
awk '
  { rps[$1] = $2; p99[$1] = $4; p999[$1] = $7 }
  END {
    printf "\ndurable / ceiling: %.2f   (target >= 0.75)\n", rps["durable"] / rps["ceiling"]
    printf "nosync  / ceiling: %.2f\n", rps["nosync"] / rps["ceiling"]
    printf "durable / redis appendfsync always: %.2fx   (target >= 1)\n", rps["durable"] / rps["redis"]
    printf "durable p99 at peak / ceiling p99: %.1fx   (target <= 5)\n", p99["durable"] / p99["ceiling"]
    printf "open loop at 80%% of the durable peak: %d/s, p99 %s ms, p99.9 %s ms   (target p99 <= 5 ms)\n",
      rps["open@80%"], p99["open@80%"], p999["open@80%"]
    printf "with a snapshot every '"$SNAP_EVERY"' records: p99 %s ms, p99.9 %s ms\n", p99["open@80%+snap"], p999["open@80%+snap"]
    printf "the node without fdatasync at the same rate (the tail that is not the sync'"'"'s): p99 %s ms, p99.9 %s ms\n", p99["nosync@80%"], p999["nosync@80%"]
    printf "the no-op at the same rate (what this machine and the load generator allow): p99 %s ms, p99.9 %s ms\n", p99["ceiling@80%"], p999["ceiling@80%"]
  }' "$WORK/results"
read -r _ rss_after rss_start orders rss_warm orders_warm <"$WORK/memory"
awk -v a="$rss_after" -v b="$rss_start" -v n="$orders" -v w="$rss_warm" -v nw="$orders_warm" 'BEGIN {
  printf "memory: %.0f MB resident after %d orders (%.0f MB at start): %.0f MB per million orders held, whole process\n",
    a / 1024, n, b / 1024, (a - b) / 1024 * 1e6 / n
  printf "memory: %.0f MB per million orders held, marginal (%.0f MB at %d orders after the warm-up)   (target <= 200)\n",
    (a - w) / 1024 * 1e6 / (n - nw), w / 1024, nw }'
for run in open@50% open@80% open@80%+snap nosync@80%; do
  printf '%s: %d purchases, %d snapshots, p99 of each second %s ms\n' "$run" \
    "$(metric "$WORK/$run.metrics" flashsale_engine_records_total)" "$(metric "$WORK/$run.metrics" flashsale_engine_snapshots_total)" \
    "$(python3 -c 'import json, sys; print(" ".join("%.1f" % w[3] for w in json.load(open(sys.argv[1]))["windows"]))' "$WORK/$run.openloop.json")"
done
echo
echo "group commit (durable run): $(awk '/^flashsale_engine_batch_records_sum/ { s = $2 } /^flashsale_engine_batch_records_count/ { c = $2 } END { if (c) printf "%.1f records/batch over %d batches", s / c, c }' "$WORK/durable.metrics"), $(awk '/^flashsale_engine_fsync_us_sum/ { s = $2 } /^flashsale_engine_fsync_us_count/ { c = $2 } END { if (c) printf "mean fdatasync %.0f us", s / c }' "$WORK/durable.metrics")"

# Where the 80% run's tail goes: quantiles of the engine's histograms (bucket upper
# bounds, so "<=").
hist_q() { # file metric q
  awk -v m="$2" -v q="$3" '
    index($0, m "_bucket{") == 1 { split($0, a, "\""); le[++n] = a[2]; c[n] = $NF }
    index($0, m "_count") == 1 { total = $NF }
    END { for (i = 1; i <= n; i++) if (c[i] >= q * total) { print le[i]; exit } }' "$1"
}
read -r _ _ _ probe_p50 _ probe_p99 _ probe_p999 _ probe_max <"$WORK/fsync-probe"
echo "the disk alone at that sync rate ($SYNCS_PER_S fdatasyncs/s of 1 KiB, each timed from when it was due): p50 $probe_p50 ms, p99 $probe_p99 ms, p99.9 $probe_p999 ms, max $probe_max ms"
echo "fdatasync at 80% of peak (open loop): p50 <= $(hist_q "$WORK/open@80%.metrics" flashsale_engine_fsync_us 0.5) us, p99 <= $(hist_q "$WORK/open@80%.metrics" flashsale_engine_fsync_us 0.99) us, p99.9 <= $(hist_q "$WORK/open@80%.metrics" flashsale_engine_fsync_us 0.999) us, max <= $(hist_q "$WORK/open@80%.metrics" flashsale_engine_fsync_us 1) us; batch p50 <= $(hist_q "$WORK/open@80%.metrics" flashsale_engine_batch_records 0.5) records"
# How busy the server's one core was in the open-loop runs (its CPU per request times
# the rate): a queue's tail grows steeply as this nears 100%.
awk '$1 ~ /^(open@|nosync@|ceiling@)/ && $6 != "-" { out = out sprintf("%s%s %.0f%% (%s us x %d/s)", (out ? ", " : ""), $1, $2 * $6 / 1e4, $6, $2) }
  END { print "the server core busy in the open loop (its CPU per request x the rate): " out }' "$WORK/results"
echo "open@80%, each second (by when its requests were due): the p99, the syncs that took longer than each bound (the engine's fdatasync histogram, which counts the sequencer's wait for the core after the sync), the time the host took from the server's core, and how long the sequencer thread waited for the core in all:"
python3 scripts/lib/second-sampler.py summarize "$WORK/open@80%.samples" "$WORK/open@80%.openloop.json" "$TICKS_PER_S"
echo "the sequencer's time per batch before its sync at 80% (engine_batch_apply_us): p50 <= $(hist_q "$WORK/open@80%.metrics" flashsale_engine_batch_apply_us 0.5) us, p99 <= $(hist_q "$WORK/open@80%.metrics" flashsale_engine_batch_apply_us 0.99) us, p99.9 <= $(hist_q "$WORK/open@80%.metrics" flashsale_engine_batch_apply_us 0.999) us, max <= $(hist_q "$WORK/open@80%.metrics" flashsale_engine_batch_apply_us 1) us"

# Where the durable node's CPU per purchase goes beyond the no-op's, when both were
# profiled (PROFILE_RUN=durable,ceiling).
profiled() { case ",${PROFILE_RUN:-}," in *",$1,"*) return 0 ;; esac; return 1; }
if profiled durable && profiled ceiling; then
  echo
  echo "durable (A) against the no-op ceiling (B), from the first round's profiles:"
  python3 scripts/lib/profile-diff.py profile-durable.flat.txt "$(awk '$1 == 1 && $2 == "durable" { print $7 }' "$WORK/rounds")" \
    profile-ceiling.flat.txt "$(awk '$1 == 1 && $2 == "ceiling" { print $7 }' "$WORK/rounds")" 15
fi
