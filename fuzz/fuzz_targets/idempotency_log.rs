//! Idempotency logs (`<state>/idempotency/<scope>.jsonl`): any bytes load without a panic, an
//! unreadable line is skipped and counted, and what keel rewrites it reads back whole: a second
//! open finds the same keys, nothing to skip and nothing to rewrite.
#![no_main]

use keel::idempotency::{Limits, Store};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Inside the window of the seeds' `t` (1763000000000), which reach a few minutes past it.
const NOW: u64 = 1_763_000_300_000;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir").keep())
}

fuzz_target!(|input: &[u8]| {
    let path = dir().join("idempotency").join("runs.jsonl");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, input).unwrap();
    // Small limits, so eviction by count and bytes is reached too.
    let limits = Limits {
        window_ms: 600_000,
        max_keys: 8,
        max_bytes: 4096,
    };
    let first = Store::default().open(&path, NOW, &limits);
    assert!(first.error.is_none(), "{first:?}");
    assert!(first.keys <= 8, "{first:?}");
    assert!(
        first.keys + first.expired + first.skipped <= first.lines,
        "{first:?}"
    );
    let again = Store::default().open(&path, NOW, &limits);
    assert_eq!(again.keys, first.keys, "{first:?} then {again:?}");
    assert_eq!(again.lines, first.keys, "{first:?} then {again:?}");
    assert!(
        again.skipped == 0 && again.expired == 0 && !again.compacted,
        "{again:?}"
    );
});
