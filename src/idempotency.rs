//! Idempotency windows: what the first call with a client's `idempotencyKey` answered, kept for
//! a while, so that a client that lost the answer and retries gets that answer again instead of
//! a second message sent or a second run started.
//!
//! A [`Store`] is one scope (`send`, `runs`): an in-memory [`Window`] — key → (first_ms, first
//! answer) — and its append-only log, `<state>/idempotency/<scope>.jsonl`, one JSON object a
//! line: `{"k": key, "t": first_ms, "r": answer}`. Answers are held as their JSON text, not as
//! a `Value` tree (about a third of the memory for `send`'s small objects), and parsed again
//! only for a repeat.
//!
//! Invariants:
//! - Lookups ([`Store::get`]) read memory only, so the reactor may make them. The memory lock is
//!   held for map operations, never across I/O; the log has a lock of its own, which only
//!   workers take (to append, to compact, to open).
//! - A key is remembered for `window_ms` from its first answer, and that answer is never
//!   replaced while it is live: an insert of a live key changes nothing.
//! - Bounded: at most `max_keys` keys and `max_bytes` bytes of log lines per scope (the oldest
//!   go first), no entry over [`MAX_ENTRY_BYTES`]; callers refuse keys over [`MAX_KEY_CHARS`]
//!   characters ([`key_problem`]).
//! - An entry is in memory before its line is appended, and a compaction takes its snapshot
//!   under the log lock, so a compaction never drops an entry that memory holds (at worst a
//!   line is written twice, and the first of equal keys wins at the next open).
//! - An append is one `write` of a whole line, without fsync: it survives the process being
//!   killed, not a power cut (docs/DESIGN.md says what that costs). The log is rewritten with
//!   [`state::write_atomic`] at open when it holds anything that is no longer live, and by an
//!   append when it holds more than twice the live lines; a torn last line never swallows the
//!   next append.
//! - A line that does not parse (another program's file, a crash mid-append) or is too long is
//!   skipped and counted, never fatal; a log that cannot be read or written leaves the keys in
//!   memory only, with a warning.
//!
//! Times are wall-clock milliseconds passed in by the caller (they outlive the process), so the
//! tests never sleep.

use crate::state;
use crate::sync::lock;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The longest `idempotencyKey` accepted, in characters (OpenClaw's own limit for hook replay
/// keys): a client cannot grow keel's memory with huge keys.
pub const MAX_KEY_CHARS: usize = 256;
/// The largest entry (its log line) a window keeps; a larger one is not remembered. Also the
/// longest line read back from a log.
pub const MAX_ENTRY_BYTES: usize = 64 << 10;
/// An append compacts the log once it holds more than twice the live lines plus this many.
const COMPACT_SLACK: usize = 64;

/// Why `key` cannot be an idempotency key (too long), as an `INVALID_REQUEST` message.
pub fn key_problem(key: &str) -> Option<String> {
    (key.len() > MAX_KEY_CHARS && key.chars().nth(MAX_KEY_CHARS).is_some()).then(|| {
        format!("invalid params: idempotencyKey must be at most {MAX_KEY_CHARS} characters")
    })
}

/// `s` cut to at most `max` bytes (at a character boundary) with a marker that says so.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [cut: {} of {} bytes kept]", &s[..end], end, s.len())
}

/// How long keys are kept, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub window_ms: u64,
    pub max_keys: usize,
    /// The log lines of the live entries, together.
    pub max_bytes: usize,
}

fn live(first_ms: u64, now_ms: u64, window_ms: u64) -> bool {
    now_ms.saturating_sub(first_ms) < window_ms
}

#[derive(Debug)]
struct Slot {
    seq: u64,
    first_ms: u64,
    /// The answer's JSON text.
    answer: Arc<str>,
    /// The size of its log line.
    bytes: usize,
}

/// Keys and their first answers, oldest first.
#[derive(Debug, Default)]
pub struct Window {
    slots: HashMap<Arc<str>, Slot>,
    /// Insertion order (seq → key): what expires or is evicted first.
    order: BTreeMap<u64, Arc<str>>,
    next_seq: u64,
    bytes: usize,
}

impl Window {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The log bytes of the live entries.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The first answer (its JSON text) for `key`, if it is inside the window at `now_ms`.
    pub fn get(&self, key: &str, now_ms: u64, window_ms: u64) -> Option<Arc<str>> {
        let slot = self.slots.get(key)?;
        live(slot.first_ms, now_ms, window_ms).then(|| slot.answer.clone())
    }

