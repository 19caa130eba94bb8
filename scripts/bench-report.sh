#!/usr/bin/env bash
# Collects the benches' reports (target/bench/*.md) into docs/bench/ with the
# ADD-latency chart, so the numbers of the last `make bench` are committed with
# the machine they ran on.
set -euo pipefail
cd "$(dirname "$0")/.."

out=docs/bench
mkdir -p "$out"
samples=()
for f in target/bench/samples.json target/bench/policy-samples.json; do
    [[ -f $f ]] && samples+=("$f")
done
python3 scripts/bench-chart.py "$out/add-latency.png" "${samples[@]}"
{
    echo "# Benchmark report"
    echo
    echo "Written by \`make bench\` on $(date -u +%Y-%m-%d) — $(nproc) cores, kernel $(uname -r),"
    echo "$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)."
    echo
    echo "![ADD latency by configuration](add-latency.png)"
    echo
    for f in target/bench/report.md target/bench/policy.md target/bench/cri.md target/bench/cross-node.md; do
        if [[ -f $f ]]; then
            # Demote the reports' own titles one level.
            sed -E 's/^(#+) /#\1 /' "$f"
            echo
        fi
    done
} >"$out/README.md"
echo "bench: wrote $out/README.md and $out/add-latency.png"
