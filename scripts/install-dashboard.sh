#!/usr/bin/env bash
# Installs OpenClaw's dashboard (the Control UI) for keel to serve: fetches the openclaw npm
# package with `npm pack` (the registry's tarball, integrity-checked by npm; nothing is
# installed or run) and unpacks only its dist/control-ui into <state>/control-ui, where keel
# looks by default. Node.js is needed for npm here, never to serve the files.
#
#   scripts/install-dashboard.sh [STATE_DIR]
#
# STATE_DIR defaults to $KEEL_STATE_DIR, else ~/.keel. OPENCLAW_VERSION picks another version
# (default 2026.9.6, the one keel is tested against). A running keel picks the new files up
# within 10 s (or at once on SIGHUP); the previous install is replaced whole.
set -euo pipefail
version=${OPENCLAW_VERSION:-2026.9.6}
state=${1:-${KEEL_STATE_DIR:-$HOME/.keel}}

command -v npm >/dev/null || { echo "install-dashboard: npm is needed to fetch openclaw@$version" >&2; exit 1; }
command -v tar >/dev/null || { echo "install-dashboard: tar is needed" >&2; exit 1; }
mkdir -p "$state"
# Unpacked beside its final place, so the last step is a rename on one file system.
work=$(mktemp -d "$state/.control-ui.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "install-dashboard: fetching openclaw@$version from the npm registry"
tgz=$(cd "$work" && npm pack --silent "openclaw@$version" | tail -1)
[ -f "$work/$tgz" ] || { echo "install-dashboard: npm pack gave no tarball" >&2; exit 1; }
tar -xzf "$work/$tgz" -C "$work" package/dist/control-ui
new="$work/package/dist/control-ui"
[ -f "$new/index.html" ] || { echo "install-dashboard: openclaw@$version has no dist/control-ui/index.html" >&2; exit 1; }
echo "openclaw@$version" >"$new/.installed-from"

target="$state/control-ui"
old=
if [ -e "$target" ]; then
  old="$work/previous"
  mv "$target" "$old"
fi
mv "$new" "$target"
files=$(find "$target" -type f | wc -l)
size=$(du -sh "$target" | cut -f1)
echo "install-dashboard: openclaw@$version's Control UI is in $target ($files files, $size)"
echo "install-dashboard: keel serves it within 10 s (or send SIGHUP); open the URL 'keel dashboard' prints"
