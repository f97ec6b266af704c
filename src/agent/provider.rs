//! The two provider APIs keel speaks, named as OpenClaw's config names them:
//! `openai-completions` (OpenAI Chat Completions, and every server that copies it) and
//! `anthropic-messages` (Anthropic Messages). This file builds each one's request, decodes its
//! event stream into [`ModelEvent`]s, and classifies its failures for failover.
//!
//! Invariants:
//! - Requests are always streamed (`stream: true`), so the stall limit means "the model went
//!   quiet", not "the answer is long".
//! - A tool call is emitted once, complete: argument fragments are accumulated until the
//!   provider closes the call (OpenAI's `finish_reason`, Anthropic's `content_block_stop`).
//! - A stream ends in exactly one `Usage` (when the provider reported any) followed by exactly
//!   one `Done`; nothing is emitted after `Done`. A stream that ends without the provider's end
//!   marker is an error, never a silent short answer.
//! - [`classify_status`] is the single place that turns an HTTP failure into a
//!   [`FailureKind`]; failover decides on the kind alone (as a
//!   [`Reason`](crate::agent::failover::Reason)), apart from our own cancel, which the run's
//!   token tells. Only a bounded prefix (64 KiB) of an error body is read, and only a short
//!   message from it is kept.

use crate::cancel::CancelToken;
use crate::net::sse::{SseEvent, SseParser};
use crate::net::{self, Limits, NetError, Request, Url};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The `anthropic-version` header keel sends.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; this is used when the caller passes 0.
pub const ANTHROPIC_DEFAULT_MAX_TOKENS: u32 = 4096;
/// How much of a non-2xx body is read to classify it.
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// The most argument text one stream may accumulate across its tool calls.
const MAX_TOOL_ARGS: usize = 16 * 1024 * 1024;
/// The longest message kept from an error body.
const MESSAGE_LIMIT: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    OpenAiCompletions,
    AnthropicMessages,
}

impl Api {
    pub fn parse(s: &str) -> Option<Api> {
        match s {
            "openai-completions" => Some(Api::OpenAiCompletions),
            "anthropic-messages" => Some(Api::AnthropicMessages),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Api::OpenAiCompletions => "openai-completions",
            Api::AnthropicMessages => "anthropic-messages",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    /// The result of one tool call, answering `tool_call_id`.
    Tool,
}

/// One turn of a conversation, in keel's own shape; [`build_request`] maps it to each API's.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub text: String,
    /// Calls the assistant made in this turn (assistant messages only).
    pub tool_calls: Vec<ToolCall>,
    /// Which call a `Tool` message answers.
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn user(text: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: Role::User,
            text: text.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    pub fn assistant(text: impl Into<String>, tool_calls: Vec<ToolCall>) -> ChatMessage {
        ChatMessage {
            role: Role::Assistant,
            text: text.into(),
            tool_calls,
            tool_call_id: None,
        }
    }

    pub fn tool_result(call_id: impl Into<String>, text: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: Role::Tool,
            text: text.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(call_id.into()),
        }
    }
}

/// A call the model asked for. `arguments` is the parsed JSON the model produced; if it was
/// not valid JSON, it is that raw text as a JSON string, so the agent can tell the model so
/// instead of failing the whole turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

/// A tool offered to the model; `parameters` is its JSON schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

/// Token counts. `input` excludes cached tokens on both APIs, so the four add up to what was
/// processed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    Text(String),
    ToolCall(ToolCall),
    Usage(Usage),
    /// The provider's own stop reason (`stop`, `tool_calls`, `length`; `end_turn`, `tool_use`,
    /// `max_tokens`, ...), or `unknown` if it gave none.
    Done {
        stop_reason: String,
    },
}

/// Why a call failed, as failover sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// 401: the key is wrong or expired.
    Auth,
    /// 403: the key works but may not do this.
    AuthPermanent,
    /// 402, or a quota/credit message: the account needs money.
    Billing,
    RateLimit {
        retry_after: Option<Duration>,
    },
    /// 503, 529: the provider sheds load.
    Overloaded,
    /// Any other 5xx, a broken connection, a garbled stream.
    ServerError,
    /// 408, or our own connect/stall/deadline limit.
    Timeout,
    /// The provider says the model does not exist.
    ModelNotFound,
    /// The conversation does not fit the model's context.
    ContextOverflow,
    /// The provider rejected the request's shape.
    Format,
    /// Keel's configuration is wrong (base URL, TLS): no retry will help.
    ConfigError,
    /// Anything else: a status with no rule here, an answer too large to read, a transfer cut
    /// by our own cancel. Failover ([`Reason::of`](crate::agent::failover::Reason::of)) counts
    /// it as a server error; a cancel is told apart before that, from the run's token, which
    /// is what cut the transfer.
    Other,
}

