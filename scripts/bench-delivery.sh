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

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

cd "$(dirname "$0")/.."

echo "== building (release) ==" >&2
cargo build --release --bin keel
# The bench binary is run directly (not through `cargo bench`), with keel's path.
# (The JSON lists every artifact, keel's binaries too: keep the bench target's line.)
bench_exe="$(cargo bench --bench delivery --no-run --message-format=json |
    grep -F '"kind":["bench"]' | grep -F '"name":"delivery"' |
    grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4 || true)"
if [[ -z "$bench_exe" || ! -x "$bench_exe" ]]; then
    # Show the build's errors, if that is why.
    cargo bench --bench delivery --no-run
    echo "bench-delivery: cannot find the delivery bench executable" >&2
    exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/keel-bench-delivery.XXXXXX")"
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
timeout -k 10 300 "$bench_exe" --keel "$PWD/target/release/keel" --work "$work" "$@" >"$bench_out"
bench_status=$?
set -e
if [[ "$bench_status" -eq 124 ]]; then
    echo "bench-delivery: the bench did not finish within 300 s" >&2
    bench_status=2
elif [[ "$bench_status" -gt 128 ]]; then
    echo "bench-delivery: the bench was killed by signal $((bench_status - 128))" >&2
    bench_status=2
fi

echo
cat "$bench_out"
if [[ "$bench_status" -ne 0 && -s "$log" ]]; then
    echo "---- last lines of the gateway log ----"
    tail -n 20 "$log"
fi
warnings="$(grep -E ' (WARN|ERROR) ?\]' "$log" 2>/dev/null || true)"
if [[ -n "$warnings" ]]; then
    echo "---- warnings and errors in the gateway log ($(wc -l <<<"$warnings") line(s), last 20) ----"
    tail -n 20 <<<"$warnings"
fi
exit "$bench_status"
