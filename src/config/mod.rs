//! The configuration: a JSON file with OpenClaw's key names for what keel supports, validated
//! into a [`Config`]. Defaults live in [`Config::default`] and nowhere else.
//!
//! Rules, learned from the gateway keel replaces (an unknown key crash-looped it 700+ times):
//! - an unknown key is one warning, never a refusal to start;
//! - a bad value outside the core disables only its own feature (the default is kept) and is
//!   reported in the log, in `/readyz` and by `keel check`;
//! - only what keel cannot run without — where to listen and how to authenticate — is fatal,
//!   and then the process exits with [`EX_CONFIG`] so systemd does not restart it in a loop.
//!
//! `keel check`, boot and SIGHUP all go through [`parse`], so they agree on every verdict.

pub mod agents;
pub mod channels;
pub mod cron;
pub mod inbound;
pub mod inbound_webhooks;
pub mod live;
pub mod ui;

use crate::ids::AgentId;
use serde_json::{Map, Value};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Exit status for a configuration keel cannot start with (sysexits' EX_CONFIG). The unit file
/// lists it in `RestartPreventExitStatus`, so a bad file stops the service instead of looping.
pub const EX_CONFIG: i32 = 78;

pub const DEFAULT_PORT: u16 = 18789;
pub const HANDSHAKE_MIN: Duration = Duration::from_secs(1);
pub const HANDSHAKE_MAX: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Token,
    Password,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    pub mode: AuthMode,
    pub token: Option<String>,
    pub password: Option<String>,
}

// Secrets never reach a log line, a dump or `status`.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("mode", &self.mode)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A failed-authentication limiter's thresholds: `max_attempts` failures within `window` lock
/// the client out for `lockout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthLimits {
    pub max_attempts: usize,
    pub window: Duration,
    pub lockout: Duration,
}

/// `gateway.auth.rateLimit`: OpenClaw's keys and defaults (10 failures a minute, then five
/// minutes out; loopback exempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub gateway: AuthLimits,
    pub exempt_loopback: bool,
}

impl Default for RateLimit {
    fn default() -> RateLimit {
        RateLimit {
            gateway: AuthLimits {
                max_attempts: 10,
                window: Duration::from_secs(60),
                lockout: Duration::from_secs(300),
            },
            exempt_loopback: true,
        }
    }
}

/// Capacity of each lane's queue, per pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCaps {
    pub control: usize,
    pub interactive: usize,
    pub background: usize,
}

/// Thresholds of the pressure levels (see `watchdog`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PressureConfig {
    pub rss_warn_bytes: u64,
    pub rss_critical_bytes: u64,
    pub lag_warn: Duration,
    pub lag_critical: Duration,
    pub queue_age_warn: Duration,
    pub queue_age_critical: Duration,
    /// How long a level holds after its last trigger before stepping down.
    pub hold: Duration,
}

/// Limits the reactor enforces on clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// Largest WebSocket message after `connect` (announced as `policy.maxPayload`).
    pub max_payload: usize,
    /// Most bytes queued for one client before it is closed as a slow consumer.
    pub max_buffered_bytes: usize,
    /// Largest body of `POST /api/rpc/<method>`.
    pub rpc_body_bytes: usize,
    /// Requests one connection may have in flight at once.
    pub max_inflight_per_conn: usize,
    /// A request head must arrive whole within this time of its first byte (slowloris).
    pub header_timeout: Duration,
}

/// How long and how many idempotency keys are remembered (`gateway.idempotency`), so that a
/// retried `send`, `agent` or `chat.send` gets its first answer instead of a second message or
/// run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotency {
    pub window: Duration,
    /// Keys of `send`, at most.
    pub send_keys: usize,
    /// Keys of finished runs (`agent`, `chat.send`, hooks), at most.
    pub run_keys: usize,
}

impl Idempotency {
    /// Bytes of `send` answers kept, at most (~400 bytes each).
    pub const SEND_BYTES: usize = 4 << 20;
    /// Bytes of run results kept, at most (each one's text is cut at 16 KiB).
    pub const RUN_BYTES: usize = 4 << 20;

    pub fn send_limits(&self) -> crate::idempotency::Limits {
        crate::idempotency::Limits {
            window_ms: self.window.as_millis() as u64,
            max_keys: self.send_keys,
            max_bytes: Idempotency::SEND_BYTES,
        }
    }

    pub fn run_limits(&self) -> crate::idempotency::Limits {
        crate::idempotency::Limits {
            window_ms: self.window.as_millis() as u64,
            max_keys: self.run_keys,
            max_bytes: Idempotency::RUN_BYTES,
        }
    }
}

/// A model's price in USD per million tokens (`models.providers.<p>.models[].cost`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelPrice {
    pub input: f64,
    pub output: f64,
    pub cache_read: f64,
    pub cache_write: f64,
}

/// Prices by (provider, model id).
pub type Prices = std::collections::HashMap<(String, String), ModelPrice>;

/// Hooks ingress (`hooks.enabled` with a token): `POST <path>/wake` and `<path>/agent`, and
/// what a hook request may reach — OpenClaw's policy keys with its safe defaults. The hook
/// token belongs to third-party webhook senders, not to the operator.
#[derive(Clone, PartialEq, Eq)]
pub struct Hooks {
    pub token: String,
    pub path: String,
    /// `hooks.allowRequestSessionKey` (default false): a request may name its session.
    pub allow_request_session_key: bool,
    /// `hooks.defaultSessionKey`: the session of `/agent` runs that name none (else a fresh
    /// `hook:<uuid>`).
    pub default_session_key: Option<String>,
    /// `hooks.allowedSessionKeyPrefixes`, lowercased; empty: no restriction.
    pub allowed_session_key_prefixes: Vec<String>,
    /// `hooks.allowedAgentIds`: `None` (omitted, or `"*"` in the list) allows every agent;
    /// `Some([])` allows none.
    pub allowed_agent_ids: Option<Vec<AgentId>>,
}

impl Hooks {
    pub fn agent_allowed(&self, id: &AgentId) -> bool {
        self.allowed_agent_ids
            .as_ref()
            .is_none_or(|ids| ids.contains(id))
    }

    /// Whether a session key passes `allowedSessionKeyPrefixes` (case-insensitively).
    pub fn session_key_allowed(&self, key: &str) -> bool {
        let key = key.to_lowercase();
        self.allowed_session_key_prefixes.is_empty()
            || self
                .allowed_session_key_prefixes
                .iter()
                .any(|p| key.starts_with(p))
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("token", &"<redacted>")
            .field("path", &self.path)
            .field("allow_request_session_key", &self.allow_request_session_key)
            .field("default_session_key", &self.default_session_key)
            .field(
                "allowed_session_key_prefixes",
                &self.allowed_session_key_prefixes,
            )
            .field("allowed_agent_ids", &self.allowed_agent_ids)
            .finish()
    }
}

/// A feature turned off because its part of the config is bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    pub feature: String,
    pub reason: String,
}

