#!/usr/bin/env bash
# The node's instructions per request (`make bench-instructions`): a count that does not
# drift with the machine's speed, so a change of a few percent on the HTTP path shows
# where `make bench-node` (±30% between runs on a shared VM) cannot see it.
#
# Runs the node (`serve`, group commit) and then the no-op ceiling (`bench-noop`) under
# valgrind's callgrind, sends WARMUP purchases (default 2000), zeroes the counters, sends
# N more (default 5000; 64 connections, closed loop, oha), and prints the
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
if ! command -v valgrind >/dev/null; then
  echo "$BENCH: apt-get install valgrind" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq valgrind >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
fi
bench_setup callgrind_control
bench_oha
# NODE_BIN=<a stock-node binary>: count another build (a copy kept from before a change).
BIN="${NODE_BIN:-$BIN}"

# oha draws each body at random from the file (with replacement), so the file holds
# 100 × as many distinct purchases as are sent: under 1% of the requests repeat a key
# (an idempotent replay, cheaper than a purchase); the durable run says how many did.
python3 - $((100 * (WARMUP + N))) >"$WORK/bodies" <<'PY'
import sys
w = sys.stdout.write
for i in range(int(sys.argv[1])):
    w('{"sku":"bench","quantity":1,"customer":"c-%d","idempotencyKey":"k-%d"}\n' % (i, i))
PY

send() { # url count: closed loop, every answer must be a 201
  local out
  out=$("$OHA" -n "$2" -c "$CONNS" --no-tui --output-format json -m POST -T application/json \
    -Z "$WORK/bodies" -t 60s "$1")
  echo "$out" | python3 -c '
import json, sys
r = json.load(sys.stdin)
codes = r.get("statusCodeDistribution", {})
if set(codes) != {"201"}:
    sys.exit("answers other than 201: %s" % codes)'
}

cg_control() { # callgrind_control args…: it exits 0 even when it reached no run
  local out
  out=$(callgrind_control "$@" 2>&1)
  case $out in *Error*) echo "$BENCH: callgrind_control $*: $out" >&2; return 1 ;; esac
}

records() { # port: WAL records written so far (outside the counted window)
  curl -fsS "http://127.0.0.1:$1/metrics" | awk '$1 == "flashsale_engine_records_total" { print $2 }'
}

run() { # name ready-path args…: one server under callgrind
  local name=$1 ready=$2 port pid total=0 f ir thread before=""
  shift 2
  port=$(free_port)
  mkdir -p "$OUT/$name"
  rm -f "$OUT/$name"/cg.out*
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$name/cg.out" --separate-threads=yes \
    "$BIN" "$@" --listen "127.0.0.1:$port" 2>"$OUT/$name/valgrind.log" &
  pid=$!
  PIDS+=("$pid")
  # The node is up when /readyz answers 200; the no-op has no such route: any answer.
  for _ in $(seq 600); do
    if [ "$ready" = /readyz ]; then
      curl -fs -o /dev/null "http://127.0.0.1:$port$ready" && break
    else
      curl -s -o /dev/null "http://127.0.0.1:$port$ready" && break
    fi
    sleep 0.2
  done
  send "http://127.0.0.1:$port/v1/purchases" "$WARMUP"
  [ "$ready" = /readyz ] && before=$(records "$port")
  cg_control -z "$pid"
  send "http://127.0.0.1:$port/v1/purchases" "$N"
  cg_control -d "$pid"
  [ -n "$before" ] && echo "  $name: $(( $(records "$port") - before )) of the $N requests wrote a purchase (the rest were replays)"
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # The dump after the counted requests is part 1 of each thread's file (the one at
  # exit has no part number).
  for f in "$OUT/$name"/cg.out.1-*; do
    [ -f "$f" ] || { echo "$BENCH: no callgrind dump in $OUT/$name (see valgrind.log there)" >&2; exit 1; }
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
