//! The usage methods as clients call them: `sessions.list`, `sessions.usage`, `usage.cost`.
//! Each reads its params into a query (`sessions::query`) when the call arrives — a bad one is
//! refused before anything is queued — and returns the job that runs it on the sessions
//! service, which may share it with an identical query in flight.

use crate::error::RpcError;
use crate::ids::AgentId;
use crate::jobs::{JobCtx, Work};
use crate::protocol::params::{self, parse};
use crate::sessions::query::{
    CostQuery, Grouping, ListQuery, MAX_DAYS, Query, RangeSpec, UsageQuery,
};
use crate::sessions::time::Zone;
use crate::sessions::{Sessions, time};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

fn job(svc: &Arc<Sessions>, query: Query) -> Work {
    let svc = svc.clone();
    Box::new(move |ctx: &JobCtx| svc.run(&query, ctx))
}

/// The day range of `sessions.usage` and `usage.cost`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RangeParams {
    #[serde(default, deserialize_with = "params::string")]
    start_date: Option<String>,
    #[serde(default, deserialize_with = "params::string")]
    end_date: Option<String>,
    /// 0 counts as 1 (today).
    #[serde(
        default,
        deserialize_with = "params::count_max::<{ MAX_DAYS as u64 }, _>"
    )]
    days: Option<u64>,
    /// `utc` (the default), `gateway` (also UTC) or `specific` (with `timeZone` or
    /// `utcOffset`).
    #[serde(default, deserialize_with = "params::string")]
    mode: Option<String>,
    /// An IANA time zone (`America/New_York`): local days follow its daylight-saving changes.
    /// Honoured without a mode too, and before `utcOffset`.
    #[serde(default, deserialize_with = "params::string")]
    time_zone: Option<String>,
    /// Like `UTC+5:30`; honoured without a mode too.
    #[serde(default, deserialize_with = "params::string")]
    utc_offset: Option<String>,
}

/// Reads `startDate`, `endDate`, `days`, `mode`, `timeZone` and `utcOffset`; the range is
/// resolved against the clock when the query runs.
fn range(p: &Value) -> Result<RangeSpec, RpcError> {
    let r: RangeParams = parse(p)?;
    // As OpenClaw: a time zone keel does not know falls back to the offset the dashboard sends
    // with it, and is an error only without one.
    let local = || -> Result<Option<Zone>, RpcError> {
        let by_offset = r.utc_offset.as_deref().map(offset).transpose();
        match r.time_zone.as_deref() {
            Some(name) => match Zone::named(name) {
                Some(z) => Ok(Some(z)),
                None => match by_offset {
                    Ok(Some(z)) => Ok(Some(z)),
                    _ => Err(RpcError::invalid(format!(
                        "invalid params: timeZone {name:?} is not an IANA time zone (e.g. \"Europe/Paris\")"
                    ))),
                },
            },
            None => by_offset,
        }
    };
    let zone = match r.mode.as_deref() {
        None => local()?.unwrap_or_default(),
        Some("utc" | "gateway") => Zone::default(),
        Some("specific") => local()?.ok_or_else(|| {
            RpcError::invalid(
                "invalid params: mode \"specific\" needs timeZone (e.g. \"Europe/Paris\") or utcOffset (e.g. \"UTC+5:30\")",
            )
        })?,
        Some(m) => {
            return Err(RpcError::invalid(format!(
                "invalid params: mode must be utc, gateway or specific, got {m:?}"
            )));
        }
    };
    let day = |key: &str, v: &Option<String>| -> Result<Option<i64>, RpcError> {
        v.as_deref()
            .map(|s| {
                time::parse_day(s).ok_or_else(|| {
                    RpcError::invalid(format!(
                        "invalid params: {key} must be a date YYYY-MM-DD, got {s:?}"
                    ))
                })
            })
            .transpose()
    };
    Ok(RangeSpec {
        start_day: day("startDate", &r.start_date)?,
        end_day: day("endDate", &r.end_date)?,
        days: r.days.map(|d| d.max(1) as i64),
        zone,
    })
}

