#!/usr/bin/env bash
# What the HTTP benchmarks (bench-node.sh, bench-replication.sh, bench-forward.sh) share:
# set-up of the tools and the node's dist build, a work dir cleaned on exit, nodes started
# and asked, and wrk runs parsed into one results line each. Sourced, not run; the caller sets BENCH (its name for messages),
# CONNS, DURATION_S and LOAD_CPU first.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${FLASHSALE_CACHE:-$HOME/.cache/flashsale}/target}"

# bench_setup tool…: installs the packages, checks the tools, builds the node, makes $WORK,
# and stops every pid in PIDS on exit. Sets BIN.
bench_setup() {
  bash scripts/install-deps.sh
  local tool
  for tool in wrk taskset curl python3 "$@"; do
    command -v "$tool" >/dev/null || { echo "$BENCH: $tool missing" >&2; exit 1; }
  done
  # The node as it ships: the dist profile (release with fat LTO, Cargo.toml).
  cargo build --profile dist -p stock-node
  # shellcheck disable=SC2034 # used by the scripts that source this file
  BIN="$CARGO_TARGET_DIR/dist/stock-node"
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/$BENCH.XXXXXX")"
  PIDS=()
  trap bench_cleanup EXIT
  bench_files
}

bench_cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}

# A free loopback port (the kernel's pick; tiny race, fine for a benchmark).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # url [any]: until it answers 2xx (or anything at all with "any"), up to 30 s
  local code
  for _ in $(seq 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null || true)
    case "$code" in 2??) return 0 ;; 000 | "") ;; *) [ "${2:-}" = any ] && return 0 ;; esac
    sleep 0.1
  done
  echo "$BENCH: $1 did not come up" >&2
  return 1
}

# bench_node CPU NAME ARGS…: `stock-node serve ARGS` on a free port and a fresh data dir
# ($WORK/NAME-data), pinned to CPU, its log in $WORK/NAME.log; sets PORT and PID.
bench_node() {
  local cpu=$1 name=$2
  shift 2
  PORT=$(free_port)
  taskset -c "$cpu" "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/$name-data" \
    "$@" 2>"$WORK/$name.log" &
  PID=$!
  PIDS+=("$PID")
}

admin() { # method port path [json]: a node's admin API (nodes started with --admin-token "$TOKEN")
  curl -fsS -X "$1" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    ${4:+--data "$4"} "http://127.0.0.1:$2$3"
}

# The load (purchases with distinct idempotency keys and customers; the script's
# arguments: an optional per-connection pause in ms, and a key prefix for runs that
# share a node) and a sale with stock never to sell out.
bench_files() {
  cat >"$WORK/purchase.lua" <<'LUA'
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local n = 0
local pause_ms = 0
local prefix = ""
function init(args)
  if args[1] then pause_ms = tonumber(args[1]) end
  -- Runs against the same node need keys of their own (else they replay each other's).
  if args[2] then prefix = args[2] .. "-" end
end
function delay()
  return pause_ms
end
function request()
  n = n + 1
  local key = prefix .. tid .. "-" .. n
  local body = '{"sku":"bench","quantity":1,"customer":"c' .. key .. '","idempotencyKey":"k' .. key .. '"}'
  return wrk.format("POST", "/v1/purchases", { ["Content-Type"] = "application/json" }, body)
end
LUA
  cat >"$WORK/sale.json" <<'JSON'
{"name":"bench","items":[{"sku":"bench","stock":1000000000}],"reservationTtlMs":3600000}
JSON
  : >"$WORK/results"
}

# wrk's latency figure ("1.23ms", "870.00us", "1.02s") in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
    printf "%.3f", n }'
}

# CPU time a process has used, in clock ticks (user + system, all threads).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICKS_PER_S=$(getconf CLK_TCK)

# Time the hypervisor ran something else on the server's core (its steal time, from
# /proc/stat) during a run: on a shared VM the host takes a varying share of a core, and
# a run that lost more of its core is slower and has a longer tail for that alone.
# steal_start before a run, steal_stop NAME after it appends "NAME ms" to $WORK/steal;
# nothing without SERVER_CPU.
steal_ticks() { awk -v c="cpu${SERVER_CPU:-}" '$1 == c { print $9 }' /proc/stat; }
steal_start() { STEAL0=$(steal_ticks); }
steal_stop() {
  [ -n "${SERVER_CPU:-}" ] && [ -n "${STEAL0:-}" ] || return 0
  echo "$1 $(( ($(steal_ticks) - STEAL0) * 1000 / TICKS_PER_S ))" >>"$WORK/steal"
}

# Server CPU microseconds per request: robust to other load on the machine, unlike
# throughput (the server is charged only for the time it ran).
cpu_us_per_req() { # ticks requests
  awk -v t="$1" -v n="$2" -v hz="$TICKS_PER_S" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "-" }'
}

