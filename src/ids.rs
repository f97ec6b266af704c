//! Names that come from outside keel — a client, a hook, a chat message, a model, a file
//! another program wrote — and end up in a path on disk: agent ids, session keys, session
//! ids, delivery ids, file names.
//!
//! Invariants:
//! - Every path keel builds from such a name goes through one checked constructor,
//!   [`SafeName::new`], and is made with [`join`]. A [`SafeName`] is one path component that
//!   `Path::join` can only turn into a child of its base: never empty, never `.`, `..` or any
//!   name starting with `.`, never absolute, at most [`NAME_MAX`] bytes, and made only of
//!   letters, digits and `_ - . @ + = : ~ ,` — no separator (`/`, `\`), NUL, control
//!   character, whitespace or `%` (so no percent-encoding can be decoded into `..` later).
//! - An agent id is normalized exactly as OpenClaw normalizes it (`normalizeAgentIdStrict`):
//!   trimmed; valid as is when it matches `^[a-z0-9][a-z0-9_-]{0,63}$` case-insensitively,
//!   then lowercased; otherwise lowercased, every run of other characters replaced by `-`,
//!   leading and trailing dashes stripped and cut at 64. Nothing left is an error. The result
//!   is always a [`SafeName`], so [`AgentId`] can name a directory.
//! - A session key `agent:<agentId>:<rest>` (the prefix in any case) names its agent; its
//!   agent part is normalized the same way and the key rewritten with it, so the same session
//!   is one key whatever case or spelling a client used. A key that starts with `agent:` but
//!   does not have that shape is refused rather than given to the default agent.

use std::fmt;
use std::path::{Path, PathBuf};

/// Longest file name Linux takes (bytes).
pub const NAME_MAX: usize = 255;

/// One path component checked to stay inside the directory it is joined to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SafeName(String);

/// Why a name is not a [`SafeName`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong(usize),
    /// `.`, `..` or a hidden name.
    Dot,
    Char(char),
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "is empty"),
            NameError::TooLong(n) => write!(f, "is {n} bytes long, over {NAME_MAX}"),
            NameError::Dot => write!(f, "starts with '.'"),
            NameError::Char(c) => write!(f, "contains {c:?}, which a file name may not"),
        }
    }
}

impl std::error::Error for NameError {}

fn name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '@' | '+' | '=' | ':' | '~' | ',')
}

impl SafeName {
    /// The one way to make a path component from a name that came from outside.
    pub fn new(name: &str) -> Result<SafeName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > NAME_MAX {
            return Err(NameError::TooLong(name.len()));
        }
        if name.starts_with('.') {
            return Err(NameError::Dot);
        }
        if let Some(c) = name.chars().find(|c| !name_char(*c)) {
            return Err(NameError::Char(c));
        }
        Ok(SafeName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `base/name`: a direct child of `base`, whatever the name was.
pub fn join(base: &Path, name: &SafeName) -> PathBuf {
    base.join(&name.0)
}

/// `base/<stem><suffix>` (`<sessionId>.jsonl`, `<id>.json`), checked as one name.
pub fn file_in(base: &Path, stem: &str, suffix: &str) -> Result<PathBuf, NameError> {
    Ok(join(base, &SafeName::new(&format!("{stem}{suffix}"))?))
}

/// An agent id in OpenClaw's canonical form; always a [`SafeName`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(SafeName);

/// Longest agent id.
pub const AGENT_ID_MAX: usize = 64;

/// Why a string cannot be made into an agent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdError {
    pub raw: String,
}

impl fmt::Display for AgentIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.raw.chars().take(80).collect();
        write!(
            f,
            "{shown:?} is not an agent id: it has no letter, digit, '_' or '-' to keep \
             (agent ids are like \"main\" or \"ops-2\")"
        )
    }
}

impl std::error::Error for AgentIdError {}

