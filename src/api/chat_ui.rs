//! The methods OpenClaw's dashboard (the Control UI) calls on its Chat page, in the shapes its
//! gateway answers with (`openclaw/examples.json`): `chat.startup` and `chat.history` (a page
//! of the session's transcript with the session's row and its defaults), `sessions.describe`,
//! `chat.metadata`, `models.list`, `sessions.messages.subscribe`/`unsubscribe` (the page's
//! watch on one session: its runs' `chat` and `agent` events and `session.message`),
//! `progressCard.get`, `chat.abort {sessionKey, runId?}` and `sessions.abort`.
//!
//! What keel does not have is answered as nothing of that kind, never invented: no pending
//! inputs (a message waiting for its session is in no transcript yet), no slash commands, no
//! progress cards, no approvals, one runtime and automatic account selection; a `cursor` (a
//! delta read, which keel never offers) is answered `{kind: "reset"}`, which makes the page
//! read a whole page again. Models are the configured ones (`models.providers.<p>.models[]`
//! and the agents' model chains), and the model cannot be switched from the page
//! (`modelSelectionLocked`).
//!
//! Messages carry OpenClaw's `__openclaw` block: the transcript line's `id`, the message's
//! position in the transcript (`seq`, from 1), when the line was written
//! (`recordTimestampMs`) and the client's `idempotencyKey` on a message sent with one, which is
//! how the page matches what it sent with what the history holds.

use crate::agent::runs::{Runs, SessionRuns, Status};
use crate::agent::transcript::{self, Page, PageMessage};
use crate::clock;
use crate::config::Config;
use crate::config::agents::ModelRef;
use crate::error::{Code, RpcError};
use crate::ids::{AgentId, SessionKey};
use crate::jobs::{JobCtx, Work};
use crate::protocol::params::{self, parse, session_key};
use crate::protocol::reply::ReplyTo;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// The most messages one page holds (OpenClaw's `CHAT_HISTORY_MAX_ENTRIES`).
pub const HISTORY_MAX: u64 = 1000;
/// Messages in a page when `limit` is not given.
const HISTORY_DEFAULT: u64 = 200;
/// The most bytes of messages one page holds, whatever `maxBytes` asks (OpenClaw's).
const HISTORY_MAX_BYTES: u64 = 6 << 20;
/// A message bigger than this is replaced by a placeholder that says so (OpenClaw's).
const MESSAGE_MAX_BYTES: usize = 128 << 10;
/// The text of that placeholder (OpenClaw's words).
const OVERSIZED: &str = "[chat.history omitted: message too large]";

/// The runtime that runs keel's agents, as the page names runtimes: `openclaw` is the
/// gateway's own agent loop (what keel's engine is), as opposed to an external harness.
fn agent_runtime() -> Value {
    json!({"id": "openclaw", "cloudPlacementSupported": false, "devicePlacementSupported": false,
           "source": "implicit"})
}

/// Accounts (API keys) are the configured ones, chosen by keel: nothing to choose.
fn account_selection() -> Value {
    json!({"kind": "automatic", "label": "Automatic account selection"})
}

/// The WebSocket connection a call came on.
fn connection_of(caller: &ReplyTo) -> Option<(usize, u64)> {
    match caller {
        ReplyTo::Ws {
            conn, generation, ..
        } => Some((*conn, *generation)),
        ReplyTo::Http { .. } | ReplyTo::Internal => None,
    }
}

/// The session a call names: its key (`field` names the param) and, when given, an `agentId`
/// that must be a configured agent and the key's own agent when the key names one. A key that
/// names no agent is, with `agentId`, that agent's `agent:<agentId>:<key>` (OpenClaw's store
/// key for it), and without, the default agent's key as given. A key that does not exist yet
/// is fine: it is a conversation with nothing in it.
pub fn resolve(
    cfg: &Config,
    field: &str,
    raw: &str,
    agent: Option<&AgentId>,
) -> Result<SessionKey, RpcError> {
    if let Some(a) = agent
        && !cfg.agents.knows(a)
    {
        return Err(RpcError::invalid(format!(
            "invalid params: unknown agentId \"{a}\""
        )));
    }
    let key = session_key(field, raw, &cfg.agents.default_agent_id())?;
    let Some(a) = agent else {
        return Ok(key);
    };
    if !key.key.starts_with("agent:") {
        return Ok(key.scoped_to(a));
    }
    if key.agent != *a {
        return Err(RpcError::invalid(format!(
            "invalid params: agentId \"{a}\" does not match the agent of {field} \"{}\"",
            key.key
        )));
    }
    Ok(key)
}

