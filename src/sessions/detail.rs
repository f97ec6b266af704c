//! The Usage page's session detail: `sessions.usage.timeseries` (a session's usage over time,
//! from the usage index) and `sessions.usage.logs` (its last messages, read from its
//! transcripts), in OpenClaw's shapes.

use super::index::Index;
use super::query::{Ctx, SessionRef, Summary};
use super::store::StoresView;
use super::transcript::Parsed;
use crate::config::Prices;
use crate::error::RpcError;
use crate::payload::Payload;
use serde::Serialize;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Points a timeseries has at most (OpenClaw's `maxPoints`): more are summed in runs.
pub const MAX_POINTS: usize = 200;
/// Messages `sessions.usage.logs` returns at most, and by default.
pub const MAX_LOGS: usize = 1000;
pub const DEFAULT_LOGS: usize = 200;
/// A log entry's text is cut at this many characters.
const MAX_LOG_CHARS: usize = 2000;
/// Longer transcript lines are skipped (they are not messages anyone reads in a list).
const MAX_LINE: usize = 16 << 20;

/// The agent and session id the page's reference names: an entry's key (in the agent's store
/// if the agent is known), else `agent:<agentId>:<sessionId>` of a session with transcripts
/// and no entry (deleted, or replaced by a reset), else the session id given with the key.
pub fn resolve(index: &Index, stores: &StoresView, r: &SessionRef) -> Option<(String, String)> {
    let from_key = r
        .key
        .strip_prefix("agent:")
        .and_then(|rest| rest.split_once(':'));
    let agent = r.agent.as_deref().or(from_key.map(|(a, _)| a));
    let entry = store_entry(stores, agent, &r.key);
    if entry.is_some() {
        return entry;
    }
    // No entry: the key's own session id, or the one the page names with it.
    let (a, sid) = match (from_key, agent, r.session_id.as_deref()) {
        (Some((a, sid)), _, _)
            if agent.is_none_or(|x| x == a) && !files(index, a, sid).is_empty() =>
        {
            (a, sid)
        }
        (_, Some(a), Some(sid)) => (a, sid),
        _ => return None,
    };
    (!files(index, a, sid).is_empty()).then(|| (a.to_string(), sid.to_string()))
}

/// The agent and session id of the store entry with `key` (in `agent`'s store if given).
pub fn store_entry(
    stores: &StoresView,
    agent: Option<&str>,
    key: &str,
) -> Option<(String, String)> {
    stores
        .snapshots
        .iter()
        .filter(|s| agent.is_none_or(|a| a == s.agent_id))
        .find_map(|s| {
            s.entries
                .iter()
                .find(|e| e.key == key)
                .map(|e| (s.agent_id.clone(), e.session_id.clone()))
        })
}

/// The session's transcripts (its live one and its archives), oldest records first: paths
/// relative to the state directory.
pub fn files(index: &Index, agent: &str, session_id: &str) -> Vec<PathBuf> {
    let mut v: Vec<(i64, &PathBuf)> = index
        .files
        .iter()
        .filter(|(_, f)| *f.session_id == *session_id && index.tables.str(f.agent) == agent)
        .map(|(rel, f)| (f.span.0, rel))
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p.clone()).collect()
}

fn unknown(r: &SessionRef) -> RpcError {
    RpcError::invalid(format!("no session with key {:?}", r.key))
}

#[derive(Serialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct Point {
    timestamp: i64,
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
    total_tokens: u64,
    cost: f64,
    cumulative_tokens: u64,
    cumulative_cost: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Timeseries<'a> {
    session_id: &'a str,
    points: Vec<Point>,
}

fn round_cost(v: f64) -> f64 {
    if v.is_finite() && v.abs() < 1e12 {
        (v * 1e10).round() / 1e10
    } else {
        v
    }
}

