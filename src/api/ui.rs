//! What OpenClaw's dashboard (the Control UI) calls on every page, answered from what keel
//! has: its agents from the config, each agent's identity, the providers' credentials (whether
//! one is configured, never its value), and — for the features keel does not have (approvals,
//! questions, plugins, boards, tasks, talk, …) — the empty answer OpenClaw itself gives
//! when it has none, in OpenClaw's shape, so the dashboard's panels render "nothing here"
//! instead of an error.
//!
//! Everything here is cheap and in memory (the config in force), answered on the reactor.
//! The heavier system methods (`config.get`, `system.info`, `logs.tail`, `channels.status`)
//! are in `api::system`.

use crate::config::Config;
use crate::config::agents::ModelChain;
use crate::error::RpcError;
use crate::ids::AgentId;
use crate::protocol::handshake::{MAIN_KEY, SESSION_SCOPE};
use crate::protocol::params::{self, parse};
use crate::protocol::reply::ReplyTo;
use crate::runtime::Shared;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// The agents keel knows: those `agents.list` names, or — with none listed — the default
/// agent every run without one belongs to.
fn agent_ids(cfg: &Config) -> Vec<AgentId> {
    let listed: Vec<AgentId> = cfg.agents.agents.iter().map(|a| a.id.clone()).collect();
    if listed.is_empty() {
        vec![cfg.agents.default_agent_id()]
    } else {
        listed
    }
}

/// The file's own entry for an agent (`agents.list[]`, matched by normalized id): what keel
/// does not read itself (name, identity, workspace) is shown as written.
fn raw_entry<'a>(cfg: &'a Config, id: &AgentId) -> Option<&'a Map<String, Value>> {
    cfg.raw
        .0
        .pointer("/agents/list")?
        .as_array()?
        .iter()
        .filter_map(Value::as_object)
        .find(|e| {
            e.get("id")
                .and_then(Value::as_str)
                .and_then(|raw| AgentId::normalize(raw).ok())
                .is_some_and(|n| &n == id)
        })
}

fn chain_json(c: &ModelChain) -> Option<Value> {
    let primary = c.primary.as_ref()?;
    let mut m = json!({"primary": primary.to_string()});
    if !c.fallbacks.is_empty() {
        m["fallbacks"] = json!(
            c.fallbacks
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        );
    }
    Some(m)
}

/// A short string from the file, trimmed, if it is one.
fn text(m: Option<&Map<String, Value>>, key: &str, max_chars: usize) -> Option<String> {
    let s = m?.get(key)?.as_str()?.trim();
    (!s.is_empty()).then(|| s.chars().take(max_chars).collect())
}

/// `agents.list {}` → `{defaultId, mainKey, scope, agents[{id, kind, name?, identity?,
/// workspace?, model?}]}`.
pub fn agents_list(shared: &Arc<Shared>, _p: &Value, _caller: &ReplyTo) -> Result<Value, RpcError> {
    let cfg = shared.config();
    let agents: Vec<Value> = agent_ids(&cfg)
        .iter()
        .map(|id| {
            let raw = raw_entry(&cfg, id);
            let mut a = json!({"id": id.as_str(), "kind": "agent"});
            if let Some(name) = text(raw, "name", 100) {
                a["name"] = json!(name);
            }
            if let Some(identity) = raw
                .and_then(|r| r.get("identity"))
                .filter(|v| v.is_object())
            {
                a["identity"] = identity_fields(identity.as_object());
            }
            if let Some(w) = text(raw, "workspace", 4096) {
                a["workspace"] = json!(w);
            }
            if let Some(m) = chain_json(&cfg.agents.chain(id)) {
                a["model"] = m;
            }
            a
        })
        .collect();
    Ok(json!({
        "defaultId": cfg.agents.default_agent_id().as_str(),
        "mainKey": MAIN_KEY,
        "scope": SESSION_SCOPE,
        "agents": agents,
    }))
}

