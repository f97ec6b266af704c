//! Integration tests against the real `keel` binary on 127.0.0.1:0, as one test binary.

mod binary;
mod common;
mod config;
mod cron;
mod delivery;
mod fake_provider;
mod fake_telegram;
mod harness;
mod hooks;
mod hostile;
mod http;
mod inbound;
mod inbound_crash;
mod inbound_reload;
mod inbound_resume;
mod inbound_webhooks;
mod lifecycle;
mod limiter;
mod paths;
mod pressure;
mod runs;
mod security;
// The harness shared with the benches; `common` is the tests' side of it.
#[path = "../../testkit/mod.rs"]
mod testkit;
mod tools;
mod ui_chat;
mod ui_methods;
mod ui_static;
mod usage;
mod usage_page;
mod usage_sqlite;
mod ws;
mod ws_conformance;