/// `sessions.usage.timeseries`: one point per message with usage (and a time), oldest first;
/// beyond [`MAX_POINTS`], runs of consecutive points are summed into one (at the run's last
/// time), as OpenClaw does. Costs are recorded or estimated from prices, else 0.
pub fn timeseries(cx: &Ctx<'_>, r: &SessionRef) -> Result<(Payload, Summary), RpcError> {
    let (agent, sid) = resolve(cx.index, cx.stores, r).ok_or_else(|| unknown(r))?;
    let rels = files(cx.index, &agent, &sid);
    if rels.is_empty() {
        return Err(RpcError::invalid(format!(
            "no transcript for session {:?}",
            r.key
        )));
    }
    let mut points = Vec::new();
    for rel in &rels {
        let f = &cx.index.files[rel];
        for u in f.usage.iter().filter(|u| u.ts != 0) {
            let (p, m) = cx.index.tables.model_names(u.model);
            let cost = if u.has_recorded_cost() {
                u.cost[0]
            } else {
                estimate(cx.prices, p, m, &u.tokens).unwrap_or(0.0)
            };
            points.push(Point {
                timestamp: u.ts,
                input: u.tokens[0],
                output: u.tokens[1],
                cache_read: u.tokens[2],
                cache_write: u.tokens[3],
                total_tokens: u.tokens[4],
                cost,
                ..Point::default()
            });
        }
    }
    points.sort_by_key(|p| p.timestamp);
    let points = downsample(points, MAX_POINTS);
    Ok((
        to_payload(&Timeseries {
            session_id: &sid,
            points,
        })?,
        Summary {
            sessions: Some(1),
            rows: None,
        },
    ))
}

/// Sums runs of `ceil(n / max)` points into one, then adds the running totals.
fn downsample(points: Vec<Point>, max: usize) -> Vec<Point> {
    let mut out: Vec<Point> = if points.len() > max {
        let step = points.len().div_ceil(max);
        points
            .chunks(step)
            .map(|run| {
                let mut b = Point::default();
                for p in run {
                    b.timestamp = p.timestamp;
                    b.input += p.input;
                    b.output += p.output;
                    b.cache_read += p.cache_read;
                    b.cache_write += p.cache_write;
                    b.total_tokens += p.total_tokens;
                    b.cost += p.cost;
                }
                b
            })
            .collect()
    } else {
        points
    };
    let (mut tokens, mut cost) = (0u64, 0f64);
    for p in &mut out {
        tokens += p.total_tokens;
        cost += p.cost;
        p.cumulative_tokens = tokens;
        p.cumulative_cost = round_cost(cost);
        p.cost = round_cost(p.cost);
    }
    out
}

fn estimate(prices: &Prices, provider: &str, model: &str, tokens: &[u64; 5]) -> Option<f64> {
    let p = prices.get(&(provider.to_string(), model.to_string()))?;
    let part = |t: u64, per_m: f64| t as f64 * per_m / 1_000_000.0;
    Some(
        part(tokens[0], p.input)
            + part(tokens[1], p.output)
            + part(tokens[2], p.cache_read)
            + part(tokens[3], p.cache_write),
    )
}

/// One message of `sessions.usage.logs`.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    pub timestamp: i64,
    pub role: &'static str,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

