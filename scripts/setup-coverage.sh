#!/usr/bin/env bash
# Sub-setup of `make coverage`: llvm-tools (llvm-profdata, llvm-cov) for the pinned
# toolchain, and cargo-llvm-cov from crates.io. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup +"$toolchain" component list --installed | grep -q '^llvm-tools-'; then
    rustup +"$toolchain" component add llvm-tools-preview
fi
scripts/cargo-tool.sh cargo-llvm-cov "${CARGO_LLVM_COV_VERSION:-0.9.1}"
