#!/usr/bin/env bash
# The local Kubernetes cluster of flashsale (test/dev only): the real etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler, plus the project's pod
# runner standing in for the kubelet. Everything of a cluster lives in
# $FLASHSALE_CACHE/clusters/<name>/ and is named with the `fs` prefix and the
# cluster's index N, so `down` finds it all again, even after a crash.
#
#   testbed/cluster.sh up     [--name dev]    start (or say it is up), print the env
#   testbed/cluster.sh down   [--name dev] [--keep-data]
#   testbed/cluster.sh status [--name dev]
#   testbed/cluster.sh env    [--name dev]    print the exports for kubectl/helm
#   testbed/cluster.sh fault  [--name dev] {kill|freeze|thaw|cut|restore|hold|release} NS/POD [--container C]
#   testbed/cluster.sh logs   [--name dev] NS/POD   where a pod's logs are, and their tail
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FLASHSALE_CACHE:-$HOME/.cache/flashsale}
export FLASHSALE_CACHE=$CACHE
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
CLUSTERS=$CACHE/clusters
INDEX_MAX=200
READY_TIMEOUT_S=${FLASHSALE_READY_TIMEOUT_S:-120}
STOP_GRACE_S=10

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }

# The cargo profile of the cluster's own binaries (the pod runner, and the stock-node
# and operator images): `release` by default (make demo, a developer's cluster), `dev`
# for make test (FLASHSALE_PROFILE=dev: the debug build `cargo test` makes anyway, so a
# cold run does not compile every crate a second time, optimised). A running cluster
# keeps the profile it was started with (recorded in cluster.env).
set_profile() {
  PROFILE=$1
  case $PROFILE in
    release) FLASHSALE_BIN_DIR=$CARGO_TARGET_DIR/release ;;
    dev) FLASHSALE_BIN_DIR=$CARGO_TARGET_DIR/debug ;;
    *) die "FLASHSALE_PROFILE must be release or dev, not '$PROFILE'" ;;
  esac
  export FLASHSALE_PROFILE=$PROFILE FLASHSALE_BIN_DIR
}
REQUESTED_PROFILE=${FLASHSALE_PROFILE:-release}
set_profile "$REQUESTED_PROFILE"

usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# ---------------------------------------------------------------- arguments
[ $# -ge 1 ] || usage
CMD=$1; shift
NAME=${FLASHSALE_CLUSTER:-dev}
KEEP_DATA=false
REST=()
while [ $# -gt 0 ]; do
  case $1 in
    --name) NAME=${2:?--name needs a value}; shift 2 ;;
    --name=*) NAME=${1#--name=}; shift ;;
    --keep-data) KEEP_DATA=true; shift ;;
    -h|--help) usage ;;
    *) REST+=("$1"); shift ;;
  esac
done
[[ $NAME =~ ^[a-z0-9][a-z0-9-]{0,30}$ ]] || die "bad cluster name '$NAME' (a-z, 0-9, -; at most 31)"
DIR=$CLUSTERS/$NAME

