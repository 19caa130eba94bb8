#!/usr/bin/env bash
# `make memcheck`: the real `ohno` binary (debug build, default features) under
# valgrind memcheck for ADD, CHECK and DEL, in three scenarios:
#   local  the embedded local store
#   etcd   the 3-member mutual-TLS etcd cluster of myclusters/, started inside the
#          throwaway host netns and stopped afterwards
#   wasm   a WebAssembly policy (pod_ifname.wasm, built by `make policies`), local store
# and once more for DEL's detached link reaper (`ohno --reap-link`, see below).
# Fails on any definite leak or memory error (invalid read/write, use of
# uninitialised values, bad frees...): valgrind's --error-exitcode plus a scan of
# every log for "definitely lost" and a non-zero ERROR SUMMARY.
#
# Everything runs inside network namespaces this script creates (a throwaway
# "host" netns where ohno and etcd run, and one pod netns per scenario), never the
# machine's own, and they are deleted on every exit path. Needs root.
#
# valgrind options, and why:
#   --leak-check=full --errors-for-leak-kinds=definite  only definite leaks count:
#       Rust and tokio keep some process-lifetime allocations reachable at exit
#       ("still reachable"/"possibly lost" through interior pointers), which are
#       not leaks.
#   --smc-check=all-non-file  (wasm scenario) wasmtime writes Cranelift's machine
#       code into anonymous mappings and then runs it; this makes valgrind notice
#       code written there after it translated the page.
#   no --trace-children: DEL spawns `/proc/self/exe --reap-link INDEX --netns-fd FD`
#       detached. Under valgrind /proc/self/exe is valgrind's own tool binary, which
#       refuses to run ("You cannot run '/proc/self/exe' directly") whether children
#       are traced or not; the exec itself succeeds, so DEL believes the reaper
#       started and the retired pair (down, renamed ohnodel<index>) stays until the
#       pod netns is deleted. So the script (a) reports, after each DEL, whether
#       the retired link is gone (expected "still present" under valgrind; a note,
#       not a failure) and (b) runs the reaper itself, the real
#       `ohno --reap-link INDEX --netns-fd 3`, under memcheck on a tombstoned link
#       it creates, and checks that the link was deleted.
#   --suppressions=scripts/memcheck.supp: two entries, both inside ring's TLS 1.3
#       AEAD on the etcd path (the record tag ring computes); the file gives the
#       evidence that they are not defects. Nothing of Ohno's is suppressed.
#
#   helpers: a plugin call starts the node-local helpers (etcd connection,
#       policy) as `/proc/self/exe` too, so under valgrind it cannot start them.
#       For the etcd and wasm scenarios the script therefore lets a native ADD
#       start the helper, takes the helper's start document from its
#       environment, replaces it with the same helper (`ohno --helper KIND`)
#       under memcheck, runs ADD and DEL under memcheck through it, then removes
#       its socket (the helper leaves) and checks its log too.
#
# Environment: OHNO_BIN (default target/debug/ohno, built here), MEMCHECK_SCENARIOS
# (default "local etcd wasm"), MEMCHECK_VALGRIND_ARGS (more valgrind options, e.g.
# --track-origins=yes), MEMCHECK_POLICY (default
# target/wasm32-wasip2/release/pod_ifname.wasm), MEMCHECK_KEEP=1 keeps the work dir.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

[[ $(id -u) -eq 0 ]] || { echo "memcheck: needs root (network namespaces)" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "memcheck: valgrind missing; run scripts/setup.sh" >&2; exit 1; }

NICE=(nice -n "${OHNO_NICE:-10}")
read -r -a SCENARIOS <<<"${MEMCHECK_SCENARIOS:-local etcd wasm}"
POLICY=${MEMCHECK_POLICY:-$ROOT/target/wasm32-wasip2/release/pod_ifname.wasm}

if [[ -z ${OHNO_BIN:-} ]]; then
    # The same build as `make test` (same package set, so the same feature
    # unification): after it, nothing is rebuilt.
    echo "==> memcheck: cargo build --workspace (debug)" >&2
    "${NICE[@]}" cargo build --workspace
    OHNO_BIN=$ROOT/target/debug/ohno
fi
[[ -x $OHNO_BIN ]] || { echo "memcheck: $OHNO_BIN is not executable" >&2; exit 1; }

tag="ohno-mc-$$"
HOST="$tag-h"
WORK=$(mktemp -d /tmp/ohno-memcheck.XXXXXX)
chmod 0755 "$WORK"
created_ns=()
cluster_dir=""

