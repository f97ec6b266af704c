//! The delivery methods as clients call them: `send`, `delivery.list`, `delivery.retry`,
//! `delivery.drop`. Each reads its params and calls the delivery service
//! (`delivery::service`); they run as jobs, since they write the queue on disk.

use crate::delivery::queue::{Entry, Route, State};
use crate::delivery::service::Delivery;
use crate::error::RpcError;
use crate::idempotency;
use crate::protocol::params::{address, required, required_address, string};
use serde_json::{Value, json};
use std::sync::Arc;

fn entry_json(e: &Entry) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}

/// The delivery methods: `send`, `delivery.list`, `delivery.retry`, `delivery.drop` (jobs:
/// they write to the disk).
pub fn call(svc: &Arc<Delivery>, method: &str, p: &Value) -> Result<Value, RpcError> {
    match method {
        "send" => {
            let route = Route {
                account_id: address(p, "accountId")?,
                thread_id: address(p, "threadId")?,
                ..Route::new(required(p, "channel")?, required_address(p, "to")?)
            };
            let message = required(p, "message")?;
            let key = required(p, "idempotencyKey")?;
            if let Some(why) = idempotency::key_problem(&key) {
                return Err(RpcError::invalid(why));
            }
            svc.send(route, &message, &key)
        }
        "delivery.list" => {
            let state = match string(p, "state")? {
                None => None,
                Some(s) => Some(State::parse(&s).ok_or_else(|| {
                    RpcError::invalid(format!("invalid params: unknown state {s:?}"))
                })?),
            };
            let limit = p
                .get("limit")
                .and_then(Value::as_u64)
                .unwrap_or(100)
                .min(10_000) as usize;
            let entries: Vec<Value> = svc.list(state, limit)?.iter().map(entry_json).collect();
            let counts: serde_json::Map<String, Value> = svc
                .counts()
                .into_iter()
                .map(|(s, n)| (s.as_str().to_string(), json!(n)))
                .collect();
            Ok(json!({"entries": entries, "counts": counts}))
        }
        "delivery.retry" => Ok(entry_json(&svc.retry(&required(p, "id")?)?)),
        "delivery.drop" => Ok(entry_json(&svc.drop_entry(&required(p, "id")?)?)),
        other => Err(RpcError::unknown_method(other)),
    }
}
