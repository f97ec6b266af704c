#!/usr/bin/env bash
# build-static.sh — a statically linked release keel, one file to copy to a server.
#
# With the musl target installed (`rustup target add x86_64-unknown-linux-musl`) it builds
# for musl; otherwise a static-pie against glibc (`-C target-feature=+crt-static`), which
# needs only the glibc static archives (libc6-dev on Debian/Ubuntu). Caveat for the glibc
# build: resolving a provider's host name goes through glibc's NSS, which a static binary loads
# at run time from the host's glibc (same version needed); musl has no such dependency. See
# the README, "On a VPS with systemd".
#
# The explicit --target keeps RUSTFLAGS off build scripts and proc-macros (serde_derive),
# which must stay dynamic. Prints the path, `file`'s view, whether it is static, and its size.
#
# Usage: scripts/build-static.sh   (extra arguments are passed to cargo build)
set -euo pipefail

cd "$(dirname "$0")/.."

musl=x86_64-unknown-linux-musl
gnu=x86_64-unknown-linux-gnu

if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
    target="$musl"
    echo "== building for $target ==" >&2
    cargo build --release --target "$target" "$@"
else
    target="$gnu"
    echo "== $musl not installed; building a glibc static-pie for $target ==" >&2
    RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
        cargo build --release --target "$target" "$@"
fi

bin="target/$target/release/keel"
[[ -x "$bin" ]] || { echo "build-static: $bin was not produced" >&2; exit 1; }

echo "binary: $(pwd)/$bin"
if command -v file >/dev/null 2>&1; then
    echo "file:   $(file -b "$bin")"
fi

# ldd says "not a dynamic executable" for a static binary and "statically linked" for a
# static-pie; it exits non-zero for the former, hence the `|| true`.
if command -v ldd >/dev/null 2>&1; then
    ldd_out="$(ldd "$bin" 2>&1 || true)"
    if grep -qE 'not a dynamic executable|statically linked' <<<"$ldd_out"; then
        echo "static: yes (ldd: $(head -n 1 <<<"$ldd_out" | sed 's/^[[:space:]]*//'))"
    else
        echo "static: NO — ldd lists:" >&2
        echo "$ldd_out" >&2
        exit 1
    fi
else
    echo "static: unknown (ldd not available)"
fi

bytes="$(stat -c %s "$bin")"
echo "size:   $bytes bytes ($(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }') MiB)"

echo "runs:   $("$bin" --version)"