/// The config file's JSON as it was read, for `config.get`: secrets and all, so it is never
/// printed — `Debug` shows only its top-level keys. Shared, never copied.
#[derive(Clone, PartialEq, Default)]
pub struct RawConfig(pub std::sync::Arc<Value>);

impl fmt::Debug for RawConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self
            .0
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        f.debug_tuple("RawConfig").field(&keys).finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub source: Option<PathBuf>,
    /// The file this config was read from, as JSON (`Null` without a file).
    pub raw: RawConfig,
    pub port: u16,
    pub bind: IpAddr,
    pub auth: Auth,
    /// `gateway.auth.rateLimit`: the failed-authentication limiter.
    pub rate_limit: RateLimit,
    /// `gateway.trustedProxies`: proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub drain_timeout: Duration,
    pub drain_grace: Duration,
    pub handshake_timeout: Duration,
    pub tick_interval: Duration,
    pub cpu_workers: usize,
    pub io_workers: usize,
    /// Nice value of worker threads: the reactor and the watchdog stay at the process's own
    /// priority, so busy workers can never take the CPU from the thread that answers health.
    pub worker_nice: i32,
    pub queues: QueueCaps,
    pub pressure: PressureConfig,
    pub limits: Limits,
    pub idempotency: Idempotency,
    pub prices: Prices,
    /// Hooks ingress, when enabled and valid.
    pub hooks: Option<Hooks>,
    /// Providers, model chains and tools for agent runs.
    pub agents: agents::AgentSettings,
    /// Chat channels replies are delivered to.
    pub channels: channels::Channels,
    /// Inbound chat channels: accounts keel receives on, who may talk, bindings, DM scope.
    pub inbound: inbound::InboundConfig,
    /// Slack Events API and Feishu event-subscription accounts, each on its own path.
    pub inbound_webhooks: inbound_webhooks::InboundWebhooks,
    /// `gateway.controlUi`: the dashboard's files and bootstrap config.
    pub control_ui: ui::ControlUi,
    /// `cron.*` and the agents' heartbeats: the scheduler.
    pub cron: cron::CronConfig,
    pub disabled: Vec<Disabled>,
}

impl Default for Config {
    fn default() -> Config {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Config {
            source: None,
            raw: RawConfig::default(),
            port: DEFAULT_PORT,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            auth: Auth {
                mode: AuthMode::Token,
                token: None,
                password: None,
            },
            rate_limit: RateLimit::default(),
            trusted_proxies: Vec::new(),
            drain_timeout: Duration::from_millis(30_000),
            drain_grace: Duration::from_millis(5_000),
            handshake_timeout: Duration::from_millis(15_000),
            tick_interval: Duration::from_millis(30_000),
            cpu_workers: cores,
            io_workers: 16,
            worker_nice: 10,
            queues: QueueCaps {
                control: 64,
                interactive: 256,
                background: 1024,
            },
            pressure: PressureConfig {
                rss_warn_bytes: 512 << 20,
                rss_critical_bytes: 1024 << 20,
                lag_warn: Duration::from_millis(50),
                lag_critical: Duration::from_millis(500),
                queue_age_warn: Duration::from_millis(2_000),
                queue_age_critical: Duration::from_millis(10_000),
                hold: Duration::from_millis(10_000),
            },
            limits: Limits {
                max_connections: 4096,
                max_payload: 4 << 20,
                max_buffered_bytes: 1 << 20,
                rpc_body_bytes: 1 << 20,
                max_inflight_per_conn: 64,
                header_timeout: Duration::from_secs(10),
            },
            idempotency: Idempotency {
                window: Duration::from_secs(600),
                send_keys: 10_000,
                run_keys: 1_000,
            },
            prices: Prices::new(),
            hooks: None,
            channels: channels::Channels::default(),
            inbound: inbound::InboundConfig::default(),
            inbound_webhooks: inbound_webhooks::InboundWebhooks::default(),
            agents: agents::AgentSettings {
                run_timeout: agents::DEFAULT_RUN_TIMEOUT,
                ..Default::default()
            },
            control_ui: ui::ControlUi::default(),
            cron: cron::CronConfig::default(),
            disabled: Vec::new(),
        }
    }
}

impl Config {
    /// Why `/readyz` is failing because of the config, one line per disabled feature.
    pub fn readiness_reasons(&self) -> Vec<String> {
        self.disabled
            .iter()
            .map(|d| format!("config: {} disabled: {}", d.feature, d.reason))
            .collect()
    }

    /// Every secret this config holds, resolved (`${ENV}` references read): the gateway's
    /// token and password, the hooks token, providers' API keys and channels' credentials.
    /// What keel shows of itself (`config.get`, `logs.tail`) is scrubbed of these.
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        out.extend(self.auth.token.iter().cloned());
        out.extend(self.auth.password.iter().cloned());
        out.extend(self.hooks.iter().map(|h| h.token.clone()));
        out.extend(
            self.agents
                .providers
                .values()
                .filter_map(|p| p.api_key.clone()),
        );
        for c in self.channels.0.values() {
            out.extend(c.credentials.values().into_iter().map(String::from));
        }
        out.extend(self.inbound.telegram.iter().map(|a| a.bot_token.clone()));
        out.extend(
            self.inbound
                .telegram
                .iter()
                .filter_map(|a| a.webhook.as_ref().map(|w| w.secret.clone())),
        );
        out.extend(self.inbound_webhooks.secrets());
        out.retain(|s| !s.is_empty());
        out
    }

    /// The listen address.
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.bind, self.port)
    }
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key (`gateway.port`), or `<file>` for the file as a whole.
    pub path: String,
    pub message: String,
    /// Fatal problems stop the gateway from starting; the others disable a feature.
    pub fatal: bool,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.fatal {
            "error"
        } else {
            "error (feature disabled)"
        };
        write!(f, "{kind}: {}: {}", self.path, self.message)
    }
}

/// The verdict on a config file: the config to run with, and everything said about the file.
#[derive(Debug, Clone)]
pub struct Validated {
    pub config: Config,
    pub warnings: Vec<String>,
    pub problems: Vec<Problem>,
}

impl Validated {
    pub fn is_fatal(&self) -> bool {
        self.problems.iter().any(|p| p.fatal)
    }
}

/// The embedded default: what `keel serve` runs with when there is no config file.
pub fn embedded_default() -> Validated {
    Validated {
        config: Config::default(),
        warnings: Vec::new(),
        problems: Vec::new(),
    }
}

/// Reads and validates a config file. An unreadable file is a fatal problem, not a panic.
pub fn load_file(path: &Path) -> Validated {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, Some(path)),
        Err(e) => {
            let mut v = embedded_default();
            v.config.source = Some(path.to_path_buf());
            v.problems.push(Problem {
                path: "<file>".into(),
                message: format!("cannot read {}: {e}", path.display()),
                fatal: true,
            });
            v
        }
    }
}

