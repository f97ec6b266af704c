#!/usr/bin/env bash
# soak.sh — long uptime: a steady mix of everything keel does, with memory, descriptors,
# threads, queues and /healthz latency sampled all along, and their slopes.
#
# Builds the release keel, keel-gen-state and the `soak` bench (benches/soak.rs) and runs the
# bench for DURATION, which starts keel itself on a generated state directory with a fake model
# provider and a fake webhook channel on loopback and drives, each at a fixed rate:
#   /healthz probes 20/s, usage queries (sessions.usage, usage.cost) 2/s, deliveries (`send`)
#   2/s, agent runs from WebSocket clients that connect, run and leave 1/s, WebSocket clients
#   that connect, ask `status` and leave 2/s, and 50 cron jobs every 1-5 s across 10 agents
#   (their receipts counted against their schedules at the end).
# Every SAMPLE seconds (default 5) it records keel's RSS, descriptors, threads, queued jobs,
# jobs in flight, connections, outbound queue and the /healthz p50/p99/max of that window;
# at the end it prints a row a minute, then per series the least-squares slope over the
# steady window (after the warm-up) and whether it is flat.
#
# Usage: scripts/soak.sh DURATION [extra bench args: --sample-s N --warmup-s N --csv PATH]
#   DURATION: seconds, or with a unit: 90s, 30m, 2h.
#   SOAK_CSV=PATH keeps every sample as CSV (the work directory is removed at the end).
# Exit status: the bench's (0 flat and every request answered; 1 a series grew or keel failed
# a request, lost a delivery or did not stop cleanly; 2 could not measure), 1 if the build
# failed, 64 for a bad DURATION.
set -euo pipefail

bench=soak
source "$(dirname "$0")/bench-lib.sh"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" || $# -lt 1 ]]; then
    bench_help
    [[ $# -ge 1 ]] && exit 0 || exit 64
fi

duration="$1"
shift
case "$duration" in
*h) seconds=$((${duration%h} * 3600)) ;;
*m) seconds=$((${duration%m} * 60)) ;;
*s) seconds=${duration%s} ;;
*) seconds=$duration ;;
esac 2>/dev/null || true
if ! [[ "${seconds:-}" =~ ^[0-9]+$ ]] || ((seconds < 10)); then
    echo "soak: DURATION must be at least 10 seconds (e.g. 600, 30m, 2h), not '$duration'" >&2
    exit 64
fi

cd "$(dirname "$0")/.."

bench_raise_nofile
bench_build --bin keel --bin keel-gen-state
bench_workdir_own_keel

extra=()
if [[ -n "${SOAK_CSV:-}" ]]; then
    extra+=(--csv "$(realpath -m "$SOAK_CSV")")
fi

echo "== soaking for $seconds s (state in $work/state) ==" >&2
bench_run $((seconds + 300)) --keel "$keel_bin" \
    --gen "$PWD/target/release/keel-gen-state" --work "$work" --duration-s "$seconds" \
    "${extra[@]}" "$@"

bench_finish