// ---- models --------------------------------------------------------------------------------

/// The models keel can run, as model pickers list them: every `models.providers.<p>.models[]`
/// entry, then the agents' model chains (defaults first) for models not listed there, of
/// providers that are configured.
fn models(cfg: &Config) -> Vec<Value> {
    let a = &cfg.agents;
    let mut out: Vec<Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let entry = |provider: &str, id: &str, name: Option<&str>, ctx: Option<u64>, reasoning| {
        let mut m = json!({
            "id": id, "name": name.unwrap_or(id), "provider": provider, "available": true,
            "agentRuntime": agent_runtime(),
        });
        if let Some(c) = ctx {
            m["contextWindow"] = json!(c);
        }
        if let Some(r) = reasoning {
            m["reasoning"] = json!(r);
        }
        m
    };
    for (pid, p) in &a.providers {
        for mi in &p.models {
            if seen.insert((pid.clone(), mi.id.clone())) {
                out.push(entry(
                    pid,
                    &mi.id,
                    mi.name.as_deref(),
                    mi.context_window,
                    mi.reasoning,
                ));
            }
        }
    }
    let chains =
        std::iter::once(&a.defaults).chain(a.agents.iter().filter_map(|e| e.model.as_ref()));
    for chain in chains {
        for r in chain.candidates() {
            if a.providers.contains_key(&r.provider)
                && seen.insert((r.provider.clone(), r.model.clone()))
            {
                out.push(entry(&r.provider, &r.model, None, None, None));
            }
        }
    }
    out
}

/// The context window configured for a model, if any.
fn context_window(cfg: &Config, m: &ModelRef) -> Option<u64> {
    cfg.agents
        .providers
        .get(&m.provider)?
        .models
        .iter()
        .find(|mi| mi.id == m.model)?
        .context_window
}

/// The session defaults of an agent: its primary model, that model's context window, the
/// runtime, and what a model choice would change.
fn defaults(cfg: &Config, agent: &AgentId) -> Value {
    let primary = cfg.agents.chain(agent).primary;
    json!({
        "modelProvider": primary.as_ref().map(|m| &m.provider),
        "model": primary.as_ref().map(|m| &m.model),
        "contextTokens": primary.as_ref().and_then(|m| context_window(cfg, m)),
        "agentRuntime": agent_runtime(),
        "modelSelectionTarget": "session",
    })
}

/// `sessions.list` with its `defaults` (those of its `agentId`, else of the default agent),
/// which the Chat page reads (`sessionsResult.defaults.modelSelectionTarget`): without them
/// the page throws before it renders.
pub fn with_defaults(svc: &Runs, p: &Value, work: Work) -> Work {
    let cfg = svc.h.config.get();
    let agent = p["agentId"]
        .as_str()
        .and_then(|a| AgentId::normalize(a).ok())
        .unwrap_or_else(|| cfg.agents.default_agent_id());
    let d = defaults(&cfg, &agent);
    Box::new(move |ctx: &JobCtx| match work(ctx)? {
        crate::payload::Payload::Json(mut v) if v.is_object() => {
            v["defaults"] = d;
            Ok(v.into())
        }
        other => Ok(other),
    })
}

// ---- the session's row ---------------------------------------------------------------------

/// OpenClaw's run status of a session (`running`, `done`, `failed`, `killed`, `timeout`).
fn session_status(s: Status) -> &'static str {
    match s {
        Status::Running => "running",
        Status::Ok => "done",
        Status::Error => "failed",
        Status::Aborted => "killed",
        Status::Timeout => "timeout",
    }
}

