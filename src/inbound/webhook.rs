//! What a chat channel's webhook request comes to ([`Verdict`]), shared by the Slack Events
//! API (`inbound::slack`) and Feishu's event subscription (`inbound::feishu`), and the HTTP
//! answer each verdict owes ([`Verdict::answer`]).
//!
//! Wiring a route is: find the account by path (`config.inbound_webhooks.route`), call the
//! channel's `handle` with the headers, the body and the wall clock, and for
//! [`Verdict::Message`] store the message durably (keyed by its `event_id`, which is how a
//! channel's retry of the same event is recognised) before answering `200`; every other
//! verdict is answered as [`Verdict::answer`] says, at once.

use super::event::Inbound;

/// The largest request body read (bytes): checked before anything is parsed. Slack's and
/// Feishu's events are a few KiB; a text at [`super::event::MAX_TEXT`] escaped as JSON (and
/// for Feishu, as a JSON string inside JSON, then encrypted and base64-encoded) fits.
pub const MAX_BODY: usize = 1 << 20;

/// What one webhook request comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An authentic URL verification: answer `200 {"challenge": …}` (both Slack and Feishu
    /// take the JSON form).
    Challenge(String),
    /// An authentic message for the agent. Acknowledge with `200` only once it is stored
    /// durably; a channel retries an event it saw no `200` for, with the same event id.
    Message(Box<Inbound>),
    /// Authentic, but nothing to run (the bot's own message, an edit, an event type keel
    /// does not handle): acknowledged with `200` so the channel does not retry it. The
    /// reason is for the log and counters.
    Ignore(&'static str),
    /// Not accepted: answered with `status` and the reason, which names what was wrong with
    /// the request and nothing of the configuration.
    Refuse { status: u16, reason: &'static str },
}

/// An HTTP answer: status, `Content-Type` and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Verdict {
    pub(crate) fn refuse(status: u16, reason: &'static str) -> Verdict {
        Verdict::Refuse { status, reason }
    }

    /// The answer this verdict owes. For [`Verdict::Message`] it is the acknowledgement, to
    /// be sent only after the message is stored.
    pub fn answer(&self) -> Answer {
        let json = |status, v: serde_json::Value| Answer {
            status,
            content_type: "application/json",
            body: v.to_string().into_bytes(),
        };
        match self {
            Verdict::Challenge(c) => json(200, serde_json::json!({ "challenge": c })),
            Verdict::Message(_) | Verdict::Ignore(_) => json(200, serde_json::json!({"ok": true})),
            Verdict::Refuse { status, reason } => {
                json(*status, serde_json::json!({"ok": false, "error": reason}))
            }
        }
    }
}

/// The value of header `name` (case-insensitive) among `headers`; the first one if repeated.
pub(crate) fn header<'a>(headers: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Lowercase or uppercase hex of exactly 32 bytes.
pub(crate) fn hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// A whole number of seconds or milliseconds as the channel writes it: ASCII digits only, at
/// most 18 of them (no sign, no overflow).
pub(crate) fn digits(s: &str) -> Option<i64> {
    (!s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `s` cut to at most `max` bytes at a character boundary.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let a = Verdict::Challenge("3eZbrw1a".into()).answer();
        assert_eq!((a.status, a.content_type), (200, "application/json"));
        assert_eq!(a.body, br#"{"challenge":"3eZbrw1a"}"#);
        assert_eq!(Verdict::Ignore("edit").answer().status, 200);
        let a = Verdict::refuse(401, "bad signature").answer();
        assert_eq!(a.status, 401);
        assert_eq!(a.body, br#"{"error":"bad signature","ok":false}"#);
    }

    #[test]
    fn helpers() {
        let h = [
            ("X-Slack-Signature", " v0=ab "),
            ("x-slack-signature", "second"),
        ];
        assert_eq!(header(&h, "x-SLACK-signature"), Some("v0=ab"));
        assert_eq!(header(&h, "x-other"), None);
        let hex = "00ff".repeat(16);
        assert_eq!(hex32(&hex).unwrap()[..2], [0, 255]);
        assert_eq!(hex32(&hex.to_uppercase()).unwrap()[1], 255);
        assert!(hex32(&hex[..62]).is_none());
        assert!(hex32(&format!("{}zz", &hex[..62])).is_none());
        assert_eq!(digits("1531420618"), Some(1_531_420_618));
        for bad in ["", "-1", "+1", "1.5", " 1", "9999999999999999999"] {
            assert_eq!(digits(bad), None, "{bad}");
        }
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }
}
