#!/usr/bin/env bash
# `make flamegraph`: where ADD spends its CPU time. A burst of FLAMEGRAPH_ADDS
# (default 30) ADDs of the release `ohno` binary, local store, each for a fresh pod
# netns, in a throwaway host netns, recorded with `perf record` (cpu-clock, user
# and kernel stacks) and drawn with inferno into docs/flamegraph-add.svg.
#
# The binary is the one `make demo` and the install use (`cargo build --release`,
# shared target dir, no rebuild when it is current). Its profile strips debuginfo
# but keeps the symbol table and .eh_frame, so stacks are unwound with DWARF CFI
# (--call-graph dwarf) and named from the symbol table: inlined functions appear
# as their caller. FLAMEGRAPH_DEBUGINFO=1 instead builds a release binary with
# line tables into target/flamegraph (a separate full release build, minutes on 2
# cores) and shows inlined frames too.
#
# Only the ohno processes are drawn (not bash or `ip netns exec`). Everything
# happens in namespaces this script creates and deletes on every exit path. Root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

[[ $(id -u) -eq 0 ]] || { echo "flamegraph: needs root (network namespaces, perf)" >&2; exit 1; }
for tool in perf inferno-collapse-perf inferno-flamegraph; do
    command -v "$tool" >/dev/null || { echo "flamegraph: $tool missing; run scripts/setup-flamegraph.sh" >&2; exit 1; }
done

N=${FLAMEGRAPH_ADDS:-30}
FREQ=${FLAMEGRAPH_FREQ:-9999}
OUT=${FLAMEGRAPH_OUT:-$ROOT/docs/flamegraph-add.svg}
NICE=(nice -n "${OHNO_NICE:-10}")

if [[ ${FLAMEGRAPH_DEBUGINFO:-0} == 1 ]]; then
    echo "==> flamegraph: release build with line tables into target/flamegraph" >&2
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_PROFILE_RELEASE_STRIP=none \
        "${NICE[@]}" cargo build --release -p ohno --bin ohno --target-dir target/flamegraph
    OHNO=$ROOT/target/flamegraph/release/ohno
else
    echo "==> flamegraph: cargo build --release -p ohno --bin ohno" >&2
    "${NICE[@]}" cargo build --release -p ohno --bin ohno
    OHNO=$ROOT/target/release/ohno
fi

