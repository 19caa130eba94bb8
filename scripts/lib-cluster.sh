# Sourced by demo-cluster.sh and bench-cross-node.sh: a cluster of namespaces —
# an underlay with two bridges and a router, one etcd member on the router,
# nodes on the segments with `ohnod run` each — and its clean-up on exit.
# Needs OHNO and BIN set, root, and etcd, iproute2, jq.

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

say() { [[ -n ${QUIET:-} ]] || echo "$@"; }
netns_add() { ip netns add "$1"; created+=("$1"); ip -n "$1" link set lo up; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

say "==> underlay $UL: bridges ul0 (192.0.2.0/24, 2001:db8::/64) and ul1 (198.51.100.0/24, 2001:db8:1::/64), routed"
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
say "==> etcd on $ETCD (in $UL)"

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
    echo "{ \"network\": \"$dir/net.json\", \"backend\": \"${BACKEND:-auto}\", \"logLevel\": \"info\" }" >"$dir/ohnod.json"
    in_ns "$ns" "$BIN/ohnod" run --config "$dir/ohnod.json" 2>"$dir/ohnod.log" &
    pids+=($!)
    say "==> $name: netns $ns, underlay $v4.$n / $v6::$n, ohnod run (pid $!)"
}

# add_pod NODE POD: a pod netns POD wired by the plugin on NODE; its
# addresses in v4addr[POD] and v6addr[POD].
declare -A v4addr v6addr
add_pod() {
    local name=$1 pod=$2 result
    netns_add "$pod"
    result=$(CNI_COMMAND=ADD CNI_CONTAINERID="ctr-$pod" CNI_NETNS="/var/run/netns/$pod" \
        CNI_IFNAME=eth0 CNI_PATH="$BIN" in_ns "$tag-$name" "$OHNO" <"$WORK/$name/net.json") || {
        echo "ADD on $name failed: $result" >&2
        exit 1
    }
    v4addr[$pod]=$(jq -r '.ips[] | select(.address | contains(".")) | .address' <<<"$result")
    v6addr[$pod]=$(jq -r '.ips[] | select(.address | contains(":")) | .address' <<<"$result")
}
