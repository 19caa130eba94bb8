#!/usr/bin/env bash
# Sub-setup of `make fuzz`: a nightly toolchain (cargo-fuzz needs -Z flags for
# the sanitizer and coverage instrumentation) and cargo-fuzz itself. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

NIGHTLY=${FUZZ_TOOLCHAIN:-nightly}
if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1; then
    echo "setup: installing the $NIGHTLY toolchain (minimal profile)" >&2
    rustup toolchain install "$NIGHTLY" --profile minimal
fi
scripts/cargo-tool.sh cargo-fuzz "${CARGO_FUZZ_VERSION:-0.13.2}"
