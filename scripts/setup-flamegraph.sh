#!/usr/bin/env bash
# Sub-setup of `make flamegraph`: perf (Debian's linux-perf, from scripts/setup.sh)
# and the inferno flame graph tools from crates.io. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "setup: perf missing; scripts/setup.sh installs linux-perf" >&2; exit 1; }
scripts/cargo-tool.sh inferno "${INFERNO_VERSION:-0.12.8}"
