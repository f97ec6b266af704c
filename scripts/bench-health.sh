#!/usr/bin/env bash
# bench-health.sh — /healthz latency of a release keel under load.
#
# Builds the release binary and the `health` bench (benches/health.rs), starts
# `keel serve --port 0` with KEEL_TEST_HOOKS=1 on a throw-away state directory, and runs the
# bench against it: every cpu worker kept busy with `keel.test.busy` jobs and 200 WebSocket
# clients held open and handshaken, while GET /healthz is probed at 200/s (open loop, 5 s
# timeout per probe). Then the gateway is stopped with SIGTERM, as systemd would.
#
# Target: p99 <= 2 ms, max <= 25 ms, zero errors. The liveness probe must stay fast and
# never fail however busy the workers are: it is answered on the reactor, from memory.
#
# Usage: scripts/bench-health.sh [SECONDS (default 20)] [extra bench args, e.g. --clients 500]
# Exit status: the bench's (0 no probe failed, 1 some failed, 2 could not set up the load),
# or 1 if the gateway could not be started.
set -euo pipefail

bench=health
source "$(dirname "$0")/bench-lib.sh"

duration="${1:-20}"
if [[ $# -gt 0 ]]; then shift; fi
if ! [[ "$duration" =~ ^[0-9]+$ ]] || [[ "$duration" -eq 0 ]]; then
    echo "usage: $0 [SECONDS] [extra bench args]" >&2
    exit 2
fi

cd "$(dirname "$0")/.."

bench_raise_nofile
bench_build
bench_workdir
state="$work/state"
server_pid=""

cleanup() {
    bench_kill_server
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# BENCH_CONFIG=FILE runs keel with that config (copied to <state>/keel.json), e.g. to compare
# {"gateway":{"workers":{"nice":0}}} against the default.
if [[ -n "${BENCH_CONFIG:-}" ]]; then
    mkdir -p "$state"
    cp "$BENCH_CONFIG" "$state/keel.json"
fi
echo "== starting keel (state in $state) ==" >&2
bench_start_server KEEL_TEST_HOOKS=1

# Wait up to ~10 s for "listening on 127.0.0.1:PORT".
port=""
for _ in $(seq 1 100); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        fail_with_log "keel exited before it was listening"
    fi
    port="$(grep -oE 'listening on 127\.0\.0\.1:[0-9]+' "$log" 2>/dev/null | head -n 1 | sed 's/.*://' || true)"
    if [[ -n "$port" ]]; then break; fi
    sleep 0.1
done
[[ -n "$port" ]] || fail_with_log "keel did not report 'listening on 127.0.0.1:PORT' within 10 s"

token_file="$state/gateway.token"
[[ -s "$token_file" ]] || fail_with_log "no token in $token_file"
token="$(tr -d '[:space:]' <"$token_file")"

echo "== benchmark: ${duration} s against 127.0.0.1:$port (pid $server_pid) ==" >&2
bench_out="$work/bench.out"
set +e
"$bench_exe" --addr "127.0.0.1:$port" --token "$token" --seconds "$duration" "$@" >"$bench_out"
bench_status=$?
set -e

bench_stop_server

echo
cat "$bench_out"
echo "gateway: stopped with exit status $server_status $((SECONDS - stop_started)) s after SIGTERM"
if [[ "$server_status" -ne 0 ]]; then
    bench_log_tail
fi
# The test-hooks warning is expected.
bench_warnings "warnings and errors" 'KEEL_TEST_HOOKS=1'
exit "$bench_status"
