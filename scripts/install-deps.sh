#!/usr/bin/env bash
# Installs the Debian packages the project's scripts and tests use (idempotent).
set -euo pipefail
pkgs=(redis-server wrk iproute2 iptables procps util-linux curl jq openssl python3 python3-venv python3-yaml)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# redis-server from apt starts a system service; the project starts its own.
systemctl disable --now redis-server >/dev/null 2>&1 || service redis-server stop >/dev/null 2>&1 || true
