#!/usr/bin/env bash
# The shop's view of the node's OpenAPI document (node/openapi.json, checked in; the
# stock-node test `openapi_checked_in` keeps it true to the node):
#   1. lint it with Redocly's recommended rules;
#   2. generate a TypeScript client from it (openapi-typescript types + openapi-fetch);
#   3. type-check a small shop written against that client (src/shop.ts), and run its
#      test (src/shop.test.ts) against a real stock node on loopback, stopped on exit.
# The npm packages (pinned by package-lock.json) are installed once into
# $FLASHSALE_CACHE/ts-client, keyed by the lock file's hash.
set -euo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
ROOT=$(cd ../.. && pwd)
CACHE=${FLASHSALE_CACHE:-$HOME/.cache/flashsale}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
log() { echo "ts-client: $*" >&2; }

lock=$(sha256sum package-lock.json | cut -c1-16)
DEPS=$CACHE/ts-client/$lock
if [ ! -x "$DEPS/node_modules/.bin/tsc" ]; then
  log "npm ci (once per lock file) into $DEPS"
  rm -rf "$DEPS"; mkdir -p "$DEPS"
  cp package.json package-lock.json "$DEPS/"
  (cd "$DEPS" && npm ci --cache "$CACHE/npm-cache" --no-audit --no-fund --loglevel=error >/dev/null)
fi
BIN=$DEPS/node_modules/.bin

work=$(mktemp -d)
node_pid=
cleanup() {
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
  rm -rf -- "$work"
}
trap cleanup EXIT

log "redocly lint node/openapi.json"
"$BIN/redocly" lint --config redocly.yaml "$ROOT/node/openapi.json" >"$work/lint.log" 2>&1 || {
  cat "$work/lint.log" >&2
  exit 1
}
grep -E "valid|warning" "$work/lint.log" | tail -2 | sed 's/^/  /' >&2 || true

log "generate the client types, type-check the shop"
mkdir -p "$work/src"
cp src/shop.ts src/shop.test.ts tsconfig.json "$work/"
mv "$work/shop.ts" "$work/shop.test.ts" "$work/src/"
ln -s "$DEPS/node_modules" "$work/node_modules"
"$BIN/openapi-typescript" "$ROOT/node/openapi.json" -o "$work/src/schema.d.ts" >/dev/null 2>&1
(cd "$work" && "$BIN/tsc" -p tsconfig.json)

log "the shop's test against a stock node on loopback"
if [ -z "${STOCK_NODE_BIN:-}" ]; then (cd "$ROOT" && cargo build -q -p stock-node); fi
NODE=${STOCK_NODE_BIN:-$CARGO_TARGET_DIR/debug/stock-node}
cat >"$work/sale.json" <<'JSON'
{"name": "shop", "items": [{"sku": "tee", "stock": 1000, "perCustomerLimit": 0},
 {"sku": "cap", "stock": 5, "perCustomerLimit": 2}], "reservationTtlMs": 600000}
JSON
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$NODE" serve --listen "127.0.0.1:$port" --data-dir "$work/data" --config "$work/sale.json" >"$work/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
(cd "$work" && NODE_URL="http://127.0.0.1:$port" timeout 60 node --test dist/shop.test.js) || {
  tail -20 "$work/node.log" >&2
  exit 1
}
log "PASS"
