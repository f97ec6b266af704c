#!/usr/bin/env bash
# bench-start.sh — start-up time: from spawning `keel serve` to the first GET /readyz 200.
#
# Builds the release binaries and the `start` bench (benches/start.rs) and times starts of keel
# on a new empty state directory each time (a fresh install), then on the state given with
# --state (the same directory each time: a restart), each stopped with SIGTERM before the next.
# On the given state keel runs with an empty config (`--config`, `{}`) rather than the state's
# keel.json: the one keel-gen-state writes names an api keel does not run (openai-responses),
# which rightly keeps /readyz at 503.
# Prints the median, min and max per state.                      target: median <= 10 ms
#
# KEEL_BIN=PATH times that binary instead of target/release/keel (e.g. the static one of
# scripts/build-static.sh).
#
# Usage: scripts/bench-start.sh [--state DIR] [-- extra bench args: --runs N (11) --warmup N (1)]
#   --state DIR   also start on DIR, e.g. the state `scripts/bench-usage.sh --keep K` keeps in
#                 K/state (9 agents × 184 sessions × 200 messages).
# Exit status: the bench's (0 measured; 2 could not measure), or 1 if the build failed.
set -euo pipefail

bench=start
source "$(dirname "$0")/bench-lib.sh"

given=""
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --state)
        [[ $# -ge 2 && -d "$2" ]] || { echo "usage: $0 [--state DIR] [-- bench args]" >&2; exit 2; }
        given="$(cd "$2" && pwd)"
        shift 2
        ;;
    --)
        shift
        extra=("$@")
        break
        ;;
    -h | --help)
        bench_help
        exit 0
        ;;
    *)
        echo "usage: $0 [--state DIR] [-- bench args]" >&2
        exit 2
        ;;
    esac
done

cd "$(dirname "$0")/.."

bench_build --bin keel
bench_workdir_own_keel

args=(--keel "$keel_bin" --work "$work")
if [[ -n "$given" ]]; then
    # Through a link in the work directory: the cleanup kills a keel left behind only if its
    # command line names "$work/state".
    ln -s "$given" "$work/state-given"
    echo "== the given state: $given ==" >&2
    echo '{}' >"$work/empty-config.json"
    args+=(--state "$work/state-given" --config "$work/empty-config.json")
fi
echo "== timing starts (work in $work) ==" >&2
bench_run 600 "${args[@]}" "${extra[@]}"

bench_finish
