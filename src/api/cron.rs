//! The scheduler's methods, OpenClaw's `cron.*` shapes: typed params, then the service
//! (`cron::service`). Every method is a job (the jobs' lock and files are never touched on the
//! reactor).

use crate::cron::service::{Cron, ListQuery, RunsQuery};
use crate::error::RpcError;
use crate::ids::AgentId;
use crate::jobs::{JobCtx, Work};
use crate::protocol::params::{self, parse};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

/// The largest page.
const MAX_LIMIT: u64 = 1000;

fn work(
    svc: &Arc<Cron>,
    f: impl FnOnce(&Cron) -> Result<Value, RpcError> + Send + 'static,
) -> Work {
    let svc = svc.clone();
    Box::new(move |ctx: &JobCtx| {
        ctx.check()?;
        Ok(f(&svc)?.into())
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Id {
    #[serde(default, deserialize_with = "params::string")]
    id: Option<String>,
    /// OpenClaw's older name for `id`.
    #[serde(default, deserialize_with = "params::string")]
    job_id: Option<String>,
}

fn id_of(p: &Value) -> Result<String, RpcError> {
    let q: Id = parse(p)?;
    q.id.or(q.job_id).ok_or_else(|| params::missing("id"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct List {
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
    #[serde(default, deserialize_with = "params::flag")]
    include_disabled: Option<bool>,
    #[serde(default, deserialize_with = "params::string")]
    enabled: Option<String>,
    #[serde(default, deserialize_with = "params::string")]
    query: Option<String>,
    #[serde(default, deserialize_with = "params::string")]
    sort_by: Option<String>,
    #[serde(default, deserialize_with = "params::string")]
    sort_dir: Option<String>,
    #[serde(default, deserialize_with = "params::count_max::<MAX_LIMIT, _>")]
    limit: Option<u64>,
    #[serde(default, deserialize_with = "params::count")]
    offset: Option<u64>,
    #[serde(default, deserialize_with = "params::flag")]
    compact: Option<bool>,
}

/// `cron.list {agentId?, includeDisabled?, enabled?, query?, sortBy?, sortDir?, limit?,
/// offset?, compact?}`.
pub fn list(svc: &Arc<Cron>, p: &Value) -> Result<Work, RpcError> {
    let l: List = parse(p)?;
    let q = ListQuery {
        agent: l.agent_id,
        include_disabled: l.include_disabled.unwrap_or(false),
        enabled: l.enabled,
        query: l.query,
        sort_by: l.sort_by,
        sort_dir: l.sort_dir,
        limit: l.limit.unwrap_or(50) as usize,
        offset: l.offset.unwrap_or(0) as usize,
        compact: l.compact.unwrap_or(false),
    };
    Ok(work(svc, move |c| c.list(&q)))
}

/// `cron.status {}`.
pub fn status(svc: &Arc<Cron>, _p: &Value) -> Result<Work, RpcError> {
    Ok(work(svc, Cron::status))
}

/// `cron.get {id}`.
pub fn get(svc: &Arc<Cron>, p: &Value) -> Result<Work, RpcError> {
    let id = id_of(p)?;
    Ok(work(svc, move |c| c.get(&id)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Runs {
    #[serde(default, deserialize_with = "params::string")]
    id: Option<String>,
    #[serde(default, deserialize_with = "params::string")]
    job_id: Option<String>,
    /// `all` or `job`.
    #[serde(default, deserialize_with = "params::string")]
    scope: Option<String>,
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
    #[serde(default, deserialize_with = "params::string")]
    status: Option<String>,
    #[serde(default)]
    statuses: Option<Vec<String>>,
    #[serde(default, deserialize_with = "params::string")]
    query: Option<String>,
    #[serde(default, deserialize_with = "params::string")]
    sort_dir: Option<String>,
    #[serde(default, deserialize_with = "params::count_max::<MAX_LIMIT, _>")]
    limit: Option<u64>,
    #[serde(default, deserialize_with = "params::count")]
    offset: Option<u64>,
}

/// `cron.runs {id?, scope?, agentId?, status?, statuses?, query?, sortDir?, limit?, offset?}`.
pub fn runs(svc: &Arc<Cron>, p: &Value) -> Result<Work, RpcError> {
    let r: Runs = parse(p)?;
    let id = r.id.or(r.job_id);
    if r.scope.as_deref() == Some("job") && id.is_none() {
        return Err(params::missing("id"));
    }
    let mut statuses = r.statuses.unwrap_or_default();
    if let Some(s) = r.status.filter(|s| s != "all") {
        statuses.push(s);
    }
    let q = RunsQuery {
        id,
        agent: r.agent_id,
        statuses,
        query: r.query,
        sort_dir: r.sort_dir,
        limit: r.limit.unwrap_or(50) as usize,
        offset: r.offset.unwrap_or(0) as usize,
    };
    Ok(work(svc, move |c| c.runs(&q)))
}

/// `cron.add {name, schedule, payload, agentId?, sessionTarget?, delivery?, enabled?, …}`:
/// the created job.
pub fn add(svc: &Arc<Cron>, p: &Value) -> Result<Work, RpcError> {
    let p = p.clone();
    Ok(work(svc, move |c| c.add(&p)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Update {
    #[serde(default, deserialize_with = "params::string")]
    id: Option<String>,
    #[serde(default, deserialize_with = "params::string")]
    job_id: Option<String>,
    #[serde(default)]
    patch: Option<Value>,
}

/// `cron.update {id, patch}`: the updated job.
pub fn update(svc: &Arc<Cron>, p: &Value) -> Result<Work, RpcError> {
    let u: Update = parse(p)?;
    let id = u.id.or(u.job_id).ok_or_else(|| params::missing("id"))?;
    let patch = u.patch.ok_or_else(|| params::missing("patch"))?;
    if !patch.is_object() {
        return Err(RpcError::invalid("invalid params: patch must be an object"));
    }
    Ok(work(svc, move |c| c.update(&id, &patch)))
}

/// `cron.remove {id}`.
pub fn remove(svc: &Arc<Cron>, p: &Value) -> Result<Work, RpcError> {
    let id = id_of(p)?;
    Ok(work(svc, move |c| c.remove(&id)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunNow {
    /// `force` (the default) or `due`.
    #[serde(default, deserialize_with = "params::string")]
    mode: Option<String>,
}

/// `cron.run {id, mode?}`: `{ok, ran, runId?, reason?}`.
pub fn run(svc: &Arc<Cron>, p: &Value) -> Result<Work, RpcError> {
    let id = id_of(p)?;
    let r: RunNow = parse(p)?;
    let due_only = match r.mode.as_deref() {
        None | Some("force") => false,
        Some("due") => true,
        Some(_) => {
            return Err(RpcError::invalid(
                "invalid params: mode must be \"force\" or \"due\"",
            ));
        }
    };
    Ok(work(svc, move |c| c.run_now(&id, due_only)))
}