impl FailureKind {
    /// The kind's name in messages: failover's name for it
    /// ([`Reason::as_str`](crate::agent::failover::Reason::as_str), what clients see as
    /// `reason`), except for `other`, which failover counts as `server_error`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Other => "other",
            kind => crate::agent::failover::Reason::of(kind).as_str(),
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::RateLimit {
                retry_after: Some(d),
            } => write!(f, "rate_limit (retry after {} s)", d.as_secs()),
            k => f.write_str(k.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProviderError {
    /// A non-2xx answer.
    Http {
        status: u16,
        kind: FailureKind,
        /// Short, from the body.
        message: String,
    },
    Net(NetError),
    /// The provider reported an error inside a stream that had started.
    Stream {
        kind: FailureKind,
        message: String,
    },
    /// The provider sent something that is not its API's format.
    Decode(String),
}

impl ProviderError {
    /// The failover decision for this error.
    pub fn kind(&self) -> FailureKind {
        match self {
            ProviderError::Http { kind, .. } | ProviderError::Stream { kind, .. } => *kind,
            ProviderError::Net(e) => classify_net(e),
            ProviderError::Decode(_) => FailureKind::ServerError,
        }
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderError::Http {
                status,
                kind,
                message,
            } => {
                write!(f, "provider answered http {status} ({kind})")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            ProviderError::Net(e) => write!(f, "provider call failed: {e}"),
            ProviderError::Stream { kind, message } => {
                write!(f, "provider stream failed ({kind}): {message}")
            }
            ProviderError::Decode(m) => write!(f, "provider stream is malformed: {m}"),
        }
    }
}

impl std::error::Error for ProviderError {}

impl From<NetError> for ProviderError {
    fn from(e: NetError) -> ProviderError {
        ProviderError::Net(e)
    }
}

/// One model call: who is asked and what.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    pub api: Api,
    pub base_url: &'a Url,
    pub api_key: Option<&'a str>,
    pub model: &'a str,
    pub system: Option<&'a str>,
    pub messages: &'a [ChatMessage],
    pub tools: &'a [ToolSpec],
    pub max_tokens: u32,
}

/// The request for one streamed turn, in `turn.api`'s exact wire format. `max_tokens` 0 means
/// "the provider's default" (omitted for OpenAI; [`ANTHROPIC_DEFAULT_MAX_TOKENS`] for
/// Anthropic, which requires it).
pub fn build_request(turn: &Turn<'_>) -> Request {
    let Turn {
        api,
        base_url,
        api_key,
        model,
        system,
        messages,
        tools,
        max_tokens,
    } = *turn;
    let (url, body) = match api {
        Api::OpenAiCompletions => (
            base_url.join("/chat/completions"),
            openai_body(model, system, messages, tools, max_tokens),
        ),
        Api::AnthropicMessages => {
            // OpenClaw configs give Anthropic's base URL both with and without `/v1`.
            let path = if base_url.path().trim_end_matches('/').ends_with("/v1") {
                "/messages"
            } else {
                "/v1/messages"
            };
            (
                base_url.join(path),
                anthropic_body(model, system, messages, tools, max_tokens),
            )
        }
    };
    let mut req = Request::new("POST", url)
        .header("Content-Type", "application/json")
        .header("Accept", "text/event-stream")
        .header("User-Agent", &format!("keel/{}", crate::VERSION));
    match (api, api_key) {
        (Api::OpenAiCompletions, Some(key)) => {
            req = req.header("Authorization", &format!("Bearer {key}"));
        }
        (Api::AnthropicMessages, key) => {
            if let Some(key) = key {
                req = req.header("x-api-key", key);
            }
            req = req.header("anthropic-version", ANTHROPIC_VERSION);
        }
        (Api::OpenAiCompletions, None) => {}
    }
    req.body(body.to_string().into_bytes())
}

fn openai_body(
    model: &str,
    system: Option<&str>,
    messages: &[ChatMessage],
    tools: &[ToolSpec],
    max_tokens: u32,
) -> Value {
    let mut msgs = Vec::with_capacity(messages.len() + 1);
    if let Some(s) = system {
        msgs.push(json!({"role": "system", "content": s}));
    }
    for m in messages {
        msgs.push(match m.role {
            Role::User => json!({"role": "user", "content": m.text}),
            Role::Assistant => {
                let mut o = Map::new();
                o.insert("role".into(), json!("assistant"));
                // With tool calls and no text, OpenAI wants `content: null`.
                let content = if m.text.is_empty() && !m.tool_calls.is_empty() {
                    Value::Null
                } else {
                    json!(m.text)
                };
                o.insert("content".into(), content);
                if !m.tool_calls.is_empty() {
                    let calls: Vec<Value> = m
                        .tool_calls
                        .iter()
                        .map(|c| {
                            json!({
                                "id": c.id,
                                "type": "function",
                                "function": {"name": c.name, "arguments": arguments_text(&c.arguments)},
                            })
                        })
                        .collect();
                    o.insert("tool_calls".into(), Value::Array(calls));
                }
                Value::Object(o)
            }
            Role::Tool => json!({
                "role": "tool",
                "tool_call_id": m.tool_call_id.as_deref().unwrap_or(""),
                "content": m.text,
            }),
        });
    }
    let mut body = json!({
        "model": model,
        "messages": msgs,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if max_tokens > 0 {
        body["max_tokens"] = json!(max_tokens);
    }
    if !tools.is_empty() {
        body["tools"] = tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                })
            })
            .collect();
    }
    body
}

/// OpenAI carries arguments as a JSON string; a raw string (invalid JSON the model produced
/// earlier) goes back as it was.
fn arguments_text(args: &Value) -> String {
    match args {
        Value::String(raw) => raw.clone(),
        Value::Null => "{}".to_string(),
        v => v.to_string(),
    }
}

fn anthropic_body(
    model: &str,
    system: Option<&str>,
    messages: &[ChatMessage],
    tools: &[ToolSpec],
    max_tokens: u32,
) -> Value {
    // Anthropic wants roles to alternate and all results of one tool turn in the next user
    // message: adjacent turns of the same role are merged into one message of several blocks.
    let mut msgs: Vec<(&str, Vec<Value>)> = Vec::new();
    for m in messages {
        let mut blocks = Vec::new();
        // Anthropic rejects empty text blocks.
        if !m.text.is_empty() && m.role != Role::Tool {
            blocks.push(json!({"type": "text", "text": m.text}));
        }
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => {
                for c in &m.tool_calls {
                    let input = match &c.arguments {
                        Value::Object(_) => c.arguments.clone(),
                        _ => json!({}),
                    };
                    blocks.push(
                        json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}),
                    );
                }
                "assistant"
            }
            Role::Tool => {
                blocks.push(json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.as_deref().unwrap_or(""),
                    "content": m.text,
                }));
                "user"
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match msgs.last_mut() {
            Some((last, b)) if *last == role => b.extend(blocks),
            _ => msgs.push((role, blocks)),
        }
    }
    let msgs: Vec<Value> = msgs
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    let max_tokens = if max_tokens == 0 {
        ANTHROPIC_DEFAULT_MAX_TOKENS
    } else {
        max_tokens
    };
    let mut body = json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": msgs,
        "stream": true,
    });
    if let Some(s) = system {
        body["system"] = json!(s);
    }
    if !tools.is_empty() {
        body["tools"] = tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect();
    }
    body
}

/// A tool call being assembled from fragments.
#[derive(Debug, Default)]
struct PartialCall {
    id: String,
    name: String,
    args: String,
    /// Anthropic's `input` from `content_block_start`, used when no fragment follows.
    initial: Option<Value>,
}

impl PartialCall {
    fn finish(self, index: u64) -> ToolCall {
        let raw = self.args.trim();
        let arguments = if raw.is_empty() {
            self.initial
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({}))
        } else {
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
        };
        ToolCall {
            id: if self.id.is_empty() {
                format!("call_{index}")
            } else {
                self.id
            },
            name: self.name,
            arguments,
        }
    }
}

/// Turns one API's SSE events into [`ModelEvent`]s.
///
/// Lifecycle: `new` → `feed` for each event (text is emitted as it comes, tool calls when
/// complete) → the end marker (`[DONE]` / `message_stop`) emits the usage and `Done` and makes
/// [`is_done`](Self::is_done) true → `finish` at end of input flushes what a stream that lost
/// only its end marker still owes.
#[derive(Debug)]
pub struct StreamDecoder {
    api: Api,
    /// Calls being assembled, by the provider's index (OpenAI's `tool_calls[].index`,
    /// Anthropic's content block index); ordered so they come out in the model's order.
    calls: BTreeMap<u64, PartialCall>,
    args_bytes: usize,
    usage: Option<Usage>,
    stop_reason: Option<String>,
    done: bool,
}

