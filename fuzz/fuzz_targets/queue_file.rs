//! Delivery queue files (`<id>.json`): loaded as the queue's recovery loads them, or refused
//! as damaged; an entry that loads is written back byte-for-byte loadable as the same entry.
#![no_main]

use keel::delivery::queue::{encode_entry, parse_entry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // The id is the file's name; take it from the entry so that most inputs get past the
    // name check (a mismatch is its own verdict, checked too).
    let id = serde_json::from_slice::<serde_json::Value>(input)
        .ok()
        .and_then(|v| v["id"].as_str().map(String::from))
        .unwrap_or_else(|| "0f8fad5b-d9cb-469f-a165-70867728950e".into());
    let entry = match parse_entry(input, &id) {
        Ok(e) => e,
        Err(why) => {
            assert!(!why.is_empty());
            return;
        }
    };
    assert_eq!(entry.id, id);
    assert!(parse_entry(input, &format!("{id}x")).is_err());
    let bytes = encode_entry(&entry).expect("an entry that loaded can be written");
    let again = parse_entry(&bytes, &id).expect("what keel writes, keel reads");
    assert_eq!(
        again,
        entry,
        "round trip through {}",
        String::from_utf8_lossy(&bytes)
    );
});
