#!/usr/bin/env bash
# Builds the images compose.yaml needs from this machine's own Debian binaries, for
# machines whose Docker engine has no registry to pull from.
#
#   local-images.sh build    build what is missing; print OHNO_ETCD_IMAGE=… and OHNO_RUST_IMAGE=…
#   local-images.sh list     print the local images present (any key)
#   local-images.sh remove   remove every image this script ever built
#
# Two images, each a `docker import` of a root filesystem assembled here (no base
# image, no network):
#   ohno-local/etcd:<etcd version>-<key>  etcd and etcdctl at /usr/local/bin (the paths
#                                         of quay.io/coreos/etcd), busybox, glibc
#   ohno-local/dev:<key>                  busybox sh, openssl, etcdctl, iproute2's ip, and
#                                         the glibc libraries a Rust binary links (the
#                                         debug binaries of target/ run in it); it serves
#                                         both `certgen` and `dev` (OHNO_RUST_IMAGE)
# The files come from Debian packages: etcd-server, etcd-client, openssl, iproute2,
# busybox-static (scripts/setup.sh installs them). <key> is the first 12 hex digits of
# a sha256 over this script and every file copied in (path and contents), so an image
# is built only when missing and rebuilt when a package changes; older keys of the
# same image are removed when a new one is built.
#
# The images are of this machine's architecture only (`uname -m`).
set -euo pipefail

log() { echo "local-images: $*" >&2; }
die() { log "error: $*"; exit 1; }

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
LABEL=org.ohno.local-image

# Binaries per image (absolute host paths) and where they go in the image.
ETCD_FILES=(/usr/bin/etcd:/usr/local/bin/etcd /usr/bin/etcdctl:/usr/local/bin/etcdctl)
DEV_FILES=(/usr/bin/etcdctl:/usr/local/bin/etcdctl /usr/bin/openssl:/usr/bin/openssl
    /usr/bin/ip:/usr/bin/ip /etc/ssl/openssl.cnf:/etc/ssl/openssl.cnf)
# What any Rust binary built against this glibc may link (ohno's debug binaries
# run in the dev image), found by name in the dynamic linker's cache.
RUST_LIBS=(libgcc_s.so.1 libm.so.6 libc.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libutil.so.1)

need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found ($2)"; }

# The shared libraries BINARY loads (ldd), as absolute paths, including the loader.
libs_of() {
    ldd "$1" 2>/dev/null | awk '
        $2 == "=>" && $3 ~ /^\// { print $3 }
        $1 ~ /^\// { print $1 }'
}

lib_path() { # lib_path NAME -> absolute path from ldconfig's cache (this arch)
    ldconfig -p | awk -v n="$1" '$1 == n && $NF ~ /^\// { print $NF; exit }'
}

