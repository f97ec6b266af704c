//! A job: its definition as OpenClaw stores and answers it (`JobDef`, the file's content and
//! the wire's shape), and the checked form the scheduler runs (`Job`). Everything a client or
//! another program wrote is checked by [`check`]: a refusal names the field
//! (`schedule.expr: cron minute field "61": 61 is outside 0-59`).

use super::schedule::{CronSchedule, MAX_EVERY_MS, MIN_EVERY_MS, Schedule};
use crate::agent::transcript::Origin;
use crate::config::Config;
use crate::ids::{AgentId, SessionKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// The longest `payload.message`.
const MAX_MESSAGE: usize = 64 << 10;
/// A run's default timeout (at most the agent's run timeout).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// The declaration key of a heartbeat job (`heartbeat:<agentId>`), as OpenClaw names them.
pub const HEARTBEAT_PREFIX: &str = "heartbeat:";

fn yes() -> bool {
    true
}

fn isolated() -> String {
    "isolated".into()
}

fn now_mode() -> String {
    "now".into()
}

/// A job as stored in `<state>/cron/jobs/<id>.json` and answered by `cron.list`/`cron.get`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobDef {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub created_at_ms: u64,
    #[serde(default)]
    pub updated_at_ms: u64,
    pub schedule: ScheduleDef,
    #[serde(default = "isolated")]
    pub session_target: String,
    #[serde(default = "now_mode")]
    pub wake_mode: String,
    pub payload: PayloadDef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryDef>,
    #[serde(default)]
    pub delete_after_run: bool,
    /// System-owned jobs (`heartbeat:<agentId>`): converged from the config, not editable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declaration_key: Option<String>,
    /// keel: slots before this time are never caught up (set when the job is created or its
    /// schedule changes).
    #[serde(default)]
    pub schedule_since_ms: u64,
}

/// A schedule as OpenClaw writes it: `{kind: "every", everyMs, anchorMs?}`,
/// `{kind: "cron", expr, tz?, staggerMs?}` or `{kind: "at", at}`. One flat struct (not a
/// tagged enum) so that a field of the wrong type is named (`schedule.everyMs`); [`check`]
/// says which fields a kind needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleDef {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stagger_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Value>,
}

impl ScheduleDef {
    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn is_at(&self) -> bool {
        self.kind == "at"
    }

    pub fn every(every_ms: u64, anchor_ms: i64) -> ScheduleDef {
        ScheduleDef {
            kind: "every".into(),
            every_ms: Some(every_ms),
            anchor_ms: Some(anchor_ms),
            ..ScheduleDef::default()
        }
    }
}

/// A payload: `{kind: "agentTurn", message, timeoutSeconds?}`, `{kind: "systemEvent", text}`,
/// or `{kind: "heartbeat"}` (system-owned jobs only).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PayloadDef {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryDef {
    #[serde(default = "announce")]
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::protocol::params::address"
    )]
    pub to: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::protocol::params::address"
    )]
    pub account_id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::protocol::params::address"
    )]
    pub thread_id: Option<String>,
}

fn announce() -> String {
    "announce".into()
}

/// Where a run's turn happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The agent's main session.
    Main,
    /// A fresh session per run.
    Isolated,
}

/// A checked job: what the scheduler runs.
#[derive(Debug, Clone)]
pub struct Job {
    pub def: JobDef,
    pub agent: AgentId,
    pub schedule: Schedule,
    pub target: Target,
    /// The turn's text.
    pub message: String,
    pub timeout: Duration,
    /// Where the reply goes (`None` with `deliver`: the agent's bound channel, as OpenClaw's
    /// `channel: "last"`).
    pub origin: Option<Origin>,
    /// Whether the reply is delivered at all (`delivery.mode: "announce"`).
    pub deliver: bool,
    pub heartbeat: bool,
}

impl Job {
    /// The session a run of this job speaks in.
    pub fn session(&self, run_id: &str) -> SessionKey {
        match self.target {
            Target::Main => SessionKey::of(&self.agent, "main"),
            Target::Isolated => {
                SessionKey::of(&self.agent, &format!("cron:{}:run:{run_id}", self.def.id))
            }
        }
    }

    pub fn is_system(&self) -> bool {
        self.def.declaration_key.is_some()
    }
}