    /// Remembers `answer` (JSON text) as `key`'s first answer at `first_ms` (its log line being
    /// `bytes` long) unless the key has a live one or the entry is too big; then drops, oldest first,
    /// what has expired and what is over the limits. Returns whether it was inserted.
    pub fn insert(
        &mut self,
        key: &str,
        first_ms: u64,
        answer: Arc<str>,
        bytes: usize,
        now_ms: u64,
        limits: &Limits,
    ) -> bool {
        if bytes > MAX_ENTRY_BYTES || bytes > limits.max_bytes || limits.max_keys == 0 {
            return false;
        }
        if let Some(slot) = self.slots.get(key) {
            if live(slot.first_ms, now_ms, limits.window_ms) {
                return false;
            }
            self.remove(key);
        }
        let key: Arc<str> = Arc::from(key);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, key.clone());
        self.slots.insert(
            key,
            Slot {
                seq,
                first_ms,
                answer,
                bytes,
            },
        );
        self.bytes += bytes;
        self.trim(now_ms, limits);
        true
    }

    /// Drops from the oldest end what has expired, and what is over the limits.
    pub fn trim(&mut self, now_ms: u64, limits: &Limits) {
        while let Some((_, key)) = self.order.first_key_value() {
            let key = key.clone();
            let expired = self
                .slots
                .get(&key)
                .is_none_or(|s| !live(s.first_ms, now_ms, limits.window_ms));
            let over = self.slots.len() > limits.max_keys || self.bytes > limits.max_bytes;
            if !expired && !over {
                break;
            }
            if self.remove(&key).is_none() {
                self.order.pop_first();
            }
        }
    }

    fn remove(&mut self, key: &str) -> Option<Slot> {
        let slot = self.slots.remove(key)?;
        self.order.remove(&slot.seq);
        self.bytes -= slot.bytes;
        Some(slot)
    }

    /// Every entry, oldest first: (key, first_ms, answer).
    fn snapshot(&self) -> Vec<(Arc<str>, u64, Arc<str>)> {
        self.order
            .values()
            .filter_map(|k| {
                let s = self.slots.get(k)?;
                Some((k.clone(), s.first_ms, s.answer.clone()))
            })
            .collect()
    }
}

#[derive(Deserialize)]
struct LineIn {
    k: String,
    t: u64,
    r: Value,
}

/// One log line, newline included; `answer` is JSON text.
fn encode(key: &str, first_ms: u64, answer: &str) -> io::Result<Vec<u8>> {
    let key =
        serde_json::to_string(key).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(format!("{{\"k\":{key},\"t\":{first_ms},\"r\":{answer}}}\n").into_bytes())
}

fn decode(line: &[u8]) -> Option<LineIn> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let l: LineIn = serde_json::from_slice(line).ok()?;
    (!l.k.is_empty() && key_problem(&l.k).is_none()).then_some(l)
}

/// What [`Store::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Keys inside the window, now in memory.
    pub keys: usize,
    /// Lines in the log.
    pub lines: usize,
    /// Lines whose key had expired.
    pub expired: usize,
    /// Lines that could not be read (not JSON, not an entry, too long, cut short).
    pub skipped: usize,
    /// Whether the log was rewritten with only the live entries.
    pub compacted: bool,
    /// Why the log could not be read or rewritten (the keys read so far are kept).
    pub error: Option<String>,
}

impl std::fmt::Display for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} loaded from {} lines ({} expired, {} unreadable lines skipped{})",
            self.keys,
            self.lines,
            self.expired,
            self.skipped,
            if self.compacted { "; compacted" } else { "" }
        )?;
        if let Some(e) = &self.error {
            write!(f, "; {e}")?;
        }
        Ok(())
    }
}

/// Logs what opening scope `scope`'s log found: one line, a warning if anything was wrong.
pub fn log_loaded(scope: &str, path: &Path, loaded: &Loaded) {
    if loaded.error.is_some() || loaded.skipped > 0 {
        log::warn!("idempotency keys ({scope}) {}: {loaded}", path.display());
    } else {
        log::info!("idempotency keys ({scope}) {}: {loaded}", path.display());
    }
}

