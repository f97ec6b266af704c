//! What the binary that gets deployed must do on its own: start, answer `/healthz` and
//! `/readyz`, and resolve a provider's host name through its own resolver. The tests run the
//! binary cargo built; with `KEEL_BIN` set they run that one instead — `.ci/run` points it at
//! the static (musl) binary of `scripts/build-static.sh` and runs this module
//! (`cargo test --test gateway binary::`).

use crate::common::*;
use crate::fake_provider::{Behavior, FakeProvider};
use serde_json::json;

#[test]
fn the_binary_starts_and_answers_healthz_and_readyz() {
    let out = keel_cli(["--version"], [("KEEL_LOG", "info")]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("keel "),
        "{out:?}"
    );
    let g = Gateway::start(Opts::default());
    let h = g.get("/healthz");
    assert_eq!(h.status, 200, "{}", h.text());
    assert_eq!(h.json()["ok"], true);
    let r = g.get("/readyz");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ready"], true);
}

/// A `baseUrl` naming `localhost` (not an address) is resolved by the binary itself — glibc's
/// NSS for a dynamic build, musl's reading of /etc/hosts for the static one — and the call
/// reaches the fake provider listening on 127.0.0.1.
#[test]
fn a_provider_at_localhost_is_reached_by_name() {
    let fake = FakeProvider::start("openai-completions");
    fake.push(Behavior::text(&["hello ", "from localhost"]));
    let mut config = fake.one_provider_config();
    let base_url = format!("http://localhost:{}/v1", fake.addr().port());
    config["models"]["providers"]["a"]["baseUrl"] = json!(base_url);
    let g = Gateway::start(Opts::default().config(config));
    let mut ws = g.ws();
    let res = ws.call(
        "chat.send",
        json!({"sessionKey": "agent:main:main", "message": "hi", "idempotencyKey": "k1"}),
    );
    assert_eq!(res["ok"], true, "{res}");
    let run_id = res["payload"]["runId"].as_str().unwrap().to_string();
    let events = ws.run_events(&run_id);
    let last = &events.last().unwrap()["payload"];
    assert_eq!(last["state"], "final", "{events:?}\n{}", g.log_text());
    assert_eq!(
        last["message"]["content"][0]["text"],
        "hello from localhost"
    );
    let got = fake.received();
    assert_eq!(got.len(), 1, "one call reached the fake");
    assert_eq!(got[0].path, "/v1/chat/completions");
}
