//! The agent methods as clients call them: `chat.send`, `agent`, `agent.wait`,
//! `sessions.subscribe`/`unsubscribe`, and the hooks (`chat.abort` and `chat.history` are
//! answered in the shapes the dashboard reads, by `chat_ui`). Each reads its params,
//! calls the agent service (`agent::runs`) and shapes the answer OpenClaw's clients expect.

use crate::agent::runs::{self, Request, Runs, Status};
use crate::agent::transcript::Origin;
use crate::clock;
use crate::error::{Code, RpcError};
use crate::ids::{AgentId, SessionKey};
use crate::protocol::params::{self, parse, session_key};
use crate::protocol::reply::ReplyTo;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Where a run's request came from (`chat.send`, `agent`, the hooks): where its reply is
/// delivered and its sub-agents' completions go.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OriginParams {
    #[serde(default, deserialize_with = "params::string")]
    channel: Option<String>,
    #[serde(default, deserialize_with = "params::address")]
    to: Option<String>,
    #[serde(default, deserialize_with = "params::address")]
    account_id: Option<String>,
    #[serde(default, deserialize_with = "params::address")]
    thread_id: Option<String>,
}

fn origin_of(p: &Value) -> Result<Origin, RpcError> {
    let o: OriginParams = parse(p)?;
    Ok(Origin {
        channel: o.channel,
        to: o.to,
        account_id: o.account_id,
        thread_id: o.thread_id,
    })
}

