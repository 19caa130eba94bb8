#!/usr/bin/env bash
# A 3-member mutual-TLS etcd cluster as plain local processes (no Docker).
#
#   local-cluster.sh start          [--dir DIR]   generate certs, start 3 members, wait healthy, print env
#   local-cluster.sh stop           [--dir DIR] [--keep]   kill the recorded PIDs, remove DIR unless --keep
#   local-cluster.sh status         [--dir DIR]   health of every member (exit 0 iff all healthy)
#   local-cluster.sh env            [--dir DIR]   print the env again
#   local-cluster.sh stop-member N  [--dir DIR]   stop member N (1..3) only
#   local-cluster.sh start-member N [--dir DIR]   restart member N on its data dir (it rejoins)
#
# Uses Debian's etcd-server (/usr/bin/etcd, 3.4) and etcd-client (etcdctl). Everything
# listens on 127.0.0.1 on ports that were free at start; state is kept in DIR/cluster.env.
# Without --dir, `start` makes a fresh mktemp dir and the other commands use
# $OHNO_ETCD_CLUSTER_DIR (as printed by start). Only PIDs this script recorded are ever
# signalled, and only after checking they are still the etcd it started.
#
# Environment: ETCD_BIN (default: etcd on PATH), ETCDCTL_BIN (default: etcdctl),
#              OHNO_ETCD_START_TIMEOUT (seconds, default 30).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ETCD_BIN=${ETCD_BIN:-$(command -v etcd || echo /usr/bin/etcd)}
ETCDCTL_BIN=${ETCDCTL_BIN:-$(command -v etcdctl || echo /usr/bin/etcdctl)}
TIMEOUT=${OHNO_ETCD_START_TIMEOUT:-30}
MEMBERS=(1 2 3)
SIGNALLED=()

# fd 9 keeps the original stderr, for the failure trap (which may fire while a
# command's stderr is redirected to /dev/null).
exec 9>&2
log() { echo "local-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# ---------------------------------------------------------------- arguments
CMD=${1:-}
[ -n "$CMD" ] || usage
shift
MEMBER=""
DIR=""
KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
        --dir) [ $# -ge 2 ] || usage; DIR=$2; shift 2 ;;
        --dir=*) DIR=${1#--dir=}; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage ;;
        [0-9]*) MEMBER=$1; shift ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done
case $CMD in
    stop-member|start-member)
        case $MEMBER in 1|2|3) ;; *) die "$CMD needs a member number 1, 2 or 3" ;; esac ;;
    start|stop|status|env)
        [ -z "$MEMBER" ] || usage ;;
    -h|--help|help) usage ;;
    *) log "unknown command: $CMD"; usage ;;
esac
if [ -z "$DIR" ] && [ "$CMD" != start ]; then
    DIR=${OHNO_ETCD_CLUSTER_DIR:-}
    [ -n "$DIR" ] || die "no --dir given and OHNO_ETCD_CLUSTER_DIR is not set"
fi

# ---------------------------------------------------------------- state
# cluster.env holds KEY=VALUE lines (no quoting; DIR must not contain whitespace).
load_state() {
    [ -f "$DIR/cluster.env" ] || die "no cluster state in $DIR (cluster.env missing)"
    local k v
    while IFS='=' read -r k v; do
        case $k in OHNO_*|LC_*) printf -v "$k" '%s' "$v" ;; esac
    done <"$DIR/cluster.env"
    # Use the canonical path recorded at start (matches the members' --data-dir).
    DIR=${OHNO_ETCD_CLUSTER_DIR:-$DIR}
}

pid_of() { local v="OHNO_ETCD$1_PID"; echo "${!v:-}"; }

