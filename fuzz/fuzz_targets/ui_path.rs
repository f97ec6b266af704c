//! Request paths and headers for the dashboard (`keel::ui`): whatever the bytes, a path
//! accepted as a file is a plain relative path — no empty, `.` or `..` segment, no hidden
//! name, no control character or backslash — that stays under the root when joined to it; a
//! refusal is a 400 or a 404; only `basePath` itself redirects. The encoding and HTML
//! acceptance checks and the document's preparation (its inline-script hashes, stamping of
//! `<html>`) take any text without panicking. First byte: which base path (even: none).
#![no_main]

use keel::ui::{Encoding, accepts_html, html, negotiate, path};
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

fuzz_target!(|input: &[u8]| {
    let Some((&choice, rest)) = input.split_first() else {
        return;
    };
    let base = if choice % 2 == 0 { "" } else { "/oc" };
    let text = String::from_utf8_lossy(rest);
    match path::route(&text, base) {
        path::Route::File(rel) => {
            assert!(
                !rel.is_empty() && !rel.starts_with('/'),
                "{text:?} -> {rel:?}"
            );
            for seg in rel.split('/') {
                assert!(
                    !seg.is_empty() && !seg.starts_with('.'),
                    "{text:?} -> {rel:?}"
                );
                assert!(
                    !seg.chars().any(|c| c.is_control() || c == '\\'),
                    "{text:?} -> {rel:?}"
                );
            }
            let joined = Path::new("/root").join(&rel);
            assert!(joined.starts_with("/root"), "{text:?} -> {rel:?}");
            assert!(
                joined
                    .components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
                "{text:?} -> {rel:?}"
            );
        }
        path::Route::Refused(status, _) => assert!(matches!(status, 400 | 404), "{text:?}"),
        path::Route::Redirect(to) => {
            assert!(
                !base.is_empty() && to.starts_with("/oc/"),
                "{text:?} -> {to:?}"
            );
        }
        path::Route::NotUi | path::Route::BootstrapConfig => {}
    }
    let _ = negotiate(Some(&text), &[Encoding::Br, Encoding::Gzip]);
    let _ = accepts_html(Some(&text));
    let doc = html::prepare(&text, base, None);
    assert!(doc.csp.starts_with("default-src 'self'"));
    for h in html::inline_script_hashes(&doc.html) {
        assert!(h.starts_with("sha256-") && h.len() == 7 + 44, "{h}");
    }
});