/// The connection that gets a run's events: a WebSocket caller's.
fn listener_of(caller: &ReplyTo) -> Option<(usize, u64)> {
    match caller {
        ReplyTo::Ws {
            conn, generation, ..
        } => Some((*conn, *generation)),
        ReplyTo::Http { .. } | ReplyTo::Internal => None,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatSend {
    #[serde(deserialize_with = "params::required")]
    session_key: String,
    #[serde(deserialize_with = "params::required")]
    message: String,
    #[serde(deserialize_with = "params::required")]
    idempotency_key: String,
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
    /// Only an empty list is accepted: keel's runs take text.
    #[serde(default)]
    attachments: Option<Value>,
}

/// `chat.send {sessionKey, message, idempotencyKey, agentId?, channel?, to?, accountId?,
/// threadId?}` → `{runId, status}`; the run's progress follows as `chat` and `agent` events.
/// `agentId` must be a configured agent and the session key's own (the dashboard sends it).
/// Attachments are refused: keel sends the model text only. Other params the dashboard sends
/// (`deliver: false`, `sessionId`, `queueMode`, `expectedLeafEntryId`, …) are ignored.
pub fn chat_send(svc: &Arc<Runs>, p: &Value, caller: &ReplyTo) -> Result<Value, RpcError> {
    let ChatSend {
        session_key: key,
        message,
        idempotency_key: idem,
        agent_id,
        attachments,
    } = parse(p)?;
    match attachments {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(Value::Array(_)) => {
            return Err(RpcError::invalid(
                "invalid params: attachments are not supported by keel; send the message as text",
            ));
        }
        Some(_) => {
            return Err(RpcError::invalid(
                "invalid params: attachments must be an array",
            ));
        }
    }
    let origin = origin_of(p)?;
    let cfg = svc.h.config.get();
    let session = super::chat_ui::resolve(&cfg, "sessionKey", &key, agent_id.as_ref())?;
    let request = Request::top(message, session, origin);
    let (run, new) = runs::start(svc, &idem, request, ReplyTo::Internal, listener_of(caller))?;
    Ok(json!({"runId": run.id, "status": if new { "started" } else { run.status().as_str() }}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentParams {
    #[serde(deserialize_with = "params::required")]
    message: String,
    #[serde(deserialize_with = "params::required")]
    idempotency_key: String,
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
    #[serde(default, deserialize_with = "params::string")]
    session_key: Option<String>,
    #[serde(default, deserialize_with = "params::flag")]
    deliver: Option<bool>,
}

/// `agent {message, idempotencyKey, agentId?, sessionKey?, channel?, to?, accountId?,
/// threadId?, deliver?}` → `{runId, status: "accepted"}` now, and (over WebSocket)
/// a second `res` with the same id when the run ends.
pub fn agent(svc: &Arc<Runs>, p: &Value, caller: &ReplyTo) -> Result<Value, RpcError> {
    let a: AgentParams = parse(p)?;
    let origin = origin_of(p)?;
    let cfg = svc.h.config.get();
    // The session key's agent wins; a key that names none is, with `agentId`, that agent's
    // `agent:<agentId>:<key>` (as chat.send takes it), and without, the default agent's.
    let agent = a
        .agent_id
        .clone()
        .unwrap_or_else(|| cfg.agents.default_agent_id());
    let session = match &a.session_key {
        Some(k) => {
            let key = session_key("sessionKey", k, &agent)?;
            match &a.agent_id {
                Some(id) if !key.key.starts_with("agent:") => key.scoped_to(id),
                _ => key,
            }
        }
        None => SessionKey::of(&agent, "main"),
    };
    let idem = a.idempotency_key;
    let mut request = Request::top(a.message, session, origin);
    request.deliver = a.deliver.unwrap_or(false);
    // Over HTTP there is one answer only: the run's end is for agent.wait to fetch.
    let reply = match caller {
        ReplyTo::Ws { .. } => caller.clone(),
        ReplyTo::Http { .. } | ReplyTo::Internal => ReplyTo::Internal,
    };
    let (run, new) = runs::start(svc, &idem, request, reply.clone(), listener_of(caller))?;
    if !new && run.status() != Status::Running {
        // The same request again after it ended: the final answer follows at once.
        svc.reply(&reply, &Ok(run.result().into()));
    } else if !new {
        svc.answer_when_done(&run, reply);
    }
    Ok(json!({"runId": run.id, "status": "accepted", "acceptedAt": clock::wall_ms()}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentWait {
    #[serde(deserialize_with = "params::required")]
    run_id: String,
    /// Clamped to [`runs::MAX_WAIT`] (ten minutes): a longer wait is answered `timeout` then,
    /// and the client may wait again.
    #[serde(default, deserialize_with = "params::count")]
    timeout_ms: Option<u64>,
}

/// `agent.wait {runId, timeoutMs?}`: the run's final result, or `status: "timeout"`.
/// `None` means the answer is deferred until the run ends (or the wait times out).
pub fn agent_wait(svc: &Arc<Runs>, p: &Value, caller: &ReplyTo) -> Result<Option<Value>, RpcError> {
    let AgentWait {
        run_id: id,
        timeout_ms,
    } = parse(p)?;
    let run = svc.get(&id).ok_or_else(|| {
        RpcError::new(
            Code::NotFound,
            format!("no run {id} (finished runs are kept for an hour)"),
        )
    })?;
    let timeout = match timeout_ms {
        Some(ms) => Duration::from_millis(ms).min(runs::MAX_WAIT),
        None => runs::DEFAULT_WAIT,
    };
    let ws = matches!(caller, ReplyTo::Ws { .. });
    if !ws && !timeout.is_zero() && run.status() == Status::Running {
        return Err(RpcError::invalid(
            "agent.wait over HTTP needs timeoutMs: 0 (poll); use a WebSocket to wait",
        ));
    }
    Ok(svc.wait(&run, timeout, listener_of(caller), caller.clone()))
}

/// A hook's body: `/agent` needs `message`, `/wake` needs `text` (and the origin's `channel`,
/// `to`, `accountId`, `threadId`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Hook {
    #[serde(default, deserialize_with = "params::string")]
    message: Option<String>,
    #[serde(default, deserialize_with = "params::string")]
    text: Option<String>,
    #[serde(default, deserialize_with = "params::agent_id")]
    agent_id: Option<AgentId>,
    #[serde(default, deserialize_with = "params::string")]
    session_key: Option<String>,
    #[serde(default, deserialize_with = "params::string")]
    idempotency_key: Option<String>,
    /// Hooks deliver their reply unless told not to.
    #[serde(default, deserialize_with = "params::flag")]
    deliver: Option<bool>,
}

/// A hook (`POST <hooks.path>/agent` or `/wake`): starts a run; the outcome is queryable with
/// `agent.wait {runId}`.
///
/// A hook token is a webhook sender's secret, not the operator's, so what it may reach is the
/// hook policy's (OpenClaw's keys and defaults, `config::Hooks`): the agent must be one this
/// config knows and pass `hooks.allowedAgentIds`; a `sessionKey` in the request is refused
/// unless `hooks.allowRequestSessionKey`; an `/agent` run without one gets
/// `hooks.defaultSessionKey` or a fresh `hook:<uuid>`, a `/wake` its agent's main session;
/// an explicit key must start with one of `hooks.allowedSessionKeyPrefixes`. The session is
/// always stored under the selected agent (`agent:<agentId>:…`).
pub fn hook(svc: &Arc<Runs>, route: &str, p: &Value) -> Result<Value, RpcError> {
    let cfg = svc.h.config.get();
    let Some(policy) = cfg.hooks.as_ref() else {
        return Err(RpcError::new(Code::NotFound, "hooks are not enabled"));
    };
    if !matches!(route, "agent" | "wake") {
        return Err(RpcError::new(
            Code::NotFound,
            format!("no hook {route:?}; hooks are agent and wake"),
        ));
    }
    let h: Hook = parse(p)?;
    let origin = origin_of(p)?;
    let agent = match h.agent_id {
        Some(a) if !cfg.agents.knows(&a) => {
            return Err(RpcError::invalid(format!("unknown agentId \"{a}\"")));
        }
        Some(a) => a,
        None => cfg.agents.default_agent_id(),
    };
    if !policy.agent_allowed(&agent) {
        return Err(RpcError::invalid(
            "agentId is not allowed by hooks.allowedAgentIds",
        ));
    }
    let requested = h.session_key;
    if requested.is_some() && !policy.allow_request_session_key {
        return Err(RpcError::invalid(
            "sessionKey is disabled for hook requests; set hooks.allowRequestSessionKey=true \
             to enable",
        ));
    }
    let explicit = requested.is_some();
    let (message, logical) = if route == "agent" {
        let key = requested
            .or_else(|| policy.default_session_key.clone())
            .unwrap_or_else(|| format!("hook:{}", clock::Rng::from_os().uuid()));
        (h.message.ok_or_else(|| params::missing("message"))?, key)
    } else {
        let key = requested.unwrap_or_else(|| format!("agent:{agent}:main"));
        (h.text.ok_or_else(|| params::missing("text"))?, key)
    };
    let parsed = session_key("sessionKey", &logical, &agent)?;
    let session = parsed.scoped_to(&agent);
    // The prefix is checked on the key as dispatched: an agent key re-scoped to the selected
    // agent, any other as it came.
    let dispatched = if parsed.key.starts_with("agent:") {
        &session.key
    } else {
        &parsed.key
    };
    if (route == "agent" || explicit) && !policy.session_key_allowed(dispatched) {
        return Err(RpcError::invalid(format!(
            "sessionKey must start with one of: {}",
            policy.allowed_session_key_prefixes.join(", ")
        )));
    }
    // Without a key a hook is never deduplicated.
    let idem = h.idempotency_key.unwrap_or_default();
    let mut request = Request::top(message, session, origin);
    request.deliver = h.deliver.unwrap_or(true);
    let (run, _) = runs::start(svc, &idem, request, ReplyTo::Internal, None)?;
    Ok(json!({"runId": run.id}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscribeParams {
    #[serde(default, deserialize_with = "params::string")]
    session_key: Option<String>,
}

/// `sessions.subscribe {sessionKey?}` / `sessions.unsubscribe {sessionKey?}` (WebSocket only).
/// With a key: that session's `session.tool` mirrors and `sessions.changed`. Without one
/// (OpenClaw's dashboard, on every page): `sessions.changed` of every session.
pub fn subscribe(
    svc: &Arc<Runs>,
    p: &Value,
    caller: &ReplyTo,
    on: bool,
) -> Result<Value, RpcError> {
    let SubscribeParams { session_key: raw } = parse(p)?;
    let cfg = svc.h.config.get();
    let key = raw
        .map(|raw| session_key("sessionKey", &raw, &cfg.agents.default_agent_id()))
        .transpose()?
        .map(|k| k.key);
    let Some(me) = listener_of(caller) else {
        return Err(RpcError::invalid(
            "sessions.subscribe needs a WebSocket connection",
        ));
    };
    match key {
        Some(key) => {
            svc.subscribe(&key, me, on);
            Ok(json!({"ok": true, "sessionKey": key, "subscribed": on}))
        }
        None => {
            svc.subscribe_all(me, on);
            Ok(json!({"subscribed": on}))
        }
    }
}