/// The text the page shows for a message: its text blocks, `[Tool: name]` for tool calls and
/// `[Tool Result]` for results (the page counts tools from these markers), cut at
/// [`MAX_LOG_CHARS`]. `None` for a role the page does not list, or nothing to show.
fn log_text(msg: &serde_json::Map<String, Value>) -> Option<(&'static str, String)> {
    let role = match msg.get("role").and_then(Value::as_str)? {
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        "toolResult" => "toolResult",
        _ => return None,
    };
    let text = |k: &str| {
        msg.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let mut parts: Vec<String> = Vec::new();
    if role == "tool" || role == "toolResult" {
        let name = text("toolName")
            .or_else(|| text("tool_name"))
            .or_else(|| text("name"))
            .or_else(|| text("tool"))
            .unwrap_or("tool");
        parts.push(format!("[Tool: {name}]"));
        parts.push("[Tool Result]".into());
    }
    match msg.get("content") {
        Some(Value::String(s)) => parts.push(s.clone()),
        Some(Value::Array(blocks)) => {
            let lines: Vec<String> = blocks
                .iter()
                .filter_map(|b| match b {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(o) => {
                        let kind = o
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_ascii_lowercase();
                        match kind.as_str() {
                            "text" => o.get("text").and_then(Value::as_str).map(String::from),
                            "toolcall" | "tool_call" | "tooluse" | "tool_use" => Some(format!(
                                "[Tool: {}]",
                                o.get("name").and_then(Value::as_str).unwrap_or("unknown")
                            )),
                            "tool_result" => Some("[Tool Result]".into()),
                            _ => None,
                        }
                    }
                    _ => None,
                })
                .filter(|s| !s.is_empty())
                .collect();
            if !lines.is_empty() {
                parts.push(lines.join("\n"));
            }
        }
        _ => {}
    }
    for k in ["tool_calls", "toolCalls", "function_call", "functionCall"] {
        let calls = match msg.get(k) {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(v @ Value::Object(_)) => vec![v],
            _ => continue,
        };
        for c in calls {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .or_else(|| c.get("function")?.get("name")?.as_str())
                .unwrap_or("unknown");
            parts.push(format!("[Tool: {name}]"));
        }
        break;
    }
    let joined = parts.join("\n");
    let content = joined.trim();
    if content.is_empty() {
        return None;
    }
    let content = match content.char_indices().nth(MAX_LOG_CHARS) {
        Some((cut, _)) => format!("{}…", &content[..cut]),
        None => content.to_string(),
    };
    Some((role, content))
}

/// Reads one transcript line into a log entry, if it is a message the page lists.
fn log_entry(line: &[u8], prices: &Prices) -> Option<LogEntry> {
    let v: Value = serde_json::from_slice(line).ok()?;
    if v.get("type").and_then(Value::as_str) != Some("message") {
        return None;
    }
    let (role, content) = log_text(v.get("message")?.as_object()?)?;
    // Time, tokens and cost by the counting rules of the usage index (docs/USAGE.md).
    let mut p = Parsed::default();
    p.line(line);
    let timestamp = p.msgs.first().map_or(0, |m| m.ts);
    let usage = p.usage.first().filter(|_| role == "assistant");
    let cost = usage.and_then(|u| {
        if u.has_recorded_cost() {
            Some(u.cost[0])
        } else {
            let (pr, m) = &p.names.models[u.model as usize];
            estimate(prices, pr, m, &u.tokens)
        }
    });
    Some(LogEntry {
        timestamp,
        role,
        content,
        tokens: usage.map(|u| u.tokens[4]),
        cost: cost.map(round_cost),
    })
}

/// Calls `each` with every line of `path` up to `MAX_LINE` bytes (longer ones are skipped);
/// stops with `false` as soon as `check` says so.
fn lines(
    path: &Path,
    check: impl FnMut() -> bool,
    each: impl FnMut(&[u8]),
) -> std::io::Result<bool> {
    let r = BufReader::with_capacity(256 << 10, std::fs::File::open(path)?);
    lines_of(r, check, each)
}

/// [`lines`] of a transcript in the usage index: a file, or a source in an agent's SQLite
/// store (read in short statements, then walked in memory).
fn source_lines(
    state_dir: &Path,
    rel: &Path,
    check: impl FnMut() -> bool,
    each: impl FnMut(&[u8]),
) -> std::io::Result<bool> {
    match super::sqlite::Source::parse(rel) {
        Some(src) => {
            let bytes = super::sqlite::jsonl(state_dir, &src, super::sqlite::BUSY_TIMEOUT)?;
            lines_of(std::io::Cursor::new(bytes), check, each)
        }
        None => lines(&state_dir.join(rel), check, each),
    }
}

fn lines_of(
    mut r: impl BufRead,
    mut check: impl FnMut() -> bool,
    mut each: impl FnMut(&[u8]),
) -> std::io::Result<bool> {
    let mut line: Vec<u8> = Vec::new();
    let mut skipping = false;
    let mut n = 0u64;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            // A last line without its newline may still be being written: left out.
            return Ok(true);
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1),
            None => (buf, buf.len()),
        };
        let ends = done > chunk.len();
        if !skipping {
            if line.len() + chunk.len() > MAX_LINE {
                skipping = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        r.consume(done);
        if ends {
            if !skipping {
                each(&line);
            }
            line.clear();
            skipping = false;
            n += 1;
            if n.is_multiple_of(256) && !check() {
                return Ok(false);
            }
        }
    }
}

/// `sessions.usage.logs`: the session's last `limit` messages (by time, oldest first) from
/// `files` (relative to `state_dir`). At most `2 × limit` are held while reading.
pub fn logs(
    state_dir: &Path,
    files: &[PathBuf],
    limit: usize,
    prices: &Prices,
    mut check: impl FnMut() -> bool,
) -> Result<Vec<LogEntry>, Option<std::io::Error>> {
    let mut out: Vec<LogEntry> = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let keep = |out: &mut Vec<LogEntry>, n: usize| {
        out.sort_by_key(|e| e.timestamp);
        let extra = out.len().saturating_sub(n);
        out.drain(..extra);
    };
    for rel in files {
        let read = source_lines(state_dir, rel, &mut check, |line| {
            if let Some(e) = log_entry(line, prices) {
                out.push(e);
                if out.len() > 2 * limit {
                    keep(&mut out, limit);
                }
            }
        });
        match read {
            Ok(true) => {}
            Ok(false) => return Err(None),
            // Gone since the index saw it (rotated, deleted): nothing to show from it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Some(e)),
        }
    }
    keep(&mut out, limit);
    Ok(out)
}

