#!/usr/bin/env bash
# Installs what building, testing, demoing and benchmarking Ohno need.
# Idempotent and fast when already done: apt runs only for missing packages,
# and `apt-get update` only when something is missing.
set -euo pipefail

cd "$(dirname "$0")/.."

# Debian packages:
#   nftables                    masquerade rules (ipMasq) and their tests
#   etcd-server etcd-client     the etcd store backend and its integration tests
#   containernetworking-plugins reference plugins in /usr/lib/cni (bridge, host-local,
#                               portmap, tuning, ...) for chaining tests and the benchmark
#   golang-go golang-github-appc-cni-dev  libcni, built offline, as a real CNI client
#   protobuf-compiler libprotobuf-dev  etcd client code generation: protoc, and the
#                               well-known types it imports (google/protobuf/*.proto),
#                               which protoc does not ship (only a Recommends, and
#                               we install without recommends)
#   iproute2 iputils-ping       netns integration tests, demo
#   openssl                     certificates for the mTLS etcd cluster
#   valgrind linux-perf         memcheck and flamegraph targets
#   jq                          the demo script
#   curl                        the agent's /metrics in the cross-node tests and the demo
#   iperf3                      pod-to-pod throughput across nodes in the cross-node bench
#   containerd runc busybox-static  the kubelet's path (CRI -> containerd -> ohno) in the
#                               CRI test and bench: containerd 1.6 with its CRI plugin, its
#                               runc shim, and the static busybox the pause image is built from
#                               (protoc above also generates the CRI client)
PACKAGES=(
    nftables etcd-server etcd-client containernetworking-plugins
    golang-go golang-github-appc-cni-dev protobuf-compiler libprotobuf-dev
    iproute2 iputils-ping openssl valgrind linux-perf jq curl iperf3
    containerd runc busybox-static
)
# Docker's containerd.io package ships containerd, ctr, the runc shim and runc,
# and conflicts with Debian's containerd and runc: where it is installed, the CRI
# tests use it as it is.
if [[ $(dpkg -s containerd.io 2>/dev/null || true) == *"Status: install ok installed"* ]]; then
    kept=()
    for pkg in "${PACKAGES[@]}"; do
        [[ $pkg == containerd || $pkg == runc ]] || kept+=("$pkg")
    done
    PACKAGES=("${kept[@]}")
fi

# myclusters/devenv.sh (make devenv and its test in make test): busybox-static is the
# shell of the images myclusters/local-images.sh builds; Debian's docker-compose (v1)
# only where the docker CLI has no compose plugin. Docker Engine itself is the
# machine's business: without one answering, that test skips.
PACKAGES+=(busybox-static)
if command -v docker >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
    PACKAGES+=(docker-compose)
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    # Captured, not piped into `grep -q`: an early-exiting grep can SIGPIPE
    # dpkg, and pipefail would then call an installed package missing.
    status=$(dpkg -s "$pkg" 2>/dev/null || true)
    if [[ $status != *"Status: install ok installed"* ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Python: kubernetes-validate (with PyYAML and jsonschema) validates the
# Kubernetes manifests offline against a pinned version's schemas
# (scripts/check-manifests.py, a test of `make test`).
if ! python3 -c "import kubernetes_validate, yaml" 2>/dev/null; then
    echo "setup: installing kubernetes-validate from PyPI" >&2
    python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0"
fi

# Debian installs the reference plugins here; tests and the bench rely on it.
if [[ ! -x /usr/lib/cni/bridge || ! -x /usr/lib/cni/host-local ]]; then
    echo "setup: reference CNI plugins not found in /usr/lib/cni" >&2
    echo "       (dpkg -L containernetworking-plugins lists where they went)" >&2
    exit 1
fi

# Rust: the toolchain pinned in rust-toolchain.toml, its components and targets.
if ! command -v rustup >/dev/null 2>&1; then
    echo "setup: rustup not found; install it from https://rustup.rs" >&2
    exit 1
fi
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
toolchains=$(rustup toolchain list)
if ! grep -q "^${toolchain}-" <<<"$toolchains"; then
    rustup toolchain install "$toolchain" --profile minimal
fi
installed_components=$(rustup +"$toolchain" component list --installed)
for component in rustfmt clippy; do
    if ! grep -q "^${component}-" <<<"$installed_components"; then
        rustup +"$toolchain" component add "$component"
    fi
done
installed_targets=$(rustup +"$toolchain" target list --installed)
if ! grep -qx wasm32-wasip2 <<<"$installed_targets"; then
    rustup +"$toolchain" target add wasm32-wasip2
fi