cleanup() {
    local rc=$? ns
    set +e
    if [[ -n $cluster_dir ]]; then
        ip netns exec "$HOST" myclusters/local-cluster.sh stop --dir "$cluster_dir" >/dev/null 2>&1
    fi
    for ns in "${created_ns[@]}"; do ip netns del "$ns" 2>/dev/null; done
    if [[ ${MEMCHECK_KEEP:-0} == 1 || $rc -ne 0 ]]; then
        echo "memcheck: logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

netns_add() {
    ip netns add "$1"
    created_ns+=("$1")
    ip -n "$1" link set lo up
}

read -r -a VG_EXTRA <<<"${MEMCHECK_VALGRIND_ARGS:-}"
VG_BASE=(valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite
         --errors-for-leak-kinds=definite --error-exitcode=99 --num-callers=40
         --trace-children=no --suppressions="$ROOT/scripts/memcheck.supp" "${VG_EXTRA[@]}")

results=()  # "scenario verb verdict detail"
failures=0

# vg_verdict LOGFILE EXIT: "ok" or a reason, from valgrind's own exit status and log.
vg_verdict() {
    local log=$1 rc=$2 errs lost
    errs=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$log" | tail -n1)
    lost=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$log" | tail -n1)
    lost=${lost//,/}
    if [[ -z $errs ]]; then
        echo "no valgrind summary (exit $rc)"
    elif ((rc == 99 || errs > 0 || ${lost:-0} > 0)); then
        echo "ERRORS: ${errs} error(s), ${lost:-0} bytes definitely lost"
    else
        echo "ok (0 errors, ${lost:-0} bytes definitely lost)"
    fi
}

record() { # scenario verb verdict [extra]
    results+=("$(printf '%-6s %-6s %s %s' "$1" "$2" "$3" "${4:-}")")
    case $3 in ok*) ;; *) failures=$((failures + 1)) ;; esac
}

# run_vg SCENARIO VERB STDIN_FILE POD [extra valgrind args...]: one ohno verb under
# memcheck inside the host netns. Prints ohno's stdout into $WORK/SCENARIO-LABEL.out
# (LABEL: $LABEL if set, else VERB).
run_vg() {
    local scen=$1 verb=$2 conf=$3 pod=$4
    shift 4
    local label=${LABEL:-$verb}
    local log="$WORK/vg-$scen-$label.log" out="$WORK/$scen-$label.out" rc=0 t0=$SECONDS
    echo "==> memcheck: $scen $label" >&2
    "${NICE[@]}" env CNI_COMMAND="$verb" CNI_CONTAINERID="ctr-$pod" \
        CNI_NETNS="/var/run/netns/$pod" CNI_IFNAME=eth0 CNI_PATH="$(dirname "$OHNO_BIN")" \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=${POD_NAME:-web-0}" \
        ip netns exec "$HOST" "${VG_BASE[@]}" "$@" --log-file="$log" "$OHNO_BIN" \
        <"$conf" >"$out" || rc=$?
    local verdict
    verdict=$(vg_verdict "$log" "$rc")
    # ohno's own outcome matters too: a verb that failed exercised the error path only.
    local ohno_note=""
    if ((rc != 0 && rc != 99)); then
        ohno_note="(ohno exit $rc: $(head -c 300 "$out"))"
        verdict="FAILED: ohno exit $rc; valgrind: $verdict"
    fi
    record "$scen" "$label" "$verdict" "$((SECONDS - t0)) s $ohno_note"
    return 0
}

# conf SCENARIO [prevResult-file]: the network config on stdin.
conf() {
    local scen=$1 prev=${2:-} store policy=""
    case $scen in
        etcd)
            local eps
            eps=$(sed 's/,/", "/g' <<<"$OHNO_ETCD_ENDPOINTS")
            # Generous timeouts: TLS handshakes under valgrind are ~50x slower.
            store="{ \"type\": \"etcd\", \"endpoints\": [\"$eps\"], \"prefix\": \"/ohno\",
                     \"caFile\": \"$OHNO_CERT_DIR/ca.pem\", \"certFile\": \"$OHNO_CERT_DIR/client.pem\",
                     \"keyFile\": \"$OHNO_CERT_DIR/client-key.pem\", \"timeoutMs\": 30000, \"retries\": 3 }"
            ;;
        *) store="{ \"type\": \"local\", \"dataDir\": \"$WORK/store-$scen\" }" ;;
    esac
    if [[ $scen == wasm ]]; then
        # Wall-clock deadline raised: under valgrind the guest runs ~50x slower.
        policy=", \"policy\": { \"path\": \"$POLICY\", \"config\": {\"prefix\": \"p-\"},
                   \"timeoutMs\": 60000, \"cacheDir\": \"$WORK/policy-cache\" }"
    fi
    cat <<JSON
{ "cniVersion": "1.1.0", "name": "podnet", "type": "ohno", "bridge": "ohno0", "mtu": 1500,
  "isDefaultGateway": true, "ipMasq": false, "node": "node-a",
  "logFile": "$WORK/ohno-$scen.log", "logLevel": "debug",
  "ipam": { "type": "ohno",
            "pools": [ { "name": "default", "subnet": "10.85.0.0/16", "blockSize": 26 } ],
            "routes": [ { "dst": "0.0.0.0/0" } ],
            "lockDir": "$WORK/lock",
            "store": $store }
  $policy
  $( [[ -n $prev ]] && echo ", \"prevResult\": $(cat "$prev")" ) }
