#!/usr/bin/env bash
# `make memcheck`: the real `ohno` binary (debug build, default features) under
# valgrind memcheck for ADD, CHECK and DEL, in three scenarios:
#   local  the embedded local store
#   etcd   the 3-member mutual-TLS etcd cluster of myclusters/, started inside the
#          throwaway host netns and stopped afterwards
#   wasm   a WebAssembly policy (pod_ifname.wasm, built by `make policies`), local store
# then the node agent (`ohnod run`, the `ohnod` beside `ohno`) under memcheck with
# an ADD and a DEL under memcheck through it (etcd and wasm), and once more for
# DEL's detached link reaper (`ohnod on-demand reap`, see below).
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
#   no --trace-children: what a plugin call starts is `ohnod` (the one beside the
#       plugin: under valgrind the plugin's /proc/self/exe still names the real
#       `ohno`, so it finds it), and those processes run natively: a verdict is
#       one process's. DEL starts `ohnod on-demand reap --link INDEX --netns-fd FD`
#       detached to delete the retired pair (down, renamed ohnodel<index>); the
#       script (a) reports, after each DEL, whether the retired link is gone (a
#       note, not a failure, if not) and (b) runs the reaper itself, the real
#       `ohnod on-demand reap --link INDEX --netns-fd 3`, under memcheck on a
#       tombstoned link it creates, and checks that the link was deleted.
#   --suppressions=scripts/memcheck.supp: two entries, both inside ring's TLS 1.3
#       AEAD on the etcd path (the record tag ring computes); the file gives the
#       evidence that they are not defects. Nothing of Ohno's is suppressed.
#
#   the agent: the scenarios' configs set persistMs 0, so the verbs above run
#       in-process (no on-demand server takes the store or the policy away from
#       the process under memcheck). For the etcd and wasm scenarios the script
#       then starts `ohnod run --config FILE` (the scenario's network config, no
#       metrics listener) under memcheck in the host netns, runs ADD and DEL
#       under memcheck through it (the plugin log must say the store or the
#       policy went through the agent, and DEL's retired link must go to the
#       agent's reaper), stops it with SIGTERM (it drains and exits, removing
#       its socket) and checks its log too.
#
# Environment: OHNO_BIN (default target/debug/ohno, built here; `ohnod` is the one
# beside it), MEMCHECK_SCENARIOS
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
# The agent and the reaper: the `ohnod` the plugin itself would start.
OHNOD_BIN=$(dirname "$OHNO_BIN")/ohnod
[[ -x $OHNOD_BIN ]] || { echo "memcheck: $OHNOD_BIN (beside ohno) is not executable" >&2; exit 1; }

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
                     \"keyFile\": \"$OHNO_CERT_DIR/client-key.pem\", \"timeoutMs\": 30000, \"retries\": 3,
                     \"persistMs\": 0 }"
            ;;
        *) store="{ \"type\": \"local\", \"dataDir\": \"$WORK/store-$scen\" }" ;;
    esac
    if [[ $scen == wasm ]]; then
        # Wall-clock deadline raised: under valgrind the guest runs ~50x slower.
        policy=", \"policy\": { \"path\": \"$POLICY\", \"config\": {\"prefix\": \"p-\"},
                   \"timeoutMs\": 60000, \"cacheDir\": \"$WORK/policy-cache\", \"persistMs\": 0 }"
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
# reaper's job, or DEL's fallback) within TENTHS tenths of a second (default 2 s).
tombstones_gone() {
    local pod=$1 tenths=${2:-20} i
    for ((i = 0; i < tenths; i++)); do
        if ! ip -n "$pod" -br link show | grep -q '^ohnodel'; then return 0; fi
        sleep 0.1
    done
    return 1
}

