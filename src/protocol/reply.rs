//! Where an answer goes and how it gets there: the identity of a request's connection
//! ([`ReplyTo`]), and what workers hand the reactor — replies serialized on the worker
//! ([`Completion`]) and events for many connections ([`Fanout`]). Workers serialize; the
//! reactor only writes.

use super::{http_body, res_err, res_ok_payload};
use crate::payload::Outcome;
pub use crate::payload::{Piece, Wire};
use std::sync::Arc;

/// Where a job's result goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyTo {
    /// A WebSocket request: connection slot, its generation, and the request id.
    Ws {
        conn: usize,
        generation: u64,
        id: String,
    },
    /// An HTTP request (`POST /api/rpc/<method>`) waiting on its connection.
    Http { conn: usize, generation: u64 },
    /// Internal work; the result is only logged.
    Internal,
}

/// A finished reply, already serialized on the worker, for the reactor to write.
#[derive(Debug)]
pub struct Completion {
    pub conn: usize,
    pub generation: u64,
    pub body: CompletionBody,
}

/// One event for several WebSocket connections (no request behind it). The payload (JSON
/// text) is serialized once and shared; the reactor wraps it in each connection's envelope
/// with that connection's next `seq`. `drop_if_slow` events are skipped, leaving a gap in
/// `seq`, for a client that has unread data queued.
#[derive(Debug)]
pub struct Fanout {
    pub targets: Vec<(usize, u64)>,
    pub name: super::Event,
    pub payload: Arc<str>,
    pub drop_if_slow: bool,
}

/// What workers hand the reactor.
#[derive(Debug)]
pub enum Outbound {
    Reply(Completion),
    Event(Fanout),
}

#[derive(Debug)]
pub enum CompletionBody {
    /// One text message.
    WsText(Wire),
    /// An HTTP response body (JSON) with its status.
    Http {
        status: u16,
        retry_after_s: Option<u64>,
        body: Wire,
    },
    /// A whole HTTP answer with headers of its own (a file of the dashboard).
    Answer(HttpAnswer),
}

/// A whole HTTP answer made off the reactor: status, headers (`Content-Type` among them;
/// `Content-Length` and `Connection` are the reactor's to write) and a body that may be shared
/// with a cache, so the reactor writes it out without a copy.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Arc<[u8]>,
}

/// Serializes a job's outcome for where it goes (on the worker, not the reactor).
pub fn encode_reply(reply: &ReplyTo, outcome: &Outcome) -> Option<Completion> {
    match reply {
        ReplyTo::Ws {
            conn,
            generation,
            id,
        } => Some(Completion {
            conn: *conn,
            generation: *generation,
            body: CompletionBody::WsText(match outcome {
                Ok(p) => res_ok_payload(id, p),
                Err(e) => res_err(id, e).into(),
            }),
        }),
        ReplyTo::Http { conn, generation } => {
            let (status, retry_after_s, body) = http_body(outcome);
            Some(Completion {
                conn: *conn,
                generation: *generation,
                body: CompletionBody::Http {
                    status,
                    retry_after_s,
                    body,
                },
            })
        }
        ReplyTo::Internal => None,
    }
}
