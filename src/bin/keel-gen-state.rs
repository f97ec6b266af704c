//! `keel-gen-state`: writes a synthetic OpenClaw state directory — per-agent `sessions.json`,
//! JSONL transcripts with reset and deleted archives, other line types and malformed lines, and
//! a `keel.json` with model prices — and prints the exact usage figures for it as one JSON
//! object.
//!
//! The figures are computed here, while writing, by the rules of `docs/USAGE.md`, without any of
//! keel's library code: they are an independent check of keel's usage index. Output (files and
//! figures) is byte-for-byte deterministic for a given `--seed` and `--now`.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

const USAGE: &str = "\
usage: keel-gen-state --out DIR [--agents N] [--sessions N] [--messages N] [--seed N]
                      [--days N] [--now MS] [--pretty] [--sqlite]

Writes a synthetic OpenClaw state directory under DIR (which must be empty or absent) and
prints its exact usage figures (per docs/USAGE.md) as JSON on stdout.

  --out DIR       where to write (agents/<id>/sessions/…, keel.json)
  --agents N      agents: main, agent-2 … agent-N            (default 9)
  --sessions N    sessions per agent, deleted ones included  (default 184)
  --messages N    message lines per live transcript          (default 200)
  --seed N        PRNG seed                                  (default 1)
  --days N        messages spread over the N days up to now  (default 28)
  --now MS        ms since the epoch                         (default: the current time)
  --pretty        pretty-print the figures
  --sqlite        then convert it as OpenClaw 2026.7+ imports a state: per agent
                  agents/<id>/agent/openclaw-agent.sqlite (events of 1 KiB and more
                  zstd-compressed, archives every other one compressed), the files
                  moved aside as *.imported-<ms>; the figures do not change";

const DAY_MS: i64 = 86_400_000;
const CHANNELS: [&str; 6] = [
    "telegram",
    "slack",
    "discord",
    "webchat",
    "feishu",
    "openclaw-weixin",
];
/// Malformed lines written per agent: a truncated JSON line, `not json at all`, and a
/// `message` line whose `message` is a string.
const MALFORMED_KINDS: usize = 3;
/// `bySession` is printed only up to this many sessions (agents × sessions).
const BY_SESSION_LIMIT: u64 = 500;

struct Model {
    provider: &'static str,
    id: &'static str,
    api: &'static str,
    /// USD per million tokens: input, output, cacheRead, cacheWrite. `None`: not priced.
    price: Option<[f64; 4]>,
}

const MODELS: [Model; 5] = [
    Model {
        provider: "anthropic",
        id: "claude-sonnet-4-5",
        api: "anthropic-messages",
        price: Some([3.0, 15.0, 0.3, 3.75]),
    },
    Model {
        provider: "anthropic",
        id: "claude-haiku-4-5",
        api: "anthropic-messages",
        price: Some([1.0, 5.0, 0.1, 1.25]),
    },
    Model {
        provider: "openai",
        id: "gpt-5",
        api: "openai-responses",
        price: Some([1.25, 10.0, 0.125, 0.0]),
    },
    Model {
        provider: "openai",
        id: "gpt-5-mini",
        api: "openai-responses",
        price: Some([0.25, 2.0, 0.025, 0.0]),
    },
    Model {
        provider: "local",
        id: "llama-3-70b",
        api: "openai-completions",
        price: None,
    },
];
const LOCAL: usize = 4;

const WORDS: [&str; 64] = [
    "the",
    "agent",
    "gateway",
    "session",
    "deploy",
    "server",
    "please",
    "check",
    "logs",
    "and",
    "restart",
    "service",
    "config",
    "token",
    "model",
    "reply",
    "channel",
    "message",
    "with",
    "error",
    "timeout",
    "retry",
    "queue",
    "worker",
    "memory",
    "disk",
    "usage",
    "report",
    "today",
    "yesterday",
    "build",
    "release",
    "branch",
    "commit",
    "review",
    "test",
    "failing",
    "passing",
    "because",
    "then",
    "we",
    "should",
    "could",
    "it",
    "is",
    "was",
    "not",
    "a",
    "to",
    "of",
    "in",
    "for",
    "on",
    "database",
    "backup",
    "cron",
    "job",
    "schedule",
    "latency",
    "p99",
    "cache",
    "hit",
    "ratio",
    "ok",
];
/// Occasional pieces that exercise JSON escaping and UTF-8.
const ODD: [&str; 12] = [
    "\"quoted\"",
    "C:\\Users\\ops\\keel",
    "line\nbreak",
    "tab\there",
    "café",
    "naïve",
    "日本語のテキスト",
    "🚀",
    "<b>bold</b>",
    "{\"json\":[1,2]}",
    "ctrl\u{1}char",
    "100% done; $5 & 'single'",
];

// ---------------------------------------------------------------------------------------------
// PRNG (splitmix64): deterministic, no dependencies.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`0` when `n == 0`).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn hex8(&mut self, out: &mut String) {
        let _ = write!(out, "{:08x}", self.next() as u32);
    }
    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments.

