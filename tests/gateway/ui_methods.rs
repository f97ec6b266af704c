//! What OpenClaw's dashboard calls on every page (and on its logs, automations, connection
//! and systems pages) answers over WebSocket with OpenClaw's shapes: real data where keel has
//! it (agents and identities from the config, providers' credentials, channels, its own log,
//! the process), the empty answer where it has none; nothing secret in any answer. And what
//! the dashboard's handshake needs: `hello-ok` says how it authenticated and what the default
//! session is, announces every event keel sends, and `sessions.subscribe {}` delivers
//! `sessions.changed` for every session.

use crate::common::*;
use crate::fake_provider::{Behavior, FakeProvider};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Instant;

const TOKEN: &str = "gw-token-Qe7Lr4Zp9";
const HOOK_TOKEN: &str = "hook-token-X2k9Wd";
const ENV_KEY: &str = "sk-from-env-Jf83Ks";
const FILE_KEY: &str = "sk-in-file-Pw02Lm";
const BOT_TOKEN: &str = "123456:tg-bot-Hq9Zr";
const WEBHOOK_PATH: &str = "T0001/B0002/whpath-Vx4Nc";
const WEBHOOK_SECRET: &str = "whsec-Rt5Yu";

/// Every secret the config below holds: none may appear in any answer.
const SECRETS: &[&str] = &[
    TOKEN,
    HOOK_TOKEN,
    ENV_KEY,
    FILE_KEY,
    BOT_TOKEN,
    WEBHOOK_PATH,
    WEBHOOK_SECRET,
];

fn config(provider: &str) -> Value {
    json!({
        "gateway": {"auth": {"mode": "token", "token": TOKEN}},
        "hooks": {"enabled": true, "token": HOOK_TOKEN},
        "models": {"providers": {
            "p": {"baseUrl": provider, "apiKey": "${KEEL_TEST_UI_KEY}", "api": "openai-completions",
                  "models": [{"id": "m1"}]},
            "q": {"baseUrl": provider, "apiKey": FILE_KEY, "api": "openai-completions",
                  "models": [{"id": "m2"}]},
            "local": {"baseUrl": provider, "api": "openai-completions", "models": [{"id": "m3"}]},
        }},
        "agents": {
            "defaults": {"model": "p/m1"},
            "list": [
                {"id": "main", "default": true, "name": "Main desk",
                 "identity": {"name": "Molty", "emoji": "🦀"}},
                {"id": "ops", "model": {"primary": "q/m2", "fallbacks": ["local/m3"]},
                 "systemPrompt": format!("never say {FILE_KEY}")},
            ],
        },
        "channels": {
            "telegram": {"botToken": BOT_TOKEN, "receive": false},
            "webhook": {"url": format!("https://hooks.example.test/{WEBHOOK_PATH}"),
                        "secret": WEBHOOK_SECRET},
            "discord": {"enabled": true},
        },
    })
}

fn start() -> Gateway {
    let mut g = Gateway::start(
        Opts::default()
            .config(config("http://127.0.0.1:9/v1"))
            .env("KEEL_TEST_UI_KEY", ENV_KEY),
    );
    g.token = TOKEN.into();
    g
}

