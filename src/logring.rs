//! keel's own recent log lines, in memory, for `logs.tail`: every record the logger writes is
//! also kept here as one JSON line (`{time, level, subsystem, message}`, the fields OpenClaw's
//! dashboard reads from its log file), bounded by lines and bytes, oldest dropped first.
//!
//! Lines have offsets as if they were appended to a file (each line's length plus its
//! newline), so a reader's cursor is a byte offset: polling with the last answer's cursor
//! returns only what was logged since, and a cursor that fell out of the ring (older lines
//! dropped) or does not belong to this process is answered from the tail with `reset`.
//!
//! Any thread logs, the reactor too: a push holds the ring's lock for a `VecDeque` push and a
//! few pops; a reader copies `Arc`s under it and serializes after. The secrets of the config
//! in force are scrubbed from every message before it is kept (log sites do not print them;
//! this is the second line).

use crate::sync::lock;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Lines kept, at most.
pub const MAX_LINES: usize = 2_000;
/// Bytes kept, at most (each line counts its newline).
pub const MAX_BYTES: usize = 1 << 20;
/// A message longer than this is cut (with a marker), so one record cannot take the ring.
const MAX_MESSAGE: usize = 16 << 10;
/// What a scrubbed secret becomes.
pub const REDACTED: &str = "<redacted>";
/// Secrets shorter than this are not scrubbed from messages: they would blank common words.
const MIN_SECRET: usize = 4;

#[derive(Default)]
struct Inner {
    /// (offset of the line's first byte, the line without its newline).
    lines: VecDeque<(u64, Arc<str>)>,
    bytes: usize,
    /// Offset just past the newest line: the "file size".
    end: u64,
}

/// The ring; [`global`] is the one the logger fills.
#[derive(Default)]
pub struct LogRing {
    inner: Mutex<Inner>,
    secrets: Mutex<Arc<Vec<String>>>,
}

/// What [`LogRing::tail`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Tail {
    pub lines: Vec<Arc<str>>,
    /// Where the next poll continues: the offset past the last line returned.
    pub cursor: u64,
    /// Offset past the newest line kept.
    pub size: u64,
    /// Older lines exist that this answer leaves out (by `maxBytes` or `limit`).
    pub truncated: bool,
    /// The cursor could not be continued from (lines were lost, or it is not this process's):
    /// the answer starts again from the tail.
    pub reset: bool,
}

static GLOBAL: std::sync::OnceLock<LogRing> = std::sync::OnceLock::new();

/// The process's ring, which the logger fills.
pub fn global() -> &'static LogRing {
    GLOBAL.get_or_init(LogRing::default)
}

impl LogRing {
    /// Replaces the secrets scrubbed from messages (at start-up and on every reload).
    pub fn set_secrets(&self, secrets: Vec<String>) {
        let mut s: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.len() >= MIN_SECRET)
            .collect();
        // Longest first, so a secret that contains another is replaced whole.
        s.sort_by_key(|v| std::cmp::Reverse(v.len()));
        s.dedup();
        *lock(&self.secrets) = Arc::new(s);
    }

    /// Keeps one log record.
    pub fn push(&self, wall_ms: u64, level: log::Level, module: &str, message: &str) {
        let secrets = lock(&self.secrets).clone();
        let mut message = clip(message);
        for s in secrets.iter() {
            if message.contains(s.as_str()) {
                message = message.replace(s.as_str(), REDACTED);
            }
        }
        let subsystem = module.strip_prefix("keel::").unwrap_or(module);
        let line = serde_json::json!({
            "time": crate::clock::iso8601(wall_ms),
            "level": level.as_str().to_ascii_lowercase(),
            "subsystem": subsystem,
            "message": message,
        })
        .to_string();
        self.push_line(line);
    }

    fn push_line(&self, line: String) {
        let line: Arc<str> = Arc::from(line);
        let size = line.len() + 1;
        let mut i = lock(&self.inner);
        let at = i.end;
        i.end += size as u64;
        i.bytes += size;
        i.lines.push_back((at, line));
        while i.lines.len() > MAX_LINES || (i.bytes > MAX_BYTES && i.lines.len() > 1) {
            if let Some((_, old)) = i.lines.pop_front() {
                i.bytes -= old.len() + 1;
            }
        }
    }

    /// Lines for a reader: from `cursor` (an offset an earlier answer gave) or, without one,
    /// the newest; at most `max_bytes` (counting newlines) and `limit` lines, the newest kept
    /// when there are more. OpenClaw's `logs.tail` rules, over the ring instead of a file.
    pub fn tail(&self, cursor: Option<u64>, limit: usize, max_bytes: usize) -> Tail {
        let limit = limit.max(1);
        let max_bytes = max_bytes.max(1) as u64;
        let i = lock(&self.inner);
        let size = i.end;
        let first = i.lines.front().map_or(size, |(at, _)| *at);
        let tail_start = size.saturating_sub(max_bytes);
        let (mut start, mut reset) = match cursor {
            None => (tail_start, false),
            Some(c) if c > size => (tail_start, true),
            Some(c) if c < first => (first.max(tail_start), true),
            Some(c) => (c, false),
        };
        let mut truncated = false;
        if size - start > max_bytes {
            // More than one answer takes: the newest part, and the reader starts over.
            start = tail_start;
            reset = true;
        }
        // Whole lines only: the first line that starts at or after `start`.
        let from = i.lines.partition_point(|(at, _)| *at < start);
        let mut chosen: Vec<Arc<str>> = i.lines.range(from..).map(|(_, l)| l.clone()).collect();
        drop(i);
        if from > 0 || first > 0 {
            truncated = true;
        }
        if cursor.is_some() && !reset {
            // Continuing: only what the answer itself leaves out is truncation.
            truncated = false;
        }
        if chosen.len() > limit {
            chosen.drain(..chosen.len() - limit);
            truncated = true;
        }
        Tail {
            lines: chosen,
            cursor: size,
            size,
            truncated,
            reset,
        }
    }
}