/// The `identity` block's display fields (`name`, `emoji`, `avatar`, `theme`), nothing else.
fn identity_fields(identity: Option<&Map<String, Value>>) -> Value {
    let mut out = Map::new();
    for key in ["name", "emoji", "avatar", "theme"] {
        if let Some(v) = text(identity, key, 2048) {
            out.insert(key.into(), json!(v));
        }
    }
    Value::Object(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityParams {
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
    #[serde(default, deserialize_with = "params::string")]
    session_key: Option<String>,
}

/// OpenClaw's identity when none is configured.
const DEFAULT_NAME: &str = "Assistant";
const DEFAULT_AVATAR: &str = "A";

/// An avatar OpenClaw would show as given: an http(s) or image data URL, or a few characters
/// (an emoji, initials).
fn avatar_ok(s: &str) -> bool {
    s.starts_with("https://")
        || s.starts_with("http://")
        || s.starts_with("data:image/")
        || (s.chars().count() <= 4 && !s.chars().any(char::is_whitespace))
}

/// `agent.identity.get {agentId?, sessionKey?}` → `{agentId, name, nameSource, avatar,
/// emoji?}`: the agent's `identity` from the config (`nameSource: "agent"`), else OpenClaw's
/// default ("Assistant", `nameSource: "default"`). Without an agent, the session's, else the
/// default agent.
pub fn agent_identity_get(
    shared: &Arc<Shared>,
    p: &Value,
    _caller: &ReplyTo,
) -> Result<Value, RpcError> {
    let q: IdentityParams = parse(p)?;
    let cfg = shared.config();
    let default = cfg.agents.default_agent_id();
    let id = match (q.session_key, q.agent_id) {
        (Some(key), _) => params::session_key("sessionKey", &key, &default)?.agent,
        (None, Some(id)) => id,
        (None, None) => default,
    };
    let identity = raw_entry(&cfg, &id)
        .and_then(|e| e.get("identity"))
        .and_then(Value::as_object);
    let name = text(identity, "name", 50);
    let emoji = text(identity, "emoji", 16).filter(|e| !e.is_ascii());
    let avatar = text(identity, "avatar", 2048)
        .filter(|a| avatar_ok(a))
        .or_else(|| emoji.clone())
        .unwrap_or_else(|| DEFAULT_AVATAR.to_string());
    let mut out = json!({
        "agentId": id.as_str(),
        "name": name.as_deref().unwrap_or(DEFAULT_NAME),
        "nameSource": if name.is_some() { "agent" } else { "default" },
        "avatar": avatar,
    });
    if let Some(e) = emoji {
        out["emoji"] = json!(e);
    }
    Ok(out)
}

/// `models.authStatus {agentId?}` → `{ts, providers[{provider, displayName, status, apiKey?,
/// profiles: []}], providerCapabilities: []}`: per configured provider whether it has an API
/// key (`static`) and where it comes from (`config`, or `env` with the variable's name), or
/// none (`missing`). Never the key. keel has no sign-in flows, so no capabilities.
pub fn models_auth_status(
    shared: &Arc<Shared>,
    p: &Value,
    _caller: &ReplyTo,
) -> Result<Value, RpcError> {
    // Every agent shares the providers: the agent is checked, not needed.
    let _: IdentityParams = parse(p)?;
    let cfg = shared.config();
    let providers: Vec<Value> = cfg
        .agents
        .providers
        .values()
        .map(|p| {
            let written = cfg
                .raw
                .0
                .pointer(&format!(
                    "/models/providers/{}/apiKey",
                    pointer_escape(&p.id)
                ))
                .and_then(Value::as_str);
            let mut out = json!({
                "provider": p.id,
                "authProvider": p.id,
                "displayName": p.id,
                "status": if p.api_key.is_some() { "static" } else { "missing" },
                "profiles": [],
            });
            if p.api_key.is_some() {
                out["apiKey"] = match written.and_then(env_ref) {
                    Some(var) => json!({"source": "env", "envVar": var}),
                    None => json!({"source": "config"}),
                };
            }
            out
        })
        .collect();
    Ok(json!({
        "ts": crate::clock::wall_ms(),
        "providers": providers,
        "providerCapabilities": [],
    }))
}

/// `NAME` of a `${NAME}` reference.
pub fn env_ref(s: &str) -> Option<&str> {
    s.strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .filter(|n| !n.is_empty())
}

/// A JSON pointer token (RFC 6901).
fn pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// `openclaw.setup.detect {agentId?}`: keel has no setup wizard (providers are configured in
/// the file), so no options; `setupComplete` says whether the agent has a model to run with.
pub fn setup_detect(shared: &Arc<Shared>, p: &Value, _caller: &ReplyTo) -> Result<Value, RpcError> {
    let q: IdentityParams = parse(p)?;
    let cfg = shared.config();
    let id = q.agent_id.unwrap_or_else(|| cfg.agents.default_agent_id());
    let model = cfg
        .agents
        .chain(&id)
        .primary
        .filter(|m| cfg.agents.providers.contains_key(&m.provider));
    let mut out = json!({
        "manualProviders": [],
        "authOptions": [],
        "prepareOptions": [],
        "nativeSessionCatalogs": [],
        "nativeSessionCatalogPreferenceRequired": false,
        "setupComplete": model.is_some(),
        "candidates": [],
        "unavailableCandidates": [],
        "recommendedInstalls": [],
    });
    if let Some(m) = model {
        out["configuredModel"] = json!(m.to_string());
    }
    Ok(out)
}

/// `update.status`: keel does not update itself, so no update is known to be available.
pub fn update_status(
    _shared: &Arc<Shared>,
    _p: &Value,
    _caller: &ReplyTo,
) -> Result<Value, RpcError> {
    Ok(json!({
        "sentinel": null,
        "updateAvailable": null,
        "effectiveChannel": null,
        "schedule": {"channel": null, "autoEnabled": false},
        "currentVersion": crate::VERSION,
    }))
}

/// `last-heartbeat`: the last agent heartbeat run. keel runs no heartbeats: `null`, as
/// OpenClaw answers before its first.
pub fn last_heartbeat(
    _shared: &Arc<Shared>,
    _p: &Value,
    _caller: &ReplyTo,
) -> Result<Value, RpcError> {
    Ok(Value::Null)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Visibility {
    #[serde(default, deserialize_with = "params::flag")]
    #[allow(dead_code)]
    visible: Option<bool>,
}

/// `sessions.observer.visibility {visible}`: keel has no session observers; the report is
/// checked and acknowledged.
pub fn observer_visibility(
    _shared: &Arc<Shared>,
    p: &Value,
    _caller: &ReplyTo,
) -> Result<Value, RpcError> {
    let _: Visibility = parse(p)?;
    Ok(json!({"ok": true}))
}

/// The most session keys `sessions.viewers.set` takes.
const VIEWERS_MAX: usize = 256;

/// `sessions.viewers.set {sessionKeys}`: which sessions this client shows. keel tracks no
/// viewers; the keys are checked and echoed, as OpenClaw answers.
pub fn viewers_set(shared: &Arc<Shared>, p: &Value, _caller: &ReplyTo) -> Result<Value, RpcError> {
    let keys = match p.get("sessionKeys") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() <= VIEWERS_MAX => a
            .iter()
            .map(|k| k.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| RpcError::invalid("invalid params: sessionKeys must be strings"))?,
        Some(_) => {
            return Err(RpcError::invalid(format!(
                "invalid params: sessionKeys must be an array of at most {VIEWERS_MAX} strings"
            )));
        }
    };
    let default = shared.config().agents.default_agent_id();
    let keys = keys
        .iter()
        .map(|k| params::session_key("sessionKeys", k, &default).map(|s| s.key))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({"sessionKeys": keys}))
}

/// An empty answer of OpenClaw's shape: for what keel does not have.
pub fn empty(method: &str, p: &Value, instance_id: &str) -> Value {
    match method {
        "exec.approval.list" | "plugin.approval.list" | "openclaw.approval.list" => json!([]),
        "question.list" => json!({"questions": []}),
        "node.list" => json!({"ts": crate::clock::wall_ms(), "nodes": []}),
        "environments.list" => json!({"environments": []}),
        "plugins.controlUi.list" => json!({"revision": "none", "plugins": [], "diagnostics": []}),
        "sessions.groups.list" => json!({"groups": [], "sectionOrder": []}),
        "sessions.groups.defaults" => json!({"defaults": []}),
        "mentions.list" => json!({
            "gatewayInstanceId": instance_id, "revision": 0, "items": [],
        }),
        "users.prefs.get" => json!({"status": "ok", "entries": {}}),
        "sessions.catalog.list" => json!({"catalogs": []}),
        "controlUi.sessionPullRequests.subscribe" => json!({"subscribed": true}),
        "board.get" => json!({
            "sessionKey": p.get("sessionKey").and_then(Value::as_str),
            "revision": 0, "tabs": [], "widgets": [],
        }),
        "projects.list" => json!({"projects": [], "recents": []}),
        "talk.catalog" => json!({
            "modes": [], "transports": [], "brains": [],
            "speech": {"providers": []},
            "transcription": {"ready": false, "providers": []},
            "realtime": {"ready": false, "providers": []},
        }),
        "taskSuggestions.list" => json!({"suggestions": []}),
        "tasks.list" => json!({"tasks": []}),
        "sessions.branches.list" => json!({"branches": []}),
        "session.discussion.info" => json!({"state": "none"}),
        "sessions.companion.state" => json!({"exchanges": []}),
        _ => Value::Null,
    }
}

/// The params the empty answers read; any other param is ignored, as everywhere.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EmptyParams {
    #[serde(default, deserialize_with = "params::count_max::<10_000, _>")]
    #[allow(dead_code)]
    limit: Option<u64>,
    #[serde(default, deserialize_with = "params::count")]
    #[allow(dead_code)]
    offset: Option<u64>,
    #[serde(default, deserialize_with = "params::string")]
    session_key: Option<String>,
    #[serde(default, deserialize_with = "params::agent_id")]
    #[allow(dead_code)]
    agent_id: Option<AgentId>,
}