write_state() {
    local tmp="$DIR/cluster.env.tmp" i pids=() eps=()
    for i in "${MEMBERS[@]}"; do
        pids+=("$(pid_of "$i")")
        eps+=("https://127.0.0.1:$(port_client "$i")")
    done
    {
        echo "OHNO_ETCD_ENDPOINTS=$(IFS=,; echo "${eps[*]}")"
        echo "OHNO_CERT_DIR=$DIR/pki"
        echo "OHNO_ETCD_PIDS=$(IFS=,; echo "${pids[*]}")"
        for i in "${MEMBERS[@]}"; do
            echo "OHNO_ETCD${i}_PID=$(pid_of "$i")"
            echo "OHNO_ETCD${i}_ENDPOINT=https://127.0.0.1:$(port_client "$i")"
        done
        echo "OHNO_ETCD_CLUSTER_DIR=$DIR"
        # internal (not printed by start/env)
        for i in "${MEMBERS[@]}"; do
            echo "LC_CLIENT_PORT$i=$(port_client "$i")"
            echo "LC_PEER_PORT$i=$(port_peer "$i")"
        done
        echo "LC_TOKEN=$LC_TOKEN"
    } >"$tmp"
    mv -f "$tmp" "$DIR/cluster.env"
}

print_env() { grep '^OHNO_' "$DIR/cluster.env"; }

port_client() { local v="LC_CLIENT_PORT$1"; echo "${!v}"; }
port_peer() { local v="LC_PEER_PORT$1"; echo "${!v}"; }

# ---------------------------------------------------------------- processes
# Is PID still the etcd member N of this cluster (guards against PID reuse)?
is_our_member() {
    local pid=$1 n=$2 cmdline
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    case $cmdline in
        *"--name etcd$n "*"--data-dir $DIR/etcd$n "*) return 0 ;;
        *) return 1 ;;
    esac
}

# Has PID fully exited? (gone, or a zombie waiting for its reaper: files and sockets closed)
proc_gone() {
    local pid=$1 stat
    [ -e "/proc/$pid" ] || return 0
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    case $stat in Z*|X*) return 0 ;; *) return 1 ;; esac
}

# Send SIGTERM to member N if its recorded PID is still our etcd member (checked first).
term_member() {
    local n=$1 pid
    pid=$(pid_of "$n")
    SIGNALLED[n]=0
    is_our_member "$pid" "$n" || return 0
    SIGNALLED[n]=1
    kill -TERM "$pid" 2>/dev/null || true
}

# Wait for member N's recorded PID to exit (10 s, then SIGKILL if it is still ours).
# A zombie (exited, not yet collected by its reaper, init) counts as stopped.
wait_member() {
    local n=$1 pid i
    pid=$(pid_of "$n")
    [ "${SIGNALLED[n]:-0}" -eq 1 ] || return 0 # not running (or PID reused): nothing to wait for
    for ((i = 0; i < 100; i++)); do
        proc_gone "$pid" && break
        sleep 0.1
    done
    if ! proc_gone "$pid" && is_our_member "$pid" "$n"; then
        log "member $n (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            proc_gone "$pid" && break
            sleep 0.1
        done
    fi
    if ! proc_gone "$pid"; then
        log "member $n (pid $pid) is still alive"
        return 1
    fi
    return 0
}

# Give the reaper up to 3 s (in total) to collect exited members that are still zombies.
reap_wait() {
    local i n pid pending
    for ((i = 0; i < 30; i++)); do
        pending=0
        for n in "${MEMBERS[@]}"; do
            [ "${SIGNALLED[n]:-0}" -eq 1 ] || continue
            pid=$(pid_of "$n")
            [ -e "/proc/$pid" ] && pending=1
        done
        [ "$pending" -eq 1 ] || return 0
        sleep 0.1
    done
}

kill_member() { term_member "$1"; wait_member "$1" && reap_wait; }

initial_cluster() {
    local i out=()
    for i in "${MEMBERS[@]}"; do out+=("etcd$i=https://127.0.0.1:$(port_peer "$i")"); done
    (IFS=,; echo "${out[*]}")
}

