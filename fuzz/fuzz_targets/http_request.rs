//! HTTP request heads and bodies as the reactor reads them: the input (after two bytes that
//! choose how it is split across reads) goes through `RequestReader` in pieces and in one
//! piece; both must yield the same requests and the same verdict. A head never buffers more
//! than 16 KiB, a body never more than its route's limit, and a head whose `Content-Length`
//! is anything but one run of digits is refused (400), never framed.
//!
//! Then the same pieces go through keel's connection handler (`HttpConn`, as the reactor
//! drives it) over an in-memory socket, and what it wrote is read back as a client would: each
//! answer says `Connection: close` or `keep-alive`; one that says close is the last thing
//! written and keel then shuts its side; keel never shuts its side after an answer that said
//! keep-alive; a `100 Continue` comes once per request and never before a refusal from the
//! head. Its timers act only at the deadline it reports, and never leave one due.
//! `FUZZ_SHOW=1 fuzz/target/*/release/http_request FILE` prints what was written.
#![no_main]

use keel::auth::Limiters;
use keel::clock::Rng;
use keel::reactor::http::{HEAD_MAX, Head, HttpConn, Next, RequestReader};
use keel::reactor::{Cx, Outcome};
use keel_fuzz::MemSocket;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

fn config() -> &'static Arc<keel::config::Config> {
    static C: OnceLock<Arc<keel::config::Config>> = OnceLock::new();
    C.get_or_init(|| Arc::new(keel_fuzz::config()))
}

/// The reactor's loop: after each read, handle requests until none is complete; a refused or
/// malformed head, or an upgrade, ends the HTTP part of the connection.
fn read_all(pieces: &[&[u8]]) -> Vec<Next> {
    let cfg = config();
    let limit = |h: &Head| keel::reactor::body_limit(&h.method, &h.path, cfg);
    let mut r = RequestReader::default();
    let mut out = Vec::new();
    for piece in pieces {
        r.feed(piece);
        loop {
            let next = r.next(limit);
            match &next {
                Next::Empty => break,
                Next::PartialHead => {
                    assert!(
                        r.buffered() <= HEAD_MAX,
                        "a partial head of {} bytes",
                        r.buffered()
                    );
                    break;
                }
                Next::PartialBody(head, total) => {
                    assert!(
                        r.buffered() < *total && *total <= HEAD_MAX + limit(head),
                        "{} bytes buffered of a request of {total}",
                        r.buffered()
                    );
                    break;
                }
                Next::Request(head, body) => {
                    assert_eq!(body.len(), head.content_length);
                    assert!(body.len() <= limit(head));
                    let upgrade = head.upgrade_ws;
                    out.push(next);
                    if upgrade {
                        return out;
                    }
                }
                Next::Malformed(..) | Next::Refused(..) => {
                    out.push(next);
                    return out;
                }
            }
        }
    }
    out.push(r.next(limit));
    out
}

/// Reads each head the verdicts were given for with httparse, apart from keel: one whose
/// `Content-Length` is not a single run of ASCII digits (between optional SP/HTAB) must have
/// been refused with 400.
fn check_lengths(data: &[u8], verdicts: &[Next]) {
    let mut start = 0;
    for verdict in verdicts {
        let rest = &data[start.min(data.len())..];
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(head_len)) = req.parse(&rest[..rest.len().min(HEAD_MAX)])
        else {
            return;
        };
        let lengths: Vec<&[u8]> = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| h.value.trim_ascii_start().trim_ascii_end())
            .collect();
        let plain = lengths.len() <= 1
            && lengths
                .iter()
                .all(|v| !v.is_empty() && v.iter().all(u8::is_ascii_digit));
        if !plain {
            let shown: Vec<_> = lengths.iter().map(|v| String::from_utf8_lossy(v)).collect();
            assert!(
                matches!(verdict, Next::Malformed(400, _)),
                "Content-Length {shown:?} was not refused: {verdict:?}"
            );
            return;
        }
        match verdict {
            Next::Request(_, body) => start += head_len + body.len(),
            _ => return,
        }
    }
}

/// One answer read back from what keel wrote.
struct Answer {
    status: u16,
    /// The values of its `Connection` headers.
    connection: Vec<String>,
}

/// Splits what keel wrote into answers, as a client reads them. A body follows its head
/// unless the request was a HEAD (then the next answer, or nothing, follows at once: no body
/// keel writes starts with "HTTP/1.1 "). Stops after a 101: the rest is WebSocket.
fn answers(mut out: &[u8]) -> Vec<Answer> {
    let mut list = Vec::new();
    while !out.is_empty() {
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("an unfinished head: {:?}", String::from_utf8_lossy(out)))
            + 4;
        let head = std::str::from_utf8(&out[..end]).expect("a head keel wrote is UTF-8");
        out = &out[end..];
        let status: u16 = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {head:?}"));
        let field = |name: &str| -> Vec<String> {
            head.split("\r\n")
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
                .collect()
        };
        if status == 100 {
            assert_eq!(head, "HTTP/1.1 100 Continue\r\n\r\n");
        } else if status != 101 {
            let len: usize = match field("content-length").as_slice() {
                [n] => n.parse().expect("a Content-Length keel wrote"),
                other => panic!("Content-Length {other:?} in {head:?}"),
            };
            if !out.is_empty() && !out.starts_with(b"HTTP/1.1 ") {
                assert!(out.len() >= len, "a body cut short after {head:?}");
                out = &out[len..];
            }
        }
        let connection = field("connection");
        list.push(Answer { status, connection });
        if status == 101 {
            break;
        }
    }
    list
}