# agent_under_vg SCENARIO SERVICE [extra valgrind args...]: the node agent
# (`ohnod run`) for the scenario's network under memcheck, and an ADD and a DEL
# under memcheck through it. SERVICE (store or policy) is what the plugin log must
# show going through the agent; DEL's retired link must go to the agent's reaper.
agent_under_vg() {
    local scen=$1 service=$2 pod="$tag-$1-a" i apid rc=0 t0=$SECONDS mark verdict
    shift 2
    local sock="$WORK/lock/ohnod.sock" config="$WORK/ohnod-$scen.json" log="$WORK/ohno-$scen.log"
    netns_add "$pod"
    echo "==> memcheck: $scen ohnod run" >&2
    printf '{ "network": "%s", "metricsAddress": "", "logLevel": "debug", "drainSeconds": 10 }\n' \
        "$WORK/$scen-add.json" >"$config"
    "${NICE[@]}" ip netns exec "$HOST" env -i "${VG_BASE[@]}" "$@" --log-file="$WORK/vg-$scen-agent.log" \
        "$OHNOD_BIN" run --config "$config" 2>"$WORK/ohnod-$scen.log" &
    apid=$!
    for ((i = 0; i < 600; i++)); do
        [[ -S $sock ]] && break
        kill -0 "$apid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ ! -S $sock ]]; then
        kill -TERM "$apid" 2>/dev/null || true
        wait "$apid" || true
        record "$scen" ohnod-run "FAILED: ohnod run did not serve $sock ($(tail -c 300 "$WORK/ohnod-$scen.log"))"
        return 0
    fi
    mark=$(wc -l <"$log")
    # Another pod name: the wasm scenario's policy names the host veth after it.
    POD_NAME=web-a LABEL=ADD-via-agent run_vg "$scen" ADD "$WORK/$scen-add.json" "$pod" "$@"
    # (grep reads a process substitution: under pipefail, `tail | grep -q` fails
    # when grep stops early and tail gets SIGPIPE.)
    grep -q "$service: through the agent at" <(tail -n +"$((mark + 1))" "$log") ||
        record "$scen" agent "FAILED: the ADD's $service did not go through the agent"
    mark=$(wc -l <"$log")
    POD_NAME=web-a LABEL=DEL-via-agent run_vg "$scen" DEL "$WORK/$scen-add.json" "$pod" "$@"
    if grep -q "reaper: no agent at" <(tail -n +"$((mark + 1))" "$log"); then
        record "$scen" agent "FAILED: the DEL did not hand its retired link to the agent"
    elif ! tombstones_gone "$pod" 300; then
        record "$scen" agent "FAILED: the agent's reaper left the retired link"
    fi
    # SIGTERM: the agent stops accepting, removes its socket, drains and exits.
    kill -TERM "$apid"
    wait "$apid" || rc=$?
    verdict=$(vg_verdict "$WORK/vg-$scen-agent.log" "$rc")
    if ((rc != 0 && rc != 99)); then
        verdict="FAILED: ohnod run exit $rc; valgrind: $verdict"
    elif [[ -e $sock ]]; then
        verdict="FAILED: ohnod run left its socket; valgrind: $verdict"
    fi
    record "$scen" ohnod-run "$verdict" "$((SECONDS - t0)) s"
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
    if tombstones_gone "$pod"; then
        record "$scen" reaper "ok (retired pod link gone after DEL)"
    else
        # Not a memory error: noted (the reaper is a native `ohnod`; see the header).
        results+=("$(printf '%-6s %-6s %s' "$scen" reaper "note: retired link still there 2 s after DEL (the detached ohnod on-demand reap did not delete it)")")
    fi
    case $scen in
        etcd) agent_under_vg "$scen" store ;;
        wasm) agent_under_vg "$scen" policy "${extra[@]}" ;;
    esac

    if [[ $scen == etcd ]]; then
        ip netns exec "$HOST" myclusters/local-cluster.sh stop --dir "$cluster_dir" >/dev/null 2>&1 || true
        cluster_dir=""
    fi
done

# DEL's reaper, run directly: a tombstoned dummy link in a fresh pod netns, the
# netns open on fd 3, and `ohnod on-demand reap --link INDEX --netns-fd 3` under
# memcheck.
pod="$tag-reap"
netns_add "$pod"
# A veth pair (both ends here): the kernel may lack the dummy driver.
ip -n "$pod" link add ohnodel0000beef type veth peer name ohnodelpeer
index=$(ip -n "$pod" -j link show ohnodel0000beef | jq -r '.[0].ifindex')
echo "==> memcheck: ohnod on-demand reap --link $index" >&2
rc=0
t0=$SECONDS
"${NICE[@]}" ip netns exec "$HOST" "${VG_BASE[@]}" --log-file="$WORK/vg-reaper.log" \
    "$OHNOD_BIN" on-demand reap --link "$index" --netns-fd 3 3<"/var/run/netns/$pod" || rc=$?
verdict=$(vg_verdict "$WORK/vg-reaper.log" "$rc")
if ((rc != 0 && rc != 99)); then
    verdict="FAILED: reaper exit $rc; valgrind: $verdict"
elif ip -n "$pod" link show ohnodel0000beef >/dev/null 2>&1; then
    verdict="FAILED: link not deleted; valgrind: $verdict"
fi
record reap ohnod-reap "$verdict" "$((SECONDS - t0)) s"

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
