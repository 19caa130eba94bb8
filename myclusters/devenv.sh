#!/usr/bin/env bash
# The compose environment of compose.yaml, brought up and torn down as one thing.
#
#   devenv.sh up      [--dir DIR] [--project NAME] [--images local|public] [--ports default|free]
#   devenv.sh down    [--dir DIR] [--rmi] [--keep]
#   devenv.sh health  [--dir DIR]          the etcdctl health table of the three members
#   devenv.sh compose [--dir DIR] -- ARGS  docker compose ARGS with this environment's settings
#   devenv.sh env     [--dir DIR]          the settings (KEY=VALUE)
#
# up: sets OHNO_CERT_DIR, OHNO_ETCD{1,2,3}_DATA_DIR (DIR/pki, DIR/etcdN), OHNO_REPO (this
# repository) and OHNO_ARCH (default: this machine's), picks the images (local: built from
# this machine's Debian binaries by local-images.sh, the default; public: compose.yaml's
# defaults or OHNO_ETCD_IMAGE / OHNO_RUST_IMAGE, pulled), runs `up -d` under the compose
# project NAME, and waits until the health check reports three healthy members
# (OHNO_DEVENV_TIMEOUT seconds, default 120). Settings go to DIR/devenv.env, which every
# other command reads. If up fails, what it started is taken down again.
# down: removes the project's containers, networks and volumes, then DIR (unless --keep);
# --rmi also removes the local images (local-images.sh remove).
#
# DIR defaults to $OHNO_DEVENV_DIR, then ${TMPDIR:-/tmp}/ohno-devenv; NAME to
# $OHNO_DEVENV_PROJECT, then ohno-devenv. --ports free publishes the members' client
# ports on free loopback ports instead of 23791..23793 (or OHNO_ETCDn_PORT).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
COMPOSE_FILE=$HERE/compose.yaml
TIMEOUT=${OHNO_DEVENV_TIMEOUT:-120}
# The health check, run inside a member's container: etcdctl is at /usr/local/bin in
# the quay.io image (distroless: no shell to find it) and in the local one.
HEALTH_ARGS=(/usr/local/bin/etcdctl --endpoints=https://etcd1:2379,https://etcd2:2379,https://etcd3:2379
    --cacert=/etc/etcd/pki/ca.pem --cert=/etc/etcd/pki/etcd.pem --key=/etc/etcd/pki/etcd-key.pem
    --write-out=table endpoint health)

log() { echo "devenv: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# ---------------------------------------------------------------- arguments
CMD=${1:-}
[ -n "$CMD" ] || usage
shift
DIR=${OHNO_DEVENV_DIR:-${TMPDIR:-/tmp}/ohno-devenv}
PROJECT=${OHNO_DEVENV_PROJECT:-ohno-devenv}
IMAGES=${OHNO_DEVENV_IMAGES:-local}
PORTS=default
RMI=0
KEEP=0
PASS=()
while [ $# -gt 0 ]; do
    case $1 in
        --dir) [ $# -ge 2 ] || usage; DIR=$2; shift 2 ;;
        --project) [ $# -ge 2 ] || usage; PROJECT=$2; shift 2 ;;
        --images) [ $# -ge 2 ] || usage; IMAGES=$2; shift 2 ;;
        --ports) [ $# -ge 2 ] || usage; PORTS=$2; shift 2 ;;
        --rmi) RMI=1; shift ;;
        --keep) KEEP=1; shift ;;
        --) shift; PASS=("$@"); break ;;
        -h|--help) usage ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done
