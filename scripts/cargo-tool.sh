#!/usr/bin/env bash
# cargo-tool.sh CRATE VERSION: install a tool from crates.io at exactly VERSION
# (with the crate's own Cargo.lock: --locked) unless `cargo install --list`
# already has that version. Idempotent; used by the sub-setups of `make fuzz`,
# `make flamegraph` and `make coverage`.
set -euo pipefail
crate=$1 version=$2
if cargo install --list | grep -qx "$crate v$version:"; then
    exit 0
fi
echo "setup: cargo install $crate@$version (a one-time build)" >&2
nice -n "${OHNO_NICE:-10}" cargo install --locked --version "=$version" "$crate"
