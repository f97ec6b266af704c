//! The run loop: call the model (walking the failover chain), stream its text out as `chat`
//! and `agent` events, run the tools it asks for, and record every call in the session's
//! transcript — failed, retried and silent ones too — with usage and cost, so the usage index
//! counts them.

use super::failover::{self, Reason};
use super::provider::{self, ChatMessage, ModelEvent, ProviderError, Role, ToolCall};
use super::runs::{self, Run, Runs, Status};
use super::tools;
use super::transcript::SessionFile;
use crate::clock;
use crate::config::agents::{DEFAULT_MAX_TOKENS, ModelRef};
use crate::error::{Code, RpcError};
use crate::jobs::JobCtx;
use crate::net::{Limits, Url};
use crate::payload::Outcome;
use crate::protocol::Event;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most model ↔ tool rounds in one run.
const MAX_ROUNDS: usize = 8;
/// `chat` deltas are sent at most this often.
const DELTA_EVERY: Duration = Duration::from_millis(150);
/// `agent` assistant deltas are batched this long at most.
const ASSISTANT_EVERY: Duration = Duration::from_millis(20);
/// Messages of earlier turns given to the model.
const HISTORY: usize = 40;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many of a session's newest messages a resumed run searches for its user message.
const RESUME_SEARCH: usize = 200;
/// A run resumed this many times without finishing is given up at the next resume.
pub const MAX_RESUMES: u32 = 3;
/// The `customType` of the transcript entry a resume writes (`data`: the idempotency key and
/// the attempt, or `gaveUp`).
pub const RESUME_MARK: &str = "keel.run.resume";
/// What a resumed run writes as the result of a tool call that an earlier life of keel
/// started and never finished.
const INTERRUPTED_TOOL: &str = "interrupted: keel restarted while this tool call was running, \
    so it has no result; it may or may not have taken effect, and it was not run again";

/// One model call that worked.
struct Answer {
    candidate: ModelRef,
    text: String,
    tool_calls: Vec<ToolCall>,
    usage: provider::Usage,
    stop_reason: String,
}

/// Why a whole chain failed: each candidate with its reason.
struct ChainError {
    /// What ended the walk early: a failure no other candidate can fix, our own cancel, or no
    /// model configured at all. `None` when every candidate failed or was skipped.
    reason: Option<Reason>,
    message: String,
}

impl ChainError {
    /// The code the client gets. Every reason is named, so that a new one needs a decision.
    fn code(&self) -> Code {
        match self.reason {
            Some(Reason::Cancelled) => Code::Cancelled,
            Some(Reason::ConfigError) => Code::ConfigError,
            Some(
                Reason::Auth
                | Reason::AuthPermanent
                | Reason::Billing
                | Reason::RateLimit
                | Reason::Overloaded
                | Reason::ServerError
                | Reason::Timeout
                | Reason::ModelNotFound
                | Reason::ContextOverflow
                | Reason::Format,
            )
            | None => Code::Unavailable,
        }
    }
}

fn text_content(text: &str) -> Value {
    json!([{"type": "text", "text": text}])
}