# Launch member N in the background; records OHNO_ETCDN_PID.
launch_member() {
    local n=$1 pki="$DIR/pki" pid
    mkdir -p "$DIR/etcd$n"
    chmod 700 "$DIR/etcd$n"
    nohup "$ETCD_BIN" \
        --name "etcd$n" \
        --data-dir "$DIR/etcd$n" \
        --listen-client-urls "https://127.0.0.1:$(port_client "$n")" \
        --advertise-client-urls "https://127.0.0.1:$(port_client "$n")" \
        --listen-peer-urls "https://127.0.0.1:$(port_peer "$n")" \
        --initial-advertise-peer-urls "https://127.0.0.1:$(port_peer "$n")" \
        --initial-cluster "$(initial_cluster)" \
        --initial-cluster-token "$LC_TOKEN" \
        --initial-cluster-state new \
        --client-cert-auth \
        --trusted-ca-file "$pki/ca.pem" \
        --cert-file "$pki/etcd.pem" \
        --key-file "$pki/etcd-key.pem" \
        --peer-client-cert-auth \
        --peer-trusted-ca-file "$pki/ca.pem" \
        --peer-cert-file "$pki/etcd.pem" \
        --peer-key-file "$pki/etcd-key.pem" \
        --logger zap \
        >>"$DIR/etcd$n.log" 2>&1 </dev/null 9>&- &
    pid=$!
    printf -v "OHNO_ETCD${n}_PID" '%s' "$pid"
    echo "$pid" >"$DIR/etcd$n.pid"
}

ctl() { # ctl ENDPOINTS ARGS...
    local eps=$1; shift
    ETCDCTL_API=3 "$ETCDCTL_BIN" --endpoints="$eps" \
        --cacert="$DIR/pki/ca.pem" --cert="$DIR/pki/etcd.pem" --key="$DIR/pki/etcd-key.pem" \
        --dial-timeout=2s --command-timeout=3s "$@"
}

# Health of the given members (default: all); exit 0 iff all are healthy.
health() {
    local i eps=() which=("$@")
    [ "${#which[@]}" -gt 0 ] || which=("${MEMBERS[@]}")
    for i in "${which[@]}"; do eps+=("https://127.0.0.1:$(port_client "$i")"); done
    ctl "$(IFS=,; echo "${eps[*]}")" endpoint health
}

# Wait until members are healthy; fail early if one of them exits.
wait_healthy() {
    local deadline=$((SECONDS + TIMEOUT)) i which=("$@")
    [ "${#which[@]}" -gt 0 ] || which=("${MEMBERS[@]}")
    while :; do
        if health "$@" >/dev/null 2>&1; then
            return 0
        fi
        for i in "${which[@]}"; do
            if ! kill -0 "$(pid_of "$i")" 2>/dev/null; then
                log "member $i (pid $(pid_of "$i")) exited"
                return 1
            fi
        done
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "not healthy after ${TIMEOUT}s"
            health "$@" >&2 || true
            return 1
        fi
        sleep 0.2
    done
}

tail_logs() {
    local i
    for i in "$@"; do
        [ -f "$DIR/etcd$i.log" ] || continue
        echo "----- $DIR/etcd$i.log (last 25 lines) -----" >&2
        tail -n 25 "$DIR/etcd$i.log" >&2
    done
}

# free_ports COUNT (shared with devenv.sh)
# shellcheck source=lib-ports.sh
. "$HERE/lib-ports.sh"

