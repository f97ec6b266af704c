//! Agent-run settings from OpenClaw's config keys: `models.providers.<id>` (where and how to
//! call a provider), `agents.defaults` / `agents.list` (which models, in which order, for how
//! long) and `tools.commands` (operator-defined command tools).
//!
//! A bad provider disables that provider (runs that need it fail over past it, naming the
//! reason); a bad model chain disables runs of the agents that use it; the gateway starts.
//! API keys never appear in `Debug` output, logs, dumps or `status`.

use crate::ids::AgentId;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(120_000);
pub const DEFAULT_STALL: Duration = Duration::from_millis(60_000);
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// One provider, as `models.providers.<id>` describes it.
#[derive(Clone, PartialEq)]
pub struct ProviderSettings {
    pub id: String,
    pub base_url: String,
    pub api_key: Option<String>,
    /// `openai-completions` or `anthropic-messages`.
    pub api: String,
    pub timeout: Duration,
    pub stall: Duration,
    /// Model id → max output tokens (when configured).
    pub max_tokens: BTreeMap<String, u32>,
    /// `models[]` as listed, for the model lists clients show (`models.list`).
    pub models: Vec<ModelInfo>,
}

/// One entry of `models.providers.<id>.models[]`: what a model picker shows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub id: String,
    pub name: Option<String>,
    /// `contextWindow` (tokens).
    pub context_window: Option<u64>,
    pub reasoning: Option<bool>,
}

impl fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("id", &self.id)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api", &self.api)
            .field("timeout", &self.timeout)
            .field("stall", &self.stall)
            .finish()
    }
}

/// `provider/model`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelRef {
    pub provider: String,
    pub model: String,
}