/// Earlier turns of the session, as the model sees them.
fn history_messages(history: &[Value]) -> Vec<ChatMessage> {
    history
        .iter()
        .filter_map(|m| {
            let role = match m["role"].as_str()? {
                "user" => Role::User,
                "assistant" => Role::Assistant,
                _ => return None,
            };
            if m["stopReason"] == "error" {
                return None;
            }
            let text: String = match &m["content"] {
                Value::String(s) => s.clone(),
                Value::Array(blocks) => blocks
                    .iter()
                    .filter_map(|b| b["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(""),
                _ => String::new(),
            };
            (!text.is_empty()).then_some(ChatMessage {
                role,
                text,
                tool_calls: Vec::new(),
                tool_call_id: None,
            })
        })
        .collect()
}

/// Cost of a call from the configured price, in OpenClaw's shape; `None` without a price.
fn cost(svc: &Runs, c: &ModelRef, u: &provider::Usage) -> Option<Value> {
    let cfg = svc.h.config.get();
    let p = cfg.prices.get(&(c.provider.clone(), c.model.clone()))?;
    let part = |t: u64, per_m: f64| t as f64 * per_m / 1_000_000.0;
    let (i, o, r, w) = (
        part(u.input, p.input),
        part(u.output, p.output),
        part(u.cache_read, p.cache_read),
        part(u.cache_write, p.cache_write),
    );
    Some(json!({"input": i, "output": o, "cacheRead": r, "cacheWrite": w, "total": i + o + r + w}))
}

fn usage_json(svc: &Runs, c: &ModelRef, u: &provider::Usage) -> Value {
    let mut v = json!({
        "input": u.input, "output": u.output, "cacheRead": u.cache_read, "cacheWrite": u.cache_write,
        "totalTokens": u.input + u.output + u.cache_read + u.cache_write,
    });
    if let Some(c) = cost(svc, c, u) {
        v["cost"] = c;
    }
    v
}

/// The failover reason of a failed call, and a 429's `Retry-After`. When the run's token has
/// fired (`cancelled`), the cancel is what cut the call, whatever error that surfaced as;
/// otherwise the provider's own classification decides ([`ProviderError::kind`], which the
/// failover tests check).
fn reason(e: &ProviderError, cancelled: bool) -> (Reason, Option<Duration>) {
    if cancelled {
        return (Reason::Cancelled, None);
    }
    match e.kind() {
        provider::FailureKind::RateLimit { retry_after } => (Reason::RateLimit, retry_after),
        kind => (Reason::of(kind), None),
    }
}

/// What the model is asked.
struct Prompt<'a> {
    system: Option<&'a str>,
    messages: &'a [ChatMessage],
    tools: &'a [provider::ToolSpec],
    /// Text of earlier rounds of this run (chat deltas carry the whole answer so far).
    text_so_far: &'a str,
}

/// Appends a message to the session's transcript and tells the session's message subscribers.
fn record(svc: &Runs, run: &Run, session: &mut SessionFile, message: Value) -> std::io::Result<()> {
    let id = session.append(message.clone())?;
    runs::session_message(svc, run, session, &id, message);
    Ok(())
}

/// The `chat` delta for the answer so far (`full`): the whole text, and what was added since
/// the last delta (`deltaText`) — or, when the text is not a continuation of what was sent (a
/// fallback model started over), all of it with `replace: true`. `sent` is updated.
fn chat_delta(full: &str, sent: &mut String) -> Value {
    let mut d = json!({
        "state": "delta",
        "message": {"role": "assistant", "content": text_content(full), "timestamp": clock::wall_ms()},
    });
    match full.strip_prefix(sent.as_str()) {
        Some(added) => d["deltaText"] = json!(added),
        None => {
            d["deltaText"] = json!(full);
            d["replace"] = json!(true);
        }
    }
    sent.clear();
    sent.push_str(full);
    d
}

/// Walks the candidates until one answers. `sent` is the text the last `chat` delta carried.
fn call_chain(
    svc: &Arc<Runs>,
    run: &Run,
    ctx: &JobCtx,
    session: &mut SessionFile,
    prompt: &Prompt<'_>,
    sent: &mut String,
) -> Result<Answer, ChainError> {
    let Prompt {
        system,
        messages,
        tools: tool_specs,
        text_so_far,
    } = *prompt;
    let cfg = svc.h.config.get();
    let chain = cfg.agents.chain(&run.request.session.agent).candidates();
    if chain.is_empty() {
        return Err(ChainError {
            reason: Some(Reason::ConfigError),
            message: format!(
                "no model is configured for agent {:?} (agents.defaults.model)",
                run.request.session.agent
            ),
        });
    }
    let mut failures: Vec<String> = Vec::new();
    for c in &chain {
        if ctx.token().is_cancelled() {
            break;
        }
        let now = Instant::now();
        if let Some((why, until)) = runs::cooldowns(svc).cooling(c, now) {
            failures.push(format!(
                "{c}: cooling down after {why} ({} s left)",
                until.saturating_duration_since(now).as_secs()
            ));
            continue;
        }
        let Some(p) = cfg.agents.providers.get(&c.provider) else {
            failures.push(format!(
                "{c}: {}: provider {:?} is not configured",
                Reason::ConfigError,
                c.provider
            ));
            continue;
        };
        let (Some(api), Ok(base)) = (provider::Api::parse(&p.api), Url::parse(&p.base_url)) else {
            failures.push(format!("{c}: {}: bad api or baseUrl", Reason::ConfigError));
            continue;
        };
        let deadline = (now + p.timeout).min(ctx.deadline());
        let limits = Limits {
            connect_timeout: CONNECT_TIMEOUT,
            deadline,
            stall: p.stall,
        };
        let max_tokens = p
            .max_tokens
            .get(&c.model)
            .copied()
            .unwrap_or(DEFAULT_MAX_TOKENS);
        let mut text = String::new();
        let mut last_delta = Instant::now() - DELTA_EVERY;
        // Tokens are sent on in small batches (every ASSISTANT_EVERY): the event rate stays
        // bounded however fast a provider streams, which matters once many clients listen.
        let mut pending = String::new();
        let mut last_assistant = Instant::now();
        let flush = |pending: &mut String| {
            if !pending.is_empty() {
                let delta = std::mem::take(pending);
                runs::emit(
                    svc,
                    run,
                    Event::Agent,
                    json!({"stream": "assistant", "ts": clock::wall_ms(), "data": {"delta": delta}}),
                );
            }
        };
        let mut on_event = |ev: &ModelEvent| {
            ctx.info.stamp(Instant::now());
            if let ModelEvent::Text(t) = ev {
                text.push_str(t);
                pending.push_str(t);
                if last_assistant.elapsed() >= ASSISTANT_EVERY {
                    last_assistant = Instant::now();
                    flush(&mut pending);
                }
                if last_delta.elapsed() >= DELTA_EVERY {
                    last_delta = Instant::now();
                    let full = format!("{text_so_far}{text}");
                    runs::emit(svc, run, Event::Chat, chat_delta(&full, sent));
                }
            }
        };
        let started = Instant::now();
        let result = provider::call_streaming(
            &provider::Turn {
                api,
                base_url: &base,
                api_key: p.api_key.as_deref(),
                model: &c.model,
                system,
                messages,
                tools: tool_specs,
                max_tokens,
            },
            &limits,
            ctx.token(),
            &mut on_event,
        );
        flush(&mut pending);
        match result {
            Ok(events) => {
                let mut answer = Answer {
                    candidate: c.clone(),
                    text: String::new(),
                    tool_calls: Vec::new(),
                    usage: provider::Usage::default(),
                    stop_reason: "stop".into(),
                };
                for ev in events {
                    match ev {
                        ModelEvent::Text(t) => answer.text.push_str(&t),
                        ModelEvent::ToolCall(tc) => answer.tool_calls.push(tc),
                        ModelEvent::Usage(u) => answer.usage = u,
                        ModelEvent::Done { stop_reason } => answer.stop_reason = stop_reason,
                    }
                }
                runs::cooldowns(svc).record_success(c);
                return Ok(answer);
            }
            Err(e) => {
                let (why, retry_after) = reason(&e, ctx.token().is_cancelled());
                if why == Reason::Cancelled {
                    break;
                }
                let cooldown =
                    runs::cooldowns(svc).record_failure(c, why, retry_after, Instant::now());
                let message = e.to_string();
                log::warn!(
                    "run {}: {c} failed after {} ms: {why}: {message}{}",
                    run.id,
                    started.elapsed().as_millis(),
                    cooldown
                        .map(|d| format!(" (cooling down {} s)", d.as_secs()))
                        .unwrap_or_default()
                );
                // Every call is recorded, the failed ones too.
                let _ = record(
                    svc,
                    run,
                    session,
                    json!({
                        "role": "assistant", "content": text_content(&text), "provider": c.provider, "model": c.model,
                        "timestamp": clock::wall_ms(), "stopReason": "error", "errorMessage": format!("{why}: {message}"),
                        "usage": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 0},
                    }),
                );
                runs::emit(
                    svc,
                    run,
                    Event::Agent,
                    json!({"stream": "error", "ts": clock::wall_ms(), "data": {
                        "provider": c.provider, "model": c.model, "reason": why.as_str(), "message": message,
                        "failover": failover::fails_over(why), "cooldownSeconds": cooldown.map(|d| d.as_secs()),
                    }}),
                );
                failures.push(format!("{c}: {why}: {message}"));
                if !failover::fails_over(why) {
                    return Err(ChainError {
                        reason: Some(why),
                        message: failures.join("; "),
                    });
                }
            }
        }
    }
    if ctx.token().is_cancelled() {
        return Err(ChainError {
            reason: Some(Reason::Cancelled),
            message: "the run was cancelled".into(),
        });
    }
    Err(ChainError {
        reason: None,
        message: format!("every model failed: {}", failures.join("; ")),
    })
}

