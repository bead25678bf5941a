#!/usr/bin/env bash
# The node's instructions per request (`make bench-instructions`): a count that does not
# drift with the machine's speed, so a change of a few percent on the HTTP path shows
# where `make bench-node` (±30% between runs on a shared VM) cannot see it.
#
# Runs the node (`serve`, group commit) and then the no-op ceiling (`bench-noop`) under
# valgrind's callgrind, sends WARMUP purchases (default 2000), zeroes the counters, sends
# N more (default 5000; distinct keys, 64 connections, closed loop, oha), and prints the
# user-space instructions per request of each thread that ran and their sum. The kernel
# (TCP, fdatasync, wakeups), cache misses and waiting are not counted: this is the code
# path's length, not its time. The callgrind files are kept in OUT (default
# /tmp/bench-instructions) for `callgrind_annotate --inclusive=yes OUT/<run>/cg.out.1-<thread>`.
# NODE_BIN counts another build of stock-node instead of this checkout's.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS="${CONNS:-64}"
N="${N:-5000}"
WARMUP="${WARMUP:-2000}"
OUT="${OUT:-${TMPDIR:-/tmp}/bench-instructions}"
DURATION_S=1
LOAD_CPU=0
BENCH=bench-instructions
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
command -v valgrind >/dev/null || { echo "$BENCH: apt-get install valgrind" >&2; apt-get install -y -qq valgrind >/dev/null; }
bench_setup callgrind_control
bench_oha
# NODE_BIN=<a stock-node binary>: count another build (a copy kept from before a change).
BIN="${NODE_BIN:-$BIN}"

python3 - $((WARMUP + N)) >"$WORK/bodies" <<'PY'
import sys
for i in range(int(sys.argv[1])):
    print('{"sku":"bench","quantity":1,"customer":"c-%d","idempotencyKey":"k-%d"}' % (i, i))
PY
head -n "$WARMUP" "$WORK/bodies" >"$WORK/warm"
tail -n "$N" "$WORK/bodies" >"$WORK/counted"

send() { # url bodies count: closed loop, every answer must be a 201
  local out
  out=$("$OHA" -n "$3" -c "$CONNS" --no-tui --output-format json -m POST -T application/json \
    -Z "$2" -t 60s "$1")
  echo "$out" | python3 -c '
import json, sys
r = json.load(sys.stdin)
codes = r.get("statusCodeDistribution", {})
if set(codes) != {"201"}:
    sys.exit("answers other than 201: %s" % codes)'
}

run() { # name ready-path args…: one server under callgrind
  local name=$1 ready=$2 port pid total
  shift 2
  port=$(free_port)
  mkdir -p "$OUT/$name"
  rm -f "$OUT/$name"/cg.out*
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$name/cg.out" --separate-threads=yes \
    "$BIN" "$@" --listen "127.0.0.1:$port" 2>"$WORK/$name.valgrind.log" &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 600); do
    curl -s -o /dev/null "http://127.0.0.1:$port$ready" && break
    sleep 0.2
  done
  send "http://127.0.0.1:$port/v1/purchases" "$WORK/warm" "$WARMUP"
  callgrind_control -z "$pid" >/dev/null 2>&1
  send "http://127.0.0.1:$port/v1/purchases" "$WORK/counted" "$N"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # The dump after the counted requests is part 1 of each thread's file.
  total=0
  for f in "$OUT/$name"/cg.out.1-*; do
    local ir thread
    ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$f")
    thread=${f##*-}
    [ "${ir:-0}" -gt $((N * 10)) ] || continue
    printf '  %-8s thread %s: %6d instructions per request\n' "$name" "$thread" $((ir / N))
    total=$((total + ir))
  done
  printf '%-8s %6d instructions per request (user space, all threads)\n' "$name" $((total / N))
}

echo "$BENCH: $N purchases after $WARMUP, $CONNS connections, under callgrind" >&2
run durable /readyz serve --data-dir "$WORK/data" --config "$WORK/sale.json"
run ceiling /v1/purchases bench-noop
