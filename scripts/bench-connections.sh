#!/usr/bin/env bash
# What a crowd that opens connections costs the node (`make bench-connections`): the
# node's CPU time per new connection when it is at `--connections-max` with every
# connection idle (each newcomer closes the one idle the longest), against the same
# below the limit (no room to make). ROUNDS (default 3) alternating pairs, each on a
# fresh node pinned to CPU 1, the crowd (scripts/lib/conn-flood.py) on CPU 0.
# LIMIT (default 4096, the node's default) connections held, NEW (default 20000)
# opened one at a time. NODE_BIN measures another build of stock-node.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-3}"
LIMIT="${LIMIT:-4096}"
NEW="${NEW:-20000}"
CONNS=0
DURATION_S=0
LOAD_CPU=0
BENCH=bench-connections
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
# The crowd holds LIMIT connections open at once, and the node as many.
if [ "$(ulimit -n)" -lt $((LIMIT + 256)) ]; then
  ulimit -n $((LIMIT + 256)) 2>/dev/null || {
    echo "$BENCH: open files limit $(ulimit -n) is under LIMIT + 256" >&2
    exit 1
  }
fi
bench_setup
BIN="${NODE_BIN:-$BIN}"

flood() { # name max at-limit
  bench_node 1 "$1-$round" --connections-max "$2" --idle-timeout-ms 600000
  wait_http "http://127.0.0.1:$PORT/healthz"
  taskset -c "$LOAD_CPU" python3 scripts/lib/conn-flood.py "$PORT" "$PID" "$LIMIT" "$NEW" "$3" "$1"
  kill "$PID"
  wait "$PID" 2>/dev/null || true
}

echo "$BENCH: $(basename "$BIN"), $ROUNDS rounds, $LIMIT connections held, $NEW new ones"
for round in $(seq "$ROUNDS"); do
  flood at-limit "$LIMIT" 1
  flood below $((LIMIT * 8)) 0
done
