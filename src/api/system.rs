//! The dashboard's system pages, from what keel measures and holds: `system.info` (host,
//! process, reactor load, disk of the state directory), `logs.tail` (keel's own recent log
//! lines, `logring`), `channels.status` (the configured delivery channels and what their sends
//! last did), and `config.get` (the config in force, every secret redacted).
//!
//! Each is a job: they read `/proc`, or serialize up to a megabyte.

use super::ui::env_ref;
use crate::clock;
use crate::config::Config;
use crate::config::channels::Kind;
use crate::error::RpcError;
use crate::jobs::{JobCtx, Work};
use crate::logring;
use crate::protocol::params::{self, parse};
use crate::runtime::Shared;
use crate::sync::lock;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// This process's id for clients (`processInstanceId`, `gatewayInstanceId`, the `file` of
/// `logs.tail`): a fresh UUID at every start, so a client can tell a restart.
pub fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| clock::Rng::from_os().uuid())
}

// ---- load ----------------------------------------------------------------------------------

/// What the load figures are deltas of.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    /// Process CPU time (user + system).
    cpu: Duration,
    /// The reactor's busy time (the sum of its iterations).
    busy: Duration,
}

/// The previous sample, taken by the previous call (or the start of the process).
static LAST: Mutex<Option<Sample>> = Mutex::new(None);

/// A delta shorter than this is not measured: the previous one is kept.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// This process's CPU time from `/proc/self/stat` (utime + stime).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some(Duration::from_micros(ticks.saturating_mul(1_000_000) / hz))
}

/// The reactor's load as OpenClaw reports its event loop's: delay (the reactor's lag over the
/// watchdog's window), utilization (the share of time the reactor was busy) and the process's
/// CPU use in cores, both over `intervalMs` since the previous call.
fn event_loop(shared: &Shared) -> Value {
    let now = Instant::now();
    let current = Sample {
        at: now,
        cpu: cpu_time().unwrap_or_default(),
        busy: shared.metrics.lag.sum(),
    };
    let since = {
        let mut last = lock(&LAST);
        let prev = last.unwrap_or(Sample {
            at: shared.started,
            cpu: Duration::ZERO,
            busy: Duration::ZERO,
        });
        if now.saturating_duration_since(prev.at) >= MIN_INTERVAL || last.is_none() {
            *last = Some(current);
        }
        prev
    };
    let span = now
        .saturating_duration_since(since.at)
        .max(Duration::from_millis(1));
    let ratio = |d: Duration| {
        let r = d.as_secs_f64() / span.as_secs_f64();
        (r * 1000.0).round() / 1000.0
    };
    let p = shared.pressure();
    let cfg = shared.config();
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0;
    let p99 = p.lag_p99.unwrap_or(p.lag_max);
    let mut reasons = Vec::new();
    if p99 >= cfg.pressure.lag_warn {
        reasons.push("event_loop_delay");
    }
    let degraded = !reasons.is_empty();
    json!({
        "degraded": degraded,
        "degradedSinceMs": degraded.then_some(p.since_wall_ms),
        "reasons": reasons,
        "intervalMs": span.as_millis() as u64,
        "delayP99Ms": ms(p99),
        "delayMaxMs": ms(p.lag_max),
        "utilization": ratio(current.busy.saturating_sub(since.busy)),
        "cpuCoreRatio": ratio(current.cpu.saturating_sub(since.cpu)),
    })
}

// ---- system.info ---------------------------------------------------------------------------

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `/proc/meminfo`'s value of `key`, in bytes.
fn meminfo(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Node's names for the architectures, which OpenClaw's dashboard shows.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        "x86" => "ia32",
        other => other,
    }
}