struct Args {
    out: PathBuf,
    agents: u64,
    sessions: u64,
    messages: u64,
    seed: u64,
    days: u64,
    now: i64,
    pretty: bool,
    sqlite: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut out = None;
    let mut a = Args {
        out: PathBuf::new(),
        agents: 9,
        sessions: 184,
        messages: 200,
        seed: 1,
        days: 28,
        now: -1,
        pretty: false,
        sqlite: false,
    };
    fn num(flag: &str, v: Option<String>, min: u64, max: u64) -> Result<u64, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        let n: u64 = v
            .parse()
            .map_err(|_| format!("{flag}: not a non-negative integer: {v:?}"))?;
        if n < min || n > max {
            return Err(format!("{flag}: {n} is outside {min}..={max}"));
        }
        Ok(n)
    }
    while let Some(arg) = it.next() {
        // `--flag=value` is accepted too.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next());
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--out" => out = Some(PathBuf::from(value().ok_or("--out needs a value")?)),
            "--agents" => a.agents = num("--agents", value(), 1, 10_000)?,
            "--sessions" => a.sessions = num("--sessions", value(), 1, 1_000_000)?,
            "--messages" => a.messages = num("--messages", value(), 1, 10_000_000)?,
            "--seed" => a.seed = num("--seed", value(), 0, u64::MAX)?,
            "--days" => a.days = num("--days", value(), 1, 36_500)?,
            "--now" => a.now = num("--now", value(), 0, 253_402_300_799_999)? as i64,
            "--pretty" if inline.is_none() => a.pretty = true,
            "--sqlite" if inline.is_none() => a.sqlite = true,
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    a.out = out.ok_or("--out DIR is required")?;
    if a.now < 0 {
        a.now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| format!("clock before the epoch: {e}"))?
            .as_millis() as i64;
    }
    if a.now < a.days as i64 * DAY_MS {
        return Err("--now is earlier than --days after the epoch".into());
    }
    Ok(Some(a))
}

// ---------------------------------------------------------------------------------------------
// Figures.

#[derive(Clone, Default)]
struct Totals {
    /// Messages with a `usage` object (a group is printed only when this is > 0).
    n: u64,
    /// input, output, cacheRead, cacheWrite.
    tokens: [u64; 4],
    total_tokens: u64,
    /// inputCost, outputCost, cacheReadCost, cacheWriteCost.
    cost: [f64; 4],
    total_cost: f64,
    missing: u64,
}

/// One message's usage, as the rules of docs/USAGE.md read it.
struct Usage {
    tokens: [u64; 4],
    total_tokens: u64,
    /// Parts and total, from rule 1 (recorded) or rule 2 (estimated); `None`: no cost.
    cost: Option<([f64; 4], f64)>,
    missing: bool,
}