/// What the dashboard sends on every page, and on the logs, automations, connection and
/// systems pages (and the chat page's side panels), with OpenClaw's params (examples.json).
fn page_calls() -> Vec<(&'static str, Value)> {
    let key = "agent:main:main";
    vec![
        ("sessions.subscribe", json!({})),
        (
            "sessions.list",
            json!({"includeGlobal": true, "includeUnknown": true, "configuredAgentsOnly": true,
                   "limit": 200, "includeDerivedTitles": true, "includeLastMessage": true}),
        ),
        ("config.get", json!({})),
        ("update.status", json!({})),
        ("agents.list", json!({})),
        ("agent.identity.get", json!({"agentId": "main"})),
        ("models.authStatus", json!({"agentId": "main"})),
        ("exec.approval.list", json!({})),
        ("plugin.approval.list", json!({})),
        ("openclaw.approval.list", json!({})),
        ("question.list", json!({})),
        ("sessions.observer.visibility", json!({"visible": true})),
        (
            "cron.list",
            json!({"agentId": "main", "includeDisabled": true, "includeDeliveryPreviews": false,
                   "compact": true, "limit": 50, "offset": 0, "enabled": "all",
                   "sortBy": "nextRunAtMs", "sortDir": "asc"}),
        ),
        ("cron.status", json!({})),
        ("plugins.controlUi.list", json!({})),
        ("sessions.groups.list", json!({})),
        ("sessions.groups.defaults", json!({})),
        ("mentions.list", json!({})),
        (
            "users.prefs.get",
            json!({"keys": ["ui.theme", "ui.themeMode", "ui.accent"]}),
        ),
        (
            "sessions.catalog.list",
            json!({"agentId": "main", "limitPerHost": 40, "progressId": "p-1",
                   "allowPartialResults": true}),
        ),
        ("sessions.viewers.set", json!({"sessionKeys": [key]})),
        (
            "controlUi.sessionPullRequests.subscribe",
            json!({"sessionKeys": [key]}),
        ),
        ("openclaw.setup.detect", json!({"agentId": "main"})),
        // /logs
        ("logs.tail", json!({"limit": 500, "maxBytes": 250000})),
        // /automations
        (
            "cron.runs",
            json!({"agentId": "main", "scope": "all", "limit": 50, "offset": 0,
                   "status": "all", "sortDir": "desc"}),
        ),
        (
            "channels.status",
            json!({"probe": false, "timeoutMs": 8000}),
        ),
        // /settings/connection and /systems
        ("last-heartbeat", json!({})),
        ("system.info", json!({})),
        ("environments.list", json!({"includeDesktopSetup": true})),
        ("node.list", json!({})),
        // The chat page's side panels.
        ("board.get", json!({"sessionKey": key, "agentId": "main"})),
        ("projects.list", json!({})),
        ("talk.catalog", json!({})),
        ("taskSuggestions.list", json!({"agentId": "main"})),
        (
            "tasks.list",
            json!({"sessionKey": key, "agentId": "main", "status": ["queued", "running"], "limit": 200}),
        ),
        ("sessions.branches.list", json!({"sessionKey": key})),
        (
            "session.discussion.info",
            json!({"sessionKey": key, "agentId": "main"}),
        ),
        (
            "sessions.companion.state",
            json!({"sessionKey": key, "agentId": "main"}),
        ),
    ]
}

/// `connect` as the dashboard sends it (protocol 4, its client id, its secret in both fields).
fn dashboard_connect(ws: &mut Ws, token: &str) -> Value {
    let params = json!({
        "minProtocol": 4, "maxProtocol": 4,
        "client": {"id": "openclaw-control-ui", "version": "2026.9.6", "platform": "Linux x86_64",
                   "mode": "webchat", "instanceId": "i-1", "timeZone": "UTC"},
        "role": "operator",
        "scopes": ["operator.admin", "operator.read", "operator.write", "operator.approvals",
                   "operator.questions", "operator.pairing"],
        "caps": ["tool-events"],
        "auth": {"token": token, "password": token},
        "userAgent": "test", "locale": "en-US",
    });
    ws.hello(&params, Instant::now() + BOUND)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[track_caller]
fn no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{s} leaked in {what}: {text}");
    }
}