impl ModelRef {
    pub fn parse(s: &str) -> Option<ModelRef> {
        let (p, m) = s.split_once('/')?;
        (!p.is_empty() && !m.is_empty()).then(|| ModelRef {
            provider: p.to_string(),
            model: m.to_string(),
        })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

/// The candidates of a run, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelChain {
    pub primary: Option<ModelRef>,
    pub fallbacks: Vec<ModelRef>,
}

impl ModelChain {
    pub fn candidates(&self) -> Vec<ModelRef> {
        self.primary
            .iter()
            .chain(&self.fallbacks)
            .cloned()
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentEntry {
    /// Normalized as every agent id is (`ids::AgentId`): the name of its directory.
    pub id: AgentId,
    pub default: bool,
    pub model: Option<ModelChain>,
    pub system: Option<String>,
    /// Channels the agent is bound to, as (channel, to): where its replies go when the request
    /// that caused them came with no channel of its own (a fallback only).
    pub bindings: Vec<(String, String)>,
}

/// An operator-defined command tool (`tools.commands[]`).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandTool {
    pub name: String,
    pub description: String,
    /// JSON schema of the arguments.
    pub parameters: Value,
    /// The program and its arguments; `{{name}}` is replaced by the argument `name`.
    pub argv: Vec<String>,
    pub timeout: Duration,
    /// Bytes of output kept (stdout and stderr together).
    pub max_output: usize,
    /// `allowOptionArgs`: a substituted value may start an argument with `-` (off: such a
    /// call is refused, so a model cannot turn a value into an option).
    pub allow_option_args: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentSettings {
    pub providers: BTreeMap<String, ProviderSettings>,
    pub defaults: ModelChain,
    pub run_timeout: Duration,
    pub agents: Vec<AgentEntry>,
    pub tools: Vec<CommandTool>,
}

impl AgentSettings {
    /// The agent a run belongs to: the listed one, else the default entry, else `main`.
    pub fn agent(&self, id: &AgentId) -> Option<&AgentEntry> {
        self.agents.iter().find(|a| &a.id == id)
    }

    pub fn default_agent_id(&self) -> AgentId {
        self.agents
            .iter()
            .find(|a| a.default)
            .or(self.agents.first())
            .map_or_else(AgentId::main, |a| a.id.clone())
    }

    /// Whether `id` is an agent this config knows: a listed one, or the default.
    pub fn knows(&self, id: &AgentId) -> bool {
        self.agent(id).is_some() || *id == self.default_agent_id()
    }

    /// The model chain of an agent: its own, else the defaults.
    pub fn chain(&self, agent_id: &AgentId) -> ModelChain {
        self.agent(agent_id)
            .and_then(|a| a.model.clone())
            .unwrap_or_else(|| self.defaults.clone())
    }
}

/// Something wrong with these settings: the path of the feature it disables, and why.
pub type Issue = (String, String);

fn ms(v: &Value, path: &str, default: Duration, issues: &mut Vec<Issue>) -> Duration {
    match v {
        Value::Null => default,
        _ => match v.as_u64() {
            Some(n) if (100..=3_600_000).contains(&n) => Duration::from_millis(n),
            _ => {
                issues.push((
                    path.to_string(),
                    format!("expected milliseconds in 100..=3600000, got {v}"),
                ));
                default
            }
        },
    }
}

/// `${NAME}` takes the key from the environment, so it need not sit in the file.
fn secret(v: &str) -> Option<String> {
    match v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        Some(name) => std::env::var(name).ok().filter(|s| !s.is_empty()),
        None => Some(v.to_string()).filter(|s| !s.is_empty()),
    }
}

fn chain(v: &Value, path: &str, issues: &mut Vec<Issue>) -> Option<ModelChain> {
    let bad_ref = |s: &str, issues: &mut Vec<Issue>| {
        issues.push((
            path.to_string(),
            format!("{s:?} is not a \"provider/model\" reference"),
        ));
    };
    match v {
        Value::Null => None,
        Value::String(s) => match ModelRef::parse(s) {
            Some(r) => Some(ModelChain {
                primary: Some(r),
                fallbacks: Vec::new(),
            }),
            None => {
                bad_ref(s, issues);
                None
            }
        },
        Value::Object(m) => {
            let primary = match m.get("primary") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => match ModelRef::parse(s) {
                    Some(r) => Some(r),
                    None => {
                        bad_ref(s, issues);
                        return None;
                    }
                },
                Some(other) => {
                    issues.push((
                        path.to_string(),
                        format!("primary must be a string, got {other}"),
                    ));
                    return None;
                }
            };
            let mut fallbacks = Vec::new();
            match m.get("fallbacks") {
                None | Some(Value::Null) => {}
                Some(Value::Array(a)) => {
                    for f in a {
                        match f.as_str().and_then(ModelRef::parse) {
                            Some(r) => fallbacks.push(r),
                            None => {
                                bad_ref(&f.to_string(), issues);
                                return None;
                            }
                        }
                    }
                }
                Some(other) => {
                    issues.push((
                        path.to_string(),
                        format!("fallbacks must be an array, got {other}"),
                    ));
                    return None;
                }
            }
            Some(ModelChain { primary, fallbacks })
        }
        other => {
            issues.push((
                path.to_string(),
                format!("expected \"provider/model\" or {{primary, fallbacks}}, got {other}"),
            ));
            None
        }
    }
}

fn providers(
    models: Option<&Value>,
    issues: &mut Vec<Issue>,
) -> BTreeMap<String, ProviderSettings> {
    let mut out = BTreeMap::new();
    let Some(Value::Object(ps)) = models.and_then(|m| m.get("providers")) else {
        return out;
    };
    for (id, p) in ps {
        let path = format!("models.providers.{id}");
        let Value::Object(p) = p else {
            issues.push((path, "expected an object".into()));
            continue;
        };
        let Some(base_url) = p
            .get("baseUrl")
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        else {
            issues.push((
                format!("{path}.baseUrl"),
                "needs an http:// or https:// URL".into(),
            ));
            continue;
        };
        // An API key must not cross a network in clear text: plain http only to this machine,
        // unless the operator says the network is theirs (a LAN model server).
        let insecure_ok = p
            .get("allowInsecureHttp")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if base_url.starts_with("http://") && !insecure_ok && !is_loopback_url(base_url) {
            issues.push((
                format!("{path}.baseUrl"),
                format!("{base_url} is plain http to another host; use https, or set allowInsecureHttp: true for a trusted network"),
            ));
            continue;
        }
        let api = p
            .get("api")
            .and_then(Value::as_str)
            .unwrap_or("openai-completions");
        if !matches!(api, "openai-completions" | "anthropic-messages") {
            issues.push((
                format!("{path}.api"),
                format!("expected \"openai-completions\" or \"anthropic-messages\", got {api:?}"),
            ));
            continue;
        }
        let max_tokens = p
            .get("models")
            .and_then(Value::as_array)
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| {
                        Some((
                            m.get("id")?.as_str()?.to_string(),
                            u32::try_from(m.get("maxTokens")?.as_u64()?).ok()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let models = p
            .get("models")
            .and_then(Value::as_array)
            .map(|ms| ms.iter().filter_map(model_info).collect())
            .unwrap_or_default();
        out.insert(
            id.clone(),
            ProviderSettings {
                id: id.clone(),
                base_url: base_url.trim_end_matches('/').to_string(),
                api_key: p.get("apiKey").and_then(Value::as_str).and_then(secret),
                api: api.to_string(),
                timeout: ms(
                    p.get("timeoutMs").unwrap_or(&Value::Null),
                    &format!("{path}.timeoutMs"),
                    DEFAULT_CALL_TIMEOUT,
                    issues,
                ),
                stall: ms(
                    p.get("stallMs").unwrap_or(&Value::Null),
                    &format!("{path}.stallMs"),
                    DEFAULT_STALL,
                    issues,
                ),
                max_tokens,
                models,
            },
        );
    }
    out
}

/// A `models[]` entry with a non-empty string `id`; other fields of the wrong type are left
/// out (the model still runs: only `id` is needed to call it).
fn model_info(m: &Value) -> Option<ModelInfo> {
    let id = m.get("id")?.as_str().filter(|s| !s.is_empty())?;
    Some(ModelInfo {
        id: id.to_string(),
        name: m
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from),
        context_window: m.get("contextWindow").and_then(Value::as_u64),
        reasoning: m.get("reasoning").and_then(Value::as_bool),
    })
}

/// Does `http://host[:port]/...` name this machine?
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn command_tools(tools: Option<&Value>, issues: &mut Vec<Issue>) -> Vec<CommandTool> {
    let Some(list) = tools.and_then(|t| t.get("commands")) else {
        return Vec::new();
    };
    let Some(list) = list.as_array() else {
        issues.push(("tools.commands".into(), "expected an array".into()));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let path = format!("tools.commands[{i}]");
        let name = t.get("name").and_then(Value::as_str).filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
        let argv: Option<Vec<String>> = t
            .get("argv")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|s| s.as_str().map(String::from)).collect());
        let (Some(name), Some(argv)) = (name, argv.filter(|a| !a.is_empty())) else {
            issues.push((
                path,
                "needs a name ([A-Za-z0-9_-]+) and a non-empty argv of strings".into(),
            ));
            continue;
        };
        if name == "sessions_spawn" {
            issues.push((path, "sessions_spawn is built in".into()));
            continue;
        }
        // The safe side is the default: a bad value keeps it.
        let allow_option_args = match t.get("allowOptionArgs") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                issues.push((
                    format!("{path}.allowOptionArgs"),
                    format!("expected true or false, got {other}"),
                ));
                false
            }
        };
        out.push(CommandTool {
            name: name.to_string(),
            description: t
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            parameters: t
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
            argv,
            timeout: ms(
                t.get("timeoutMs").unwrap_or(&Value::Null),
                &format!("tools.commands[{i}].timeoutMs"),
                Duration::from_secs(30),
                issues,
            ),
            max_output: t
                .get("maxOutputBytes")
                .and_then(Value::as_u64)
                .map_or(64 << 10, |n| n.clamp(1024, 16 << 20) as usize),
            allow_option_args,
        });
    }
    out
}