impl Totals {
    fn add(&mut self, u: &Usage) {
        self.n += 1;
        for k in 0..4 {
            self.tokens[k] += u.tokens[k];
        }
        self.total_tokens += u.total_tokens;
        if let Some((parts, total)) = u.cost {
            for (sum, part) in self.cost.iter_mut().zip(parts) {
                *sum += part;
            }
            self.total_cost += total;
        }
        self.missing += u64::from(u.missing);
    }
    fn merge(&mut self, o: &Totals) {
        self.n += o.n;
        for k in 0..4 {
            self.tokens[k] += o.tokens[k];
            self.cost[k] += o.cost[k];
        }
        self.total_tokens += o.total_tokens;
        self.total_cost += o.total_cost;
        self.missing += o.missing;
    }
    fn fields(&self, out: &mut Vec<(&'static str, J)>) {
        out.extend([
            ("input", J::U(self.tokens[0])),
            ("output", J::U(self.tokens[1])),
            ("cacheRead", J::U(self.tokens[2])),
            ("cacheWrite", J::U(self.tokens[3])),
            ("totalTokens", J::U(self.total_tokens)),
            ("totalCost", J::F(self.total_cost)),
            ("inputCost", J::F(self.cost[0])),
            ("outputCost", J::F(self.cost[1])),
            ("cacheReadCost", J::F(self.cost[2])),
            ("cacheWriteCost", J::F(self.cost[3])),
            ("missingCostEntries", J::U(self.missing)),
        ]);
    }
    fn object(&self, mut head: Vec<(&'static str, J)>) -> J {
        self.fields(&mut head);
        J::O(head)
    }
}

#[derive(Default)]
struct Messages {
    total: u64,
    user: u64,
    assistant: u64,
    tool_calls: u64,
    tool_results: u64,
    errors: u64,
}

struct SessionRow {
    agent: String,
    session_id: String,
    key: Option<String>,
    label: Option<String>,
    channel: String,
    totals: Totals,
}

#[derive(Default)]
struct Figures {
    messages: Messages,
    totals: Totals,
    daily: BTreeMap<i64, Totals>,
    by_model: BTreeMap<(&'static str, &'static str), Totals>,
    by_agent: BTreeMap<String, Totals>,
    by_channel: BTreeMap<String, Totals>,
    by_session: Vec<SessionRow>,
    min_time: Option<i64>,
    max_time: Option<i64>,
    entries: u64,
    files: u64,
    bytes: u64,
    malformed: u64,
}

/// A tiny ordered JSON value for the printed figures (serde_json's map here sorts keys).
enum J {
    Null,
    U(u64),
    I(i64),
    F(f64),
    S(String),
    A(Vec<J>),
    O(Vec<(&'static str, J)>),
}

impl J {
    fn write(&self, out: &mut String, pretty: bool, depth: usize) {
        let nl = |out: &mut String, d: usize| {
            if pretty {
                out.push('\n');
                for _ in 0..d {
                    out.push_str("  ");
                }
            }
        };
        match self {
            J::Null => out.push_str("null"),
            J::U(n) => {
                let _ = write!(out, "{n}");
            }
            J::I(n) => {
                let _ = write!(out, "{n}");
            }
            J::F(f) => out.push_str(&serde_json::to_string(f).expect("finite float")),
            J::S(s) => push_json_str(out, s),
            J::A(items) if items.is_empty() => out.push_str("[]"),
            J::A(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    nl(out, depth + 1);
                    v.write(out, pretty, depth + 1);
                }
                nl(out, depth);
                out.push(']');
            }
            J::O(fields) if fields.is_empty() => out.push_str("{}"),
            J::O(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    nl(out, depth + 1);
                    push_json_str(out, k);
                    out.push_str(if pretty { ": " } else { ":" });
                    v.write(out, pretty, depth + 1);
                }
                nl(out, depth);
                out.push('}');
            }
        }
    }
}

fn opt_str(s: &Option<String>) -> J {
    s.as_ref().map_or(J::Null, |s| J::S(s.clone()))
}

// ---------------------------------------------------------------------------------------------
// Formatting helpers.

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn date_of_day(day: i64) -> String {
    let (y, m, d) = keel::clock::civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `2026-11-02T08:15:00.000Z`; with `sep = '-'` the archive stamp `2026-11-02T08-15-00.000Z`.
fn push_iso(out: &mut String, ms: i64, sep: char) {
    let (y, m, d) = keel::clock::civil_from_days(ms.div_euclid(DAY_MS));
    let t = ms.rem_euclid(DAY_MS);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}{sep}{:02}{sep}{:02}.{:03}Z",
        t / 3_600_000,
        t / 60_000 % 60,
        t / 1000 % 60,
        t % 1000
    );
}

fn gen_text(rng: &mut Rng, out: &mut String, min: u64, max: u64) {
    let target = rng.range(min, max) as usize;
    let start = out.len();
    let mut capital = true;
    while out.len() - start < target {
        if out.len() > start {
            out.push(' ');
        }
        let w = if rng.chance(0.02) {
            ODD[rng.below(ODD.len() as u64) as usize]
        } else {
            WORDS[rng.below(WORDS.len() as u64) as usize]
        };
        if capital {
            let mut cs = w.chars();
            if let Some(c) = cs.next() {
                out.extend(c.to_uppercase());
                out.push_str(cs.as_str());
            }
        } else {
            out.push_str(w);
        }
        capital = false;
        if rng.chance(0.08) {
            out.push(if rng.chance(0.8) { '.' } else { '?' });
            capital = true;
        } else if rng.chance(0.04) {
            out.push(',');
        }
    }
    out.push('.');
}

// ---------------------------------------------------------------------------------------------
// Writing.

struct Transcript {
    w: BufWriter<File>,
    bytes: u64,
    /// The `id` of the last line with one (the next line's `parentId`).
    parent: Option<String>,
}

impl Transcript {
    fn create(path: &Path) -> io::Result<Self> {
        Ok(Self {
            w: BufWriter::with_capacity(1 << 16, File::create(path)?),
            bytes: 0,
            parent: None,
        })
    }
    fn line(&mut self, line: &str) -> io::Result<()> {
        self.w.write_all(line.as_bytes())?;
        self.w.write_all(b"\n")?;
        self.bytes += line.len() as u64 + 1;
        Ok(())
    }
}

/// Where the conversation stands: who speaks next.
struct Conv {
    user_next: bool,
    pending_tool_calls: Vec<String>,
    /// Make the next assistant message a failed call (so even a small run has one).
    force_error: bool,
}

impl Conv {
    fn new(force_error: bool) -> Self {
        Self {
            user_next: true,
            pending_tool_calls: Vec::new(),
            force_error,
        }
    }
}

/// What one transcript file holds.
struct FileSpec<'a> {
    path: PathBuf,
    session_id: &'a str,
    model: usize,
    /// Message times (`message.timestamp`, ms), one per message line.
    times: &'a [i64],
    /// Malformed lines: (index of the message line they come before, kind).
    malformed: Vec<(usize, usize)>,
    /// A `custom` line before this message line, besides the random ones.
    custom_at: Option<usize>,
}

