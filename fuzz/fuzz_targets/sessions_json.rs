//! `sessions.json`, a session store written by OpenClaw (or by hand): parsed into a snapshot
//! or refused with a reason; entries are newest first and findable by session id.
#![no_main]

use keel::sessions::store::StoreSnapshot;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|input: &[u8]| {
    let path = Path::new("agents/main/sessions/sessions.json");
    let snap = match StoreSnapshot::parse("main", path, input) {
        Ok(s) => s,
        Err(why) => {
            assert!(!why.is_empty());
            return;
        }
    };
    for pair in snap.entries.windows(2) {
        assert!(
            pair[0].updated_at >= pair[1].updated_at,
            "entries out of order"
        );
    }
    for e in &snap.entries {
        assert!(!e.session_id.is_empty());
        let found = snap
            .by_session_id(&e.session_id)
            .expect("every entry is findable");
        assert_eq!(found.session_id, e.session_id);
        let _ = e.kind();
    }
});
