//! Slack Events API requests (`keel::inbound::slack::handle`) with any body and headers.
//! Input: a flags byte, then the body. The flags choose whether the target signs the body
//! correctly (so the fuzzer reaches the parser behind the signature), signs it wrongly or
//! not at all, the timestamp's distance from the clock, and whether a bot user id is
//! configured. Nothing may panic; a refusal is 400, 401 or 413; anything unsigned or badly
//! signed is refused; a message keeps the bounds of `Inbound::check`; every answer is JSON.
#![no_main]

use keel::config::inbound_webhooks::SlackWebhook;
use keel::digest::{hex, hmac_sha256};
use keel::inbound::slack::{SIGNATURE_HEADER, TIMESTAMP_HEADER, handle};
use keel::inbound::webhook::Verdict;
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-signing-secret";
const NOW_MS: i64 = 1_796_600_000_000;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, body)) = input.split_first() else {
        return;
    };
    let account = SlackWebhook {
        account_id: "default".into(),
        signing_secret: SECRET.into(),
        webhook_path: "/slack/events".into(),
        bot_user_id: (flags & 0x10 != 0).then(|| "U0BOT".to_string()),
        access: Default::default(),
    };
    // Bits 2-3: the timestamp's offset: now, 4 minutes ago, 6 minutes ago, 6 minutes ahead.
    let ts = (NOW_MS / 1000 + [0, -240, -360, 360][usize::from((flags >> 2) & 3)]).to_string();
    let good = format!(
        "v0={}",
        hex(&hmac_sha256(
            SECRET.as_bytes(),
            &[b"v0:", ts.as_bytes(), b":", body]
        ))
    );
    let mut bad = good.clone().into_bytes();
    bad[5] = if bad[5] == b'0' { b'1' } else { b'0' };
    let bad = String::from_utf8(bad).unwrap_or_default();
    // Bits 0-1: signed correctly, wrongly, not at all, or with the body's first line as the
    // signature header's value.
    let first_line = String::from_utf8_lossy(body.split(|b| *b == b'\n').next().unwrap_or(&[]))
        .into_owned();
    let sig = match flags & 3 {
        0 => Some(good.as_str()),
        1 => Some(bad.as_str()),
        2 => None,
        _ => Some(first_line.as_str()),
    };
    let mut headers = vec![(TIMESTAMP_HEADER, ts.as_str())];
    if let Some(s) = sig {
        headers.push((SIGNATURE_HEADER, s));
    }
    let verdict = handle(&account, &headers, body, NOW_MS);
    let authentic = flags & 3 == 0 && (flags >> 2) & 3 < 2;
    match &verdict {
        Verdict::Refuse { status, reason } => {
            assert!(matches!(status, 400 | 401 | 413), "{status} {reason}");
            assert!(!reason.is_empty());
        }
        other => assert!(authentic, "accepted without a good signature: {other:?}"),
    }
    if let Verdict::Message(m) = &verdict {
        assert_eq!(m.check(), Ok(()), "{m:?}");
        assert_eq!(m.channel, "slack");
        assert!(!m.text.trim().is_empty());
    }
    let answer = verdict.answer();
    serde_json::from_slice::<serde_json::Value>(&answer.body).expect("the answer is JSON");
});
