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

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

cd "$(dirname "$0")/.."

# 100+ WebSocket clients and the fakes' connections on both sides of loopback.
if [[ "$(ulimit -n)" != unlimited && "$(ulimit -n)" -lt 4096 ]]; then
    ulimit -n 4096 2>/dev/null || true
fi

echo "== building (release) ==" >&2
cargo build --release --bin keel
# The bench binary is run directly (not through `cargo bench`), with keel's path.
# (The JSON lists every artifact, keel's binaries too: keep the bench target's line.)
bench_exe="$(cargo bench --bench agent --no-run --message-format=json |
    grep -F '"kind":["bench"]' | grep -F '"name":"agent"' |
    grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4 || true)"
if [[ -z "$bench_exe" || ! -x "$bench_exe" ]]; then
    # Show the build's errors, if that is why.
    cargo bench --bench agent --no-run
    echo "bench-agent: cannot find the agent bench executable" >&2
    exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/keel-bench-agent.XXXXXX")"
log="$work/server.log"

cleanup() {
    # The bench stops keel itself; should it have died first, kill the keel it started (its
    # pid is in keel.pid), and only that one.
    if [[ -s "$work/keel.pid" ]]; then
        local pid
        pid="$(tr -dc '0-9' <"$work/keel.pid")"
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
            tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$work/state"; then
            kill -KILL "$pid" 2>/dev/null || true
            # Not our child (the bench's): wait a little for it to be gone or a zombie.
            for _ in $(seq 1 50); do
                [[ -r "/proc/$pid/stat" ]] || break
                [[ "$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)" == Z ]] && break
                sleep 0.1
            done
        fi
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== running the bench (state in $work/state) ==" >&2
bench_out="$work/bench.out"
set +e
timeout -k 10 240 "$bench_exe" --keel "$PWD/target/release/keel" --work "$work" "$@" >"$bench_out"
bench_status=$?
set -e
if [[ "$bench_status" -eq 124 ]]; then
    echo "bench-agent: the bench did not finish within 240 s" >&2
    bench_status=2
elif [[ "$bench_status" -gt 128 ]]; then
    echo "bench-agent: the bench was killed by signal $((bench_status - 128))" >&2
    bench_status=2
fi

echo
cat "$bench_out"
if [[ "$bench_status" -eq 2 && -s "$log" ]]; then
    echo "---- last lines of the gateway log ----"
    tail -n 20 "$log"
fi
# Anything the gateway warned about, but the failures the bench provoked on purpose
# ("run …: a/… failed after N ms: …").
warnings="$(grep -E ' (WARN|ERROR) ?\]' "$log" 2>/dev/null | grep -vE '\] run [^ ]+: a/[^ ]+ failed after [0-9]+ ms' || true)"
if [[ -n "$warnings" ]]; then
    echo "---- other warnings and errors in the gateway log ($(wc -l <<<"$warnings") line(s), last 20) ----"
    tail -n 20 <<<"$warnings"
fi
exit "$bench_status"
