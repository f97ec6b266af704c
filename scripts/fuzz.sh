#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS_PER_TARGET seconds (default 60), one after
# the other, with a memory limit and a per-input timeout, so that crashes, hangs and unbounded
# allocations are all reported. Prints per target the executions run and the coverage reached,
# and exits non-zero if any target found something (its reproducer is in fuzz/artifacts/).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Needs the nightly toolchain (libFuzzer's sanitizer flags); installs cargo-fuzz if missing.
# Not part of the test command or CI. New corpus entries go to fuzz/work/corpus/<target>
# (ignored by git); the committed seeds in fuzz/corpus/<target> are only read.
set -uo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
RSS_MB=${FUZZ_RSS_MB:-1024}
TIMEOUT_S=${FUZZ_TIMEOUT_S:-10}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || exit 2
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "the nightly toolchain is needed: rustup toolchain install nightly" >&2
    exit 2
fi

cargo +nightly fuzz build -O || exit 2
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

mkdir -p fuzz/work/logs
failed=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/work/corpus/$t" "fuzz/artifacts/$t" "fuzz/corpus/$t"
    log="fuzz/work/logs/$t.log"
    echo "== $t: ${secs}s" >&2
    start=$(date +%s)
    cargo +nightly fuzz run -O "$t" "fuzz/work/corpus/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb="$RSS_MB" -malloc_limit_mb="$RSS_MB" \
        -timeout="$TIMEOUT_S" -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" \
        >"$log" 2>&1
    rc=$?
    took=$(($(date +%s) - start))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    # The last status line carries the final coverage (cov: edges, ft: features).
    status=$(grep -E '#[0-9]+.*cov: [0-9]+' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' <<<"$status" | grep -o '[0-9]*')
    ft=$(grep -o 'ft: [0-9]*' <<<"$status" | grep -o '[0-9]*')
    corpus=$(grep -o 'corp: [0-9]*' <<<"$status" | grep -o '[0-9]*')
    if [ $rc -eq 0 ]; then
        result=ok
    else
        failed=1
        found=$(grep -oE 'SUMMARY: [A-Za-z]+: [a-z-]+|ERROR: libFuzzer: [a-z-]+|panicked at [^ ]+' "$log" | head -1)
        artifact=$(grep -o "fuzz/artifacts/$t/[a-z]*-[0-9a-f]*" "$log" | tail -1)
        result="FOUND (${found:-exit $rc}) ${artifact:-see $log}"
    fi
    summary+=("$(printf '%-16s %12s %7s %7s %6s %6ss  %s' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corpus:-?}" "$took" "$result")")
done

printf '\n%-16s %12s %7s %7s %6s %7s  %s\n' target execs cov ft corpus time result
printf '%s\n' "${summary[@]}"
exit $failed
