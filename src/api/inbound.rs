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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DashboardListParams {
    #[serde(default, deserialize_with = "params::string")]
    channel: Option<String>,
    #[serde(default, deserialize_with = "params::string")]
    account_id: Option<String>,
}

/// `channels.pairing.list {channel?, accountId?}` (the dashboard's Channels page) →
/// `{accounts, requests: [{requestId, channel, accountId, senderId, createdAt, expiresAt,
/// ...}], commandOwnerConfigured, limits}`, OpenClaw's shape.
pub fn dashboard_list(svc: &Arc<Service>, p: &Value) -> Result<Work, RpcError> {
    let DashboardListParams {
        channel,
        account_id,
    } = parse(p)?;
    let svc = svc.clone();
    Ok(Box::new(move |ctx: &JobCtx| {
        ctx.check()?;
        svc.channels_pairing_list(channel.as_deref(), account_id.as_deref())
            .map(Into::into)
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RequestParams {
    #[serde(deserialize_with = "params::required")]
    channel: String,
    #[serde(deserialize_with = "params::required")]
    account_id: String,
    #[serde(deserialize_with = "params::required")]
    request_id: String,
    #[serde(default)]
    notify: Option<bool>,
    #[serde(default)]
    bootstrap_command_owner: Option<bool>,
}

fn request_params(p: &Value) -> Result<RequestParams, RpcError> {
    let r: RequestParams = parse(p)?;
    if r.request_id.len() > 128 || r.account_id.len() > 128 || r.channel.len() > 64 {
        return Err(RpcError::invalid("invalid params: a field is too long"));
    }
    Ok(r)
}

/// `channels.pairing.approve {channel, accountId, requestId, notify?,
/// bootstrapCommandOwner?}` → `{requestId, senderId, notification, commandOwnerBootstrap}`.
pub fn dashboard_approve(svc: &Arc<Service>, p: &Value) -> Result<Work, RpcError> {
    let r = request_params(p)?;
    let svc = svc.clone();
    Ok(Box::new(move |ctx: &JobCtx| {
        ctx.check()?;
        svc.channels_pairing_approve(
            &r.channel,
            &r.account_id,
            &r.request_id,
            r.notify == Some(true),
            r.bootstrap_command_owner == Some(true),
        )
        .map(Into::into)
    }))
}

/// `channels.pairing.dismiss {channel, accountId, requestId}` → `{requestId, senderId}`.
pub fn dashboard_dismiss(svc: &Arc<Service>, p: &Value) -> Result<Work, RpcError> {
    let r = request_params(p)?;
    if r.notify.is_some() || r.bootstrap_command_owner.is_some() {
        return Err(RpcError::invalid(
            "invalid params: dismiss takes channel, accountId and requestId",
        ));
    }
    let svc = svc.clone();
    Ok(Box::new(move |ctx: &JobCtx| {
        ctx.check()?;
        svc.channels_pairing_dismiss(&r.channel, &r.account_id, &r.request_id)
            .map(Into::into)
    }))
}
