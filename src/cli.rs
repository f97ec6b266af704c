//! The command line: a plain lexopt loop into raw values ([`Args`]), then a step that
//! resolves them with the environment into settings ([`Args::serve_settings`]), so every flag
//! can be tested through `Parser::from_args` without touching the process environment.
//!
//! ```text
//! keel serve  [--port N] [--bind ADDR] [--config FILE] [--state-dir DIR]
//! keel check  [--config FILE] [--state-dir DIR]
//! keel status [--port N] [--bind ADDR] [--config FILE] [--state-dir DIR] [--json]
//! keel dashboard [--port N] [--bind ADDR] [--config FILE] [--state-dir DIR] [--json]
//! keel --version | --help
//! ```
//! Environment: `KEEL_PORT`, `KEEL_BIND`, `KEEL_CONFIG`, `KEEL_STATE_DIR`,
//! `KEEL_GATEWAY_TOKEN`, `KEEL_HANDSHAKE_TIMEOUT_MS` (or `OPENCLAW_HANDSHAKE_TIMEOUT_MS`),
//! `KEEL_LOG` (log filter, default `info`). Flags win over the environment, which wins over
//! the config file.

use crate::config::{self, EX_CONFIG, Overrides};
use crate::lifecycle::{self, ServeSettings};
use crate::state;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Exit status for a usage error.
pub const EX_USAGE: i32 = 2;

const HELP: &str = "keel — a gateway for self-hosted AI agents (OpenClaw gateway protocol v3/v4)

Usage:
  keel serve  [--port N] [--bind ADDR] [--config FILE] [--state-dir DIR]
  keel check  [--config FILE] [--state-dir DIR]
  keel status [--port N] [--bind ADDR] [--config FILE] [--state-dir DIR] [--json]
  keel usage  [--days N] [--agent ID] [--state-dir DIR] [--config FILE] [--json]
  keel dashboard [--port N] [--bind ADDR] [--config FILE] [--state-dir DIR] [--json]
  keel pairing list [CHANNEL] | keel pairing approve CHANNEL CODE [--account ID] [--json]
  keel import openclaw [--from DIR] [--to STATE] [--dry-run]
  keel cron list [--json] | keel cron run ID | keel cron rm ID
  keel cron add --name NAME (--every 30m | --cron EXPR [--tz ZONE] | --at ISO)
                --message TEXT [--agent ID] [--session isolated|main]
                [--channel CH --to ADDR [--account ID]] [--timeout SECONDS]
  keel --version

serve   run the gateway (no config file needed: 127.0.0.1:18789, state in ~/.keel,
        a generated token in <state>/gateway.token)
check   validate a config file with the same rules as boot; exit 1 listing every problem
status  ask the running gateway for its status (token from the state directory)
usage   spend per day and per model, read straight from the state directory (no server)
dashboard  the URL of OpenClaw's dashboard on this gateway, the token in its fragment
        (install the dashboard with scripts/install-dashboard.sh)
pairing list     chat senders waiting for approval, with their codes
pairing approve  let the sender who got CODE on CHANNEL send direct messages
import openclaw  copy an OpenClaw state (its SQLite store or its files; default ~/.openclaw)
        into keel's store (default the state directory): sessions, transcripts, archives;
        atomic per file, resumable, the source never modified
cron    scheduled agent turns on the running gateway: list them, add one, run one now,
        remove one (cron.* over HTTP)

Environment: KEEL_PORT, KEEL_BIND, KEEL_CONFIG, KEEL_STATE_DIR, KEEL_GATEWAY_TOKEN,
KEEL_HANDSHAKE_TIMEOUT_MS, KEEL_LOG (default info).
Signals: SIGTERM/SIGINT drain (twice: cancel now), SIGUSR1 diagnostic dump, SIGHUP reload.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Serve,
    Check,
    Status,
    Usage,
    Dashboard,
    Pairing,
    Import,
    Cron,
    Version,
    Help,
}

/// The command line as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub command: Command,
    pub port: Option<String>,
    pub bind: Option<String>,
    pub config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub json: bool,
    pub days: Option<String>,
    pub agent: Option<String>,
    /// `--account` (pairing).
    pub account: Option<String>,
    /// Words after the command (`pairing approve telegram CODE`).
    pub rest: Vec<String>,
    /// `import openclaw --from DIR --to STATE --dry-run`.
    pub from: Option<PathBuf>,
    pub to: Option<PathBuf>,
    pub dry_run: bool,
    /// `keel cron add`'s flags, by name (`name`, `every`, `cron`, `tz`, `at`, `message`,
    /// `session`, `channel`, `to`, `timeout`).
    pub cron: Vec<(String, String)>,
}

