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
    /// Valid JSON text that is also kept elsewhere (an answer given again while nothing it
    /// counts changed): shared, not copied.
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
