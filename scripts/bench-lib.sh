# bench-lib.sh — sourced by scripts/bench-*.sh (after `set -euo pipefail`, with `bench` set
# to the bench's name: agent, delivery, health, usage): the build, the throw-away work
# directory, and stopping and cleaning up after keel. The functions but bench_help run from
# the repository root.

# The usage text is the script's header comment, up to `set -euo`.
bench_help() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

# Hundreds of WebSocket clients, and loopback holds both ends of every socket: the descriptor
# limit must not be what fails.
bench_raise_nofile() {
    if [[ "$(ulimit -n)" != unlimited && "$(ulimit -n)" -lt 4096 ]]; then
        ulimit -n 4096 2>/dev/null || true
    fi
}

# Builds keel (`cargo build --release "$@"`) and the bench, and sets bench_exe and keel_bin.
# The bench binary is run directly (not through `cargo bench`), with keel's path: keel_bin is
# target/release/keel, or the binary KEEL_BIN names (e.g. the static one of
# scripts/build-static.sh, to measure the file that gets deployed; keel-gen-state and the
# bench still come from this build).
bench_build() {
    echo "== building (release) ==" >&2
    cargo build --release "$@"
    if [[ -n "${KEEL_BIN:-}" ]]; then
        keel_bin="$(realpath -e "$KEEL_BIN" 2>/dev/null || true)"
        if [[ -z "$keel_bin" || ! -x "$keel_bin" || -d "$keel_bin" ]]; then
            echo "bench-$bench: KEEL_BIN=$KEEL_BIN is not an executable file" >&2
            exit 1
        fi
    else
        keel_bin="$PWD/target/release/keel"
    fi
    echo "== keel: $keel_bin ($("$keel_bin" --version)) ==" >&2
    # (The JSON lists every artifact, keel's binaries too: keep the bench target's line.)
    bench_exe="$(cargo bench --bench "$bench" --no-run --message-format=json |
        grep -F '"kind":["bench"]' | grep -F "\"name\":\"$bench\"" |
        grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4 || true)"
    if [[ -z "$bench_exe" || ! -x "$bench_exe" ]]; then
        # Show the build's errors, if that is why.
        cargo bench --bench "$bench" --no-run
        echo "bench-$bench: cannot find the $bench bench executable" >&2
        exit 1
    fi
}

# Sets work (a fresh directory; the caller's cleanup removes it) and log (keel's log in it).
bench_workdir() {
    work="$(mktemp -d "${TMPDIR:-/tmp}/keel-bench-$bench.XXXXXX")"
    log="$work/server.log"
}

# For a bench that starts keel itself: bench_workdir, and at exit (INT and TERM exit 130) the
# keel it left behind is killed and the directory removed.
bench_workdir_own_keel() {
    bench_workdir
    trap 'bench_kill_pidfile_keel; rm -rf "$work"' EXIT
    trap 'exit 130' INT TERM
}

# For a bench that starts keel itself: it stops keel; should the bench have died first, kill
# the keel it started (its pid is in $work/keel.pid), and only that one.
bench_kill_pidfile_keel() {
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
}

# For a script that starts keel itself: only the server it started (server_pid), by its pid.
bench_kill_server() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}

fail_with_log() {
    echo "bench-$bench: $*" >&2
    if [[ -s "$log" ]]; then
        echo "---- last lines of the gateway log ----" >&2
        tail -n 40 "$log" >&2
    fi
    exit 1
}

# Stops server_pid as systemd would; sets stop_started and server_status, clears server_pid.
bench_stop_server() {
    echo "== stopping keel (SIGTERM) ==" >&2
    stop_started=$SECONDS
    kill -TERM "$server_pid" 2>/dev/null || true
    # Drain is 30 s + 5 s grace at most; give it 40 s, then SIGKILL.
    while kill -0 "$server_pid" 2>/dev/null && ((SECONDS - stop_started < 40)); do
        sleep 0.1
    done
    if kill -0 "$server_pid" 2>/dev/null; then
        echo "bench-$bench: keel still running 40 s after SIGTERM; sending SIGKILL" >&2
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    set +e
    wait "$server_pid"
    server_status=$?
    set -e
    server_pid=""
}

# Runs the bench executable with a time limit of $1 seconds, its stdout to bench_out, and sets
# bench_status; a bench that did not finish or was killed could not measure (2).
bench_run() {
    local limit="$1"
    shift
    bench_out="$work/bench.out"
    set +e
    timeout -k 10 "$limit" "$bench_exe" "$@" >"$bench_out"
    bench_status=$?
    set -e
    if [[ "$bench_status" -eq 124 ]]; then
        echo "bench-$bench: the bench did not finish within $limit s" >&2
        bench_status=2
    elif [[ "$bench_status" -gt 128 ]]; then
        echo "bench-$bench: the bench was killed by signal $((bench_status - 128))" >&2
        bench_status=2
    fi
}

bench_log_tail() {
    echo "---- last lines of the gateway log ----"
    tail -n 20 "$log"
}

# What the gateway warned about during the run: $1 names them in the heading; $2, if given, is
# an extended regex of the lines the run provokes on purpose.
bench_warnings() {
    local warnings
    warnings="$(grep -E ' (WARN|ERROR) ?\]' "$log" 2>/dev/null || true)"
    if [[ -n "${2:-}" ]]; then
        warnings="$(grep -vE "$2" <<<"$warnings" || true)"
    fi
    if [[ -n "$warnings" ]]; then
        echo "---- $1 in the gateway log ($(wc -l <<<"$warnings") line(s), last 20) ----"
        tail -n 20 <<<"$warnings"
    fi
}

# Starts `keel serve --port 0` on $state in the background, its log to $log, with the extra
# `env` arguments given (settings or `-u NAME`); sets server_pid.
bench_start_server() {
    # The caller's KEEL_* settings must not leak in: this run uses its own port, token and config.
    env -u KEEL_CONFIG -u KEEL_GATEWAY_TOKEN -u KEEL_BIND -u KEEL_PORT -u KEEL_STATE_DIR \
        "$@" KEEL_LOG="${KEEL_LOG:-info}" \
        "$keel_bin" serve --port 0 --state-dir "$state" 2>"$log" &
    server_pid=$!
}

# The end of a bench that starts its own keel: the bench's figures, keel's last log lines if
# the bench failed, keel's warnings and errors, and the bench's exit status.
bench_finish() {
    echo
    cat "$bench_out"
    if [[ "$bench_status" -ne 0 && -s "$log" ]]; then
        bench_log_tail
    fi
    bench_warnings "warnings and errors"
    exit "$bench_status"
}
