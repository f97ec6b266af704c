//! HTTP request heads and bodies as the reactor reads them: the input (after two bytes that
//! choose how it is split across reads) goes through `RequestReader` in pieces and in one
//! piece; both must yield the same requests and the same verdict. A head never buffers more
//! than 16 KiB, and a body never more than its route's limit.
#![no_main]

use keel::reactor::http::{HEAD_MAX, Head, Next, RequestReader};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

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

fuzz_target!(|input: &[u8]| {
    let (pieces, data) = keel_fuzz::split(input);
    let whole = read_all(&[data]);
    let split = read_all(&pieces);
    assert_eq!(whole, split, "{} pieces", pieces.len());
});