fn valid_as_is(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= AGENT_ID_MAX
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

impl AgentId {
    /// OpenClaw's `normalizeAgentIdStrict`.
    pub fn normalize(raw: &str) -> Result<AgentId, AgentIdError> {
        let trimmed = raw.trim();
        // JavaScript's toLowerCase and Rust's to_lowercase follow the same Unicode mapping
        // (the Kelvin sign becomes an ASCII `k` in both).
        let lower = trimmed.to_lowercase();
        let id = if valid_as_is(trimmed) {
            lower
        } else {
            let mut out = String::with_capacity(lower.len());
            let mut in_run = false;
            for c in lower.chars() {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                    out.push(c);
                    in_run = false;
                } else if !in_run {
                    out.push('-');
                    in_run = true;
                }
            }
            let mut s = out.trim_matches('-').to_string();
            s.truncate(AGENT_ID_MAX);
            s
        };
        match SafeName::new(&id) {
            Ok(name) => Ok(AgentId(name)),
            Err(_) => Err(AgentIdError {
                raw: raw.to_string(),
            }),
        }
    }

    /// The agent of a fresh install, and of keys that name none.
    pub fn main() -> AgentId {
        AgentId(SafeName("main".to_string()))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn name(&self) -> &SafeName {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for AgentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PartialEq<str> for AgentId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for AgentId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A session key and the agent it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKey {
    /// The key as stored: `agent:<canonical agent id>:<rest>`, or a key that names no agent
    /// (trimmed, otherwise as given).
    pub key: String,
    pub agent: AgentId,
}

/// Why a session key is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    /// Starts with `agent:` without being `agent:<agentId>:<rest>`.
    Malformed,
    Agent(AgentIdError),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Empty => write!(f, "is empty"),
            KeyError::Malformed => write!(
                f,
                "starts with \"agent:\" but is not agent:<agentId>:<rest>"
            ),
            KeyError::Agent(e) => write!(f, "names an agent that {e}"),
        }
    }
}

impl std::error::Error for KeyError {}

impl SessionKey {
    /// Reads a session key; a key that names no agent belongs to `default_agent`.
    pub fn parse(raw: &str, default_agent: &AgentId) -> Result<SessionKey, KeyError> {
        let key = raw.trim();
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        let Some(after) = key
            .get(..6)
            .filter(|p| p.eq_ignore_ascii_case("agent:"))
            .map(|_| &key[6..])
        else {
            return Ok(SessionKey {
                key: key.to_string(),
                agent: default_agent.clone(),
            });
        };
        let (agent, rest) = after.split_once(':').ok_or(KeyError::Malformed)?;
        let agent = agent.trim();
        if agent.is_empty() || rest.is_empty() || rest.starts_with(':') {
            return Err(KeyError::Malformed);
        }
        let agent = AgentId::normalize(agent).map_err(KeyError::Agent)?;
        Ok(SessionKey {
            key: format!("agent:{agent}:{rest}"),
            agent,
        })
    }

    /// `agent:<agent>:<rest>`.
    pub fn of(agent: &AgentId, rest: &str) -> SessionKey {
        SessionKey {
            key: format!("agent:{agent}:{rest}"),
            agent: agent.clone(),
        }
    }

