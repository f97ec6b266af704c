//! The Slack Events API and Feishu event-subscription routes, served on keel's own port.
//!
//! The reactor only finds the account by path (`config.inbound_webhooks.route`), bounds the
//! body ([`super::webhook::MAX_BODY`], `413` before it is read) and copies the few headers the
//! channels sign with; [`Service::webhook`] then runs on an io worker: the signature check,
//! decryption, parsing ([`slack::handle`], [`feishu::handle`]) and, for a message, the durable
//! store ([`Service::ingest`]) — and only then the answer. A message is acknowledged `200`
//! once stored (or recognised as a redelivery, or refused by the access rules); a store that
//! fails answers `500`, so the channel retries with the same event id. These routes are
//! authenticated by their channel's signature, never by the gateway token.
//!
//! Slack dedupes on the post, not the event: a post in a channel the app subscribes to both
//! as `message` and `app_mention` comes as two events with two event ids, so a Slack message's
//! `eventId` is [`slack::message_key`] (`<channel>:<ts>`), which Slack's retries of either
//! event share too.

use super::service::{AccountHealth, Service};
use super::webhook::{Answer, Verdict};
use super::{feishu, slack};
use crate::clock;
use crate::config::inbound_webhooks::{FeishuWebhook, Route, SlackWebhook};
use crate::error::RpcError;
use crate::jobs::system::Responder;
use crate::jobs::{JobCtx, JobSpec, Lane, PoolKind, Work};
use crate::protocol::reply::HttpAnswer;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// From admission to the answer, queue wait included. Slack wants its answer within 3 s and
/// retries after; a late answer costs a retry, which is recognised by its event id.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The account a webhook request is for, copied out of the config for the job.
#[derive(Debug, Clone)]
pub enum Account {
    Slack(SlackWebhook),
    Feishu(FeishuWebhook),
}

impl Account {
    pub fn of(r: Route<'_>) -> Account {
        match r {
            Route::Slack(a) => Account::Slack(a.clone()),
            Route::Feishu(a) => Account::Feishu(a.clone()),
        }
    }

    pub fn channel(&self) -> &'static str {
        match self {
            Account::Slack(_) => "slack",
            Account::Feishu(_) => "feishu",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Account::Slack(a) => &a.account_id,
            Account::Feishu(a) => &a.account_id,
        }
    }
}

/// Registers the health of every configured webhook account (at boot), so `channels.status`
/// lists them before their first event.
pub fn register_accounts(svc: &Service) {
    let cfg = svc.h.config.get();
    let w = &cfg.inbound_webhooks;
    let ids = w
        .slack
        .iter()
        .map(|a| ("slack", a.account_id.as_str()))
        .chain(w.feishu.iter().map(|a| ("feishu", a.account_id.as_str())));
    for (channel, id) in ids {
        svc.webhook_health(channel, id);
    }
}

/// A webhook's answer as the reactor writes it.
fn http(a: Answer) -> HttpAnswer {
    HttpAnswer {
        status: a.status,
        headers: vec![("Content-Type", a.content_type.to_string())],
        body: Arc::from(a.body),
    }
}

fn failed(why: &str) -> Answer {
    Answer {
        status: 500,
        content_type: "application/json",
        body: json!({"ok": false, "error": why}).to_string().into_bytes(),
    }
}

impl Service {
    /// The health of webhook account `channel`:`account`, registered on first use.
    pub fn webhook_health(&self, channel: &str, account: &str) -> Arc<AccountHealth> {
        if let Some(h) = self
            .accounts()
            .into_iter()
            .find(|a| a.channel == channel && a.account_id == account)
        {
            return h;
        }
        let h = Arc::new(AccountHealth::new(
            channel,
            account,
            "webhook",
            Duration::ZERO,
        ));
        h.running.store(true, Ordering::Relaxed);
        self.add_account(h.clone());
        h
    }

    /// Admits one webhook request as an io job whose answer completes HTTP connection
    /// `conn`/`generation`. Never blocks; `Err` when the job cannot be queued (draining, the
    /// lane full): the reactor answers it at once.
    pub fn webhook(
        self: &Arc<Self>,
        account: Account,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
        conn: usize,
        generation: u64,
    ) -> Result<(), RpcError> {
        let kind = format!("inbound.{}", account.channel());
        let svc = self.clone();
        let jobs = self.h.jobs.clone();
        let work: Work = Box::new(move |ctx: &JobCtx| {
            let mut answer =
                Responder::new(ctx, jobs, conn, generation, http(failed("internal error")));
            answer.send(http(svc.handle_webhook(&account, &headers, &body)));
            Ok(serde_json::Value::Null.into())
        });
        let spec = JobSpec {
            kind,
            pool: PoolKind::Io,
            lane: Lane::Interactive,
            timeout: DEADLINE,
            stall_limit: None,
        };
        self.h
            .jobs
            .submit(
                spec,
                crate::protocol::reply::ReplyTo::Http { conn, generation },
                work,
            )
            .map(|_| ())
    }

    /// One request, on a worker: verify and read it, store a message, and say what to answer.
    fn handle_webhook(
        &self,
        account: &Account,
        headers: &[(&'static str, String)],
        body: &[u8],
    ) -> Answer {
        let now = clock::wall_ms() as i64;
        let hdrs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let verdict = match account {
            Account::Slack(a) => slack::handle(a, &hdrs, body, now),
            Account::Feishu(a) => feishu::handle(a, &hdrs, body, now),
        };
        let health = self.webhook_health(account.channel(), account.id());
        let ack = verdict.answer();
        match verdict {
            Verdict::Message(m) => {
                health.ok();
                let mut m = *m;
                if m.channel == "slack" {
                    m.event_id = slack::message_key(&m);
                }
                match self.ingest(m) {
                    Ok(_) => ack,
                    Err(why) => {
                        log::warn!(
                            "inbound {}:{}: a message was not stored ({why}); answered 500 so \
                             the channel retries",
                            account.channel(),
                            account.id()
                        );
                        health.error(format!("a message was not stored: {why}"));
                        failed("not stored; retry")
                    }
                }
            }
            Verdict::Challenge(_) | Verdict::Ignore(_) => {
                health.ok();
                ack
            }
            Verdict::Refuse { status, reason } => {
                health.refused.fetch_add(1, Ordering::Relaxed);
                log::debug!(
                    "inbound {}:{}: request refused ({status}: {reason})",
                    account.channel(),
                    account.id()
                );
                ack
            }
        }
    }
}
