#!/usr/bin/env bash
# The forwarding benchmark (`make bench-forward`): what a secondary that forwards
# purchases to its primary in batches (node/src/forward.rs) takes off the primary.
# Each run on a fresh cluster — a primary and two secondaries on one Redis, async
# replication, an empty sale — and in one run of the script, with the same load shape (wrk, 1 thread, $CONNS connections in all,
# $DURATION_S s, on its own core; every server on the other core):
#   direct       all purchases sent to the primary
#   forwarded    all purchases sent to one secondary, which forwards them
#   door-1/2/3   the front door with 1, 2 and 3 nodes: the connections split evenly over
#                the primary and 0, 1 or 2 secondaries (what the client Service does)
#   light-*      a light load (4 connections, 2 ms pause each) direct and forwarded:
#                the latency a forward adds at p50 and p99
# PROFILE_RUN=<run> [PROFILE_OUT=file] records the primary's CPU profile during that run
# with perf (`perf report --no-children --sort symbol`, into profile-<run>.txt).
# For each: purchases/s, p50, p99, errors, and the primary's CPU µs per purchase (its
# CPU time over the run divided by every purchase answered). On this machine every
# node shares one core, so more nodes cannot add throughput here; the CPU per purchase
# on the primary is the figure that says how far secondaries would carry a crowd on a
# cluster, where each node has its own cores.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS="${CONNS:-64}"
DURATION_S="${DURATION_S:-10}"
SERVER_CPU="${SERVER_CPU:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
TOKEN=bench-forward-token
CHANNEL="flashsale:bench-forward:wal"
BENCH=bench-forward
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
bench_setup redis-server redis-cli

start_node() { # name extra-args…: sets PORT and PID
  local name=$1
  shift
  bench_node "$SERVER_CPU" "$name" --admin-token "$TOKEN" --node-name "$name" \
    --redis-url "redis://127.0.0.1:$RPORT/" "$@"
}

# run_doors name pause url…: wrk on each url at once ($CONNS split evenly), the sum of
# their purchases/s, the worst p50/p99 among them, the primary's CPU µs per purchase.
run_doors() {
  local name=$1 pause=$2 conns t0 t1 i=0 url pids=()
  shift 2
  conns=$((CONNS / $#))
  [ "$pause" -gt 0 ] && conns=4
  t0=$(cpu_ticks "$P_PID")
  for url in "$@"; do
    taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${DURATION_S}s" --timeout 5s --latency \
      -s "$WORK/purchase.lua" "$url" -- "$pause" "$name.$i" >"$WORK/$name.$i.wrk" &
    pids+=($!)
    i=$((i + 1))
  done
  perf_start "$name" "$P_PID"
  wait "${pids[@]}"
  t1=$(cpu_ticks "$P_PID")
  perf_stop
  python3 - "$name" "$((t1 - t0))" "$TICKS_PER_S" "$WORK/$name".*.wrk >>"$WORK/results" <<'PY'
import re, sys
name, ticks, hz, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def ms(v):
    n = float(re.match(r"[0-9.]+", v).group(0))
    return n / 1000 if v.endswith("us") else n * 1000 if v.endswith("s") and not v.endswith("ms") else n
rps = reqs = errs = 0
p50 = p99 = 0.0
for f in files:
    t = open(f).read()
    rps += float(re.search(r"Requests/sec:\s+(\S+)", t).group(1))
    reqs += int(re.search(r"(\d+) requests in", t).group(1))
    p50 = max(p50, ms(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1)))
    p99 = max(p99, ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1)))
    errs += sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", t))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    errs += sum(int(g) for g in m.groups()) if m else 0
cpu = ticks * 1e6 / hz / reqs if reqs else float("nan")
print(f"{name} {rps:.0f} {p50:.3f} {p99:.3f} {errs} {cpu:.1f}")
PY
  tail -1 "$WORK/results" | awk '{ printf "  %s: %s purchases/s, p50 %s ms, p99 %s ms, errors %s, primary CPU %s us/purchase\n", $1, $2, $3, $4, $5, $6 }' >&2
}