fn system_info_json(shared: &Shared) -> Value {
    let hostname = read_trimmed("/proc/sys/kernel/hostname").unwrap_or_default();
    let release = read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let load: Vec<f64> = read_trimmed("/proc/loadavg")
        .map(|l| {
            l.split_whitespace()
                .take(3)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let state = &shared.state_dir;
    let disk = rustix::fs::statvfs(state).ok().map(|s| {
        let unit = s.f_frsize.max(1);
        (s.f_blocks * unit, s.f_bavail * unit)
    });
    let mut out = json!({
        "machineName": hostname.split('.').next().unwrap_or(""),
        "hostname": hostname,
        "platform": std::env::consts::OS,
        "release": release,
        "arch": arch(),
        "osLabel": format!("Linux {release}"),
        "port": shared.listen_addr().port(),
        "pid": std::process::id(),
        "processInstanceId": instance_id(),
        "uptimeMs": shared.uptime().as_millis() as u64,
        "cpuCount": cpus,
        "cpuModel": cpu_model,
        "loadAverage": load,
        "memoryTotalBytes": meminfo(&mem, "MemTotal"),
        "memoryFreeBytes": meminfo(&mem, "MemAvailable"),
        "eventLoop": event_loop(shared),
        "processMemory": {"rssBytes": crate::procfs::rss_bytes()},
        "runtime": "keel",
        "version": crate::VERSION,
        "pressure": {
            "level": shared.pressure().level.as_str(),
            "reasons": shared.pressure().reasons,
        },
        "diskPath": state,
    });
    if let Some((total, avail)) = disk {
        out["disks"] = json!([{"path": state, "totalBytes": total, "availableBytes": avail}]);
        out["diskTotalBytes"] = json!(total);
        out["diskAvailableBytes"] = json!(avail);
    }
    out
}

/// `system.info {}`: the host, this process and its load, the state directory's disk.
pub fn system_info(shared: &Arc<Shared>, _p: &Value) -> Result<Work, RpcError> {
    let sh = shared.clone();
    Ok(Box::new(move |ctx: &JobCtx| {
        ctx.check()?;
        Ok(system_info_json(&sh).into())
    }))
}

// ---- logs.tail -----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TailParams {
    #[serde(default, deserialize_with = "params::count")]
    cursor: Option<u64>,
    /// 500 when not given (OpenClaw's default).
    #[serde(default, deserialize_with = "params::count_max::<5000, _>")]
    limit: Option<u64>,
    /// 250,000 when not given.
    #[serde(default, deserialize_with = "params::count_max::<1_000_000, _>")]
    max_bytes: Option<u64>,
}

/// `logs.tail {cursor?, limit?, maxBytes?}` → `{file, cursor, size, lines[], truncated,
/// reset}` from keel's in-memory log (`logring`): without a cursor the newest lines, with one
/// only those logged since. `file` names this process, so a client polling across a restart
/// sees it change and starts over.
pub fn logs_tail(_shared: &Arc<Shared>, p: &Value) -> Result<Work, RpcError> {
    let q: TailParams = parse(p)?;
    let limit = q.limit.unwrap_or(500).max(1) as usize;
    let max_bytes = q.max_bytes.unwrap_or(250_000).max(1) as usize;
    let cursor = q.cursor;
    Ok(Box::new(move |ctx: &JobCtx| {
        ctx.check()?;
        let t = logring::global().tail(cursor, limit, max_bytes);
        let lines: Vec<&str> = t.lines.iter().map(|l| &**l).collect();
        Ok(json!({
            "file": format!("memory:keel/{}", instance_id()),
            "cursor": t.cursor,
            "size": t.size,
            "lines": lines,
            "truncated": t.truncated,
            "reset": t.reset,
        })
        .into())
    }))
}

// ---- channels.status -----------------------------------------------------------------------

fn label(kind: Kind) -> &'static str {
    match kind {
        Kind::Telegram => "Telegram",
        Kind::Slack => "Slack",
        Kind::Discord => "Discord",
        Kind::Feishu => "Feishu",
        Kind::Weixin => "WeChat",
        Kind::Webhook => "Webhook",
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusParams {
    #[serde(default, deserialize_with = "params::flag")]
    probe: Option<bool>,
    #[serde(default, deserialize_with = "params::count")]
    #[allow(dead_code)]
    timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "params::string")]
    channel: Option<String>,
}

/// The channel a disabled config feature belongs to (`channels.<name>[.…]`).
fn disabled_channel(feature: &str) -> Option<&str> {
    let rest = feature.strip_prefix("channels.")?;
    Some(rest.split(['.', '[']).next().unwrap_or(rest)).filter(|n| !n.is_empty())
}

