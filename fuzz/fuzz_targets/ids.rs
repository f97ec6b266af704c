//! Names from outside through keel's one checked constructor for paths (`keel::ids`):
//! whatever the bytes, an accepted `SafeName` joins as exactly one child of its base, an
//! `AgentId` is canonical (`[a-z0-9_-]`, at most 64, no leading dash) and one child too, and a
//! `SessionKey` names such an agent and reads back the same. Nothing panics.
#![no_main]

use keel::ids::{AGENT_ID_MAX, AgentId, SafeName, SessionKey, join};
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

fn direct_child(base: &Path, name: &SafeName) {
    let p = join(base, name);
    assert_eq!(p.parent(), Some(base), "{name:?} escapes");
    assert!(
        matches!(p.components().next_back(), Some(Component::Normal(_))),
        "{name:?} is not a plain name"
    );
    assert_eq!(p.components().count(), base.components().count() + 1);
}

fuzz_target!(|input: &[u8]| {
    let s = String::from_utf8_lossy(input);
    let base = Path::new("/state/agents");
    if let Ok(n) = SafeName::new(&s) {
        direct_child(base, &n);
    }
    if let Ok(a) = AgentId::normalize(&s) {
        let v = a.as_str();
        assert!(!v.is_empty() && v.len() <= AGENT_ID_MAX, "{s:?} -> {v:?}");
        assert!(
            v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'),
            "{s:?} -> {v:?}"
        );
        assert!(!v.starts_with('-'), "{s:?} -> {v:?}");
        direct_child(base, a.name());
    }
    if let Ok(k) = SessionKey::parse(&s, &AgentId::main()) {
        direct_child(base, k.agent.name());
        let again = SessionKey::parse(&k.key, &AgentId::main()).expect("a stored key reads back");
        direct_child(base, again.agent.name());
    }
});
