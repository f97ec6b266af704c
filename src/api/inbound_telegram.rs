//! Telegram's webhook route: `POST <webhookPath>` of an account in webhook mode. The reactor
//! admits the request (body limit, path lookup) and hands it here; the work — the secret
//! check, parsing, the durable store — is an io-pool job, and its answer completes the
//! request: an empty `200` once the update is stored (with OpenClaw's
//! `x-openclaw-delivery-accepted: durable` when this request stored it), `401`, `400`, or
//! `503` (Telegram retries).

use crate::error::{Code, RpcError};
use crate::inbound::telegram;
use crate::jobs::{JobCtx, JobSpec, Lane, PoolKind, Work};
use crate::protocol::reply::{Completion, CompletionBody, HttpAnswer, ReplyTo};
use crate::runtime::Shared;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// A webhook update is stored (one fsync'd file) well within this.
const DEADLINE: Duration = Duration::from_secs(20);

/// Submits the job that takes one webhook update for the account serving `path`. `Err`:
/// not admitted (no such account any more, a full queue): the caller answers it.
pub fn webhook(
    shared: &Arc<Shared>,
    path: &str,
    secret: Option<String>,
    body: Vec<u8>,
    reply: &ReplyTo,
) -> Result<(), RpcError> {
    let cfg = shared.config_cell.get();
    let Some(acct) = cfg.inbound.telegram_webhook(path).cloned() else {
        return Err(RpcError::new(Code::NotFound, "no webhook on this path"));
    };
    let ReplyTo::Http { conn, generation } = *reply else {
        return Err(RpcError::new(
            Code::Internal,
            "a webhook answer goes to an HTTP connection",
        ));
    };
    let svc = shared.inbound.clone();
    let jobs = shared.jobs.clone();
    let work: Work = Box::new(move |ctx: &JobCtx| {
        ctx.check()?;
        let a = telegram::webhook_update(&svc, &acct, secret.as_deref(), &body);
        let mut headers = vec![("Content-Type", "application/json".to_string())];
        if a.durable {
            headers.push(("x-openclaw-delivery-accepted", "durable".to_string()));
        }
        let body = match a.error {
            None => Vec::new(),
            Some(e) => json!({"ok": false, "error": e}).to_string().into_bytes(),
        };
        ctx.info.defer_reply();
        if ctx.info.claim_reply() {
            jobs.outbox.push(Completion {
                conn,
                generation,
                body: CompletionBody::Answer(HttpAnswer {
                    status: a.status,
                    headers,
                    body: body.into(),
                }),
            });
        }
        Ok(Value::Null.into())
    });
    let spec = JobSpec {
        kind: "inbound.telegram.webhook".into(),
        pool: PoolKind::Io,
        lane: Lane::Interactive,
        timeout: DEADLINE,
        stall_limit: None,
    };
    shared.jobs.submit(spec, reply.clone(), work)?;
    Ok(())
}