/// `{logs: [...]}`.
pub fn logs_payload(entries: &[LogEntry]) -> Result<Payload, RpcError> {
    #[derive(Serialize)]
    struct Logs<'a> {
        logs: &'a [LogEntry],
    }
    to_payload(&Logs { logs: entries })
}

fn to_payload<T: Serialize>(v: &T) -> Result<Payload, RpcError> {
    serde_json::to_string(v).map(Payload::Raw).map_err(|e| {
        RpcError::new(
            crate::error::Code::Internal,
            format!("cannot serialize the answer: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(line: Value) -> Option<LogEntry> {
        log_entry(line.to_string().as_bytes(), &Prices::default())
    }

    #[test]
    fn log_entries_read_as_openclaw_shows_them() {
        let e = entry(json!({"type": "message", "timestamp": "2026-11-02T08:15:00Z", "message": {
            "role": "assistant", "timestamp": 1000,
            "content": [{"type": "text", "text": "  let me look "}, {"type": "toolCall", "name": "exec"}],
            "usage": {"input": 10, "output": 5, "cost": {"total": 0.25}}}}))
        .unwrap();
        assert_eq!(
            e,
            LogEntry {
                timestamp: 1000,
                role: "assistant",
                content: "let me look \n[Tool: exec]".into(),
                tokens: Some(15),
                cost: Some(0.25),
            }
        );
        let r = entry(json!({"type": "message", "message": {
            "role": "toolResult", "toolName": "exec", "content": "ok", "timestamp": 2000}}))
        .unwrap();
        assert_eq!(r.content, "[Tool: exec]\n[Tool Result]\nok");
        assert_eq!((r.tokens, r.cost), (None, None));
        let u = entry(
            json!({"type": "message", "timestamp": "1970-01-01T00:00:03Z",
            "message": {"role": "user", "content": "x".repeat(2500)}}),
        )
        .unwrap();
        assert_eq!(
            u.timestamp, 3000,
            "the line's time when the message has none"
        );
        assert_eq!(u.content.chars().count(), MAX_LOG_CHARS + 1);
        assert!(u.content.ends_with('…'));
        // Not listed: other roles, other line types, nothing to show.
        for skipped in [
            json!({"type": "message", "message": {"role": "system", "content": "x"}}),
            json!({"type": "custom", "message": {"role": "user", "content": "x"}}),
            json!({"type": "message", "message": {"role": "user", "content": [{"type": "image"}]}}),
        ] {
            assert_eq!(entry(skipped.clone()), None, "{skipped}");
        }
        // An unpriced message with usage has tokens and no cost.
        let n = entry(json!({"type": "message", "message": {
            "role": "assistant", "content": "hi", "usage": {"input": 7}}}))
        .unwrap();
        assert_eq!((n.tokens, n.cost), (Some(7), None));
    }

    #[test]
    fn long_timeseries_are_summed_in_runs_with_running_totals() {
        let pts: Vec<Point> = (0..450)
            .map(|i| Point {
                timestamp: i,
                total_tokens: 2,
                input: 1,
                cost: 0.5,
                ..Point::default()
            })
            .collect();
        let out = downsample(pts, 200);
        assert_eq!(out.len(), 150, "runs of ceil(450 / 200) = 3");
        assert_eq!(out[0].timestamp, 2, "a run is placed at its last point");
        assert_eq!(
            (out[0].total_tokens, out[0].input, out[0].cost),
            (6, 3, 1.5)
        );
        let last = out.last().unwrap();
        assert_eq!((last.cumulative_tokens, last.cumulative_cost), (900, 225.0));
    }

    #[test]
    fn lines_skips_overlong_and_unfinished_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.jsonl");
        let long = "y".repeat(MAX_LINE + 1);
        std::fs::write(&p, format!("a\n{long}\nb\nunfinished")).unwrap();
        let mut seen = Vec::new();
        assert!(lines(&p, || true, |l| seen.push(l.to_vec())).unwrap());
        assert_eq!(seen, [b"a".to_vec(), b"b".to_vec()]);
    }
}
