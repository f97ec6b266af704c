//! The inbound methods: `pairing.list {channel?}` and `pairing.approve {channel, code,
//! accountId?}` (what `keel pairing list|approve` calls). Jobs on the io pool: the pairing
//! store's lock is held across its atomic write, which the reactor must never wait on.

use crate::error::RpcError;
use crate::inbound::service::Service;
use crate::jobs::{JobCtx, Work};
use crate::protocol::params::{self, parse};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    #[serde(default, deserialize_with = "params::string")]
    channel: Option<String>,
}

/// `pairing.list {channel?}` → `{requests: [{channel, accountId, senderId, name, code,
/// createdAt, expiresAt}], approved: [...]}`.
pub fn list(svc: &Arc<Service>, p: &Value) -> Result<Work, RpcError> {
    let ListParams { channel } = parse(p)?;
    let svc = svc.clone();
    Ok(Box::new(move |ctx: &JobCtx| {
        ctx.check()?;
        svc.pairing_list(channel.as_deref()).map(Into::into)
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApproveParams {
    #[serde(deserialize_with = "params::required")]
    channel: String,
    #[serde(deserialize_with = "params::required")]
    code: String,
    #[serde(default, deserialize_with = "params::string")]
    account_id: Option<String>,
}

/// `pairing.approve {channel, code, accountId?}`: the sender of that pending request may
/// send direct messages from now on. `NOT_FOUND` for an unknown or expired code.
pub fn approve(svc: &Arc<Service>, p: &Value) -> Result<Work, RpcError> {
    let a: ApproveParams = parse(p)?;
    if a.code.len() > 64 {
        return Err(RpcError::invalid("invalid params: code is too long"));
    }
    let svc = svc.clone();
    Ok(Box::new(move |ctx: &JobCtx| {
        ctx.check()?;
        svc.pairing_approve(&a.channel, &a.code, a.account_id.as_deref())
            .map(Into::into)
    }))
}