tag="ohno-fg-$$"
HOST="$tag-h"
WORK=$(mktemp -d /tmp/ohno-flamegraph.XXXXXX)
created_ns=()
cleanup() {
    local rc=$? ns
    set +e
    for ns in "${created_ns[@]}"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

netns_add() { ip netns add "$1"; created_ns+=("$1"); ip -n "$1" link set lo up; }

cat >"$WORK/conf.json" <<JSON
{ "cniVersion": "1.1.0", "name": "podnet", "type": "ohno", "bridge": "ohno0", "mtu": 1500,
  "isDefaultGateway": true, "ipMasq": false, "node": "node-a",
  "logFile": "$WORK/ohno.log", "logLevel": "debug",
  "ipam": { "type": "ohno",
            "pools": [ { "name": "default", "subnet": "10.85.0.0/16", "blockSize": 26 } ],
            "routes": [ { "dst": "0.0.0.0/0" } ],
            "lockDir": "$WORK/lock",
            "store": { "type": "local", "dataDir": "$WORK/store" } } }
JSON

netns_add "$HOST"
for ((i = 0; i < N; i++)); do netns_add "$tag-p$i"; done

# The burst: what perf records. One ADD after another, like a runtime starting pods.
cat >"$WORK/burst.sh" <<EOF
#!/usr/bin/env bash
set -e
for ((i = 0; i < $N; i++)); do
    CNI_COMMAND=ADD CNI_CONTAINERID="ctr-$tag-\$i" CNI_NETNS="/var/run/netns/$tag-p\$i" \\
        CNI_IFNAME=eth0 CNI_PATH="$(dirname "$OHNO")" \\
        ip netns exec "$HOST" "$OHNO" <"$WORK/conf.json" >"$WORK/add-\$i.out"
done
EOF
chmod +x "$WORK/burst.sh"

echo "==> flamegraph: perf record of $N ADDs (cpu-clock at $FREQ Hz, dwarf stacks)" >&2
t0=$(date +%s.%N)
perf record -q -e cpu-clock -F "$FREQ" --call-graph dwarf,65528 -o "$WORK/perf.data" \
    -- "$WORK/burst.sh" 2>"$WORK/perf-record.err" ||
    { cat "$WORK/perf-record.err" >&2; echo "flamegraph: an ADD or perf failed" >&2; exit 1; }
t1=$(date +%s.%N)
ok=$(cat "$WORK"/add-*.out | jq -r 'select(.ips[0].address) | .ips[0].address' | wc -l)
((ok == N)) || { echo "flamegraph: only $ok of $N ADDs returned an address" >&2; exit 1; }
# ohno logs each verb's own duration (from main to the result, at debug level):
# the part of the wall time that is ohno's, without exec, ld.so and `ip netns exec`.
inproc=$(sed -n 's/.*ADD done in \([0-9.]*\) ms.*/\1/p' "$WORK/ohno.log" | sort -n |
    awk '{ v[NR] = $1 } END { if (NR) printf "median %.1f ms, max %.1f ms", v[int((NR + 1) / 2)], v[NR] }')

# DEL them again (not recorded), so the namespaces go quietly.
for ((i = 0; i < N; i++)); do
    CNI_COMMAND=DEL CNI_CONTAINERID="ctr-$tag-$i" CNI_NETNS="/var/run/netns/$tag-p$i" \
        CNI_IFNAME=eth0 ip netns exec "$HOST" "$OHNO" <"$WORK/conf.json" >/dev/null || true
done

echo "==> flamegraph: rendering $OUT" >&2
mkdir -p "$(dirname "$OUT")"
"${NICE[@]}" perf script -i "$WORK/perf.data" --comms ohno --no-inline 2>/dev/null >"$WORK/perf.script"
samples=$(grep -c 'cpu-clock' "$WORK/perf.script" || true)
"${NICE[@]}" inferno-collapse-perf --all <"$WORK/perf.script" >"$WORK/collapsed.txt"
wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
"${NICE[@]}" inferno-flamegraph \
    --title "ohno ADD x$N (release, local store): on-CPU, user + kernel" \
    --subtitle "widths: on-CPU ns ($samples cpu-clock samples at $FREQ Hz); $N ADDs in $wall s wall (in ohno: $inproc); $(date -u +%Y-%m-%d)" \
    --countname ns --minwidth 0.2 <"$WORK/collapsed.txt" >"$OUT.tmp"
mv -f "$OUT.tmp" "$OUT"
mkdir -p target/flamegraph
cp "$WORK/collapsed.txt" target/flamegraph/add.folded
cpu_ms=$(awk '{ t += $NF } END { printf "%.0f", t / 1e6 }' "$WORK/collapsed.txt")
echo "flamegraph: $OUT ($samples samples = $cpu_ms ms on CPU for $N ADDs; $wall s wall; ADD inside ohno: $inproc)" >&2
echo "            folded stacks in target/flamegraph/add.folded" >&2

# Top entries by inclusive share, to read along with the picture.
echo "==> flamegraph: frames by inclusive share of samples" >&2
awk '{ n = $NF; $NF = ""; split($0, f, ";"); delete seen;
       for (i in f) { g = f[i]; sub(/ +$/, "", g); if (!(g in seen)) { seen[g] = 1; inc[g] += n } }
       tot += n }
     END { for (g in inc) printf "%6.1f%%  %s\n", 100 * inc[g] / tot, g }' "$WORK/collapsed.txt" |
    sort -rn | head -n 40 >&2
