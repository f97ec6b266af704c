//! The delivery methods as clients call them: `send`, `delivery.list`, `delivery.retry`,
//! `delivery.drop`. Each reads its params when the call arrives and returns the job that calls
//! the delivery service (`delivery::service`): they write the queue on disk.

use crate::delivery::queue::{Entry, Route, State};
use crate::delivery::service::Delivery;
use crate::error::RpcError;
use crate::idempotency;
use crate::jobs::{JobCtx, Work};
use crate::protocol::params::{self, parse};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// The most entries `delivery.list` answers with.
const LIST_MAX: u64 = 10_000;

fn job(f: impl FnOnce() -> Result<Value, RpcError> + Send + 'static) -> Work {
    Box::new(move |ctx: &JobCtx| {
        ctx.check()?;
        f().map(Into::into)
    })
}

fn entry_json(e: &Entry) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendParams {
    #[serde(deserialize_with = "params::required")]
    channel: String,
    #[serde(deserialize_with = "params::required_address")]
    to: String,
    #[serde(default, deserialize_with = "params::address")]
    account_id: Option<String>,
    #[serde(default, deserialize_with = "params::address")]
    thread_id: Option<String>,
    #[serde(deserialize_with = "params::required")]
    message: String,
    #[serde(deserialize_with = "params::required")]
    idempotency_key: String,
}

/// `send {channel, to, message, idempotencyKey, accountId?, threadId?}`.
pub fn send(svc: &Arc<Delivery>, p: &Value) -> Result<Work, RpcError> {
    let s: SendParams = parse(p)?;
    if let Some(why) = idempotency::key_problem(&s.idempotency_key) {
        return Err(RpcError::invalid(why));
    }
    let route = Route {
        account_id: s.account_id,
        thread_id: s.thread_id,
        ..Route::new(s.channel, s.to)
    };
    let svc = svc.clone();
    Ok(job(move || svc.send(route, &s.message, &s.idempotency_key)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct List {
    #[serde(default, deserialize_with = "params::string")]
    state: Option<String>,
    /// 100 when not given; more than [`LIST_MAX`] is clamped to it.
    #[serde(default, deserialize_with = "params::count")]
    limit: Option<u64>,
}

/// `delivery.list {state?, limit?}` → `{entries, counts}`.
pub fn list(svc: &Arc<Delivery>, p: &Value) -> Result<Work, RpcError> {
    let l: List = parse(p)?;
    let state = match l.state {
        None => None,
        Some(s) => Some(
            State::parse(&s)
                .ok_or_else(|| RpcError::invalid(format!("invalid params: unknown state {s:?}")))?,
        ),
    };
    let limit = l.limit.unwrap_or(100).min(LIST_MAX) as usize;
    let svc = svc.clone();
    Ok(job(move || {
        let entries: Vec<Value> = svc.list(state, limit)?.iter().map(entry_json).collect();
        let counts: serde_json::Map<String, Value> = svc
            .counts()
            .into_iter()
            .map(|(s, n)| (s.as_str().to_string(), json!(n)))
            .collect();
        Ok(json!({"entries": entries, "counts": counts}))
    }))
}

#[derive(Deserialize)]
struct Id {
    #[serde(deserialize_with = "params::required")]
    id: String,
}

/// `delivery.retry {id}`: a failed or unknown entry goes back to pending, due now.
pub fn retry(svc: &Arc<Delivery>, p: &Value) -> Result<Work, RpcError> {
    let Id { id } = parse(p)?;
    let svc = svc.clone();
    Ok(job(move || Ok(entry_json(&svc.retry(&id)?))))
}

/// `delivery.drop {id}`: removes an entry.
pub fn drop_entry(svc: &Arc<Delivery>, p: &Value) -> Result<Work, RpcError> {
    let Id { id } = parse(p)?;
    let svc = svc.clone();
    Ok(job(move || Ok(entry_json(&svc.drop_entry(&id)?))))
}
