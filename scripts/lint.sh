#!/usr/bin/env bash
# `make lint`: rustfmt and clippy (-D warnings) over everything that ships:
#   1. cargo fmt --all --check
#   2. clippy of the whole workspace, every target (host crate with its default
#      features etcd + wasm, policies and fixtures as native crates, tests, benches)
#   3. clippy of the policy crates as what they really are: wasm32-wasip2 components
#   4. clippy of the CNI core alone (`ohno` lib with --no-default-features, what the
#      fuzz targets build against), so code behind the features cannot hide dead or
#      feature-dependent code from the lint
# Every step runs even when an earlier one fails; the exit code is non-zero if any
# failed, and the summary names which. The fuzz crate (fuzz/, its own workspace)
# is formatted and linted by step 1 only through `cargo fmt` run inside fuzz/.
set -uo pipefail

cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
NICE=(nice -n "${OHNO_NICE:-10}")

POLICY_CRATES=(-p namespace-pools -p annotation-pool -p sticky-statefulset -p no-quick-reuse -p pod-ifname -p ohno-policy-sdk)

failed=()
step() {
    local name=$1
    shift
    echo "==> lint: $name" >&2
    local t0=$SECONDS
    if "${NICE[@]}" "$@"; then
        echo "    ok ($((SECONDS - t0)) s)" >&2
    else
        echo "    FAILED ($((SECONDS - t0)) s): $*" >&2
        failed+=("$name")
    fi
}

step "rustfmt" "$CARGO" fmt --all --check
if [[ -f fuzz/Cargo.toml ]]; then
    step "rustfmt (fuzz/)" "$CARGO" fmt --manifest-path fuzz/Cargo.toml --all --check
fi
step "clippy workspace (all targets, default features)" \
    "$CARGO" clippy --workspace --all-targets -- -D warnings
step "clippy policies (wasm32-wasip2)" \
    "$CARGO" clippy --target wasm32-wasip2 "${POLICY_CRATES[@]}" -- -D warnings
step "clippy ohno lib (--no-default-features: the CNI core)" \
    "$CARGO" clippy -p ohno --lib --no-default-features -- -D warnings

if ((${#failed[@]})); then
    echo "lint: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "lint: all clean" >&2