fn channels_status_json(shared: &Shared, probe: bool, only: Option<&str>) -> Value {
    let cfg = shared.config();
    let activity = shared.delivery.activity();
    let mut order: Vec<String> = Vec::new();
    let mut labels = Map::new();
    let mut channels = Map::new();
    let mut accounts = Map::new();
    let mut defaults = Map::new();
    let mut issues = Vec::new();
    let mut add = |name: &str, kind: Option<Kind>, account: Value| {
        if only.is_some_and(|o| o != name) || order.iter().any(|n| n == name) {
            return;
        }
        order.push(name.to_string());
        let shown = kind.map_or_else(|| name.to_string(), |k| label(k).to_string());
        labels.insert(name.into(), json!(shown));
        let summary = json!({
            "configured": account["configured"],
            "running": account["running"],
            "lastError": account["lastError"],
            "lastOutboundAt": account["lastOutboundAt"],
        });
        channels.insert(name.into(), summary);
        accounts.insert(name.into(), json!([account]));
        defaults.insert(name.into(), json!("default"));
    };
    for (name, c) in &cfg.channels.0 {
        let a = activity.get(name).cloned().unwrap_or_default();
        // A failure newer than the last success is the channel's current error.
        let last_error = match (a.last_error_ms, a.last_sent_ms) {
            (Some(e), Some(s)) if s > e => None,
            _ => a.last_error.clone(),
        };
        let mut account = json!({
            "accountId": "default",
            "enabled": true,
            "configured": true,
            "running": shared.delivery.dispatching(name),
            "mode": "outbound",
            "lastError": last_error,
            "lastOutboundAt": a.last_sent_ms,
            "sent": a.sent,
            "failed": a.failed,
        });
        if c.kind() != Kind::Webhook {
            // A webhook's URL may carry its secret; an API's base URL does not.
            account["baseUrl"] = json!(c.base_url);
        }
        add(name, Some(c.kind()), account);
    }
    for d in &cfg.disabled {
        let Some(name) = disabled_channel(&d.feature) else {
            continue;
        };
        if only.is_some_and(|o| o != name) {
            continue;
        }
        add(
            name,
            Kind::parse(name),
            json!({
                "accountId": "default", "enabled": true, "configured": false, "running": false,
                "lastError": d.reason, "lastOutboundAt": null,
            }),
        );
        if issues.len() < 50 {
            issues.push(json!({
                "channel": name, "accountId": "default", "kind": "config",
                "message": format!("{}: {}", d.feature, d.reason),
            }));
        }
    }
    // Inbound accounts: merged into the channel's account of the same id (the delivery side
    // answers for sending, the transport for receiving), or listed as accounts of their own.
    let now = clock::wall_ms();
    for h in shared.inbound.accounts() {
        let name = h.channel.as_str();
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let inbound = h.status_json(now);
        if !order.iter().any(|n| n == name) {
            order.push(name.to_string());
            let shown =
                Kind::parse(name).map_or_else(|| name.to_string(), |k| label(k).to_string());
            labels.insert(name.into(), json!(shown));
            defaults.insert(name.into(), json!("default"));
        }
        let list = accounts
            .entry(name.to_string())
            .or_insert_with(|| json!([]));
        let Value::Array(list) = list else { continue };
        match list
            .iter_mut()
            .find(|a| a["accountId"] == h.account_id.as_str())
        {
            Some(Value::Object(a)) => {
                let outbound_error = a.get("lastError").cloned().unwrap_or(Value::Null);
                if let Value::Object(i) = inbound.clone() {
                    for (k, v) in i {
                        a.insert(k, v);
                    }
                }
                // The transport's error is the one that stops messages coming in; a send
                // error shows when the transport has none.
                if a.get("lastError").is_none_or(Value::is_null) {
                    a.insert("lastError".into(), outbound_error);
                }
            }
            _ => list.push(inbound.clone()),
        }
        let first = list.first().cloned().unwrap_or(Value::Null);
        channels.insert(
            name.into(),
            json!({
                "configured": true,
                "running": first["running"],
                "connected": first["connected"],
                "lastError": first["lastError"],
                "lastInboundAt": first["lastInboundAt"],
                "lastOutboundAt": first["lastOutboundAt"],
            }),
        );
        if let Some(why) = h.stale(now).or_else(|| {
            (!h.connected.load(std::sync::atomic::Ordering::Relaxed))
                .then(|| inbound["lastError"].as_str().map(str::to_string))
                .flatten()
        }) && issues.len() < 50
        {
            issues.push(json!({
                "channel": name, "accountId": h.account_id, "kind": "runtime", "message": why,
            }));
        }
    }
    let mut out = json!({
        "ts": clock::wall_ms(),
        "channelOrder": order,
        "channelLabels": labels,
        "channels": channels,
        "channelAccounts": accounts,
        "channelDefaultAccountId": defaults,
        "eventLoop": event_loop(shared),
        "statusIssues": issues,
    });
    if probe {
        out["warnings"] = json!([
            "keel does not probe channels: this status is from the configuration and from \
             keel's own deliveries"
        ]);
    }
    out
}

