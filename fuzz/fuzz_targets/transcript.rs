//! Transcript lines as the usage index reads them: the file arrives in pieces (a slice may
//! end mid-line; the partial line waits for the next read), and the records must be the same
//! as when it is read in one piece.
#![no_main]

use keel::sessions::transcript::Parsed;
use libfuzzer_sys::fuzz_target;

fn read(pieces: &[&[u8]]) -> (Parsed, usize) {
    let mut parsed = Parsed::default();
    let mut buf = Vec::new();
    let mut consumed = 0;
    for piece in pieces {
        buf.extend_from_slice(piece);
        let used = parsed.lines(&buf);
        assert!(used <= buf.len());
        assert!(used == 0 || buf[used - 1] == b'\n');
        consumed += used;
        buf.drain(..used);
    }
    assert!(!buf.contains(&b'\n'));
    (parsed, consumed)
}

fuzz_target!(|input: &[u8]| {
    let (pieces, data) = keel_fuzz::split(input);
    let (whole, n_whole) = read(&[data]);
    let (split, n_split) = read(&pieces);
    assert_eq!(n_whole, n_split);
    assert_eq!(
        whole.lines,
        data.iter().filter(|&&b| b == b'\n').count() as u64
    );
    assert!(whole.malformed <= whole.lines);
    assert!(whole.usage.len() <= whole.msgs.len());
    for u in &whole.usage {
        assert!(u.cost.iter().skip(1).all(|c| c.is_finite()), "{u:?}");
    }
    // Debug text: costs may be NaN (no recorded cost), which is not equal to itself. (The
    // name maps are hash maps, in no order; the name lists say the same.)
    let key = |p: &Parsed| {
        format!(
            "{:?}",
            (
                &p.msgs,
                &p.usage,
                &p.tools,
                &p.names.models,
                &p.names.tools,
                p.lines,
                p.malformed
            )
        )
    };
    assert_eq!(key(&whole), key(&split));
});