/// The session as the page shows it (a sessions row): its store entry's fields if it has one,
/// what the registry knows of its runs, and the model it uses (the last one that answered,
/// else its agent's primary).
fn session_row(
    cfg: &Config,
    session: &SessionKey,
    entry: Option<&Map<String, Value>>,
    runs: &SessionRuns,
) -> Value {
    let text = |k: &str| {
        entry
            .and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let chat_type = text("chatType");
    let key = session.key.as_str();
    let kind = if key == "global" {
        "global"
    } else {
        match chat_type {
            Some("group" | "channel") => "group",
            Some("direct" | "dm") => "direct",
            _ if key.contains(":group:") || key.contains(":channel:") => "group",
            // A session keel creates from a client (`chat.send`, `agent`) is a direct chat.
            _ => "direct",
        }
    };
    let main = key
        .rsplit_once(':')
        .is_some_and(|(head, rest)| rest == "main" && head == format!("agent:{}", session.agent))
        || key == "main";
    let primary = cfg.agents.chain(&session.agent).primary;
    let (provider, model) = match (text("modelProvider"), text("model")) {
        (Some(p), Some(m)) => (Some(p.to_string()), Some(m.to_string())),
        _ => (
            primary.as_ref().map(|m| m.provider.clone()),
            primary.as_ref().map(|m| m.model.clone()),
        ),
    };
    let mut row = json!({
        "key": key,
        "kind": kind,
        "classification": if main { "main" } else { kind },
        "agentId": session.agent,
        "isMain": main,
        "isBackground": false,
        "updatedAt": entry.and_then(|e| e.get("updatedAt")).and_then(Value::as_i64),
        "archived": false,
        "pinned": false,
        "unread": false,
        "modelProvider": provider,
        "model": model,
        "modelOverrideSource": null,
        "modelSelectionLocked": true,
        "runtimeSelectionLocked": true,
        "agentRuntime": agent_runtime(),
        "snapshotAt": clock::wall_ms(),
        "hasActiveRun": !runs.active.is_empty(),
        "activeRunIds": runs.active,
    });
    if let Some(e) = entry {
        for k in ["sessionId", "label", "displayName", "channel", "chatType"] {
            if let Some(v) = e.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()) {
                row[k] = json!(v);
            }
        }
        if let Some(o) = e.get("origin").filter(|o| o.is_object()) {
            row["origin"] = o.clone();
        }
        for k in ["inputTokens", "outputTokens", "totalTokens"] {
            if let Some(n) = e.get(k).and_then(Value::as_u64) {
                row[k] = json!(n);
            }
        }
    }
    if let Some(ctx) = primary.as_ref().and_then(|m| context_window(cfg, m)) {
        row["contextTokens"] = json!(ctx);
    }
    match (runs.active.last(), &runs.last) {
        (Some(id), _) => {
            row["status"] = json!("running");
            row["lastRunId"] = json!(id);
        }
        (None, Some((id, st))) => {
            row["status"] = json!(session_status(*st));
            row["lastRunId"] = json!(id);
        }
        (None, None) => {}
    }
    row
}

// ---- chat.history / chat.startup -----------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryParams {
    #[serde(deserialize_with = "params::required")]
    session_key: String,
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
    /// 200 when not given; more than [`HISTORY_MAX`] is clamped to it (the newest messages).
    #[serde(default, deserialize_with = "params::count")]
    limit: Option<u64>,
    /// Clamped to [`HISTORY_MAX_BYTES`].
    #[serde(default, deserialize_with = "params::count")]
    max_bytes: Option<u64>,
    /// How many of the newest messages to skip (a page further back).
    #[serde(default, deserialize_with = "params::count")]
    offset: Option<u64>,
    #[serde(default, deserialize_with = "params::string")]
    cursor: Option<String>,
    #[serde(default, deserialize_with = "params::string")]
    message_id: Option<String>,
}

/// What a page read is asked for, checked when the call arrives.
struct PageAsk {
    session: SessionKey,
    limit: usize,
    max_bytes: usize,
    offset: Option<u64>,
}

