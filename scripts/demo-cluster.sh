#!/usr/bin/env bash
# Ohno across nodes: an "underlay" netns is the network (two bridges with a
# router between them), three node netns sit on it — node-a and node-b on
# 192.0.2.0/24, node-c behind the router on 198.51.100.0/24 — one etcd
# member listens on the router, one `ohnod run` per node routes every node's
# blocks (backend auto: host-gw to node-b, vxlan to node-c), the plugin puts
# a pod on each node, and the pod on node-a pings the others. Then the routes
# each agent installed, the node records, and clean-up. Everything lives in
# namespaces and directories this script creates and deletes on exit. Root.
set -euo pipefail

cd "$(dirname "$0")/.."
OHNO=${OHNO:-$PWD/target/release/ohno}
BIN=$(dirname "$OHNO")
[[ -x $OHNO && -x $BIN/ohnod && -x $BIN/ohnoctl ]] || {
    echo "demo-cluster: binaries not built; run 'make demo'" >&2
    exit 1
}
[[ $(id -u) -eq 0 ]] || { echo "demo-cluster: needs root" >&2; exit 1; }

# shellcheck source=scripts/lib-cluster.sh
source scripts/lib-cluster.sh
node node-a 10 ul0 192.0.2 2001:db8
node node-b 11 ul0 192.0.2 2001:db8
node node-c 12 ul1 198.51.100 2001:db8:1

for name in node-a node-b node-c; do
    add_pod "$name" "$tag-pod-${name#node-}"
    mtu=$(ip -n "$tag-pod-${name#node-}" -j link show eth0 | jq '.[0].mtu')
    echo "==> pod on $name: ${v4addr[$tag-pod-${name#node-}]} ${v6addr[$tag-pod-${name#node-}]} (MTU $mtu)"
done

# Until node-a has a route to the others' v4 blocks (the agents converge
# in milliseconds; the loop only covers a slow start).
for _ in $(seq 100); do
    [[ $(ip -n "$tag-node-a" -4 route show proto 111 | grep -vc blackhole) -ge 2 ]] && break
    sleep 0.05
done

for name in node-a node-b node-c; do
    echo "==> routes $name's agent installed (ip route show proto 111):"
    { ip -n "$tag-$name" -4 route show proto 111; ip -n "$tag-$name" -6 route show proto 111; } | sed 's/^/    /'
done
echo "==> node-a's vxlan device ohno.vx: FDB and neighbour entries (node-c only; node-b is host-gw)"
ip -n "$tag-node-a" -d link show ohno.vx | sed -n '1,3p' | sed 's/^/    /'
bridge -n "$tag-node-a" fdb show dev ohno.vx | sed 's/^/    fdb /'
ip -n "$tag-node-a" -6 neigh show dev ohno.vx | sed 's/^/    neigh /'
echo "==> ohnoctl node ls:"
in_ns "$tag-node-a" "$BIN/ohnoctl" node ls --config "$WORK/node-a/net.json" | sed 's/^/    /'

for name in node-b node-c; do
    pod="$tag-pod-${name#node-}"
    for a in "${v4addr[$pod]%/*}" "${v6addr[$pod]%/*}"; do
        echo "==> pod on node-a pings the pod on $name ($a):"
        in_ns "$tag-pod-a" ping -c 2 -W 1 "$a" | sed -n '2,3p;$p' | sed 's/^/    /'
    done
done
echo "==> cleaning up: agents stopped, namespaces and $WORK removed"
