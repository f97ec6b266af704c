#!/usr/bin/env bash
# bench-delivery.sh — the durable delivery queue: enqueue and delivery throughput.
#
# Builds the release keel and the `delivery` bench (benches/delivery.rs) and runs the bench,
# which starts a fake webhook receiver on loopback, writes a keel config with the `webhook`
# channel pointing at it into a throw-away state directory, starts
# `keel serve --port 0 --state-dir DIR` itself and measures:
#
#   1. enqueue: 2000 `send` RPCs (channel webhook, a key each) from 4 keep-alive client
#      threads as fast as keel accepts them: sends/s and the RPC latency p50/p99. Every
#      accepted send is on disk with fsync (temp file, fsync, rename, directory fsync) when its
#      200 comes back; each later state change is written the same way.
#   2. delivery: until every accepted message reached the receiver (at most 120 s):
#      messages/s end to end, enqueue -> delivery latency (median, p99, max), duplicates
#      (must be 0), failures.
#
# then stops keel with SIGTERM (SIGKILL after 15 s) and prints the figures.
#
# Usage: scripts/bench-delivery.sh [extra bench args, e.g. --messages 5000 --threads 8]
# Exit status: the bench's (0 ran correctly: everything delivered once; 1 keel behaved
# wrongly: a refused send, a lost or duplicated message, a failed entry; 2 could not measure),
# or 1 if the build failed.
set -euo pipefail

bench=delivery
source "$(dirname "$0")/bench-lib.sh"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    bench_help
    exit 0
fi

cd "$(dirname "$0")/.."

bench_build --bin keel
bench_workdir_own_keel

echo "== running the bench (state in $work/state) ==" >&2
bench_run 300 --keel "$keel_bin" --work "$work" "$@"

bench_finish
