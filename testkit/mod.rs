//! The harness the integration tests (`tests/gateway/`) and the benchmarks (`benches/`)
//! share: starting `keel serve` on 127.0.0.1:0 with a state directory of its own and reading
//! its port, token and log; a raw HTTP/1.1 client; a blocking WebSocket client of keel's
//! protocol; `/proc` readers; bounded waiting.
//!
//! It is included with `#[path]` by the test binary (`tests/gateway/main.rs`) and by each
//! bench, like the fake provider, so it needs no crate of its own. Nothing here panics on what
//! keel does: errors are returned, and each side makes of them what it needs — the tests
//! assert with `#[track_caller]` helpers (`tests/gateway/common.rs`), the benches print the
//! reason and exit 2 (`benches/support/mod.rs`). What only one side does stays on that side:
//! assertions, fixtures and the CLI runner with the tests; keep-alive requests, pacing,
//! percentiles and the report with the benches.
// The test binary and each bench compile this module on their own, and each uses only part
// of it (a bench never reads keel's log from a pipe, a test never from a file).
#![allow(dead_code)]

pub mod http;
pub mod log;
pub mod metrics;
pub mod procfs;
pub mod serve;
pub mod wait;
pub mod ws;