impl StreamDecoder {
    pub fn new(api: Api) -> StreamDecoder {
        StreamDecoder {
            api,
            calls: BTreeMap::new(),
            args_bytes: 0,
            usage: None,
            stop_reason: None,
            done: false,
        }
    }

    /// True once the provider's end marker has been seen (or `finish` completed the stream).
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn feed(&mut self, ev: &SseEvent) -> Result<Vec<ModelEvent>, ProviderError> {
        if self.done {
            return Ok(Vec::new());
        }
        match self.api {
            Api::OpenAiCompletions => self.feed_openai(ev),
            Api::AnthropicMessages => self.feed_anthropic(ev),
        }
    }

    /// Called at end of input. A stream that gave its stop reason but lost its end marker is
    /// completed; one that never got that far is left not done, for the caller to report.
    pub fn finish(&mut self) -> Vec<ModelEvent> {
        if self.done || self.stop_reason.is_none() {
            return Vec::new();
        }
        self.complete()
    }

    fn add_args(&mut self, index: u64, fragment: &str) -> Result<(), ProviderError> {
        self.args_bytes += fragment.len();
        if self.args_bytes > MAX_TOOL_ARGS {
            return Err(ProviderError::Decode(format!(
                "tool call arguments exceed {} MiB",
                MAX_TOOL_ARGS >> 20
            )));
        }
        self.calls.entry(index).or_default().args.push_str(fragment);
        Ok(())
    }

    fn flush_calls(&mut self) -> Vec<ModelEvent> {
        std::mem::take(&mut self.calls)
            .into_iter()
            .map(|(i, c)| ModelEvent::ToolCall(c.finish(i)))
            .collect()
    }

    fn complete(&mut self) -> Vec<ModelEvent> {
        let mut out = self.flush_calls();
        if let Some(u) = self.usage.take() {
            out.push(ModelEvent::Usage(u));
        }
        out.push(ModelEvent::Done {
            stop_reason: self
                .stop_reason
                .take()
                .unwrap_or_else(|| "unknown".to_string()),
        });
        self.done = true;
        out
    }

    fn feed_openai(&mut self, ev: &SseEvent) -> Result<Vec<ModelEvent>, ProviderError> {
        let data = ev.data.trim();
        if data == "[DONE]" {
            return Ok(self.complete());
        }
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|e| ProviderError::Decode(format!("openai chunk is not json: {e}")))?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            return Err(stream_error(err));
        }
        // vLLM and its kin: the error object is the chunk itself.
        if v["object"] == "error" {
            return Err(stream_error(&v));
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            let prompt = u["prompt_tokens"].as_u64().unwrap_or(0);
            let cached = u["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0);
            self.usage = Some(Usage {
                input: prompt.saturating_sub(cached),
                output: u["completion_tokens"].as_u64().unwrap_or(0),
                cache_read: cached,
                cache_write: 0,
            });
        }
        let mut out = Vec::new();
        // keel asks for one choice; any other is ignored.
        let choice = v["choices"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["index"].as_u64().unwrap_or(0) == 0));
        let Some(choice) = choice else {
            return Ok(out);
        };
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str()
            && !t.is_empty()
        {
            out.push(ModelEvent::Text(t.to_string()));
        }
        if let Some(calls) = delta["tool_calls"].as_array() {
            for (pos, c) in calls.iter().enumerate() {
                let index = c["index"].as_u64().unwrap_or(pos as u64);
                let f = &c["function"];
                // Some servers repeat the id and name in every fragment: set, never append.
                let entry = self.calls.entry(index).or_default();
                if let Some(id) = c["id"].as_str().filter(|s| !s.is_empty()) {
                    entry.id = id.to_string();
                }
                if let Some(name) = f["name"].as_str().filter(|s| !s.is_empty()) {
                    entry.name = name.to_string();
                }
                match &f["arguments"] {
                    Value::String(s) => self.add_args(index, s)?,
                    Value::Null => {}
                    // Non-standard servers that send the arguments as an object.
                    other => self.add_args(index, &other.to_string())?,
                }
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.stop_reason = Some(reason.to_string());
            out.extend(self.flush_calls());
        }
        Ok(out)
    }

    fn feed_anthropic(&mut self, ev: &SseEvent) -> Result<Vec<ModelEvent>, ProviderError> {
        if ev.data.trim().is_empty() {
            return Ok(Vec::new());
        }
        let v: Value = serde_json::from_str(&ev.data)
            .map_err(|e| ProviderError::Decode(format!("anthropic event is not json: {e}")))?;
        let kind = v["type"].as_str().or(ev.event.as_deref()).unwrap_or("");
        let index = v["index"].as_u64().unwrap_or(0);
        let mut out = Vec::new();
        match kind {
            "message_start" => {
                let u = &v["message"]["usage"];
                let n = |k: &str| u[k].as_u64().unwrap_or(0);
                self.usage = Some(Usage {
                    input: n("input_tokens"),
                    output: n("output_tokens"),
                    cache_read: n("cache_read_input_tokens"),
                    cache_write: n("cache_creation_input_tokens"),
                });
            }
            "content_block_start" => {
                let block = &v["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") => {
                        self.calls.insert(
                            index,
                            PartialCall {
                                id: block["id"].as_str().unwrap_or("").to_string(),
                                name: block["name"].as_str().unwrap_or("").to_string(),
                                args: String::new(),
                                initial: Some(block["input"].clone()),
                            },
                        );
                    }
                    Some("text") => {
                        if let Some(t) = block["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(ModelEvent::Text(t.to_string()));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = &v["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        if let Some(t) = delta["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(ModelEvent::Text(t.to_string()));
                        }
                    }
                    Some("input_json_delta") if self.calls.contains_key(&index) => {
                        let fragment = delta["partial_json"].as_str().unwrap_or("");
                        self.add_args(index, fragment)?;
                    }
                    // Thinking, signatures, citations: not part of what keel relays.
                    _ => {}
                }
            }
            "content_block_stop" => {
                if let Some(call) = self.calls.remove(&index) {
                    out.push(ModelEvent::ToolCall(call.finish(index)));
                }
            }
            "message_delta" => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(r.to_string());
                }
                // Counts here are cumulative: they replace what message_start said.
                let u = &v["usage"];
                let usage = self.usage.get_or_insert_with(Usage::default);
                let set = |field: &mut u64, k: &str| {
                    if let Some(n) = u[k].as_u64() {
                        *field = n;
                    }
                };
                set(&mut usage.output, "output_tokens");
                set(&mut usage.input, "input_tokens");
                set(&mut usage.cache_read, "cache_read_input_tokens");
                set(&mut usage.cache_write, "cache_creation_input_tokens");
            }
            "message_stop" => out = self.complete(),
            "error" => return Err(stream_error(&v["error"])),
            // `ping` and event types added later.
            _ => {}
        }
        Ok(out)
    }
}

