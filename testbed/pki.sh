#!/usr/bin/env bash
# Generates the PKI of one local cluster with openssl: a CA, the API server's serving
# certificate, client certificates for the admin, the controller manager, the
# scheduler and the API server's calls to the pod runner's kubelet endpoint, a
# serving certificate for that endpoint, and the service-account key pair.
# Idempotent: files that exist are kept, so a restarted cluster keeps its identity.
#
#   testbed/pki.sh DIR BRIDGE_IP SERVICE_IP NODE_NAME
set -euo pipefail

if [ $# -ne 4 ]; then
  echo "usage: $0 DIR BRIDGE_IP FIRST_SERVICE_IP NODE_NAME" >&2
  exit 2
fi
dir=$1 bridge_ip=$2 service_ip=$3 node=$4
days=3650
mkdir -p "$dir"
cd "$dir"
umask 077

# EC keys: generated in milliseconds, and every Go component accepts them.
key() { [ -f "$1.key" ] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }

# sign NAME SUBJECT EXT: a certificate for NAME.key signed by the CA.
sign() {
  local name=$1 subject=$2 ext=$3
  [ -f "$name.crt" ] && return 0
  key "$name"
  openssl req -new -key "$name.key" -subj "$subject" -out "$name.csr" 2>/dev/null
  printf '%s\n' "$ext" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days "$days" -sha256 -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

client_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

if [ ! -f ca.crt ]; then
  key ca
  openssl req -x509 -new -key ca.key -subj "/CN=flashsale-local-ca" -days "$days" -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out ca.crt 2>/dev/null
fi

sign apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$bridge_ip,IP:127.0.0.1,IP:$service_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"

sign admin "/O=system:masters/CN=flashsale-admin" "$client_ext"
sign controller-manager "/CN=system:kube-controller-manager" "$client_ext"
sign scheduler "/CN=system:kube-scheduler" "$client_ext"
# The API server calls the pod runner's log endpoint (kubectl logs) with this one.
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client_ext"
# For a pod runner that serves the kubelet endpoint over TLS with a CA-signed cert.
sign kubelet "/O=system:nodes/CN=system:node:$node" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:$bridge_ip,IP:127.0.0.1,DNS:$node,DNS:localhost"

# Service-account tokens: RSA, the algorithm every client library verifies.
if [ ! -f sa.key ]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
  openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
fi
rm -f ca.srl
