//! SIGHUP and inbound accounts: an added Telegram account starts polling, a removed one stops
//! (its token is polled no more, status forgets it), an unchanged one keeps running, and a
//! changed `allowFrom` takes effect on the next message without a restart of anything.

use crate::common::*;
use crate::fake_provider::{Behavior, FakeProvider};
use crate::fake_telegram::FakeTelegram;
use serde_json::{Value, json};

const FIRST: &str = "111:firstbot";
const SECOND: &str = "222:secondbot";

/// The accounts keel receives on, as `status` lists them.
fn accounts(g: &Gateway) -> Vec<Value> {
    let r = g.rpc("status", json!({})).json();
    r["payload"]["inbound"]["accounts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn account(g: &Gateway, id: &str) -> Option<Value> {
    accounts(g).into_iter().find(|a| a["accountId"] == id)
}

/// Rewrites the config file with these Telegram `accounts` and `allowFrom`, and sends SIGHUP.
fn reload(g: &Gateway, base: &Value, tg: &FakeTelegram, allow: &[&str], accts: Value) {
    let mut c = base.clone();
    c["channels"] = json!({"telegram": {
        "baseUrl": tg.url(), "pollTimeoutSeconds": 1, "allowFrom": allow, "accounts": accts,
    }});
    std::fs::write(g.state().join("keel.json"), c.to_string()).unwrap();
    g.signal("HUP");
}

#[test]
fn a_reload_starts_added_accounts_and_stops_removed_ones() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    p.push(Behavior::text(&["first answers"]));
    let base = p.one_provider_config();
    let mut c = base.clone();
    c["channels"] = json!({"telegram": {
        "baseUrl": tg.url(), "pollTimeoutSeconds": 1, "allowFrom": ["42"],
        "accounts": {"first": {"botToken": FIRST}},
    }});
    let g = Gateway::start(Opts::default().config(c));
    tg.dm_to(FIRST, 42, "hello first");
    eventually(BOUND, || (!tg.sent_with_token(42).is_empty()).then_some(()));
    let started = account(&g, "first").expect("first listed")["lastStartAt"].clone();
    assert!(started.is_u64(), "{started}");
    assert_eq!(tg.polls_for(SECOND), 0);

    // A second account, and sender 43 allowed: the second bot polls and its messages run;
    // the first account's poller is left as it was.
    p.push(Behavior::text(&["second answers"]));
    reload(
        &g,
        &base,
        &tg,
        &["42", "43"],
        json!({"first": {"botToken": FIRST}, "second": {"botToken": SECOND}}),
    );
    tg.dm_to(SECOND, 43, "hello second");
    let sent = eventually(BOUND, || {
        let s = tg.sent_with_token(43);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(
        sent,
        [(SECOND.to_string(), "second answers".to_string())],
        "{}",
        g.log_text()
    );
    let first = account(&g, "first").unwrap();
    assert_eq!(
        first["lastStartAt"], started,
        "unchanged: not restarted: {first}"
    );
    assert_eq!(first["running"], true, "{first}");
    assert_eq!(account(&g, "second").unwrap()["mode"], "polling");

    // The first account removed: it stops polling and is no longer listed.
    reload(
        &g,
        &base,
        &tg,
        &["42", "43"],
        json!({"second": {"botToken": SECOND}}),
    );
    eventually(BOUND, || {
        let ids: Vec<Value> = accounts(&g)
            .iter()
            .map(|a| a["accountId"].clone())
            .collect();
        (ids == [json!("second")]).then_some(())
    });
    assert!(
        g.wait_log("inbound telegram:first: removed by a config reload", BOUND)
            .is_some()
    );
    // Over three more long polls of the second bot (1 s each when idle), the first one's
    // token is not polled once.
    let before = tg.polls_for(FIRST);
    let second = tg.polls_for(SECOND);
    eventually(BOUND, || (tg.polls_for(SECOND) >= second + 3).then_some(()));
    assert_eq!(
        tg.polls_for(FIRST),
        before,
        "the removed account still polls"
    );
    // A message to the removed bot is not received; the second still answers.
    tg.dm_to(FIRST, 42, "anyone there?");
    p.push(Behavior::text(&["still here"]));
    tg.dm_to(SECOND, 42, "and you?");
    eventually(BOUND, || {
        tg.sent_with_token(42)
            .iter()
            .any(|(t, x)| t == SECOND && x == "still here")
            .then_some(())
    });
    let asked_first = p
        .requests()
        .iter()
        .any(|r| r.to_string().contains("anyone there?"));
    assert!(!asked_first, "the removed account's message ran");
    let m = g.metric("keel_inbound_received_total{channel=\"telegram\",account=\"first\"}");
    assert_eq!(m, None, "/metrics forgets the removed account");
}

#[test]
fn a_changed_token_restarts_the_poller_on_the_new_token_only() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    let base = p.one_provider_config();
    let mut c = base.clone();
    c["channels"] = json!({"telegram": {
        "baseUrl": tg.url(), "pollTimeoutSeconds": 1, "allowFrom": ["42"],
        "accounts": {"bot": {"botToken": FIRST}},
    }});
    let g = Gateway::start(Opts::default().config(c));
    eventually(BOUND, || (tg.polls_for(FIRST) >= 1).then_some(()));
    reload(
        &g,
        &base,
        &tg,
        &["42"],
        json!({"bot": {"botToken": SECOND}}),
    );
    assert!(
        g.wait_log(
            "inbound telegram:bot: stopped to restart with its new settings",
            BOUND
        )
        .is_some()
    );
    let before = tg.polls_for(FIRST);
    let second = tg.polls_for(SECOND);
    eventually(BOUND, || (tg.polls_for(SECOND) >= second + 3).then_some(()));
    assert_eq!(tg.polls_for(FIRST), before, "the old token still polled");
    p.push(Behavior::text(&["on the new token"]));
    tg.dm_to(SECOND, 42, "new token?");
    let sent = eventually(BOUND, || {
        let s = tg.sent_with_token(42);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(sent, [(SECOND.to_string(), "on the new token".to_string())]);
    assert_eq!(accounts(&g).len(), 1, "{:?}", accounts(&g));
}

#[test]
fn a_polling_account_switched_to_a_webhook_registers_it_and_stops_polling() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    let base = p.one_provider_config();
    let mut c = base.clone();
    c["channels"] = json!({"telegram": {
        "baseUrl": tg.url(), "pollTimeoutSeconds": 1, "allowFrom": ["42"],
        "accounts": {"bot": {"botToken": FIRST}},
    }});
    let g = Gateway::start(Opts::default().config(c));
    eventually(BOUND, || (tg.polls_for(FIRST) >= 1).then_some(()));
    let hook = |secret: &str| {
        json!({"bot": {"botToken": FIRST, "webhookUrl": "https://bot.example/hook",
                       "webhookSecret": secret, "webhookPath": "/hook"}})
    };
    reload(&g, &base, &tg, &["42"], hook("secret-one"));
    let set = eventually(BOUND, || tg.webhooks().first().cloned());
    assert_eq!(set.1["secret_token"], "secret-one");
    eventually(BOUND, || {
        accounts(&g)
            .iter()
            .any(|a| a["accountId"] == "bot" && a["mode"] == "webhook")
            .then_some(())
    });
    let polls = tg.polls_for(FIRST);
    // A new secret: the webhook is registered again with it, and only it is taken.
    reload(&g, &base, &tg, &["42"], hook("secret-two"));
    let set = eventually(BOUND, || tg.webhooks().get(1).cloned());
    assert_eq!(set.1["secret_token"], "secret-two");
    let mut update = FakeTelegram::dm_update(42, "pushed after the reload");
    update["update_id"] = json!(7001);
    let post = |secret: &str| {
        let body = update.to_string();
        g.http(&format!(
            "POST /hook HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
             X-Telegram-Bot-Api-Secret-Token: {secret}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        ))
    };
    assert_eq!(post("secret-one").status, 401);
    p.push(Behavior::text(&["pushed and answered"]));
    assert_eq!(post("secret-two").status, 200);
    let sent = eventually(BOUND, || {
        let s = tg.sent_with_token(42);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(
        sent,
        [(FIRST.to_string(), "pushed and answered".to_string())]
    );
    assert_eq!(
        tg.polls_for(FIRST),
        polls,
        "an account in webhook mode does not poll"
    );
}

/// Back from webhook mode to polling: Telegram refuses `getUpdates` with 409 while a webhook
/// is set, so the poller deletes it first (keeping pending updates, as OpenClaw does) and
/// messages run again.
#[test]
fn a_webhook_account_switched_back_to_polling_deletes_the_webhook_and_polls() {
    let p = FakeProvider::start("openai-completions");
    let tg = FakeTelegram::start();
    let base = p.one_provider_config();
    let mut c = base.clone();
    c["channels"] = json!({"telegram": {
        "baseUrl": tg.url(), "pollTimeoutSeconds": 1, "allowFrom": ["42"],
        "accounts": {"bot": {"botToken": FIRST, "webhookUrl": "https://bot.example/hook",
                             "webhookSecret": "s3cret", "webhookPath": "/hook"}},
    }});
    let g = Gateway::start(Opts::default().config(c));
    eventually(BOUND, || (!tg.webhooks().is_empty()).then_some(()));
    assert_eq!(tg.polls_for(FIRST), 0, "webhook mode does not poll");
    reload(&g, &base, &tg, &["42"], json!({"bot": {"botToken": FIRST}}));
    let deleted = eventually(BOUND, || tg.deleted_webhooks().first().cloned());
    assert_eq!(deleted.0, FIRST);
    assert_eq!(deleted.1["drop_pending_updates"], false);
    p.push(Behavior::text(&["polled again"]));
    tg.dm_to(FIRST, 42, "after the switch");
    let sent = eventually(BOUND, || {
        let s = tg.sent_with_token(42);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(sent, [(FIRST.to_string(), "polled again".to_string())]);
    let a = eventually(BOUND, || {
        account(&g, "bot").filter(|a| a["mode"] == "polling" && a["connected"] == true)
    });
    assert!(
        !a["lastError"].as_str().unwrap_or("").starts_with("409"),
        "{a}"
    );
}