JSON
}

# The pod end of a deleted attachment, renamed ohnodel<index>, is gone (the
# reaper's job, or DEL's fallback) within 2 s.
tombstones_gone() {
    local pod=$1 i
    for ((i = 0; i < 20; i++)); do
        if ! ip -n "$pod" -br link show | grep -q '^ohnodel'; then return 0; fi
        sleep 0.1
    done
    return 1
}

# helper_under_vg SCENARIO KIND ENVVAR: the node-local helper of KIND (etcd or
# policy) under memcheck, and an ADD and a DEL under memcheck through it.
helper_under_vg() {
    local scen=$1 kind=$2 var=$3 pod="$tag-$1-h" i sock="" pid="" doc hpid rc=0 t0=$SECONDS
    netns_add "$pod"
    echo "==> memcheck: $scen $kind helper" >&2
    # A native ADD (and its DEL) starts the helper natively.
    for verb in ADD DEL; do
        ip netns exec "$HOST" env CNI_COMMAND=$verb CNI_CONTAINERID="ctr-$pod-native" \
            CNI_NETNS="/var/run/netns/$pod" CNI_IFNAME=eth0 CNI_PATH="$(dirname "$OHNO_BIN")" \
            CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-h" \
            "$OHNO_BIN" <"$WORK/$scen-add.json" >"$WORK/$scen-native-$verb.out" || true
    done
    for ((i = 0; i < 100; i++)); do
        sock=$(compgen -G "$WORK/lock/$kind-*.sock" | head -n1 || true)
        [[ -n $sock ]] && pid=$(cat "${sock%.sock}.lock" 2>/dev/null || true)
        [[ -n $pid && -r /proc/$pid/environ ]] && break
        sleep 0.1
    done
    if [[ -z $pid || ! -r /proc/$pid/environ ]]; then
        record "$scen" helper "FAILED: no $kind helper after a native ADD"
        return 0
    fi
    doc=$(tr '\0' '\n' <"/proc/$pid/environ" | sed -n "s/^$var=//p")
    # Ours (its lock file names it); replaced by the same helper under memcheck.
    kill "$pid"
    for ((i = 0; i < 50; i++)); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
    rm -f "$sock" # killed, it left its socket behind
    ip netns exec "$HOST" env -i "$var=$doc" "${VG_BASE[@]}" --log-file="$WORK/vg-$scen-helper.log" \
        "$OHNO_BIN" --helper "$kind" &
    hpid=$!
    for ((i = 0; i < 600; i++)); do [[ -S $sock ]] && break; sleep 0.1; done
    # Another pod name: the wasm scenario's policy names the host veth after it.
    POD_NAME=web-h LABEL=ADD-via-helper run_vg "$scen" ADD "$WORK/$scen-add.json" "$pod"
    grep -q "through the helper at" "$WORK/ohno-$scen.log" ||
        record "$scen" helper "FAILED: the ADD did not go through the $kind helper"
    POD_NAME=web-h LABEL=DEL-via-helper run_vg "$scen" DEL "$WORK/$scen-add.json" "$pod"
    # Its socket removed, the helper leaves within a tick.
    rm -f "$sock"
    wait "$hpid" || rc=$?
    verdict=$(vg_verdict "$WORK/vg-$scen-helper.log" "$rc")
    ((rc == 0 || rc == 99)) || verdict="FAILED: helper exit $rc; valgrind: $verdict"
    record "$scen" "$kind-helper" "$verdict" "$((SECONDS - t0)) s"
}

netns_add "$HOST"
ip -n "$HOST" link set lo up