/// Runs one run to its end. Always finishes the run record, whatever happens.
pub fn execute(svc: &Arc<Runs>, run: &Arc<Run>, ctx: &JobCtx) -> Outcome {
    use crate::cancel::CancelReason;
    let outcome = execute_inner(svc, run, ctx);
    let status = match (&outcome, ctx.token().reason()) {
        (Ok(_), _) => Status::Ok,
        (Err(_), Some(CancelReason::Deadline | CancelReason::Stalled)) => Status::Timeout,
        (Err(_), Some(_)) => Status::Aborted,
        (Err(_), None) => Status::Error,
    };
    let (text, error, delivered) = match &outcome {
        Ok((text, meta, delivered)) => {
            run.set_meta(meta.clone());
            (text.as_str(), None, *delivered)
        }
        Err(e) => ("", Some(e.message.clone()), false),
    };
    runs::finish(svc, run, status, text, error.clone());
    runs::session_changed(
        svc,
        run,
        "end",
        json!({"reason": "update", "status": status.as_str()}),
    );
    // (A run that ran out of tool rounds ends without a final answer: its text so far.)
    if status == Status::Ok && run.request.deliver && !text.is_empty() && !delivered {
        deliver(svc, run, text);
    }
    // The lifecycle ends before the terminal chat event, which is what clients wait for.
    let end = json!({"stream": "lifecycle", "ts": clock::wall_ms(), "data": {"phase": "end", "status": status.as_str()}});
    runs::emit(svc, run, Event::Agent, end);
    let chat = match status {
        Status::Ok => {
            json!({"state": "final", "message": {"role": "assistant", "content": text_content(text), "timestamp": clock::wall_ms()}})
        }
        // Stopped by a client: what was asked for, not an error to show. Stopped by keel (a
        // drain): says why.
        Status::Aborted if ctx.token().reason() == Some(CancelReason::Client) => {
            json!({"state": "aborted"})
        }
        Status::Aborted => json!({"state": "aborted", "errorMessage": error}),
        _ => json!({"state": "error", "errorMessage": error}),
    };
    runs::emit(svc, run, Event::Chat, chat);
    match outcome {
        Ok(_) => Ok(run.result().into()),
        Err(e) => Err(e),
    }
}

