//! Transcript lines → compact usage records, per the counting rules in `docs/USAGE.md`.
//!
//! Parsing is typed and borrowing (no `serde_json::Value` per line): content blocks are
//! skimmed for their `type`, everything else a line carries is skipped by serde. A line that is
//! not a JSON object of the expected shape is counted as malformed and skipped.

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// Role and flags of one message.
pub mod kind {
    pub const USER: u8 = 1;
    pub const ASSISTANT: u8 = 2;
    pub const TOOL_RESULT: u8 = 4;
    pub const ERROR: u8 = 8;
}

/// One message line, for message counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgRec {
    pub ts: i64,
    pub kind: u8,
    pub tool_calls: u8,
}

/// One message with usage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UsageRec {
    pub ts: i64,
    /// Recorded cost: `[total, input, output, cacheRead, cacheWrite]`; `total` is NaN when the
    /// line recorded none (then it is estimated from prices at query time, or missing).
    pub cost: [f64; 5],
    /// `[input, output, cacheRead, cacheWrite, totalTokens]`.
    pub tokens: [u64; 5],
    /// Index into the parse's model table.
    pub model: u32,
}

impl UsageRec {
    pub fn has_recorded_cost(&self) -> bool {
        !self.cost[0].is_nan()
    }
}

/// One tool call, for the tools aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolRec {
    pub ts: i64,
    pub name: u32,
}

/// Strings seen by one parse (models as `(provider, model)`, tool names), to be re-mapped into
/// the index's tables when merged.
#[derive(Debug, Default, Clone)]
pub struct LocalNames {
    pub models: Vec<(String, String)>,
    pub tools: Vec<String>,
    model_ids: HashMap<(String, String), u32>,
    tool_ids: HashMap<String, u32>,
}

impl LocalNames {
    fn model(&mut self, provider: &str, model: &str) -> u32 {
        if let Some(&id) = self
            .model_ids
            .get(&(provider.to_string(), model.to_string()))
        {
            return id;
        }
        let id = self.models.len() as u32;
        self.models.push((provider.to_string(), model.to_string()));
        self.model_ids
            .insert((provider.to_string(), model.to_string()), id);
        id
    }

    fn tool(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.tool_ids.get(name) {
            return id;
        }
        let id = self.tools.len() as u32;
        self.tools.push(name.to_string());
        self.tool_ids.insert(name.to_string(), id);
        id
    }
}

/// What a run of lines produced.
#[derive(Debug, Default, Clone)]
pub struct Parsed {
    pub msgs: Vec<MsgRec>,
    pub usage: Vec<UsageRec>,
    pub tools: Vec<ToolRec>,
    pub names: LocalNames,
    pub lines: u64,
    pub malformed: u64,
}

