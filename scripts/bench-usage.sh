#!/usr/bin/env bash
# bench-usage.sh — sessions and usage on an incident-sized state (issue "Sessions and usage").
#
# Builds the release binaries and the `usage` bench (benches/usage.rs), generates a state with
# `keel-gen-state` (defaults: 9 agents × 184 sessions × 200 messages, ~237 MB) and its exact
# figures, deletes any saved index (<state>/usage-index.bin), drops the page cache (root only,
# and not with --warm-cache; otherwise the run says "page cache: warm"), starts
# `keel serve --port 0` on it and, right after, the bench, which measures:
#
#   1. the cold usage-index build: T of keel's log line `usage index built: … in T ms`, and the
#      wall time from launching keel to the first `usage.cost` answer with
#      cacheStatus.status == "fresh"                                      target <= 1.5 s
#   2. GET /healthz during that build, 500/s open loop                    target p99 <= 2 ms,
#                                                                                max <= 25 ms
#   3. warm latency of the Usage page's exact request (OpenClaw's dashboard: sessions.usage
#      {agentScope:"all", limit:1000, groupBy:"family", mode:"specific",
#      timeZone:"America/New_York", utcOffset:"UTC-5", startDate/endDate covering the data}),
#      of sessions.usage {"agentScope":"all","limit":1000}, sessions.usage {"agentScope":"all"}
#      and usage.cost {} (50 sequential calls each, answer sizes printed)  target <= 20 ms
#      (p99), with the page's and usage.cost's totals checked against the generator's figures
#   4. usage.cost {} and then the Usage page's request right after appending one message to a
#      live transcript (20 times each; every answer computed anew), totals checked to have
#      grown by exactly the appended usage                                target <= 20 ms (p99)
#   5. GET /healthz (500/s open loop) while the Usage page's request is called in a loop for
#      5 s, half of the calls after an append                            target p99 <= 2 ms
#   6. keel's peak RSS (VmHWM)                                            target <= 64 MiB
#
# then stops keel with SIGTERM (SIGKILL after 40 s) and prints the figures and a summary with
# PASS/MISS per target.
#
# Usage: scripts/bench-usage.sh [--store files|sqlite] [--keep DIR] [--warm-cache]
#                               [-- extra bench args, e.g. --rate 1000 --calls 100 --loop-secs 10]
#   --store sqlite  the same state converted into OpenClaw's per-agent SQLite store
#                (`keel-gen-state --sqlite`, as OpenClaw 2026.7+ imports one; the figures do not
#                change); the appends are rows added to agent main's first session.
#   --warm-cache leave the page cache as it is (a state read just before is in memory): the
#                build then measures parsing rather than the disk, e.g. to compare builds.
#   --keep DIR   generate the state in DIR/state (figures in DIR/figures.json) and reuse it on
#                later runs (regenerated when older than 12 h: usage.cost {} covers 30 days up
#                to today); the transcript the bench appends to is restored afterwards, and
#                the gateway's log of the run is kept as DIR/keel.log.
# Exit status: the bench's (0 ran correctly, targets missed or not; 1 wrong totals, failed
# calls or failed probes; 2 could not measure), or 1 if the state or the gateway could not be
# set up.
set -euo pipefail

bench=usage
source "$(dirname "$0")/bench-lib.sh"