/// Queues the reply for the requester's origin — the channel, address, account and thread
/// the request came from, inherited by sub-agents through any depth — or, only when the
/// origin has no channel, the agent's first bound channel.
fn deliver(svc: &Arc<Runs>, run: &Run, text: &str) {
    let req = &run.request;
    let route = match (&req.origin.channel, &req.origin.to) {
        (Some(channel), Some(to)) => crate::delivery::queue::Route {
            account_id: req.origin.account_id.clone(),
            thread_id: req.origin.thread_id.clone(),
            ..crate::delivery::queue::Route::new(channel.clone(), to.clone())
        },
        (Some(channel), None) => {
            log::warn!(
                "run {}: origin channel {channel} has no address; the reply is not delivered",
                run.id
            );
            return;
        }
        (None, _) => {
            let cfg = svc.h.config.get();
            match cfg
                .agents
                .agent(&req.session.agent)
                .and_then(|a| a.bindings.first())
            {
                Some((channel, to)) => {
                    crate::delivery::queue::Route::new(channel.clone(), to.clone())
                }
                None => {
                    log::info!(
                        "run {}: no origin channel and no bound channel; the reply stays in the session",
                        run.id
                    );
                    return;
                }
            }
        }
    };
    let extra = json!({"runId": run.id, "sessionKey": req.session.key, "parentRunId": req.parent});
    let queued = if resumable(run) {
        svc.h
            .delivery
            .enqueue_reply(route, text, &reply_key(run), extra)
    } else {
        svc.h
            .delivery
            .enqueue(route, text, &reply_key(run), extra)
            .map(Some)
    };
    match queued {
        Ok(Some(e)) => log::info!(
            "run {}: reply queued for {}:{} ({})",
            run.id,
            e.route.channel,
            e.route.to,
            e.id
        ),
        Ok(None) => log::info!(
            "run {}: a reply of this run was queued before (key {}); not queued again",
            run.id,
            run.idempotency_key
        ),
        Err(e) => log::warn!("run {}: cannot deliver the reply: {}", run.id, e.message),
    }
}

/// A run that a later life of keel can resume: a client's (not a sub-agent's) with a key.
fn resumable(run: &Run) -> bool {
    !run.idempotency_key.is_empty() && run.request.parent.is_none()
}

/// The idempotency key of a run's reply in the delivery queue: from the run's own key when it
/// has one, so that a resumed run (a new run id) finds the reply an earlier life queued.
fn reply_key(run: &Run) -> String {
    if resumable(run) {
        format!(
            "{}{}",
            crate::delivery::service::REPLY_KEY_PREFIX,
            run.idempotency_key
        )
    } else {
        format!("run:{}", run.id)
    }
}

/// Where a resumed run stands.
enum Resume {
    /// Nothing is left to do: an earlier life answered (this text) or queued the reply.
    Finished(String),
    /// Go on from here: the conversation as the model sees it (this run's own turns and the
    /// interrupted tool calls' results included), the text of its earlier rounds, and how
    /// many rounds it had.
    Continue {
        messages: Vec<ChatMessage>,
        text: String,
        rounds: usize,
    },
}