fn offset(o: &str) -> Result<Zone, RpcError> {
    time::parse_utc_offset(o).map(Zone::Fixed).ok_or_else(|| {
        RpcError::invalid(format!(
            "invalid params: utcOffset {o:?} is not like \"UTC+5:30\""
        ))
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct List {
    /// 50 when not given.
    #[serde(default, deserialize_with = "params::count_max::<100_000, _>")]
    limit: Option<u64>,
    #[serde(default, deserialize_with = "params::count_max::<10_000_000, _>")]
    active_minutes: Option<u64>,
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
    #[serde(default, deserialize_with = "params::string")]
    search: Option<String>,
    #[serde(default, deserialize_with = "params::string")]
    label: Option<String>,
}

/// `sessions.list {limit?, activeMinutes?, agentId?, search?, label?}`.
pub fn list(svc: &Arc<Sessions>, p: &Value) -> Result<Work, RpcError> {
    let l: List = parse(p)?;
    let query = ListQuery {
        limit: l.limit.unwrap_or(50) as usize,
        active_minutes: l.active_minutes,
        agent: l.agent_id,
        search: l.search,
        label: l.label,
    };
    Ok(job(svc, Query::List(query)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Usage {
    #[serde(default, deserialize_with = "params::string")]
    key: Option<String>,
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
    /// `all`, or an agent's id.
    #[serde(default, deserialize_with = "params::string")]
    agent_scope: Option<String>,
    /// 50 when not given.
    #[serde(default, deserialize_with = "params::count_max::<10_000, _>")]
    limit: Option<u64>,
    /// The `nextCursor` of the page before.
    #[serde(default, deserialize_with = "params::string")]
    cursor: Option<String>,
    /// `instance` (the default) or `family`.
    #[serde(default, deserialize_with = "params::string")]
    group_by: Option<String>,
    /// True groups by family, as `groupBy: "family"` does.
    #[serde(default, deserialize_with = "params::flag")]
    include_historical: Option<bool>,
    /// Only sessions of this creator (an `aggregates.byCreator[].key`).
    #[serde(default, deserialize_with = "params::string")]
    creator_key: Option<String>,
}

/// `sessions.usage {startDate?, endDate?, days?, mode?, timeZone?, utcOffset?, key?, agentId?,
/// agentScope?, limit?, cursor?, groupBy?, includeHistorical?, creatorKey?}`.
pub fn usage(svc: &Arc<Sessions>, p: &Value) -> Result<Work, RpcError> {
    let range = range(p)?;
    let u: Usage = parse(p)?;
    let scope = u.agent_scope.as_deref();
    if scope == Some("all") && (u.agent_id.is_some() || u.key.is_some()) {
        return Err(RpcError::invalid(
            "agentScope=all cannot be combined with key or agentId",
        ));
    }
    let agent = match (&u.agent_id, scope) {
        (Some(a), _) => Some(a.as_str().to_string()),
        (None, Some(s)) if s != "all" => Some(s.to_string()),
        (None, _) => None,
    };
    let cursor = match &u.cursor {
        None => 0,
        Some(c) => c.parse::<usize>().map_err(|_| {
            RpcError::invalid(format!(
                "invalid params: cursor {c:?} is not one this gateway gave"
            ))
        })?,
    };
    let grouping = match (u.group_by.as_deref(), u.include_historical) {
        (Some("family"), _) | (_, Some(true)) => Grouping::Family,
        (None | Some("instance"), _) => Grouping::Instance,
        (Some(g), _) => {
            return Err(RpcError::invalid(format!(
                "invalid params: groupBy must be instance or family, got {g:?}"
            )));
        }
    };
    let query = UsageQuery {
        range,
        key: u.key,
        agent,
        limit: u.limit.unwrap_or(50) as usize,
        cursor,
        grouping,
        creator: u.creator_key,
    };
    Ok(job(svc, Query::Usage(query)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cost {
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
}

/// `usage.cost {startDate?, endDate?, days?, mode?, timeZone?, utcOffset?, agentId?}`.
pub fn cost(svc: &Arc<Sessions>, p: &Value) -> Result<Work, RpcError> {
    let range = range(p)?;
    let c: Cost = parse(p)?;
    Ok(job(
        svc,
        Query::Cost(CostQuery {
            range,
            agent: c.agent_id,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ranges() {
        let now = time::parse_iso_ms("2026-11-21T23:30:00Z").unwrap();
        let resolve = |p: Value| range(&p).and_then(|r| r.resolve(now, 30));
        let r = resolve(json!({})).unwrap();
        assert_eq!(
            (time::format_day(r.start_day), time::format_day(r.end_day)),
            ("2026-10-23".into(), "2026-11-21".into())
        );
        let r = resolve(json!({"mode": "specific", "utcOffset": "UTC+5:30", "days": 1})).unwrap();
        assert_eq!(
            time::format_day(r.end_day),
            "2026-11-22",
            "already tomorrow at +5:30"
        );
        assert!(r.contains(now));
        let r = resolve(json!({"utcOffset": "UTC+5:30", "days": 1.0})).unwrap();
        assert_eq!(time::format_day(r.end_day), "2026-11-22", "an offset alone");
        let r = resolve(json!({"mode": "utc", "utcOffset": "UTC+5:30", "days": 0})).unwrap();
        assert_eq!(
            (time::format_day(r.end_day), r.days()),
            ("2026-11-21".into(), 1),
            "utc ignores the offset; 0 days is today"
        );
        let r = resolve(json!({"startDate": "2026-11-01", "endDate": "2026-11-03"})).unwrap();
        assert_eq!(r.days(), 3);
        for (bad, why) in [
            (
                json!({"startDate": "2026-11-05", "endDate": "2026-11-03"}),
                "invalid params: startDate is after endDate",
            ),
            (
                json!({"startDate": "yesterday"}),
                "invalid params: startDate must be a date YYYY-MM-DD, got \"yesterday\"",
            ),
            (
                json!({"mode": "specific"}),
                "invalid params: mode \"specific\" needs timeZone (e.g. \"Europe/Paris\") or utcOffset (e.g. \"UTC+5:30\")",
            ),
            (
                json!({"mode": "lunar"}),
                "invalid params: mode must be utc, gateway or specific, got \"lunar\"",
            ),
            (
                json!({"mode": "specific", "utcOffset": "+a\u{e9}1"}),
                "invalid params: utcOffset \"+a\u{e9}1\" is not like \"UTC+5:30\"",
            ),
            (
                json!({"days": -1}),
                "invalid params: days must be an integer in 0..=3660",
            ),
            (
                json!({"days": 3661}),
                "invalid params: days must be an integer in 0..=3660",
            ),
            (json!({"mode": 5}), "invalid params: mode must be a string"),
            (
                json!({"endDate": 20261103}),
                "invalid params: endDate must be a string",
            ),
        ] {
            assert_eq!(resolve(bad.clone()).unwrap_err().message, why, "{bad}");
        }
    }
}
