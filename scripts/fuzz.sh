#!/usr/bin/env bash
# `make fuzz`: libFuzzer (cargo-fuzz, nightly, AddressSanitizer) on the parsers
# that take what a container runtime hands the plugin. Targets (fuzz/fuzz_targets):
#   netconf   NetConf::parse of arbitrary stdin bytes (+ the version/logging peeks)
#   cni_args  CniArgs::parse of an arbitrary CNI_ARGS string
#   result    CniResult::parse of arbitrary JSON, to_json in every supported
#             version and parse again: must round-trip
#   version   Version::parse / require_supported / negotiate
#   frame     helper::receive (the helpers' socket framing) on arbitrary bytes:
#             no panic, no allocation past the bytes received, round-trips
# Each runs for FUZZ_SECONDS (default 60). FUZZ_TARGETS picks a subset.
# The corpus grows in target/fuzz/corpus/<target> (seeded from fuzz/seeds/<target>);
# a crash, leak, timeout or failed assertion leaves its input in
# target/fuzz/artifacts/<target>/ and makes the script exit 1 after all targets ran.
# Reproduce one: cargo +nightly fuzz run --fuzz-dir fuzz --target-dir target/fuzz/build TARGET FILE
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
NIGHTLY=${FUZZ_TOOLCHAIN:-nightly}
read -r -a TARGETS <<<"${FUZZ_TARGETS:-netconf cni_args result version frame}"
NICE=(nice -n "${OHNO_NICE:-10}")
OUT=target/fuzz
BUILD_DIR=$OUT/build
mkdir -p "$OUT"

FUZZ=(cargo "+$NIGHTLY" fuzz)
COMMON=(--fuzz-dir fuzz --target-dir "$BUILD_DIR")

t0=$SECONDS
echo "==> fuzz: building ${TARGETS[*]} (nightly, ASan, ohno without default features)" >&2
for t in "${TARGETS[@]}"; do
    "${NICE[@]}" "${FUZZ[@]}" build "${COMMON[@]}" "$t"
done
echo "    built in $((SECONDS - t0)) s" >&2

summary=()
failed=()
for t in "${TARGETS[@]}"; do
    corpus=$OUT/corpus/$t
    artifacts=$OUT/artifacts/$t
    log=$OUT/$t.log
    mkdir -p "$corpus" "$artifacts"
    dirs=("$corpus")
    [[ -d fuzz/seeds/$t ]] && dirs+=("fuzz/seeds/$t")
    opts=(-max_total_time="$FUZZ_SECONDS" -timeout=10 -print_final_stats=1
          -artifact_prefix="$artifacts/")
    case $t in netconf|result) opts+=(-dict=fuzz/json.dict) ;; esac
    echo "==> fuzz: $t for ${FUZZ_SECONDS} s (log $log)" >&2
    status=0
    "${NICE[@]}" "${FUZZ[@]}" run "${COMMON[@]}" "$t" "${dirs[@]}" -- "${opts[@]}" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | awk '{print $2}')
    units=$(find "$corpus" -type f | wc -l)
    if ((status != 0)); then
        failed+=("$t")
        verdict="FAILED (exit $status)"
        grep -E '^(==[0-9]+==ERROR|thread .* panicked|SUMMARY|.*Test unit written to)' "$log" | head -n 20 >&2 || true
    else
        verdict=ok
    fi
    summary+=("$(printf '%-9s %-18s execs %-10s exec/s %-7s cov %-6s corpus %s' \
        "$t" "$verdict" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$units")")
done

echo "==> fuzz summary (${FUZZ_SECONDS} s per target, $((SECONDS - t0)) s in all)" >&2
printf '    %s\n' "${summary[@]}" >&2
if ((${#failed[@]})); then
    echo "fuzz: FAILED: ${failed[*]}; inputs in $OUT/artifacts/<target>/" >&2
    exit 1
fi
