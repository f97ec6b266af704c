//! What the Usage page calls besides `sessions.usage` and `usage.cost`: its session detail
//! (`sessions.usage.timeseries`, `sessions.usage.logs`, answered by jobs of the sessions
//! service) and provider quotas (`usage.status`, answered on the reactor: keel tracks no
//! provider plans, so it has none to report).

use crate::error::RpcError;
use crate::jobs::{JobCtx, Work};
use crate::protocol::params::{self, parse};
use crate::protocol::reply::ReplyTo;
use crate::runtime::Shared;
use crate::sessions::detail::{DEFAULT_LOGS, MAX_LOGS};
use crate::sessions::query::{LogsQuery, Query, SessionRef};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// The session the detail is about, as the page names it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Detail {
    #[serde(deserialize_with = "params::required")]
    key: String,
    /// Normalized as agent ids are; the page sends the row's `agentId`.
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<crate::ids::AgentId>,
    #[serde(default, deserialize_with = "params::string")]
    session_id: Option<String>,
    /// `sessions.usage.logs`: at most 1000 (more is read as 1000), 200 when not given.
    #[serde(default, deserialize_with = "params::count")]
    limit: Option<u64>,
}

fn session(p: &Value) -> Result<(SessionRef, Option<u64>), RpcError> {
    let d: Detail = parse(p)?;
    Ok((
        SessionRef {
            key: d.key,
            agent: d.agent_id.map(|a| a.as_str().to_string()),
            session_id: d.session_id,
        },
        d.limit,
    ))
}

fn job(shared: &Arc<Shared>, query: Query) -> Work {
    let svc = shared.sessions.clone();
    Box::new(move |ctx: &JobCtx| svc.run(&query, ctx))
}

/// `sessions.usage.timeseries {key, agentId?, sessionId?}` → `{sessionId, points: [{timestamp,
/// input, output, cacheRead, cacheWrite, totalTokens, cost, cumulativeTokens,
/// cumulativeCost}]}`, at most 200 points.
pub fn timeseries(shared: &Arc<Shared>, p: &Value) -> Result<Work, RpcError> {
    let (r, _) = session(p)?;
    Ok(job(shared, Query::Timeseries(r)))
}

/// `sessions.usage.logs {key, agentId?, sessionId?, limit?}` → `{logs: [{timestamp, role,
/// content, tokens?, cost?}]}`, the last `limit` messages, oldest first.
pub fn logs(shared: &Arc<Shared>, p: &Value) -> Result<Work, RpcError> {
    let (session, limit) = session(p)?;
    let limit = limit.map_or(DEFAULT_LOGS, |l| (l as usize).min(MAX_LOGS));
    Ok(job(shared, Query::Logs(LogsQuery { session, limit })))
}

/// `usage.status {}` → `{updatedAt, providers: []}`: OpenClaw's answer when no provider plan
/// is tracked, which is keel's case.
pub fn status(_shared: &Arc<Shared>, _p: &Value, _caller: &ReplyTo) -> Result<Value, RpcError> {
    Ok(json!({"updatedAt": crate::clock::wall_ms(), "providers": []}))
}