keep=""
warm_cache=0
store=files
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --keep)
        [[ $# -ge 2 && -n "$2" ]] || { echo "usage: $0 [--keep DIR] [--warm-cache] [-- bench args]" >&2; exit 2; }
        keep="$2"
        shift 2
        ;;
    --keep=*)
        keep="${1#--keep=}"
        shift
        ;;
    --warm-cache)
        warm_cache=1
        shift
        ;;
    --store)
        [[ $# -ge 2 && ( "$2" == files || "$2" == sqlite ) ]] || { echo "usage: $0 [--store files|sqlite] ..." >&2; exit 2; }
        store="$2"
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
        echo "usage: $0 [--keep DIR] [--warm-cache] [-- bench args]" >&2
        exit 2
        ;;
    esac
done

cd "$(dirname "$0")/.."

# The bench runs directly, not through `cargo bench`, also so that it starts within
# milliseconds of keel and sees the whole build.
bench_build --bins
bench_workdir
server_pid=""
append_file=""
append_size=""

if [[ -n "$keep" ]]; then
    mkdir -p "$keep"
    keep="$(cd "$keep" && pwd)"
    state="$keep/state"
    figures="$keep/figures.json"
    if [[ "$store" == sqlite ]]; then
        state="$keep/state-sqlite"
        figures="$keep/figures-sqlite.json"
    fi
else
    state="$work/state"
    figures="$work/figures.json"
fi

restore_transcript() {
    # Undo the bench's appends, so that a kept state still matches its figures.
    if [[ "$store" == sqlite && -n "$append_file" && -f "$append_file" ]]; then
        python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute("DELETE FROM transcript_events WHERE event_json LIKE ?", (chr(37)+chr(34)+"id"+chr(34)+":"+chr(34)+"bench-"+chr(37),)); c.commit()' "$append_file" || true
    elif [[ -n "$append_file" && -n "$append_size" && -f "$append_file" ]]; then
        truncate -s "$append_size" "$append_file" || true
    fi
}

cleanup() {
    bench_kill_server
    restore_transcript
    if [[ -n "$keep" && -f "$log" ]]; then
        cp "$log" "$keep/keel.log" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the state ------------------------------------------------------------------------------
now_ms="$(date +%s%3N)"
regenerate=1
if [[ -n "$keep" && -s "$figures" && -d "$state/agents" ]]; then
    made="$(grep -oE '^\{"seed":[0-9]+,"now":[0-9]+' "$figures" | sed 's/.*"now"://' || true)"
    if [[ -n "$made" ]] && ((now_ms - made < 12 * 3600 * 1000)); then
        regenerate=0
        echo "== reusing the state in $state (generated $(((now_ms - made) / 60000)) min ago) ==" >&2
    fi
fi
if [[ "$regenerate" -eq 1 ]]; then
    if [[ -n "$keep" && -e "$state" ]]; then
        # Only a directory this script generated is removed.
        if [[ -d "$state/agents" && -f "$state/keel.json" ]]; then
            rm -rf "$state"
        else
            echo "bench-usage: $state exists and does not look like a generated state; not touching it" >&2
            exit 1
        fi
    fi
    rm -f "$figures"
    echo "== generating the state in $state ==" >&2
    gen_args=()
    [[ "$store" == sqlite ]] && gen_args=(--sqlite)
    if ! timeout 600 target/release/keel-gen-state --out "$state" --now "$now_ms" "${gen_args[@]}" >"$figures.tmp"; then
        rm -f "$figures.tmp"
        echo "bench-usage: keel-gen-state failed or took more than 300 s" >&2
        exit 1
    fi
    mv "$figures.tmp" "$figures"
fi
# A cold build: no saved index (nor a half-written one).
rm -f "$state"/usage-index.bin*

# The live transcript the bench appends to, and its size, to restore it afterwards.
if [[ "$store" == sqlite ]]; then
    append_file="$state/agents/main/agent/openclaw-agent.sqlite"
    [[ -f "$append_file" ]] || { echo "bench-usage: no $append_file" >&2; exit 1; }
else
    append_file="$(find "$state/agents/main/sessions" -maxdepth 1 -name '*.jsonl' -type f | LC_ALL=C sort | sed -n 1p)"
    [[ -n "$append_file" ]] || { echo "bench-usage: no live transcript in $state/agents/main/sessions" >&2; exit 1; }
    append_size="$(stat -c %s "$append_file")"
fi

# ---- a cold start ---------------------------------------------------------------------------
page_cache=warm
if [[ "$warm_cache" -eq 1 ]]; then
    # Read every file of the agents once, so that all of them are in the cache.
    find "$state/agents" -type f -exec cat {} + >/dev/null
elif sync && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
    page_cache=cold
else
    echo "bench-usage: cannot drop the page cache (not root?): the build reads a warm cache" >&2
fi

echo "== starting keel (state in $state) and the bench ==" >&2
started_at="${EPOCHREALTIME:-$(date +%s.%N)}"
bench_start_server -u KEEL_TEST_HOOKS

bench_out="$work/bench.out"
set +e
timeout 600 "$bench_exe" --log "$log" --state-dir "$state" --figures "$figures" \
    --pid "$server_pid" --started-at "$started_at" --page-cache "$page_cache" \
    --append-file "$append_file" "${extra[@]}" >"$bench_out"
bench_status=$?
set -e
if [[ "$bench_status" -eq 124 ]]; then
    echo "bench-usage: the bench did not finish within 600 s" >&2
fi

if ! kill -0 "$server_pid" 2>/dev/null; then
    set +e
    wait "$server_pid"
    server_status=$?
    set -e
    server_pid=""
    cat "$bench_out"
    fail_with_log "keel exited during the run (status $server_status)"
fi

bench_stop_server
restore_transcript

echo
cat "$bench_out"
echo "gateway: stopped with exit status $server_status $((SECONDS - stop_started)) s after SIGTERM"
if [[ "$server_status" -ne 0 ]]; then
    bench_log_tail
fi
bench_warnings "warnings and errors"
exit "$bench_status"
