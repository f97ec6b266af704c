//! What a method produces: a JSON payload or an error. Shared by the wire (which serializes
//! it), the job machinery (which carries it from a worker) and the services (which make it).

use crate::error::RpcError;
use serde_json::Value;
use std::sync::Arc;

/// A method's result: a JSON value, or JSON text already serialized (big answers are written
/// straight from their data on a worker, without building a `Value` tree first).
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Json(Value),
    /// Valid JSON text.
    Raw(String),
    /// Valid JSON text, shared: written to the wire from where it is (an answer of
    /// megabytes is not copied).
    Shared(Arc<String>),
}

impl From<Value> for Payload {
    fn from(v: Value) -> Payload {
        Payload::Json(v)
    }
}

impl Payload {
    /// Appends the JSON text to `out`.
    pub fn write(&self, out: &mut String) {
        match self {
            Payload::Json(v) => out.push_str(&v.to_string()),
            Payload::Raw(s) => out.push_str(s),
            Payload::Shared(s) => out.push_str(s),
        }
    }

    /// Appends the JSON text to `out`, shared text by reference.
    pub fn wire(&self, out: &mut Wire) {
        match self {
            Payload::Json(v) => out.push(v.to_string().as_bytes()),
            Payload::Raw(s) => out.push(s.as_bytes()),
            Payload::Shared(s) => out.push_text(s),
        }
    }

    /// About how long the text is (to size a buffer).
    pub fn len_hint(&self) -> usize {
        match self {
            Payload::Json(_) => 256,
            Payload::Raw(s) => s.len(),
            Payload::Shared(s) => s.len(),
        }
    }

    /// The payload as a `Value` (parses raw text; for tests and small answers).
    pub fn to_value(&self) -> Value {
        match self {
            Payload::Json(v) => v.clone(),
            Payload::Raw(s) => serde_json::from_str(s).unwrap_or(Value::Null),
            Payload::Shared(s) => serde_json::from_str(s).unwrap_or(Value::Null),
        }
    }
}

/// What a method produces.
pub type Outcome = Result<Payload, RpcError>;

/// Bytes for the reactor to write, in pieces: small owned ones (envelopes, small answers)
/// around big shared ones (a kept answer of megabytes, a file of the dashboard). A reply of
/// megabytes is then copied neither on the worker that encodes it nor on the reactor that
/// writes it: the reactor writes each piece from where it is.
#[derive(Debug, Clone, Default)]
pub struct Wire {
    pieces: Vec<Piece>,
    len: usize,
}

/// One piece of a [`Wire`].
#[derive(Debug, Clone)]
pub enum Piece {
    Owned(Vec<u8>),
    Text(Arc<String>),
    Bytes(Arc<[u8]>),
}

impl Piece {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Piece::Owned(v) => v,
            Piece::Text(s) => s.as_bytes(),
            Piece::Bytes(b) => b,
        }
    }
}

/// Shared text up to this size is copied next to its neighbours (one piece instead of three).
const SHARE_MIN: usize = 16 << 10;

impl Wire {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends bytes, copied (next to the owned piece before them).
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        match self.pieces.last_mut() {
            Some(Piece::Owned(v)) => v.extend_from_slice(bytes),
            _ => self.pieces.push(Piece::Owned(bytes.to_vec())),
        }
    }

    /// Appends shared text: by reference when it is big.
    pub fn push_text(&mut self, text: &Arc<String>) {
        if text.len() < SHARE_MIN {
            return self.push(text.as_bytes());
        }
        self.len += text.len();
        self.pieces.push(Piece::Text(text.clone()));
    }

    /// Appends shared bytes: by reference when they are big.
    pub fn push_bytes(&mut self, bytes: &Arc<[u8]>) {
        if bytes.len() < SHARE_MIN {
            return self.push(bytes);
        }
        self.len += bytes.len();
        self.pieces.push(Piece::Bytes(bytes.clone()));
    }

    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    pub fn into_pieces(self) -> Vec<Piece> {
        self.pieces
    }

    /// Copies `out.len()` bytes from `pos` on into `out` (they must be there).
    pub fn copy_at(&self, mut pos: usize, out: &mut [u8]) {
        let mut filled = 0;
        for p in &self.pieces {
            let b = p.bytes();
            if pos >= b.len() {
                pos -= b.len();
                continue;
            }
            let n = (b.len() - pos).min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&b[pos..pos + n]);
            filled += n;
            pos = 0;
            if filled == out.len() {
                return;
            }
        }
        debug_assert_eq!(filled, out.len(), "copy_at past the end");
    }

    /// All of it in one buffer (tests, small replies).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len];
        self.copy_at(0, &mut v);
        v
    }
}

impl From<String> for Wire {
    fn from(s: String) -> Wire {
        Wire::from(s.into_bytes())
    }
}

impl From<Vec<u8>> for Wire {
    fn from(v: Vec<u8>) -> Wire {
        if v.is_empty() {
            return Wire::default();
        }
        Wire {
            len: v.len(),
            pieces: vec![Piece::Owned(v)],
        }
    }
}
