//! Feishu event callbacks (`keel::inbound::feishu::handle`) with any body and headers.
//! Input: a flags byte, then the body. The flags choose whether an encrypt key is configured,
//! whether the target seals the body as Feishu does (`{"encrypt": …}`, so the fuzzer reaches
//! the parser behind decryption), whether it signs the request correctly, wrongly or not at
//! all, and whether the bot's open_id is configured. Nothing may panic; a refusal is 400, 401
//! or 413; with a key, an event that is not signed is never a message; a message keeps the
//! bounds of `Inbound::check`; every answer is JSON.
#![no_main]

use keel::config::inbound_webhooks::FeishuWebhook;
use keel::digest::{hex, sha256};
use keel::inbound::feishu::{NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, handle, seal};
use keel::inbound::webhook::Verdict;
use libfuzzer_sys::fuzz_target;

const KEY: &str = "fuzz-encrypt-key";
const NOW_MS: i64 = 1_796_600_000_000;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, data)) = input.split_first() else {
        return;
    };
    let with_key = flags & 1 != 0;
    let account = FeishuWebhook {
        account_id: "default".into(),
        verification_token: "fuzz-token".into(),
        encrypt_key: with_key.then(|| KEY.to_string()),
        webhook_path: "/feishu/events".into(),
        bot_open_id: (flags & 0x20 != 0).then(|| "ou_bot".to_string()),
        access: Default::default(),
    };
    // Bit 1: seal the data as Feishu does (with the configured key, or the right one anyway).
    let body: Vec<u8> = if flags & 2 != 0 {
        let iv = [flags; 16];
        serde_json::json!({ "encrypt": seal(KEY, iv, data) })
            .to_string()
            .into_bytes()
    } else {
        data.to_vec()
    };
    let ts = (NOW_MS / 1000 - 5).to_string();
    let good = hex(&sha256(&[ts.as_bytes(), b"nonce", KEY.as_bytes(), &body]));
    let wrong = hex(&sha256(&[ts.as_bytes(), b"nonce", b"other-key", &body]));
    // Bits 2-3: signed correctly, wrongly, not at all, or with only a signature header.
    let mut headers = vec![];
    match (flags >> 2) & 3 {
        0 => headers.extend([
            (TIMESTAMP_HEADER, ts.as_str()),
            (NONCE_HEADER, "nonce"),
            (SIGNATURE_HEADER, good.as_str()),
        ]),
        1 => headers.extend([
            (TIMESTAMP_HEADER, ts.as_str()),
            (NONCE_HEADER, "nonce"),
            (SIGNATURE_HEADER, wrong.as_str()),
        ]),
        2 => {}
        _ => headers.push((SIGNATURE_HEADER, good.as_str())),
    }
    let signed = (flags >> 2) & 3 == 0;
    let verdict = handle(&account, &headers, &body, NOW_MS);
    match &verdict {
        Verdict::Refuse { status, reason } => {
            assert!(matches!(status, 400 | 401 | 413), "{status} {reason}");
            assert!(!reason.is_empty());
        }
        Verdict::Message(m) => {
            assert!(!with_key || signed, "an unsigned message with a key set: {m:?}");
            assert_eq!(m.check(), Ok(()), "{m:?}");
            assert_eq!(m.channel, "feishu");
            assert!(!m.text.trim().is_empty());
        }
        Verdict::Challenge(c) => assert!(!c.is_empty() && c.len() <= 256),
        Verdict::Ignore(_) => {}
    }
    if with_key && (flags >> 2) & 3 == 1 {
        assert!(
            matches!(verdict, Verdict::Refuse { status: 401, .. }),
            "a wrong signature was not refused: {verdict:?}"
        );
    }
    let answer = verdict.answer();
    serde_json::from_slice::<serde_json::Value>(&answer.body).expect("the answer is JSON");
});