/// OpenClaw's top-level keys that keel knows of but does not act on (yet): one warning each.
const OPENCLAW_UNSUPPORTED: &[&str] = &[
    "messages",
    "commands",
    "plugins",
    "skills",
    "ui",
    "browser",
    "diagnostics",
    "update",
    "discovery",
    "talk",
    "broadcast",
    "approvals",
    "web",
    "canvasHost",
    "memory",
    "auth",
    "env",
    "wizard",
    "acp",
];

/// `gateway.*` keys OpenClaw has and keel does not act on.
const GATEWAY_UNSUPPORTED: &[&str] = &[
    "mode",
    "tailscale",
    "remote",
    "reload",
    "tls",
    "http",
    "nodes",
];

/// Validates config text. Never fails: everything wrong is in [`Validated::problems`].
pub fn parse(text: &str, source: Option<&Path>) -> Validated {
    let mut v = Validator {
        config: Config {
            source: source.map(Path::to_path_buf),
            ..Config::default()
        },
        warnings: Vec::new(),
        problems: Vec::new(),
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(root)) => {
            v.root(&root);
            v.config.raw = RawConfig(std::sync::Arc::new(Value::Object(root)));
        }
        Ok(_) => v.fatal("<file>", "the config must be a JSON object".into()),
        Err(e) => v.fatal("<file>", format!("not valid JSON: {e}")),
    }
    Validated {
        config: v.config,
        warnings: v.warnings,
        problems: v.problems,
    }
}

struct Validator {
    config: Config,
    warnings: Vec<String>,
    problems: Vec<Problem>,
}

impl Validator {
    fn fatal(&mut self, path: &str, message: String) {
        self.problems.push(Problem {
            path: path.into(),
            message,
            fatal: true,
        });
    }

    /// A bad value outside the core: keep the default, disable the feature, say why.
    fn disable(&mut self, path: &str, message: String) {
        self.config.disabled.push(Disabled {
            feature: path.into(),
            reason: message.clone(),
        });
        self.problems.push(Problem {
            path: path.into(),
            message,
            fatal: false,
        });
    }

    fn warn_keys(
        &mut self,
        map: &Map<String, Value>,
        prefix: &str,
        known: &[&str],
        unsupported: &[&str],
    ) {
        for key in map.keys() {
            let path = join(prefix, key);
            if unsupported.contains(&key.as_str()) {
                self.warnings.push(format!(
                    "{path}: OpenClaw setting not supported by keel; ignored"
                ));
            } else if !known.contains(&key.as_str()) {
                self.warnings.push(format!("{path}: unknown key; ignored"));
            }
        }
    }

    fn root(&mut self, root: &Map<String, Value>) {
        self.warn_keys(
            root,
            "",
            &[
                "gateway", "hooks", "models", "agents", "tools", "meta", "logging", "channels",
                "session", "bindings", "cron",
            ],
            OPENCLAW_UNSUPPORTED,
        );
        if let Some(g) = root.get("gateway") {
            match g {
                Value::Object(g) => self.gateway(g),
                _ => self.fatal("gateway", "must be an object".into()),
            }
        }
        if let Some(h) = root.get("hooks") {
            self.hooks(h);
        }
        if let Some(m) = root.get("models") {
            match prices(m) {
                Ok(p) => self.config.prices = p,
                Err((path, msg)) => self.disable(&path, msg),
            }
        }
        if let Some(c) = root.get("channels") {
            let (channels, issues) = channels::parse_channels(c);
            self.config.channels = channels::Channels(channels);
            for (path, msg) in issues {
                self.disable(&path, msg);
            }
            let (webhooks, issues) = inbound_webhooks::parse(c);
            self.config.inbound_webhooks = webhooks;
            for (path, msg) in issues {
                self.disable(&path, msg);
            }
        }
        let (inbound, issues) =
            inbound::parse(root, self.config.source.as_deref().and_then(Path::parent));
        self.config.inbound = inbound;
        for (path, msg) in issues {
            self.disable(&path, msg);
        }
        // Replies go out from the bot the message came to: each Telegram account's token
        // (`accounts.<id>`, `tokenFile`) is the delivery channel's too.
        if let Some(tg) = self.config.channels.0.get_mut("telegram") {
            for a in &self.config.inbound.telegram {
                tg.accounts.insert(
                    a.id.clone(),
                    channels::AccountCredentials {
                        base_url: a.base_url.clone(),
                        credentials: channels::Credentials::Telegram {
                            bot_token: a.bot_token.clone(),
                        },
                    },
                );
            }
        }
        let (agents, issues) = agents::parse(root);
        self.config.agents = agents;
        for (path, msg) in issues {
            self.disable(&path, msg);
        }
        let ids: Vec<crate::ids::AgentId> = self
            .config
            .agents
            .agents
            .iter()
            .map(|a| a.id.clone())
            .collect();
        let (cron, issues) = cron::parse(root, &ids, &self.config.agents.default_agent_id());
        self.config.cron = cron;
        for (path, msg) in issues {
            self.disable(&path, msg);
        }
        let config_dir = self.config.source.as_deref().and_then(Path::parent);
        let (control_ui, issues, warnings) = ui::parse(
            root.get("gateway").and_then(|g| g.get("controlUi")),
            root,
            &self.config.agents.default_agent_id(),
            config_dir,
        );
        self.config.control_ui = control_ui;
        self.warnings.extend(warnings);
        for (path, msg) in issues {
            self.disable(&path, msg);
        }
    }