struct Gen {
    rng: Rng,
    now: i64,
    fig: Figures,
    line: String,
    scratch: String,
}

impl Gen {
    fn id8(&mut self) -> String {
        let mut s = String::with_capacity(8);
        self.rng.hex8(&mut s);
        s
    }

    /// Starts a line `{"type":T,"id":..,"parentId":..,"timestamp":ISO` (no closing brace).
    fn begin_line(&mut self, t: &mut Transcript, ty: &str, ms: i64) {
        let id = self.id8();
        self.line.clear();
        let _ = write!(
            self.line,
            "{{\"type\":\"{ty}\",\"id\":\"{id}\",\"parentId\":"
        );
        match &t.parent {
            Some(p) => {
                let _ = write!(self.line, "\"{p}\"");
            }
            None => self.line.push_str("null"),
        }
        self.line.push_str(",\"timestamp\":\"");
        push_iso(&mut self.line, ms, ':');
        self.line.push('"');
        t.parent = Some(id);
    }

    fn write_malformed(&mut self, t: &mut Transcript, kind: usize, ms: i64) -> io::Result<()> {
        self.fig.malformed += 1;
        match kind {
            0 => {
                // A message line cut short (a strict prefix of an object is never valid JSON).
                let saved_parent = t.parent.clone();
                self.begin_line(t, "message", ms);
                t.parent = saved_parent;
                self.line.push_str(
                    ",\"message\":{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":",
                );
                self.scratch.clear();
                gen_text(&mut self.rng, &mut self.scratch, 80, 200);
                push_json_str(&mut self.line, &self.scratch);
                self.line.push_str("}],\"timestamp\":");
                let _ = write!(self.line, "{ms}}}}}");
                let mut cut = self.line.len() * 3 / 5;
                while !self.line.is_char_boundary(cut) {
                    cut -= 1;
                }
                self.line.truncate(cut);
                t.line(&self.line)
            }
            1 => t.line("not json at all"),
            _ => t.line("{\"type\":\"message\",\"message\":\"oops\"}"),
        }
    }

    /// Writes one transcript file and counts what it holds into `sess`.
    fn write_transcript(
        &mut self,
        spec: &FileSpec,
        conv: &mut Conv,
        sess: &mut Totals,
    ) -> io::Result<()> {
        let mut t = Transcript::create(&spec.path)?;
        let model = &MODELS[spec.model];
        let first = spec.times.first().copied().unwrap_or(self.now);
        let header_ms = first.saturating_sub(self.rng.range(0, 3000) as i64);
        self.line.clear();
        let _ = write!(
            self.line,
            "{{\"type\":\"session\",\"version\":3,\"id\":\"{}\",\"timestamp\":\"",
            spec.session_id
        );
        push_iso(&mut self.line, header_ms, ':');
        self.line.push_str("\",\"cwd\":\"/srv/agent\"}");
        t.line(&self.line)?;
        // The model in use, as OpenClaw notes it at the start of a transcript.
        self.begin_line(&mut t, "model_change", header_ms);
        let _ = write!(
            self.line,
            ",\"provider\":\"{}\",\"modelId\":\"{}\"}}",
            model.provider, model.id
        );
        t.line(&self.line)?;

        for (k, &msg_ms) in spec.times.iter().enumerate() {
            for &(at, kind) in &spec.malformed {
                if at == k {
                    self.write_malformed(&mut t, kind, msg_ms)?;
                }
            }
            if (k > 0 && self.rng.chance(1.0 / 50.0)) || spec.custom_at == Some(k) {
                self.begin_line(&mut t, "custom", msg_ms);
                self.line.push_str(",\"customType\":\"x\",\"data\":{}}");
                t.line(&self.line)?;
            }
            if k > 0 && self.rng.chance(1.0 / 80.0) {
                self.begin_line(&mut t, "model_change", msg_ms);
                let _ = write!(
                    self.line,
                    ",\"provider\":\"{}\",\"modelId\":\"{}\"}}",
                    model.provider, model.id
                );
                t.line(&self.line)?;
            }
            self.write_message(&mut t, spec.model, msg_ms, conv, sess)?;
        }
        // Malformed lines placed after the last message.
        for &(at, kind) in &spec.malformed {
            if at >= spec.times.len() {
                let ms = spec.times.last().copied().unwrap_or(header_ms);
                self.write_malformed(&mut t, kind, ms)?;
            }
        }
        t.w.flush()?;
        self.fig.files += 1;
        self.fig.bytes += t.bytes;
        Ok(())
    }