/// Reads a log into a window: expired and unreadable lines are dropped, and the first live
/// line of a key wins. Also says whether the file ends in a torn line (no newline).
fn read_log(path: &Path, now_ms: u64, limits: &Limits) -> (Window, Loaded, bool) {
    let mut window = Window::default();
    let mut report = Loaded::default();
    let mut torn = false;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (window, report, false),
        Err(e) => {
            report.error = Some(format!("cannot read {}: {e}", path.display()));
            return (window, report, false);
        }
    };
    let mut r = BufReader::new(file);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = (&mut r)
            .take(MAX_ENTRY_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf);
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                report.error = Some(format!("cannot read {}: {e}", path.display()));
                break;
            }
        }
        report.lines += 1;
        let whole = buf.ends_with(b"\n");
        if !whole && buf.len() > MAX_ENTRY_BYTES {
            // Too long to be an entry keel wrote: skipped to its end without holding it.
            report.skipped += 1;
            match skip_line(&mut r) {
                Ok(found) => torn |= !found,
                Err(e) => {
                    report.error = Some(format!("cannot read {}: {e}", path.display()));
                    break;
                }
            }
            continue;
        }
        if !whole {
            torn = true;
        }
        let Some(line) = decode(&buf) else {
            report.skipped += 1;
            continue;
        };
        if !live(line.t, now_ms, limits.window_ms) {
            report.expired += 1;
            continue;
        }
        // Held and counted as keel writes it (another program's line may be spelled
        // differently), so a rewritten log holds what was counted.
        let Ok(answer) = serde_json::to_string(&line.r) else {
            report.skipped += 1;
            continue;
        };
        let bytes = encode(&line.k, line.t, &answer).map_or(usize::MAX, |l| l.len());
        window.insert(&line.k, line.t, Arc::from(answer), bytes, now_ms, limits);
    }
    report.keys = window.len();
    (window, report, torn)
}

/// Consumes input up to and including the next newline; false if the input ended first.
fn skip_line(r: &mut impl BufRead) -> io::Result<bool> {
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(false);
        }
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            r.consume(i + 1);
            return Ok(true);
        }
        let n = buf.len();
        r.consume(n);
    }
}

/// The log file and what is known of it.
#[derive(Debug, Default)]
struct Log {
    path: Option<PathBuf>,
    /// Kept open between appends; dropped after a compaction (the path is a new file) or an
    /// error.
    file: Option<File>,
    /// Lines in the file (as far as keel knows).
    lines: usize,
    /// The file may end without a newline: the next append starts with one.
    torn: bool,
    /// The last write failed (warned once until one succeeds).
    failing: bool,
}

/// Counters for `/metrics`, readable without a lock.
#[derive(Debug, Default)]
pub struct Stats {
    pub keys: AtomicU64,
    pub bytes: AtomicU64,
    /// Calls answered with the first answer of their key.
    pub repeats: AtomicU64,
    /// Log lines skipped at open.
    pub skipped_lines: AtomicU64,
    pub write_errors: AtomicU64,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The store is not open yet (keel is starting): nobody can tell.
    Loading,
    Miss,
    /// The first answer, inside the window.
    Hit(Value),
}

/// An entry inserted in memory whose line is still to be appended ([`Store::append`]).
#[must_use = "the entry is in memory only until it is appended"]
#[derive(Debug)]
pub struct Pending(Vec<u8>);

/// One scope's window and its log, shared by every thread.
#[derive(Debug, Default)]
pub struct Store {
    /// `None` until [`Store::open`] has loaded the log.
    mem: Mutex<Option<Window>>,
    log: Mutex<Log>,
    pub stats: Stats,
}

impl Store {
    /// Loads the log at `path` (creating its directory 0700), drops what has expired and what
    /// cannot be read, rewrites the log if that changed anything, and makes the window
    /// available. Problems are in the report, never fatal: the keys read so far are used.
    pub fn open(&self, path: &Path, now_ms: u64, limits: &Limits) -> Loaded {
        let mut log = lock(&self.log);
        let (window, mut report, torn) = match path.parent().map(state::ensure_dir) {
            Some(Err(e)) => {
                let error = Some(format!("cannot create {}: {e}", path.display()));
                let report = Loaded {
                    error,
                    ..Loaded::default()
                };
                (Window::default(), report, false)
            }
            _ => read_log(path, now_ms, limits),
        };
        log.path = Some(path.to_path_buf());
        log.file = None;
        log.lines = report.lines;
        log.torn = torn;
        if report.error.is_none() && (torn || report.lines != window.len()) {
            match rewrite(path, &window.snapshot()) {
                Ok(()) => {
                    log.lines = window.len();
                    log.torn = false;
                    report.compacted = true;
                }
                Err(e) => report.error = Some(format!("cannot rewrite {}: {e}", path.display())),
            }
        }
        self.stats
            .skipped_lines
            .fetch_add(report.skipped as u64, Ordering::Relaxed);
        self.publish(&window);
        *lock(&self.mem) = Some(window);
        report
    }