case $IMAGES in local|public) ;; *) die "--images is local or public, not '$IMAGES'" ;; esac
case $PORTS in default|free) ;; *) die "--ports is default or free, not '$PORTS'" ;; esac
[[ $PROJECT =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "project name '$PROJECT': lower-case letters, digits, '-', '_'"
case $DIR in /*) ;; *) DIR=$PWD/$DIR ;; esac
case $DIR in *[[:space:]]*) die "DIR must not contain whitespace: '$DIR'" ;; esac
STATE=$DIR/devenv.env

# ---------------------------------------------------------------- docker
# `docker compose` (v2) when the CLI has it, else `docker-compose` (v1, Debian 12's).
COMPOSE_CMD=()
pick_compose() {
    if docker compose version >/dev/null 2>&1; then
        COMPOSE_CMD=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        COMPOSE_CMD=(docker-compose)
    else
        die "neither 'docker compose' nor 'docker-compose' is installed"
    fi
}

engine_answers() {
    command -v docker >/dev/null 2>&1 || die "docker not found (install Docker Engine)"
    docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"
}

# compose ARGS...: docker compose with the state's environment and project.
compose() {
    (
        set -a
        # shellcheck disable=SC1090
        . "$STATE"
        set +a
        "${COMPOSE_CMD[@]}" -f "$COMPOSE_FILE" -p "$COMPOSE_PROJECT_NAME" "$@"
    )
}

load_state() {
    [ -f "$STATE" ] || die "no environment in $DIR (devenv.env missing; run devenv.sh up)"
    # shellcheck disable=SC1090
    . "$STATE"
    PROJECT=$COMPOSE_PROJECT_NAME
    read -r -a COMPOSE_CMD <<<"$OHNO_DEVENV_COMPOSE"
}

# ---------------------------------------------------------------- checks
arch_name() { # normalise an architecture name to uname -m's spelling
    case $1 in
        x86_64|amd64) echo x86_64 ;;
        aarch64|arm64) echo aarch64 ;;
        *) echo "$1" ;;
    esac
}

check_arch() {
    local want host
    want=$(arch_name "${OHNO_ARCH:-$(uname -m)}")
    host=$(arch_name "$(uname -m)")
    case $want in x86_64|aarch64) ;; *) die "OHNO_ARCH=$want: compose.yaml knows x86_64 and aarch64" ;; esac
    if [ "$want" != "$host" ]; then
        if [ "$IMAGES" = local ]; then
            die "OHNO_ARCH=$want, but this machine is $host: the local images are built from this machine's own $host binaries. Unset OHNO_ARCH, or use --images public on a machine that can run $want images"
        fi
        if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$want" ]; then
            die "OHNO_ARCH=$want, but this machine is $host and has no qemu-$want binfmt handler to run $want images (install qemu-user-static, or unset OHNO_ARCH)"
        fi
    fi
    OHNO_ARCH=$want
}

# free_ports COUNT (shared with local-cluster.sh)
# shellcheck source=lib-ports.sh
. "$HERE/lib-ports.sh"

# Images for --images public must be present or pullable; say so before compose does.
check_public_image() {
    local ref=$1
    docker image inspect "$ref" >/dev/null 2>&1 && return 0
    log "pulling $ref"
    docker pull --platform "linux/$OHNO_ARCH" "$ref" >&2 ||
        die "$ref is not present and cannot be pulled; use --images local (images built from this machine's Debian packages)"
}

# ---------------------------------------------------------------- health
# The first running etcd member's service name (the health check runs in it).
running_member() {
    local running s
    running=$(compose ps --services --filter status=running 2>/dev/null) || return 1
    for s in etcd1 etcd2 etcd3; do
        if grep -qx "$s" <<<"$running"; then echo "$s"; return 0; fi
    done
    return 1
}

# Print the health table (from inside a running member); the exit status is etcdctl's.
health_table() {
    local member
    member=$(running_member) || { log "no etcd member is running"; return 1; }
    compose exec -T "$member" "${HEALTH_ARGS[@]}"
}

wait_healthy() {
    local deadline=$((SECONDS + TIMEOUT)) table healthy
    while :; do
        table=$(health_table 2>&1) || true
        healthy=$(grep -cE '^\| *https://etcd[123]:2379 *\| *true *\|' <<<"$table" || true)
        [ "$healthy" -eq 3 ] && { echo "$table" >&2; return 0; }
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "not 3 healthy members after ${TIMEOUT}s:"
            echo "$table" >&2
            return 1
        fi
        sleep 1
    done
}

# ---------------------------------------------------------------- clean-up
# Everything of the project that is still there, by compose's project label.
leftovers() {
    local label="label=com.docker.compose.project=$PROJECT"
    docker ps -aq --filter "$label" | sed 's/^/container /'
    docker network ls -q --filter "$label" | sed 's/^/network /'
    docker volume ls -q --filter "$label" | sed 's/^/volume /'
}

take_down() {
    local rc=0 kind id
    compose down --volumes --remove-orphans --timeout 10 >&2 || rc=1
    # Anything compose missed (a container created outside its view): by label, ours only.
    while read -r kind id; do
        [ -n "$id" ] || continue
        log "removing leftover $kind $id"
        case $kind in
            container) docker rm -f -v "$id" >/dev/null || rc=1 ;;
            network) docker network rm "$id" >/dev/null || rc=1 ;;
            volume) docker volume rm "$id" >/dev/null || rc=1 ;;
        esac
    done < <(leftovers)
    [ -z "$(leftovers)" ] || { log "left behind: $(leftovers | tr '\n' ' ')"; rc=1; }
    return "$rc"
}

# up failed after writing its state: take down what it started, and remove DIR if up
# made it (a directory the caller had stays, without the state).
up_failed() {
    log "up failed; taking down what it started"
    compose logs --no-color --tail 10 >&2 || true
    if take_down && [ "$CREATED_DIR" -eq 1 ]; then
        rm -rf "$DIR"
    else
        rm -f "$STATE"
    fi
}

# ---------------------------------------------------------------- commands
cmd_up() {
    engine_answers
    pick_compose
    check_arch
    if [ -f "$STATE" ]; then
        die "an environment is recorded in $DIR; devenv.sh down --dir $DIR first"
    fi

    local etcd_image rust_image ports=() i
    if [ "$IMAGES" = local ]; then
        local built
        built=$("$HERE/local-images.sh" build) || die "building the local images failed"
        etcd_image=$(sed -n 's/^OHNO_ETCD_IMAGE=//p' <<<"$built")
        rust_image=$(sed -n 's/^OHNO_RUST_IMAGE=//p' <<<"$built")
    else
        etcd_image=${OHNO_ETCD_IMAGE:-quay.io/coreos/etcd:v3.5.17}
        rust_image=${OHNO_RUST_IMAGE:-docker.io/library/rust:1-bookworm}
        check_public_image "$etcd_image"
        check_public_image "$rust_image"
    fi
    if [ "$PORTS" = free ]; then
        read -r -a ports <<<"$(free_ports 3)"
    else
        ports=("${OHNO_ETCD1_PORT:-23791}" "${OHNO_ETCD2_PORT:-23792}" "${OHNO_ETCD3_PORT:-23793}")
    fi
    [ "${#ports[@]}" -eq 3 ] || die "could not pick three loopback ports"

    # A privileged dev container where the engine can make one (OHNO_DEV_PRIVILEGED
    # decides when set); a sandboxed engine refuses the full capability set.
    local privileged=${OHNO_DEV_PRIVILEGED:-}
    if [ -z "$privileged" ]; then
        if docker run --rm --privileged --network none --entrypoint true "$rust_image" >/dev/null 2>&1; then
            privileged=true
        else
            privileged=false
            log "this engine cannot run privileged containers; the dev container gets NET_ADMIN and SYS_ADMIN"
        fi
    fi

    CREATED_DIR=0
    [ -e "$DIR" ] || CREATED_DIR=1
    mkdir -p "$DIR/pki"
    for i in 1 2 3; do
        mkdir -p "$DIR/etcd$i"
        chmod 700 "$DIR/etcd$i" # etcd refuses a data dir open to others
    done
    {
        echo "COMPOSE_PROJECT_NAME=$PROJECT"
        echo "OHNO_DEVENV_COMPOSE='${COMPOSE_CMD[*]}'"
        echo "OHNO_DEVENV_IMAGES=$IMAGES"
        echo "OHNO_REPO=$REPO"
        echo "OHNO_ARCH=$OHNO_ARCH"
        echo "OHNO_CERT_DIR=$DIR/pki"
        for i in 1 2 3; do echo "OHNO_ETCD${i}_DATA_DIR=$DIR/etcd$i"; done
        for i in 1 2 3; do echo "OHNO_ETCD${i}_PORT=${ports[$((i - 1))]}"; done
        echo "OHNO_ETCD_IMAGE=$etcd_image"
        echo "OHNO_RUST_IMAGE=$rust_image"
        echo "OHNO_DEV_PRIVILEGED=$privileged"
        echo "OHNO_UID=${OHNO_UID:-0}"
        echo "OHNO_GID=${OHNO_GID:-0}"
    } >"$STATE.tmp"
    mv -f "$STATE.tmp" "$STATE"

    trap 'rc=$?; trap - EXIT; [ "$rc" -eq 0 ] || up_failed; exit "$rc"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    log "project $PROJECT in $DIR: etcd $etcd_image, dev $rust_image, ports ${ports[*]}"
    compose up -d >&2
    wait_healthy
    trap - EXIT INT TERM
    cat >&2 <<EOF
devenv: up. Three healthy members; the dev container has the repository at /src.
  enter it:     $HERE/devenv.sh compose --dir $DIR -- exec dev sh
  health:       $HERE/devenv.sh health --dir $DIR
  from here:    https://127.0.0.1:${ports[0]},https://127.0.0.1:${ports[1]},https://127.0.0.1:${ports[2]} with $DIR/pki/client.pem
  take down:    $HERE/devenv.sh down --dir $DIR   (make devenv-down)
EOF
}

cmd_down() {
    if [ ! -f "$STATE" ]; then
        log "no environment recorded in $DIR; nothing to take down"
    else
        engine_answers
        load_state
        take_down || die "could not remove everything of project $PROJECT (see above); $DIR kept"
        log "project $PROJECT removed"
        if [ "$KEEP" -eq 0 ]; then
            rm -rf "$DIR"
            log "removed $DIR"
        fi
    fi
    if [ "$RMI" -eq 1 ]; then
        "$HERE/local-images.sh" remove
    fi
}

case $CMD in
    up) cmd_up ;;
    down) cmd_down ;;
    health) load_state; health_table ;;
    compose) load_state; compose "${PASS[@]}" ;;
    env) load_state; grep -v '^OHNO_DEVENV_COMPOSE=' "$STATE" ;;
    *) log "unknown command: $CMD"; usage ;;
esac