    fn gateway(&mut self, g: &Map<String, Value>) {
        const KNOWN: &[&str] = &[
            "port",
            "bind",
            "customBindHost",
            "auth",
            "drainTimeoutMs",
            "drainGraceMs",
            "handshakeTimeoutMs",
            "tickIntervalMs",
            "workers",
            "queues",
            "pressure",
            "limits",
            "trustedProxies",
            "idempotency",
            "controlUi",
        ];
        self.warn_keys(g, "gateway", KNOWN, GATEWAY_UNSUPPORTED);

        // The core: where to listen and how to authenticate. Wrong here is fatal.
        if let Some(p) = g.get("port") {
            match p.as_u64() {
                Some(n) if n <= u64::from(u16::MAX) => self.config.port = n as u16,
                _ => self.fatal(
                    "gateway.port",
                    format!("expected a port number 0-65535, got {p}"),
                ),
            }
        }
        if let Some(b) = g.get("bind") {
            let custom = g.get("customBindHost").and_then(Value::as_str);
            match b.as_str().map(|s| resolve_bind(s, custom)) {
                Some(Ok(ip)) => self.config.bind = ip,
                Some(Err(msg)) => self.fatal("gateway.bind", msg),
                None => self.fatal("gateway.bind", format!("expected a string, got {b}")),
            }
        }
        if let Some(a) = g.get("auth") {
            self.auth(a);
        }

        // Tuning: a bad value keeps the default and disables only itself.
        let ms = |v: &mut Validator, key: &str, min: u64, max: u64| -> Option<Duration> {
            let path = format!("gateway.{key}");
            let raw = g.get(key)?;
            match raw.as_u64() {
                Some(n) if (min..=max).contains(&n) => Some(Duration::from_millis(n)),
                _ => {
                    v.disable(
                        &path,
                        format!("expected milliseconds in {min}..={max}, got {raw}"),
                    );
                    None
                }
            }
        };
        if let Some(d) = ms(self, "drainTimeoutMs", 0, 3_600_000) {
            self.config.drain_timeout = d;
        }
        if let Some(d) = ms(self, "drainGraceMs", 0, 600_000) {
            self.config.drain_grace = d;
        }
        if let Some(d) = ms(self, "handshakeTimeoutMs", 1_000, 120_000) {
            self.config.handshake_timeout = d;
        }
        if let Some(d) = ms(self, "tickIntervalMs", 1_000, 3_600_000) {
            self.config.tick_interval = d;
        }
        if let Some(w) = self.section(g, "gateway.workers", "workers", &["cpu", "io", "nice"]) {
            if let Some(n) = self.count(&w, "gateway.workers.nice", "nice", 0, 19) {
                self.config.worker_nice = n as i32;
            }
            if let Some(n) = self.count(&w, "gateway.workers.cpu", "cpu", 1, 256) {
                self.config.cpu_workers = n;
            }
            if let Some(n) = self.count(&w, "gateway.workers.io", "io", 1, 1024) {
                self.config.io_workers = n;
            }
        }
        if let Some(q) = self.section(
            g,
            "gateway.queues",
            "queues",
            &["control", "interactive", "background"],
        ) {
            let caps = [
                self.count(&q, "gateway.queues.control", "control", 1, 1 << 20),
                self.count(&q, "gateway.queues.interactive", "interactive", 1, 1 << 20),
                self.count(&q, "gateway.queues.background", "background", 1, 1 << 20),
            ];
            let qc = &mut self.config.queues;
            if let Some(n) = caps[0] {
                qc.control = n;
            }
            if let Some(n) = caps[1] {
                qc.interactive = n;
            }
            if let Some(n) = caps[2] {
                qc.background = n;
            }
        }
        self.pressure(g);
        self.limits(g);
        self.idempotency(g);
        if let Some(t) = g.get("trustedProxies") {
            self.trusted_proxies(t);
        }
    }