/// Checks the params an empty answer echoes (`limit`, `offset`, `sessionKey`, `agentId`).
fn check_empty_params(shared: &Shared, p: &Value) -> Result<(), RpcError> {
    let q: EmptyParams = parse(p)?;
    if let Some(key) = q.session_key {
        params::session_key(
            "sessionKey",
            &key,
            &shared.config().agents.default_agent_id(),
        )?;
    }
    Ok(())
}

macro_rules! empty_methods {
    ($($fn_name:ident => $method:literal),* $(,)?) => {
        $(
            #[doc = concat!("`", $method, "`: keel has none; OpenClaw's empty answer.")]
            pub fn $fn_name(
                shared: &Arc<Shared>,
                p: &Value,
                _caller: &ReplyTo,
            ) -> Result<Value, RpcError> {
                check_empty_params(shared, p)?;
                Ok(empty($method, p, super::system::instance_id()))
            }
        )*
        /// Every method answered by [`empty`].
        pub const EMPTY_METHODS: &[&str] = &[$($method),*];
    };
}

empty_methods! {
    exec_approval_list => "exec.approval.list",
    plugin_approval_list => "plugin.approval.list",
    openclaw_approval_list => "openclaw.approval.list",
    question_list => "question.list",
    node_list => "node.list",
    environments_list => "environments.list",
    plugins_control_ui_list => "plugins.controlUi.list",
    sessions_groups_list => "sessions.groups.list",
    sessions_groups_defaults => "sessions.groups.defaults",
    mentions_list => "mentions.list",
    users_prefs_get => "users.prefs.get",
    sessions_catalog_list => "sessions.catalog.list",
    pull_requests_subscribe => "controlUi.sessionPullRequests.subscribe",
    board_get => "board.get",
    projects_list => "projects.list",
    talk_catalog => "talk.catalog",
    task_suggestions_list => "taskSuggestions.list",
    tasks_list => "tasks.list",
    sessions_branches_list => "sessions.branches.list",
    session_discussion_info => "session.discussion.info",
    sessions_companion_state => "sessions.companion.state",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_empty_method_has_an_answer() {
        for m in EMPTY_METHODS {
            assert!(!empty(m, &json!({}), "boot").is_null(), "{m} has no answer");
        }
        assert!(empty("no.such.method", &json!({}), "boot").is_null());
    }

    #[test]
    fn avatars() {
        assert!(avatar_ok("🦀"));
        assert!(avatar_ok("https://x/a.png"));
        assert!(!avatar_ok("not an avatar"));
        assert!(!avatar_ok("javascript:alert(1)"));
        assert_eq!(env_ref("${KEY}"), Some("KEY"));
        assert_eq!(env_ref("sk-1"), None);
    }
}