    /// The same key, moved to `agent` (a key that names another agent is re-scoped; one that
    /// names none is put under `agent:<agent>:`).
    pub fn scoped_to(&self, agent: &AgentId) -> SessionKey {
        let rest = match self.key.strip_prefix("agent:") {
            Some(r) => r.split_once(':').map_or(r, |(_, rest)| rest),
            None => &self.key,
        };
        SessionKey::of(agent, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Component;

    fn id(s: &str) -> Result<String, AgentIdError> {
        AgentId::normalize(s).map(|a| a.as_str().to_string())
    }

    #[test]
    fn agent_ids_are_normalized_as_openclaw_does() {
        // Valid as they are: lowercased only.
        assert_eq!(id("main").unwrap(), "main");
        assert_eq!(id("Ops_2-b").unwrap(), "ops_2-b");
        assert_eq!(id("  Main  ").unwrap(), "main");
        assert_eq!(id(&"a".repeat(64)).unwrap(), "a".repeat(64));
        // Runs of anything else become one dash; dashes at the ends go; cut at 64.
        assert_eq!(id("My Agent!!").unwrap(), "my-agent");
        assert_eq!(id("/tmp/x").unwrap(), "tmp-x");
        assert_eq!(id("../../../../../tmp/y").unwrap(), "tmp-y");
        assert_eq!(id("..\\..\\etc").unwrap(), "etc");
        assert_eq!(id("a--b").unwrap(), "a--b");
        assert_eq!(id("a-/b").unwrap(), "a--b");
        assert_eq!(id("%2e%2e%2fetc").unwrap(), "2e-2e-2fetc");
        assert_eq!(id("_x").unwrap(), "_x", "only dashes are stripped");
        assert_eq!(id("a\0b").unwrap(), "a-b");
        assert_eq!(
            id("\u{212A}elvin").unwrap(),
            "kelvin",
            "Unicode lowercasing"
        );
        assert_eq!(id("café").unwrap(), "caf");
        assert_eq!(id(&"b".repeat(65)).unwrap(), "b".repeat(64));
        let long = format!("x{}", "/y".repeat(40));
        assert_eq!(id(&long).unwrap().len(), 64);
        // Nothing left.
        for bad in ["", "   ", "..", "/", "\\", "\0", "%%%", "---", "é", "../.."] {
            assert!(id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn session_keys_name_their_agent_canonically() {
        let main = AgentId::main();
        let k = |s: &str| SessionKey::parse(s, &main);
        assert_eq!(k("agent:main:main").unwrap().key, "agent:main:main");
        let ops = k("Agent:Ops:telegram:Group:9").unwrap();
        assert_eq!(ops.key, "agent:ops:telegram:Group:9");
        assert_eq!(ops.agent, "ops");
        let up = k("agent:../../../../../tmp/y:s").unwrap();
        assert_eq!(
            (up.key.as_str(), up.agent.as_str()),
            ("agent:tmp-y:s", "tmp-y")
        );
        assert_eq!(k("agent:/some/dir:x").unwrap().agent, "some-dir");
        // A key that names no agent belongs to the default.
        let plain = k(" main ").unwrap();
        assert_eq!((plain.key.as_str(), plain.agent.as_str()), ("main", "main"));
        for bad in [
            "",
            "agent:",
            "agent:x",
            "agent::x",
            "agent:x:",
            "agent:x::y",
            "agent:/:x",
        ] {
            assert!(k(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            k("hook:1")
                .unwrap()
                .scoped_to(&AgentId::normalize("ops").unwrap())
                .key,
            "agent:ops:hook:1"
        );
        assert_eq!(
            k("agent:a:b:c").unwrap().scoped_to(&main).key,
            "agent:main:b:c"
        );
    }

    #[test]
    fn names_that_could_leave_their_directory_are_refused() {
        let too_long = "n".repeat(NAME_MAX + 1);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "../x",
            "a/b",
            "/etc",
            "/",
            "a\\b",
            "..\\x",
            "a\0b",
            "%2e%2e",
            "..%2f",
            "%2F",
            "a b",
            "tab\there",
            "new\nline",
            "\u{7f}",
            too_long.as_str(),
        ] {
            assert!(SafeName::new(bad).is_err(), "{bad:?}");
        }
        for good in [
            "sessions.json",
            "0f5e9c1a-2b3c-4d5e-8f90-123456789abc.jsonl",
            "s1-topic-42.jsonl",
            "agent:main:x",
            "über",
            &"n".repeat(NAME_MAX),
        ] {
            assert!(SafeName::new(good).is_ok(), "{good:?}");
        }
        assert_eq!(
            file_in(Path::new("/s"), "../x", ".jsonl"),
            Err(NameError::Dot)
        );
        assert_eq!(
            file_in(Path::new("/s"), "s1", ".jsonl").unwrap(),
            Path::new("/s/s1.jsonl")
        );
    }

    /// A path that is `base` plus exactly one normal component.
    fn is_direct_child(base: &Path, p: &Path) -> bool {
        p.parent() == Some(base)
            && matches!(p.components().next_back(), Some(Component::Normal(_)))
            && p.components().count() == base.components().count() + 1
    }

    fn hostile() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("..".to_string()),
            Just(".".to_string()),
            Just("/".to_string()),
            Just("\\".to_string()),
            Just("\0".to_string()),
            Just("%2e".to_string()),
            Just("%2f".to_string()),
            Just("agent:".to_string()),
            Just(":".to_string()),
            "[a-zA-Z0-9_-]{1,8}",
            any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn no_accepted_name_resolves_outside_its_base(s in hostile()) {
            let base = Path::new("/state/agents");
            if let Ok(name) = SafeName::new(&s) {
                prop_assert!(is_direct_child(base, &join(base, &name)), "{s:?}");
            }
        }

        #[test]
        fn every_agent_id_is_one_canonical_component(s in hostile()) {
            if let Ok(a) = AgentId::normalize(&s) {
                let v = a.as_str();
                prop_assert!(!v.is_empty() && v.len() <= AGENT_ID_MAX, "{s:?} -> {v:?}");
                prop_assert!(v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'));
                prop_assert!(!v.starts_with('-'));
                let base = Path::new("/state/agents");
                prop_assert!(is_direct_child(base, &join(base, a.name())));
                // Normalizing again changes nothing — except, as in OpenClaw, for an id that
                // starts with `_` and was cut right after a dash (the second pass strips it).
                if valid_as_is(v) {
                    prop_assert_eq!(AgentId::normalize(v).unwrap(), a.clone());
                }
            }
        }

        #[test]
        fn every_session_key_names_a_safe_agent(s in hostile()) {
            if let Ok(k) = SessionKey::parse(&s, &AgentId::main()) {
                let base = Path::new("/state/agents");
                prop_assert!(is_direct_child(base, &join(base, k.agent.name())));
                if valid_as_is(k.agent.as_str()) {
                    prop_assert_eq!(SessionKey::parse(&k.key, &AgentId::main()).unwrap(), k.clone());
                }
            }
        }
    }
}
