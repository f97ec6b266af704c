//! The scheduler's settings, from OpenClaw's keys: `cron.enabled`, `cron.skipMissedJobs`, and
//! the heartbeat cadence `agents.defaults.heartbeat.every` / `agents.list[].heartbeat.every`
//! (a duration such as `"30m"`; `"0m"` disables it).
//!
//! keel seeds no job: without a `heartbeat.every`, an agent has no heartbeat (OpenClaw
//! defaults to 30 minutes, a model call every half hour nobody asked for).

use crate::ids::AgentId;
use serde_json::{Map, Value};
use std::time::Duration;

/// The shortest heartbeat.
pub const MIN_HEARTBEAT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
pub struct CronConfig {
    /// `cron.enabled` (default true): false pauses every job without deleting any.
    pub enabled: bool,
    /// `cron.skipMissedJobs` (default false): recurring slots missed while keel was down are
    /// skipped (recorded as such) instead of caught up once.
    pub skip_missed: bool,
    /// Agents with a heartbeat, and its period.
    pub heartbeats: Vec<(AgentId, Duration)>,
}

impl Default for CronConfig {
    fn default() -> Self {
        CronConfig {
            enabled: true,
            skip_missed: false,
            heartbeats: Vec::new(),
        }
    }
}

/// Reads `"30m"`, `"1h"`, `"45s"`, `"1d"`, `"1500ms"` or a bare number of minutes (OpenClaw's
/// duration strings). `Ok(None)` for a zero duration (disabled).
pub fn duration(v: &Value) -> Result<Option<Duration>, String> {
    let (num, unit) = match v {
        Value::Number(n) => (n.as_f64().unwrap_or(-1.0), "m".to_string()),
        Value::String(s) => {
            let s = s.trim();
            let split = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(s.len());
            let (n, u) = s.split_at(split);
            let n: f64 = n
                .parse()
                .map_err(|_| format!("expected a duration such as \"30m\", got {v}"))?;
            (n, u.trim().to_ascii_lowercase())
        }
        _ => return Err(format!("expected a duration such as \"30m\", got {v}")),
    };
    let unit_ms = match unit.as_str() {
        "ms" => 1.0,
        "s" | "sec" | "secs" => 1_000.0,
        "" | "m" | "min" | "mins" => 60_000.0,
        "h" | "hr" | "hrs" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        _ => return Err(format!("unknown duration unit in {v}")),
    };
    let ms = num * unit_ms;
    if !ms.is_finite() || !(0.0..=366.0 * 86_400_000.0).contains(&ms) {
        return Err(format!("duration out of range: {v}"));
    }
    if ms == 0.0 {
        return Ok(None);
    }
    let d = Duration::from_millis(ms as u64);
    if d < MIN_HEARTBEAT {
        return Err(format!("at least 1s, got {v}"));
    }
    Ok(Some(d))
}

fn every(v: Option<&Value>) -> Option<&Value> {
    v.and_then(|h| h.get("heartbeat"))
        .and_then(|h| h.get("every"))
}

/// Reads the settings; a bad value disables only itself (`(path, reason)`).
pub fn parse(
    root: &Map<String, Value>,
    agent_ids: &[AgentId],
    default_agent: &AgentId,
) -> (CronConfig, Vec<(String, String)>) {
    let mut c = CronConfig::default();
    let mut issues = Vec::new();
    if let Some(cron) = root.get("cron") {
        match cron {
            Value::Object(m) => {
                for (key, field) in [
                    ("enabled", &mut c.enabled),
                    ("skipMissedJobs", &mut c.skip_missed),
                ] {
                    match m.get(key) {
                        None | Some(Value::Null) => {}
                        Some(Value::Bool(b)) => *field = *b,
                        Some(v) => issues.push((
                            format!("cron.{key}"),
                            format!("expected true or false, got {v}"),
                        )),
                    }
                }
            }
            v => issues.push(("cron".into(), format!("expected an object, got {v}"))),
        }
    }
    let agents = root.get("agents");
    let default_every = match every(agents.and_then(|a| a.get("defaults"))) {
        None | Some(Value::Null) => None,
        Some(v) => match duration(v) {
            Ok(d) => d,
            Err(e) => {
                issues.push(("agents.defaults.heartbeat.every".into(), e));
                None
            }
        },
    };
    let list = agents.and_then(|a| a.get("list")).and_then(Value::as_array);
    let mut seen = Vec::new();
    if let Some(list) = list {
        for (i, a) in list.iter().enumerate() {
            let Some(id) = a
                .get("id")
                .and_then(Value::as_str)
                .and_then(|s| AgentId::normalize(s).ok())
            else {
                continue;
            };
            seen.push(id.clone());
            let d = match every(Some(a)) {
                None | Some(Value::Null) => default_every,
                Some(v) => match duration(v) {
                    Ok(d) => d,
                    Err(e) => {
                        issues.push((format!("agents.list[{i}].heartbeat.every"), e));
                        None
                    }
                },
            };
            if let Some(d) = d {
                c.heartbeats.push((id, d));
            }
        }
    }
    // Without a list, the defaults apply to the default agent (and any agent the config knows).
    if let Some(d) = default_every {
        for id in agent_ids.iter().chain(std::iter::once(default_agent)) {
            if !seen.contains(id) {
                seen.push(id.clone());
                c.heartbeats.push((id.clone(), d));
            }
        }
    }
    (c, issues)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(
            duration(&json!("30m")).unwrap(),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(
            duration(&json!("2s")).unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            duration(&json!("1h")).unwrap(),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(duration(&json!("0m")).unwrap(), None);
        assert_eq!(duration(&json!(5)).unwrap(), Some(Duration::from_secs(300)));
        assert!(duration(&json!("soon")).is_err());
        assert!(duration(&json!("5 fortnights")).is_err());
        assert!(duration(&json!("100ms")).is_err());
    }

    #[test]
    fn heartbeats_per_agent_and_zero_disables() {
        let root = json!({
            "cron": {"skipMissedJobs": true},
            "agents": {
                "defaults": {"heartbeat": {"every": "30m"}},
                "list": [
                    {"id": "main"},
                    {"id": "ops", "heartbeat": {"every": "5m"}},
                    {"id": "quiet", "heartbeat": {"every": "0m"}},
                ],
            },
        });
        let ids: Vec<AgentId> = ["main", "ops", "quiet"]
            .iter()
            .map(|s| AgentId::normalize(s).unwrap())
            .collect();
        let (c, issues) = parse(root.as_object().unwrap(), &ids, &ids[0]);
        assert!(issues.is_empty(), "{issues:?}");
        assert!(c.skip_missed && c.enabled);
        let hb: Vec<(String, u64)> = c
            .heartbeats
            .iter()
            .map(|(a, d)| (a.to_string(), d.as_secs()))
            .collect();
        assert_eq!(hb, [("main".to_string(), 1800), ("ops".to_string(), 300)]);
        let (c, issues) = parse(
            json!({"cron": {"enabled": "yes"}}).as_object().unwrap(),
            &[],
            &ids[0],
        );
        assert_eq!(issues[0].0, "cron.enabled");
        assert!(c.enabled && c.heartbeats.is_empty());
    }
}
