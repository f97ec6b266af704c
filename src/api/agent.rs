//! The agent methods as clients call them: `chat.send`, `agent`, `agent.wait`, `chat.abort`,
//! `sessions.subscribe`/`unsubscribe`, `chat.history`, and the hooks. Each reads its params,
//! calls the agent service (`agent::runs`) and shapes the answer OpenClaw's clients expect.

use crate::agent::runs::{self, Request, Runs, Status};
use crate::agent::transcript::Origin;
use crate::clock;
use crate::error::{Code, RpcError};
use crate::ids::SessionKey;
use crate::payload::Payload;
use crate::protocol::params::{
    address, agent_id, required, required_session_key, session_key, string,
};
use crate::protocol::reply::ReplyTo;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

fn origin_of(p: &Value) -> Result<Origin, RpcError> {
    Ok(Origin {
        channel: string(p, "channel")?,
        to: address(p, "to")?,
        account_id: address(p, "accountId")?,
        thread_id: address(p, "threadId")?,
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

/// `chat.send {sessionKey, message, idempotencyKey, timeoutMs?}` → `{runId, status}`; the
/// run's progress follows as `chat` and `agent` events.
pub fn chat_send(svc: &Arc<Runs>, p: &Value, caller: &ReplyTo) -> Result<Value, RpcError> {
    let cfg = svc.h.config.get();
    let session = required_session_key(p, "sessionKey", &cfg.agents.default_agent_id())?;
    let message = required(p, "message")?;
    let idem = required(p, "idempotencyKey")?;
    let request = Request::top(message, session, origin_of(p)?);
    let (run, new) = runs::start(svc, &idem, request, ReplyTo::Internal, listener_of(caller))?;
    Ok(json!({"runId": run.id, "status": if new { "started" } else { run.status().as_str() }}))
}

/// `agent {message, idempotencyKey, agentId?, sessionKey?, channel?, to?, accountId?,
/// threadId?, deliver?, timeout?}` → `{runId, status: "accepted"}` now, and (over WebSocket)
/// a second `res` with the same id when the run ends.
pub fn agent(svc: &Arc<Runs>, p: &Value, caller: &ReplyTo) -> Result<Value, RpcError> {
    let message = required(p, "message")?;
    let idem = required(p, "idempotencyKey")?;
    let cfg = svc.h.config.get();
    // The session key's agent wins; a key that names none belongs to `agentId`.
    let agent = agent_id(p, "agentId")?.unwrap_or_else(|| cfg.agents.default_agent_id());
    let session =
        session_key(p, "sessionKey", &agent)?.unwrap_or_else(|| SessionKey::of(&agent, "main"));
    let mut request = Request::top(message, session, origin_of(p)?);
    request.deliver = p.get("deliver").and_then(Value::as_bool).unwrap_or(false);
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

/// `agent.wait {runId, timeoutMs?}`: the run's final result, or `status: "timeout"`.
/// `None` means the answer is deferred until the run ends (or the wait times out).
pub fn agent_wait(svc: &Arc<Runs>, p: &Value, caller: &ReplyTo) -> Result<Option<Value>, RpcError> {
    let id = required(p, "runId")?;
    let run = svc.get(&id).ok_or_else(|| {
        RpcError::new(
            Code::NotFound,
            format!("no run {id} (finished runs are kept for an hour)"),
        )
    })?;
    let timeout = match p.get("timeoutMs").and_then(Value::as_u64) {
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

/// `chat.abort {runId}`: cancels the run; its socket to the provider is shut at once.
pub fn chat_abort(svc: &Arc<Runs>, p: &Value, _caller: &ReplyTo) -> Result<Value, RpcError> {
    let id = required(p, "runId")?;
    let run = svc
        .get(&id)
        .ok_or_else(|| RpcError::new(Code::NotFound, format!("no run {id}")))?;
    let aborted = svc.abort(&run);
    Ok(json!({"ok": true, "runId": id, "aborted": aborted, "status": run.status().as_str()}))
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
    let agent = match agent_id(p, "agentId")? {
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
    let requested = string(p, "sessionKey")?;
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
        (required(p, "message")?, key)
    } else {
        let key = requested.unwrap_or_else(|| format!("agent:{agent}:main"));
        (required(p, "text")?, key)
    };
    let parsed = SessionKey::parse(&logical, &agent)
        .map_err(|e| RpcError::invalid(format!("invalid params: sessionKey {e}")))?;
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
    let idem = string(p, "idempotencyKey")?.unwrap_or_default();
    let mut request = Request::top(message, session, origin_of(p)?);
    request.deliver = p.get("deliver").and_then(Value::as_bool).unwrap_or(true);
    let (run, _) = runs::start(svc, &idem, request, ReplyTo::Internal, None)?;
    Ok(json!({"runId": run.id}))
}

/// `sessions.subscribe {sessionKey}` / `sessions.unsubscribe {sessionKey}` (WebSocket only).
pub fn subscribe(
    svc: &Arc<Runs>,
    p: &Value,
    caller: &ReplyTo,
    on: bool,
) -> Result<Value, RpcError> {
    let cfg = svc.h.config.get();
    let key = required_session_key(p, "sessionKey", &cfg.agents.default_agent_id())?.key;
    let Some(me) = listener_of(caller) else {
        return Err(RpcError::invalid(
            "sessions.subscribe needs a WebSocket connection",
        ));
    };
    svc.subscribe(&key, me, on);
    Ok(json!({"ok": true, "sessionKey": key, "subscribed": on}))
}

/// `chat.history {sessionKey, limit?}` (a cpu job: it reads the transcript).
pub fn chat_history(svc: &Arc<Runs>, p: &Value) -> Result<Payload, RpcError> {
    let cfg = svc.h.config.get();
    let session = required_session_key(p, "sessionKey", &cfg.agents.default_agent_id())?;
    let limit = p
        .get("limit")
        .and_then(Value::as_u64)
        .unwrap_or(200)
        .min(1000) as usize;
    let (sid, messages) = crate::agent::transcript::history(&svc.h.state_dir, &session, limit)
        .map_err(|e| {
            RpcError::new(
                Code::Internal,
                format!("cannot read the history of {}: {e}", session.key),
            )
        })?;
    Ok(json!({"sessionKey": session.key, "sessionId": sid, "messages": messages}).into())
}