echo "bench-forward: $CONNS connections, ${DURATION_S}s per run, servers on CPU $SERVER_CPU, load on CPU $LOAD_CPU" >&2
RPORT=$(free_port)
mkdir -p "$WORK/redis"
taskset -c "$SERVER_CPU" redis-server --bind 127.0.0.1 --port "$RPORT" --dir "$WORK/redis" \
  --save "" --appendonly no --daemonize no --loglevel warning >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

N=0
cluster_up() { # a fresh primary and two secondaries (every run starts from an empty sale)
  N=$((N + 1))
  CLUSTER_PIDS=()
  start_node "p$N" --role primary --config "$WORK/sale.json" --redis-channel "$CHANNEL-$N"
  P_PORT=$PORT
  P_PID=$PID
  CLUSTER_PIDS+=("$PID")
  wait_http "http://127.0.0.1:$P_PORT/healthz"
  admin PUT "$P_PORT" /admin/v1/role '{"role":"primary","epoch":1}' >/dev/null
  S_PORTS=()
  for i in 1 2; do
    start_node "s$i-$N" --role standby --redis-channel "$CHANNEL-$N"
    S_PORTS+=("$PORT")
    CLUSTER_PIDS+=("$PID")
    wait_http "http://127.0.0.1:$PORT/healthz"
    admin PUT "$PORT" /admin/v1/role "{\"role\":\"secondary\",\"epoch\":1,\"primaryUrl\":\"http://127.0.0.1:$P_PORT\"}" >/dev/null
  done
  for port in "${S_PORTS[@]}"; do wait_http "http://127.0.0.1:$port/readyz"; done
  P="http://127.0.0.1:$P_PORT"
  S1="http://127.0.0.1:${S_PORTS[0]}"
  S2="http://127.0.0.1:${S_PORTS[1]}"
}

cluster_down() { # adds the secondaries' forwarding counts to $WORK/forwarded, stops all
  local port
  for port in "${S_PORTS[@]}"; do admin GET "$port" /admin/v1/status; echo; done >>"$WORK/forwarded"
  for p in "${CLUSTER_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${CLUSTER_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}

: >"$WORK/forwarded"
cluster_up; run_doors direct 0 "$P"; cluster_down
cluster_up; run_doors forwarded 0 "$S1"; cluster_down
cluster_up; run_doors door-1 0 "$P"; cluster_down
cluster_up; run_doors door-2 0 "$P" "$S1"; cluster_down
cluster_up; run_doors door-3 0 "$P" "$S1" "$S2"; cluster_down
cluster_up; run_doors light-direct 2 "$P"; cluster_down
cluster_up; run_doors light-forwarded 2 "$S1"; cluster_down
batches=$(python3 -c '
import json, sys
ops = b = 0
for line in sys.stdin:
    if line.strip():
        l = json.loads(line)["load"]; ops += l["forwarded"]; b += l["forwardBatches"]
print(f"{ops} operations forwarded in {b} batches: {ops / max(b, 1):.1f} per batch")' <"$WORK/forwarded")

echo
echo "forwarding benchmark — $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), every server on CPU $SERVER_CPU, load on CPU $LOAD_CPU, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "load: wrk, $CONNS connections in all (light: 4 per url, 2 ms pause), ${DURATION_S}s, POST /v1/purchases with distinct keys; a primary and 2 secondaries, async replication"
printf '%-16s %12s %10s %10s %8s %16s\n' run purchases/s p50_ms p99_ms errors primary_us/purch
while read -r name rps p50 p99 errs cpu; do
  printf '%-16s %12s %10s %10s %8s %16s\n' "$name" "$rps" "$p50" "$p99" "$errs" "$cpu"
done <"$WORK/results"
echo "$batches"
awk '$1 == "direct" { d = $6 } $1 == "forwarded" { f = $6 }
     $1 == "light-direct" { l50 = $3; l99 = $4 } $1 == "light-forwarded" { f50 = $3; f99 = $4 }
     END { printf "primary CPU per purchase: direct %.1f us, forwarded %.1f us: %.1fx less (goal: 3x)\n", d, f, d / f;
           printf "latency a forward adds at light load: p50 %+.3f ms, p99 %+.3f ms\n", f50 - l50, f99 - l99 }' "$WORK/results"