/// `chat.history {sessionKey, agentId?, limit?, maxBytes?, offset?}`, and `chat.startup` (the
/// same read, which the page makes to open a conversation): `{sessionKey, sessionId,
/// messages[], activity[]?, pendingInputs, hasMore, totalMessages, nextOffset?, offset?,
/// defaults, sessionInfo}`. The params are read when the call arrives, the transcript by the
/// job (cpu pool).
pub fn history(svc: &Arc<Runs>, p: &Value) -> Result<Work, RpcError> {
    let h: HistoryParams = parse(p)?;
    if h.message_id.is_some() {
        return Err(RpcError::invalid(
            "invalid params: messageId is not supported by keel; page with offset",
        ));
    }
    if h.cursor.is_some() && h.offset.is_some() {
        return Err(RpcError::invalid(
            "invalid params: cursor cannot be used with offset",
        ));
    }
    let cfg = svc.h.config.get();
    let session = resolve(&cfg, "sessionKey", &h.session_key, h.agent_id.as_ref())?;
    if h.cursor.is_some() {
        // keel hands out no delta cursor: one from elsewhere asks for a whole page instead.
        return Ok(Box::new(
            |_ctx: &JobCtx| Ok(json!({"kind": "reset"}).into()),
        ));
    }
    let ask = PageAsk {
        session,
        limit: h.limit.unwrap_or(HISTORY_DEFAULT).min(HISTORY_MAX) as usize,
        max_bytes: h
            .max_bytes
            .unwrap_or(HISTORY_MAX_BYTES)
            .min(HISTORY_MAX_BYTES) as usize,
        offset: h.offset,
    };
    let svc = svc.clone();
    Ok(Box::new(move |ctx: &JobCtx| {
        ctx.check()?;
        read_history(&svc, &ask, ctx).map(Into::into)
    }))
}

fn read_history(svc: &Runs, ask: &PageAsk, ctx: &JobCtx) -> Result<Value, RpcError> {
    let session = &ask.session;
    let unreadable = |e: std::io::Error| {
        RpcError::new(
            Code::Internal,
            format!("cannot read the history of {}: {e}", session.key),
        )
    };
    let cancelled = || ctx.token().is_cancelled();
    let page = match transcript::page(
        &svc.h.state_dir,
        session,
        ask.offset.unwrap_or(0),
        ask.limit,
        &cancelled,
    ) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
            ctx.check()?;
            return Err(unreadable(e));
        }
        Err(e) => return Err(unreadable(e)),
    };
    ctx.check()?;
    let entry = transcript::session_entry(&svc.h.state_dir, session).map_err(unreadable)?;
    let cfg = svc.h.config.get();
    let runs = svc.session_runs(&session.key);
    let row = session_row(&cfg, session, entry.as_ref(), &runs);
    let Page {
        session_id,
        messages,
        total,
    } = page;
    let (messages, oldest_seq) = bound(messages, ask.max_bytes);
    let activity = activity(&messages);
    let skipped = ask.offset.unwrap_or(0);
    // What the next page back skips: every message from the oldest one shown on.
    let next_offset = oldest_seq.map_or(skipped, |s| total + 1 - s);
    let has_more = next_offset < total;
    let mut out = json!({
        "sessionKey": session.key,
        "sessionId": session_id,
        "messages": messages,
        "pendingInputs": {"items": [], "total": 0},
        "hasMore": has_more,
        "totalMessages": total,
        "defaults": defaults(&cfg, &session.agent),
        "sessionInfo": row,
    });
    if !activity.is_empty() {
        out["activity"] = Value::Array(activity);
    }
    if has_more {
        out["nextOffset"] = json!(next_offset);
    }
    if let Some(o) = ask.offset {
        out["offset"] = json!(o);
    }
    Ok(out)
}

/// A transcript message as the page reads it: OpenClaw's `__openclaw` block added to what the
/// message already has there.
fn projected(m: PageMessage) -> Value {
    let PageMessage {
        seq,
        id,
        record_ms,
        mut message,
    } = m;
    let mut meta = match message.get_mut("__openclaw").map(Value::take) {
        Some(Value::Object(o)) => o,
        _ => Map::new(),
    };
    if let Some(id) = id {
        meta.insert("id".into(), json!(id));
    }
    if let Some(k) = message.get("idempotencyKey").filter(|k| k.is_string()) {
        meta.insert("idempotencyKey".into(), k.clone());
    }
    if let Some(t) = record_ms {
        meta.insert("recordTimestampMs".into(), json!(t));
    }
    meta.insert("seq".into(), json!(seq));
    message["__openclaw"] = Value::Object(meta);
    message
}