# ---------------------------------------------------------------- helpers
# Names derived from the index N; every one starts with fs/FS + N.
derive() {
  N=$1
  BRIDGE=fsbr$N
  HOST_IP=10.213.$N.1
  POD_CIDR=10.213.$N.0/24
  SERVICE_CIDR=10.214.$N.0/24
  FIRST_SERVICE_IP=10.214.$N.1
  NODE_NAME=fs$N-node
  CHAIN_PREFIX=FS$N-
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The first index no cluster dir records and no leftover bridge uses.
alloc_index() {
  local n f used
  for ((n = 1; n <= INDEX_MAX; n++)); do
    used=false
    for f in "$CLUSTERS"/*/index; do
      [ -f "$f" ] && [ "$(cat "$f")" = "$n" ] && used=true
    done
    ip link show "fsbr$n" >/dev/null 2>&1 && used=true
    $used || { echo "$n"; return 0; }
  done
  die "all $INDEX_MAX cluster indexes are in use"
}

tools_bin() {
  # scripts/build-tools.sh prints the bin dir last; it builds only what is missing.
  bash "$ROOT/scripts/build-tools.sh" | tail -n1
}

# A pid is ours only if its command line names this cluster's dir: pid files can
# outlive their process (crash, reboot) and the pid be reused by someone else.
ours() {
  local c
  c=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") || return 1
  [[ $c == *"$DIR/"* ]]
}

alive() { [ -f "$DIR/pids/$1.pid" ] && ours "$(cat "$DIR/pids/$1.pid")"; }

# start NAME CMD...: own process group (setsid), output to logs/NAME.log.
start() {
  local name=$1; shift
  setsid "$@" >>"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name.pid"
}

kc() { "$BIN/kubectl" --kubeconfig "$DIR/admin.kubeconfig" --request-timeout=5s "$@"; }

# wait_for WHAT CMD...: retry CMD every 0.2 s until it succeeds or READY_TIMEOUT_S.
wait_for() {
  local what=$1; shift
  local deadline=$((SECONDS + READY_TIMEOUT_S)) t0=${EPOCHREALTIME/./}
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "timed out after ${READY_TIMEOUT_S}s waiting for $what; last lines of the logs:"
      tail -n 5 "$DIR"/logs/*.log >&2 || true
      die "up failed; inspect $DIR/logs, then: $0 down --name $NAME"
    fi
    sleep 0.2
  done
  local ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
  log "$what after $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s"
}

write_kubeconfig() { # FILE USER
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $NAME
  cluster:
    server: https://$HOST_IP:$APISERVER_PORT
    certificate-authority: $DIR/pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $DIR/pki/$2.crt
    client-key: $DIR/pki/$2.key
contexts:
- name: $NAME
  context: {cluster: $NAME, user: $2}
current-context: $NAME
EOF
}

load_env() {
  [ -f "$DIR/cluster.env" ] || return 1
  # shellcheck disable=SC1091
  . "$DIR/cluster.env"
  derive "$INDEX"
  set_profile "${PROFILE:-release}"
}

print_env() {
  echo "export KUBECONFIG=$DIR/admin.kubeconfig"
  echo "export PATH=$BIN:\$PATH"
  echo "export FLASHSALE_CLUSTER=$NAME"
  echo "export FLASHSALE_PROFILE=$FLASHSALE_PROFILE"
  echo "export FLASHSALE_BIN_DIR=$FLASHSALE_BIN_DIR"
}

# ---------------------------------------------------------------- network
net_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$HOST_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Un-proxied service traffic goes to the bridge and dies there, never off the machine.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE"
  sysctl -qw net.ipv4.ip_forward=1
  # Without this the host tells pods to bypass it for DNATed hairpin traffic.
  sysctl -qw "net.ipv4.conf.$BRIDGE.send_redirects=0"
  # Pods may talk to each other and to the host, never through the host to anywhere else.
  local chain=${CHAIN_PREFIX}FORWARD
  iptables -N "$chain" 2>/dev/null || iptables -F "$chain"
  iptables -A "$chain" -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  iptables -A "$chain" -i "$BRIDGE" -j DROP
  iptables -A "$chain" -o "$BRIDGE" -j DROP
  iptables -C FORWARD -j "$chain" 2>/dev/null || iptables -I FORWARD -j "$chain"
}

# Deletes every iptables rule jumping to an FS<N>- chain, then the chains.
iptables_clean() {
  local t rule chain save
  for t in nat filter mangle raw; do
    save=$(iptables-save -t "$t" 2>/dev/null || true)
    while read -r rule; do
      [ -n "$rule" ] && { eval "iptables -t $t -D ${rule#-A }" || true; }
    done < <(grep -E "^-A .* -j ${CHAIN_PREFIX}" <<<"$save" | grep -vE "^-A ${CHAIN_PREFIX}" || true)
    for chain in $(grep -oE "^:${CHAIN_PREFIX}[^ ]+" <<<"$save" | cut -c2- || true); do
      iptables -t "$t" -F "$chain" 2>/dev/null || true
    done
    for chain in $(grep -oE "^:${CHAIN_PREFIX}[^ ]+" <<<"$save" | cut -c2- || true); do
      iptables -t "$t" -X "$chain" 2>/dev/null || true
    done
  done
}

net_down() {
  local ns link
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^fs$N-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
  done
  for link in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link delete "$link" 2>/dev/null || true
  done
  ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null || true
  ip link delete "$BRIDGE" 2>/dev/null || true
  iptables_clean
}

# Unmounts everything mounted under the cluster dir, deepest first.
mounts_down() {
  local m
  awk -v d="$DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while IFS= read -r m; do umount -l "$m" 2>/dev/null || true; done
}

# ---------------------------------------------------------------- processes
# Stops every process of the cluster: pid files first (whole process groups, TERM then
# KILL), then anything else whose command line still names the cluster dir.
procs_down() {
  local f pid name pids=() names=() i
  for name in pod-runner kube-scheduler kube-controller-manager kube-apiserver etcd; do
    f=$DIR/pids/$name.pid
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if ours "$pid"; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      names+=("$name")
    fi
  done
  local deadline=$((SECONDS + STOP_GRACE_S))
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    while ours "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if ours "$pid"; then
      log "${names[$i]} did not stop within ${STOP_GRACE_S}s of SIGTERM: SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for f in /proc/[0-9]*; do
    pid=${f#/proc/}
    [ "$pid" = "$$" ] && continue
    if ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  rm -f "$DIR"/pids/*.pid
}

runner_cleanup() {
  local runner=$FLASHSALE_BIN_DIR/pod-runner
  if [ -x "$runner" ] && [ -d "$DIR/runner" ]; then
    "$runner" cleanup --state-dir "$DIR/runner" --cluster-index "$N" >>"$DIR/logs/cleanup.log" 2>&1 ||
      log "pod-runner cleanup failed (see $DIR/logs/cleanup.log); removing what is left by name"
  fi
}

teardown() { # stop everything, keep the dir
  procs_down
  runner_cleanup
  mounts_down
  net_down
}

# ---------------------------------------------------------------- up
build_binaries() {
  [ "${FLASHSALE_SKIP_BUILD:-0}" = 1 ] && return 0
  log "cargo build --profile $PROFILE -p pod-runner"
  cargo build --profile "$PROFILE" -q -p pod-runner --manifest-path "$ROOT/Cargo.toml"
  # The images the runner maps: best effort, a broken crate elsewhere must not stop the cluster.
  local p
  for p in stock-node flashsale-operator; do
    cargo build --profile "$PROFILE" -q -p "$p" --manifest-path "$ROOT/Cargo.toml" ||
      log "warning: $p did not build; pods with its image will fail to start"
  done
}

cmd_up() {
  local t0=$SECONDS
  mkdir -p "$CLUSTERS"
  if load_env 2>/dev/null && alive kube-apiserver && alive pod-runner &&
    kc get --raw /readyz >/dev/null 2>&1; then
    log "cluster '$NAME' is already up (index $N)"
    print_env
    return 0
  fi
  BIN=$(tools_bin)
  [ -x "$BIN/kube-apiserver" ] || die "tools missing in $BIN"
  set_profile "$REQUESTED_PROFILE"
  build_binaries

  exec 9>"$CLUSTERS/.lock"
  flock 9
  if load_env 2>/dev/null; then
    log "restarting cluster '$NAME' (index $N) on its existing data"
    teardown
  else
    mkdir -p "$DIR"
    INDEX=$(alloc_index)
    derive "$INDEX"
    echo "$INDEX" >"$DIR/index"
    {
      echo "NAME=$NAME"
      echo "INDEX=$INDEX"
      echo "ETCD_CLIENT_PORT=$(free_port)"
      echo "ETCD_PEER_PORT=$(free_port)"
      echo "APISERVER_PORT=$(free_port)"
      echo "KUBELET_PORT=$(free_port)"
    } >"$DIR/cluster.env"
    load_env
  fi
  flock -u 9
  exec 9>&- # or every component started below would hold the lock file open
  set_profile "$REQUESTED_PROFILE"
  sed -i '/^BIN=/d; /^PROFILE=/d' "$DIR/cluster.env"
  echo "BIN=$BIN" >>"$DIR/cluster.env"
  echo "PROFILE=$PROFILE" >>"$DIR/cluster.env"
  mkdir -p "$DIR/pki" "$DIR/logs" "$DIR/pids" "$DIR/etcd" "$DIR/runner"
  bash "$ROOT/testbed/pki.sh" "$DIR/pki" "$HOST_IP" "$FIRST_SERVICE_IP" "$NODE_NAME"
  local u
  for u in admin controller-manager scheduler; do write_kubeconfig "$DIR/$u.kubeconfig" "$u"; done
  net_up

  log "starting etcd, kube-apiserver (https://$HOST_IP:$APISERVER_PORT)"
  start etcd "$BIN/etcd" --name default --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --quota-backend-bytes=2147483648 --log-level=warn
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address "$HOST_IP" --advertise-address "$HOST_IP" --secure-port "$APISERVER_PORT" \
    --tls-cert-file "$DIR/pki/apiserver.crt" --tls-private-key-file "$DIR/pki/apiserver.key" \
    --client-ca-file "$DIR/pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$DIR/pki/sa.pub" \
    --service-account-signing-key-file "$DIR/pki/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC \
    --endpoint-reconciler-type none \
    --allow-privileged=true \
    --kubelet-client-certificate "$DIR/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$DIR/pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --profiling=false
  wait_for "etcd" curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health"
  wait_for "kube-apiserver /readyz" kc get --raw /readyz

  log "starting kube-controller-manager, kube-scheduler, pod-runner"
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$DIR/controller-manager.kubeconfig" \
    --leader-elect=false --secure-port=0 \
    --use-service-account-credentials \
    --root-ca-file "$DIR/pki/ca.crt" \
    --service-account-private-key-file "$DIR/pki/sa.key" \
    --cluster-signing-cert-file "$DIR/pki/ca.crt" \
    --cluster-signing-key-file "$DIR/pki/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --profiling=false
  start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$DIR/scheduler.kubeconfig" \
    --leader-elect=false --secure-port=0 --profiling=false
  PATH="$BIN:$PATH" KUBECTL_BIN="$BIN/kubectl" \
    start pod-runner "$FLASHSALE_BIN_DIR/pod-runner" run \
    --kubeconfig "$DIR/admin.kubeconfig" \
    --node-name "$NODE_NAME" \
    --state-dir "$DIR/runner" \
    --images "$ROOT/testbed/images.yaml" \
    --bridge "$BRIDGE" --pod-cidr "$POD_CIDR" --gateway "$HOST_IP" \
    --service-cidr "$SERVICE_CIDR" \
    --api-server "https://$HOST_IP:$APISERVER_PORT" \
    --ca-file "$DIR/pki/ca.crt" \
    --kubelet-port "$KUBELET_PORT"

  wait_for "node $NODE_NAME Ready" node_ready
  wait_for "ServiceAccount default/default" kc -n default get serviceaccount default
  log "cluster '$NAME' is up in $((SECONDS - t0)) s (index $N, dir $DIR)"
  print_env
}

node_ready() {
  [ "$(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

# ---------------------------------------------------------------- down, status, ...
cmd_down() {
  if ! load_env 2>/dev/null; then
    if [ -d "$DIR" ] && [ -f "$DIR/index" ]; then
      derive "$(cat "$DIR/index")" # crashed before cluster.env was complete
    else
      log "no cluster '$NAME' (nothing in $DIR)"
      [ -d "$DIR" ] && rm -rf -- "$DIR"
      return 0
    fi
  fi
  log "stopping cluster '$NAME' (index $N)"
  teardown
  if $KEEP_DATA; then
    log "kept $DIR"
  else
    case $DIR in "$CLUSTERS"/?*) rm -rf -- "$DIR" ;; esac
  fi
  log "cluster '$NAME' is down"
}

cmd_status() {
  load_env 2>/dev/null || { echo "cluster '$NAME': not created"; return 1; }
  echo "cluster '$NAME': index $N, dir $DIR, api https://$HOST_IP:$APISERVER_PORT"
  local c rc=0 pid
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler pod-runner; do
    if alive "$c"; then
      pid=$(cat "$DIR/pids/$c.pid")
      printf '  %-24s running  pid %-8s rss %s KiB\n' "$c" "$pid" "$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")"
    else
      printf '  %-24s stopped\n' "$c"; rc=1
    fi
  done
  if [ $rc = 0 ] && node_ready; then echo "  node $NODE_NAME Ready"; else echo "  node $NODE_NAME not Ready"; rc=1; fi
  return $rc
}

cmd_env() { load_env || die "no cluster '$NAME'"; print_env; }

cmd_fault() {
  load_env || die "no cluster '$NAME'"
  exec "$FLASHSALE_BIN_DIR/pod-runner" fault --state-dir "$DIR/runner" "${REST[@]}"
}

cmd_logs() {
  load_env || die "no cluster '$NAME'"
  local target=${REST[0]:?usage: logs NS/POD}
  local ns=${target%%/*} pod=${target#*/} f found=false
  while IFS= read -r f; do
    found=true
    echo "==> $f <=="
    tail -n "${LOG_LINES:-50}" "$f"
  done < <(find "$DIR/runner/logs" -type f -name "${ns}_${pod}_*.log" 2>/dev/null | sort)
  $found || die "no logs for $target under $DIR/runner"
}

case $CMD in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  fault) cmd_fault ;;
  logs) cmd_logs ;;
  *) usage ;;
esac