# The list "host-path:image-path" of everything in image ROLE (etcd or dev), sorted.
manifest() {
    local role=$1 entry src libs=() lib name
    local -a files
    if [ "$role" = etcd ]; then files=("${ETCD_FILES[@]}"); else files=("${DEV_FILES[@]}"); fi
    files+=(/bin/busybox:/bin/busybox)
    for entry in "${files[@]}"; do
        src=${entry%%:*}
        [ -e "$src" ] || die "$src is missing (scripts/setup.sh installs it)"
        echo "$entry"
        case $src in /etc/*|/bin/busybox) continue ;; esac
        mapfile -t libs < <(libs_of "$src")
        for lib in "${libs[@]}"; do echo "$lib:$lib"; done
    done
    if [ "$role" = dev ]; then
        for name in "${RUST_LIBS[@]}"; do
            lib=$(lib_path "$name")
            [ -n "$lib" ] || die "$name not in the dynamic linker's cache"
            echo "$lib:$lib"
        done
    fi
}

# key ROLE: sha256 over this script and every file of the image (path + contents).
key_of() {
    local role=$1 entry
    {
        echo "role $role arch $(uname -m)"
        sha256sum "$SELF" | cut -d' ' -f1
        while IFS= read -r entry; do
            echo "$entry $(sha256sum "$(readlink -f "${entry%%:*}")" | cut -d' ' -f1)"
        done < <(manifest "$role" | sort -u)
    } | sha256sum | cut -c1-12
}

etcd_version() {
    /usr/bin/etcd --version 2>/dev/null | awk '/^etcd Version:/ { print $3; exit }'
}

image_ref() { # image_ref ROLE KEY
    if [ "$1" = etcd ]; then echo "ohno-local/etcd:$(etcd_version)-$2"; else echo "ohno-local/dev:$2"; fi
}

# Assemble ROLE's root filesystem in DIR.
assemble() {
    local role=$1 dir=$2 entry src dst applet
    mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,tmp,root,run,var/lib,lib64}
    chmod 1777 "$dir/tmp"
    ln -s ../run "$dir/var/run" # as on Debian: /var/run/netns is /run/netns
    chmod 700 "$dir/root"
    while IFS= read -r entry; do
        src=${entry%%:*} dst=${entry#*:}
        mkdir -p "$dir$(dirname "$dst")"
        cp -L "$src" "$dir$dst"
    done < <(manifest "$role" | sort -u)
    # busybox applets as symlinks in /bin, except where a real binary is installed.
    while IFS= read -r applet; do
        [ -n "$applet" ] || continue
        for d in bin usr/bin usr/local/bin; do
            [ -e "$dir/$d/$applet" ] && continue 2
        done
        ln -s busybox "$dir/bin/$applet"
    done < <(/bin/busybox --list)
    if [ "$role" = dev ]; then
        mkdir -p "$dir/usr/lib/ssl"
        ln -s /etc/ssl/openssl.cnf "$dir/usr/lib/ssl/openssl.cnf"
        mkdir -p "$dir/run/netns" "$dir/src"
    fi
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
        >"$dir/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/etc/group"
    printf 'hosts: files dns\n' >"$dir/etc/nsswitch.conf"
}

build_one() { # build_one ROLE -> prints the image reference
    local role=$1 key ref dir old
    key=$(key_of "$role")
    ref=$(image_ref "$role" "$key")
    if docker image inspect "$ref" >/dev/null 2>&1; then
        log "$ref is present"
        echo "$ref"
        return 0
    fi
    log "building $ref"
    dir=$(mktemp -d "${TMPDIR:-/tmp}/ohno-image.XXXXXX")
    # shellcheck disable=SC2064 # expand dir now: the trap outlives this function's locals
    trap "rm -rf '$dir'" EXIT
    assemble "$role" "$dir/rootfs"
    tar --numeric-owner --owner=0 --group=0 -C "$dir/rootfs" -cf - . |
        docker import \
            --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
            --change "LABEL $LABEL=$role $LABEL.key=$key" \
            --change 'CMD ["/bin/sh"]' \
            - "$ref" >/dev/null
    rm -rf "$dir"
    trap - EXIT
    # Older keys of this image are superseded.
    while IFS= read -r old; do
        [ -n "$old" ] && [ "$old" != "$ref" ] || continue
        log "removing superseded $old"
        docker image rm "$old" >/dev/null 2>&1 || log "could not remove $old (in use?)"
    done < <(docker image ls --filter "label=$LABEL=$role" --format '{{.Repository}}:{{.Tag}}')
    echo "$ref"
}

cmd_build() {
    need docker "Docker Engine"
    need ldd "libc-bin"
    docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"
    local etcd dev
    etcd=$(build_one etcd)
    dev=$(build_one dev)
    echo "OHNO_ETCD_IMAGE=$etcd"
    echo "OHNO_RUST_IMAGE=$dev"
}

cmd_list() {
    docker image ls --filter "label=$LABEL" --format '{{.Repository}}:{{.Tag}} {{.Size}}'
}

cmd_remove() {
    local ref
    while IFS= read -r ref; do
        [ -n "$ref" ] || continue
        docker image rm "$ref" >/dev/null && log "removed $ref"
    done < <(docker image ls --filter "label=$LABEL" --format '{{.Repository}}:{{.Tag}}')
}

case ${1:-} in
    build) cmd_build ;;
    list) cmd_list ;;
    remove) cmd_remove ;;
    *) sed -n '2,8p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