/// Reads the settings from the config's root object.
pub fn parse(root: &Map<String, Value>) -> (AgentSettings, Vec<Issue>) {
    let mut issues = Vec::new();
    let providers = providers(root.get("models"), &mut issues);
    let agents_v = root.get("agents");
    let defaults = agents_v.and_then(|a| a.get("defaults"));
    let default_chain = defaults
        .and_then(|d| d.get("model"))
        .and_then(|m| chain(m, "agents.defaults.model", &mut issues))
        .unwrap_or_default();
    let run_timeout = match defaults.and_then(|d| d.get("timeoutSeconds")) {
        None | Some(Value::Null) => DEFAULT_RUN_TIMEOUT,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=86_400).contains(&n) => Duration::from_secs(n),
            _ => {
                issues.push((
                    "agents.defaults.timeoutSeconds".into(),
                    format!("expected seconds in 1..=86400, got {v}"),
                ));
                DEFAULT_RUN_TIMEOUT
            }
        },
    };
    let mut agents = Vec::new();
    if let Some(list) = agents_v.and_then(|a| a.get("list")) {
        match list.as_array() {
            Some(list) => {
                for (i, a) in list.iter().enumerate() {
                    let Some(raw) = a
                        .get("id")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                    else {
                        issues.push((format!("agents.list[{i}]"), "needs an id".into()));
                        continue;
                    };
                    // The id names a directory: it is normalized as OpenClaw does, and one
                    // that normalizes to nothing is refused.
                    let id = match AgentId::normalize(raw) {
                        Ok(id) => id,
                        Err(e) => {
                            issues.push((format!("agents.list[{i}].id"), e.to_string()));
                            continue;
                        }
                    };
                    agents.push(AgentEntry {
                        id,
                        default: a.get("default").and_then(Value::as_bool).unwrap_or(false),
                        model: a.get("model").and_then(|m| {
                            chain(m, &format!("agents.list[{i}].model"), &mut issues)
                        }),
                        system: a
                            .get("systemPrompt")
                            .and_then(Value::as_str)
                            .map(String::from),
                        bindings: a
                            .get("bindings")
                            .and_then(Value::as_array)
                            .map(|bs| {
                                bs.iter()
                                    .filter_map(|b| {
                                        Some((
                                            b.get("channel")?.as_str()?.to_string(),
                                            b.get("to")?.as_str()?.to_string(),
                                        ))
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    });
                }
            }
            None => issues.push(("agents.list".into(), "expected an array".into())),
        }
    }
    // Every reference must name a configured provider.
    let check = |c: &ModelChain, path: &str, issues: &mut Vec<Issue>| {
        for r in c.candidates() {
            if !providers.contains_key(&r.provider) {
                issues.push((
                    path.to_string(),
                    format!("{r}: no provider {:?} in models.providers", r.provider),
                ));
            }
        }
    };
    check(&default_chain, "agents.defaults.model", &mut issues);
    for (i, a) in agents.iter().enumerate() {
        if let Some(c) = &a.model {
            check(c, &format!("agents.list[{i}].model"), &mut issues);
        }
    }
    let tools = command_tools(root.get("tools"), &mut issues);
    (
        AgentSettings {
            providers,
            defaults: default_chain,
            run_timeout,
            agents,
            tools,
        },
        issues,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(v: Value) -> (AgentSettings, Vec<Issue>) {
        parse(v.as_object().unwrap())
    }

    #[test]
    fn openclaw_shapes() {
        let (s, issues) = parse_json(json!({
            "models": {"providers": {
                "anthropic": {"baseUrl": "https://api.anthropic.com/", "apiKey": "sk-1", "api": "anthropic-messages",
                              "models": [{"id": "claude", "name": "Claude", "contextWindow": 200000, "reasoning": true,
                                          "maxTokens": 8192, "cost": {"input": 3}}]},
                "local": {"baseUrl": "http://127.0.0.1:11434/v1", "timeoutMs": 5000, "stallMs": 1000,
                          "models": [{"id": "llama", "contextWindow": "big"}, {"name": "no id"}]},
            }},
            "agents": {
                "defaults": {"model": {"primary": "anthropic/claude", "fallbacks": ["local/llama"]}, "timeoutSeconds": 60},
                "list": [{"id": "main", "default": true}, {"id": "Ops", "model": "local/llama"}],
            },
        }));
        assert!(issues.is_empty(), "{issues:?}");
        let id = |s: &str| AgentId::normalize(s).unwrap();
        let a = &s.providers["anthropic"];
        assert_eq!(
            (a.base_url.as_str(), a.api.as_str()),
            ("https://api.anthropic.com", "anthropic-messages")
        );
        assert_eq!(a.max_tokens["claude"], 8192);
        assert_eq!(
            a.models,
            [ModelInfo {
                id: "claude".into(),
                name: Some("Claude".into()),
                context_window: Some(200_000),
                reasoning: Some(true),
            }]
        );
        // A field of the wrong type is left out; an entry without an id is not a model.
        assert_eq!(
            s.providers["local"].models,
            [ModelInfo {
                id: "llama".into(),
                name: None,
                context_window: None,
                reasoning: None,
            }]
        );
        assert!(!format!("{a:?}").contains("sk-1"), "keys are redacted");
        assert_eq!(s.providers["local"].stall, Duration::from_secs(1));
        assert_eq!(s.run_timeout, Duration::from_secs(60));
        let c: Vec<String> = s
            .chain(&id("main"))
            .candidates()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(c, ["anthropic/claude", "local/llama"]);
        assert_eq!(
            s.chain(&id("ops")).candidates()[0].to_string(),
            "local/llama",
            "a listed id is normalized as every agent id is"
        );
        assert_eq!(s.default_agent_id(), "main");
        assert!(s.knows(&id("ops")) && s.knows(&id("main")) && !s.knows(&id("x")));
    }

    #[test]
    fn a_listed_agent_id_that_is_a_path_is_normalized_or_refused() {
        let (s, issues) = parse_json(json!({
            "agents": {"list": [{"id": "../../etc", "default": true}, {"id": "///"}]},
        }));
        assert_eq!(s.default_agent_id(), "etc");
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].0, "agents.list[1].id");
    }

    #[test]
    fn bad_entries_are_issues_not_failures() {
        let (s, issues) = parse_json(json!({
            "models": {"providers": {"x": {"baseUrl": "ftp://nope"}, "y": {"baseUrl": "https://h", "api": "grpc"}}},
            "agents": {"defaults": {"model": "nope"}, "list": [{"model": "y/m"}]},
            "tools": {"commands": [{"name": "ls", "argv": ["ls"]}, {"name": "bad name"}]},
        }));
        let paths: Vec<&str> = issues.iter().map(|i| i.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "models.providers.x.baseUrl",
                "models.providers.y.api",
                "agents.defaults.model",
                "agents.list[0]",
                "tools.commands[1]"
            ]
        );
        assert!(s.providers.is_empty());
        assert_eq!(s.tools.len(), 1);
        let (_, issues) = parse_json(json!({"agents": {"defaults": {"model": "ghost/m"}}}));
        assert!(issues[0].1.contains("no provider \"ghost\""));
        let (s, issues) = parse_json(json!({"models": {"providers": {
            "lan": {"baseUrl": "http://192.168.1.10:11434/v1"},
            "lan_ok": {"baseUrl": "http://192.168.1.10:11434/v1", "allowInsecureHttp": true},
            "v6": {"baseUrl": "http://[::1]:8080/v1"},
            "host": {"baseUrl": "http://localhost:8080"},
        }}}));
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(issues[0].1.contains("plain http to another host"));
        assert_eq!(
            s.providers.keys().collect::<Vec<_>>(),
            ["host", "lan_ok", "v6"]
        );
    }

    #[test]
    fn option_args_are_off_unless_a_tool_says_true() {
        let (s, issues) = parse_json(json!({"tools": {"commands": [
            {"name": "plain", "argv": ["sort", "{{file}}"]},
            {"name": "opts", "argv": ["sort", "{{file}}"], "allowOptionArgs": true},
            {"name": "bad", "argv": ["sort", "{{file}}"], "allowOptionArgs": "yes"},
        ]}}));
        let allowed: Vec<bool> = s.tools.iter().map(|t| t.allow_option_args).collect();
        assert_eq!(
            allowed,
            [false, true, false],
            "a bad value keeps the default"
        );
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].0, "tools.commands[2].allowOptionArgs");
        assert!(issues[0].1.contains("\"yes\""), "{issues:?}");
    }
}
