//! The errors a client can see: a stable code, a message a person can act on, and
//! `retryable`/`retryAfterMs` where they apply. Serialized in OpenClaw's `error` shape.

use serde_json::{Map, Value, json};
use std::fmt;

/// Stable error codes. `INVALID_REQUEST` and `UNAVAILABLE` are OpenClaw's own; the rest are
/// keel's and tell the client more precisely what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidRequest,
    Unauthorized,
    Unavailable,
    Draining,
    DeadlineExceeded,
    Cancelled,
    NotFound,
    ConfigError,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest => "INVALID_REQUEST",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Unavailable => "UNAVAILABLE",
            Code::Draining => "DRAINING",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::Cancelled => "CANCELLED",
            Code::NotFound => "NOT_FOUND",
            Code::ConfigError => "CONFIG_ERROR",
            Code::Internal => "INTERNAL",
        }
    }

    /// The HTTP status the same error gets on `POST /api/rpc/<method>`.
    pub fn http_status(self) -> u16 {
        match self {
            Code::InvalidRequest => 400,
            Code::Unauthorized => 401,
            Code::NotFound => 404,
            Code::Unavailable | Code::Draining | Code::Cancelled => 503,
            Code::DeadlineExceeded => 504,
            Code::ConfigError | Code::Internal => 500,
        }
    }
}

/// An error as a client receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
    pub details: Option<Value>,
    pub retryable: Option<bool>,
    pub retry_after_ms: Option<u64>,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            details: None,
            retryable: None,
            retry_after_ms: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> RpcError {
        RpcError::new(Code::InvalidRequest, message)
    }

    pub fn unknown_method(method: &str) -> RpcError {
        RpcError::invalid(format!("unknown method: {method}"))
    }

    /// A full queue, shed work, too many requests: retry after `ms`.
    pub fn unavailable(message: impl Into<String>, retry_after_ms: u64) -> RpcError {
        RpcError {
            retryable: Some(true),
            retry_after_ms: Some(retry_after_ms),
            ..RpcError::new(Code::Unavailable, message)
        }
    }

    pub fn draining() -> RpcError {
        RpcError {
            retryable: Some(true),
            retry_after_ms: Some(5000),
            ..RpcError::new(
                Code::Draining,
                "gateway is draining for shutdown; no new work is accepted",
            )
        }
    }

    pub fn with_details(mut self, details: Value) -> RpcError {
        self.details = Some(details);
        self
    }

    /// The `error` object of a `res` frame.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("code".into(), json!(self.code.as_str()));
        m.insert("message".into(), json!(self.message));
        if let Some(d) = &self.details {
            m.insert("details".into(), d.clone());
        }
        if let Some(r) = self.retryable {
            m.insert("retryable".into(), json!(r));
        }
        if let Some(ms) = self.retry_after_ms {
            m.insert("retryAfterMs".into(), json!(ms));
        }
        Value::Object(m)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for RpcError {}