    /// The first answer for `key` if it is inside the window (memory only; the answer is
    /// parsed after the lock is released).
    pub fn get(&self, key: &str, now_ms: u64, window_ms: u64) -> Lookup {
        let text = match lock(&self.mem).as_ref() {
            None => return Lookup::Loading,
            Some(w) => w.get(key, now_ms, window_ms),
        };
        let Some(text) = text else {
            return Lookup::Miss;
        };
        match serde_json::from_str(&text) {
            Ok(answer) => {
                self.stats.repeats.fetch_add(1, Ordering::Relaxed);
                Lookup::Hit(answer)
            }
            // Unreachable: the text was written by serde_json from a Value.
            Err(_) => Lookup::Miss,
        }
    }

    /// Remembers `answer` for `key` in memory (see [`Window::insert`]); the returned line is
    /// for [`Store::append`]. `None` when nothing was inserted: the key has a live answer, the
    /// entry is too big, or the store is not open.
    pub fn insert(
        &self,
        key: &str,
        now_ms: u64,
        answer: &Value,
        limits: &Limits,
    ) -> Option<Pending> {
        let encoded = serde_json::to_string(answer)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            .and_then(|text| Ok((encode(key, now_ms, &text)?, text)));
        let (line, text) = match encoded {
            Ok(x) => x,
            Err(e) => {
                log::warn!("idempotency: cannot encode the answer for a key: {e}");
                return None;
            }
        };
        let mut mem = lock(&self.mem);
        let w = mem.as_mut()?;
        let inserted = w.insert(key, now_ms, Arc::from(text), line.len(), now_ms, limits);
        self.publish(w);
        inserted.then_some(Pending(line))
    }

    /// Appends an inserted entry's line to the log, and compacts the log when it holds more
    /// than twice the live lines. Failures are logged (once per streak) and counted; the entry
    /// stays in memory.
    pub fn append(&self, pending: Pending) {
        let mut log = lock(&self.log);
        let Some(path) = log.path.clone() else {
            return;
        };
        let written = append_line(&mut log, &path, &pending.0);
        self.settle(&mut log, &path, written, "append to");
        // Taken under the log lock: an entry inserted after the snapshot appends after the
        // rewrite.
        let snapshot = match lock(&self.mem).as_ref() {
            Some(w) if log.lines > 2 * w.len() + COMPACT_SLACK => w.snapshot(),
            _ => return,
        };
        let rewritten = rewrite(&path, &snapshot);
        if rewritten.is_ok() {
            log.file = None;
            log.lines = snapshot.len();
            log.torn = false;
        }
        self.settle(&mut log, &path, rewritten, "compact");
    }

    /// [`Store::insert`] then [`Store::append`].
    pub fn remember(&self, key: &str, now_ms: u64, answer: &Value, limits: &Limits) {
        if let Some(p) = self.insert(key, now_ms, answer, limits) {
            self.append(p);
        }
    }

    fn settle(&self, log: &mut Log, path: &Path, result: io::Result<()>, what: &str) {
        match result {
            Ok(()) if log.failing => {
                log.failing = false;
                log::info!("idempotency: {} is written again", path.display());
            }
            Ok(()) => {}
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                if !log.failing {
                    log::warn!(
                        "idempotency: cannot {what} {}: {e}; keys stay in memory until it works",
                        path.display()
                    );
                }
                log.failing = true;
            }
        }
    }

    fn publish(&self, w: &Window) {
        self.stats.keys.store(w.len() as u64, Ordering::Relaxed);
        self.stats.bytes.store(w.bytes() as u64, Ordering::Relaxed);
    }
}

