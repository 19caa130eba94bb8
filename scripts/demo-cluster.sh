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

tag="ohnoc-$$"
UL="$tag-ul"
WORK=$(mktemp -d)
created=()
pids=()

cleanup() {
    local p ns
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for ns in "${created[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

netns_add() { ip netns add "$1"; created+=("$1"); ip -n "$1" link set lo up; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

echo "==> underlay $UL: bridges ul0 (192.0.2.0/24, 2001:db8::/64) and ul1 (198.51.100.0/24, 2001:db8:1::/64), routed"
netns_add "$UL"
for seg in "ul0 192.0.2 2001:db8" "ul1 198.51.100 2001:db8:1"; do
    read -r br v4 v6 <<<"$seg"
    ip -n "$UL" link add "$br" type bridge
    ip -n "$UL" addr add "$v4.1/24" dev "$br"
    ip -n "$UL" addr add "$v6::1/64" dev "$br" nodad
    ip -n "$UL" link set "$br" up
done
in_ns "$UL" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

ETCD=http://192.0.2.1:2379
in_ns "$UL" etcd --name m1 --data-dir "$WORK/etcd" --log-level warn \
    --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster m1=http://127.0.0.1:2380 >"$WORK/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    in_ns "$UL" env ETCDCTL_API=3 etcdctl --endpoints "$ETCD" endpoint health >/dev/null 2>&1 && break
    sleep 0.1
done
echo "==> etcd on $ETCD (in $UL)"

# node NAME HOSTNUM BRIDGE V4PREFIX V6PREFIX
node() {
    local name=$1 n=$2 br=$3 v4=$4 v6=$5 ns="$tag-$1" dir="$WORK/$1"
    mkdir -p "$dir"
    netns_add "$ns"
    ip -n "$UL" link add "u$n" type veth peer name eth0 netns "$ns"
    ip -n "$UL" link set "u$n" master "$br" up
    ip -n "$ns" addr add "$v4.$n/24" dev eth0
    ip -n "$ns" addr add "$v6::$n/64" dev eth0 nodad
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$v4.1"
    ip -n "$ns" -6 route add default via "$v6::1"
    cat >"$dir/net.json" <<JSON
{ "cniVersion": "1.1.0", "name": "podnet", "type": "ohno", "bridge": "ohno0",
  "isDefaultGateway": true, "ipMasq": true, "node": "$name",
  "logFile": "$dir/ohno.log", "logLevel": "info",
  "ipam": { "type": "ohno", "lockDir": "$dir/run",
            "pools": [ { "name": "v4", "subnet": "10.85.0.0/16", "blockSize": 26 },
                       { "name": "v6", "subnet": "fd00:85::/48", "blockSize": 122 } ],
            "store": { "type": "etcd", "endpoints": ["$ETCD"], "prefix": "/ohno" } } }
JSON
    echo "{ \"network\": \"$dir/net.json\", \"backend\": \"auto\", \"logLevel\": \"info\" }" >"$dir/ohnod.json"
    in_ns "$ns" "$BIN/ohnod" run --config "$dir/ohnod.json" 2>"$dir/ohnod.log" &
    pids+=($!)
    echo "==> $name: netns $ns, underlay $v4.$n / $v6::$n, ohnod run (pid $!)"
}
node node-a 10 ul0 192.0.2 2001:db8
node node-b 11 ul0 192.0.2 2001:db8
node node-c 12 ul1 198.51.100 2001:db8:1

declare -A v4addr v6addr
for name in node-a node-b node-c; do
    pod="$tag-pod-${name#node-}"
    netns_add "$pod"
    result=$(CNI_COMMAND=ADD CNI_CONTAINERID="ctr-$pod" CNI_NETNS="/var/run/netns/$pod" \
        CNI_IFNAME=eth0 CNI_PATH="$BIN" in_ns "$tag-$name" "$OHNO" <"$WORK/$name/net.json") || {
        echo "ADD on $name failed: $result" >&2
        exit 1
    }
    v4addr[$name]=$(jq -r '.ips[] | select(.address | contains(".")) | .address' <<<"$result")
    v6addr[$name]=$(jq -r '.ips[] | select(.address | contains(":")) | .address' <<<"$result")
    mtu=$(ip -n "$pod" -j link show eth0 | jq '.[0].mtu')
    echo "==> pod on $name: ${v4addr[$name]} ${v6addr[$name]} (MTU $mtu)"
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
    for a in "${v4addr[$name]%/*}" "${v6addr[$name]%/*}"; do
        echo "==> pod on node-a pings the pod on $name ($a):"
        in_ns "$tag-pod-a" ping -c 2 -W 1 "$a" | sed -n '2,3p;$p' | sed 's/^/    /'
    done
done
echo "==> cleaning up: agents stopped, namespaces and $WORK removed"
