//! Who may talk to the agent: OpenClaw's DM and group policies (docs/channels/pairing.md,
//! telegram/access-control.md), and the pairing store — senders an operator approved, and
//! the pending requests of unknown senders with their codes.
//!
//! Invariants:
//! - Nothing is allowed by default: `dmPolicy` is `pairing` unless configured, groups are
//!   `allowlist`, and in a group the bot must be mentioned unless `requireMention: false`.
//! - A pairing code is 8 characters from an alphabet without `0 O 1 I`, from the kernel's
//!   random source; a request expires after an hour, and at most [`MAX_PENDING`] are pending
//!   per channel account (further unknown senders are refused without a code). A sender gets
//!   a code only when a request is created: at most once an hour.
//! - DM approvals grant direct messages only; group senders come from the config's lists.
//! - The store is one small JSON file (`<state>/inbound/pairing.json`), rewritten atomically
//!   on every change; a file that cannot be read starts an empty store (with a warning) and
//!   is kept aside, never fatal.

use super::event::{ChatKind, Inbound};
use crate::config::inbound::{Access, DmPolicy, GroupPolicy};
use crate::state;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

/// A pending request lives this long.
pub const REQUEST_TTL_MS: u64 = 3_600_000;
/// Pending requests per channel account at most.
pub const MAX_PENDING: usize = 3;
/// Approved senders kept at most (the oldest approvals go first past it).
const MAX_APPROVED: usize = 10_000;
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// What to do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Not for the agent and not a refusal: a group message that does not mention the bot.
    Ignore,
    /// Refused, for this reason (logged and counted, never told to the sender).
    Refuse(&'static str),
    /// An unknown sender under `pairing`: `Some(code)` when a new request was created (send
    /// the code), `None` when one is pending already.
    Pair(Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Approved {
    pub channel: String,
    pub account_id: String,
    pub sender_id: String,
    pub approved_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub channel: String,
    pub account_id: String,
    pub sender_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// Where the code was sent (the DM's chat).
    pub chat_id: String,
    pub code: String,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    #[serde(default)]
    approved: Vec<Approved>,
    #[serde(default)]
    pending: Vec<Request>,
}

/// A pending request's id for the dashboard (`channels.pairing.*`'s `requestId`): stable
/// for the request's life, and new for a new request of the same sender, as OpenClaw's.
pub fn request_id(r: &Request) -> String {
    let d = crate::digest::sha256(&[
        r.channel.as_bytes(),
        b"\0",
        r.account_id.as_bytes(),
        b"\0",
        r.sender_id.as_bytes(),
        b"\0",
        r.created_ms.to_string().as_bytes(),
    ]);
    crate::digest::hex(&d[..16])
}

/// Approved senders and pending requests, on disk.
#[derive(Debug)]
pub struct PairingStore {
    path: PathBuf,
    data: Data,
}

impl PairingStore {
    pub fn open(path: &Path) -> PairingStore {
        let data = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<Data>(&bytes) {
                Ok(d) => d,
                Err(e) => {
                    let aside = path.with_extension("json.unreadable");
                    log::warn!(
                        "inbound: {} cannot be read ({e}); starting with no approved senders, \
                         the file is kept as {}",
                        path.display(),
                        aside.display()
                    );
                    let _ = std::fs::rename(path, &aside);
                    Data::default()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Data::default(),
            Err(e) => {
                log::warn!(
                    "inbound: cannot read {}: {e}; no approved senders",
                    path.display()
                );
                Data::default()
            }
        };
        PairingStore {
            path: path.to_path_buf(),
            data,
        }
    }

    fn save(&self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            state::ensure_dir(dir)?;
        }
        let bytes = serde_json::to_vec_pretty(&self.data).map_err(io::Error::other)?;
        state::write_atomic(&self.path, &bytes)
    }

    fn expire(&mut self, now_ms: u64) -> bool {
        let before = self.data.pending.len();
        self.data
            .pending
            .retain(|r| now_ms.saturating_sub(r.created_ms) < REQUEST_TTL_MS);
        before != self.data.pending.len()
    }

    pub fn is_approved(&self, channel: &str, account: &str, sender: &str) -> bool {
        self.data
            .approved
            .iter()
            .any(|a| a.channel == channel && a.account_id == account && a.sender_id == sender)
    }

    /// Pending requests (unexpired), optionally of one channel.
    pub fn pending(&self, channel: Option<&str>, now_ms: u64) -> Vec<Request> {
        self.data
            .pending
            .iter()
            .filter(|r| channel.is_none_or(|c| r.channel == c))
            .filter(|r| now_ms.saturating_sub(r.created_ms) < REQUEST_TTL_MS)
            .cloned()
            .collect()
    }

    pub fn approved(&self, channel: Option<&str>) -> Vec<Approved> {
        self.data
            .approved
            .iter()
            .filter(|a| channel.is_none_or(|c| a.channel == c))
            .cloned()
            .collect()
    }

    /// Removes the pending request `request_id` ([`request_id`]) of `channel`'s `account`
    /// without approving its sender (the dashboard's "dismiss"). `Ok(None)`: no such request.
    pub fn dismiss(
        &mut self,
        channel: &str,
        account: &str,
        request_id: &str,
        now_ms: u64,
    ) -> io::Result<Option<Request>> {
        self.expire(now_ms);
        let Some(i) = self.data.pending.iter().position(|r| {
            r.channel == channel && r.account_id == account && self::request_id(r) == request_id
        }) else {
            return Ok(None);
        };
        let r = self.data.pending.remove(i);
        if let Err(e) = self.save() {
            self.data.pending.insert(i, r);
            return Err(e);
        }
        Ok(Some(r))
    }

    /// Approves the pending request with `code` on `channel` (any account unless named).
    /// `Ok(None)`: no such request (or it expired).
    pub fn approve(
        &mut self,
        channel: &str,
        account: Option<&str>,
        code: &str,
        now_ms: u64,
    ) -> io::Result<Option<Approved>> {
        self.expire(now_ms);
        let code = code.trim().to_ascii_uppercase();
        let Some(i) = self.data.pending.iter().position(|r| {
            r.channel == channel && r.code == code && account.is_none_or(|a| r.account_id == a)
        }) else {
            return Ok(None);
        };
        let r = self.data.pending.remove(i);
        let a = Approved {
            channel: r.channel,
            account_id: r.account_id,
            sender_id: r.sender_id,
            approved_ms: now_ms,
        };
        if !self.is_approved(&a.channel, &a.account_id, &a.sender_id) {
            self.data.approved.push(a.clone());
        }
        if self.data.approved.len() > MAX_APPROVED {
            let extra = self.data.approved.len() - MAX_APPROVED;
            self.data.approved.drain(..extra);
        }
        if let Err(e) = self.save() {
            // Not approved after all: memory follows the file.
            self.data.approved.retain(|x| x != &a);
            return Err(e);
        }
        Ok(Some(a))
    }

    /// An unknown sender under `pairing`: a new request with a fresh code, or `None` when one
    /// is pending for them, or the account's pending requests are full.
    fn request(&mut self, m: &Inbound, now_ms: u64) -> io::Result<Result<Option<String>, ()>> {
        let expired = self.expire(now_ms);
        let mine = |r: &&Request| {
            r.channel == m.channel && r.account_id == m.account_id && r.sender_id == m.sender_id
        };
        if self.data.pending.iter().any(|r| mine(&r)) {
            if expired {
                self.save()?;
            }
            return Ok(Ok(None));
        }
        let pending_here = self
            .data
            .pending
            .iter()
            .filter(|r| r.channel == m.channel && r.account_id == m.account_id)
            .count();
        if pending_here >= MAX_PENDING {
            if expired {
                self.save()?;
            }
            return Ok(Err(()));
        }
        let code = new_code()?;
        self.data.pending.push(Request {
            channel: m.channel.clone(),
            account_id: m.account_id.clone(),
            sender_id: m.sender_id.clone(),
            sender_name: m.sender_name.clone(),
            chat_id: m.chat_id.clone(),
            code: code.clone(),
            created_ms: now_ms,
        });
        if let Err(e) = self.save() {
            self.data.pending.pop();
            return Err(e);
        }
        Ok(Ok(Some(code)))
    }
}

/// A pairing code: 8 characters of [`CODE_ALPHABET`] (32 symbols: 40 bits), from the kernel.
fn new_code() -> io::Result<String> {
    let mut raw = [0u8; 8];
    crate::clock::os_random(&mut raw)?;
    Ok(raw
        .iter()
        .map(|b| CODE_ALPHABET[usize::from(*b) % CODE_ALPHABET.len()] as char)
        .collect())
}

fn listed(list: &std::collections::BTreeSet<String>, sender: &str) -> bool {
    list.contains("*") || list.contains(sender)
}

/// Decides whether `m` may start a run under `access`; may create a pairing request.
pub fn decide(
    access: &Access,
    store: &mut PairingStore,
    m: &Inbound,
    now_ms: u64,
) -> io::Result<Decision> {
    match m.chat_kind {
        ChatKind::Direct => match access.dm_policy {
            DmPolicy::Disabled => Ok(Decision::Refuse("direct messages are disabled")),
            _ if listed(&access.allow_from, &m.sender_id) => Ok(Decision::Allow),
            DmPolicy::Open => Ok(Decision::Refuse("not in allowFrom")),
            DmPolicy::Allowlist => Ok(Decision::Refuse("not in allowFrom")),
            DmPolicy::Pairing => {
                if store.is_approved(&m.channel, &m.account_id, &m.sender_id) {
                    return Ok(Decision::Allow);
                }
                Ok(match store.request(m, now_ms)? {
                    Ok(code) => Decision::Pair(code),
                    Err(()) => Decision::Refuse("too many pending pairing requests"),
                })
            }
        },
        ChatKind::Group | ChatKind::Channel => {
            let rule = match &access.groups {
                Some(g) => match g.get(&m.chat_id).or_else(|| g.get("*")) {
                    Some(r) => Some(r),
                    None => return Ok(Decision::Refuse("group not in groups")),
                },
                None if access.group_policy == GroupPolicy::Open => None,
                None => return Ok(Decision::Refuse("group not in groups")),
            };
            let policy = rule
                .and_then(|r| r.group_policy)
                .unwrap_or(access.group_policy);
            match policy {
                GroupPolicy::Disabled => return Ok(Decision::Refuse("groups are disabled")),
                GroupPolicy::Allowlist => {
                    let list = access
                        .group_allow_from
                        .as_ref()
                        .unwrap_or(&access.allow_from);
                    if !listed(list, &m.sender_id) {
                        return Ok(Decision::Refuse("sender not in groupAllowFrom"));
                    }
                }
                GroupPolicy::Open => {}
            }
            let require_mention = rule.and_then(|r| r.require_mention).unwrap_or(true);
            if require_mention && !m.mentioned {
                return Ok(Decision::Ignore);
            }
            Ok(Decision::Allow)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::inbound::GroupRule;

    fn dm(sender: &str) -> Inbound {
        Inbound {
            channel: "telegram".into(),
            account_id: "default".into(),
            event_id: "1".into(),
            chat_kind: ChatKind::Direct,
            chat_id: sender.into(),
            thread_id: None,
            sender_id: sender.into(),
            sender_name: None,
            message_id: None,
            text: "hi".into(),
            mentioned: false,
            ts_ms: 0,
        }
    }

    #[test]
    fn pairing_gives_one_code_an_hour_and_approval_lets_the_sender_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairing.json");
        let mut s = PairingStore::open(&path);
        let a = Access::default();
        let Decision::Pair(Some(code)) = decide(&a, &mut s, &dm("7"), 1000).unwrap() else {
            panic!("a code");
        };
        assert_eq!(code.len(), 8);
        assert!(!code.contains(['0', 'O', '1', 'I']));
        assert_eq!(
            decide(&a, &mut s, &dm("7"), 2000).unwrap(),
            Decision::Pair(None)
        );
        // An hour later the request expired: a new code.
        assert!(matches!(
            decide(&a, &mut s, &dm("7"), 1000 + REQUEST_TTL_MS).unwrap(),
            Decision::Pair(Some(_))
        ));
        let code = s.pending(Some("telegram"), 1000 + REQUEST_TTL_MS)[0]
            .code
            .clone();
        assert!(s.approve("telegram", None, "nope", 1).unwrap().is_none());
        let got = s
            .approve(
                "telegram",
                None,
                &code.to_lowercase(),
                1000 + REQUEST_TTL_MS,
            )
            .unwrap()
            .unwrap();
        assert_eq!(got.sender_id, "7");
        // Persisted.
        let mut s = PairingStore::open(&path);
        assert_eq!(decide(&a, &mut s, &dm("7"), 5).unwrap(), Decision::Allow);
    }

    #[test]
    fn pending_requests_are_capped_per_account() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = PairingStore::open(&dir.path().join("p.json"));
        let a = Access::default();
        for i in 0..MAX_PENDING {
            assert!(matches!(
                decide(&a, &mut s, &dm(&i.to_string()), 1).unwrap(),
                Decision::Pair(Some(_))
            ));
        }
        assert!(matches!(
            decide(&a, &mut s, &dm("99"), 1).unwrap(),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn policies_as_openclaw_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = PairingStore::open(&dir.path().join("p.json"));
        let mut a = Access {
            dm_policy: DmPolicy::Allowlist,
            ..Access::default()
        };
        a.allow_from.insert("5".into());
        assert_eq!(decide(&a, &mut s, &dm("5"), 1).unwrap(), Decision::Allow);
        assert!(matches!(
            decide(&a, &mut s, &dm("6"), 1).unwrap(),
            Decision::Refuse(_)
        ));
        // Groups: none allowed by default; a listed group needs a mention.
        let mut g = dm("5");
        g.chat_kind = ChatKind::Group;
        g.chat_id = "-100".into();
        assert!(matches!(
            decide(&a, &mut s, &g, 1).unwrap(),
            Decision::Refuse(_)
        ));
        a.groups = Some([("-100".to_string(), GroupRule::default())].into());
        assert_eq!(decide(&a, &mut s, &g, 1).unwrap(), Decision::Ignore);
        g.mentioned = true;
        assert_eq!(decide(&a, &mut s, &g, 1).unwrap(), Decision::Allow);
        g.sender_id = "6".into();
        assert!(matches!(
            decide(&a, &mut s, &g, 1).unwrap(),
            Decision::Refuse(_)
        ));
        a.groups = Some(
            [(
                "*".to_string(),
                GroupRule {
                    require_mention: Some(false),
                    group_policy: Some(GroupPolicy::Open),
                },
            )]
            .into(),
        );
        g.mentioned = false;
        assert_eq!(decide(&a, &mut s, &g, 1).unwrap(), Decision::Allow);
    }
}