/// One write of a whole line (after a newline if the file may end torn).
fn append_line(log: &mut Log, path: &Path, line: &[u8]) -> io::Result<()> {
    if log.file.is_none() {
        log.file = Some(
            OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(path)?,
        );
    }
    let Some(file) = log.file.as_mut() else {
        return Err(io::Error::other("log file not open"));
    };
    let result = if log.torn {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.push(b'\n');
        bytes.extend_from_slice(line);
        file.write_all(&bytes)
    } else {
        file.write_all(line)
    };
    match result {
        Ok(()) => {
            log.torn = false;
            log.lines += 1;
            Ok(())
        }
        Err(e) => {
            // Part of the line may be in the file.
            log.torn = true;
            log.file = None;
            Err(e)
        }
    }
}

/// Replaces the log with `entries`, atomically.
fn rewrite(path: &Path, entries: &[(Arc<str>, u64, Arc<str>)]) -> io::Result<()> {
    state::write_atomic_with(path, |f| {
        let mut w = io::BufWriter::new(f);
        for (k, t, r) in entries {
            w.write_all(&encode(k, *t, r)?)?;
        }
        w.flush()
    })
}

/// The `keel_idempotency_*` families for these scopes.
pub fn render_metrics(out: &mut String, scopes: &[(&str, &Store)]) {
    type Read = fn(&Stats) -> &AtomicU64;
    let families: [(&str, &str, &str, Read); 4] = [
        (
            "keel_idempotency_keys",
            "gauge",
            "Idempotency keys remembered, by scope.",
            |s| &s.keys,
        ),
        (
            "keel_idempotency_repeats_total",
            "counter",
            "Calls answered with the first answer of their idempotency key, by scope.",
            |s| &s.repeats,
        ),
        (
            "keel_idempotency_skipped_lines_total",
            "counter",
            "Idempotency log lines that could not be read at start-up, by scope.",
            |s| &s.skipped_lines,
        ),
        (
            "keel_idempotency_write_errors_total",
            "counter",
            "Idempotency log appends and rewrites that failed, by scope.",
            |s| &s.write_errors,
        ),
    ];
    for (name, kind, help, read) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (scope, store) in scopes {
            let v = read(&store.stats).load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{scope=\"{scope}\"}} {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;

    const T0: u64 = 1_800_000_000_000;
    const MIN: u64 = 60_000;

    fn limits() -> Limits {
        Limits {
            window_ms: 10 * MIN,
            max_keys: 1_000,
            max_bytes: 1 << 20,
        }
    }

    fn path(dir: &Path) -> PathBuf {
        dir.join("idempotency").join("send.jsonl")
    }

    fn opened(dir: &Path, now: u64, l: &Limits) -> (Store, Loaded) {
        let s = Store::default();
        let loaded = s.open(&path(dir), now, l);
        (s, loaded)
    }

    fn hit(s: &Store, key: &str, now: u64) -> Option<Value> {
        match s.get(key, now, limits().window_ms) {
            Lookup::Hit(v) => Some(v),
            Lookup::Miss => None,
            Lookup::Loading => panic!("not open"),
        }
    }

    fn lines(dir: &Path) -> Vec<String> {
        fs::read_to_string(path(dir))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_repeat_inside_the_window_gets_the_first_answer_and_none_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits();
        let unopened = Store::default();
        assert_eq!(unopened.get("k", T0, l.window_ms), Lookup::Loading);
        assert!(unopened.insert("k", T0, &json!(1), &l).is_none());

        let (s, loaded) = opened(tmp.path(), T0, &l);
        assert_eq!(loaded, Loaded::default(), "no file yet");
        assert_eq!(hit(&s, "k", T0), None);
        s.remember("k", T0, &json!({"id": "first"}), &l);
        // A second answer for a live key changes nothing, in memory or on disk.
        assert!(
            s.insert("k", T0 + 1, &json!({"id": "second"}), &l)
                .is_none()
        );
        assert_eq!(
            hit(&s, "k", T0 + 10 * MIN - 1),
            Some(json!({"id": "first"}))
        );
        assert_eq!(hit(&s, "k", T0 + 10 * MIN), None, "the window is over");
        // After the window the key is new again.
        s.remember("k", T0 + 10 * MIN, &json!({"id": "third"}), &l);
        assert_eq!(hit(&s, "k", T0 + 10 * MIN), Some(json!({"id": "third"})));
        assert_eq!(s.stats.repeats.load(Ordering::Relaxed), 2);
        assert_eq!(s.stats.keys.load(Ordering::Relaxed), 1);
        assert_eq!(lines(tmp.path()).len(), 2, "{:?}", lines(tmp.path()));
    }

    #[test]
    fn keys_survive_a_reopen_and_expired_ones_are_dropped_from_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits();
        let (s, _) = opened(tmp.path(), T0, &l);
        s.remember("old", T0, &json!("a"), &l);
        s.remember("mid", T0 + 5 * MIN, &json!("b"), &l);
        s.remember("new", T0 + 9 * MIN, &json!({"x": [1, 2]}), &l);
        drop(s);

        // Nothing expired: the log is left as it is.
        let (s, loaded) = opened(tmp.path(), T0 + 9 * MIN, &l);
        assert_eq!((loaded.keys, loaded.lines, loaded.compacted), (3, 3, false));
        assert_eq!(hit(&s, "old", T0 + 9 * MIN), Some(json!("a")));
        drop(s);

        let (s, loaded) = opened(tmp.path(), T0 + 12 * MIN, &l);
        assert_eq!(
            loaded,
            Loaded {
                keys: 2,
                lines: 3,
                expired: 1,
                skipped: 0,
                compacted: true,
                error: None,
            }
        );
        assert_eq!(hit(&s, "old", T0 + 12 * MIN), None);
        assert_eq!(hit(&s, "new", T0 + 12 * MIN), Some(json!({"x": [1, 2]})));
        let on_disk = lines(tmp.path());
        assert_eq!(on_disk.len(), 2, "compacted: {on_disk:?}");
        assert!(on_disk[0].contains("\"mid\"") && on_disk[1].contains("\"new\""));
        // Written as keel writes state: private, no temp file left.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path(tmp.path())), 0o600);
        assert_eq!(mode(&tmp.path().join("idempotency")), 0o700);
        assert_eq!(
            fs::read_dir(tmp.path().join("idempotency"))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn an_appended_file_is_private_too() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits();
        let (s, _) = opened(tmp.path(), T0, &l);
        s.remember("k", T0, &json!(1), &l);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path(tmp.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn the_oldest_keys_go_first_past_the_count() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Limits {
            max_keys: 3,
            ..limits()
        };
        let (s, _) = opened(tmp.path(), T0, &l);
        for i in 0..5 {
            s.remember(&format!("k{i}"), T0 + i, &json!(i), &l);
        }
        let now = T0 + 5;
        let kept: Vec<bool> = (0..5)
            .map(|i| hit(&s, &format!("k{i}"), now).is_some())
            .collect();
        assert_eq!(kept, [false, false, true, true, true]);
        drop(s);
        // A log holding more than the cap (a smaller cap after a reload) keeps the newest.
        let l2 = Limits {
            max_keys: 2,
            ..limits()
        };
        let (s, loaded) = opened(tmp.path(), now, &l2);
        assert_eq!((loaded.keys, loaded.lines, loaded.compacted), (2, 5, true));
        assert!(hit(&s, "k3", now).is_some() && hit(&s, "k4", now).is_some());
        assert_eq!(lines(tmp.path()).len(), 2);
    }

    #[test]
    fn bytes_are_bounded_and_an_entry_too_big_is_not_remembered() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Limits {
            max_bytes: 1000,
            ..limits()
        };
        let (s, _) = opened(tmp.path(), T0, &l);
        let text = |n: usize| json!("x".repeat(n));
        // Each line is ~ 300 bytes: the fourth pushes the first out.
        for i in 0..4 {
            s.remember(&format!("k{i}"), T0, &text(280), &l);
        }
        assert_eq!(hit(&s, "k0", T0), None);
        assert!(hit(&s, "k3", T0).is_some());
        let held = s.stats.bytes.load(Ordering::Relaxed);
        assert!(held <= 1000 && held > 600, "{held}");
        assert!(
            s.insert("big", T0, &text(1000), &l).is_none(),
            "over max_bytes"
        );
        let roomy = limits();
        assert!(
            s.insert("huge", T0, &text(MAX_ENTRY_BYTES), &roomy)
                .is_none(),
            "over MAX_ENTRY_BYTES"
        );
        assert_eq!(hit(&s, "big", T0), None);
        assert!(
            hit(&s, "k3", T0).is_some(),
            "a refused entry evicts nothing"
        );
    }

    #[test]
    fn corrupt_torn_and_foreign_lines_are_skipped_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits();
        let p = path(tmp.path());
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let good = |k: &str| format!("{{\"k\":\"{k}\",\"t\":{T0},\"r\":{{\"ok\":true}}}}\n");
        let mut file = String::new();
        file += &good("a");
        file += "not json at all\n";
        file += "\n";
        file += "{\"k\":\"b\",\"t\":\"yesterday\",\"r\":1}\n";
        file += &format!("{{\"k\":\"\",\"t\":{T0},\"r\":1}}\n");
        file += &format!("{{\"k\":\"{}\",\"t\":{T0},\"r\":1}}\n", "k".repeat(300));
        file += &format!(
            "{{\"k\":\"long\",\"t\":{T0},\"r\":\"{}\"}}\n",
            "z".repeat(MAX_ENTRY_BYTES * 3)
        );
        file += "[1,2,3]\n";
        file += "\u{0}\u{ff}\n";
        file += &good("c");
        // A second line for "a": the first answer wins.
        file += &format!("{{\"k\":\"a\",\"t\":{},\"r\":{{\"ok\":false}}}}\n", T0 + 1);
        // A crash mid-append, then invalid UTF-8 on the same line.
        file += "{\"k\":\"torn\",\"t\":";
        let mut bytes = file.into_bytes();
        bytes.extend_from_slice(&[0xC3, 0x28, b'\n']);
        bytes.extend_from_slice(good("d").trim_end().as_bytes()); // complete, no newline
        fs::write(&p, &bytes).unwrap();

        let (s, loaded) = opened(tmp.path(), T0 + 1, &l);
        assert_eq!(loaded.lines, 13, "{loaded:?}");
        assert_eq!(loaded.skipped, 9, "{loaded:?}");
        assert_eq!(loaded.keys, 3, "{loaded:?}");
        assert!(loaded.compacted && loaded.error.is_none(), "{loaded:?}");
        assert_eq!(s.stats.skipped_lines.load(Ordering::Relaxed), 9);
        assert_eq!(hit(&s, "a", T0 + 1), Some(json!({"ok": true})));
        assert!(hit(&s, "c", T0 + 1).is_some() && hit(&s, "d", T0 + 1).is_some());
        assert_eq!(hit(&s, "long", T0 + 1), None);
        // The rewritten log holds exactly the good entries, and appends after them.
        s.remember("e", T0 + 2, &json!(5), &l);
        drop(s);
        let (s, loaded) = opened(tmp.path(), T0 + 3, &l);
        assert_eq!(
            (loaded.keys, loaded.skipped, loaded.compacted),
            (4, 0, false)
        );
        assert_eq!(hit(&s, "e", T0 + 3), Some(json!(5)));
    }

    #[test]
    fn a_long_last_line_without_newline_is_skipped_as_torn() {
        let tmp = tempfile::tempdir().unwrap();
        let p = path(tmp.path());
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, "x".repeat(MAX_ENTRY_BYTES * 2)).unwrap();
        let (s, loaded) = opened(tmp.path(), T0, &limits());
        assert_eq!((loaded.lines, loaded.skipped, loaded.keys), (1, 1, 0));
        assert!(loaded.compacted);
        assert_eq!(fs::read(&p).unwrap(), b"");
        drop(s);
    }

    #[test]
    fn an_append_after_a_torn_line_starts_a_line_of_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.jsonl");
        fs::write(&p, b"{\"k\":\"half").unwrap();
        let mut log = Log {
            path: Some(p.clone()),
            torn: true,
            ..Log::default()
        };
        let line = encode("whole", T0, "1").unwrap();
        append_line(&mut log, &p, &line).unwrap();
        append_line(&mut log, &p, &encode("next", T0, "2").unwrap()).unwrap();
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            format!(
                "{{\"k\":\"half\n{}{}",
                String::from_utf8(line).unwrap(),
                String::from_utf8(encode("next", T0, "2").unwrap()).unwrap()
            )
        );
        assert!(!log.torn);
    }

    #[test]
    fn the_log_is_compacted_when_it_holds_twice_the_live_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Limits {
            max_keys: 10,
            ..limits()
        };
        let (s, _) = opened(tmp.path(), T0, &l);
        let mut most = 0;
        for i in 0..500u64 {
            s.remember(&format!("k{i}"), T0 + i, &json!(i), &l);
            most = most.max(lines(tmp.path()).len());
        }
        assert!(most <= 2 * 10 + COMPACT_SLACK + 1, "{most} lines at most");
        drop(s);
        let (s, loaded) = opened(tmp.path(), T0 + 500, &l);
        assert_eq!(loaded.keys, 10);
        assert!(hit(&s, "k499", T0 + 500).is_some() && hit(&s, "k489", T0 + 500).is_none());
    }

    #[test]
    fn an_entry_inserted_before_a_compaction_and_appended_after_is_kept_once() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Limits {
            max_keys: 5,
            ..limits()
        };
        let (s, _) = opened(tmp.path(), T0, &l);
        // "x" is in memory; its append comes after other threads compacted the log.
        let pending = s.insert("x", T0, &json!("first"), &l).unwrap();
        for i in 0..100u64 {
            s.remember(&format!("k{i}"), T0 + 1 + i, &json!(i), &l);
        }
        // Evicted from memory since (count cap): written anyway, and harmless.
        s.append(pending);
        let (_, loaded) = opened(tmp.path(), T0 + 200, &l);
        assert_eq!(loaded.keys, 5);

        // Inserted, taken into a compaction's snapshot, then appended: two lines, one key.
        let tmp = tempfile::tempdir().unwrap();
        let l = limits();
        let w = l.window_ms;
        let (s, _) = opened(tmp.path(), T0, &l);
        for i in 0..70u64 {
            s.remember(&format!("k{i}"), T0, &json!(i), &l);
        }
        let pending = s.insert("x", T0 + w - 1, &json!("first"), &l).unwrap();
        // The k* have expired: 71 lines for 2 live keys (x, y) compacts.
        s.remember("y", T0 + w, &json!("y"), &l);
        assert_eq!(lines(tmp.path()).len(), 2, "{:?}", lines(tmp.path()));
        s.append(pending);
        let on_disk = lines(tmp.path());
        assert_eq!(
            on_disk.iter().filter(|l| l.contains("\"x\"")).count(),
            2,
            "{on_disk:?}"
        );
        let (s, loaded) = opened(tmp.path(), T0 + w, &l);
        assert_eq!((loaded.keys, loaded.lines), (2, 3));
        assert_eq!(hit(&s, "x", T0 + w), Some(json!("first")));
    }

    #[test]
    fn an_unreadable_log_leaves_the_keys_in_memory() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits();
        // The log's path is a directory: it cannot be read, rewritten or appended to.
        fs::create_dir_all(path(tmp.path())).unwrap();
        let (s, loaded) = opened(tmp.path(), T0, &l);
        assert!(loaded.error.is_some(), "{loaded:?}");
        s.remember("k", T0, &json!(1), &l);
        s.remember("k2", T0, &json!(2), &l);
        assert_eq!(hit(&s, "k", T0), Some(json!(1)));
        assert_eq!(s.stats.write_errors.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn keys_are_at_most_256_characters() {
        assert_eq!(key_problem(&"k".repeat(256)), None);
        assert_eq!(key_problem(&"é".repeat(256)), None, "characters, not bytes");
        let why = key_problem(&"k".repeat(257)).unwrap();
        assert!(
            why.contains("idempotencyKey") && why.contains("256"),
            "{why}"
        );
        assert_eq!(key_problem(""), None);
    }

    #[test]
    fn clip_cuts_at_a_character_boundary_and_says_so() {
        assert_eq!(clip("short", 10), "short");
        let s = "ab€cd"; // € is 3 bytes, at 2..5
        assert_eq!(clip(s, 3), "ab… [cut: 2 of 7 bytes kept]");
        assert_eq!(clip(s, 5), "ab€… [cut: 5 of 7 bytes kept]");
    }

    #[test]
    fn metrics_name_every_scope() {
        let a = Store::default();
        let b = Store::default();
        b.stats.repeats.fetch_add(3, Ordering::Relaxed);
        let mut out = String::new();
        render_metrics(&mut out, &[("send", &a), ("runs", &b)]);
        assert!(
            out.contains("keel_idempotency_keys{scope=\"send\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("keel_idempotency_repeats_total{scope=\"runs\"} 3"),
            "{out}"
        );
    }
}