pub fn parse_args(args: Vec<OsString>) -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut a = Args {
        command: Command::Help,
        port: None,
        bind: None,
        config: None,
        state_dir: None,
        json: false,
        days: None,
        agent: None,
        account: None,
        rest: Vec::new(),
        from: None,
        to: None,
        dry_run: false,
        cron: Vec::new(),
    };
    let mut command = None;
    while let Some(arg) = p.next()? {
        match arg {
            Short('V') | Long("version") => {
                return Ok(Args {
                    command: Command::Version,
                    ..a
                });
            }
            Short('h') | Long("help") => {
                return Ok(Args {
                    command: Command::Help,
                    ..a
                });
            }
            Long("port") | Short('p') => a.port = Some(p.value()?.string()?),
            Long("bind") => a.bind = Some(p.value()?.string()?),
            Long("config") | Short('c') => a.config = Some(p.value()?.into()),
            Long("state-dir") => a.state_dir = Some(p.value()?.into()),
            Long("json") => a.json = true,
            Long("days") => a.days = Some(p.value()?.string()?),
            Long("agent") => a.agent = Some(p.value()?.string()?),
            Long("account") => a.account = Some(p.value()?.string()?),
            Long(
                flag @ ("name" | "every" | "cron" | "tz" | "at" | "message" | "session" | "channel"
                | "to" | "timeout"),
            ) if command == Some(Command::Cron) => {
                let flag = flag.to_string();
                a.cron.push((flag, p.value()?.string()?));
            }
            Long("from") => a.from = Some(p.value()?.into()),
            Long("to") => a.to = Some(p.value()?.into()),
            Long("dry-run") => a.dry_run = true,
            Value(v) if command.is_none() => {
                command = Some(match v.string()?.as_str() {
                    "serve" | "run" => Command::Serve,
                    "check" => Command::Check,
                    "status" => Command::Status,
                    "usage" => Command::Usage,
                    "dashboard" => Command::Dashboard,
                    "pairing" => Command::Pairing,
                    "import" => Command::Import,
                    "cron" => Command::Cron,
                    "version" => Command::Version,
                    "help" => Command::Help,
                    other => {
                        return Err(lexopt::Error::from(format!(
                            "unknown command {other:?} (try: serve, check, status, usage, dashboard, pairing, cron, import)"
                        )));
                    }
                });
            }
            Value(v) if command == Some(Command::Import) && a.rest.is_empty() => {
                a.rest.push(v.string()?);
            }
            Value(v)
                if matches!(command, Some(Command::Pairing | Command::Cron))
                    && a.rest.len() < 3 =>
            {
                a.rest.push(v.string()?);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    a.command = command.unwrap_or(Command::Help);
    Ok(a)
}

/// Reads one environment variable (injected, so tests need not touch the process's).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

impl Args {
    fn state_dir(&self, env: Env<'_>) -> Result<PathBuf, String> {
        self.state_dir
            .clone()
            .or_else(|| env("KEEL_STATE_DIR").map(PathBuf::from))
            .or_else(state::default_state_dir)
            .ok_or_else(|| "no state directory: set --state-dir or HOME".to_string())
    }

    fn config_file(&self, env: Env<'_>) -> Option<PathBuf> {
        self.config
            .clone()
            .or_else(|| env("KEEL_CONFIG").map(PathBuf::from))
    }

    /// Resolves flags and environment into what `serve` (and `status`) use.
    pub fn serve_settings(&self, env: Env<'_>) -> Result<ServeSettings, String> {
        let port = match self.port.clone().or_else(|| env("KEEL_PORT")) {
            None => None,
            Some(p) => Some(
                p.trim()
                    .parse::<u16>()
                    .map_err(|_| format!("invalid port {p:?}: expected 0-65535"))?,
            ),
        };
        let bind = match self.bind.clone().or_else(|| env("KEEL_BIND")) {
            None => None,
            Some(b) => {
                Some(config::resolve_bind(&b, None).map_err(|e| format!("invalid bind: {e}"))?)
            }
        };
        let (handshake_timeout, handshake_warning) = config::handshake_override(
            env("KEEL_HANDSHAKE_TIMEOUT_MS").as_deref(),
            env("OPENCLAW_HANDSHAKE_TIMEOUT_MS").as_deref(),
        );
        Ok(ServeSettings {
            state_dir: self.state_dir(env)?,
            config: self.config_file(env),
            overrides: Overrides {
                port,
                bind,
                token: env("KEEL_GATEWAY_TOKEN"),
                fallback_token: None,
                handshake_timeout,
            },
            handshake_warning,
            test_hooks: env("KEEL_TEST_HOOKS").as_deref() == Some("1"),
        })
    }
}

/// The logger: env_logger's lines on stderr as before, each record also kept in memory
/// (`logring`) for `logs.tail`.
struct Tee(env_logger::Logger);

impl log::Log for Tee {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.0.matches(record) {
            return;
        }
        self.0.log(record);
        let module = record.module_path().unwrap_or("keel");
        let ring = crate::logring::global();
        let now = crate::clock::wall_ms();
        match record.args().as_str() {
            Some(s) => ring.push(now, record.level(), module, s),
            None => ring.push(now, record.level(), module, &record.args().to_string()),
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

fn init_logging() {
    let env = env_logger::Env::new().filter_or("KEEL_LOG", "info");
    let logger = env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .format_target(false)
        .build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(Tee(logger))).is_ok() {
        log::set_max_level(max);
    }
}

/// Runs the command line; returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("keel: {e}\n\n{HELP}");
            return EX_USAGE;
        }
    };
    match args.command {
        Command::Version => {
            println!("keel {}", crate::VERSION);
            0
        }
        Command::Help => {
            println!("{HELP}");
            0
        }
        Command::Serve => {
            init_logging();
            install_panic_logger();
            match args.serve_settings(&process_env) {
                Ok(s) => lifecycle::serve(s),
                Err(e) => {
                    log::error!("{e}");
                    EX_USAGE
                }
            }
        }
        Command::Check => check(&args, &process_env),
        Command::Status => status(&args, &process_env),
        Command::Usage => usage(&args, &process_env),
        Command::Import => import(&args, &process_env),
        Command::Dashboard => dashboard(&args, &process_env),
        Command::Pairing => pairing(&args, &process_env),
        Command::Cron => cron(&args, &process_env),
    }
}

