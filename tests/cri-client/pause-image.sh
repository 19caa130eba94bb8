#!/usr/bin/env bash
# Builds a pause (sandbox) image with no registry, from Debian's busybox-static:
# a one-layer image whose root holds /bin/busybox and whose entrypoint sleeps
# until killed, written as a `docker save` archive that
# `ctr -n k8s.io images import` reads.
#
#   pause-image.sh OUT.tar [NAME]      NAME defaults to localhost/ohno-pause:1
#
# The layer is reproducible (sorted names, mtime 0, uid/gid 0), so the same
# busybox gives the same image id.
set -euo pipefail

out=${1:?usage: pause-image.sh OUT.tar [NAME]}
name=${2:-localhost/ohno-pause:1}
busybox=/bin/busybox

if [[ ! -x $busybox ]]; then
    echo "pause-image: $busybox is missing (install busybox-static)" >&2
    exit 1
fi
# The image holds nothing but busybox, so it must be the static one.
if ldd "$busybox" >/dev/null 2>&1; then
    echo "pause-image: $busybox is dynamically linked (install busybox-static)" >&2
    exit 1
fi

case $(uname -m) in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) arch=$(uname -m) ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/image"
cp "$busybox" "$work/rootfs/bin/busybox"
chmod 0755 "$work/rootfs/bin/busybox"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -C "$work/rootfs" -cf "$work/layer.tar" .
layer=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
mkdir "$work/image/$layer"
mv "$work/layer.tar" "$work/image/$layer/layer.tar"

# The image config: what runs (PID 1 of the sandbox, sleeping ~68 years) and
# the layer's uncompressed digest.
printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":["/bin/busybox","sleep","2147483647"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$arch" "$layer" >"$work/config.json"
config=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mv "$work/config.json" "$work/image/$config.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
    "$config" "$name" "$layer" >"$work/image/manifest.json"

tmp="$out.tmp-$$"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/image" -cf "$tmp" .
mv "$tmp" "$out"
echo "sha256:$config"
