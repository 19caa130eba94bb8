#!/usr/bin/env bash
# Ohno in one minute: a throwaway "host" netns plays the node, a 3-member
# mutual-TLS etcd cluster (myclusters/local-cluster.sh) runs inside it on
# 127.0.0.1, two pod netns beside it get wired in with ADD, ping each other, and
# are removed with DEL. Everything lives in namespaces and directories this
# script creates and deletes on exit; the machine's own network namespace is
# never touched. Needs root. OHNO_DEMO_STORE=local uses the embedded store instead.
set -euo pipefail

cd "$(dirname "$0")/.."
OHNO=${OHNO:-$PWD/target/release/ohno}
OHNOCTL=${OHNOCTL:-$(dirname "$OHNO")/ohnoctl}
STORE=${OHNO_DEMO_STORE:-etcd}
[[ -x $OHNO ]] || { echo "demo: $OHNO not built; run 'make demo'" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "demo: needs root to create network namespaces" >&2; exit 1; }

tag="ohno-demo-$$"
HOST="$tag-h"
PODS=("$tag-a" "$tag-b")
WORK=$(mktemp -d)
created=()

CLUSTER="$WORK/etcd"
cluster_started=""

cleanup() {
    local ns
    if [[ -n $cluster_started ]]; then
        myclusters/local-cluster.sh stop --dir "$CLUSTER" >/dev/null 2>&1 || true
    fi
    for ns in "${created[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

netns_add() { ip netns add "$1"; created+=("$1"); ip -n "$1" link set lo up; }

store_json() {
    if [[ $STORE == etcd ]]; then
        local eps
        eps=$(sed 's/,/", "/g' <<<"$OHNO_ETCD_ENDPOINTS")
        cat <<JSON
{ "type": "etcd", "endpoints": ["$eps"], "prefix": "/ohno",
  "caFile": "$OHNO_CERT_DIR/ca.pem", "certFile": "$OHNO_CERT_DIR/client.pem",
  "keyFile": "$OHNO_CERT_DIR/client-key.pem", "timeoutMs": 1000, "retries": 3 }
JSON
    else
        echo "{ \"type\": \"local\", \"dataDir\": \"$WORK/store\" }"
    fi
}

conf() {
    cat <<JSON
{ "cniVersion": "1.1.0", "name": "podnet", "type": "ohno", "bridge": "ohno0", "mtu": 1500,
  "isDefaultGateway": true, "ipMasq": false, "hairpinMode": false, "node": "node-a",
  "logFile": "$WORK/ohno.log", "logLevel": "debug",
  "ipam": { "type": "ohno",
            "pools": [ { "name": "default", "subnet": "10.85.0.0/16", "blockSize": 26 } ],
            "routes": [ { "dst": "0.0.0.0/0" } ],
            "lockDir": "$WORK/lock",
            "store": $(store_json) } }
JSON
}

# cni COMMAND POD: runs ohno inside the host netns the way a runtime would.
cni() {
    conf | CNI_COMMAND=$1 CNI_CONTAINERID="ctr-$2" CNI_NETNS="/var/run/netns/$2" \
        CNI_IFNAME=eth0 CNI_PATH="$(dirname "$OHNO")" \
        ip netns exec "$HOST" "$OHNO"
}

echo "==> node netns $HOST, pods ${PODS[*]}"
netns_add "$HOST"
for pod in "${PODS[@]}"; do netns_add "$pod"; done

if [[ $STORE == etcd ]]; then
    echo "==> 3-member mutual-TLS etcd cluster inside $HOST"
    cluster_started=yes
    ip netns exec "$HOST" myclusters/local-cluster.sh start --dir "$CLUSTER" >/dev/null
    # shellcheck disable=SC1091
    source "$CLUSTER/cluster.env"
    echo "    endpoints $OHNO_ETCD_ENDPOINTS"
fi

declare -A addr
for pod in "${PODS[@]}"; do
    result=$(cni ADD "$pod") || { echo "ADD $pod failed: $result" >&2; exit 1; }
    addr[$pod]=$(jq -r '.ips[0].address' <<<"$result")
    gw=$(jq -r '.ips[0].gateway' <<<"$result")
    echo "==> ADD $pod: ${addr[$pod]} via $gw"
done

if [[ $STORE == etcd ]]; then
    # No agent runs in the demo: the first call started an `ohnod on-demand
    # store` server; the second call's store operations went through it (its
    # socket is in lockDir and goes with $WORK, and the server with it).
    echo "==> ohnod on-demand store: $(ls "$WORK/lock" | grep -c '^etcd-.*\.sock$') socket(s) in lockDir;" \
        "$(grep -c 'store: through ' "$WORK/ohno.log") call(s) went through it"
fi

conf >"$WORK/conf.json"
echo "==> ohnoctl ipam ls:"
ip netns exec "$HOST" "$OHNOCTL" ipam ls --config "$WORK/conf.json"
if [[ $STORE == etcd ]]; then
    echo "==> keys in etcd:"
    ip netns exec "$HOST" env ETCDCTL_API=3 etcdctl --endpoints "$OHNO_ETCD_ENDPOINTS" \
        --cacert "$OHNO_CERT_DIR/ca.pem" --cert "$OHNO_CERT_DIR/client.pem" \
        --key "$OHNO_CERT_DIR/client-key.pem" get --prefix /ohno --keys-only | sed '/^$/d; s/^/    /'
fi
echo "==> bridge in the node netns:"
ip -n "$HOST" -br addr show dev ohno0
echo "==> ${PODS[0]} pings ${PODS[1]} (${addr[${PODS[1]}]%/*}):"
ip netns exec "${PODS[0]}" ping -c 3 -W 1 "${addr[${PODS[1]}]%/*}"

for pod in "${PODS[@]}"; do
    cni DEL "$pod" >/dev/null
    echo "==> DEL $pod"
done
# DEL hands the veth deletion (an RCU barrier in the kernel) to a detached reaper.
for _ in $(seq 50); do
    [[ $(ip -n "$HOST" -br link show type veth | wc -l) -eq 0 ]] && break
    sleep 0.05
done
echo "==> host veths left: $(ip -n "$HOST" -br link show type veth | wc -l)"
echo "==> addresses left in the store:"
ip netns exec "$HOST" "$OHNOCTL" ipam ls --config "$WORK/conf.json"