/// `channels.status {probe?, timeoutMs?, channel?}` → OpenClaw's shape: per configured
/// channel (one `default` account) whether it is configured, sending now (`running`), when it
/// last sent and its current error; channels the config disabled, with the reason as an
/// issue. Nothing is probed over the network: with `probe`, a warning says so.
pub fn channels_status(shared: &Arc<Shared>, p: &Value) -> Result<Work, RpcError> {
    let q: StatusParams = parse(p)?;
    let sh = shared.clone();
    Ok(Box::new(move |ctx: &JobCtx| {
        ctx.check()?;
        Ok(channels_status_json(&sh, q.probe.unwrap_or(false), q.channel.as_deref()).into())
    }))
}

// ---- config.get ----------------------------------------------------------------------------

/// What a redacted value becomes: OpenClaw's marker, which its dashboard knows.
pub const REDACTED: &str = "__OPENCLAW_REDACTED__";

/// Keys (lowercased, without `-` and `_`) whose string values are secrets wherever they are.
fn secret_key(key: &str) -> bool {
    let k: String = key
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .collect::<String>()
        .to_ascii_lowercase();
    const PARTS: &[&str] = &[
        "token",
        "secret",
        "password",
        "passwd",
        "passphrase",
        "apikey",
        "privatekey",
        "accesskey",
        "signingkey",
        "encryptkey",
        "credential",
        "authorization",
        "cookie",
        "webhookurl",
    ];
    PARTS.iter().any(|p| k.contains(p))
        || (k.ends_with("key") && !NOT_SECRET_KEYS.contains(&k.as_str()))
}

/// Keys ending in `key` that name no secret.
const NOT_SECRET_KEYS: &[&str] = &[
    "mainkey",
    "sessionkey",
    "defaultsessionkey",
    "idempotencykey",
    "declarationkey",
    "storekey",
    "hotkey",
];

/// Redacts `v` in place: every string under a secret key (not a `${ENV}` reference, which
/// names a variable, not its value), the path of URLs under `channels` and `hooks` (a
/// webhook's URL is its secret), the password of any URL, and every occurrence of a secret
/// keel resolved (`secrets`) anywhere.
fn redact(v: &mut Value, path: &[&str], under_secret: bool, secrets: &[String]) {
    match v {
        Value::String(s) => {
            if env_ref(s).is_some() {
                return;
            }
            if under_secret {
                *s = REDACTED.to_string();
                return;
            }
            let in_channels = matches!(path.first(), Some(&"channels") | Some(&"hooks"));
            let key = path.last().copied().unwrap_or("");
            if in_channels && key.to_ascii_lowercase().ends_with("url") {
                *s = redact_url_path(s);
            }
            *s = redact_userinfo(s);
            for secret in secrets {
                if s.contains(secret.as_str()) {
                    *s = s.replace(secret.as_str(), REDACTED);
                }
            }
        }
        Value::Array(a) => {
            for item in a {
                redact(item, path, under_secret, secrets);
            }
        }
        Value::Object(m) => {
            for (k, item) in m.iter_mut() {
                let mut p = path.to_vec();
                p.push(k.as_str());
                redact(item, &p, under_secret || secret_key(k), secrets);
            }
        }
        _ => {}
    }
}

/// `scheme://host/<redacted>`: a URL whose path may be its secret keeps only its origin.
fn redact_url_path(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_string();
    };
    match rest.find(['/', '?', '#']) {
        Some(i) if rest.len() > i + 1 => format!("{scheme}://{}/{REDACTED}", &rest[..i]),
        _ => s.to_string(),
    }
}

/// `scheme://user:<redacted>@host…`: a password in a URL.
fn redact_userinfo(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!(
                "{scheme}://{user}:{REDACTED}@{host}{}",
                &rest[authority_end..]
            )
        }
        None => s.to_string(),
    }
}

/// The config in force, redacted, in OpenClaw's `config.get` shape.
pub fn config_get_json(cfg: &Config) -> Value {
    let exists = !cfg.raw.0.is_null();
    let secrets: Vec<String> = {
        let mut s: Vec<String> = cfg.secrets().into_iter().filter(|s| s.len() >= 4).collect();
        s.sort_by_key(|v| std::cmp::Reverse(v.len()));
        s
    };
    let mut redacted = if exists {
        (*cfg.raw.0).clone()
    } else {
        json!({})
    };
    redact(&mut redacted, &[], false, &secrets);
    let raw = exists.then(|| serde_json::to_string_pretty(&redacted).unwrap_or_default() + "\n");
    let hash = format!(
        "sha256:{}",
        crate::digest::hex(&crate::digest::sha256(&[redacted.to_string().as_bytes()]))
    );
    let issues: Vec<Value> = cfg
        .disabled
        .iter()
        .map(|d| json!({"path": d.feature, "message": d.reason}))
        .collect();
    // The warnings are the verdict's on the same file: validated again, as `keel check` would.
    let warnings: Vec<Value> = if exists {
        crate::config::parse(&cfg.raw.0.to_string(), cfg.source.as_deref())
            .warnings
            .iter()
            .map(|w| match w.split_once(": ") {
                Some((path, message)) => json!({"path": path, "message": message}),
                None => json!({"path": "", "message": w}),
            })
            .collect()
    } else {
        Vec::new()
    };
    json!({
        "path": cfg.source,
        "exists": exists,
        "raw": raw,
        "parsed": redacted,
        "sourceConfig": redacted,
        "resolved": redacted,
        "config": redacted,
        "hash": hash,
        "valid": issues.is_empty(),
        "issues": issues,
        "warnings": warnings,
        "legacyIssues": [],
    })
}

