#!/usr/bin/env bash
# Cross-node bench (part of `make bench`): the simulated cluster of
# scripts/lib-cluster.sh with the release binaries; writes
# target/bench/cross-node.md.
#  1. Convergence: a block claim written to etcd for node-b (as an ADD on
#     node-b would), from the moment etcdctl returns (the write committed)
#     until node-a's kernel holds the route, and the same for its deletion;
#     N rounds, p50 and max, polled every ~1-2 ms.
#  2. Pod to pod, one iperf3 TCP stream for 3 s and 20 pings: on one node,
#     host-gw (node-a → node-b, one segment) and vxlan (node-a → node-c,
#     through the router); median of 3 interleaved rounds.
set -euo pipefail

cd "$(dirname "$0")/.."
OHNO=${OHNO:-$PWD/target/release/ohno}
BIN=$(dirname "$OHNO")
ROUNDS=${OHNO_BENCH_CONVERGE:-20}
[[ -x $OHNO && -x $BIN/ohnod ]] || { echo "bench-cross-node: build the release binaries first" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "bench-cross-node: needs root" >&2; exit 1; }
QUIET=1
# shellcheck source=scripts/lib-cluster.sh
source scripts/lib-cluster.sh
node node-a 10 ul0 192.0.2 2001:db8
node node-b 11 ul0 192.0.2 2001:db8
node node-c 12 ul1 198.51.100 2001:db8:1
add_pod node-a "$tag-a1"
add_pod node-a "$tag-a2"
add_pod node-b "$tag-b1"
add_pod node-c "$tag-c1"
A="$tag-node-a"
for _ in $(seq 200); do
    [[ $(ip -n "$A" -4 route show proto 111 | grep -vc blackhole) -ge 2 ]] && break
    sleep 0.05
done

now_us() { echo $(( $(date +%s%N) / 1000 )); }
etcdctl_() { in_ns "$UL" env ETCDCTL_API=3 etcdctl --endpoints "$ETCD" "$@" >/dev/null; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
maxof() { sort -n | tail -n 1; }

add_ms=() del_ms=()
for i in $(seq "$ROUNDS"); do
    block="10.85.$((200 + i / 4)).$(( (i % 4) * 64 ))"
    key="/ohno/blocks/v4/$block-26"
    etcdctl_ put "$key" '{"node":"node-b","claimed":0}'
    t0=$(now_us)
    until ip -n "$A" route show "$block/26" proto 111 | grep -q via; do :; done
    t1=$(now_us)
    add_ms+=("$(awk -v d=$((t1 - t0)) 'BEGIN {printf "%.1f", d / 1000}')")
    etcdctl_ del "$key"
    t0=$(now_us)
    while ip -n "$A" route show "$block/26" proto 111 | grep -q via; do :; done
    t1=$(now_us)
    del_ms+=("$(awk -v d=$((t1 - t0)) 'BEGIN {printf "%.1f", d / 1000}')")
done

declare -A gbit rtt
paths=("same node:$tag-a2" "host-gw:$tag-b1" "vxlan:$tag-c1")
for round in 1 2 3; do
    for p in "${paths[@]}"; do
        label=${p%%:*} pod=${p#*:}
        dst=${v4addr[$pod]%/*}
        in_ns "$pod" iperf3 -s -1 -D >/dev/null 2>&1
        sleep 0.2
        g=$(in_ns "$tag-a1" iperf3 -c "$dst" -t 3 -J 2>/dev/null | jq '.end.sum_received.bits_per_second / 1e9')
        r=$(in_ns "$tag-a1" ping -c 20 -i 0.01 -q "$dst" | awk -F/ '/rtt/ {print $5}')
        gbit[$label]+="$g "
        rtt[$label]+="$r "
    done
done

mkdir -p target/bench
{
    echo "# Cross-node bench"
    echo
    echo "Three simulated nodes (namespaces; node-a and node-b on one segment, node-c behind a router), one etcd member on the router, \`ohnod run\` (backend auto) on each; \`$OHNO\` (release). Written by \`scripts/bench-cross-node.sh\` (\`make bench\`)."
    echo
    echo "## 1. Convergence ($ROUNDS rounds, ms)"
    echo
    echo "From the return of \`etcdctl put\` of a block claim for node-b (committed) until node-a's kernel holds the route, and from the return of \`etcdctl del\` until it is gone; the poll (\`ip route show\`, ~1–2 ms each) is included."
    echo
    echo "| event | p50 ms | max ms |"
    echo "|:--|--:|--:|"
    echo "| block claimed → route on node-a | $(printf '%s\n' "${add_ms[@]}" | median) | $(printf '%s\n' "${add_ms[@]}" | maxof) |"
    echo "| block released → route gone on node-a | $(printf '%s\n' "${del_ms[@]}" | median) | $(printf '%s\n' "${del_ms[@]}" | maxof) |"
    echo
    echo "## 2. Pod to pod (IPv4, one TCP stream 3 s, 20 pings; median of 3 interleaved rounds)"
    echo
    echo "| path | Gbit/s | RTT ms |"
    echo "|:--|--:|--:|"
    for p in "${paths[@]}"; do
        label=${p%%:*}
        echo "| $label | $(tr ' ' '\n' <<<"${gbit[$label]}" | sed '/^$/d' | median | xargs printf '%.1f') | $(tr ' ' '\n' <<<"${rtt[$label]}" | sed '/^$/d' | median) |"
    done
    echo
    echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
} >target/bench/cross-node.md
cat target/bench/cross-node.md
