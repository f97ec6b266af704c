#!/usr/bin/env bash
# browser-test.sh — OpenClaw's own dashboard (its Control UI) against keel, in headless
# Chromium: the release binary on a generated state (several agents, deleted archives), a fake
# model provider on loopback, the dashboard installed by scripts/install-dashboard.sh.
#
# It opens /#token=…, then /usage, /sessions, /chat, /logs, /automations and
# /settings/connection, and fails on: a login gate; an uncaught page exception or an
# "unknown method" answer on any page; Usage totals that differ from keel's usage.cost for the
# same range; a page that does not reconnect on its own after a reload and after a keel restart
# (or that reloads in a loop); a chat message whose streamed reply from the fake provider does
# not appear; an Automations page that does not list a job added and run over HTTP with its
# last run ok. A screenshot of each page is saved in the output directory.
#
# Installs what it needs: Debian's chromium (apt-get, as root or with sudo) and playwright-core
# from npm (into target/browser-tools; it drives the system's Chromium, downloads no browser).
#
# Usage: scripts/browser-test.sh [OUT_DIR]   (default target/browser-test)
set -euo pipefail

cd "$(dirname "$0")/.."
out="${1:-target/browser-test}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

chromium_bin="$(command -v chromium || command -v chromium-browser || true)"
if [[ -z "$chromium_bin" ]]; then
    echo "== installing chromium ==" >&2
    if [[ "$(id -u)" == 0 ]]; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
    else
        echo "browser-test: Chromium is missing; install it (Debian/Ubuntu: apt-get install chromium)" >&2
        exit 1
    fi
    chromium_bin="$(command -v chromium || command -v chromium-browser)"
fi

tools="$(pwd)/target/browser-tools"
if [[ ! -d "$tools/node_modules/playwright-core" ]]; then
    echo "== installing playwright-core ==" >&2
    mkdir -p "$tools"
    npm install --prefix "$tools" --no-audit --no-fund --loglevel=error playwright-core@1.65.2
fi

echo "== building (release) ==" >&2
cargo build --release --locked --bin keel --bin keel-gen-state

state="$(mktemp -d "${TMPDIR:-/tmp}/keel-browser.XXXXXX")"
cleanup() { rm -rf "$state"; }
trap cleanup EXIT
rmdir "$state"
target/release/keel-gen-state --out "$state" --agents 3 --sessions 14 --messages 30 --days 10 \
    > "$out/figures.json"
scripts/install-dashboard.sh "$state" >&2

KEEL_BIN="$(pwd)/target/release/keel" KEEL_STATE="$state" BROWSER_OUT="$out" \
    CHROMIUM="$chromium_bin" PLAYWRIGHT_DIR="$tools/node_modules/playwright-core" \
    node scripts/browser/dashboard.mjs