    fn write_message(
        &mut self,
        t: &mut Transcript,
        session_model: usize,
        msg_ms: i64,
        conv: &mut Conv,
        sess: &mut Totals,
    ) -> io::Result<()> {
        let line_ms = (msg_ms + self.rng.range(0, 2000) as i64).min(self.now);
        let with_ts = self.rng.chance(0.95);
        // The message's time by the rules: `message.timestamp` if present, else the line's.
        let time = if with_ts { msg_ms } else { line_ms };
        self.fig.min_time = Some(self.fig.min_time.map_or(time, |m| m.min(time)));
        self.fig.max_time = Some(self.fig.max_time.map_or(time, |m| m.max(time)));
        self.fig.messages.total += 1;

        self.begin_line(t, "message", line_ms);
        self.line.push_str(",\"message\":{");
        let mut usage = None;
        if let Some(call_id) = conv.pending_tool_calls.pop() {
            self.fig.messages.tool_results += 1;
            let _ = write!(
                self.line,
                "\"role\":\"toolResult\",\"toolCallId\":\"{call_id}\",\"toolName\":\"exec\",\
                 \"content\":[{{\"type\":\"text\",\"text\":"
            );
            self.scratch.clear();
            gen_text(&mut self.rng, &mut self.scratch, 50, 600);
            push_json_str(&mut self.line, &self.scratch);
            self.line.push_str("}],\"isError\":false");
            if conv.pending_tool_calls.is_empty() {
                conv.user_next = false;
            }
        } else if conv.user_next {
            self.fig.messages.user += 1;
            self.line
                .push_str("\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":");
            self.scratch.clear();
            gen_text(&mut self.rng, &mut self.scratch, 50, 600);
            push_json_str(&mut self.line, &self.scratch);
            self.line.push_str("}]");
            // Mostly alternating; now and then the user sends two in a row.
            conv.user_next = self.rng.chance(0.05);
        } else {
            self.fig.messages.assistant += 1;
            usage = Some(self.write_assistant(session_model, conv));
        }
        if with_ts {
            let _ = write!(self.line, ",\"timestamp\":{msg_ms}");
        }
        self.line.push_str("}}");
        t.line(&self.line)?;

        if let Some((model, u)) = usage {
            self.fig.totals.add(&u);
            self.fig
                .daily
                .entry(time.div_euclid(DAY_MS))
                .or_default()
                .add(&u);
            let m = &MODELS[model];
            self.fig
                .by_model
                .entry((m.provider, m.id))
                .or_default()
                .add(&u);
            sess.add(&u);
        }
        Ok(())
    }

    /// Writes the fields of an assistant message (after `"message":{`) and returns its model
    /// and usage as the rules read them.
    fn write_assistant(&mut self, session_model: usize, conv: &mut Conv) -> (usize, Usage) {
        let rng = &mut self.rng;
        let error = rng.chance(0.01) || conv.force_error;
        conv.force_error = false;
        let tool_calls = if !error && rng.chance(1.0 / 6.0) {
            rng.range(1, 2)
        } else {
            0
        };
        // Which cost rule the message exercises: ~80% recorded, ~15% estimated (a priced
        // model without `usage.cost`), ~5% the unpriced local model without cost (missing).
        let r = rng.unit();
        let (model, recorded) = if error {
            (session_model, false)
        } else if r < 0.80 {
            (session_model, true)
        } else if r < 0.95 {
            let m = if MODELS[session_model].price.is_some() {
                session_model
            } else {
                rng.below(4) as usize
            };
            (m, false)
        } else {
            (LOCAL, false)
        };
        let m = &MODELS[model];

        self.line.push_str("\"role\":\"assistant\",\"content\":[");
        if !error {
            if rng.chance(0.3) {
                self.line.push_str("{\"type\":\"thinking\",\"thinking\":");
                self.scratch.clear();
                gen_text(rng, &mut self.scratch, 50, 400);
                push_json_str(&mut self.line, &self.scratch);
                self.line.push_str("},");
            }
            self.line.push_str("{\"type\":\"text\",\"text\":");
            self.scratch.clear();
            gen_text(rng, &mut self.scratch, 50, 600);
            push_json_str(&mut self.line, &self.scratch);
            self.line.push('}');
            for _ in 0..tool_calls {
                let mut id = String::from("call_");
                rng.hex8(&mut id);
                rng.hex8(&mut id);
                let _ = write!(
                    self.line,
                    ",{{\"type\":\"toolCall\",\"id\":\"{id}\",\"name\":\"exec\",\
                     \"arguments\":{{\"command\":\"ls -la /srv/agent\"}}}}"
                );
                conv.pending_tool_calls.insert(0, id);
            }
        }
        self.fig.messages.tool_calls += tool_calls;
        let _ = write!(
            self.line,
            "],\"api\":\"{}\",\"provider\":\"{}\",\"model\":\"{}\",\"usage\":{{",
            m.api, m.provider, m.id
        );

        // Tokens. A failed call records zero usage (as OpenClaw does).
        let tokens = if error {
            [0; 4]
        } else {
            [
                rng.range(100, 20_000),
                rng.range(20, 4_000),
                if rng.chance(0.3) {
                    0
                } else {
                    rng.range(1, 50_000)
                },
                if rng.chance(0.5) {
                    0
                } else {
                    rng.range(1, 5_000)
                },
            ]
        };
        let _ = write!(
            self.line,
            "\"input\":{},\"output\":{},\"cacheRead\":{}",
            tokens[0], tokens[1], tokens[2]
        );
        // A zero `cacheWrite` is sometimes left out (missing = 0).
        if tokens[3] != 0 || rng.chance(0.7) {
            let _ = write!(self.line, ",\"cacheWrite\":{}", tokens[3]);
        }
        let sum: u64 = tokens.iter().sum();
        let total_tokens = if error || rng.chance(0.9) {
            // Usually the sum of the four; sometimes a provider's own figure (input + output
            // + cacheRead), which is what counts when present.
            let recorded_total = if rng.chance(0.9) {
                sum
            } else {
                tokens[0] + tokens[1] + tokens[2]
            };
            let _ = write!(self.line, ",\"totalTokens\":{recorded_total}");
            recorded_total
        } else {
            sum
        };

        let parts_for = |price: [f64; 4]| -> ([f64; 4], f64) {
            let mut parts = [0.0; 4];
            for k in 0..4 {
                parts[k] = tokens[k] as f64 * price[k] / 1_000_000.0;
            }
            (parts, parts[0] + parts[1] + parts[2] + parts[3])
        };
        let cost = if recorded {
            let (parts, total) = match m.price {
                Some(p) => parts_for(p),
                // A local model records a zero cost: a known $0, not a missing price.
                None => ([0.0; 4], 0.0),
            };
            let _ = write!(
                self.line,
                ",\"cost\":{{\"input\":{},\"output\":{},\"cacheRead\":{}",
                parts[0], parts[1], parts[2]
            );
            // A zero part is sometimes left out (missing = 0).
            if parts[3] != 0.0 || rng.chance(0.5) {
                let _ = write!(self.line, ",\"cacheWrite\":{}", parts[3]);
            }
            let _ = write!(self.line, ",\"total\":{total}}}");
            Some((parts, total))
        } else {
            m.price.map(parts_for)
        };
        let missing = cost.is_none() && total_tokens > 0;
        self.line.push('}');

        let stop = if error {
            "error"
        } else if tool_calls > 0 {
            "toolUse"
        } else {
            "stop"
        };
        let _ = write!(self.line, ",\"stopReason\":\"{stop}\"");
        if error {
            self.fig.messages.errors += 1;
            self.line.push_str(
                ",\"errorMessage\":\"429 rate_limit_error: \\\"Too many requests\\\", retry later\"",
            );
        }
        conv.user_next = tool_calls == 0;
        (
            model,
            Usage {
                tokens,
                total_tokens,
                cost,
                missing,
            },
        )
    }

    /// Message times for a session: `n` messages, with a longer pause after message
    /// `pause_after` (the reset), all within `[now - days, now]`.
    fn plan_times(&mut self, n: usize, pause_after: Option<usize>, window_start: i64) -> Vec<i64> {
        let rng = &mut self.rng;
        let mut gaps: Vec<i64> = (1..n)
            .map(|k| {
                let r = rng.unit();
                let g = if r < 0.6 {
                    rng.range(1_000, 90_000)
                } else if r < 0.9 {
                    rng.range(120_000, 1_800_000)
                } else {
                    rng.range(1_800_000, 8 * 3_600_000)
                } as i64;
                if pause_after == Some(k - 1) {
                    g + rng.range(3_600_000, 48 * 3_600_000) as i64
                } else {
                    g
                }
            })
            .collect();
        let window = self.now - window_start;
        let mut span: i64 = gaps.iter().sum();
        let room = window - window / 10;
        if span > room {
            let f = room as f64 / span as f64;
            for g in &mut gaps {
                *g = (*g as f64 * f) as i64;
            }
            span = gaps.iter().sum();
        }
        let start = window_start + (rng.unit() * (window - span) as f64) as i64;
        let mut t = start;
        let mut times = Vec::with_capacity(n);
        times.push(t);
        for g in gaps {
            t += g;
            times.push(t);
        }
        times
    }
}

// ---------------------------------------------------------------------------------------------

/// Writes the state; returns the rendered figures and (entries, files, bytes).
fn run(args: &Args) -> io::Result<(String, [u64; 3])> {
    if args.out.exists() && fs::read_dir(&args.out)?.next().is_some() {
        return Err(io::Error::other(format!(
            "{} is not empty: give a new or empty directory",
            args.out.display()
        )));
    }
    let mut g = Gen {
        rng: Rng(args.seed),
        now: args.now,
        fig: Figures::default(),
        line: String::with_capacity(8192),
        scratch: String::with_capacity(1024),
    };
    let window_start = args.now - args.days as i64 * DAY_MS;
    let s = args.sessions as usize;
    let m = args.messages as usize;

    for a in 0..args.agents {
        let agent = if a == 0 {
            "main".to_string()
        } else {
            format!("agent-{}", a + 1)
        };
        let dir = args.out.join("agents").join(&agent).join("sessions");
        fs::create_dir_all(&dir)?;
        let mut store = Map::new();
        let mut peers = HashSet::new();
        let mut agent_totals = Totals::default();

        for i in 0..s {
            let session_id = g.rng.uuid();
            // Every agent has a reset archive on its first session and a deleted last one (if it
            // has two), so even a small run has both; the others have them now and then.
            let deleted = (i == s - 1 && s > 1) || g.rng.chance(0.03);
            let reset = i == 0 || g.rng.chance(0.05);
            let model = {
                let r = g.rng.unit();
                if r < 0.35 {
                    0
                } else if r < 0.55 {
                    1
                } else if r < 0.75 {
                    2
                } else if r < 0.90 {
                    3
                } else {
                    LOCAL
                }
            };
            let n_archive = if reset {
                g.rng.range((m as u64 / 4).max(1), (m as u64 / 2).max(1)) as usize
            } else {
                0
            };
            let times = g.plan_times(n_archive + m, n_archive.checked_sub(1), window_start);
            let (archive_times, live_times) = times.split_at(n_archive);
            // The malformed lines of this agent go into its first sessions' transcripts.
            let malformed: Vec<(usize, usize)> = (0..MALFORMED_KINDS)
                .filter(|kind| kind % s == i)
                .map(|kind| (g.rng.range(0, m as u64) as usize, kind))
                .collect();

            let mut sess = Totals::default();
            if n_archive > 0 {
                let last = archive_times[n_archive - 1];
                let stamp_ms = last + (live_times[0] - last) / 2;
                let mut name = format!("{session_id}.jsonl.reset.");
                push_iso(&mut name, stamp_ms, '-');
                let spec = FileSpec {
                    path: dir.join(name),
                    session_id: &session_id,
                    model,
                    times: archive_times,
                    malformed: Vec::new(),
                    custom_at: None,
                };
                g.write_transcript(&spec, &mut Conv::new(false), &mut sess)?;
            }
            let last_ms = *live_times.last().expect("at least one message");
            let name = if deleted {
                let stamp_ms = (last_ms + g.rng.range(60_000, 6 * 3_600_000) as i64).min(args.now);
                let mut name = format!("{session_id}.jsonl.deleted.");
                push_iso(&mut name, stamp_ms, '-');
                name
            } else {
                format!("{session_id}.jsonl")
            };
            let spec = FileSpec {
                path: dir.join(name),
                session_id: &session_id,
                model,
                times: live_times,
                malformed,
                custom_at: (i == 0).then_some(m / 2),
            };
            // Each agent's second session (its first if it has one) starts with a failed call.
            let mut conv = Conv::new(i == 1.min(s - 1));
            g.write_transcript(&spec, &mut conv, &mut sess)?;

            let channel_name = CHANNELS[i % CHANNELS.len()];
            let (key, label, channel) = if deleted {
                (None, None, "unknown".to_string())
            } else {
                let mut peer;
                loop {
                    peer = g.rng.range(100_000_000, 999_999_999);
                    if peers.insert(peer) {
                        break;
                    }
                }
                let key = format!("agent:{agent}:{channel_name}:direct:{peer}");
                let label = (i % 3 == 0).then(|| format!("Project {} — ops", i / 3 + 1));
                let mut e = Map::new();
                e.insert("sessionId".into(), json!(session_id));
                e.insert("updatedAt".into(), json!(last_ms));
                if let Some(l) = &label {
                    e.insert("label".into(), json!(l));
                }
                if i % 2 == 1 {
                    e.insert("displayName".into(), json!(format!("User {peer}")));
                }
                // Now and then no `channel`: `origin.provider` names it.
                if i % 10 != 4 {
                    e.insert("channel".into(), json!(channel_name));
                }
                e.insert("chatType".into(), json!("direct"));
                e.insert(
                    "origin".into(),
                    json!({"provider": channel_name, "surface": channel_name}),
                );
                e.insert("model".into(), json!(MODELS[model].id));
                e.insert("modelProvider".into(), json!(MODELS[model].provider));
                e.insert("inputTokens".into(), json!(sess.tokens[0]));
                e.insert("outputTokens".into(), json!(sess.tokens[1]));
                e.insert("totalTokens".into(), json!(sess.total_tokens));
                e.insert("skillsSnapshot".into(), json!({"prompt": "x"}));
                store.insert(key.clone(), Value::Object(e));
                g.fig.entries += 1;
                (Some(key), label, channel_name.to_string())
            };
            agent_totals.merge(&sess);
            if sess.n > 0 {
                g.fig
                    .by_channel
                    .entry(channel.clone())
                    .or_default()
                    .merge(&sess);
            }
            g.fig.by_session.push(SessionRow {
                agent: agent.clone(),
                session_id,
                key,
                label,
                channel,
                totals: sess,
            });
        }
        let mut text = serde_json::to_string_pretty(&Value::Object(store))?;
        text.push('\n');
        fs::write(dir.join("sessions.json"), text)?;
        if agent_totals.n > 0 {
            g.fig.by_agent.insert(agent, agent_totals);
        }
    }
    write_config(&args.out)?;
    let counts = [g.fig.entries, g.fig.files, g.fig.bytes];
    Ok((render(args, &g.fig), counts))
}

fn write_config(out: &Path) -> io::Result<()> {
    let mut providers = Map::new();
    for m in &MODELS {
        let p = providers.entry(m.provider).or_insert_with(|| {
            let (base, api) = match m.provider {
                "anthropic" => ("https://api.anthropic.com", "anthropic-messages"),
                "openai" => ("https://api.openai.com/v1", "openai-responses"),
                _ => ("http://127.0.0.1:11434/v1", "openai-completions"),
            };
            json!({"baseUrl": base, "api": api, "models": []})
        });
        let mut model = json!({"id": m.id});
        if let Some([i, o, r, w]) = m.price {
            model["cost"] = json!({"input": i, "output": o, "cacheRead": r, "cacheWrite": w});
        }
        p["models"]
            .as_array_mut()
            .expect("models is an array")
            .push(model);
    }
    let config = json!({"models": {"providers": providers}});
    let mut text = serde_json::to_string_pretty(&config)?;
    text.push('\n');
    fs::write(out.join("keel.json"), text)
}

fn render(args: &Args, f: &Figures) -> String {
    let date = |t: Option<i64>| t.map_or(J::Null, |t| J::S(date_of_day(t.div_euclid(DAY_MS))));
    let msgs = &f.messages;
    let mut top = vec![
        ("seed", J::U(args.seed)),
        ("now", J::I(args.now)),
        ("startDate", date(f.min_time)),
        ("endDate", date(f.max_time)),
        ("agents", J::U(args.agents)),
        ("sessions", J::U(f.entries)),
        ("transcriptFiles", J::U(f.files)),
        ("bytes", J::U(f.bytes)),
        ("malformedLines", J::U(f.malformed)),
        (
            "messages",
            J::O(vec![
                ("total", J::U(msgs.total)),
                ("user", J::U(msgs.user)),
                ("assistant", J::U(msgs.assistant)),
                ("toolCalls", J::U(msgs.tool_calls)),
                ("toolResults", J::U(msgs.tool_results)),
                ("errors", J::U(msgs.errors)),
            ]),
        ),
        ("totals", f.totals.object(Vec::new())),
        (
            "daily",
            J::A(
                f.daily
                    .iter()
                    .map(|(day, t)| t.object(vec![("date", J::S(date_of_day(*day)))]))
                    .collect(),
            ),
        ),
        (
            "byModel",
            J::A(
                f.by_model
                    .iter()
                    .map(|((p, m), t)| {
                        t.object(vec![
                            ("provider", J::S(p.to_string())),
                            ("model", J::S(m.to_string())),
                        ])
                    })
                    .collect(),
            ),
        ),
        (
            "byAgent",
            J::A(
                f.by_agent
                    .iter()
                    .map(|(a, t)| t.object(vec![("agentId", J::S(a.clone()))]))
                    .collect(),
            ),
        ),
        (
            "byChannel",
            J::A(
                f.by_channel
                    .iter()
                    .map(|(c, t)| t.object(vec![("channel", J::S(c.clone()))]))
                    .collect(),
            ),
        ),
    ];
    if args.agents * args.sessions <= BY_SESSION_LIMIT {
        let mut rows: Vec<&SessionRow> = f.by_session.iter().filter(|r| r.totals.n > 0).collect();
        rows.sort_by(|a, b| (&a.agent, &a.session_id).cmp(&(&b.agent, &b.session_id)));
        top.push((
            "bySession",
            J::A(
                rows.into_iter()
                    .map(|r| {
                        r.totals.object(vec![
                            ("agentId", J::S(r.agent.clone())),
                            ("sessionId", J::S(r.session_id.clone())),
                            ("key", opt_str(&r.key)),
                            ("label", opt_str(&r.label)),
                            ("channel", J::S(r.channel.clone())),
                        ])
                    })
                    .collect(),
            ),
        ));
    }
    let mut out = String::new();
    J::O(top).write(&mut out, args.pretty, 0);
    out
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("keel-gen-state: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let result = run(&args).and_then(|r| {
        if args.sqlite {
            let c = keel::sessions::sqlite::fixture::convert_legacy(&args.out)?;
            eprintln!(
                "keel-gen-state: converted to SQLite: {} agents, {} sessions, {} events, {} archives",
                c.agents, c.sessions, c.events, c.archives
            );
        }
        Ok(r)
    });
    match result {
        Ok((figures, [entries, files, bytes])) => {
            let mut stdout = io::stdout().lock();
            if writeln!(stdout, "{figures}")
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            eprintln!(
                "keel-gen-state: {} agents, {} sessions in sessions.json ({} × {} generated), \
                 {} transcript files, {:.1} MB in {:.2} s → {}",
                args.agents,
                entries,
                args.sessions,
                args.messages,
                files,
                bytes as f64 / 1e6,
                started.elapsed().as_secs_f64(),
                args.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keel-gen-state: {e}");
            ExitCode::FAILURE
        }
    }
}