/// Runs the connection's timers at `at`, checked against the deadline it reports (which the
/// reactor arms its timer with): a connection whose deadline is later, or that has none, is
/// left alone; one that stays open reports a deadline after `at` (a deadline left due would
/// come due again at once).
fn timer_at(conn: &mut HttpConn<MemSocket>, cx: &mut Cx<'_>, at: Instant) -> Outcome {
    let deadline = conn.next_deadline();
    let written = conn.stream.written.len();
    cx.now = at;
    let out = conn.on_timer(cx);
    if deadline.is_none_or(|d| d > at) {
        assert_eq!(
            out,
            Outcome::Keep,
            "a timer acted before the deadline {deadline:?}"
        );
        assert_eq!(
            conn.stream.written.len(),
            written,
            "a timer wrote before its deadline"
        );
    }
    if out != Outcome::Close {
        let next = conn.next_deadline();
        assert!(next.is_none_or(|d| d > at), "a deadline left due: {next:?}");
    }
    out
}

/// Drives an `HttpConn` over the pieces (the client closing its side after the last one if
/// `eof`), then lets an hour pass (timeouts); returns what it wrote and whether keel shut
/// its side.
fn converse(pieces: &[&[u8]], eof: bool) -> (Vec<u8>, bool) {
    let shared = keel_fuzz::shared();
    let config = shared.config();
    let mut rng = Rng::new(7);
    let mut limiters = Limiters::default();
    // A trusted proxy in the fuzz config: a request with X-Forwarded-For is some other client's.
    let peer: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let now = Instant::now();
    let total_in: usize = pieces.iter().map(|p| p.len()).sum();
    let mut cx = Cx::new(shared, now, 0, 1, peer, &mut rng, &mut limiters, &config);
    let mut conn = HttpConn::new(
        MemSocket::new(pieces, eof),
        now,
        config.limits.header_timeout,
    );
    let ended = keel_fuzz::drive_until_quiet(total_in, pieces.len(), || conn.drive(&mut cx));
    if !ended {
        // Nothing is due yet; an hour later, everything is.
        let _ = timer_at(&mut conn, &mut cx, now);
        let _ = timer_at(&mut conn, &mut cx, now + Duration::from_secs(3600));
    }
    keel_fuzz::drain_completions();
    let (socket, _) = conn.into_upgrade(peer);
    let shut = socket.write_shut.get();
    (socket.written, shut)
}

fn check_answers(written: &[u8], shut: bool, eof: bool) {
    if std::env::var_os("FUZZ_SHOW").is_some() {
        eprintln!("{}", String::from_utf8_lossy(written));
    }
    let list = answers(written);
    let mut continued = false;
    for (i, a) in list.iter().enumerate() {
        match a.status {
            100 => {
                assert!(!continued, "two 100s for one request");
                continued = true;
                continue;
            }
            101 => continue,
            // Only ever decided from a head (a method can answer 401, never these).
            411 | 413 | 417 | 429 => assert!(
                !continued,
                "{} after a 100: a refusal from the head comes instead of the 100",
                a.status
            ),
            _ => {}
        }
        continued = false;
        match a.connection.as_slice() {
            [c] if c == "keep-alive" => {}
            [c] if c == "close" => assert_eq!(
                i + 1,
                list.len(),
                "an answer follows one that said Connection: close"
            ),
            other => panic!("{} says Connection {other:?}", a.status),
        }
    }
    let last_final = list.iter().rev().find(|a| a.status != 100);
    let said_close = last_final.is_some_and(|a| a.connection == ["close"]);
    if shut {
        assert!(
            said_close,
            "keel closed after an answer that did not say Connection: close"
        );
    }
    if said_close && !eof {
        assert!(
            shut,
            "an answer said Connection: close and keel kept the connection"
        );
    }
}

fuzz_target!(|input: &[u8]| {
    let (pieces, data) = keel_fuzz::split(input);
    let whole = read_all(&[data]);
    let split = read_all(&pieces);
    assert_eq!(whole, split, "{} pieces", pieces.len());
    check_lengths(data, &whole);
    // Bit 0 of the split's seed byte: the client closes its side after its last byte.
    let eof = input.get(1).is_some_and(|b| b & 1 != 0);
    let (written, shut) = converse(&pieces, eof);
    check_answers(&written, shut, eof);
});