/// The text blocks of a transcript message, joined.
fn message_text(m: &Value) -> String {
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text" || b["type"].is_null())
            .filter_map(|b| b["text"].as_str())
            .collect(),
        _ => String::new(),
    }
}

/// The tool calls of a transcript assistant message.
fn message_tool_calls(m: &Value) -> Vec<ToolCall> {
    m["content"]
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .filter(|b| b["type"] == "toolCall")
                .filter_map(|b| {
                    Some(ToolCall {
                        id: b["id"].as_str()?.to_string(),
                        name: b["name"].as_str()?.to_string(),
                        arguments: b["arguments"].clone(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The run's own turns as the model sees them, from its transcript messages after its user
/// message: failed calls left out, and every tool call without a result closed with an
/// error result (returned apart, to be written). Also the text of its rounds and their number,
/// and whether a final answer (a successful call without tool calls) is among them.
fn own_turns(after: &[Value]) -> (Vec<ChatMessage>, Vec<ToolCall>, String, usize, bool) {
    let mut out: Vec<ChatMessage> = Vec::new();
    let mut closed: Vec<ToolCall> = Vec::new();
    let mut open: Vec<ToolCall> = Vec::new();
    let (mut text, mut rounds, mut answered) = (String::new(), 0, false);
    let close =
        |open: &mut Vec<ToolCall>, out: &mut Vec<ChatMessage>, closed: &mut Vec<ToolCall>| {
            for c in open.drain(..) {
                out.push(ChatMessage {
                    role: Role::Tool,
                    text: INTERRUPTED_TOOL.into(),
                    tool_calls: Vec::new(),
                    tool_call_id: Some(c.id.clone()),
                });
                closed.push(c);
            }
        };
    for m in after {
        match m["role"].as_str() {
            Some("assistant") if m["stopReason"] != "error" => {
                close(&mut open, &mut out, &mut closed);
                let t = message_text(m);
                let calls = message_tool_calls(m);
                text.push_str(&t);
                rounds += 1;
                answered |= calls.is_empty();
                out.push(ChatMessage {
                    role: Role::Assistant,
                    text: t,
                    tool_calls: calls.clone(),
                    tool_call_id: None,
                });
                open = calls;
            }
            Some("toolResult") => {
                let id = m["toolCallId"].as_str();
                // A result that answers no open call is left out: a provider refuses it.
                if let Some(i) = open.iter().position(|c| Some(c.id.as_str()) == id) {
                    let c = open.remove(i);
                    out.push(ChatMessage {
                        role: Role::Tool,
                        text: message_text(m),
                        tool_calls: Vec::new(),
                        tool_call_id: Some(c.id),
                    });
                }
            }
            _ => {}
        }
    }
    close(&mut open, &mut out, &mut closed);
    (out, closed, text, rounds, answered)
}

/// Decides how a run asked to resume goes on, given what its earlier life wrote (`trace`):
/// - it had answered (a final assistant message is written; its reply, if it delivers, was
///   queued before that): finished, with that text;
/// - its reply was queued (the kill came between queueing it and writing the answer):
///   finished;
/// - it was resumed [`MAX_RESUMES`] times already: given up — an error, and for a run that
///   delivers, a short notice to its origin instead of the answer;
/// - otherwise it goes on: a mark is written (counting the resumes), each tool call left
///   without a result gets an error result saying the restart interrupted it (the tool is
///   not run again: it may have had its effect; the model decides), and the model is called
///   with the conversation as written.
fn resume(
    svc: &Arc<Runs>,
    run: &Arc<Run>,
    ctx: &JobCtx,
    session: &mut SessionFile,
    trace: super::transcript::RunTrace,
) -> Result<Resume, RpcError> {
    let req = &run.request;
    let key = &run.idempotency_key;
    let io = |e: std::io::Error| {
        RpcError::new(
            Code::Internal,
            format!("cannot write the session {}: {e}", req.session.key),
        )
    };
    let (own, interrupted, text, rounds, answered) = own_turns(&trace.after);
    if answered {
        log::info!(
            "run {}: the run of key {key} had answered before the restart; not run again",
            run.id
        );
        return Ok(Resume::Finished(text));
    }
    // Known once the delivery queue is open (it opens at boot, like the keys that let this
    // run start).
    let queued = loop {
        match svc.h.delivery.reply_queued(&reply_key(run)) {
            Ok(q) => break q,
            Err(_) => {
                ctx.check()?;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    if queued {
        log::info!(
            "run {}: the run of key {key} had queued its reply before the restart; not run again",
            run.id
        );
        return Ok(Resume::Finished(text));
    }
    if trace.marks >= MAX_RESUMES {
        log::error!(
            "run {}: the run of key {key} in session {} was interrupted by a restart {} times \
             without finishing; given up{}",
            run.id,
            req.session.key,
            trace.marks + 1,
            if req.deliver {
                " (its origin is told)"
            } else {
                ""
            }
        );
        session
            .append_custom(
                RESUME_MARK,
                json!({"idempotencyKey": key, "gaveUp": true, "runId": run.id}),
            )
            .map_err(io)?;
        if req.deliver {
            deliver(
                svc,
                run,
                "keel: this message could not be answered: a restart interrupted its run \
                 several times, so it was given up. Please send it again.",
            );
        }
        return Err(RpcError::new(
            Code::Internal,
            format!(
                "the run was interrupted by a restart {} times and is given up",
                trace.marks + 1
            ),
        ));
    }
    let attempt = trace.marks + 1;
    session
        .append_custom(
            RESUME_MARK,
            json!({"idempotencyKey": key, "attempt": attempt, "runId": run.id}),
        )
        .map_err(io)?;
    log::info!(
        "run {}: resuming the run of key {key} after a restart (resume {attempt} of at most \
         {MAX_RESUMES}): {} of its turns written, {} interrupted tool call(s) closed",
        run.id,
        trace.after.len(),
        interrupted.len()
    );
    for call in &interrupted {
        record(
            svc,
            run,
            session,
            json!({"role": "toolResult", "toolCallId": call.id, "toolName": call.name, "content": text_content(INTERRUPTED_TOOL), "isError": true, "timestamp": clock::wall_ms()}),
        )
        .map_err(io)?;
    }
    let mut user_text = message_text(&trace.user);
    if user_text.is_empty() {
        user_text = req.message.clone();
    }
    let mut messages = history_messages(&trace.before);
    messages.push(ChatMessage {
        role: Role::User,
        text: user_text,
        tool_calls: Vec::new(),
        tool_call_id: None,
    });
    messages.extend(own);
    Ok(Resume::Continue {
        messages,
        text,
        rounds,
    })
}

/// The run's text and meta, and whether its reply was queued (with the final answer).
fn execute_inner(
    svc: &Arc<Runs>,
    run: &Arc<Run>,
    ctx: &JobCtx,
) -> Result<(String, Value, bool), RpcError> {
    let req = &run.request;
    let lock = svc.session_lock(&req.session.key);
    // One run per session at a time; a run waiting its turn still honours its deadline and
    // cancel (a drain, chat.abort), rather than holding its worker blind until the other ends.
    let _turn = loop {
        match lock.try_lock() {
            Ok(turn) => break turn,
            Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                ctx.check()?;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    ctx.check()?;
    // A run that delivers waits for the delivery queue, which opens on a worker at boot: a
    // run started then (a message received before the restart) could otherwise end before
    // its reply can be queued, and lose it.
    while req.deliver && !svc.h.delivery.is_open() {
        ctx.check()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    runs::emit(
        svc,
        run,
        Event::Agent,
        json!({"stream": "lifecycle", "ts": clock::wall_ms(), "data": {"phase": "start", "agentId": req.session.agent}}),
    );
    let io = |e: std::io::Error| {
        RpcError::new(
            Code::Internal,
            format!("cannot write the session {}: {e}", req.session.key),
        )
    };
    let (_, earlier) =
        super::transcript::history(&svc.h.state_dir, &req.session, HISTORY).unwrap_or_default();
    let mut session = SessionFile::open(&svc.h.state_dir, &req.session, &req.origin).map_err(io)?;
    let mut changed = json!({"sessionId": session.session_id});
    if session.created {
        changed["reason"] = json!("create");
    }
    runs::session_changed(svc, run, "start", changed);
    // A run asked to resume whose user message an earlier life wrote goes on from there.
    let trace = if req.resume && resumable(run) {
        super::transcript::find_run(
            &svc.h.state_dir,
            &req.session,
            &run.idempotency_key,
            RESUME_SEARCH,
            HISTORY,
            RESUME_MARK,
        )
        .map_err(io)?
    } else {
        None
    };
    let (mut messages, mut full_text, rounds_done) = match trace {
        Some(trace) => match resume(svc, run, ctx, &mut session, trace)? {
            Resume::Finished(text) => {
                let meta = json!({"sessionId": session.session_id, "resumed": true});
                return Ok((text, meta, true));
            }
            Resume::Continue {
                messages,
                text,
                rounds,
            } => (messages, text, rounds),
        },
        None => {
            let mut user = json!({"role": "user", "content": text_content(&req.message), "timestamp": clock::wall_ms()});
            // A client's key marks its message, so that a client that sent it (and may send
            // it again after a reconnect) can find it in the history, and a resumed run its
            // place in the transcript.
            if resumable(run) {
                user["idempotencyKey"] = json!(run.idempotency_key);
            }
            record(svc, run, &mut session, user).map_err(io)?;
            let mut messages = history_messages(&earlier);
            messages.push(ChatMessage {
                role: Role::User,
                text: req.message.clone(),
                tool_calls: Vec::new(),
                tool_call_id: None,
            });
            (messages, String::new(), 0)
        }
    };
    let cfg = svc.h.config.get();
    let system = cfg
        .agents
        .agent(&req.session.agent)
        .and_then(|a| a.system.clone());
    let tool_specs = tools::specs(&cfg.agents);
    let mut sent = String::new();
    let mut totals = provider::Usage::default();
    let mut last_model: Option<ModelRef> = None;
    let mut delivered = false;
    for _round in rounds_done..MAX_ROUNDS.max(rounds_done + 1) {
        ctx.check()?;
        let prompt = Prompt {
            system: system.as_deref(),
            messages: &messages,
            tools: &tool_specs,
            text_so_far: &full_text,
        };
        let answer = call_chain(svc, run, ctx, &mut session, &prompt, &mut sent)
            .map_err(|e| RpcError::new(e.code(), e.message))?;
        let c = &answer.candidate;
        if answer.tool_calls.is_empty() && req.deliver {
            // The final answer. Its reply is queued before the answer is written to the
            // transcript: a crash between the two leaves a transcript without its last line
            // and a reply on its way, which a resumed run finds (`Delivery::reply_queued`)
            // rather than a written answer whose reply was never queued.
            let text = format!("{full_text}{}", answer.text);
            if !text.is_empty() {
                deliver(svc, run, &text);
                delivered = true;
            }
        }
        record(
            svc,
            run,
            &mut session,
            json!({
                "role": "assistant",
                "content": assistant_content(&answer),
                "provider": c.provider, "model": c.model, "timestamp": clock::wall_ms(),
                "stopReason": answer.stop_reason, "usage": usage_json(svc, c, &answer.usage),
            }),
        )
        .map_err(io)?;
        totals.input += answer.usage.input;
        totals.output += answer.usage.output;
        totals.cache_read += answer.usage.cache_read;
        totals.cache_write += answer.usage.cache_write;
        full_text.push_str(&answer.text);
        last_model = Some(c.clone());
        if answer.tool_calls.is_empty() {
            break;
        }
        messages.push(ChatMessage {
            role: Role::Assistant,
            text: answer.text.clone(),
            tool_calls: answer.tool_calls.clone(),
            tool_call_id: None,
        });
        for call in &answer.tool_calls {
            ctx.check()?;
            let result = tools::run(svc, run, ctx, call);
            let (text, is_error) = match &result {
                Ok(t) => (t.clone(), false),
                Err(e) => (e.clone(), true),
            };
            record(
                svc,
                run,
                &mut session,
                json!({"role": "toolResult", "toolCallId": call.id, "toolName": call.name, "content": text_content(&text), "isError": is_error, "timestamp": clock::wall_ms()}),
            )
            .map_err(io)?;
            messages.push(ChatMessage {
                role: Role::Tool,
                text,
                tool_calls: Vec::new(),
                tool_call_id: Some(call.id.clone()),
            });
        }
    }
    let total = totals.input + totals.output + totals.cache_read + totals.cache_write;
    let (p, m) = last_model
        .as_ref()
        .map(|c| (c.provider.as_str(), c.model.as_str()))
        .unzip();
    session
        .touch(p, m, totals.input, totals.output, total)
        .map_err(io)?;
    let meta = json!({
        "provider": p, "model": m, "sessionId": session.session_id,
        "usage": {"input": totals.input, "output": totals.output, "cacheRead": totals.cache_read, "cacheWrite": totals.cache_write, "totalTokens": total},
    });
    Ok((full_text, meta, delivered))
}

fn assistant_content(a: &Answer) -> Value {
    let mut blocks = Vec::new();
    if !a.text.is_empty() {
        blocks.push(json!({"type": "text", "text": a.text}));
    }
    for t in &a.tool_calls {
        blocks.push(
            json!({"type": "toolCall", "id": t.id, "name": t.name, "arguments": t.arguments}),
        );
    }
    Value::Array(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::NetError;

    #[test]
    fn a_cancelled_run_is_cancelled_whatever_the_call_failed_with() {
        let rate_limited = ProviderError::Http {
            status: 429,
            kind: provider::FailureKind::RateLimit {
                retry_after: Some(Duration::from_secs(7)),
            },
            message: String::new(),
        };
        let net = ProviderError::Net;
        // (error, the run's token has fired, reason)
        let cases = [
            (net(NetError::Cancelled), true, Reason::Cancelled),
            (net(NetError::Reset), true, Reason::Cancelled),
            (rate_limited.clone(), true, Reason::Cancelled),
            (net(NetError::Reset), false, Reason::ServerError),
            (net(NetError::TooLarge), false, Reason::ServerError),
            (net(NetError::Stalled), false, Reason::Timeout),
            (rate_limited.clone(), false, Reason::RateLimit),
        ];
        for (e, cancelled, want) in &cases {
            assert_eq!(reason(e, *cancelled).0, *want, "{e}");
        }
        assert_eq!(
            reason(&rate_limited, false).1,
            Some(Duration::from_secs(7)),
            "a 429's Retry-After is kept"
        );
    }

    #[test]
    fn chat_deltas_carry_what_was_added_or_replace_what_was_sent() {
        let mut sent = String::new();
        let d = chat_delta("Hel", &mut sent);
        assert_eq!(
            (d["deltaText"].as_str(), d.get("replace")),
            (Some("Hel"), None)
        );
        assert_eq!(d["message"]["content"][0]["text"], "Hel");
        let d = chat_delta("Hello", &mut sent);
        assert_eq!(
            (d["deltaText"].as_str(), d.get("replace")),
            (Some("lo"), None)
        );
        assert_eq!(d["message"]["content"][0]["text"], "Hello");
        // A fallback that starts over: the whole text, replacing.
        let d = chat_delta("Hi", &mut sent);
        assert_eq!(
            (d["deltaText"].as_str(), d["replace"].as_bool()),
            (Some("Hi"), Some(true))
        );
        assert_eq!(sent, "Hi");
    }

    #[test]
    fn a_resumed_run_sees_its_own_turns_and_its_interrupted_calls_closed() {
        let call =
            |id: &str| json!({"type": "toolCall", "id": id, "name": "t", "arguments": {"x": 1}});
        let after = vec![
            json!({"role": "assistant", "stopReason": "error", "content": [{"type": "text", "text": "partial"}]}),
            json!({"role": "assistant", "content": [{"type": "text", "text": "let me look. "}, call("c1"), call("c2")]}),
            json!({"role": "toolResult", "toolCallId": "c1", "content": [{"type": "text", "text": "one"}]}),
            json!({"role": "toolResult", "toolCallId": "zz", "content": [{"type": "text", "text": "stray"}]}),
        ];
        let (msgs, closed, text, rounds, answered) = own_turns(&after);
        assert_eq!(
            (text.as_str(), rounds, answered),
            ("let me look. ", 1, false)
        );
        assert_eq!(
            closed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            ["c2"]
        );
        let shape: Vec<(Role, Option<&str>, &str)> = msgs
            .iter()
            .map(|m| (m.role, m.tool_call_id.as_deref(), m.text.as_str()))
            .collect();
        assert_eq!(
            shape,
            [
                (Role::Assistant, None, "let me look. "),
                (Role::Tool, Some("c1"), "one"),
                (Role::Tool, Some("c2"), INTERRUPTED_TOOL),
            ]
        );
        assert_eq!(msgs[0].tool_calls.len(), 2);
        assert_eq!(msgs[0].tool_calls[1].arguments, json!({"x": 1}));
        // A final answer after the tools: answered.
        let mut done = after.clone();
        done.push(json!({"role": "toolResult", "toolCallId": "c2", "content": "two"}));
        done.push(json!({"role": "assistant", "content": [{"type": "text", "text": "found it"}]}));
        let (_, closed, text, rounds, answered) = own_turns(&done);
        assert!(closed.is_empty());
        assert_eq!(
            (text.as_str(), rounds, answered),
            ("let me look. found it", 2, true)
        );
    }

    #[test]
    fn a_chain_error_maps_to_the_code_clients_see() {
        let code = |reason| {
            ChainError {
                reason,
                message: String::new(),
            }
            .code()
        };
        for r in Reason::ALL {
            let want = match r {
                Reason::Cancelled => Code::Cancelled,
                Reason::ConfigError => Code::ConfigError,
                _ => Code::Unavailable,
            };
            assert_eq!(code(Some(r)), want, "{r}");
        }
        assert_eq!(code(None), Code::Unavailable, "every candidate failed");
    }
}
