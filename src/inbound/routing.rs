//! Which agent and which session a message goes to, as OpenClaw routes it
//! (docs/channels/channel-routing.md), and where the reply goes: back to exactly the
//! conversation it came from.
//!
//! The agent: the most specific `bindings[]` entry that matches — exact peer, then peer
//! wildcard, then account, then any account of the channel — else the default agent. The
//! session: `agent:<agentId>:main` for direct messages under the default `session.dmScope`
//! (or per peer, per channel and peer, per account, channel and peer),
//! `agent:<agentId>:<channel>:group:<id>` / `:channel:<id>` for groups and channels, with
//! `:topic:<id>` for a Telegram forum topic and `:thread:<id>` for other threads.

use super::event::{ChatKind, Inbound};
use crate::agent::transcript::Origin;
use crate::config::Config;
use crate::config::inbound::{Binding, DmScope};
use crate::ids::{AgentId, SessionKey};

fn kind_str(k: ChatKind) -> &'static str {
    match k {
        ChatKind::Direct => "direct",
        ChatKind::Group => "group",
        ChatKind::Channel => "channel",
    }
}

/// The peer a binding names: the sender for a direct message, the chat otherwise.
fn peer_id(m: &Inbound) -> &str {
    match m.chat_kind {
        ChatKind::Direct => &m.sender_id,
        ChatKind::Group | ChatKind::Channel => &m.chat_id,
    }
}

/// How specific a binding's match on `m` is (higher wins), `None` if it does not match.
fn score(b: &Binding, m: &Inbound) -> Option<u8> {
    if b.channel != m.channel {
        return None;
    }
    let account_any = b.account_id.as_deref().is_none_or(|a| a == "*");
    if !account_any && b.account_id.as_deref() != Some(m.account_id.as_str()) {
        return None;
    }
    match &b.peer {
        Some((kind, id)) => {
            if kind != kind_str(m.chat_kind) {
                return None;
            }
            if id == peer_id(m) {
                Some(4)
            } else if id == "*" {
                Some(3)
            } else {
                None
            }
        }
        None if !account_any => Some(2),
        None => Some(1),
    }
}

/// The agent `m` goes to.
pub fn agent_for(cfg: &Config, m: &Inbound) -> AgentId {
    let mut best: Option<(u8, &Binding)> = None;
    for b in &cfg.inbound.bindings {
        if let Some(s) = score(b, m)
            && best.is_none_or(|(bs, _)| s > bs)
        {
            best = Some((s, b));
        }
    }
    best.map_or_else(|| cfg.agents.default_agent_id(), |(_, b)| b.agent.clone())
}

/// The session `m` goes to.
pub fn session_for(cfg: &Config, m: &Inbound) -> SessionKey {
    let agent = agent_for(cfg, m);
    let (ch, acct, sender) = (&m.channel, &m.account_id, &m.sender_id);
    let rest = match m.chat_kind {
        ChatKind::Direct => match cfg.inbound.dm_scope {
            DmScope::Main => "main".to_string(),
            DmScope::PerPeer => format!("direct:{sender}"),
            DmScope::PerChannelPeer => format!("{ch}:direct:{sender}"),
            DmScope::PerAccountChannelPeer => format!("{ch}:{acct}:direct:{sender}"),
        },
        ChatKind::Group | ChatKind::Channel => {
            let mut k = format!("{ch}:{}:{}", kind_str(m.chat_kind), m.chat_id);
            if let Some(t) = &m.thread_id {
                let part = if ch == "telegram" { "topic" } else { "thread" };
                k.push_str(&format!(":{part}:{t}"));
            }
            k
        }
    };
    SessionKey::of(&agent, &rest)
}

/// Where the reply goes: the chat the message came from, on its account and thread.
pub fn origin_of(m: &Inbound) -> Origin {
    Origin {
        channel: Some(m.channel.clone()),
        to: Some(m.chat_id.clone()),
        account_id: Some(m.account_id.clone()),
        thread_id: m.thread_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: serde_json::Value) -> Config {
        let r = crate::config::parse(&v.to_string(), None);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        r.config
    }

    fn msg(kind: ChatKind, chat: &str, thread: Option<&str>) -> Inbound {
        Inbound {
            channel: "telegram".into(),
            account_id: "default".into(),
            event_id: "1".into(),
            chat_kind: kind,
            chat_id: chat.into(),
            thread_id: thread.map(str::to_string),
            sender_id: "42".into(),
            sender_name: None,
            message_id: None,
            text: "hi".into(),
            mentioned: true,
            ts_ms: 0,
        }
    }

    #[test]
    fn session_keys_follow_openclaw() {
        let c = cfg(json!({}));
        let key = |m: &Inbound| session_for(&c, m).key;
        assert_eq!(key(&msg(ChatKind::Direct, "42", None)), "agent:main:main");
        assert_eq!(
            key(&msg(ChatKind::Group, "-100", Some("7"))),
            "agent:main:telegram:group:-100:topic:7"
        );
        let mut slack = msg(ChatKind::Channel, "C123", Some("1.2"));
        slack.channel = "slack".into();
        assert_eq!(key(&slack), "agent:main:slack:channel:C123:thread:1.2");
        for (scope, want) in [
            ("per-peer", "agent:main:direct:42"),
            ("per-channel-peer", "agent:main:telegram:direct:42"),
            (
                "per-account-channel-peer",
                "agent:main:telegram:default:direct:42",
            ),
        ] {
            let c = cfg(json!({"session": {"dmScope": scope}}));
            assert_eq!(
                session_for(&c, &msg(ChatKind::Direct, "42", None)).key,
                want
            );
        }
    }

    #[test]
    fn the_most_specific_binding_wins() {
        let c = cfg(json!({
            "agents": {"list": [{"id": "main", "default": true}, {"id": "ops"}, {"id": "fam"}, {"id": "any"}]},
            "bindings": [
                {"agentId": "any", "match": {"channel": "telegram"}},
                {"agentId": "ops", "match": {"channel": "telegram", "accountId": "default"}},
                {"agentId": "fam", "match": {"channel": "telegram", "peer": {"kind": "group", "id": "-100"}}},
                {"agentId": "main", "match": {"channel": "slack"}}
            ]
        }));
        assert_eq!(
            agent_for(&c, &msg(ChatKind::Group, "-100", None)).as_str(),
            "fam"
        );
        assert_eq!(
            agent_for(&c, &msg(ChatKind::Group, "-200", None)).as_str(),
            "ops"
        );
        let mut other = msg(ChatKind::Direct, "42", None);
        other.account_id = "b".into();
        assert_eq!(agent_for(&c, &other).as_str(), "any");
        other.channel = "feishu".into();
        assert_eq!(agent_for(&c, &other).as_str(), "main", "the default agent");
        assert_eq!(
            session_for(&c, &msg(ChatKind::Group, "-100", None)).key,
            "agent:fam:telegram:group:-100"
        );
    }
}