t_all=$SECONDS
for scen in "${SCENARIOS[@]}"; do
    pod="$tag-$scen"
    netns_add "$pod"
    [[ $scen == wasm ]] && netns_add "$pod-2"
    extra=()
    case $scen in
        etcd)
            cluster_dir="$WORK/etcd"
            echo "==> memcheck: starting the 3-member mTLS etcd cluster inside $HOST" >&2
            ip netns exec "$HOST" myclusters/local-cluster.sh start --dir "$cluster_dir" >"$WORK/cluster.env.out"
            # shellcheck disable=SC1091
            source "$cluster_dir/cluster.env"
            ;;
        wasm)
            [[ -f $POLICY ]] || { echo "memcheck: $POLICY missing; run 'make policies'" >&2; exit 1; }
            extra=(--smc-check=all-non-file)
            ;;
        local) ;;
        *) echo "memcheck: unknown scenario $scen" >&2; exit 2 ;;
    esac

    conf "$scen" >"$WORK/$scen-add.json"
    run_vg "$scen" ADD "$WORK/$scen-add.json" "$pod" "${extra[@]}"
    if ! jq -e '.ips[0].address' "$WORK/$scen-ADD.out" >/dev/null 2>&1; then
        echo "memcheck: $scen ADD gave no result; skipping its CHECK and DEL" >&2
        continue
    fi
    if [[ $scen == wasm ]]; then
        # The policy named the host veth after the pod: p-prod-web-0.
        hostif=$(jq -r '.interfaces[1].name // empty' "$WORK/$scen-ADD.out")
        [[ $hostif == p-prod-web-0 ]] ||
            record "$scen" policy "FAILED: host veth is ${hostif:-none}, policy says p-prod-web-0"
    fi
    jq -c . "$WORK/$scen-ADD.out" >"$WORK/$scen-prev.json"
    conf "$scen" "$WORK/$scen-prev.json" >"$WORK/$scen-withprev.json"
    run_vg "$scen" CHECK "$WORK/$scen-withprev.json" "$pod" "${extra[@]}"
    run_vg "$scen" DEL "$WORK/$scen-withprev.json" "$pod" "${extra[@]}"
    if [[ $scen == wasm ]]; then
        # A second pod: this ADD loads the component precompiled by the first
        # from policy.cacheDir (deserialised machine code) instead of compiling.
        LABEL=ADD-cached run_vg "$scen" ADD "$WORK/$scen-add.json" "$pod-2" "${extra[@]}"
        [[ $(jq -r '.interfaces[1].name // empty' "$WORK/$scen-ADD-cached.out" 2>/dev/null) == p-prod-web-0 ]] ||
            record "$scen" policy "FAILED: cached ADD did not apply the policy"
    fi
    case $scen in
        etcd) helper_under_vg "$scen" etcd OHNO_STORE_HELPER ;;
        wasm) helper_under_vg "$scen" policy OHNO_POLICY_HELPER ;;
    esac
    if tombstones_gone "$pod"; then
        record "$scen" reaper "ok (retired pod link gone after DEL)"
    else
        # Not a memory error: noted, see the header about /proc/self/exe.
        results+=("$(printf '%-6s %-6s %s' "$scen" reaper "note: retired link still there 2 s after DEL (expected: under valgrind the reaper cannot exec)")")
    fi

    if [[ $scen == etcd ]]; then
        ip netns exec "$HOST" myclusters/local-cluster.sh stop --dir "$cluster_dir" >/dev/null 2>&1 || true
        cluster_dir=""
    fi
done

# DEL's reaper, run directly: a tombstoned dummy link in a fresh pod netns, the
# netns open on fd 3, and `ohno --reap-link INDEX --netns-fd 3` under memcheck.
pod="$tag-reap"
netns_add "$pod"
# A veth pair (both ends here): the kernel may lack the dummy driver.
ip -n "$pod" link add ohnodel0000beef type veth peer name ohnodelpeer
index=$(ip -n "$pod" -j link show ohnodel0000beef | jq -r '.[0].ifindex')
echo "==> memcheck: --reap-link $index" >&2
rc=0
t0=$SECONDS
"${NICE[@]}" ip netns exec "$HOST" "${VG_BASE[@]}" --log-file="$WORK/vg-reaper.log" \
    "$OHNO_BIN" --reap-link "$index" --netns-fd 3 3<"/var/run/netns/$pod" || rc=$?
verdict=$(vg_verdict "$WORK/vg-reaper.log" "$rc")
if ((rc != 0 && rc != 99)); then
    verdict="FAILED: reaper exit $rc; valgrind: $verdict"
elif ip -n "$pod" link show ohnodel0000beef >/dev/null 2>&1; then
    verdict="FAILED: link not deleted; valgrind: $verdict"
fi
record reap --reap-link "$verdict" "$((SECONDS - t0)) s"

echo "==> memcheck verdicts ($((SECONDS - t_all)) s; valgrind logs in $WORK)" >&2
printf '    %s\n' "${results[@]}" >&2
if ((failures)); then
    for log in "$WORK"/vg-*.log; do
        if grep -qE 'definitely lost: [1-9]|ERROR SUMMARY: [1-9]' "$log"; then
            echo "--- $log" >&2
            grep -E -A25 '^==[0-9]+== (Invalid|Conditional|Use of|Syscall param|Mismatched|.*definitely lost in)' "$log" | head -n 120 >&2 || true
        fi
    done
    echo "memcheck: FAILED ($failures)" >&2
    MEMCHECK_KEEP=1
    exit 1
fi
echo "memcheck: clean" >&2