/// An error object inside a stream (OpenAI's `error`, Anthropic's `error` event). A stream
/// that broke after it started is most often the provider's trouble, so unknown types count
/// as a server error.
fn stream_error(err: &Value) -> ProviderError {
    let info = ErrorInfo::from_error_object(err);
    let kind = match (info.kind.as_str(), info.code.as_str()) {
        (_, "model_not_found") => FailureKind::ModelNotFound,
        ("overloaded_error", _) => FailureKind::Overloaded,
        (_, "insufficient_quota") | ("insufficient_quota" | "billing_error", _) => {
            FailureKind::Billing
        }
        ("rate_limit_error" | "rate_limit_exceeded" | "tokens" | "requests", _)
        | (_, "rate_limit_exceeded") => FailureKind::RateLimit { retry_after: None },
        ("authentication_error", _) | (_, "invalid_api_key") => FailureKind::Auth,
        ("permission_error", _) => FailureKind::AuthPermanent,
        ("timeout_error", _) => FailureKind::Timeout,
        _ if info.says_context_overflow() => FailureKind::ContextOverflow,
        ("not_found_error", _) if info.names_missing_model() => FailureKind::ModelNotFound,
        ("invalid_request_error", _) => FailureKind::Format,
        _ => FailureKind::ServerError,
    };
    let message = if info.message.is_empty() {
        clip(&err.to_string())
    } else {
        clip(&info.message)
    };
    ProviderError::Stream { kind, message }
}

/// What an error body says, lowercased for matching.
struct ErrorInfo {
    /// `error.type` (both APIs).
    kind: String,
    /// `error.code` (OpenAI; a string or a number).
    code: String,
    /// The message as sent, for the user.
    message: String,
    /// The whole body (or object) lowercased: servers that copy an API rarely copy its error
    /// shape, so phrases are looked for everywhere.
    text: String,
}

impl ErrorInfo {
    fn from_body(body: &str) -> ErrorInfo {
        match serde_json::from_str::<Value>(body) {
            Ok(v) => {
                let mut info = match v.get("error") {
                    Some(e @ Value::Object(_)) => ErrorInfo::from_error_object(e),
                    // Ollama and others: `{"error": "model \"x\" not found"}`.
                    Some(Value::String(m)) => ErrorInfo::plain(m),
                    _ => ErrorInfo::plain(
                        v["message"].as_str().or(v["detail"].as_str()).unwrap_or(""),
                    ),
                };
                if info.kind.is_empty() {
                    info.kind = v["type"].as_str().unwrap_or("").to_ascii_lowercase();
                }
                info.text = body.to_lowercase();
                info
            }
            Err(_) => ErrorInfo {
                text: body.to_lowercase(),
                ..ErrorInfo::plain(&collapse_whitespace(body))
            },
        }
    }

