#!/usr/bin/env bash
# Ohno in one minute: a throwaway "host" netns plays the node, two pod netns
# beside it get wired in with ADD, ping each other, and are removed with DEL.
# Everything lives in namespaces this script creates and deletes on exit; the
# machine's own network namespace is never touched. Needs root.
set -euo pipefail

cd "$(dirname "$0")/.."
OHNO=${OHNO:-$PWD/target/release/ohno}
[[ -x $OHNO ]] || { echo "demo: $OHNO not built; run 'make demo'" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "demo: needs root to create network namespaces" >&2; exit 1; }

tag="ohno-demo-$$"
HOST="$tag-h"
PODS=("$tag-a" "$tag-b")
WORK=$(mktemp -d)
created=()

cleanup() {
    local ns
    for ns in "${created[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

netns_add() { ip netns add "$1"; created+=("$1"); ip -n "$1" link set lo up; }

conf() {
    cat <<JSON
{ "cniVersion": "1.1.0", "name": "podnet", "type": "ohno", "bridge": "ohno0", "mtu": 1500,
  "isDefaultGateway": true, "ipMasq": false, "hairpinMode": false, "node": "node-a",
  "logFile": "$WORK/ohno.log", "logLevel": "debug",
  "ipam": { "type": "ohno",
            "pools": [ { "name": "default", "subnet": "10.85.0.0/16", "blockSize": 26 } ],
            "routes": [ { "dst": "0.0.0.0/0" } ],
            "store": { "type": "local", "dataDir": "$WORK/store" } } }
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

declare -A addr
for pod in "${PODS[@]}"; do
    result=$(cni ADD "$pod") || { echo "ADD $pod failed: $result" >&2; exit 1; }
    addr[$pod]=$(jq -r '.ips[0].address' <<<"$result")
    gw=$(jq -r '.ips[0].gateway' <<<"$result")
    echo "==> ADD $pod: ${addr[$pod]} via $gw"
done

echo "==> bridge in the node netns:"
ip -n "$HOST" -br addr show dev ohno0
echo "==> ${PODS[0]} pings ${PODS[1]} (${addr[${PODS[1]}]%/*}):"
ip netns exec "${PODS[0]}" ping -c 3 -W 1 "${addr[${PODS[1]}]%/*}"

for pod in "${PODS[@]}"; do
    cni DEL "$pod" >/dev/null
    echo "==> DEL $pod"
done
echo "==> host veths left: $(ip -n "$HOST" -br link show type veth | wc -l)"
