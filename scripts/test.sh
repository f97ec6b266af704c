#!/usr/bin/env bash
# The test command: formatting, lints, then every test (unit tests and the integration tests
# that run the real binary on 127.0.0.1:0). Needs only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked "$@"
