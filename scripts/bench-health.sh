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

duration="${1:-20}"
if [[ $# -gt 0 ]]; then shift; fi
if ! [[ "$duration" =~ ^[0-9]+$ ]] || [[ "$duration" -eq 0 ]]; then
    echo "usage: $0 [SECONDS] [extra bench args]" >&2
    exit 2
fi

cd "$(dirname "$0")/.."

# 200+ sockets on each side of loopback: make sure the descriptor limit is not what fails.
if [[ "$(ulimit -n)" != unlimited && "$(ulimit -n)" -lt 4096 ]]; then
    ulimit -n 4096 2>/dev/null || true
fi

echo "== building (release) ==" >&2
cargo build --release
cargo bench --bench health --no-run

work="$(mktemp -d "${TMPDIR:-/tmp}/keel-bench.XXXXXX")"
state="$work/state"
log="$work/server.log"
server_pid=""

cleanup() {
    # Only the server this script started, by its pid.
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail_with_log() {
    echo "bench-health: $*" >&2
    if [[ -s "$log" ]]; then
        echo "---- last lines of the gateway log ----" >&2
        tail -n 40 "$log" >&2
    fi
    exit 1
}

# BENCH_CONFIG=FILE runs keel with that config (copied to <state>/keel.json), e.g. to compare
# {"gateway":{"workers":{"nice":0}}} against the default.
if [[ -n "${BENCH_CONFIG:-}" ]]; then
    mkdir -p "$state"
    cp "$BENCH_CONFIG" "$state/keel.json"
fi
echo "== starting keel (state in $state) ==" >&2
# The caller's KEEL_* settings must not leak in: this run uses its own port, token and config.
env -u KEEL_CONFIG -u KEEL_GATEWAY_TOKEN -u KEEL_BIND -u KEEL_PORT -u KEEL_STATE_DIR \
    KEEL_TEST_HOOKS=1 KEEL_LOG="${KEEL_LOG:-info}" \
    target/release/keel serve --port 0 --state-dir "$state" 2>"$log" &
server_pid=$!

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
cargo bench --bench health -- --addr "127.0.0.1:$port" --token "$token" --seconds "$duration" "$@" >"$bench_out"
bench_status=$?
set -e

echo "== stopping keel (SIGTERM) ==" >&2
stop_started=$SECONDS
kill -TERM "$server_pid" 2>/dev/null || true
# Drain is 30 s + 5 s grace at most; give it 40 s, then SIGKILL.
while kill -0 "$server_pid" 2>/dev/null && ((SECONDS - stop_started < 40)); do
    sleep 0.1
done
if kill -0 "$server_pid" 2>/dev/null; then
    echo "bench-health: keel still running 40 s after SIGTERM; sending SIGKILL" >&2
    kill -KILL "$server_pid" 2>/dev/null || true
fi
set +e
wait "$server_pid"
server_status=$?
set -e
server_pid=""

echo
cat "$bench_out"
echo "gateway: stopped with exit status $server_status $((SECONDS - stop_started)) s after SIGTERM"
if [[ "$server_status" -ne 0 ]]; then
    echo "---- last lines of the gateway log ----"
    tail -n 20 "$log"
fi
# Anything the gateway warned about during the run (the test-hooks warning is expected).
warnings="$(grep -E ' (WARN|ERROR) ?\]' "$log" | grep -v 'KEEL_TEST_HOOKS=1' || true)"
if [[ -n "$warnings" ]]; then
    echo "---- warnings and errors in the gateway log ($(wc -l <<<"$warnings") line(s), last 20) ----"
    tail -n 20 <<<"$warnings"
fi
exit "$bench_status"
