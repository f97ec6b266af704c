//! An incremental parser for `text/event-stream` (the WHATWG server-sent events format), fed
//! whatever bytes the socket hands over.
//!
//! Invariants:
//! - Events come out exactly as if the whole stream had been parsed at once, however the bytes
//!   were split: a line, a multi-byte character or a `\r\n` pair may straddle two pushes.
//! - Memory is bounded: an event (its pending line plus its data) larger than the limit is
//!   dropped whole and counted in [`SseParser::dropped`]; parsing resumes at the next event.
//! - `id:` and `retry:` are accepted and ignored: keel never reconnects a model stream (a
//!   retried call is a new request), so neither has a use.

/// The largest event kept by [`SseParser::new`].
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// One dispatched event. `event` is `None` when the stream named no type (the spec's
/// "message").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug)]
pub struct SseParser {
    /// The current line, without its ending, until the ending arrives.
    line: Vec<u8>,
    /// The previous push ended on `\r`: a `\n` first thing in the next push belongs to it.
    after_cr: bool,
    /// A byte-order mark is only skipped at the very start of the stream.
    first_line: bool,
    event: Option<String>,
    /// The data lines so far, each followed by `\n` (the last is removed on dispatch).
    data: String,
    /// The event being built has outgrown the limit and will be dropped.
    oversized: bool,
    /// The current line was cut off for size: its end is not a blank line.
    line_cut: bool,
    dropped: u64,
    max: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new()
    }
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::with_limit(MAX_EVENT_BYTES)
    }

    pub fn with_limit(max_event_bytes: usize) -> SseParser {
        SseParser {
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            event: None,
            data: String::new(),
            oversized: false,
            line_cut: false,
            dropped: 0,
            max: max_event_bytes,
        }
    }

    /// How many events were dropped for being larger than the limit.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Consumes `bytes` and returns the events they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let mut rest = bytes;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while !rest.is_empty() {
            let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.append(rest);
                break;
            };
            self.append(&rest[..i]);
            let was_cr = rest[i] == b'\r';
            rest = &rest[i + 1..];
            if was_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.end_line(&mut out);
        }
        out
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.line_cut {
            return;
        }
        if self.line.len() + bytes.len() + self.data.len() > self.max {
            self.oversized = true;
            self.line_cut = true;
            self.line = Vec::new();
            self.data = String::new();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let mut line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.line_cut) {
            self.first_line = false;
            return;
        }
        if std::mem::take(&mut self.first_line) && line.starts_with(b"\xEF\xBB\xBF") {
            line.drain(..3);
        }
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if self.oversized || line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line[..], &b""[..]),
        };
        match field {
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max {
                    self.oversized = true;
                    self.data = String::new();
                } else {
                    self.data.push_str(&String::from_utf8_lossy(value));
                    self.data.push('\n');
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if std::mem::take(&mut self.oversized) {
            self.dropped += 1;
            self.data = String::new();
            return;
        }
        // No data line at all: per the spec, nothing is dispatched.
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        out.push(SseEvent {
            event: event.filter(|e| !e.is_empty()),
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
        }
    }

    const STREAM: &str = "\u{feff}: keep-alive comment\r\n\
        event: message_start\r\n\
        data: {\"a\":\"h\u{e9}llo \u{1f600}\"}\r\n\
        \r\n\
        data: line one\n\
        data:line two\n\
        data:  two spaces\n\
        id: 7\n\
        retry: 100\n\
        \n\
        event: ping\n\
        \n\
        data\n\
        \n\
        data: [DONE]\r\r";

    fn expected() -> Vec<SseEvent> {
        vec![
            ev(Some("message_start"), "{\"a\":\"h\u{e9}llo \u{1f600}\"}"),
            ev(None, "line one\nline two\n two spaces"),
            ev(None, ""),
            ev(None, "[DONE]"),
        ]
    }

    #[test]
    fn parses_a_whole_stream() {
        let mut p = SseParser::new();
        assert_eq!(p.push(STREAM.as_bytes()), expected());
        assert_eq!(p.dropped(), 0);
    }

    #[test]
    fn any_split_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut p = SseParser::new();
                let mut got = p.push(&bytes[..i]);
                got.extend(p.push(&bytes[i..j]));
                got.extend(p.push(&bytes[j..]));
                assert_eq!(got, expected(), "split at {i} and {j}");
            }
        }
        let mut p = SseParser::new();
        let got: Vec<SseEvent> = bytes.iter().flat_map(|b| p.push(&[*b])).collect();
        assert_eq!(got, expected(), "one byte at a time");
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: partial\n").is_empty());
        assert!(p.push(b"data: more").is_empty());
        assert_eq!(p.push(b"\n\n"), vec![ev(None, "partial\nmore")]);
        assert!(p.push(b"event: lonely\n\n").is_empty(), "no data, no event");
        assert_eq!(
            p.push(b"data: x\n\n"),
            vec![ev(None, "x")],
            "the type does not leak"
        );
    }

    #[test]
    fn oversized_events_are_dropped_and_parsing_resumes() {
        let mut p = SseParser::with_limit(32);
        let mut got = p.push(b"data: small\n\n");
        got.extend(p.push(b"event: big\ndata: "));
        got.extend(p.push(&[b'x'; 20]));
        got.extend(p.push(&[b'x'; 20]));
        got.extend(p.push(b"\ndata: tail\n\ndata: after\n\n"));
        let mut many = b"data: 0123456789\n".repeat(5);
        many.extend_from_slice(b"\ndata: last\n\n");
        got.extend(p.push(&many));
        assert_eq!(
            got,
            vec![ev(None, "small"), ev(None, "after"), ev(None, "last")]
        );
        assert_eq!(p.dropped(), 2);
    }
}
