//! One message received from a chat channel, as every transport hands it over.

use serde::{Deserialize, Serialize};

/// The largest message text kept (bytes). Longer text is refused by the transport with the
/// channel's expected error, never truncated silently.
pub const MAX_TEXT: usize = 64 << 10;
/// The largest id of any kind (event, chat, thread, sender, message).
pub const MAX_ID: usize = 256;
/// The largest sender display name kept (longer names are cut at a character boundary).
pub const MAX_NAME: usize = 256;

/// Which kind of conversation a message came from: it decides the session key
/// (`docs/channels/channel-routing.md`) and the access policy (`dmPolicy` / `groupPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatKind {
    /// A one-to-one conversation with the bot.
    Direct,
    /// A group chat.
    Group,
    /// A channel or room (Slack channels).
    Channel,
}

/// One received message: what it takes to store it durably (keyed by the channel's own event
/// id, so a redelivery is recognised), decide whether the sender may talk, route it to an
/// agent and a session, and reply to exactly that conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inbound {
    /// `telegram`, `slack` or `feishu`.
    pub channel: String,
    /// The configured account it arrived on (`default` when the channel has one).
    pub account_id: String,
    /// The channel's own id for this delivery: Telegram `update_id`, Slack `event_id`,
    /// Feishu `header.event_id`.
    pub event_id: String,
    pub chat_kind: ChatKind,
    /// Where a reply goes: Telegram chat id, Slack channel id, Feishu `chat_id`.
    pub chat_id: String,
    /// Telegram forum topic (`message_thread_id`), Slack `thread_ts`, Feishu thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// Who wrote it: Telegram user id, Slack user id, Feishu `open_id`.
    pub sender_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// The channel's id of the message itself (to reply to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub text: String,
    /// In a group: whether the bot was mentioned (or replied to).
    #[serde(default)]
    pub mentioned: bool,
    /// When the channel says it was sent, in ms since the epoch.
    pub ts_ms: i64,
}

impl Inbound {
    /// Checks the bounds every transport must keep: ids present and short, text within
    /// [`MAX_TEXT`]. A transport refuses a message that fails this with the channel's
    /// expected error and logs it once.
    pub fn check(&self) -> Result<(), String> {
        let ids = [
            ("channel", Some(&self.channel)),
            ("accountId", Some(&self.account_id)),
            ("eventId", Some(&self.event_id)),
            ("chatId", Some(&self.chat_id)),
            ("senderId", Some(&self.sender_id)),
            ("threadId", self.thread_id.as_ref()),
            ("messageId", self.message_id.as_ref()),
        ];
        for (name, v) in ids {
            let Some(v) = v else { continue };
            if v.is_empty() {
                return Err(format!("{name} is empty"));
            }
            if v.len() > MAX_ID {
                return Err(format!("{name} is longer than {MAX_ID} bytes"));
            }
            if v.chars().any(char::is_control) {
                return Err(format!("{name} holds control characters"));
            }
        }
        // The reply goes back to this chat: an id delivery would refuse to send to is refused
        // here, before anything runs for a message no answer could reach.
        if let Some(kind) = crate::config::channels::Kind::parse(&self.channel)
            && let Some(why) = crate::config::channels::address_problem(kind, &self.chat_id)
        {
            return Err(format!("chatId: {why}"));
        }
        if self.text.len() > MAX_TEXT {
            return Err(format!(
                "the text is {} bytes, more than {MAX_TEXT}",
                self.text.len()
            ));
        }
        if self
            .sender_name
            .as_ref()
            .is_some_and(|n| n.len() > MAX_NAME)
        {
            return Err(format!("senderName is longer than {MAX_NAME} bytes"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Inbound {
        Inbound {
            channel: "telegram".into(),
            account_id: "default".into(),
            event_id: "100".into(),
            chat_kind: ChatKind::Direct,
            chat_id: "42".into(),
            thread_id: None,
            sender_id: "42".into(),
            sender_name: Some("Ada".into()),
            message_id: Some("7".into()),
            text: "hello".into(),
            mentioned: false,
            ts_ms: 1_796_600_000_000,
        }
    }

    #[test]
    fn bounds_are_checked() {
        assert_eq!(msg().check(), Ok(()));
        let mut m = msg();
        m.text = "x".repeat(MAX_TEXT + 1);
        assert!(m.check().unwrap_err().contains("text"));
        let mut m = msg();
        m.chat_id = String::new();
        assert!(m.check().unwrap_err().contains("chatId"));
        let mut m = msg();
        m.thread_id = Some("a\nb".into());
        assert!(m.check().unwrap_err().contains("threadId"));
        let mut m = msg();
        m.event_id = "9".repeat(MAX_ID + 1);
        assert!(m.check().unwrap_err().contains("eventId"));
    }

    #[test]
    fn a_chat_no_reply_could_reach_is_refused() {
        let mut m = msg();
        m.chat_id = "not-a-chat".into();
        assert!(m.check().unwrap_err().contains("chatId"));
        m.channel = "slack".into();
        m.chat_id = "D1099".into();
        assert!(m.check().unwrap_err().contains("rejects address"));
        m.chat_id = "D024BE91L".into();
        assert_eq!(m.check(), Ok(()));
    }

    #[test]
    fn it_round_trips_in_camel_case() {
        let v = serde_json::to_value(msg()).unwrap();
        assert_eq!(v["chatKind"], "direct");
        assert_eq!(v["eventId"], "100");
        assert!(v.get("threadId").is_none());
        let back: Inbound = serde_json::from_value(v).unwrap();
        assert_eq!(back, msg());
    }
}
