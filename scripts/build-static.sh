#!/usr/bin/env bash
# build-static.sh — keel as one statically linked file to copy to a server: the musl build
# (x86_64-unknown-linux-musl), with musl's own resolver (/etc/hosts, /etc/resolv.conf) and
# jemalloc as its allocator (src/main.rs), nothing loaded from the host at run time.
#
# It builds the `static` cargo profile (release with fat LTO, one codegen unit and the symbols
# stripped; see Cargo.toml) into target/x86_64-unknown-linux-musl/static/keel, and installs what
# the build needs when it is missing:
#   - the Rust target: `rustup target add x86_64-unknown-linux-musl`;
#   - musl-gcc, for the C parts of `ring` and jemalloc (Debian's/Ubuntu's `musl-tools`), and
#     `make`, which jemalloc's build runs: through apt-get when this runs as root or with sudo
#     that needs no password.
# When it cannot, it stops and says what to install.
#
# Prints the path, `file`'s view, whether it is static, its size (stripped) and its --version.
#
# Usage: scripts/build-static.sh   (extra arguments are passed to cargo build)
set -euo pipefail

cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
profile=static

die() {
    echo "build-static: $*" >&2
    exit 1
}

# ---- the Rust target ------------------------------------------------------------------------
target_installed() {
    local sysroot
    sysroot="$(rustc --print sysroot 2>/dev/null)" || return 1
    [[ -d "$sysroot/lib/rustlib/$target/lib" ]]
}

if ! target_installed; then
    if command -v rustup >/dev/null 2>&1; then
        echo "== adding the Rust target $target ==" >&2
        rustup target add "$target" ||
            die "could not add the Rust target; install it with: rustup target add $target"
    fi
    target_installed ||
        die "the Rust target $target is not installed; install it with: rustup target add $target"
fi

# ---- musl-gcc and make ----------------------------------------------------------------------
# musl-gcc compiles the C parts of ring and jemalloc for musl; jemalloc's build runs make.
missing=()
command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
command -v make >/dev/null 2>&1 || missing+=(make)
if [[ ${#missing[@]} -gt 0 ]]; then
    apt=()
    if command -v apt-get >/dev/null 2>&1; then
        if [[ "$(id -u)" -eq 0 ]]; then
            apt=(apt-get)
        elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            apt=(sudo -n apt-get)
        fi
    fi
    if [[ ${#apt[@]} -gt 0 ]]; then
        echo "== installing ${missing[*]} with apt-get ==" >&2
        export DEBIAN_FRONTEND=noninteractive
        # A fresh machine's package lists may be missing or stale: update once, then install.
        "${apt[@]}" install -y -q "${missing[@]}" >&2 ||
            { "${apt[@]}" update -q >&2 && "${apt[@]}" install -y -q "${missing[@]}" >&2; } ||
            die "apt-get could not install ${missing[*]}; install them and run again"
    fi
    command -v musl-gcc >/dev/null 2>&1 ||
        die "musl-gcc is missing (the C parts of ring and jemalloc need it); install it (Debian/Ubuntu: sudo apt-get install musl-tools; Fedora: sudo dnf install musl-gcc) and run again"
    command -v make >/dev/null 2>&1 ||
        die "make is missing (jemalloc's build runs it); install it (Debian/Ubuntu: sudo apt-get install make) and run again"
fi

# ---- the build ------------------------------------------------------------------------------
# The explicit --target keeps target settings off build scripts and proc-macros (serde_derive),
# which stay dynamic host programs.
echo "== building keel for $target (profile $profile) ==" >&2
cargo build --profile "$profile" --target "$target" --bin keel "$@"

bin="target/$target/$profile/keel"
[[ -x "$bin" ]] || die "$bin was not produced"

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

# The profile strips the symbols (`strip = true`): this is the size of the file to copy.
bytes="$(stat -c %s "$bin")"
echo "size:   $bytes bytes ($(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }') MiB), stripped"

echo "runs:   $("$bin" --version)"