/// Reads an ISO 8601 instant (`2027-02-01T16:00:00Z`; without an offset, UTC) or epoch ms.
pub fn parse_at(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("expected an ISO 8601 time or epoch milliseconds, got {v}")),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(t) = s.parse::<jiff::Timestamp>() {
                return Ok(t.as_millisecond());
            }
            s.parse::<jiff::civil::DateTime>()
                .ok()
                .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC).ok())
                .map(|z| z.timestamp().as_millisecond())
                .ok_or_else(|| format!("expected an ISO 8601 time, got {s:?}"))
        }
        _ => Err(format!("expected an ISO 8601 time, got {v}")),
    }
}

/// Checks a definition against the config; `Err` names the field.
pub fn check(def: JobDef, cfg: &Config) -> Result<Job, String> {
    if def.id.is_empty() || crate::ids::SafeName::new(&def.id).is_err() || def.id.len() > 128 {
        return Err(format!("id: {:?} is not a usable job id", def.id));
    }
    let name = def.name.trim();
    if name.is_empty() {
        return Err("name is required".into());
    }
    if name.chars().count() > 200 {
        return Err("name: at most 200 characters".into());
    }
    let agent = match def
        .agent_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => cfg.agents.default_agent_id(),
        Some(raw) => AgentId::normalize(raw).map_err(|e| format!("agentId: {e}"))?,
    };
    if !cfg.agents.knows(&agent) {
        return Err(format!("agentId: no agent {agent:?} is configured"));
    }
    let sch = &def.schedule;
    let schedule = match sch.kind.as_str() {
        "every" => {
            let every_ms = sch.every_ms.ok_or("schedule.everyMs is required")?;
            if !(MIN_EVERY_MS..=MAX_EVERY_MS).contains(&every_ms) {
                return Err(format!(
                    "schedule.everyMs: expected {MIN_EVERY_MS}..={MAX_EVERY_MS}, got {every_ms}"
                ));
            }
            Schedule::Every {
                every_ms,
                anchor_ms: sch.anchor_ms.unwrap_or(def.created_at_ms as i64),
            }
        }
        "cron" => {
            let expr = sch.expr.as_deref().ok_or("schedule.expr is required")?;
            let c = CronSchedule::parse(expr, sch.tz.as_deref()).map_err(|e| {
                if e.starts_with("unknown IANA") {
                    format!("schedule.tz: {e}")
                } else {
                    format!("schedule.expr: {e}")
                }
            })?;
            let s = Schedule::Cron(Box::new(c));
            if s.next_after(def.created_at_ms as i64).is_none() {
                return Err(format!(
                    "schedule.expr: {expr:?} has no time to run in the next eight years"
                ));
            }
            s
        }
        "at" => Schedule::At {
            at_ms: parse_at(sch.at.as_ref().ok_or("schedule.at is required")?)
                .map_err(|e| format!("schedule.at: {e}"))?,
        },
        other => {
            return Err(format!(
                "schedule.kind: keel schedules \"every\", \"cron\" or \"at\", not {other:?}"
            ));
        }
    };
    if sch.tz.is_some() && sch.kind != "cron" {
        return Err("schedule.tz: only a cron schedule has a time zone".into());
    }
    let target = match def.session_target.as_str() {
        "main" => Target::Main,
        "isolated" => Target::Isolated,
        other => {
            return Err(format!(
                "sessionTarget: keel runs jobs in \"main\" or \"isolated\", not {other:?}"
            ));
        }
    };
    let heartbeat = def
        .declaration_key
        .as_deref()
        .is_some_and(|k| k.starts_with(HEARTBEAT_PREFIX));
    let p = &def.payload;
    let text = |v: &Option<String>, field: &str| {
        v.clone()
            .filter(|m| !m.trim().is_empty())
            .ok_or_else(|| format!("payload.{field} is required"))
    };
    let message = match p.kind.as_str() {
        "agentTurn" => text(&p.message, "message")?,
        "systemEvent" => {
            if target != Target::Main {
                return Err("sessionTarget: a systemEvent payload runs in \"main\"".into());
            }
            format!("[System event] {}", text(&p.text, "text")?)
        }
        "heartbeat" => {
            if !heartbeat {
                return Err("payload.kind: heartbeat jobs are system-owned".into());
            }
            HEARTBEAT_MESSAGE.to_string()
        }
        other => {
            return Err(format!(
                "payload.kind: keel runs \"agentTurn\" and \"systemEvent\" payloads, not {other:?}"
            ));
        }
    };
    let timeout_s = p.timeout_seconds;
    if message.len() > MAX_MESSAGE {
        return Err(format!("payload.message: at most {MAX_MESSAGE} bytes"));
    }
    let timeout = match timeout_s {
        None => DEFAULT_TIMEOUT,
        Some(s) if (1..=86_400).contains(&s) => Duration::from_secs(s),
        Some(s) => {
            return Err(format!(
                "payload.timeoutSeconds: expected 1..=86400, got {s}"
            ));
        }
    }
    .min(cfg.agents.run_timeout);
    let announce = def.delivery.as_ref().is_some_and(|d| d.mode == "announce");
    let origin = match &def.delivery {
        None => None,
        Some(d) => match d.mode.as_str() {
            "none" => None,
            // No channel (or OpenClaw's "last") and no address: the agent's bound channel.
            "announce"
                if d.channel
                    .as_deref()
                    .is_none_or(|c| c.is_empty() || c == "last")
                    && d.to.is_none() =>
            {
                None
            }
            "announce" => {
                let channel = d
                    .channel
                    .as_deref()
                    .filter(|c| !c.is_empty() && *c != "last")
                    .ok_or("delivery.channel is required with delivery.to")?;
                let to =
                    d.to.as_deref()
                        .ok_or("delivery.to is required for announce delivery")?;
                crate::config::channels::validate_address(channel, to)
                    .map_err(|e| e.replacen("delivery:", "delivery.to:", 1))?;
                if !cfg.channels.0.contains_key(channel) {
                    return Err(format!(
                        "delivery.channel: no channel {channel:?} is configured"
                    ));
                }
                Some(Origin {
                    channel: Some(channel.to_string()),
                    to: Some(to.to_string()),
                    account_id: d.account_id.clone(),
                    thread_id: d.thread_id.clone(),
                })
            }
            other => {
                return Err(format!(
                    "delivery.mode: keel delivers \"announce\" or \"none\", not {other:?}"
                ));
            }
        },
    };
    Ok(Job {
        agent,
        schedule,
        target,
        message,
        timeout,
        origin,
        deliver: announce,
        heartbeat,
        def,
    })
}