    /// `gateway.trustedProxies`: addresses or CIDR ranges. One bad entry drops the list (no
    /// proxy trusted: every client behind one shares its limit, the safe side) and says why.
    fn trusted_proxies(&mut self, t: &Value) {
        let parse = |v: &Value| -> Result<ipnet::IpNet, String> {
            let s = v
                .as_str()
                .ok_or_else(|| format!("expected a string, got {}", json_kind(v)))?
                .trim();
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("{s:?} is not an IP address or a CIDR range"))
        };
        let Value::Array(list) = t else {
            return self.disable(
                "gateway.trustedProxies",
                format!("expected an array of addresses, got {}", json_kind(t)),
            );
        };
        let mut nets = Vec::new();
        for (i, v) in list.iter().enumerate() {
            match parse(v) {
                Ok(n) => nets.push(n),
                Err(msg) => {
                    return self.disable(
                        &format!("gateway.trustedProxies[{i}]"),
                        format!("{msg}; no proxy is trusted"),
                    );
                }
            }
        }
        self.config.trusted_proxies = nets;
    }

    /// `gateway.auth.rateLimit {maxAttempts, windowMs, lockoutMs, exemptLoopback}`; a bad
    /// value keeps its default.
    fn rate_limit(&mut self, a: &Map<String, Value>) {
        let Some(r) = self.section(
            a,
            "gateway.auth.rateLimit",
            "rateLimit",
            &["maxAttempts", "windowMs", "lockoutMs", "exemptLoopback"],
        ) else {
            return;
        };
        let mut rl = self.config.rate_limit;
        let path = |k: &str| format!("gateway.auth.rateLimit.{k}");
        if let Some(n) = self.count(&r, &path("maxAttempts"), "maxAttempts", 1, 100_000) {
            rl.gateway.max_attempts = n;
        }
        if let Some(n) = self.count(&r, &path("windowMs"), "windowMs", 1_000, 86_400_000) {
            rl.gateway.window = Duration::from_millis(n as u64);
        }
        if let Some(n) = self.count(&r, &path("lockoutMs"), "lockoutMs", 0, 86_400_000) {
            rl.gateway.lockout = Duration::from_millis(n as u64);
        }
        match r.get("exemptLoopback") {
            None => {}
            Some(Value::Bool(b)) => rl.exempt_loopback = *b,
            Some(v) => self.disable(
                &path("exemptLoopback"),
                format!("expected true or false, got {}", json_kind(v)),
            ),
        }
        self.config.rate_limit = rl;
    }

    fn pressure(&mut self, g: &Map<String, Value>) {
        const KEYS: &[&str] = &[
            "rssWarnMb",
            "rssCriticalMb",
            "lagWarnMs",
            "lagCriticalMs",
            "queueAgeWarnMs",
            "queueAgeCriticalMs",
            "holdMs",
        ];
        let Some(p) = self.section(g, "gateway.pressure", "pressure", KEYS) else {
            return;
        };
        let mut vals = [0usize; 7];
        let defaults = self.config.pressure;
        let def = [
            (defaults.rss_warn_bytes >> 20) as usize,
            (defaults.rss_critical_bytes >> 20) as usize,
            defaults.lag_warn.as_millis() as usize,
            defaults.lag_critical.as_millis() as usize,
            defaults.queue_age_warn.as_millis() as usize,
            defaults.queue_age_critical.as_millis() as usize,
            defaults.hold.as_millis() as usize,
        ];
        for (i, key) in KEYS.iter().enumerate() {
            vals[i] = self
                .count(&p, &format!("gateway.pressure.{key}"), key, 1, 1 << 30)
                .unwrap_or(def[i]);
        }
        let pairs = [
            (0, 1, "rssWarnMb", "rssCriticalMb"),
            (2, 3, "lagWarnMs", "lagCriticalMs"),
            (4, 5, "queueAgeWarnMs", "queueAgeCriticalMs"),
        ];
        for (w, c, wk, ck) in pairs {
            if vals[w] > vals[c] {
                self.disable(
                    "gateway.pressure",
                    format!(
                        "{wk} ({}) is above {ck} ({}); using the defaults",
                        vals[w], vals[c]
                    ),
                );
                return;
            }
        }
        let ms = |n: usize| Duration::from_millis(n as u64);
        self.config.pressure = PressureConfig {
            rss_warn_bytes: (vals[0] as u64) << 20,
            rss_critical_bytes: (vals[1] as u64) << 20,
            lag_warn: ms(vals[2]),
            lag_critical: ms(vals[3]),
            queue_age_warn: ms(vals[4]),
            queue_age_critical: ms(vals[5]),
            hold: ms(vals[6]),
        };
    }

    fn limits(&mut self, g: &Map<String, Value>) {
        const KEYS: &[&str] = &[
            "maxConnections",
            "maxPayloadBytes",
            "maxBufferedBytes",
            "rpcBodyBytes",
            "maxInflightPerConnection",
            "headerTimeoutMs",
        ];
        let Some(l) = self.section(g, "gateway.limits", "limits", KEYS) else {
            return;
        };
        let mut lim = self.config.limits;
        if let Some(n) = self.count(
            &l,
            "gateway.limits.maxConnections",
            "maxConnections",
            1,
            1 << 20,
        ) {
            lim.max_connections = n;
        }
        if let Some(n) = self.count(
            &l,
            "gateway.limits.maxPayloadBytes",
            "maxPayloadBytes",
            64 << 10,
            256 << 20,
        ) {
            lim.max_payload = n;
        }
        if let Some(n) = self.count(
            &l,
            "gateway.limits.maxBufferedBytes",
            "maxBufferedBytes",
            64 << 10,
            1 << 30,
        ) {
            lim.max_buffered_bytes = n;
        }
        if let Some(n) = self.count(
            &l,
            "gateway.limits.rpcBodyBytes",
            "rpcBodyBytes",
            1 << 10,
            256 << 20,
        ) {
            lim.rpc_body_bytes = n;
        }
        if let Some(n) = self.count(
            &l,
            "gateway.limits.maxInflightPerConnection",
            "maxInflightPerConnection",
            1,
            1 << 16,
        ) {
            lim.max_inflight_per_conn = n;
        }
        if let Some(n) = self.count(
            &l,
            "gateway.limits.headerTimeoutMs",
            "headerTimeoutMs",
            100,
            600_000,
        ) {
            lim.header_timeout = Duration::from_millis(n as u64);
        }
        self.config.limits = lim;
    }

    fn idempotency(&mut self, g: &Map<String, Value>) {
        const KEYS: &[&str] = &["windowMs", "sendKeys", "runKeys"];
        let Some(m) = self.section(g, "gateway.idempotency", "idempotency", KEYS) else {
            return;
        };
        let mut idem = self.config.idempotency;
        if let Some(n) = self.count(
            &m,
            "gateway.idempotency.windowMs",
            "windowMs",
            1_000,
            86_400_000,
        ) {
            idem.window = Duration::from_millis(n as u64);
        }
        if let Some(n) = self.count(&m, "gateway.idempotency.sendKeys", "sendKeys", 1, 100_000) {
            idem.send_keys = n;
        }
        if let Some(n) = self.count(&m, "gateway.idempotency.runKeys", "runKeys", 1, 100_000) {
            idem.run_keys = n;
        }
        self.config.idempotency = idem;
    }

    /// An optional object under `g[key]`; a non-object disables it.
    fn section(
        &mut self,
        g: &Map<String, Value>,
        path: &str,
        key: &str,
        known: &[&str],
    ) -> Option<Map<String, Value>> {
        match g.get(key)? {
            Value::Object(m) => {
                self.warn_keys(m, path, known, &[]);
                Some(m.clone())
            }
            other => {
                self.disable(path, format!("expected an object, got {other}"));
                None
            }
        }
    }

    fn count(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        key: &str,
        min: usize,
        max: usize,
    ) -> Option<usize> {
        let raw = m.get(key)?;
        match raw.as_u64() {
            Some(n) if (min as u64..=max as u64).contains(&n) => Some(n as usize),
            _ => {
                self.disable(
                    path,
                    format!("expected an integer in {min}..={max}, got {raw}"),
                );
                None
            }
        }
    }

    fn auth(&mut self, a: &Value) {
        let Value::Object(a) = a else {
            return self.fatal("gateway.auth", format!("expected an object, got {a}"));
        };
        self.warn_keys(
            a,
            "gateway.auth",
            &["mode", "token", "password", "rateLimit"],
            &["allowTailscale", "trustedProxy"],
        );
        self.rate_limit(a);
        let secret = |v: &mut Validator, key: &str| -> Option<String> {
            match a.get(key)? {
                Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
                Value::String(_) | Value::Null => None,
                other => {
                    let kind = json_kind(other);
                    v.fatal(
                        &format!("gateway.auth.{key}"),
                        format!("expected a string, got {kind}"),
                    );
                    None
                }
            }
        };
        let token = secret(self, "token");
        let password = secret(self, "password");
        let mode = match a.get("mode").map(|m| m.as_str()) {
            None | Some(Some("token")) => AuthMode::Token,
            Some(Some("password")) => AuthMode::Password,
            Some(other) => {
                let shown = other.map_or_else(|| "a non-string".to_string(), |s| format!("{s:?}"));
                return self.fatal(
                    "gateway.auth.mode",
                    format!("expected \"token\" or \"password\", got {shown}"),
                );
            }
        };
        if mode == AuthMode::Password && password.is_none() {
            self.fatal(
                "gateway.auth.password",
                "mode is \"password\" but no password is set".into(),
            );
        }
        self.config.auth = Auth {
            mode,
            token,
            password,
        };
    }

    fn hooks(&mut self, h: &Value) {
        let Value::Object(h) = h else {
            return self.disable("hooks", format!("expected an object, got {}", json_kind(h)));
        };
        self.warn_keys(
            h,
            "hooks",
            &[
                "enabled",
                "token",
                "path",
                "allowRequestSessionKey",
                "defaultSessionKey",
                "allowedSessionKeyPrefixes",
                "allowedAgentIds",
            ],
            &[
                "mappings",
                "presets",
                "transformsDir",
                "gmail",
                "internal",
                "maxBodyBytes",
            ],
        );
        let enabled = h.get("enabled").and_then(Value::as_bool).unwrap_or(false);
        if !enabled {
            return;
        }
        let token = h
            .get("token")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return self.disable(
                "hooks",
                "hooks.enabled is true but hooks.token is not set".into(),
            );
        };
        let path = h
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("/hooks")
            .trim_end_matches('/');
        let reserved = ["/api", "/healthz", "/livez", "/readyz", "/metrics"];
        if !path.starts_with('/')
            || path.is_empty()
            || reserved
                .iter()
                .any(|r| path == *r || path.starts_with(&format!("{r}/")))
        {
            return self.disable("hooks", format!("hooks.path {path:?} must be a path like /hooks, not / or a path keel serves itself"));
        }
        // The policy: anything wrong in it disables hooks altogether, so a typo can never
        // open more than the operator meant.
        match hook_policy(h) {
            Ok(policy) => {
                self.config.hooks = Some(Hooks {
                    token: token.to_string(),
                    path: path.to_string(),
                    ..policy
                })
            }
            Err((key, msg)) => self.disable("hooks", format!("hooks.{key}: {msg}")),
        }
    }
}

