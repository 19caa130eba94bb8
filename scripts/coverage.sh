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
# A profile that llvm-profdata cannot read (a process killed while writing it,
# e.g. a plugin the harness kills on timeout) is set aside and counted, not merged.
# COVERAGE_REPORT_ONLY=1 skips the build and the tests and reports on the
# profiles already in target/llvm-cov-target.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

[[ $(id -u) -eq 0 ]] || { echo "coverage: the integration tests need root" >&2; exit 1; }
NICE=(nice -n "${OHNO_NICE:-10}")
OUT=target/coverage
IGNORE='(^|/)(policies|fuzz|target)/|/host/(tests|benches)/|/\.cargo/|/rustc/'
mkdir -p "$OUT"

t0=$SECONDS
profdir=$ROOT/target/llvm-cov-target   # cargo llvm-cov's own LLVM_PROFILE_FILE points here
test_rc=0
if [[ ${COVERAGE_REPORT_ONLY:-0} != 1 ]]; then
    # Stray profiles of earlier runs must not be merged into this one.
    "${NICE[@]}" cargo llvm-cov clean --workspace
    find "$ROOT/host" "$ROOT/policies" "$ROOT" -maxdepth 2 -name 'default_*.profraw' -delete 2>/dev/null || true
    marker=$(mktemp)

    echo "==> coverage: instrumented build + cargo test --workspace (all tiers)" >&2
    "${NICE[@]}" cargo llvm-cov --no-report --workspace --no-fail-fast 2>&1 | tee "$OUT/test.log" || test_rc=$?

    # Profiles the reaper wrote outside the profile dir (see above).
    moved=0
    while IFS= read -r -d '' f; do
        mv -f "$f" "$profdir/reaper-$(basename "$f")"
        moved=$((moved + 1))
    done < <(find "$ROOT" -maxdepth 3 -path "$ROOT/target" -prune -o -name 'default_*.profraw' -newer "$marker" -print0)
    rm -f "$marker"
    echo "    $moved profile(s) of detached reapers collected" >&2
fi
t_test=$SECONDS

profdata=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata
bad=0 good=0
mkdir -p "$OUT/unreadable-profiles"
for f in "$profdir"/*.profraw; do
    [[ -e $f ]] || continue
    if "$profdata" show "$f" >/dev/null 2>&1; then
        good=$((good + 1))
    else
        mv -f "$f" "$OUT/unreadable-profiles/"
        bad=$((bad + 1))
    fi
done
echo "    $good process profiles; $bad unreadable (truncated) set aside in $OUT/unreadable-profiles" >&2

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