    fn from_error_object(e: &Value) -> ErrorInfo {
        let code = match &e["code"] {
            Value::String(s) => s.to_ascii_lowercase(),
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        ErrorInfo {
            kind: e["type"].as_str().unwrap_or("").to_ascii_lowercase(),
            code,
            message: e["message"].as_str().unwrap_or("").to_string(),
            text: e.to_string().to_lowercase(),
        }
    }

    fn plain(message: &str) -> ErrorInfo {
        ErrorInfo {
            kind: String::new(),
            code: String::new(),
            message: message.to_string(),
            text: message.to_lowercase(),
        }
    }

    fn says_context_overflow(&self) -> bool {
        self.code == "context_length_exceeded"
            || [
                "context_length_exceeded",
                "context length",
                "context window",
                "context_window",
                "context limit",
                "context size",
                "exceed_context_size",
                "prompt is too long",
                "prompt too long",
                "input is too long",
                "reduce the length of the messages",
                "input token count",
            ]
            .iter()
            .any(|p| self.text.contains(p))
    }

    fn names_missing_model(&self) -> bool {
        if self.code == "model_not_found" || self.kind == "model_not_found" {
            return true;
        }
        // Anthropic: `not_found_error` with "model: <name>"; a wrong path says "Not Found".
        if self.kind == "not_found_error" {
            return self.message.to_lowercase().contains("model");
        }
        self.text.contains("model_not_found")
            || (self.text.contains("model")
                && [
                    "does not exist",
                    "not found",
                    "not_found",
                    "no such model",
                    "unknown model",
                    "invalid model",
                    "not a valid model",
                ]
                .iter()
                .any(|p| self.text.contains(p)))
    }

    fn says_billing(&self) -> bool {
        self.code == "insufficient_quota"
            || self.kind == "insufficient_quota"
            || self.kind == "billing_error"
            || [
                "insufficient_quota",
                "exceeded your current quota",
                "credit balance is too low",
            ]
            .iter()
            .any(|p| self.text.contains(p))
    }
}

/// Classifies a non-2xx answer. Beyond the status code, the body decides three things: a 404
/// or 400 naming a missing model is `ModelNotFound` (a 404 that names none means the base URL
/// is wrong); a 400 or 413 about the context length is `ContextOverflow`; a 429 or 400 about
/// quota or credit is `Billing` (OpenAI answers an empty account with 429
/// `insufficient_quota`, Anthropic with 400 "credit balance is too low"), since waiting will
/// not help. A 3xx means the base URL points somewhere that moved.
pub fn classify_status(status: u16, body: &str, retry_after_header: Option<&str>) -> FailureKind {
    let info = ErrorInfo::from_body(body);
    match status {
        401 => FailureKind::Auth,
        402 => FailureKind::Billing,
        403 => FailureKind::AuthPermanent,
        408 => FailureKind::Timeout,
        429 if info.says_billing() => FailureKind::Billing,
        429 => FailureKind::RateLimit {
            retry_after: retry_after_header.and_then(parse_retry_after),
        },
        404 if info.names_missing_model() => FailureKind::ModelNotFound,
        404 => FailureKind::ConfigError,
        400 if info.code == "model_not_found" => FailureKind::ModelNotFound,
        400 if info.says_context_overflow() => FailureKind::ContextOverflow,
        400 if info.names_missing_model() => FailureKind::ModelNotFound,
        400 if info.says_billing() => FailureKind::Billing,
        400 | 422 => FailureKind::Format,
        // Too large for the server is too long a conversation, whatever the body says.
        413 => FailureKind::ContextOverflow,
        503 | 529 => FailureKind::Overloaded,
        500..=599 => FailureKind::ServerError,
        300..=399 => FailureKind::ConfigError,
        _ => FailureKind::Other,
    }
}

/// `Retry-After` as delay-seconds (fractions tolerated) or an IMF-fixdate.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(1e9)));
    }
    let at = http_date_secs(v)?;
    let now = crate::clock::wall_ms() / 1000;
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the Unix epoch of `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date_secs(v: &str) -> Option<u64> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as u32 + 1;
    let day: u32 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let year: i64 = year.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = crate::clock::days_from_civil(year, month, day);
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3600 + m * 60 + s)
}

/// Transport failures as failover sees them: our limits are timeouts, a broken connection is
/// the server's trouble, a TLS or URL problem is configuration. Our own cancel is `Other`
/// here: whether a run was cancelled is the run's token to say, not the transfer's.
pub fn classify_net(e: &NetError) -> FailureKind {
    match e {
        NetError::Stalled | NetError::Deadline | NetError::ConnectTimeout => FailureKind::Timeout,
        NetError::Connect(_) | NetError::Reset | NetError::Io(_) | NetError::Protocol(_) => {
            FailureKind::ServerError
        }
        NetError::Tls(_) | NetError::InvalidUrl(_) => FailureKind::ConfigError,
        NetError::Cancelled | NetError::TooLarge | NetError::NotSent(_) => FailureKind::Other,
    }
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn clip(s: &str) -> String {
    let s = collapse_whitespace(s);
    match s.char_indices().nth(MESSAGE_LIMIT) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// `text` with every occurrence of `secret` replaced (secrets shorter than 4 bytes are left:
/// replacing them would mangle ordinary words).
fn redact(text: &str, secret: Option<&str>) -> String {
    match secret.filter(|s| s.len() >= 4) {
        Some(s) if text.contains(s) => text.replace(s, "<redacted>"),
        _ => text.to_string(),
    }
}

impl ProviderError {
    /// The same error with `secret` taken out of every message a provider could have echoed.
    fn redacted(self, secret: Option<&str>) -> ProviderError {
        match self {
            ProviderError::Http {
                status,
                kind,
                message,
            } => ProviderError::Http {
                status,
                kind,
                message: redact(&message, secret),
            },
            ProviderError::Stream { kind, message } => ProviderError::Stream {
                kind,
                message: redact(&message, secret),
            },
            ProviderError::Decode(m) => ProviderError::Decode(redact(&m, secret)),
            e @ ProviderError::Net(_) => e,
        }
    }
}

/// Sends one streamed turn and decodes it, calling `on_event` for each event as it arrives.
/// Returns every event on success. A non-2xx answer is classified from its status and the
/// first 64 KiB of its body. Providers echo API keys in their errors ("Incorrect API key
/// provided: sk-…"): the turn's key is taken out of every error message, so it never reaches
/// a log line, a run's result or a transcript.
pub fn call_streaming(
    turn: &Turn<'_>,
    limits: &Limits,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(&ModelEvent),
) -> Result<Vec<ModelEvent>, ProviderError> {
    call_streaming_raw(turn, limits, cancel, on_event).map_err(|e| e.redacted(turn.api_key))
}

fn call_streaming_raw(
    turn: &Turn<'_>,
    limits: &Limits,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(&ModelEvent),
) -> Result<Vec<ModelEvent>, ProviderError> {
    let req = build_request(turn);
    let mut resp = net::send(&req, limits, cancel)?;
    if !resp.is_success() {
        // The status decides even if the body cannot be read in time.
        let body = resp.read_up_to(ERROR_BODY_LIMIT).unwrap_or_default();
        // Redacted before the message is clipped, which could cut a key in two.
        let body = redact(&String::from_utf8_lossy(&body), turn.api_key);
        let kind = classify_status(resp.status, &body, resp.header("retry-after"));
        return Err(ProviderError::Http {
            status: resp.status,
            kind,
            message: clip(&ErrorInfo::from_body(&body).message),
        });
    }
    let content_type = resp.header("content-type").unwrap_or("").to_lowercase();
    if !content_type.is_empty() && !content_type.starts_with("text/event-stream") {
        // A proxy or a server that ignored `stream: true`; it may be carrying an error.
        let body = resp.read_up_to(ERROR_BODY_LIMIT)?;
        if let Ok(v) = serde_json::from_slice::<Value>(&body)
            && let Some(err) = v.get("error").filter(|e| e.is_object())
        {
            return Err(stream_error(err));
        }
        return Err(ProviderError::Decode(format!(
            "expected an event stream, got {content_type}"
        )));
    }
    let mut parser = SseParser::new();
    let mut decoder = StreamDecoder::new(turn.api);
    let mut all = Vec::new();
    let mut emit = |events: Vec<ModelEvent>, all: &mut Vec<ModelEvent>| {
        for e in events {
            on_event(&e);
            all.push(e);
        }
    };
    while !decoder.is_done() {
        let Some(chunk) = resp.next_chunk()? else {
            break;
        };
        for ev in parser.push(&chunk) {
            let events = decoder.feed(&ev)?;
            emit(events, &mut all);
            if decoder.is_done() {
                break;
            }
        }
        if parser.dropped() > 0 {
            return Err(ProviderError::Decode(
                "an event exceeded the 16 MiB limit".into(),
            ));
        }
    }
    emit(decoder.finish(), &mut all);
    if !decoder.is_done() {
        return Err(ProviderError::Stream {
            kind: FailureKind::ServerError,
            message: "the stream ended before the model finished".into(),
        });
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::sse::SseParser;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    fn sse(api: Api, raw: &str) -> Result<Vec<ModelEvent>, ProviderError> {
        let mut p = SseParser::new();
        let mut d = StreamDecoder::new(api);
        let mut out = Vec::new();
        // Byte by byte: nothing may depend on how the stream was cut.
        for b in raw.as_bytes() {
            for ev in p.push(&[*b]) {
                out.extend(d.feed(&ev)?);
            }
        }
        out.extend(d.finish());
        assert!(d.is_done(), "stream did not complete: {out:?}");
        Ok(out)
    }

    fn text(t: &str) -> ModelEvent {
        ModelEvent::Text(t.into())
    }

    fn done(r: &str) -> ModelEvent {
        ModelEvent::Done {
            stop_reason: r.into(),
        }
    }

    fn conversation() -> Vec<ChatMessage> {
        vec![
            ChatMessage::user("weather in Paris and Rome?"),
            ChatMessage::assistant(
                "",
                vec![
                    ToolCall {
                        id: "call_1".into(),
                        name: "get_weather".into(),
                        arguments: json!({"city": "Paris"}),
                    },
                    ToolCall {
                        id: "call_2".into(),
                        name: "get_weather".into(),
                        arguments: json!({"city": "Rome"}),
                    },
                ],
            ),
            ChatMessage::tool_result("call_1", "18C"),
            ChatMessage::tool_result("call_2", "24C"),
            ChatMessage::assistant("Paris 18C, Rome 24C.", vec![]),
            ChatMessage::user("thanks"),
        ]
    }

    fn tools() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "get_weather".into(),
            description: "Current weather".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        }]
    }

    fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
        req.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn parses_api_names() {
        assert_eq!(
            Api::parse("openai-completions"),
            Some(Api::OpenAiCompletions)
        );
        assert_eq!(
            Api::parse("anthropic-messages"),
            Some(Api::AnthropicMessages)
        );
        assert_eq!(Api::parse("openai-responses"), None);
        assert_eq!(Api::AnthropicMessages.as_str(), "anthropic-messages");
    }

    #[test]
    fn openai_request_wire_format() {
        let base = Url::parse("http://127.0.0.1:8080/v1/").unwrap();
        let req = build_request(&Turn {
            api: Api::OpenAiCompletions,
            base_url: &base,
            api_key: Some("sk-test"),
            model: "gpt-4o",
            system: Some("be brief"),
            messages: &conversation(),
            tools: &tools(),
            max_tokens: 256,
        });
        assert_eq!(req.method, "POST");
        assert_eq!(
            req.url.to_string(),
            "http://127.0.0.1:8080/v1/chat/completions"
        );
        assert_eq!(header(&req, "authorization"), Some("Bearer sk-test"));
        assert_eq!(header(&req, "accept"), Some("text/event-stream"));
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o",
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_tokens": 256,
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "weather in Paris and Rome?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}},
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                    {"role": "tool", "tool_call_id": "call_2", "content": "24C"},
                    {"role": "assistant", "content": "Paris 18C, Rome 24C."},
                    {"role": "user", "content": "thanks"},
                ],
                "tools": [{"type": "function", "function": {
                    "name": "get_weather",
                    "description": "Current weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                }}],
            })
        );
        let bare = build_request(&Turn {
            api: Api::OpenAiCompletions,
            base_url: &base,
            api_key: None,
            model: "m",
            system: None,
            messages: &[ChatMessage::user("hi")],
            tools: &[],
            max_tokens: 0,
        });
        let body: Value = serde_json::from_slice(&bare.body).unwrap();
        assert!(body.get("max_tokens").is_none() && body.get("tools").is_none());
        assert_eq!(header(&bare, "authorization"), None);
    }

    #[test]
    fn anthropic_request_wire_format() {
        for (base, url) in [
            (
                "https://api.anthropic.com",
                "https://api.anthropic.com/v1/messages",
            ),
            (
                "https://api.anthropic.com/v1",
                "https://api.anthropic.com/v1/messages",
            ),
            (
                "http://127.0.0.1:9/proxy/v1/",
                "http://127.0.0.1:9/proxy/v1/messages",
            ),
            (
                "http://127.0.0.1:9/v10",
                "http://127.0.0.1:9/v10/v1/messages",
            ),
        ] {
            let req = build_request(&Turn {
                api: Api::AnthropicMessages,
                base_url: &Url::parse(base).unwrap(),
                api_key: Some("k"),
                model: "m",
                system: None,
                messages: &[ChatMessage::user("hi")],
                tools: &[],
                max_tokens: 0,
            });
            assert_eq!(req.url.to_string(), url);
        }
        let req = build_request(&Turn {
            api: Api::AnthropicMessages,
            base_url: &Url::parse("https://api.anthropic.com").unwrap(),
            api_key: Some("sk-ant-test"),
            model: "claude-sonnet-4-5",
            system: Some("be brief"),
            messages: &conversation(),
            tools: &tools(),
            max_tokens: 1024,
        });
        assert_eq!(header(&req, "x-api-key"), Some("sk-ant-test"));
        assert_eq!(header(&req, "anthropic-version"), Some("2023-06-01"));
        assert_eq!(header(&req, "authorization"), None);
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "stream": true,
                "system": "be brief",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "weather in Paris and Rome?"}]},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": "24C"},
                    ]},
                    {"role": "assistant", "content": [{"type": "text", "text": "Paris 18C, Rome 24C."}]},
                    {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
                ],
                "tools": [{
                    "name": "get_weather",
                    "description": "Current weather",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                }],
            })
        );
    }

    const OPENAI_TEXT: &str = concat!(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo ü\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":3,\"total_tokens\":1203,\"prompt_tokens_details\":{\"cached_tokens\":1024,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn openai_text_stream_with_cached_usage() {
        assert_eq!(
            sse(Api::OpenAiCompletions, OPENAI_TEXT).unwrap(),
            vec![
                text("Hel"),
                text("lo ü"),
                ModelEvent::Usage(Usage {
                    input: 176,
                    output: 3,
                    cache_read: 1024,
                    cache_write: 0
                }),
                done("stop"),
            ]
        );
    }

    #[test]
    fn openai_tool_calls_from_fragments() {
        let raw = concat!(
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Checking.\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_abc\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"ci\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_def\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ty\\\": \\\"Par\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"is\\\"}\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":20,\"total_tokens\":70}}\n\n",
            "data: [DONE]\n\n",
        );
        assert_eq!(
            sse(Api::OpenAiCompletions, raw).unwrap(),
            vec![
                text("Checking."),
                ModelEvent::ToolCall(ToolCall {
                    id: "call_abc".into(),
                    name: "get_weather".into(),
                    arguments: json!({"city": "Paris"}),
                }),
                ModelEvent::ToolCall(ToolCall {
                    id: "call_def".into(),
                    name: "get_time".into(),
                    arguments: json!({}),
                }),
                ModelEvent::Usage(Usage {
                    input: 50,
                    output: 20,
                    cache_read: 0,
                    cache_write: 0
                }),
                done("tool_calls"),
            ]
        );
    }

    #[test]
    fn openai_stream_errors_and_truncation() {
        let raw = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n\
                   data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";
        let err = sse(Api::OpenAiCompletions, raw).unwrap_err();
        assert!(
            matches!(&err, ProviderError::Stream { kind: FailureKind::ServerError, message } if message.contains("server had an error")),
            "{err:?}"
        );
        let raw = "data: {\"error\":{\"message\":\"Rate limit reached for gpt-4o\",\"type\":\"tokens\",\"code\":\"rate_limit_exceeded\"}}\n\n";
        assert_eq!(
            sse(Api::OpenAiCompletions, raw).unwrap_err().kind(),
            FailureKind::RateLimit { retry_after: None }
        );
        let raw = "data: {\"object\":\"error\",\"message\":\"This model's maximum context length is 4096 tokens.\",\"type\":\"BadRequestError\",\"param\":null,\"code\":400}\n\n";
        assert_eq!(
            sse(Api::OpenAiCompletions, raw).unwrap_err().kind(),
            FailureKind::ContextOverflow
        );
        let err = sse(Api::OpenAiCompletions, "data: {not json\n\n").unwrap_err();
        assert!(matches!(err, ProviderError::Decode(_)), "{err:?}");
        // Lost `[DONE]` after the finish reason: complete. Lost before it: not done.
        let mut d = StreamDecoder::new(Api::OpenAiCompletions);
        let ev = SseEvent {
            event: None,
            data:
                "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":null}]}"
                    .into(),
        };
        assert_eq!(d.feed(&ev).unwrap(), vec![text("x")]);
        assert!(d.finish().is_empty() && !d.is_done());
        let ev = SseEvent {
            event: None,
            data: "{\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}".into(),
        };
        assert!(d.feed(&ev).unwrap().is_empty());
        assert_eq!(d.finish(), vec![done("length")]);
        assert!(d.is_done());
    }

    const ANTHROPIC_TOOL: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,\"output_tokens\":2}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me check\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" the weather.\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01A\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"San Fra\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ncisco, CA\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn anthropic_text_and_tool_use_with_usage() {
        assert_eq!(
            sse(Api::AnthropicMessages, ANTHROPIC_TOOL).unwrap(),
            vec![
                text("Let me check"),
                text(" the weather."),
                ModelEvent::ToolCall(ToolCall {
                    id: "toolu_01A".into(),
                    name: "get_weather".into(),
                    arguments: json!({"location": "San Francisco, CA"}),
                }),
                ModelEvent::Usage(Usage {
                    input: 472,
                    output: 89,
                    cache_read: 2000,
                    cache_write: 100
                }),
                done("tool_use"),
            ]
        );
    }

    #[test]
    fn anthropic_text_only_with_thinking_ignored() {
        let raw = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_02\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"abc\"}}\n\n",
            "event: content_block_stop\n",
            "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi!\"}}\n\n",
            "event: content_block_stop\n",
            "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        assert_eq!(
            sse(Api::AnthropicMessages, raw).unwrap(),
            vec![
                text("Hi!"),
                ModelEvent::Usage(Usage {
                    input: 10,
                    output: 15,
                    cache_read: 0,
                    cache_write: 0
                }),
                done("end_turn"),
            ]
        );
    }

    #[test]
    fn anthropic_error_event() {
        let raw = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10}}}\n\n",
            "event: error\n",
            "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        assert_eq!(
            sse(Api::AnthropicMessages, raw).unwrap_err(),
            ProviderError::Stream {
                kind: FailureKind::Overloaded,
                message: "Overloaded".into()
            }
        );
    }

    #[test]
    fn classifies_statuses_from_realistic_bodies() {
        let c = |status, body: &str| classify_status(status, body, None);
        use FailureKind::*;
        // OpenAI
        assert_eq!(
            c(
                401,
                r#"{"error":{"message":"Incorrect API key provided: sk-abc. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#
            ),
            Auth
        );
        assert_eq!(
            c(
                404,
                r#"{"error":{"message":"The model `gpt-9` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#
            ),
            ModelNotFound
        );
        assert_eq!(
            c(
                400,
                r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130412 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#
            ),
            ContextOverflow
        );
        assert_eq!(
            c(
                429,
                r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#
            ),
            Billing
        );
        assert_eq!(
            c(
                429,
                r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29000, Requested 2000.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#
            ),
            RateLimit { retry_after: None }
        );
        assert_eq!(
            c(
                400,
                r#"{"error":{"message":"Invalid value for 'messages[1].role': 'bot'","type":"invalid_request_error","param":"messages[1].role","code":null}}"#
            ),
            Format
        );
        assert_eq!(
            c(
                500,
                r#"{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error"}}"#
            ),
            ServerError
        );
        assert_eq!(c(503, "Service Unavailable"), Overloaded);
        // Anthropic
        assert_eq!(
            c(
                401,
                r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#
            ),
            Auth
        );
        assert_eq!(
            c(
                403,
                r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}"#
            ),
            AuthPermanent
        );
        assert_eq!(
            c(
                404,
                r#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-9"},"request_id":"req_1"}"#
            ),
            ModelNotFound
        );
        assert_eq!(
            c(
                404,
                r#"{"type":"error","error":{"type":"not_found_error","message":"Not Found"}}"#
            ),
            ConfigError
        );
        assert_eq!(
            c(
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"}}"#
            ),
            ContextOverflow
        );
        assert_eq!(
            c(
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"input length and `max_tokens` exceed context limit: 197000 + 8192 > 200000, decrease input length or `max_tokens` and try again"}}"#
            ),
            ContextOverflow
        );
        assert_eq!(
            c(
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#
            ),
            Billing
        );
        assert_eq!(
            c(
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages.1.content.0.tool_result: unexpected `tool_use_id` found"}}"#
            ),
            Format
        );
        assert_eq!(
            c(
                413,
                r#"{"type":"error","error":{"type":"request_too_large","message":"Request exceeds the maximum allowed number of bytes."}}"#
            ),
            ContextOverflow
        );
        assert_eq!(
            c(
                529,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            Overloaded
        );
        assert_eq!(
            c(
                500,
                r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#
            ),
            ServerError
        );
        // Servers that copy the APIs
        assert_eq!(
            c(
                404,
                r#"{"error":"model \"llama9\" not found, try pulling it first"}"#
            ),
            ModelNotFound
        );
        assert_eq!(
            c(
                404,
                r#"{"object":"error","message":"The model `qwen` does not exist.","type":"NotFoundError","param":null,"code":404}"#
            ),
            ModelNotFound
        );
        assert_eq!(
            c(
                400,
                r#"{"error":{"message":"foo/bar is not a valid model ID","code":400}}"#
            ),
            ModelNotFound
        );
        assert_eq!(
            c(
                400,
                r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error"}}"#
            ),
            ContextOverflow
        );
        assert_eq!(c(404, "404 page not found"), ConfigError);
        assert_eq!(
            c(404, "<html><body><h1>Not Found</h1></body></html>"),
            ConfigError
        );
        assert_eq!(c(404, ""), ConfigError);
        // The rest of the table
        assert_eq!(c(402, ""), Billing);
        assert_eq!(c(408, ""), Timeout);
        assert_eq!(
            c(
                422,
                r#"{"detail":[{"loc":["body","messages"],"msg":"field required"}]}"#
            ),
            Format
        );
        assert_eq!(c(502, "Bad Gateway"), ServerError);
        assert_eq!(c(504, "Gateway Timeout"), ServerError);
        assert_eq!(c(301, ""), ConfigError);
        assert_eq!(c(409, ""), Other);
    }

    #[test]
    fn honours_retry_after() {
        let r = |h| classify_status(429, "{}", Some(h));
        let secs = |s| FailureKind::RateLimit {
            retry_after: Some(Duration::from_secs(s)),
        };
        assert_eq!(r("7"), secs(7));
        assert_eq!(r(" 0 "), secs(0));
        assert_eq!(
            r("1.5"),
            FailureKind::RateLimit {
                retry_after: Some(Duration::from_millis(1500))
            }
        );
        assert_eq!(r("soon"), FailureKind::RateLimit { retry_after: None });
        assert_eq!(r("-3"), FailureKind::RateLimit { retry_after: None });
        assert_eq!(
            r("Sun, 06 Nov 1994 08:49:37 GMT"),
            secs(0),
            "a past date means now"
        );
        assert_eq!(
            http_date_secs("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784111777)
        );
        let later = crate::clock::wall_ms() / 1000 + 120;
        let (y, m, d) = crate::clock::civil_from_days((later / 86_400) as i64);
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let t = later % 86_400;
        let date = format!(
            "Mon, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
            months[m as usize - 1],
            t / 3600,
            t / 60 % 60,
            t % 60
        );
        match r(&date) {
            FailureKind::RateLimit {
                retry_after: Some(d),
            } => assert!((118..=120).contains(&d.as_secs()), "{d:?} from {date}"),
            k => panic!("{k:?} from {date}"),
        }
    }

    #[test]
    fn classifies_transport_failures() {
        use FailureKind::*;
        assert_eq!(classify_net(&NetError::Stalled), Timeout);
        assert_eq!(classify_net(&NetError::Deadline), Timeout);
        assert_eq!(classify_net(&NetError::ConnectTimeout), Timeout);
        assert_eq!(classify_net(&NetError::Reset), ServerError);
        assert_eq!(classify_net(&NetError::Connect("h:1".into())), ServerError);
        assert_eq!(classify_net(&NetError::Io("h:1".into())), ServerError);
        assert_eq!(classify_net(&NetError::Tls("h:1".into())), ConfigError);
        assert_eq!(classify_net(&NetError::Cancelled), Other);
    }

    #[test]
    fn error_messages_are_short_and_lowercase_led() {
        let long = format!("{{\"error\":{{\"message\":\"{}\"}}}}", "x".repeat(5000));
        let m = clip(&ErrorInfo::from_body(&long).message);
        assert!(m.chars().count() <= MESSAGE_LIMIT + 1, "{}", m.len());
        let e = ProviderError::Http {
            status: 404,
            kind: FailureKind::ModelNotFound,
            message: "model: claude-9".into(),
        };
        assert_eq!(
            e.to_string(),
            "provider answered http 404 (model_not_found): model: claude-9"
        );
        let e = ProviderError::Http {
            status: 429,
            kind: FailureKind::RateLimit {
                retry_after: Some(Duration::from_secs(7)),
            },
            message: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "provider answered http 429 (rate_limit (retry after 7 s))"
        );
    }

    /// One-connection server answering with `answer` after reading the request.
    fn serve_once(answer: Vec<u8>) -> (Url, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!(
            "http://127.0.0.1:{}/v1",
            listener.local_addr().unwrap().port()
        ))
        .unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let req = read_request(&mut s);
            let _ = s.write_all(&answer);
            let _ = s.shutdown(std::net::Shutdown::Write);
            // Let the client close first.
            let mut b = [0u8; 16];
            while matches!(s.read(&mut b), Ok(n) if n > 0) {}
            req
        });
        (url, h)
    }

    fn read_request(s: &mut TcpStream) -> Vec<u8> {
        let mut req = Vec::new();
        let mut tmp = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&req).to_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if req.len() >= end + 4 + len {
                    return req;
                }
            }
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return req,
                Ok(n) => req.extend_from_slice(&tmp[..n]),
            }
        }
    }

    fn limits() -> Limits {
        Limits::from_now(
            Duration::from_secs(5),
            Duration::from_secs(2),
            Duration::from_secs(2),
        )
    }

    #[test]
    fn call_streaming_against_a_local_server() {
        let mut answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in OPENAI_TEXT.as_bytes().chunks(37) {
            answer.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            answer.extend_from_slice(piece);
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        let (url, server) = serve_once(answer);
        let t = Instant::now();
        let mut seen = Vec::new();
        let events = call_streaming(
            &Turn {
                api: Api::OpenAiCompletions,
                base_url: &url,
                api_key: Some("sk-local"),
                model: "gpt-4o",
                system: None,
                messages: &[ChatMessage::user("hi")],
                tools: &[],
                max_tokens: 0,
            },
            &limits(),
            &CancelToken::new(),
            &mut |e| seen.push(e.clone()),
        )
        .unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(events, seen);
        assert_eq!(events.first(), Some(&text("Hel")));
        assert_eq!(events.last(), Some(&done("stop")));
        let req = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(
            req.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(
            req.contains("\r\nAuthorization: Bearer sk-local\r\n"),
            "{req}"
        );
    }

    #[test]
    fn call_streaming_classifies_a_rate_limit() {
        let body = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#;
        let answer = format!(
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 7\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (url, server) = serve_once(answer.into_bytes());
        let err = call_streaming(
            &Turn {
                api: Api::AnthropicMessages,
                base_url: &url,
                api_key: Some("k"),
                model: "claude",
                system: None,
                messages: &[ChatMessage::user("hi")],
                tools: &[],
                max_tokens: 0,
            },
            &limits(),
            &CancelToken::new(),
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(
            err,
            ProviderError::Http {
                status: 429,
                kind: FailureKind::RateLimit {
                    retry_after: Some(Duration::from_secs(7))
                },
                message: "Number of request tokens has exceeded your per-minute rate limit".into(),
            }
        );
        let req = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(req.starts_with("POST /v1/messages HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nx-api-key: k\r\n"), "{req}");
    }

    #[test]
    fn call_streaming_reports_a_truncated_stream() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"}}]}\n\n".to_vec();
        let (url, _server) = serve_once(answer);
        let mut seen = Vec::new();
        let err = call_streaming(
            &Turn {
                api: Api::OpenAiCompletions,
                base_url: &url,
                api_key: None,
                model: "m",
                system: None,
                messages: &[ChatMessage::user("hi")],
                tools: &[],
                max_tokens: 0,
            },
            &limits(),
            &CancelToken::new(),
            &mut |e| seen.push(e.clone()),
        )
        .unwrap_err();
        assert_eq!(seen, vec![text("par")]);
        assert_eq!(err.kind(), FailureKind::ServerError);
        assert!(matches!(err, ProviderError::Stream { .. }), "{err:?}");
    }
}