/// Panics are logged through the logger (one line with the thread name), not just printed.
fn install_panic_logger() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        log::error!("panic in thread {}: {info}", thread.name().unwrap_or("?"));
    }));
}

/// `keel check`: validates with the same rules as boot and lists everything.
fn check(args: &Args, env: Env<'_>) -> i32 {
    let settings = match args.serve_settings(env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keel check: {e}");
            return EX_USAGE;
        }
    };
    let path = lifecycle::config_path(settings.config.as_deref(), &settings.state_dir);
    let Some(path) = path else {
        let mut cfg = config::Config::default();
        settings.overrides.apply(&mut cfg);
        if let Some(why) = config::exposure_problem(&cfg) {
            println!("error: gateway.bind: {why}");
            return EX_CONFIG;
        }
        println!(
            "no config file (looked for --config, KEEL_CONFIG, {}); the embedded default is valid",
            settings.state_dir.join("keel.json").display()
        );
        return 0;
    };
    let mut v = config::load_file(&path);
    let mut cfg = v.config.clone();
    settings.overrides.apply(&mut cfg);
    if let Some(why) = config::exposure_problem(&cfg).filter(|_| !v.is_fatal()) {
        v.problems.push(config::Problem {
            path: "gateway.bind".into(),
            message: why,
            fatal: true,
        });
    }
    for w in &v.warnings {
        println!("warning: {w}");
    }
    for p in &v.problems {
        println!("{p}");
    }
    if v.problems.is_empty() {
        println!("{}: ok ({} warning(s))", path.display(), v.warnings.len());
        0
    } else {
        let fatal = v.problems.iter().filter(|p| p.fatal).count();
        println!(
            "{}: {} problem(s), {fatal} of which stop the gateway from starting",
            path.display(),
            v.problems.len()
        );
        if fatal > 0 { EX_CONFIG } else { 1 }
    }
}

/// `keel status`: asks the running gateway over HTTP and prints a summary.
fn status(args: &Args, env: Env<'_>) -> i32 {
    match status_inner(args, env) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel status: {e}");
            1
        }
    }
}

fn status_inner(args: &Args, env: Env<'_>) -> Result<i32, String> {
    let (cfg, state_dir) = client_config(args, env)?;
    let secret = cfg
        .auth
        .token
        .clone()
        .or(cfg.auth.password.clone())
        .ok_or_else(|| {
            format!(
                "no token: none configured and none in {}",
                state::token_path(&state_dir).display()
            )
        })?;
    let addr = local_addr(&cfg);
    let (code, body) = http_post(addr, "/api/rpc/status", &secret, Duration::from_secs(10))
        .map_err(|e| format!("cannot reach the gateway at {addr}: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        format!("gateway at {addr} answered {code} with a body that is not JSON: {e}")
    })?;
    if code != 200 {
        let msg = v["error"]["message"].as_str().unwrap_or("no message");
        return Err(format!("gateway at {addr} answered {code}: {msg}"));
    }
    let p = &v["payload"];
    if args.json {
        println!("{}", serde_json::to_string_pretty(p).unwrap_or_default());
        return Ok(0);
    }
    print!("{}", summarize(addr, p));
    Ok(0)
}

/// The config `status` and `dashboard` talk to the gateway with: the file, the flags and the
/// environment, and the token from the state directory when none is configured.
fn client_config(args: &Args, env: Env<'_>) -> Result<(config::Config, PathBuf), String> {
    let settings = args.serve_settings(env)?;
    let path = lifecycle::config_path(settings.config.as_deref(), &settings.state_dir);
    let v = match &path {
        Some(p) => config::load_file(p),
        None => config::embedded_default(),
    };
    let mut cfg = v.config;
    let mut overrides = settings.overrides.clone();
    overrides.fallback_token = state::read_token(&settings.state_dir).ok().flatten();
    overrides.apply(&mut cfg);
    Ok((cfg, settings.state_dir))
}