/// What stands in for a message too big to send (OpenClaw's placeholder): its role, time,
/// tool identity and identity, and a text that says it was left out.
fn placeholder(m: &Value) -> Value {
    let mut p = json!({
        "role": m["role"].as_str().unwrap_or("assistant"),
        "timestamp": m["timestamp"].as_i64().map_or_else(|| json!(clock::wall_ms()), |t| json!(t)),
        "content": [{"type": "text", "text": OVERSIZED}],
    });
    for k in ["toolCallId", "toolName", "isError"] {
        if let Some(v) = m.get(k).filter(|v| v.is_string() || v.is_boolean()) {
            p[k] = v.clone();
        }
    }
    let mut meta = Map::new();
    for k in ["id", "seq", "idempotencyKey"] {
        if let Some(v) = m["__openclaw"].get(k) {
            meta.insert(k.into(), v.clone());
        }
    }
    meta.insert("truncated".into(), json!(true));
    meta.insert("reason".into(), json!("oversized"));
    p["__openclaw"] = Value::Object(meta);
    p
}

fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |b| b.len())
}

/// The page's messages within `max_bytes` of JSON, as OpenClaw bounds them: a message over
/// [`MESSAGE_MAX_BYTES`] becomes a placeholder, then the oldest go until the rest fit (the
/// newest one always stays). Also returns the `seq` of the oldest message kept.
fn bound(page: Vec<PageMessage>, max_bytes: usize) -> (Vec<Value>, Option<u64>) {
    let mut sized: Vec<(u64, Value, usize)> = page
        .into_iter()
        .map(|m| {
            let seq = m.seq;
            let mut v = projected(m);
            let mut n = json_len(&v);
            if n > MESSAGE_MAX_BYTES {
                v = placeholder(&v);
                n = json_len(&v);
            }
            (seq, v, n)
        })
        .collect();
    // `[`, `]` and a comma between two messages.
    let mut total = 2 + sized.iter().map(|(_, _, n)| n + 1).sum::<usize>();
    let mut start = 0;
    while total > max_bytes + 1 && start + 1 < sized.len() {
        total -= sized[start].2 + 1;
        start += 1;
    }
    let oldest = sized.get(start).map(|(s, _, _)| *s);
    (sized.drain(start..).map(|(_, v, _)| v).collect(), oldest)
}

/// The tool activity of a page (OpenClaw's `activity[]`): for each message that calls tools
/// or carries a tool's result, the calls whose result is in the page, completed or failed.
fn activity(messages: &[Value]) -> Vec<Value> {
    let results: std::collections::HashMap<&str, bool> = messages
        .iter()
        .filter(|m| m["role"] == "toolResult")
        .filter_map(|m| Some((m["toolCallId"].as_str()?, m["isError"] == true)))
        .collect();
    let names: std::collections::HashMap<&str, &str> = messages
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|b| b["type"] == "toolCall")
        .filter_map(|b| Some((b["id"].as_str()?, b["name"].as_str()?)))
        .collect();
    let item = |call: &str, name: &str, failed: bool| {
        let mut title: Vec<char> = name.chars().collect();
        if let Some(c) = title.first_mut() {
            *c = c.to_ascii_uppercase();
        }
        json!({
            "itemId": format!("tool:{call}"), "toolCallId": call, "name": name, "kind": "tool",
            "phase": "end", "title": title.into_iter().collect::<String>(),
            "status": if failed { "failed" } else { "completed" },
        })
    };
    let mut out = Vec::new();
    for m in messages {
        let Some(message_id) = m["__openclaw"]["id"].as_str() else {
            continue;
        };
        let calls: Vec<(&str, &str)> = if m["role"] == "toolResult" {
            m["toolCallId"]
                .as_str()
                .and_then(|c| Some((c, *names.get(c)?)))
                .into_iter()
                .collect()
        } else {
            m["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| b["type"] == "toolCall")
                .filter_map(|b| Some((b["id"].as_str()?, b["name"].as_str()?)))
                .collect()
        };
        let items: Vec<Value> = calls
            .into_iter()
            .filter_map(|(c, n)| Some(item(c, n, *results.get(c)?)))
            .collect();
        if !items.is_empty() {
            out.push(json!({"messageId": message_id, "items": items}));
        }
    }
    out
}