/// A message cut to [`MAX_MESSAGE`] bytes at a character boundary, with a marker.
fn clip(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes cut]", &message[..end], message.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Level;

    fn texts(t: &Tail) -> Vec<String> {
        t.lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["message"].as_str().unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn lines_are_json_with_the_fields_the_dashboard_reads() {
        let r = LogRing::default();
        r.push(0, Level::Warn, "keel::reactor::ws", "hello");
        let t = r.tail(None, 10, 1000);
        let v: serde_json::Value = serde_json::from_str(&t.lines[0]).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["subsystem"], "reactor::ws");
        assert_eq!(v["message"], "hello");
        assert_eq!(t.size, t.lines[0].len() as u64 + 1);
        assert!(!t.truncated && !t.reset);
    }

    #[test]
    fn a_cursor_returns_only_newer_lines() {
        let r = LogRing::default();
        r.push(0, Level::Info, "keel", "one");
        r.push(0, Level::Info, "keel", "two");
        let t = r.tail(None, 10, 10_000);
        assert_eq!(texts(&t), ["one", "two"]);
        let again = r.tail(Some(t.cursor), 10, 10_000);
        assert!(again.lines.is_empty() && !again.reset && !again.truncated);
        r.push(0, Level::Info, "keel", "three");
        let next = r.tail(Some(t.cursor), 10, 10_000);
        assert_eq!(texts(&next), ["three"]);
        assert!(!next.reset);
        assert_eq!(next.cursor, next.size);
        // A cursor past the end (another process's) starts over from the tail.
        let other = r.tail(Some(next.size + 100), 10, 10_000);
        assert!(other.reset);
        assert_eq!(texts(&other), ["one", "two", "three"]);
    }

    #[test]
    fn limits_keep_the_newest_lines() {
        let r = LogRing::default();
        for i in 0..10 {
            r.push(0, Level::Info, "keel", &format!("line {i}"));
        }
        let t = r.tail(None, 3, 100_000);
        assert_eq!(texts(&t), ["line 7", "line 8", "line 9"]);
        assert!(t.truncated);
        let one = r.tail(None, 100, 1);
        assert!(one.lines.is_empty(), "no whole line fits in one byte");
        let len = r.tail(None, 1, 100_000).lines[0].len() + 1;
        let two = r.tail(None, 100, 2 * len);
        assert_eq!(texts(&two), ["line 8", "line 9"]);
        assert!(two.truncated);
        // Too much since the cursor: the newest part, and the reader starts over.
        let behind = r.tail(Some(0), 100, 2 * len);
        assert!(behind.reset && behind.truncated);
        assert_eq!(texts(&behind), ["line 8", "line 9"]);
    }

    #[test]
    fn the_ring_is_bounded_and_a_lost_cursor_resets() {
        let r = LogRing::default();
        r.push(0, Level::Info, "keel", "first");
        let c = r.tail(None, 10, 1000).cursor;
        for i in 0..(MAX_LINES + 10) {
            r.push(0, Level::Info, "keel", &format!("{i}"));
        }
        assert_eq!(lock(&r.inner).lines.len(), MAX_LINES);
        let t = r.tail(Some(0), 5000, 1_000_000);
        assert!(t.reset, "line 0 is gone");
        assert_eq!(t.lines.len(), MAX_LINES);
        assert!(t.tail_bytes_ok());
        let big = "x".repeat(MAX_MESSAGE * 2);
        for _ in 0..100 {
            r.push(0, Level::Info, "keel", &big);
        }
        let i = lock(&r.inner);
        assert!(i.bytes <= MAX_BYTES, "{}", i.bytes);
        assert!(i.lines.iter().all(|(_, l)| l.len() < MAX_MESSAGE + 200));
        drop(i);
        assert!(r.tail(Some(c), 10, 1000).reset);
    }

    impl Tail {
        fn tail_bytes_ok(&self) -> bool {
            self.lines.iter().map(|l| l.len() as u64 + 1).sum::<u64>() <= self.size
        }
    }

    #[test]
    fn secrets_are_scrubbed() {
        let r = LogRing::default();
        r.set_secrets(vec!["s3cr3t-token-value".into(), "ab".into()]);
        r.push(0, Level::Info, "keel", "got s3cr3t-token-value from ab");
        let line = r.tail(None, 1, 1000).lines[0].to_string();
        assert!(!line.contains("s3cr3t"), "{line}");
        assert!(line.contains("got <redacted> from ab"), "{line}");
    }
}