/// Where a client on this machine reaches the gateway: a wildcard bind is reached on
/// loopback.
fn local_addr(cfg: &config::Config) -> SocketAddr {
    let host = match cfg.bind {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(host, cfg.port)
}

/// `keel pairing list [CHANNEL]` / `keel pairing approve CHANNEL CODE`: calls `pairing.list`
/// / `pairing.approve` on the running gateway.
fn pairing(args: &Args, env: Env<'_>) -> i32 {
    match pairing_inner(args, env) {
        Ok(out) => {
            println!("{out}");
            0
        }
        Err(e) => {
            eprintln!("keel pairing: {e}");
            1
        }
    }
}

fn pairing_inner(args: &Args, env: Env<'_>) -> Result<String, String> {
    let words: Vec<&str> = args.rest.iter().map(String::as_str).collect();
    let (method, params) = match words.as_slice() {
        ["list"] => ("pairing.list", serde_json::json!({})),
        ["list", channel] => ("pairing.list", serde_json::json!({"channel": channel})),
        ["approve", channel, code] => (
            "pairing.approve",
            serde_json::json!({"channel": channel, "code": code, "accountId": args.account}),
        ),
        _ => {
            return Err(
                "usage: keel pairing list [CHANNEL] | keel pairing approve CHANNEL CODE".into(),
            );
        }
    };
    let v = rpc(args, env, method, &params)?;
    let p = &v["payload"];
    if args.json {
        return Ok(serde_json::to_string_pretty(p).unwrap_or_default());
    }
    if method == "pairing.approve" {
        return Ok(format!(
            "approved {} sender {} (account {})",
            p["channel"].as_str().unwrap_or("?"),
            p["senderId"].as_str().unwrap_or("?"),
            p["accountId"].as_str().unwrap_or("?")
        ));
    }
    let reqs = p["requests"].as_array().cloned().unwrap_or_default();
    if reqs.is_empty() {
        return Ok("no pending pairing requests".into());
    }
    let mut out = String::from("CODE      CHANNEL   ACCOUNT   SENDER    NAME  (expires)\n");
    for r in reqs {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        out.push_str(&format!(
            "{:<9} {:<9} {:<9} {:<9} {}  ({})\n",
            s("code"),
            s("channel"),
            s("accountId"),
            s("senderId"),
            s("name"),
            s("expiresAt")
        ));
    }
    Ok(out.trim_end().to_string())
}

/// Calls `method` on the running gateway over HTTP (`POST /api/rpc/<method>`, the token from
/// the config or the state directory); the answer, or its error's message.
fn rpc(
    args: &Args,
    env: Env<'_>,
    method: &str,
    params: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let (cfg, state_dir) = client_config(args, env)?;
    let secret = cfg
        .auth
        .token
        .clone()
        .or(cfg.auth.password.clone())
        .ok_or_else(|| {
            format!(
                "no token: none configured and none in {}",
                state::token_path(&state_dir).display()
            )
        })?;
    let addr = local_addr(&cfg);
    let (code, body) = http_post_body(
        addr,
        &format!("/api/rpc/{method}"),
        &secret,
        params.to_string().as_bytes(),
        Duration::from_secs(10),
    )
    .map_err(|e| format!("cannot reach the gateway at {addr}: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        format!("gateway at {addr} answered {code} with a body that is not JSON: {e}")
    })?;
    if code != 200 {
        let msg = v["error"]["message"].as_str().unwrap_or("no message");
        return Err(msg.to_string());
    }
    Ok(v)
}

/// `keel cron list|add|run|rm`: `cron.list`, `cron.add`, `cron.run`, `cron.remove` on the
/// running gateway.
fn cron(args: &Args, env: Env<'_>) -> i32 {
    match cron_inner(args, env) {
        Ok(out) => {
            println!("{out}");
            0
        }
        Err(e) => {
            eprintln!("keel cron: {e}");
            1
        }
    }
}

/// The `cron.add` params `keel cron add`'s flags stand for.
pub fn cron_add_params(args: &Args) -> Result<serde_json::Value, String> {
    use serde_json::json;
    let flag = |k: &str| {
        args.cron
            .iter()
            .rev()
            .find(|(f, _)| f == k)
            .map(|(_, v)| v.clone())
    };
    let name = flag("name").ok_or("--name is required")?;
    let message = flag("message").ok_or("--message is required")?;
    let schedule = match (flag("every"), flag("cron"), flag("at")) {
        (Some(e), None, None) => {
            let d = crate::config::cron::duration(&json!(e))
                .map_err(|why| format!("--every: {why}"))?
                .ok_or("--every: must be more than zero")?;
            json!({"kind": "every", "everyMs": d.as_millis() as u64})
        }
        (None, Some(expr), None) => json!({"kind": "cron", "expr": expr, "tz": flag("tz")}),
        (None, None, Some(at)) => json!({"kind": "at", "at": at}),
        _ => return Err("give one of --every, --cron or --at".into()),
    };
    let mut payload = json!({"kind": "agentTurn", "message": message});
    if let Some(t) = flag("timeout") {
        let t: u64 = t
            .parse()
            .map_err(|_| "--timeout: seconds, a whole number")?;
        payload["timeoutSeconds"] = json!(t);
    }
    let mut p = json!({
        "name": name,
        "schedule": schedule,
        "payload": payload,
        "sessionTarget": flag("session").unwrap_or_else(|| "isolated".into()),
    });
    if let Some(a) = &args.agent {
        p["agentId"] = json!(a);
    }
    if let Some(ch) = flag("channel") {
        p["delivery"] = json!({"mode": "announce", "channel": ch, "to": flag("to"),
                               "accountId": args.account});
    }
    Ok(p)
}

fn cron_inner(args: &Args, env: Env<'_>) -> Result<String, String> {
    use serde_json::json;
    let words: Vec<&str> = args.rest.iter().map(String::as_str).collect();
    let (method, params) = match words.as_slice() {
        ["list"] => ("cron.list", json!({"includeDisabled": true, "limit": 1000})),
        ["add"] => ("cron.add", cron_add_params(args)?),
        ["run", id] => ("cron.run", json!({"id": id, "mode": "force"})),
        ["rm" | "remove", id] => ("cron.remove", json!({"id": id})),
        _ => return Err("usage: keel cron list | add … | run ID | rm ID (keel --help)".into()),
    };
    let v = rpc(args, env, method, &params)?;
    let p = &v["payload"];
    if args.json {
        return Ok(serde_json::to_string_pretty(p).unwrap_or_default());
    }
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    Ok(match method {
        "cron.add" => format!(
            "added {} ({}), next run {}",
            s(&p["id"]),
            s(&p["name"]),
            s(&p["nextRunAt"])
        ),
        "cron.run" if p["ran"] == true => format!("started run {}", s(&p["runId"])),
        "cron.run" => format!("not run: {}", s(&p["reason"])),
        "cron.remove" => format!("removed {}", s(&p["id"])),
        _ => {
            let jobs = p["jobs"].as_array().cloned().unwrap_or_default();
            if jobs.is_empty() {
                return Ok("no cron jobs".into());
            }
            let mut out = String::from(
                "ID                                    ENABLED  NEXT RUN                  LAST     NAME\n",
            );
            for j in jobs {
                let enabled = if j["enabled"] == true {
                    "yes"
                } else if j["broken"] == true {
                    "BROKEN"
                } else {
                    "no"
                };
                out.push_str(&format!(
                    "{:<37} {:<8} {:<25} {:<8} {}{}\n",
                    s(&j["id"]),
                    enabled,
                    s(&j["nextRunAt"]),
                    s(&j["lastRunStatus"]),
                    s(&j["name"]),
                    j["disabledReason"]
                        .as_str()
                        .map(|r| format!("  ({r})"))
                        .unwrap_or_default(),
                ));
            }
            out.trim_end().to_string()
        }
    })
}

/// `keel dashboard`: the URL to open, as `openclaw dashboard --no-open` prints it for a
/// token: `http://127.0.0.1:18789/#token=<token>` (the UI reads the token from the fragment,
/// which never reaches a server or a log, and strips it).
fn dashboard(args: &Args, env: Env<'_>) -> i32 {
    match dashboard_text(args, env) {
        Ok((out, notes)) => {
            for n in notes {
                eprintln!("keel dashboard: {n}");
            }
            println!("{out}");
            0
        }
        Err(e) => {
            eprintln!("keel dashboard: {e}");
            1
        }
    }
}

/// What `keel dashboard` prints (a URL, or JSON with `--json`), and notes for stderr.
pub fn dashboard_text(args: &Args, env: Env<'_>) -> Result<(String, Vec<String>), String> {
    let (cfg, state_dir) = client_config(args, env)?;
    let addr = local_addr(&cfg);
    let base = &cfg.control_ui.base_path;
    let http = format!("http://{addr}{base}/");
    let ws = format!("ws://{addr}{base}");
    let mut notes = Vec::new();
    let token = match cfg.auth.mode {
        config::AuthMode::Token => Some(cfg.auth.token.clone().ok_or_else(|| {
            format!(
                "no token: none configured and none in {}",
                state::token_path(&state_dir).display()
            )
        })?),
        config::AuthMode::Password => {
            notes.push(
                "password mode: enter the gateway password on the dashboard's login screen".into(),
            );
            None
        }
    };
    if !cfg.control_ui.enabled {
        notes.push("gateway.controlUi.enabled is false: the gateway serves no dashboard".into());
    }
    let url = match &token {
        Some(t) => format!("{http}#token={}", fragment_encode(t)),
        None => http.clone(),
    };
    if args.json {
        let v = serde_json::json!({
            "ok": true,
            "url": url,
            "httpUrl": http,
            "wsUrl": ws,
            "port": addr.port(),
            "tokenIncluded": token.is_some(),
        });
        return Ok((v.to_string(), notes));
    }
    Ok((url, notes))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn fragment_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The human summary `keel status` prints.
pub fn summarize(addr: SocketAddr, p: &serde_json::Value) -> String {
    let mut out = String::new();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    out.push_str(&format!(
        "keel {} at {addr} (pid {})\n",
        s(&p["version"]),
        p["pid"]
    ));
    let ready = if p["ready"].as_bool() == Some(true) {
        "ready".to_string()
    } else {
        let reasons: Vec<String> = p["notReadyReasons"]
            .as_array()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default();
        format!("NOT ready: {}", reasons.join("; "))
    };
    let up = p["uptimeMs"].as_u64().unwrap_or(0) / 1000;
    out.push_str(&format!("  phase     {} — {ready}\n", s(&p["phase"])));
    out.push_str(&format!(
        "  uptime    {}h{:02}m{:02}s\n",
        up / 3600,
        up / 60 % 60,
        up % 60
    ));
    let reasons: Vec<String> = p["pressure"]["reasons"]
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    let why = if reasons.is_empty() {
        String::new()
    } else {
        format!(" ({})", reasons.join("; "))
    };
    out.push_str(&format!(
        "  pressure  {}{why}\n",
        s(&p["pressure"]["level"])
    ));
    out.push_str(&format!(
        "  memory    {} MiB resident\n",
        p["rssBytes"].as_u64().unwrap_or(0) >> 20
    ));
    let c = &p["connections"];
    out.push_str(&format!(
        "  clients   {} WebSocket, {} handshaking, {} HTTP\n",
        c["ws"], c["wsHandshake"], c["http"]
    ));
    for pool in ["cpu", "io"] {
        let q = &p["pools"][pool];
        let lanes: Vec<String> = ["control", "interactive", "background"]
            .iter()
            .map(|l| format!("{l} {}", q["lanes"][l]["depth"]))
            .collect();
        out.push_str(&format!(
            "  {pool:<9} {}/{} busy; queued: {}\n",
            q["busy"],
            q["workers"],
            lanes.join(", ")
        ));
    }
    let jobs = p["jobs"].as_array().map_or(0, Vec::len);
    out.push_str(&format!("  jobs      {jobs} in flight\n"));
    if let Some(d) = p["config"]["disabled"].as_array().filter(|d| !d.is_empty()) {
        for f in d {
            out.push_str(&format!(
                "  disabled  {}: {}\n",
                s(&f["feature"]),
                s(&f["reason"])
            ));
        }
    }
    out
}

/// `keel import openclaw [--from DIR] [--to STATE] [--dry-run]`: an OpenClaw state (its SQLite
/// store or its files; default `~/.openclaw`) written into keel's store (default the state
/// directory), never modifying the source.
fn import(args: &Args, env: Env<'_>) -> i32 {
    if args.rest.first().map(String::as_str) != Some("openclaw") {
        eprintln!("keel import: usage: keel import openclaw [--from DIR] [--to STATE] [--dry-run]");
        return 2;
    }
    let from = match args.from.clone().or_else(|| {
        env("OPENCLAW_STATE_DIR")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".openclaw")))
    }) {
        Some(f) => f,
        None => {
            eprintln!("keel import: no source: give --from DIR");
            return 2;
        }
    };
    let to = match args.to.clone().map_or_else(|| args.state_dir(env), Ok) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("keel import: {e}");
            return 2;
        }
    };
    match crate::sessions::sqlite::import::import(&from, &to, args.dry_run) {
        Ok(r) => {
            print!(
                "keel import openclaw: {} → {}{}\n{}",
                from.display(),
                to.display(),
                if args.dry_run {
                    " (dry run: nothing written)"
                } else {
                    ""
                },
                r.summary(args.dry_run)
            );
            0
        }
        Err(e) => {
            eprintln!("keel import: {e}");
            1
        }
    }
}