/// `hooks.allowRequestSessionKey`, `defaultSessionKey`, `allowedSessionKeyPrefixes` and
/// `allowedAgentIds`, with OpenClaw's defaults and its checks: a default key must pass the
/// prefixes, and without one the prefixes must admit the generated `hook:` keys.
fn hook_policy(h: &Map<String, Value>) -> Result<Hooks, (&'static str, String)> {
    let allow_request_session_key = match h.get("allowRequestSessionKey") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err((
                "allowRequestSessionKey",
                format!("expected true or false, got {}", json_kind(v)),
            ));
        }
    };
    let default_session_key = match h.get("defaultSessionKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Some(v) => {
            return Err((
                "defaultSessionKey",
                format!("expected a string, got {}", json_kind(v)),
            ));
        }
    };
    if let Some(k) = &default_session_key
        && let Err(e) = crate::ids::SessionKey::parse(k, &AgentId::main())
    {
        return Err(("defaultSessionKey", format!("{k:?} {e}")));
    }
    let strings = |key: &'static str| -> Result<Option<Vec<String>>, (&'static str, String)> {
        match h.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(|s| s.trim().to_string())
                        .ok_or_else(|| (key, format!("expected strings, got {}", json_kind(v))))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err((key, format!("expected an array, got {}", json_kind(v)))),
        }
    };
    let mut prefixes: Vec<String> = strings("allowedSessionKeyPrefixes")?
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.to_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    prefixes.dedup();
    let allowed_agent_ids = match strings("allowedAgentIds")? {
        None => None,
        Some(list) if list.iter().any(|s| s == "*") => None,
        Some(list) => Some(
            list.iter()
                .filter(|s| !s.is_empty())
                .map(|s| AgentId::normalize(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ("allowedAgentIds", e.to_string()))?,
        ),
    };
    let policy = Hooks {
        token: String::new(),
        path: String::new(),
        allow_request_session_key,
        default_session_key,
        allowed_session_key_prefixes: prefixes,
        allowed_agent_ids,
    };
    match &policy.default_session_key {
        Some(k) if !policy.session_key_allowed(k) => {
            return Err((
                "defaultSessionKey",
                "must match hooks.allowedSessionKeyPrefixes".into(),
            ));
        }
        None if !policy.session_key_allowed("hook:example") => {
            return Err((
                "allowedSessionKeyPrefixes",
                "must include \"hook:\" when hooks.defaultSessionKey is unset".into(),
            ));
        }
        _ => {}
    }
    Ok(policy)
}

/// Model prices from `models.providers.<p>.models[{id, cost{input, output, cacheRead,
/// cacheWrite}}]`. A model without `cost` is unpriced (its usage without a recorded cost is
/// counted as missing, never as $0). Other provider settings belong to agent runs.
fn prices(models: &Value) -> Result<Prices, (String, String)> {
    let mut out = Prices::new();
    let Some(m) = models.as_object() else {
        return Err((
            "models".into(),
            format!("expected an object, got {}", json_kind(models)),
        ));
    };
    let Some(providers) = m.get("providers") else {
        return Ok(out);
    };
    let Some(providers) = providers.as_object() else {
        return Err((
            "models.providers".into(),
            "expected an object of provider id → settings".into(),
        ));
    };
    for (pid, p) in providers {
        let base = format!("models.providers.{pid}");
        let list = match p.get("models") {
            None => continue,
            Some(Value::Array(a)) => a,
            Some(_) => return Err((format!("{base}.models"), "expected an array".into())),
        };
        for (i, model) in list.iter().enumerate() {
            let at = format!("{base}.models[{i}]");
            let id = model
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| (at.clone(), "needs a string id".to_string()))?;
            let Some(cost) = model.get("cost") else {
                continue;
            };
            let part = |k: &str| -> Result<f64, (String, String)> {
                match cost.get(k) {
                    None | Some(Value::Null) => Ok(0.0),
                    Some(v) => v
                        .as_f64()
                        .filter(|x| x.is_finite() && *x >= 0.0)
                        .ok_or_else(|| {
                            (
                                format!("{at}.cost.{k}"),
                                format!("expected USD per million tokens, got {v}"),
                            )
                        }),
                }
            };
            let price = ModelPrice {
                input: part("input")?,
                output: part("output")?,
                cache_read: part("cacheRead")?,
                cache_write: part("cacheWrite")?,
            };
            out.insert((pid.clone(), id.to_string()), price);
        }
    }
    Ok(out)
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Why keel must not listen where `cfg` says, if so: beyond loopback it needs a secret
/// someone chose — `gateway.auth.token` (or `KEEL_GATEWAY_TOKEN`) or `gateway.auth.password`.
/// A token keel generated into the state directory is only good for loopback: nobody may
/// know it is guarding a public port. `cfg` has the flag and environment overrides applied,
/// not the state directory's token.
pub fn exposure_problem(cfg: &Config) -> Option<String> {
    if cfg.bind.is_loopback() || cfg.auth.token.is_some() || cfg.auth.password.is_some() {
        return None;
    }
    Some(format!(
        "binding {} (beyond loopback) needs a secret you chose: set gateway.auth.token \
         (or KEEL_GATEWAY_TOKEN) or gateway.auth.password; a token generated into the state \
         directory is used on loopback only",
        cfg.bind
    ))
}

/// Resolves a bind setting: OpenClaw's names (`loopback`, `lan`, `custom` with
/// `customBindHost`) or an IP address.
pub fn resolve_bind(bind: &str, custom_host: Option<&str>) -> Result<IpAddr, String> {
    match bind {
        "loopback" | "localhost" => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "lan" | "all" => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        "custom" => custom_host
            .ok_or_else(|| "\"custom\" needs gateway.customBindHost".to_string())?
            .parse()
            .map_err(|_| "gateway.customBindHost is not an IP address".to_string()),
        other => other.parse().map_err(|_| {
            format!("expected \"loopback\", \"lan\", \"custom\" or an IP address, got {other:?}")
        }),
    }
}