/// What a heartbeat turn says (OpenClaw's marker, so transcripts read the same).
pub const HEARTBEAT_MESSAGE: &str = "[OpenClaw heartbeat poll] Check in: is there anything that \
     needs attention? Reply briefly; say nothing needs attention if nothing does.";

/// Merges an OpenClaw `cron.update` patch into a definition's JSON: top-level keys replace,
/// `schedule`/`payload` of the same kind and `delivery` merge a level down, `null` removes.
pub fn merge_patch(def: &mut Value, patch: &Value) {
    let (Some(d), Some(p)) = (def.as_object_mut(), patch.as_object()) else {
        return;
    };
    for (k, v) in p {
        let nested = matches!(k.as_str(), "schedule" | "payload" | "delivery");
        let same_kind = match (d.get(k), v) {
            (Some(Value::Object(old)), Value::Object(new)) => {
                k == "delivery"
                    || new
                        .get("kind")
                        .is_none_or(|kind| old.get("kind") == Some(kind))
            }
            _ => false,
        };
        if v.is_null() {
            d.remove(k);
        } else if nested
            && same_kind
            && let (Some(Value::Object(old)), Value::Object(new)) = (d.get_mut(k), v)
        {
            for (nk, nv) in new {
                if nv.is_null() {
                    old.remove(nk);
                } else {
                    old.insert(nk.clone(), nv.clone());
                }
            }
        } else {
            d.insert(k.clone(), v.clone());
        }
    }
}

