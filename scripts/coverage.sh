#!/usr/bin/env bash
# `make coverage`: line coverage of host/src over every test tier — the unit tests
# and every integration test (netns, etcd, policies, libcni), which exec the real
# `ohno`/`ohnoctl` binaries — with cargo-llvm-cov.
#
# cargo-llvm-cov builds everything with -C instrument-coverage into its own target
# dir (target/llvm-cov-target: a full instrumented rebuild, the shared debug build
# is left alone) and runs `cargo test --workspace` with LLVM_PROFILE_FILE set to
# a per-process pattern (%p, %m), which the test binaries hand down to every
# `ohno`/`ohnoctl` they spawn (through `ip netns exec`, libcni...), so each of
# those processes writes its own profile. DEL's detached link reaper clears its
# environment (commands/del.rs), so it writes the LLVM default
# `default_<...>.profraw` into its working directory (the crate root of the test
# that ran it); those are collected into the profile dir too.
#
# The report counts host/src only (not tests, benches, policies, dependencies).
# HTML: target/coverage/html/index.html; per-file table: target/coverage/summary.txt.
# Test failures are reported but do not stop the report (exit 1 at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

[[ $(id -u) -eq 0 ]] || { echo "coverage: the integration tests need root" >&2; exit 1; }
NICE=(nice -n "${OHNO_NICE:-10}")
OUT=target/coverage
IGNORE='(^|/)(policies|fuzz|target)/|/host/(tests|benches)/|/\.cargo/|/rustc/'
mkdir -p "$OUT"

t0=$SECONDS
# Stray profiles of earlier runs must not be merged into this one.
"${NICE[@]}" cargo llvm-cov clean --workspace
find "$ROOT/host" "$ROOT/policies" "$ROOT" -maxdepth 2 -name 'default_*.profraw' -delete 2>/dev/null || true
marker=$(mktemp)

echo "==> coverage: instrumented build + cargo test --workspace (all tiers)" >&2
test_rc=0
"${NICE[@]}" cargo llvm-cov --no-report --workspace --no-fail-fast 2>&1 | tee "$OUT/test.log" || test_rc=$?
t_test=$SECONDS

# Profiles the reaper wrote outside the profile dir (see above).
# (cargo llvm-cov's own LLVM_PROFILE_FILE points into its target dir.)
profdir=$ROOT/target/llvm-cov-target
moved=0
while IFS= read -r -d '' f; do
    mv -f "$f" "$profdir/reaper-$(basename "$f")"
    moved=$((moved + 1))
done < <(find "$ROOT" -maxdepth 3 -path "$ROOT/target" -prune -o -name 'default_*.profraw' -newer "$marker" -print0)
rm -f "$marker"
echo "    $moved profile(s) of detached reapers collected" >&2

echo "==> coverage: report (host/src)" >&2
"${NICE[@]}" cargo llvm-cov report --ignore-filename-regex "$IGNORE" --html --output-dir "$OUT"
"${NICE[@]}" cargo llvm-cov report --ignore-filename-regex "$IGNORE" --summary-only >"$OUT/summary.txt"
"${NICE[@]}" cargo llvm-cov report --ignore-filename-regex "$IGNORE" --json --summary-only >"$OUT/summary.json"
sed -e "s|$ROOT/||" "$OUT/summary.txt" >&2
total=$(jq -r '.data[0].totals.lines | "\(.covered)/\(.count) lines = \(.percent*100|floor/100)%"' "$OUT/summary.json")
echo "coverage: host/src line coverage $total (tests $((t_test - t0)) s, all $((SECONDS - t0)) s; HTML $OUT/html/index.html)"
if ((test_rc != 0)); then
    echo "coverage: some tests failed under instrumentation (exit $test_rc); see $OUT/test.log" >&2
    grep -E '^test .* FAILED$|^    [a-z_:]+$|^error: test failed' "$OUT/test.log" | head -n 40 >&2 || true
    exit 1
fi