/// A timestamp that may be a number (ms) or an ISO string; anything else is ignored.
#[derive(Debug, Default, Clone, Copy)]
struct Ts(Option<i64>);

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ts, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a timestamp")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Ts, E> {
                Ok(Ts(i64::try_from(v).ok()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Ts, E> {
                Ok(Ts(Some(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Ts, E> {
                Ok(Ts(v.is_finite().then_some(v as i64)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Ts, E> {
                Ok(Ts(super::time::parse_iso_ms(v)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Ts, E> {
                Ok(Ts(None))
            }
            fn visit_unit<E>(self) -> Result<Ts, E> {
                Ok(Ts(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Ts, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Ts(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Ts, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Ts(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    timestamp: Ts,
    #[serde(borrow, default)]
    message: Option<Message<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    provider: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    timestamp: Ts,
    #[serde(rename = "stopReason", borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Content<'a>,
    #[serde(default)]
    usage: Option<Usage>,
}

/// Tool-call names found in `content` (a string content has none).
#[derive(Default)]
struct Content<'a>(Vec<Cow<'a, str>>);

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Content<'a>, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("message content")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Content<'a>, A::Error> {
                let mut names = Vec::new();
                while let Some(block) = a.next_element::<Option<Block<'de>>>()? {
                    if let Some(Block {
                        kind: Some(k),
                        name,
                    }) = block
                        && (k == "toolCall" || k == "tool_use")
                    {
                        names.push(name.unwrap_or(Cow::Borrowed("unknown")));
                    }
                }
                Ok(Content(names))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Content<'a>, E> {
                Ok(Content(Vec::new()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Content<'a>, E> {
                Ok(Content(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Content<'a>, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Content(Vec::new()))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize, Default)]
struct Usage {
    #[serde(default)]
    input: Option<f64>,
    #[serde(default)]
    output: Option<f64>,
    #[serde(rename = "cacheRead", default)]
    cache_read: Option<f64>,
    #[serde(rename = "cacheWrite", default)]
    cache_write: Option<f64>,
    #[serde(rename = "totalTokens", default)]
    total_tokens: Option<f64>,
    #[serde(default)]
    cost: Option<Cost>,
}

#[derive(Deserialize, Default)]
struct Cost {
    #[serde(default)]
    input: Option<f64>,
    #[serde(default)]
    output: Option<f64>,
    #[serde(rename = "cacheRead", default)]
    cache_read: Option<f64>,
    #[serde(rename = "cacheWrite", default)]
    cache_write: Option<f64>,
    #[serde(default)]
    total: Option<f64>,
}

fn tokens(v: Option<f64>) -> u64 {
    match v {
        Some(x) if x.is_finite() && x > 0.0 => x.round() as u64,
        _ => 0,
    }
}

fn money(v: Option<f64>) -> f64 {
    v.filter(|x| x.is_finite()).unwrap_or(0.0)
}

impl Parsed {
    /// Parses one line (without its newline).
    pub fn line(&mut self, line: &[u8]) {
        self.lines += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let parsed: Line = match serde_json::from_slice(line) {
            Ok(l) => l,
            Err(_) => {
                self.malformed += 1;
                return;
            }
        };
        if parsed.kind.as_deref() != Some("message") {
            return;
        }
        let Some(msg) = parsed.message else {
            self.malformed += 1;
            return;
        };
        let ts = msg.timestamp.0.or(parsed.timestamp.0).unwrap_or(0);
        let mut kind = match msg.role.as_deref() {
            Some("user") => kind::USER,
            Some("assistant") => kind::ASSISTANT,
            Some("toolResult") | Some("tool") => kind::TOOL_RESULT,
            _ => 0,
        };
        if kind == kind::ASSISTANT && msg.stop_reason.as_deref() == Some("error") {
            kind |= kind::ERROR;
        }
        let tool_calls = if kind & kind::ASSISTANT != 0 {
            msg.content.0.len()
        } else {
            0
        };
        if kind & kind::ASSISTANT != 0 {
            for name in &msg.content.0 {
                let name = self.names.tool(name);
                self.tools.push(ToolRec { ts, name });
            }
        }
        self.msgs.push(MsgRec {
            ts,
            kind,
            tool_calls: tool_calls.min(255) as u8,
        });
        if let Some(u) = msg.usage {
            let t = [
                tokens(u.input),
                tokens(u.output),
                tokens(u.cache_read),
                tokens(u.cache_write),
                0,
            ];
            let total = match u.total_tokens {
                Some(_) => tokens(u.total_tokens),
                None => t[0] + t[1] + t[2] + t[3],
            };
            let cost = match u.cost {
                Some(c) if c.total.is_some_and(|x| x.is_finite() && x >= 0.0) => [
                    money(c.total),
                    money(c.input),
                    money(c.output),
                    money(c.cache_read),
                    money(c.cache_write),
                ],
                _ => [f64::NAN, 0.0, 0.0, 0.0, 0.0],
            };
            let model = self.names.model(
                msg.provider.as_deref().unwrap_or("unknown"),
                msg.model.as_deref().unwrap_or("unknown"),
            );
            self.usage.push(UsageRec {
                ts,
                cost,
                tokens: [t[0], t[1], t[2], t[3], total],
                model,
            });
        }
    }

    /// Parses every complete line in `buf`; returns how many bytes that was (up to and
    /// including the last newline). A trailing partial line is left for the next read.
    pub fn lines(&mut self, buf: &[u8]) -> usize {
        let mut start = 0;
        while let Some(nl) = memchr(b'\n', &buf[start..]) {
            self.line(&buf[start..start + nl]);
            start += nl + 1;
        }
        start
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_messages_usage_and_tools() {
        let mut p = Parsed::default();
        let text = concat!(
            r#"{"type":"session","version":3,"id":"s1","timestamp":"2026-11-02T08:00:00.000Z"}"#,
            "\n",
            r#"{"type":"message","id":"1","timestamp":"2026-11-02T08:15:00.000Z","message":{"role":"user","content":[{"type":"text","text":"hi"}]}}"#,
            "\n",
            r#"{"type":"message","id":"2","timestamp":"x","message":{"role":"assistant","provider":"anthropic","model":"m","timestamp":1000,"stopReason":"toolUse","content":[{"type":"text","text":"t"},{"type":"toolCall","id":"c","name":"exec","arguments":{"a":[1]}}],"usage":{"input":10,"output":5,"cacheRead":3,"cacheWrite":2,"cost":{"input":0.1,"output":0.2,"total":0.3}}}}"#,
            "\n",
            r#"{"type":"message","id":"3","message":{"role":"toolResult","toolCallId":"c","content":"ok","timestamp":2000}}"#,
            "\n",
            r#"{"type":"message","id":"4","message":{"role":"assistant","stopReason":"error","content":"boom","usage":{"input":7,"totalTokens":9},"timestamp":3000}}"#,
            "\n",
            r#"{"type":"model_change","provider":"x"}"#,
            "\n",
            "not json\n",
            r#"{"type":"message","message":"oops"}"#,
            "\n",
            r#"{"type":"message","id":"5","message":{"role":"user","content":"partial"#,
        );
        let used = p.lines(text.as_bytes());
        assert_eq!(
            &text.as_bytes()[used..],
            br#"{"type":"message","id":"5","message":{"role":"user","content":"partial"#
        );
        assert_eq!(p.lines, 8);
        assert_eq!(p.malformed, 2);
        assert_eq!(p.msgs.len(), 4);
        assert_eq!(
            p.msgs[0],
            MsgRec {
                ts: 1_793_607_300_000,
                kind: kind::USER,
                tool_calls: 0
            }
        );
        assert_eq!(p.msgs[1].tool_calls, 1);
        assert_eq!(p.msgs[1].ts, 1000, "message.timestamp wins over the line's");
        assert_eq!(p.msgs[2].kind, kind::TOOL_RESULT);
        assert_eq!(p.msgs[3].kind, kind::ASSISTANT | kind::ERROR);
        assert_eq!(p.usage.len(), 2);
        assert_eq!(p.usage[0].tokens, [10, 5, 3, 2, 20]);
        assert_eq!(p.usage[0].cost[0], 0.3);
        assert_eq!(p.usage[0].cost[3], 0.0);
        assert_eq!(
            p.names.models[p.usage[0].model as usize],
            ("anthropic".into(), "m".into())
        );
        assert_eq!(
            p.usage[1].tokens,
            [7, 0, 0, 0, 9],
            "totalTokens as recorded"
        );
        assert!(!p.usage[1].has_recorded_cost());
        assert_eq!(
            p.names.models[p.usage[1].model as usize],
            ("unknown".into(), "unknown".into())
        );
        assert_eq!(p.tools, [ToolRec { ts: 1000, name: 0 }]);
        assert_eq!(p.names.tools, ["exec"]);
    }

    #[test]
    fn escaped_strings_and_odd_types_do_not_break_parsing() {
        let mut p = Parsed::default();
        p.line(br#"{"type":"message","timestamp":17,"message":{"role":"assistant","model":"m\"x","provider":"p\u00e9","content":[null,{"type":"toolCall"}],"usage":{"input":1.6,"output":-3}}}"#);
        assert_eq!(p.malformed, 0);
        assert_eq!(p.usage[0].tokens, [2, 0, 0, 0, 2]);
        assert_eq!(p.names.models[0], ("p\u{e9}".into(), "m\"x".into()));
        assert_eq!(p.names.tools, ["unknown"]);
        assert_eq!(p.msgs[0].ts, 17);
        p.line(br#"{"type":"message","message":{"role":"user","usage":"none"}}"#);
        assert_eq!(
            p.malformed, 1,
            "a wrongly typed field makes the line malformed"
        );
        p.line(b"[1,2,3]");
        assert_eq!(p.malformed, 2);
    }
}