/// `keel usage`: a spend table straight from the state directory, without a server. Reads
/// the saved usage index if there is one (never writes it) and whatever changed since.
fn usage(args: &Args, env: Env<'_>) -> i32 {
    match usage_inner(args, env) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("keel usage: {e}");
            1
        }
    }
}

fn usage_inner(args: &Args, env: Env<'_>) -> Result<String, String> {
    use crate::sessions::{index::Index, query, store::Stores};
    // Only what usage reads: a bad KEEL_PORT, say, is no reason to refuse.
    let dir = &args.state_dir(env)?;
    let days = match &args.days {
        None => 30,
        Some(d) => d
            .parse::<u64>()
            .ok()
            .filter(|d| (1..=3660).contains(d))
            .ok_or_else(|| format!("invalid --days {d:?}: expected 1-3660"))?,
    };
    if !crate::sessions::store::agents_dir(dir).is_dir() {
        return Err(format!(
            "no agents in {} (is this a keel or OpenClaw state directory?)",
            dir.display()
        ));
    }
    let path = lifecycle::config_path(args.config_file(env).as_deref(), dir);
    let prices = match &path {
        Some(p) => config::load_file(p).config.prices,
        None => config::Prices::new(),
    };
    let mut index = Index::load(dir).ok().flatten().unwrap_or_default();
    index
        .refresh_all(dir)
        .map_err(|e| format!("cannot read transcripts in {}: {e}", dir.display()))?;
    let stores = Stores::default().refresh(dir);
    let cache = query::CacheStatus {
        status: query::IndexState::Fresh,
        files_indexed: index.files.len(),
        files_total: index.files.len(),
    };
    let cx = query::Ctx {
        index: &index,
        stores: &stores,
        prices: &prices,
        now_ms: crate::clock::wall_ms() as i64,
        cache,
        files: None,
        prices_version: 0,
    };
    let agent = match args.agent.as_deref().filter(|a| !a.is_empty()) {
        Some(a) => Some(crate::ids::AgentId::normalize(a).map_err(|e| format!("--agent: {e}"))?),
        None => None,
    };
    let range = query::RangeSpec {
        days: Some(days as i64),
        ..query::RangeSpec::default()
    };
    let cost = query::CostQuery {
        range: range.clone(),
        agent: agent.clone(),
    };
    let usage = query::UsageQuery {
        range,
        key: None,
        agent: agent.map(|a| a.as_str().to_string()),
        limit: 0,
        cursor: 0,
        grouping: query::Grouping::Instance,
        creator: None,
    };
    let (cost, _) = query::usage_cost(&cx, &cost).map_err(|e| e.message)?;
    let (usage, _) = query::sessions_usage(&cx, &usage).map_err(|e| e.message)?;
    let (cost, usage) = (cost.to_value(), usage.to_value());
    if args.json {
        let out = serde_json::json!({"cost": cost, "usage": usage});
        return Ok(serde_json::to_string_pretty(&out).unwrap_or_default() + "\n");
    }
    Ok(spend_table(dir, args.agent.as_deref(), &cost, &usage))
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The table `keel usage` prints.
pub fn spend_table(
    dir: &Path,
    agent: Option<&str>,
    cost: &serde_json::Value,
    usage: &serde_json::Value,
) -> String {
    let mut out = String::new();
    let who = agent.map_or_else(|| "all agents".to_string(), |a| format!("agent {a}"));
    out.push_str(&format!(
        "usage in {} — {who}, {} to {} (UTC)\n\n",
        dir.display(),
        cost["startDate"].as_str().unwrap_or("?"),
        cost["endDate"].as_str().unwrap_or("?")
    ));
    let tok = |v: &serde_json::Value| thousands(v.as_u64().unwrap_or(0));
    let usd = |v: &serde_json::Value| format!("${:.2}", v.as_f64().unwrap_or(0.0));
    out.push_str(&format!("{:<12} {:>16} {:>20}\n", "date", "tokens", "cost"));
    for d in cost["daily"].as_array().into_iter().flatten() {
        if d["totalTokens"].as_u64().unwrap_or(0) == 0
            && d["missingCostEntries"].as_u64().unwrap_or(0) == 0
        {
            continue;
        }
        out.push_str(&format!(
            "{:<12} {:>16} {:>20}\n",
            d["date"].as_str().unwrap_or("?"),
            tok(&d["totalTokens"]),
            usd(&d["totalCost"])
        ));
    }
    out.push_str(&format!(
        "\n{:<40} {:>9} {:>16} {:>20}\n",
        "model", "messages", "tokens", "cost"
    ));
    for m in usage["aggregates"]["byModel"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = format!(
            "{}/{}",
            m["provider"].as_str().unwrap_or("?"),
            m["model"].as_str().unwrap_or("?")
        );
        let t = &m["totals"];
        let missing = t["missingCostEntries"].as_u64().unwrap_or(0);
        let mut c = usd(&t["totalCost"]);
        if missing > 0 {
            c = format!("{c} +{missing} unpriced");
        }
        let count = m["count"].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "{:<40} {:>9} {:>16} {:>20}\n",
            name,
            count,
            tok(&t["totalTokens"]),
            c
        ));
    }
    let t = &cost["totals"];
    out.push_str(&format!(
        "\n{:<40} {:>9} {:>16} {:>20}\n",
        "total",
        "",
        tok(&t["totalTokens"]),
        usd(&t["totalCost"])
    ));
    let missing = t["missingCostEntries"].as_u64().unwrap_or(0);
    if missing > 0 {
        out.push_str(&format!(
            "{missing} message(s) with usage had no recorded cost and no configured price (models.providers.<p>.models[].cost): not counted, never as $0\n"
        ));
    }
    out
}

