#!/usr/bin/env bash
# bench-agent.sh — agent runs: failover latency and event fan-out (issue "Agent runs").
#
# Builds the release keel and the `agent` bench (benches/agent.rs) and runs the bench, which
# starts two fake model providers on loopback (primary `a`, fallback `b`), writes a keel
# config pointing at them into a throw-away state directory, starts
# `keel serve --port 0 --state-dir DIR` itself and measures:
#
#   1. failover: for each way the primary fails — stall before the first byte (stallMs 500),
#      404 model not found, 429 with Retry-After: 1, 500, connection reset — 10 runs, each
#      with a primary model of its own (so no run meets another's cooldown), and per run the
#      time from the primary's failure to the fallback's first token   target <= 1 s
#   2. fan-out: one run streaming 20 000 small chunks to 100 WebSocket clients that called
#      agent.wait on it: events/s delivered (in total and per client), slow-consumer
#      closes, whether each client saw the final chat event; meanwhile GET /healthz at
#      200/s (open loop)                                  target p99 <= 2 ms, max <= 25 ms
#
# then stops keel with SIGTERM (SIGKILL after 15 s) and prints the figures and a summary with
# PASS/MISS per target. Takes about half a minute.
#
# Usage: scripts/bench-agent.sh [extra bench args, e.g. --runs 20 --clients 200 --chunks 50000]
# Exit status: the bench's (0 ran correctly, targets missed or not; 1 keel behaved wrongly:
# a run that did not fail over as expected, lost events, failed probes; 2 could not measure),
# or 1 if the build failed.
set -euo pipefail

bench=agent
source "$(dirname "$0")/bench-lib.sh"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    bench_help
    exit 0
fi

cd "$(dirname "$0")/.."

bench_raise_nofile
bench_build --bin keel
bench_workdir_own_keel

echo "== running the bench (state in $work/state) ==" >&2
bench_run 240 --keel "$keel_bin" --work "$work" "$@"

echo
cat "$bench_out"
if [[ "$bench_status" -eq 2 && -s "$log" ]]; then
    bench_log_tail
fi
# Not the failures the bench provokes on purpose ("run …: a/… failed after N ms: …").
bench_warnings "other warnings and errors" '\] run [^ ]+: a/[^ ]+ failed after [0-9]+ ms'
exit "$bench_status"