// ---- sessions.describe ---------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyParams {
    #[serde(deserialize_with = "params::required")]
    key: String,
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
}

/// `sessions.describe {key, agentId?}` → `{session: null | row}`: null for a session nothing
/// was said in yet.
pub fn describe(svc: &Arc<Runs>, p: &Value) -> Result<Work, RpcError> {
    let k: KeyParams = parse(p)?;
    let cfg = svc.h.config.get();
    let session = resolve(&cfg, "key", &k.key, k.agent_id.as_ref())?;
    let svc = svc.clone();
    Ok(Box::new(move |ctx: &JobCtx| {
        ctx.check()?;
        let entry = transcript::session_entry(&svc.h.state_dir, &session).map_err(|e| {
            RpcError::new(
                Code::Internal,
                format!("cannot read the session {}: {e}", session.key),
            )
        })?;
        let cfg = svc.h.config.get();
        let row =
            entry.map(|e| session_row(&cfg, &session, Some(&e), &svc.session_runs(&session.key)));
        Ok(json!({"session": row}).into())
    }))
}

// ---- chat.metadata, models.list, progressCard.get ------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScopeParams {
    #[serde(default, deserialize_with = "params::string")]
    session_key: Option<String>,
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
    #[serde(default, deserialize_with = "params::string")]
    provider: Option<String>,
}

/// Checks the optional `sessionKey` and `agentId` of a metadata call.
fn check_scope(cfg: &Config, s: &ScopeParams) -> Result<(), RpcError> {
    match &s.session_key {
        Some(k) => resolve(cfg, "sessionKey", k, s.agent_id.as_ref()).map(|_| ()),
        None => match &s.agent_id {
            Some(a) if !cfg.agents.knows(a) => Err(RpcError::invalid(format!(
                "invalid params: unknown agentId \"{a}\""
            ))),
            _ => Ok(()),
        },
    }
}

/// `chat.metadata {agentId?, sessionKey?}` → `{models[], commands[], accountSelection,
/// runtimeSelectionLocked}`: the configured models; keel has no slash commands.
pub fn metadata(svc: &Runs, p: &Value) -> Result<Value, RpcError> {
    let s: ScopeParams = parse(p)?;
    let cfg = svc.h.config.get();
    check_scope(&cfg, &s)?;
    Ok(json!({
        "models": models(&cfg),
        "commands": [],
        "accountSelection": account_selection(),
        "runtimeSelectionLocked": true,
    }))
}