/// Reads a definition from JSON, naming the field of a type error.
pub fn from_json(v: &Value) -> Result<JobDef, String> {
    serde_path_to_error::deserialize::<_, JobDef>(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            inner
                .replace("missing field `", "")
                .replace('`', " is required")
        } else {
            format!("{path}: {inner}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> Config {
        let r = crate::config::parse(
            &json!({
                "agents": {"list": [{"id": "main"}, {"id": "ops"}]},
                "channels": {"telegram": {"botToken": "1:x"}},
            })
            .to_string(),
            None,
        );
        r.config
    }

    fn def(v: Value) -> Result<Job, String> {
        let mut base = json!({"id": "j1", "name": "n", "createdAtMs": 1_000_000});
        merge_patch(&mut base, &v);
        check(from_json(&base)?, &cfg())
    }

    #[test]
    fn a_good_job() {
        let j = def(json!({
            "agentId": "ops",
            "schedule": {"kind": "cron", "expr": "0 8 * * *", "tz": "Europe/Berlin"},
            "payload": {"kind": "agentTurn", "message": "morning summary", "timeoutSeconds": 30},
            "delivery": {"mode": "announce", "channel": "telegram", "to": 12345},
        }))
        .unwrap();
        assert_eq!(j.agent.as_str(), "ops");
        assert_eq!(j.timeout, Duration::from_secs(30));
        assert_eq!(j.origin.as_ref().unwrap().to.as_deref(), Some("12345"));
        assert_eq!(j.session("r1").key, "agent:ops:cron:j1:run:r1");
    }

    #[test]
    fn refusals_name_the_field() {
        let every = json!({"kind": "every", "everyMs": 60000});
        let turn = json!({"kind": "agentTurn", "message": "hi"});
        for (patch, field) in [
            (
                json!({"schedule": {"kind": "every", "everyMs": 5}, "payload": turn}),
                "schedule.everyMs",
            ),
            (
                json!({"schedule": {"kind": "cron", "expr": "61 * * * *"}, "payload": turn}),
                "schedule.expr",
            ),
            (
                json!({"schedule": {"kind": "cron", "expr": "* * * * *", "tz": "Nowhere/Town"}, "payload": turn}),
                "schedule.tz",
            ),
            (
                json!({"schedule": {"kind": "at", "at": "tomorrow"}, "payload": turn}),
                "schedule.at",
            ),
            (
                json!({"schedule": {"kind": "weekly"}, "payload": turn}),
                "schedule",
            ),
            (
                json!({"schedule": every, "payload": {"kind": "agentTurn", "message": " "}}),
                "payload.message",
            ),
            (
                json!({"schedule": every, "payload": {"kind": "command", "command": "ls"}}),
                "payload",
            ),
            (
                json!({"schedule": every, "payload": turn, "agentId": "ghost"}),
                "agentId",
            ),
            (
                json!({"schedule": every, "payload": turn, "sessionTarget": "current"}),
                "sessionTarget",
            ),
            (
                json!({"schedule": every, "payload": {"kind": "systemEvent", "text": "x"}}),
                "sessionTarget",
            ),
            (
                json!({"schedule": every, "payload": turn, "delivery": {"mode": "announce", "channel": "telegram"}}),
                "delivery.to",
            ),
            (
                json!({"schedule": every, "payload": turn, "delivery": {"mode": "announce", "to": "12"}}),
                "delivery.channel",
            ),
            (
                json!({"schedule": every, "payload": turn, "delivery": {"mode": "announce", "channel": "telegram", "to": "not a chat"}}),
                "delivery.to",
            ),
            (
                json!({"schedule": every, "payload": turn, "delivery": {"mode": "announce", "channel": "slack", "to": "C0123456789"}}),
                "delivery.channel",
            ),
            (
                json!({"schedule": every, "payload": turn, "delivery": {"mode": "webhook", "to": "http://x"}}),
                "delivery.mode",
            ),
            (
                json!({"schedule": every, "payload": {"kind": "heartbeat"}}),
                "payload.kind",
            ),
            (
                json!({"schedule": every, "payload": turn, "name": ""}),
                "name",
            ),
            (json!({"payload": turn}), "schedule"),
        ] {
            let err = def(patch.clone()).unwrap_err();
            assert!(err.starts_with(field), "{patch}: {err}");
        }
    }

    #[test]
    fn patches_merge_like_openclaw() {
        let mut d = json!({
            "schedule": {"kind": "every", "everyMs": 60000, "anchorMs": 5},
            "payload": {"kind": "agentTurn", "message": "a", "timeoutSeconds": 9},
            "delivery": {"mode": "announce", "channel": "telegram", "to": "1"},
        });
        merge_patch(
            &mut d,
            &json!({"payload": {"timeoutSeconds": null}, "schedule": {"everyMs": 120000}, "enabled": false}),
        );
        assert_eq!(d["payload"], json!({"kind": "agentTurn", "message": "a"}));
        assert_eq!(d["schedule"]["everyMs"], 120000);
        assert_eq!(d["schedule"]["anchorMs"], 5);
        assert_eq!(d["enabled"], false);
        merge_patch(
            &mut d,
            &json!({"schedule": {"kind": "cron", "expr": "0 * * * *"}, "delivery": null}),
        );
        assert_eq!(d["schedule"], json!({"kind": "cron", "expr": "0 * * * *"}));
        assert!(d.get("delivery").is_none());
    }
}