/// Applies `KEEL_HANDSHAKE_TIMEOUT_MS` / `OPENCLAW_HANDSHAKE_TIMEOUT_MS` (the first set wins),
/// clamped to [1 s, 120 s]. An invalid value is returned as a message to log once, and ignored.
pub fn handshake_override(
    keel: Option<&str>,
    openclaw: Option<&str>,
) -> (Option<Duration>, Option<String>) {
    let (name, raw) = match (keel, openclaw) {
        (Some(v), _) => ("KEEL_HANDSHAKE_TIMEOUT_MS", v),
        (None, Some(v)) => ("OPENCLAW_HANDSHAKE_TIMEOUT_MS", v),
        (None, None) => return (None, None),
    };
    match raw.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => {
            let d = Duration::from_millis(ms).clamp(HANDSHAKE_MIN, HANDSHAKE_MAX);
            (Some(d), None)
        }
        _ => (
            None,
            Some(format!(
                "{name}={raw:?} is not a positive number of milliseconds; ignored"
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn assert_clean(v: &Validated) {
        assert!(
            v.problems.is_empty() && v.warnings.is_empty(),
            "{:?} {:?}",
            v.problems,
            v.warnings
        );
    }

    #[test]
    fn empty_object_is_the_default() {
        let v = parse("{}", None);
        assert_clean(&v);
        // Only the file's own JSON differs: there was one, and it was empty.
        assert_eq!(*v.config.raw.0, serde_json::json!({}));
        let without_raw = Config {
            raw: RawConfig::default(),
            ..v.config
        };
        assert_eq!(without_raw, Config::default());
    }

    #[test]
    fn unknown_keys_warn_once_each_and_never_refuse() {
        let v = parse(
            r#"{"gateway":{"port":1234,"frobnicate":1},"nonsense":true,"plugins":{}}"#,
            None,
        );
        assert!(v.problems.is_empty());
        assert_eq!(v.config.port, 1234);
        assert_eq!(v.warnings.len(), 3, "{:?}", v.warnings);
        assert!(
            v.warnings
                .iter()
                .any(|w| w.starts_with("gateway.frobnicate: unknown key"))
        );
        assert!(
            v.warnings
                .iter()
                .any(|w| w.starts_with("plugins: OpenClaw setting not supported"))
        );
    }

    #[test]
    fn channels_is_a_known_root_key() {
        let v = parse(
            r#"{"channels":{"webhook":{"url":"http://127.0.0.1:9/hook","secret":"s"}}}"#,
            None,
        );
        assert_clean(&v);
        assert!(v.config.channels.0.contains_key("webhook"));
    }

    #[test]
    fn bad_tuning_disables_only_itself() {
        let v = parse(
            r#"{"gateway":{"drainTimeoutMs":"soon","drainGraceMs":100}}"#,
            None,
        );
        assert!(!v.is_fatal());
        assert_eq!(v.config.drain_timeout, Config::default().drain_timeout);
        assert_eq!(v.config.drain_grace, Duration::from_millis(100));
        assert_eq!(v.config.disabled.len(), 1);
        assert_eq!(v.config.disabled[0].feature, "gateway.drainTimeoutMs");
        assert!(v.config.readiness_reasons()[0].contains("gateway.drainTimeoutMs"));
    }

    #[test]
    fn hook_policy_has_openclaws_safe_defaults() {
        let h = |extra: &str| {
            parse(
                &format!(r#"{{"hooks":{{"enabled":true,"token":"t"{extra}}}}}"#),
                None,
            )
        };
        let v = h("");
        assert_clean(&v);
        let p = v.config.hooks.unwrap();
        assert!(!p.allow_request_session_key, "refused unless allowed");
        assert_eq!(p.default_session_key, None);
        assert!(p.agent_allowed(&AgentId::normalize("anyone").unwrap()));
        assert!(p.session_key_allowed("agent:main:main"), "no prefixes: any");

        let v = h(
            r#","allowRequestSessionKey":true,"defaultSessionKey":"hook:ingress","allowedSessionKeyPrefixes":["Hook:"," "],"allowedAgentIds":["Main","ops"]"#,
        );
        assert_clean(&v);
        let p = v.config.hooks.unwrap();
        assert!(p.allow_request_session_key);
        assert_eq!(p.default_session_key.as_deref(), Some("hook:ingress"));
        assert_eq!(p.allowed_session_key_prefixes, ["hook:"]);
        assert!(p.session_key_allowed("HOOK:x") && !p.session_key_allowed("agent:main:main"));
        let ids: Vec<&str> = p
            .allowed_agent_ids
            .iter()
            .flatten()
            .map(AgentId::as_str)
            .collect();
        assert_eq!(ids, ["main", "ops"]);

        let none = h(r#","allowedAgentIds":[]"#).config.hooks.unwrap();
        assert!(!none.agent_allowed(&AgentId::main()), "[] denies all");
        let all = h(r#","allowedAgentIds":["ops","*"]"#).config.hooks.unwrap();
        assert!(all.agent_allowed(&AgentId::main()), "\"*\" allows all");

        // Anything wrong in the policy disables hooks rather than opening more.
        for (extra, why) in [
            (
                r#","allowRequestSessionKey":"yes""#,
                "allowRequestSessionKey",
            ),
            (r#","allowedAgentIds":"main""#, "allowedAgentIds"),
            (r#","allowedAgentIds":["///"]"#, "allowedAgentIds"),
            (
                r#","allowedSessionKeyPrefixes":["agent:"]"#,
                "must include \"hook:\"",
            ),
            (
                r#","defaultSessionKey":"agent:main:x","allowedSessionKeyPrefixes":["hook:"]"#,
                "defaultSessionKey",
            ),
            (r#","defaultSessionKey":"agent:x""#, "defaultSessionKey"),
        ] {
            let v = h(extra);
            assert!(v.config.hooks.is_none(), "{extra}");
            assert_eq!(v.config.disabled[0].feature, "hooks", "{extra}");
            assert!(
                v.problems[0].message.contains(why),
                "{extra}: {:?}",
                v.problems
            );
            assert!(!v.is_fatal(), "the gateway itself starts");
        }
    }

    #[test]
    fn trusted_proxies_and_the_rate_limit() {
        let v = parse(
            r#"{"gateway":{"trustedProxies":["127.0.0.1","10.0.0.0/8","::1","192.168.1.7/24"],
                "auth":{"rateLimit":{"maxAttempts":3,"windowMs":2000,"lockoutMs":0,"exemptLoopback":false}}}}"#,
            None,
        );
        assert_clean(&v);
        let shown: Vec<String> = v
            .config
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            ["127.0.0.1/32", "10.0.0.0/8", "::1/128", "192.168.1.0/24"]
        );
        let rl = v.config.rate_limit;
        assert_eq!(
            (
                rl.gateway.max_attempts,
                rl.gateway.window,
                rl.gateway.lockout,
                rl.exempt_loopback
            ),
            (3, Duration::from_secs(2), Duration::ZERO, false)
        );
        // Defaults: OpenClaw's.
        let d = parse("{}", None).config;
        assert!(d.trusted_proxies.is_empty());
        assert_eq!(d.rate_limit, RateLimit::default());
        // A bad proxy entry trusts none, and says which.
        let v = parse(
            r#"{"gateway":{"trustedProxies":["10.0.0.1","proxy.lan"]}}"#,
            None,
        );
        assert!(v.config.trusted_proxies.is_empty());
        assert_eq!(v.problems[0].path, "gateway.trustedProxies[1]");
        assert!(!v.is_fatal());
        let v = parse(
            r#"{"gateway":{"auth":{"rateLimit":{"exemptLoopback":"no","maxAttempts":0}}}}"#,
            None,
        );
        assert_eq!(v.config.rate_limit, RateLimit::default());
        assert_eq!(v.problems.len(), 2, "{:?}", v.problems);
    }

    #[test]
    fn worker_settings() {
        let v = parse(r#"{"gateway":{"workers":{"cpu":3,"io":4,"nice":0}}}"#, None);
        assert!(v.problems.is_empty());
        assert_eq!(
            (
                v.config.cpu_workers,
                v.config.io_workers,
                v.config.worker_nice
            ),
            (3, 4, 0)
        );
        let v = parse(r#"{"gateway":{"workers":{"nice":25}}}"#, None);
        assert_eq!(v.config.worker_nice, 10, "out of range keeps the default");
        assert_eq!(v.config.disabled[0].feature, "gateway.workers.nice");
    }

    #[test]
    fn idempotency_settings() {
        let d = Config::default().idempotency;
        assert_eq!(
            (d.window, d.send_keys, d.run_keys),
            (Duration::from_secs(600), 10_000, 1_000)
        );
        let v = parse(
            r#"{"gateway":{"idempotency":{"windowMs":1500,"sendKeys":50,"runKeys":7}}}"#,
            None,
        );
        assert_clean(&v);
        let i = v.config.idempotency;
        assert_eq!(
            (i.window, i.send_keys, i.run_keys),
            (Duration::from_millis(1500), 50, 7)
        );
        assert_eq!(i.send_limits().window_ms, 1500);
        assert_eq!(i.run_limits().max_keys, 7);
        // A bad value keeps its default and disables only itself; an unknown key warns.
        let v = parse(
            r#"{"gateway":{"idempotency":{"windowMs":10,"runKeys":5,"ttl":1}}}"#,
            None,
        );
        assert!(!v.is_fatal());
        assert_eq!(v.config.idempotency.window, d.window);
        assert_eq!(v.config.idempotency.run_keys, 5);
        assert_eq!(v.config.disabled[0].feature, "gateway.idempotency.windowMs");
        assert!(
            v.warnings
                .iter()
                .any(|w| w.starts_with("gateway.idempotency.ttl: unknown key")),
            "{:?}",
            v.warnings
        );
        let v = parse(r#"{"gateway":{"idempotency":600}}"#, None);
        assert_eq!(v.config.disabled[0].feature, "gateway.idempotency");
        assert_eq!(v.config.idempotency, d);
    }

    #[test]
    fn model_prices() {
        let v = parse(
            r#"{"models":{"providers":{"anthropic":{"baseUrl":"https://api.anthropic.com","models":[{"id":"claude","cost":{"input":3,"output":15,"cacheRead":0.3}},{"id":"free"}]}}}}"#,
            None,
        );
        assert_clean(&v);
        let p = v.config.prices[&("anthropic".to_string(), "claude".to_string())];
        assert_eq!(
            (p.input, p.output, p.cache_read, p.cache_write),
            (3.0, 15.0, 0.3, 0.0)
        );
        assert_eq!(v.config.prices.len(), 1, "a model without cost is unpriced");
        let v = parse(
            r#"{"models":{"providers":{"a":{"models":[{"id":"m","cost":{"input":"cheap"}}]}}}}"#,
            None,
        );
        assert_eq!(
            v.config.disabled[0].feature,
            "models.providers.a.models[0].cost.input"
        );
        assert!(v.config.prices.is_empty());
    }

    #[test]
    fn hooks_without_token_disables_hooks_not_the_gateway() {
        let v = parse(r#"{"hooks":{"enabled":true}}"#, None);
        assert!(!v.is_fatal());
        assert_eq!(v.config.disabled[0].feature, "hooks");
        assert!(v.problems[0].message.contains("hooks.token"));
    }

    #[test]
    fn every_problem_is_listed() {
        let v = parse(
            r#"{"gateway":{"port":70000,"bind":"moon","auth":{"mode":"magic"},"queues":{"control":0}}}"#,
            None,
        );
        let paths: Vec<_> = v.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "gateway.port",
                "gateway.bind",
                "gateway.auth.mode",
                "gateway.queues.control"
            ]
        );
        assert!(v.is_fatal());
    }

    #[test]
    fn malformed_json_is_fatal_with_position() {
        let v = parse("{\"gateway\": ", None);
        assert!(v.is_fatal());
        assert!(v.problems[0].message.contains("not valid JSON"));
    }

    #[test]
    fn auth_modes() {
        let v = parse(r#"{"gateway":{"auth":{"mode":"password"}}}"#, None);
        assert!(v.is_fatal());
        let v = parse(
            r#"{"gateway":{"auth":{"mode":"password","password":"pw"}}}"#,
            None,
        );
        assert!(!v.is_fatal());
        assert_eq!(v.config.auth.password.as_deref(), Some("pw"));
        assert!(!format!("{:?}", v.config.auth).contains("pw"));
    }

    #[test]
    fn bind_names() {
        assert_eq!(
            resolve_bind("loopback", None).unwrap().to_string(),
            "127.0.0.1"
        );
        assert_eq!(resolve_bind("lan", None).unwrap().to_string(), "0.0.0.0");
        assert_eq!(
            resolve_bind("custom", Some("10.0.0.2"))
                .unwrap()
                .to_string(),
            "10.0.0.2"
        );
        assert!(resolve_bind("custom", None).is_err());
        assert_eq!(resolve_bind("::1", None).unwrap().to_string(), "::1");
    }

    #[test]
    fn handshake_env_is_clamped_and_bad_values_ignored() {
        assert_eq!(handshake_override(Some("50"), None).0, Some(HANDSHAKE_MIN));
        assert_eq!(
            handshake_override(None, Some("999999")).0,
            Some(HANDSHAKE_MAX)
        );
        assert_eq!(
            handshake_override(Some("2500"), Some("9000")).0,
            Some(Duration::from_millis(2500))
        );
        let (d, msg) = handshake_override(Some("abc"), None);
        assert!(d.is_none() && msg.unwrap().contains("KEEL_HANDSHAKE_TIMEOUT_MS"));
        assert_eq!(handshake_override(None, None), (None, None));
    }
}

/// Settings from flags and the environment, re-applied on top of every config file load (boot
/// and SIGHUP), so a reload never forgets what the command line said.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub port: Option<u16>,
    pub bind: Option<IpAddr>,
    /// `KEEL_GATEWAY_TOKEN`: wins over the file's token.
    pub token: Option<String>,
    /// The token from `<state>/gateway.token`: used when neither the file nor the environment
    /// sets one.
    pub fallback_token: Option<String>,
    pub handshake_timeout: Option<Duration>,
}

impl Overrides {
    pub fn apply(&self, c: &mut Config) {
        if let Some(p) = self.port {
            c.port = p;
        }
        if let Some(b) = self.bind {
            c.bind = b;
        }
        if let Some(t) = &self.token {
            c.auth.token = Some(t.clone());
        }
        if c.auth.token.is_none() && c.auth.mode == AuthMode::Token {
            c.auth.token = self.fallback_token.clone();
        }
        if let Some(h) = self.handshake_timeout {
            c.handshake_timeout = h;
        }
    }
}