/// `models.list {view?, sessionKey?, agentId?, provider?}` → `{models[], accountSelection}`:
/// the configured models (every view: keel has no catalog beyond its config), of one
/// provider when `provider` is given.
pub fn models_list(svc: &Runs, p: &Value) -> Result<Value, RpcError> {
    let s: ScopeParams = parse(p)?;
    let cfg = svc.h.config.get();
    check_scope(&cfg, &s)?;
    let mut list = models(&cfg);
    if let Some(want) = &s.provider {
        if !cfg.agents.providers.contains_key(want) {
            return Err(RpcError::invalid(format!(
                "invalid params: provider \"{want}\" is not configured (models.providers)"
            )));
        }
        list.retain(|m| m["provider"] == *want.as_str());
    }
    Ok(json!({"models": list, "accountSelection": account_selection()}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionKeyParams {
    #[serde(deserialize_with = "params::required")]
    session_key: String,
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
}

/// `progressCard.get {sessionKey}` → `{card: null}`: keel keeps no progress cards.
pub fn progress_card(svc: &Runs, p: &Value) -> Result<Value, RpcError> {
    let s: SessionKeyParams = parse(p)?;
    let cfg = svc.h.config.get();
    resolve(&cfg, "sessionKey", &s.session_key, s.agent_id.as_ref())?;
    Ok(json!({"card": null}))
}

// ---- sessions.messages.subscribe / unsubscribe ---------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchParams {
    #[serde(deserialize_with = "params::required")]
    key: String,
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
    #[serde(default, deserialize_with = "params::flag")]
    include_approvals: Option<bool>,
}

/// `sessions.messages.subscribe {key, agentId?, includeApprovals?}` → `{subscribed, key,
/// approvalReplay?}`: the connection gets the session's runs' `chat` and `agent` events and
/// a `session.message` for each message written. keel has no approvals, so the replay is
/// empty. Over HTTP there is no connection to send to: `subscribed: false`.
pub fn watch(svc: &Runs, p: &Value, caller: &ReplyTo, on: bool) -> Result<Value, RpcError> {
    let w: WatchParams = parse(p)?;
    let cfg = svc.h.config.get();
    let session = resolve(&cfg, "key", &w.key, w.agent_id.as_ref())?;
    let Some(me) = connection_of(caller) else {
        return Ok(json!({"subscribed": false, "key": session.key}));
    };
    svc.subscribe_messages(&session.key, me, on);
    let mut out = json!({"subscribed": on, "key": session.key});
    if on && w.include_approvals == Some(true) {
        out["approvalReplay"] = json!({
            "sessionKey": session.key, "updatedAtMs": clock::wall_ms(), "approvals": [],
            "truncated": false,
        });
    }
    Ok(out)
}

// ---- chat.abort, sessions.abort ------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AbortParams {
    #[serde(default, deserialize_with = "params::string")]
    run_id: Option<String>,
    #[serde(default, deserialize_with = "params::string")]
    session_key: Option<String>,
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
}

/// `chat.abort {runId}`, or as the page sends it `{sessionKey, agentId?, runId?}`: cancels the
/// run (every running run of the session without `runId`); the socket to the provider is shut
/// at once. → `{ok, aborted, runIds, runId?, status?}`. A `runId` alone must name a run keel
/// knows (`NOT_FOUND`); with `sessionKey` a run that is not there has nothing to abort
/// (`aborted: false`), and one of another session is refused.
pub fn chat_abort(svc: &Runs, p: &Value) -> Result<Value, RpcError> {
    let a: AbortParams = parse(p)?;
    let cfg = svc.h.config.get();
    let session = match &a.session_key {
        Some(k) => Some(resolve(&cfg, "sessionKey", k, a.agent_id.as_ref())?),
        None => None,
    };
    match (a.run_id, session) {
        (None, None) => Err(params::missing("runId (or sessionKey)")),
        (Some(id), None) => {
            let run = svc
                .get(&id)
                .ok_or_else(|| RpcError::new(Code::NotFound, format!("no run {id}")))?;
            let aborted = svc.abort(&run);
            Ok(json!({"ok": true, "runId": id, "aborted": aborted,
                      "runIds": if aborted { vec![id.clone()] } else { vec![] },
                      "status": run.status().as_str()}))
        }
        (Some(id), Some(session)) => {
            let Some(run) = svc.get(&id) else {
                return Ok(json!({"ok": true, "runId": id, "aborted": false, "runIds": []}));
            };
            if run.request.session.key != session.key {
                return Err(RpcError::invalid(format!(
                    "invalid params: run {id} is not a run of {}",
                    session.key
                )));
            }
            let aborted = svc.abort(&run);
            Ok(json!({"ok": true, "runId": id, "aborted": aborted,
                      "runIds": if aborted { vec![id.clone()] } else { vec![] },
                      "status": run.status().as_str()}))
        }
        (None, Some(session)) => {
            let ids = svc.abort_session(&session.key);
            Ok(json!({"ok": true, "aborted": !ids.is_empty(), "runIds": ids}))
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionAbortParams {
    #[serde(deserialize_with = "params::required")]
    key: String,
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
    #[serde(default, deserialize_with = "params::string")]
    run_id: Option<String>,
}

/// `sessions.abort {key, agentId?, runId?}` (what the page sends when it does not know the
/// run) → `{ok, abortedRunId, status: "aborted" | "no-active-run"}`.
pub fn session_abort(svc: &Runs, p: &Value) -> Result<Value, RpcError> {
    let a: SessionAbortParams = parse(p)?;
    let cfg = svc.h.config.get();
    let session = resolve(&cfg, "key", &a.key, a.agent_id.as_ref())?;
    let aborted: Vec<String> = match &a.run_id {
        Some(id) => match svc.get(id) {
            Some(run) if run.request.session.key != session.key => {
                return Err(RpcError::invalid(format!(
                    "invalid params: run {id} is not a run of {}",
                    session.key
                )));
            }
            Some(run) if svc.abort(&run) => vec![id.clone()],
            _ => Vec::new(),
        },
        None => svc.abort_session(&session.key),
    };
    Ok(match aborted.first() {
        Some(id) => json!({"ok": true, "abortedRunId": id, "status": "aborted"}),
        None => json!({"ok": true, "abortedRunId": null, "status": "no-active-run"}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, text: &str) -> PageMessage {
        PageMessage {
            seq,
            id: Some(format!("id{seq}")),
            record_ms: Some(1000 + seq as i64),
            message: json!({"role": "user", "content": [{"type": "text", "text": text}],
                            "timestamp": 5, "idempotencyKey": "k"}),
        }
    }

    #[test]
    fn a_page_keeps_the_newest_messages_that_fit() {
        let page: Vec<PageMessage> = (1..=5).map(|i| msg(i, &"x".repeat(100))).collect();
        let one = json_len(&projected(msg(1, &"x".repeat(100))));
        let (all, oldest) = bound(page.clone(), 1 << 20);
        assert_eq!((all.len(), oldest), (5, Some(1)));
        assert_eq!(all[0]["__openclaw"]["seq"], 1);
        assert_eq!(all[0]["__openclaw"]["id"], "id1");
        assert_eq!(all[0]["__openclaw"]["recordTimestampMs"], 1001);
        assert_eq!(all[0]["__openclaw"]["idempotencyKey"], "k");
        // Room for exactly two: the two newest.
        let (two, oldest) = bound(page.clone(), 2 + 2 * one + 1);
        assert_eq!(oldest, Some(4));
        assert_eq!(two.len(), 2);
        assert!(json_len(&Value::Array(two)) <= 2 + 2 * one + 1);
        // Never nothing: the newest stays even when it alone is too big.
        let (last, oldest) = bound(page, 10);
        assert_eq!((last.len(), oldest), (1, Some(5)));
        // A huge message is a placeholder that keeps its identity.
        let (big, _) = bound(vec![msg(7, &"y".repeat(MESSAGE_MAX_BYTES))], 1 << 30);
        assert_eq!(big[0]["content"][0]["text"], OVERSIZED);
        assert_eq!(big[0]["__openclaw"]["seq"], 7);
        assert_eq!(big[0]["__openclaw"]["truncated"], true);
        assert!(json_len(&big[0]) < 1000);
    }

    #[test]
    fn tool_calls_with_their_results_are_activity() {
        let m = |id: &str, v: Value| {
            let mut v = v;
            v["__openclaw"] = json!({"id": id});
            v
        };
        let page = [
            m(
                "a",
                json!({"role": "assistant", "content": [{"type": "toolCall", "id": "c1", "name": "exec"},
                                                              {"type": "toolCall", "id": "c2", "name": "ls"}]}),
            ),
            m(
                "b",
                json!({"role": "toolResult", "toolCallId": "c1", "isError": true}),
            ),
            m(
                "c",
                json!({"role": "assistant", "content": [{"type": "text", "text": "done"}]}),
            ),
        ];
        let a = activity(&page);
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(a[0]["messageId"], "a");
        let items = a[0]["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "c2 has no result in the page");
        assert_eq!(items[0]["title"], "Exec");
        assert_eq!(items[0]["status"], "failed");
        assert_eq!(a[1]["messageId"], "b");
        assert_eq!(a[1]["items"][0]["toolCallId"], "c1");
    }
}