/// A minimal blocking HTTP/1.1 POST with `Connection: close`, bounded by `timeout`.
fn http_post(
    addr: SocketAddr,
    path: &str,
    token: &str,
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    http_post_body(addr, path, token, b"{}", timeout)
}

fn http_post_body(
    addr: SocketAddr,
    path: &str,
    token: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req)?;
    let mut buf = Vec::new();
    s.take(64 << 20).read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("response has no header end"))?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("response has no status"))?;
    Ok((code, buf[split + 4..].to_vec()))
}

/// Used by `status` and tests: does `path` look like a state directory keel made?
pub fn has_token(state_dir: &Path) -> bool {
    state::token_path(state_dir).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Args, lexopt::Error> {
        parse_args(a.iter().map(OsString::from).collect())
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn commands() {
        assert_eq!(args(&["serve"]).unwrap().command, Command::Serve);
        assert_eq!(args(&["check"]).unwrap().command, Command::Check);
        assert!(args(&["status", "--json"]).unwrap().json);
        assert_eq!(args(&["--version"]).unwrap().command, Command::Version);
        let i = args(&[
            "import",
            "openclaw",
            "--from",
            "/o",
            "--to",
            "/k",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(
            (
                i.command,
                i.rest.as_slice(),
                i.from.as_deref(),
                i.to.as_deref(),
                i.dry_run
            ),
            (
                Command::Import,
                ["openclaw".to_string()].as_slice(),
                Some(Path::new("/o")),
                Some(Path::new("/k")),
                true
            )
        );
        assert!(args(&["import", "openclaw", "extra"]).is_err());
        let u = args(&["usage", "--days", "7", "--agent", "main"]).unwrap();
        assert_eq!(
            (u.command, u.days.as_deref(), u.agent.as_deref()),
            (Command::Usage, Some("7"), Some("main"))
        );
        assert_eq!(args(&["-V"]).unwrap().command, Command::Version);
        assert_eq!(args(&[]).unwrap().command, Command::Help);
        assert!(args(&["launch"]).is_err());
        assert!(args(&["serve", "--frob"]).is_err());
        assert!(args(&["serve", "extra"]).is_err());
    }

    #[test]
    fn port_flag() {
        let a = args(&["serve", "--port", "9000"]).unwrap();
        assert_eq!(
            a.serve_settings(&no_env).unwrap().overrides.port,
            Some(9000)
        );
        let a = args(&["serve", "--port=70000"]).unwrap();
        assert!(
            a.serve_settings(&no_env)
                .unwrap_err()
                .contains("invalid port")
        );
    }

    #[test]
    fn bind_flag() {
        let a = args(&["serve", "--bind", "lan"]).unwrap();
        assert_eq!(
            a.serve_settings(&no_env).unwrap().overrides.bind,
            Some("0.0.0.0".parse().unwrap())
        );
        let a = args(&["serve", "--bind", "nowhere"]).unwrap();
        assert!(a.serve_settings(&no_env).is_err());
    }

    #[test]
    fn config_and_state_dir_flags() {
        let a = args(&[
            "serve",
            "--config",
            "/etc/keel.json",
            "--state-dir",
            "/var/lib/keel",
        ])
        .unwrap();
        let s = a.serve_settings(&no_env).unwrap();
        assert_eq!(s.config, Some(PathBuf::from("/etc/keel.json")));
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/keel"));
    }

    #[test]
    fn environment_fills_in_and_flags_win() {
        let env = |k: &str| match k {
            "KEEL_PORT" => Some("1234".to_string()),
            "KEEL_STATE_DIR" => Some("/srv/keel".to_string()),
            "KEEL_GATEWAY_TOKEN" => Some("tok".to_string()),
            "KEEL_HANDSHAKE_TIMEOUT_MS" => Some("soon".to_string()),
            "KEEL_TEST_HOOKS" => Some("1".to_string()),
            _ => None,
        };
        let s = args(&["serve"]).unwrap().serve_settings(&env).unwrap();
        assert_eq!(s.overrides.port, Some(1234));
        assert_eq!(s.state_dir, PathBuf::from("/srv/keel"));
        assert_eq!(s.overrides.token.as_deref(), Some("tok"));
        assert!(s.handshake_warning.unwrap().contains("soon"));
        assert!(s.test_hooks);
        let s = args(&["serve", "--port", "5"])
            .unwrap()
            .serve_settings(&env)
            .unwrap();
        assert_eq!(s.overrides.port, Some(5));
    }

    #[test]
    fn the_dashboard_url_carries_the_token_in_its_fragment() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().to_str().unwrap().to_string();
        std::fs::write(
            dir.path().join("keel.json"),
            r#"{"gateway":{"port":18999,"bind":"lan","auth":{"token":"a b/c+d"},
                "controlUi":{"basePath":"/oc/"}}}"#,
        )
        .unwrap();
        let a = args(&["dashboard", "--state-dir", &state]).unwrap();
        assert_eq!(a.command, Command::Dashboard);
        let (url, notes) = dashboard_text(&a, &no_env).unwrap();
        assert_eq!(url, "http://127.0.0.1:18999/oc/#token=a%20b%2Fc%2Bd");
        assert!(notes.is_empty(), "{notes:?}");
        let a = args(&["dashboard", "--state-dir", &state, "--json", "--port", "7"]).unwrap();
        let (json, _) = dashboard_text(&a, &no_env).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["httpUrl"], "http://127.0.0.1:7/oc/");
        assert_eq!(v["wsUrl"], "ws://127.0.0.1:7/oc");
        assert_eq!(v["tokenIncluded"], true);
        // No token anywhere: said so, not a URL that cannot log in.
        let empty = tempfile::tempdir().unwrap();
        let a = args(&["dashboard", "--state-dir", empty.path().to_str().unwrap()]).unwrap();
        assert!(
            dashboard_text(&a, &no_env)
                .unwrap_err()
                .contains("no token")
        );
    }

    #[test]
    fn summary_reads_like_a_status() {
        let p = serde_json::json!({
            "version": "0.1.0", "pid": 42, "ready": false, "notReadyReasons": ["draining"],
            "phase": "draining", "uptimeMs": 3_723_000, "pressure": {"level": "normal", "reasons": []},
            "rssBytes": 8 << 20, "connections": {"ws": 2, "wsHandshake": 0, "http": 1},
            "pools": {"cpu": {"busy": 1, "workers": 2, "lanes": {"control": {"depth": 0}, "interactive": {"depth": 3}, "background": {"depth": 0}}}},
            "jobs": [{}], "config": {"disabled": [{"feature": "hooks", "reason": "no token"}]}
        });
        let s = summarize("127.0.0.1:1".parse().unwrap(), &p);
        assert!(s.contains("NOT ready: draining"), "{s}");
        assert!(s.contains("uptime    1h02m03s"), "{s}");
        assert!(s.contains("interactive 3"), "{s}");
        assert!(s.contains("disabled  hooks: no token"), "{s}");
    }
}