/// `config.get {}`: the config keel runs with (the file as last loaded, at start or SIGHUP),
/// every secret redacted; `issues` are the settings keel disabled, `warnings` the keys it
/// ignores. Read-only: keel serves no `config.set`.
pub fn config_get(shared: &Arc<Shared>, _p: &Value) -> Result<Work, RpcError> {
    let cfg = shared.config();
    Ok(Box::new(move |ctx: &JobCtx| {
        ctx.check()?;
        Ok(config_get_json(&cfg).into())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_wherever_they_are() {
        let text = json!({
            "gateway": {"auth": {"mode": "token", "token": "gw-token-123456"}, "port": 1},
            "hooks": {"enabled": true, "token": "${HOOK_TOKEN}"},
            "models": {"providers": {"p": {"baseUrl": "https://user:pw-in-url@api.example/v1",
                "apiKey": "sk-live-abcdef", "headers": {"X-Api-Key": "hdr-secret"},
                "models": [{"id": "m", "maxTokens": 10}]}}},
            "channels": {
                "telegram": {"botToken": "123:tg-bot-token"},
                "webhook": {"url": "https://hooks.example/T000/B000/xyzsecretpath", "secret": "whsec"},
                "feishu": {"appId": "cli_app", "appSecret": "fs-app-secret", "encryptKey": "enc",
                    "verificationToken": "fs-verify-tok"},
                "slack": {"mode": "http", "botToken": "xoxb-bot", "signingSecret": "slack-sig-secret"},
            },
            "agents": {"list": [{"id": "main", "systemPrompt": "mention gw-token-123456 never"}]},
            "session": {"mainKey": "main"},
        })
        .to_string();
        let v = crate::config::parse(&text, None);
        let out = config_get_json(&v.config).to_string();
        for secret in [
            "gw-token-123456",
            "pw-in-url",
            "sk-live-abcdef",
            "hdr-secret",
            "tg-bot-token",
            "xyzsecretpath",
            "whsec",
            "fs-app-secret",
            "\"enc\"",
            "cli_app",
            "fs-verify-tok",
            "xoxb-bot",
            "slack-sig-secret",
        ] {
            assert!(!out.contains(secret), "{secret} leaked: {out}");
        }
        let got: Value = serde_json::from_str(&out).unwrap();
        let c = &got["config"];
        assert_eq!(c["hooks"]["token"], "${HOOK_TOKEN}", "references stay");
        assert_eq!(c["gateway"]["port"], 1);
        assert_eq!(c["session"]["mainKey"], "main");
        assert_eq!(
            c["models"]["providers"]["p"]["models"][0]["maxTokens"], 10,
            "numbers are not secrets"
        );
        assert_eq!(
            c["channels"]["webhook"]["url"],
            format!("https://hooks.example/{REDACTED}")
        );
        assert_eq!(
            c["models"]["providers"]["p"]["baseUrl"],
            format!("https://user:{REDACTED}@api.example/v1")
        );
        assert_eq!(got["exists"], true);
        assert!(got["raw"].as_str().unwrap().contains(REDACTED));
        assert!(got["hash"].as_str().unwrap().starts_with("sha256:"));
    }

    #[test]
    fn no_file_is_an_empty_config() {
        let got = config_get_json(&Config::default());
        assert_eq!(got["exists"], false);
        assert_eq!(got["raw"], Value::Null);
        assert_eq!(got["config"], json!({}));
        assert_eq!(got["valid"], true);
    }

    #[test]
    fn disabled_channel_names() {
        assert_eq!(
            disabled_channel("channels.telegram.botToken"),
            Some("telegram")
        );
        assert_eq!(disabled_channel("channels.slack"), Some("slack"));
        assert_eq!(disabled_channel("gateway.port"), None);
    }

    #[test]
    fn proc_stat_is_readable() {
        assert!(cpu_time().is_some());
    }
}