# run_wrk name url conns [server-pid] [pause_ms]: appends "name rps p50 p99 errors cpu_us"
# to $WORK/results (cpu_us is "-" without a server pid).
run_wrk() {
  local name=$1 url=$2 conns=$3 spid=${4:-} pause=${5:-0} out t0=0 t1=0 reqs
  out="$WORK/$name.wrk"
  [ -n "$spid" ] && t0=$(cpu_ticks "$spid")
  perf_start "$name" "$spid"
  steal_start
  taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${DURATION_S}s" --timeout 5s --latency \
    -s "$WORK/purchase.lua" "$url" -- "$pause" >"$out"
  steal_stop "$name"
  perf_stop
  [ -n "$spid" ] && t1=$(cpu_ticks "$spid")
  local rps p50 p99 errs cpu=-
  reqs=$(awk '/requests in/ { print $1 }' "$out")
  [ -n "$spid" ] && cpu=$(cpu_us_per_req $((t1 - t0)) "$reqs")
  rps=$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$out")
  p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
  p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
  errs=$(awk '/Non-2xx/ { n += $NF } /Socket errors/ { for (i = 4; i <= NF; i += 2) n += $i } END { print n + 0 }' "$out")
  echo "$name $rps $p50 $p99 $errs $cpu" >>"$WORK/results"
  echo "  $name: $rps purchases/s, p50 ${p50} ms, p99 ${p99} ms, non-2xx/socket errors $errs, server CPU ${cpu} us/req" >&2
}

# oha (crates.io), built once into the cache: bench-instructions' fixed count of
# requests. Sets OHA.
OHA_VERSION=1.15.0
bench_oha() {
  local root="${FLASHSALE_CACHE:-$HOME/.cache/flashsale}/tools/oha-$OHA_VERSION"
  OHA="$root/bin/oha"
  if [ ! -x "$OHA" ]; then
    command -v cmake >/dev/null || apt-get install -y -qq cmake >/dev/null
    echo "$BENCH: building oha $OHA_VERSION (once, ~7 min)" >&2
    cargo install oha --version "$OHA_VERSION" --locked --root "$root" --target-dir "$WORK/oha-build" >&2
    rm -rf "$WORK/oha-build"
  fi
}

# Resident memory of a process, in KiB.
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# A counter's value in a /metrics dump (0 when absent).
metric() { awk -v m="$2" '$1 == m { v = $2 } END { printf "%d", v + 0 }' "$1"; }

# perf_start name pid / perf_stop: the server's CPU profile during run `name` when
# PROFILE_RUN names it (a comma-separated list: PROFILE_RUN=durable,ceiling): the call
# graphs (`perf report --no-children --sort symbol`) into profile-<name>.txt (or
# PROFILE_OUT, for one run), and a flat profile by library and symbol into
# profile-<name>.flat.txt (what scripts/lib/profile-diff.py compares).
perf_start() {
  PERF=
  case ",${PROFILE_RUN:-}," in
    *",$1,"*) [ -n "${2:-}" ] || return 0 ;;
    *) return 0 ;;
  esac
  perf record -q -F 499 -g -p "$2" -o "$WORK/perf-$1.data" 2>/dev/null &
  PERF=$!
  PERF_NAME=$1
}
perf_stop() {
  [ -n "${PERF:-}" ] || return 0
  kill -INT "$PERF"
  wait "$PERF" || true
  local out=${PROFILE_OUT:-profile-$PERF_NAME.txt}
  perf report -i "$WORK/perf-$PERF_NAME.data" --no-children --sort symbol --percent-limit 0.5 --stdio 2>/dev/null \
    | grep -v '^$' >"$out"
  perf report -i "$WORK/perf-$PERF_NAME.data" --no-children --sort dso,symbol -g none --stdio 2>/dev/null \
    | grep -v '^#' | grep -v '^$' >"${out%.txt}.flat.txt"
  echo "  the server's CPU profile during $PERF_NAME: $out, ${out%.txt}.flat.txt" >&2
  PERF=
}

# The open-loop load generator (testbed/openloop, this workspace's): built with the
# node. Sets OPENLOOP.
bench_openloop() {
  cargo build --release -p openloop
  OPENLOOP="$CARGO_TARGET_DIR/release/openloop"
}

# run_openloop name url rate [server-pid]: openloop at a fixed rate for $DURATION_S s on
# $CONNS connections, each request timed from when the schedule said to send it; appends
# "name rps p50 p99 errors cpu_us p99.9" to $WORK/results. Every request is a purchase
# with its own key (customer c<name>-<i>, key k<name>-<i>): none is a replay.
run_openloop() {
  local name=$1 url=$2 rate=$3 spid=${4:-} t0=0 t1=0 out
  out="$WORK/$name.openloop.json"
  [ -n "$spid" ] && t0=$(cpu_ticks "$spid")
  perf_start "$name" "$spid"
  steal_start
  taskset -c "$LOAD_CPU" "$OPENLOOP" --url "$url/v1/purchases" --rate "$rate" --duration-s "$DURATION_S" \
    --connections "$CONNS" --prefix "$name" --window-ms 1000 >"$out"
  steal_stop "$name"
  perf_stop
  [ -n "$spid" ] && t1=$(cpu_ticks "$spid")
  python3 - "$out" "$name" "$spid" "$((t1 - t0))" "$TICKS_PER_S" >>"$WORK/results" <<'PY'
import json, sys
out, name, spid, ticks, hz = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
r = json.load(open(out))
errs = r["scheduled"] - r["statuses"].get("201", 0)
p = r["latencyMs"]
ms = lambda k: "%.3f" % p[k] if p.get(k) is not None else "-"
cpu = "%.1f" % (ticks * 1e6 / hz / r["answered"]) if spid and r["answered"] else "-"
print(name, int(r["answeredPerS"]), ms("p50"), ms("p99"), errs, cpu, ms("p99.9"))
PY
  echo "  $name (asked $rate/s): $(tail -1 "$WORK/results")" >&2
}
