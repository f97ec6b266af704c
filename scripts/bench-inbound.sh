#!/usr/bin/env bash
# bench-inbound.sh — messages from Telegram and Slack: accepted per transport with fsync on, how soon
# their runs start, /healthz while accounts long-poll, RSS.
#
# Builds the release keel and the `inbound` bench (benches/inbound.rs) and runs the bench,
# which starts a fake Telegram Bot API and a fake model provider on loopback, writes a keel
# config with 10 polling accounts and one webhook-mode account pointing at them into a
# throw-away state directory, starts `keel serve --port 0 --state-dir DIR` itself and measures:
#
#   (a) messages/s accepted: 2000 updates handed to one polling account at once (first handed
#       out -> the offset confirming the last, which keel sends only once all are stored with
#       fsync); 2000 POSTs to the webhook route from 4 keep-alive connections (each 200 comes
#       after the durable store); 2000 signed Slack events POSTed to /slack/events the same
#       way. After each, until every run started and every reply came.
#   (b) inbound -> run start: update handed out -> model request at the fake provider,
#       median and p99, while
#   (c) 50 messages/s arrive over the 10 long-polling accounts for 20 s and /healthz is probed
#       at 500/s open loop: p50/p99/max (target p99 <= 2 ms).
#   (d) keel's peak RSS (VmHWM).
#
# Every message must run exactly once and get exactly one reply.
#
# Usage: scripts/bench-inbound.sh [extra bench args, e.g. --messages 5000 --seconds 60]
# Exit status: the bench's (0 ran correctly; 1 keel behaved wrongly: a refused post, a lost or
# repeated run, a missing reply; 2 could not measure), or 1 if the build failed.
set -euo pipefail

bench=inbound
source "$(dirname "$0")/bench-lib.sh"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    bench_help
    exit 0
fi

cd "$(dirname "$0")/.."

bench_build --bin keel
bench_workdir_own_keel

echo "== running the bench (state in $work/state) ==" >&2
bench_run 900 --keel "$keel_bin" --work "$work" "$@"

bench_finish