#[test]
fn every_page_load_method_answers_with_openclaws_shape_and_no_secret() {
    let g = start();
    let mut ws = Ws::open(&g.addr());
    let hello = dashboard_connect(&mut ws, TOKEN);
    assert_eq!(hello["ok"], true, "{hello}");
    let h = &hello["payload"];
    assert_eq!(h["snapshot"]["authMode"], "token");
    assert_eq!(
        h["snapshot"]["sessionDefaults"],
        json!({"defaultAgentId": "main", "mainKey": "main", "mainSessionKey": "agent:main:main",
               "scope": "per-sender"})
    );
    assert!(
        h["server"].get("controlUiBuildSource").is_none(),
        "no UI root is configured: {}",
        h["server"]
    );
    no_secret("hello-ok", &hello.to_string());
    let advertised: BTreeSet<&str> = h["features"]["methods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut answers = std::collections::BTreeMap::new();
    for (method, params) in page_calls() {
        assert!(advertised.contains(method), "{method} is not advertised");
        let res = ws.call(method, params);
        assert_eq!(res["ok"], true, "{method}: {res}");
        no_secret(method, &res.to_string());
        answers.insert(method, res["payload"].clone());
    }
    let a = |m: &str| answers[m].clone();

    // Agents and identities come from the config.
    let agents = a("agents.list");
    assert_eq!(agents["defaultId"], "main");
    assert_eq!(
        (agents["mainKey"].as_str(), agents["scope"].as_str()),
        (Some("main"), Some("per-sender"))
    );
    let list = agents["agents"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().filter_map(|x| x["id"].as_str()).collect();
    assert_eq!(ids, ["main", "ops"]);
    assert_eq!(list[0]["name"], "Main desk");
    assert_eq!(list[0]["identity"]["name"], "Molty");
    assert_eq!(list[0]["model"]["primary"], "p/m1", "the defaults' model");
    assert_eq!(
        list[1]["model"],
        json!({"primary": "q/m2", "fallbacks": ["local/m3"]})
    );
    let id = a("agent.identity.get");
    assert_eq!(
        (
            id["agentId"].as_str(),
            id["name"].as_str(),
            id["nameSource"].as_str(),
            id["avatar"].as_str()
        ),
        (Some("main"), Some("Molty"), Some("agent"), Some("🦀"))
    );
    let ops = ws.call(
        "agent.identity.get",
        json!({"sessionKey": "agent:ops:main"}),
    );
    assert_eq!(
        (
            ops["payload"]["agentId"].as_str(),
            ops["payload"]["name"].as_str(),
            ops["payload"]["nameSource"].as_str()
        ),
        (Some("ops"), Some("Assistant"), Some("default"))
    );

    // Providers' credentials: where they come from, never what they are.
    let auth = a("models.authStatus");
    let by: std::collections::BTreeMap<&str, &Value> = auth["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["provider"].as_str().unwrap(), p))
        .collect();
    assert_eq!(by["p"]["status"], "static");
    assert_eq!(
        by["p"]["apiKey"],
        json!({"source": "env", "envVar": "KEEL_TEST_UI_KEY"})
    );
    assert_eq!(by["q"]["apiKey"], json!({"source": "config"}));
    assert_eq!(by["local"]["status"], "missing");
    assert!(by["local"].get("apiKey").is_none());

    // The config in force, redacted: references stay, secrets go.
    let c = a("config.get");
    assert_eq!(
        (c["exists"].as_bool(), c["valid"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(
        c["path"].as_str().unwrap().ends_with("keel.json"),
        "{}",
        c["path"]
    );
    assert_eq!(
        c["config"]["gateway"]["auth"]["token"],
        "__OPENCLAW_REDACTED__"
    );
    assert_eq!(
        c["config"]["models"]["providers"]["p"]["apiKey"],
        "${KEEL_TEST_UI_KEY}"
    );
    assert_eq!(
        c["config"]["agents"]["list"][0]["identity"]["name"],
        "Molty"
    );
    assert!(c["raw"].as_str().unwrap().contains("__OPENCLAW_REDACTED__"));
    assert!(
        c["issues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["path"].as_str().unwrap().starts_with("channels.discord")),
        "discord has no token: {}",
        c["issues"]
    );

    // Channels: the configured ones, and the one the config disabled.
    let ch = a("channels.status");
    let order: Vec<&str> = ch["channelOrder"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(order, ["telegram", "webhook", "discord"]);
    assert_eq!(ch["channelLabels"]["telegram"], "Telegram");
    let tg = &ch["channelAccounts"]["telegram"][0];
    assert_eq!(
        (tg["configured"].as_bool(), tg["lastError"].is_null()),
        (Some(true), true)
    );
    assert_eq!(tg["baseUrl"], "https://api.telegram.org");
    assert!(ch["channelAccounts"]["webhook"][0].get("baseUrl").is_none());
    assert_eq!(ch["channelAccounts"]["discord"][0]["configured"], false);
    assert_eq!(ch["statusIssues"][0]["channel"], "discord");
    assert_eq!(ch["statusIssues"][0]["kind"], "config");
    for key in [
        "degraded",
        "reasons",
        "intervalMs",
        "delayP99Ms",
        "delayMaxMs",
        "utilization",
        "cpuCoreRatio",
    ] {
        assert!(
            ch["eventLoop"].get(key).is_some(),
            "eventLoop.{key}: {}",
            ch["eventLoop"]
        );
    }
    let probed = ws.call("channels.status", json!({"probe": true}));
    assert!(
        probed["payload"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("does not probe"),
        "{probed}"
    );

    // This process, as the system pages show it.
    let s = a("system.info");
    assert_eq!(s["pid"], g.pid());
    assert_eq!(s["port"], g.port);
    assert_eq!(s["platform"], "linux");
    assert!(s["uptimeMs"].as_u64().unwrap() > 0);
    assert!(s["processMemory"]["rssBytes"].as_u64().unwrap() > 1 << 20);
    assert!(s["memoryTotalBytes"].as_u64().unwrap() > 0);
    assert!(s["cpuCount"].as_u64().unwrap() >= 1);
    assert!(s["diskTotalBytes"].as_u64().unwrap() > 0);
    assert_eq!(s["eventLoop"]["degraded"], false);

    // The empty answers keel gives where it has nothing of the kind.
    assert_eq!(a("exec.approval.list"), json!([]));
    assert_eq!(a("question.list"), json!({"questions": []}));
    assert_eq!(a("sessions.observer.visibility"), json!({"ok": true}));
    // The scheduler, with no job yet.
    assert_eq!(a("cron.status")["enabled"], true);
    assert_eq!(a("cron.status")["jobs"], 0);
    assert_eq!(a("cron.list")["jobs"], json!([]));
    assert_eq!(a("cron.runs")["total"], 0);
    assert_eq!(a("update.status")["updateAvailable"], Value::Null);
    assert_eq!(a("last-heartbeat"), Value::Null);
    assert_eq!(a("node.list")["nodes"], json!([]));
    assert_eq!(a("environments.list"), json!({"environments": []}));
    assert_eq!(
        a("sessions.viewers.set"),
        json!({"sessionKeys": ["agent:main:main"]})
    );
    assert_eq!(a("board.get")["sessionKey"], "agent:main:main");
    assert_eq!(
        a("mentions.list")["gatewayInstanceId"],
        s["processInstanceId"]
    );
    assert_eq!(a("openclaw.setup.detect")["setupComplete"], true);
    assert_eq!(a("openclaw.setup.detect")["configuredModel"], "p/m1");
    assert_eq!(a("sessions.subscribe"), json!({"subscribed": true}));

    // Bad params are refused as everywhere, naming the field.
    let bad = ws.call("logs.tail", json!({"limit": "many"}));
    assert_eq!(bad["ok"], false);
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("limit"),
        "{bad}"
    );
    let bad = ws.call("agent.identity.get", json!({"sessionKey": "agent::x"}));
    assert_eq!(bad["ok"], false, "{bad}");
}

/// The message of each line of a `logs.tail` answer.
fn messages(tail: &Value) -> Vec<String> {
    tail["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l.as_str().unwrap()).expect("a JSON line");
            assert!(v["time"].is_string() && v["level"].is_string(), "{v}");
            v["message"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn logs_tail_serves_keels_own_log_and_polls_only_new_lines() {
    let g = start();
    let mut ws = g.ws();
    let first = ws.call("logs.tail", json!({"limit": 500, "maxBytes": 250000}));
    let t = &first["payload"];
    assert!(
        t["file"].as_str().unwrap().starts_with("memory:keel/"),
        "{t}"
    );
    let msgs = messages(t);
    // The line the harness waited for on stderr is in the tail too.
    let stderr_line = g.wait_log("delivery queue", BOUND).unwrap();
    assert!(
        msgs.iter()
            .any(|m| m.contains("delivery queue") && stderr_line.contains(m.as_str())),
        "{msgs:#?}"
    );
    assert_eq!(
        (t["reset"].as_bool(), t["truncated"].as_bool()),
        (Some(false), Some(false))
    );
    let cursor = t["cursor"].as_u64().unwrap();
    assert_eq!(Some(cursor), t["size"].as_u64());
    // Nothing new: nothing returned.
    let again = ws.call("logs.tail", json!({"cursor": cursor}));
    assert_eq!(again["payload"]["lines"], json!([]), "{again}");
    // A wrong token is logged (at info); the next poll returns that line and only new ones.
    let mut bad = Ws::open(&g.addr());
    let refused = bad.connect(json!({"token": "not-the-token"}), 3, 4);
    assert_eq!(refused["ok"], false);
    let next = eventually(BOUND, || {
        let r = ws.call("logs.tail", json!({"cursor": cursor}));
        let m = messages(&r["payload"]);
        m.iter()
            .any(|l| l.contains("authentication failed"))
            .then_some((r, m))
    });
    assert!(
        next.1.iter().all(|m| !msgs.contains(m)),
        "old lines came again: {:#?}",
        next.1
    );
    assert_eq!(next.0["payload"]["reset"], false);
    assert!(next.0["payload"]["cursor"].as_u64().unwrap() > cursor);
    // A cursor from another process (past this one's end) starts over.
    let other = ws.call("logs.tail", json!({"cursor": 1u64 << 40, "limit": 2}));
    assert_eq!(other["payload"]["reset"], true);
    assert_eq!(other["payload"]["lines"].as_array().unwrap().len(), 2);
    assert_eq!(other["payload"]["truncated"], true);
    let whole = ws.call("logs.tail", json!({"maxBytes": 1_000_000, "limit": 5000}));
    no_secret("logs.tail", &whole.to_string());
}

#[test]
fn a_served_dashboard_switches_the_version_check_off() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("index.html"),
        "<!doctype html><html><body><openclaw-app></openclaw-app></body></html>",
    )
    .unwrap();
    let g = Gateway::start(Opts::default().config(json!({
        "gateway": {"controlUi": {"root": dir.path()}},
        "agents": {"list": [{"id": "ops", "default": true}]},
    })));
    // The build is found by a worker after boot: served once `/` is the page.
    eventually(BOUND, || {
        g.get("/").text().contains("openclaw-app").then_some(())
    });
    let mut ws = Ws::open(&g.addr());
    let hello = dashboard_connect(&mut ws, &g.token);
    assert_eq!(
        hello["payload"]["server"]["controlUiBuildSource"],
        "configured"
    );
    assert_eq!(
        hello["payload"]["snapshot"]["sessionDefaults"]["mainSessionKey"],
        "agent:ops:main"
    );
}

#[test]
fn password_mode_says_so_and_takes_the_password_from_either_field() {
    let g = Gateway::start(Opts::default().config(json!({
        "gateway": {"auth": {"mode": "password", "password": "pw-Zx81Lk"}},
    })));
    // The dashboard copies what the user typed into both fields.
    let mut ws = Ws::open(&g.addr());
    let hello = dashboard_connect(&mut ws, "pw-Zx81Lk");
    assert_eq!(hello["ok"], true, "{hello}");
    assert_eq!(hello["payload"]["snapshot"]["authMode"], "password");
    let mut ws = Ws::open(&g.addr());
    let res = ws.connect(json!({}), 3, 4);
    assert_eq!(
        res["error"]["details"]["code"], "AUTH_PASSWORD_MISSING",
        "{res}"
    );
    assert_eq!(ws.close_code(), Some(1008));
}

fn run_config(a: &FakeProvider) -> Value {
    let mut cfg = a.one_provider_config();
    cfg["gateway"] = json!({"tickIntervalMs": 1000});
    cfg["tools"] = json!({"commands": [{"name": "echo_it", "description": "echo",
        "argv": ["echo", "{{word}}"],
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}]});
    cfg
}

/// Reads frames until `pred` holds for one, collecting every event's name on the way.
fn collect_until(
    ws: &mut Ws,
    seen: &mut BTreeSet<String>,
    mut pred: impl FnMut(&Value) -> bool,
) -> Value {
    ws.until(BOUND, |f| {
        if let Some(e) = f["event"].as_str() {
            seen.insert(e.to_string());
        }
        pred(f)
    })
}

#[test]
fn sessions_subscribe_without_a_key_gets_sessions_changed_and_every_event_is_announced() {
    let a = FakeProvider::start("openai-completions");
    a.push(Behavior::tool_call("echo_it", json!({"word": "pong"})));
    a.push(Behavior::text(&["done"]));
    a.push(Behavior::text(&["again"]));
    let mut g = Gateway::start(Opts::default().config(run_config(&a)));
    let mut seen: BTreeSet<String> = BTreeSet::new();

    // The dashboard's subscription: no key.
    let mut all = Ws::open(&g.addr());
    seen.insert(all.challenge["event"].as_str().unwrap().to_string());
    let hello = dashboard_connect(&mut all, &g.token);
    let announced: BTreeSet<String> = hello["payload"]["features"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    let res = all.call("sessions.subscribe", json!({}));
    assert_eq!(res["payload"], json!({"subscribed": true}), "{res}");
    // A subscriber of one session gets its tool mirrors.
    let mut one = g.ws();
    assert_eq!(
        one.call(
            "sessions.subscribe",
            json!({"sessionKey": "agent:ops:work"})
        )["ok"],
        true
    );
    assert_eq!(
        one.call(
            "sessions.messages.subscribe",
            json!({"key": "agent:ops:work"})
        )["ok"],
        true
    );

    // A run on another connection, in a session that does not exist yet.
    let mut runner = g.ws();
    let res = runner.call(
        "chat.send",
        json!({"sessionKey": "agent:ops:work", "message": "use the tool", "idempotencyKey": "u1"}),
    );
    let run_id = res["payload"]["runId"].as_str().unwrap().to_string();
    for e in runner.run_events(&run_id) {
        seen.insert(e["event"].as_str().unwrap().to_string());
    }
    let changed = |phase: &'static str, run: String| {
        move |f: &Value| {
            f["event"] == "sessions.changed"
                && f["payload"]["phase"] == phase
                && f["payload"]["runId"] == run.as_str()
        }
    };
    let start = collect_until(&mut all, &mut seen, changed("start", run_id.clone()));
    let p = &start["payload"];
    assert_eq!(p["sessionKey"], "agent:ops:work");
    assert_eq!(p["agentId"], "ops");
    assert_eq!(p["reason"], "create", "the run made the session: {p}");
    assert_eq!(p["hasActiveRun"], true);
    let session_id = p["sessionId"].as_str().unwrap().to_string();
    let end = collect_until(&mut all, &mut seen, changed("end", run_id.clone()));
    assert_eq!(end["payload"]["status"], "ok");
    assert_eq!(end["payload"]["hasActiveRun"], false);
    collect_until(&mut one, &mut seen, |f| {
        f["event"] == "session.tool" && f["payload"]["phase"] == "result"
    });
    // The run's messages reached `one` (watching them) before the run's end.
    collect_until(&mut one, &mut seen, changed("end", run_id.clone()));
    assert!(seen.contains("session.message"), "{seen:?}");

    // The same session again: changed, not created.
    let res = runner.call(
        "chat.send",
        json!({"sessionKey": "agent:ops:work", "message": "again", "idempotencyKey": "u2"}),
    );
    let run2 = res["payload"]["runId"].as_str().unwrap().to_string();
    runner.run_events(&run2);
    let start = collect_until(&mut all, &mut seen, changed("start", run2.clone()));
    assert!(start["payload"].get("reason").is_none(), "{start}");
    assert_eq!(start["payload"]["sessionId"], session_id.as_str());

    // Unsubscribed: the next run's changes do not come. They would be queued for `all`
    // before the run's final event reaches the runner, so anything sent is read before the
    // answer to a request made after that.
    assert_eq!(
        all.call("sessions.unsubscribe", json!({}))["payload"],
        json!({"subscribed": false})
    );
    a.push(Behavior::text(&["third"]));
    let res = runner.call(
        "chat.send",
        json!({"sessionKey": "agent:ops:work", "message": "third", "idempotencyKey": "u3"}),
    );
    let run3 = res["payload"]["runId"].as_str().unwrap().to_string();
    runner.run_events(&run3);
    let id = all.send_req("health", json!({}));
    let mut late = Vec::new();
    collect_until(&mut all, &mut seen, |f| {
        if f["event"] == "sessions.changed" {
            late.push(f.clone());
        }
        f["type"] == "res" && f["id"] == id.as_str()
    });
    assert!(
        late.iter().all(|f| f["payload"]["runId"] != run3.as_str()),
        "{late:?}"
    );
    collect_until(&mut all, &mut seen, |f| f["event"] == "tick");

    // The drain's notice, last.
    g.signal("TERM");
    collect_until(&mut all, &mut seen, |f| f["event"] == "shutdown");
    assert!(g.wait_exit(BOUND).is_some());
    for e in &seen {
        assert!(
            announced.contains(e),
            "{e} was sent but not announced: {announced:?}"
        );
    }
    let expected: BTreeSet<String> = [
        "connect.challenge",
        "tick",
        "shutdown",
        "agent",
        "chat",
        "session.tool",
        "sessions.changed",
        "session.message",
    ]
    .map(String::from)
    .into();
    assert_eq!(seen, expected, "every event keel has was seen in this run");
    assert_eq!(announced, expected);
}

#[test]
fn only_a_websocket_can_subscribe_and_keys_are_checked() {
    let g = Gateway::start(Opts::default());
    let r = g.rpc("sessions.subscribe", json!({}));
    assert_eq!(r.json()["ok"], false, "{}", r.text());
    let mut ws = g.ws();
    let bad = ws.call("sessions.subscribe", json!({"sessionKey": "agent::bad"}));
    assert_eq!(bad["ok"], false, "{bad}");
    let bad = ws.call("sessions.subscribe", json!({"sessionKey": 5}));
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sessionKey"),
        "{bad}"
    );
}