# ---------------------------------------------------------------- commands
cmd_start() {
    local t0 i ports
    CREATED_DIR=0 STARTED=0
    [ -x "$ETCD_BIN" ] || die "etcd not found (install Debian's etcd-server or set ETCD_BIN)"
    [ -x "$ETCDCTL_BIN" ] || die "etcdctl not found (install Debian's etcd-client or set ETCDCTL_BIN)"
    if [ -z "$DIR" ]; then
        DIR=$(mktemp -d "${TMPDIR:-/tmp}/ohno-etcd.XXXXXX")
        CREATED_DIR=1
    else
        if [ ! -e "$DIR" ]; then CREATED_DIR=1; fi
        mkdir -p "$DIR"
        DIR=$(cd "$DIR" && pwd)
        if [ -f "$DIR/cluster.env" ]; then
            load_state
            for i in "${MEMBERS[@]}"; do
                if is_our_member "$(pid_of "$i")" "$i"; then
                    die "a cluster is already running from $DIR (member $i, pid $(pid_of "$i")); stop it first"
                fi
            done
            die "$DIR holds a stopped cluster; use start-member N to restart members, or stop (without --keep) to remove it"
        fi
    fi
    case $DIR in *[[:space:]]*) die "DIR must not contain whitespace: '$DIR'" ;; esac

    # Cleanup on any failure (error, Ctrl-C, TERM) before the cluster is up.
    on_fail() {
        local rc=$?
        trap - EXIT INT TERM
        exec 2>&9
        if [ "$STARTED" -eq 0 ]; then
            log "start failed; stopping the members it started"
            tail_logs "${MEMBERS[@]}"
            for i in "${MEMBERS[@]}"; do term_member "$i"; wait_member "$i" || true; done
            reap_wait
            if [ "$CREATED_DIR" -eq 1 ]; then
                rm -rf "$DIR"
            else # keep logs and certs of a caller's dir, drop the half-made cluster
                rm -rf "$DIR/cluster.env" "$DIR"/etcd[123] "$DIR"/etcd[123].pid
            fi
            [ "$rc" -ne 0 ] || rc=1
        fi
        exit "$rc"
    }
    trap on_fail EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    t0=$(date +%s.%N)
    "$HERE/gen-certs.sh" "$DIR/pki" >&2

    read -r -a ports <<<"$(free_ports 6)"
    [ "${#ports[@]}" -eq 6 ] || die "could not find 6 free ports on 127.0.0.1"
    for i in "${MEMBERS[@]}"; do
        printf -v "LC_CLIENT_PORT$i" '%s' "${ports[$(((i - 1) * 2))]}"
        printf -v "LC_PEER_PORT$i" '%s' "${ports[$(((i - 1) * 2 + 1))]}"
    done
    LC_TOKEN="ohno-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"

    for i in "${MEMBERS[@]}"; do
        launch_member "$i"
        write_state # record PIDs as soon as they exist
    done
    log "started members (pids $(pid_of 1), $(pid_of 2), $(pid_of 3)) in $DIR; waiting up to ${TIMEOUT}s for health"
    wait_healthy || exit 1
    STARTED=1
    trap - EXIT INT TERM
    log "healthy after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}')s"
    print_env
}

cmd_stop() {
    local i rc=0
    if [ ! -f "$DIR/cluster.env" ]; then
        log "no cluster state in $DIR; nothing to stop"
        return 0
    fi
    load_state
    # One at a time: a leader stopping while its peers are also going down spends ~5 s on
    # a leadership transfer that cannot complete; sequentially each exits in about a second.
    for i in "${MEMBERS[@]}"; do term_member "$i"; wait_member "$i" || rc=1; done
    reap_wait
    [ "$rc" -eq 0 ] || die "some members did not exit; leaving $DIR in place"
    if [ "$KEEP" -eq 1 ]; then
        log "stopped; kept $DIR"
    else
        rm -rf "$DIR"
        log "stopped; removed $DIR"
    fi
}

cmd_status() {
    local i alive
    load_state
    for i in "${MEMBERS[@]}"; do
        if is_our_member "$(pid_of "$i")" "$i"; then alive=running; else alive=stopped; fi
        log "member $i: pid $(pid_of "$i") $alive, endpoint https://127.0.0.1:$(port_client "$i")"
    done
    health
}

cmd_stop_member() {
    load_state
    kill_member "$MEMBER" || die "member $MEMBER did not exit"
    log "member $MEMBER stopped (data kept in $DIR/etcd$MEMBER)"
}

cmd_start_member() {
    load_state
    if is_our_member "$(pid_of "$MEMBER")" "$MEMBER"; then
        die "member $MEMBER is already running (pid $(pid_of "$MEMBER"))"
    fi
    [ -d "$DIR/etcd$MEMBER/member" ] || die "no data dir for member $MEMBER in $DIR"
    launch_member "$MEMBER"
    write_state
    if ! wait_healthy "$MEMBER"; then
        tail_logs "$MEMBER"
        kill_member "$MEMBER" || true
        die "member $MEMBER did not become healthy"
    fi
    log "member $MEMBER rejoined (pid $(pid_of "$MEMBER"))"
    print_env
}

case $CMD in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) load_state; print_env ;;
    stop-member) cmd_stop_member ;;
    start-member) cmd_start_member ;;
esac
