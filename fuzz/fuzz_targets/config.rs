//! The config file: `config::parse` validates any text without panicking; what it accepts is
//! usable (a listen address, readiness reasons), and a fatal verdict always says why.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let v = keel::config::parse(text, None);
    if v.is_fatal() {
        assert!(v.problems.iter().any(|p| p.fatal && !p.message.is_empty()));
        return;
    }
    let c = &v.config;
    let _ = c.listen_addr();
    let reasons = c.readiness_reasons();
    // Every non-fatal problem disables something and shows in /readyz.
    assert_eq!(
        reasons.len(),
        v.problems.len(),
        "{reasons:?} vs {:?}",
        v.problems
    );
    for path in ["/api/rpc/status", "/hooks/agent", "/healthz"] {
        let _ = keel::reactor::body_limit("POST", path, c);
    }
    // The same text validates the same way again (a reload sees what start-up saw).
    let again = keel::config::parse(text, None);
    assert_eq!(format!("{:?}", again.problems), format!("{:?}", v.problems));
});
