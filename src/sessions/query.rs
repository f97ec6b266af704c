//! `sessions.list`, `sessions.usage` and `usage.cost`, answered from store snapshots and the
//! usage index, in OpenClaw's shapes (see `docs/USAGE.md` for what is counted).

use super::index::{FileIndex, Index};
use super::store::{SessionEntry, StoresView};
use super::time::{self, DAY_MS};
use super::transcript::{UsageRec, kind};
use crate::config::{ModelPrice, Prices};
use crate::error::RpcError;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

/// Tokens and cost, with the keys OpenClaw uses.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Totals {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub total_tokens: u64,
    pub total_cost: f64,
    pub input_cost: f64,
    pub output_cost: f64,
    pub cache_read_cost: f64,
    pub cache_write_cost: f64,
    pub missing_cost_entries: u64,
}

impl Totals {
    /// Adds one message's usage: its recorded cost, else an estimate from `price`, else one
    /// missing-cost entry (an unknown price is never $0).
    pub fn add_usage(&mut self, u: &UsageRec, price: Option<&ModelPrice>) {
        self.input += u.tokens[0];
        self.output += u.tokens[1];
        self.cache_read += u.tokens[2];
        self.cache_write += u.tokens[3];
        self.total_tokens += u.tokens[4];
        if u.has_recorded_cost() {
            self.total_cost += u.cost[0];
            self.input_cost += u.cost[1];
            self.output_cost += u.cost[2];
            self.cache_read_cost += u.cost[3];
            self.cache_write_cost += u.cost[4];
        } else if let Some(p) = price {
            let part = |tokens: u64, per_m: f64| tokens as f64 * per_m / 1_000_000.0;
            let (i, o, r, w) = (
                part(u.tokens[0], p.input),
                part(u.tokens[1], p.output),
                part(u.tokens[2], p.cache_read),
                part(u.tokens[3], p.cache_write),
            );
            self.input_cost += i;
            self.output_cost += o;
            self.cache_read_cost += r;
            self.cache_write_cost += w;
            self.total_cost += i + o + r + w;
        } else if u.tokens[4] > 0 {
            self.missing_cost_entries += 1;
        }
    }

    pub fn add(&mut self, o: &Totals) {
        self.input += o.input;
        self.output += o.output;
        self.cache_read += o.cache_read;
        self.cache_write += o.cache_write;
        self.total_tokens += o.total_tokens;
        self.total_cost += o.total_cost;
        self.input_cost += o.input_cost;
        self.output_cost += o.output_cost;
        self.cache_read_cost += o.cache_read_cost;
        self.cache_write_cost += o.cache_write_cost;
        self.missing_cost_entries += o.missing_cost_entries;
    }

    fn fill(&self, m: &mut Map<String, Value>) {
        m.insert("input".into(), json!(self.input));
        m.insert("output".into(), json!(self.output));
        m.insert("cacheRead".into(), json!(self.cache_read));
        m.insert("cacheWrite".into(), json!(self.cache_write));
        m.insert("totalTokens".into(), json!(self.total_tokens));
        m.insert("totalCost".into(), json!(self.total_cost));
        m.insert("inputCost".into(), json!(self.input_cost));
        m.insert("outputCost".into(), json!(self.output_cost));
        m.insert("cacheReadCost".into(), json!(self.cache_read_cost));
        m.insert("cacheWriteCost".into(), json!(self.cache_write_cost));
        m.insert(
            "missingCostEntries".into(),
            json!(self.missing_cost_entries),
        );
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        self.fill(&mut m);
        Value::Object(m)
    }

    /// `{first: …, ...totals}`.
    fn with(&self, fields: Value) -> Value {
        let mut m = match fields {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        self.fill(&mut m);
        Value::Object(m)
    }
}

/// Message counts with OpenClaw's keys.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Messages {
    pub total: u64,
    pub user: u64,
    pub assistant: u64,
    pub tool_calls: u64,
    pub tool_results: u64,
    pub errors: u64,
}

impl Messages {
    fn add_rec(&mut self, k: u8, tool_calls: u8) {
        self.total += 1;
        self.user += u64::from(k & kind::USER != 0);
        self.assistant += u64::from(k & kind::ASSISTANT != 0);
        self.tool_results += u64::from(k & kind::TOOL_RESULT != 0);
        self.errors += u64::from(k & kind::ERROR != 0);
        self.tool_calls += u64::from(tool_calls);
    }

    fn add(&mut self, o: &Messages) {
        self.total += o.total;
        self.user += o.user;
        self.assistant += o.assistant;
        self.tool_calls += o.tool_calls;
        self.tool_results += o.tool_results;
        self.errors += o.errors;
    }

    fn to_json(self) -> Value {
        json!({"total": self.total, "user": self.user, "assistant": self.assistant,
               "toolCalls": self.tool_calls, "toolResults": self.tool_results, "errors": self.errors})
    }
}

/// The day range of a query, in local days at `offset_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start_day: i64,
    pub end_day: i64,
    pub offset_ms: i64,
}

impl Range {
    pub fn contains(&self, ts: i64) -> bool {
        let d = time::day_of(ts, self.offset_ms);
        d >= self.start_day && d <= self.end_day
    }

    pub fn day(&self, ts: i64) -> i64 {
        time::day_of(ts, self.offset_ms)
    }

    pub fn days(&self) -> i64 {
        self.end_day - self.start_day + 1
    }
}

fn opt_str<'a>(p: &'a Value, key: &str) -> Result<Option<&'a str>, RpcError> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(RpcError::invalid(format!(
            "invalid params: {key} must be a string"
        ))),
    }
}

fn opt_u64(p: &Value, key: &str, max: u64) -> Result<Option<u64>, RpcError> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
        }) {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(RpcError::invalid(format!(
                "invalid params: {key} must be an integer in 0..={max}"
            ))),
        },
    }
}

/// Resolves `startDate`, `endDate`, `days`, `mode` and `utcOffset` against `now_ms`. The default
/// range is the last `default_days` days, today included.
pub fn parse_range(p: &Value, now_ms: i64, default_days: i64) -> Result<Range, RpcError> {
    let offset_ms = match opt_str(p, "mode")? {
        None | Some("utc") | Some("gateway") => match opt_str(p, "utcOffset")? {
            // An explicit offset without a mode is honoured too.
            Some(o) if opt_str(p, "mode")?.is_none() => parse_offset(o)?,
            _ => 0,
        },
        Some("specific") => {
            let o = opt_str(p, "utcOffset")?.ok_or_else(|| {
                RpcError::invalid(
                    "invalid params: mode \"specific\" needs utcOffset (e.g. \"UTC+5:30\")",
                )
            })?;
            parse_offset(o)?
        }
        Some(m) => {
            return Err(RpcError::invalid(format!(
                "invalid params: mode must be utc, gateway or specific, got {m:?}"
            )));
        }
    };
    let today = time::day_of(now_ms, offset_ms);
    let day = |key: &str| -> Result<Option<i64>, RpcError> {
        match opt_str(p, key)? {
            None => Ok(None),
            Some(s) => time::parse_day(s).map(Some).ok_or_else(|| {
                RpcError::invalid(format!(
                    "invalid params: {key} must be a date YYYY-MM-DD, got {s:?}"
                ))
            }),
        }
    };
    let days = opt_u64(p, "days", 3660)?.map(|d| d.max(1) as i64);
    let end_day = day("endDate")?.unwrap_or(today);
    let start_day = match day("startDate")? {
        Some(d) => d,
        None => end_day - days.unwrap_or(default_days) + 1,
    };
    if start_day > end_day {
        return Err(RpcError::invalid(
            "invalid params: startDate is after endDate",
        ));
    }
    if end_day - start_day > 3660 {
        return Err(RpcError::invalid(
            "invalid params: the range is longer than ten years",
        ));
    }
    Ok(Range {
        start_day,
        end_day,
        offset_ms,
    })
}

fn parse_offset(o: &str) -> Result<i64, RpcError> {
    time::parse_utc_offset(o).ok_or_else(|| {
        RpcError::invalid(format!(
            "invalid params: utcOffset {o:?} is not like \"UTC+5:30\""
        ))
    })
}

/// What every usage answer reports about the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStatus {
    pub status: &'static str,
    pub files_indexed: usize,
    pub files_total: usize,
}

impl CacheStatus {
    pub fn to_json(self) -> Value {
        json!({
            "status": self.status,
            "filesIndexed": self.files_indexed,
            "filesTotal": self.files_total,
            "cachedFiles": self.files_indexed,
            "pendingFiles": self.files_total.saturating_sub(self.files_indexed),
            "staleFiles": 0,
        })
    }
}

fn prices_by_model(index: &Index, prices: &Prices) -> Vec<Option<ModelPrice>> {
    (0..index.tables.models.len() as u32)
        .map(|id| {
            let (p, m) = index.tables.model_names(id);
            prices.get(&(p.to_string(), m.to_string())).copied()
        })
        .collect()
}

/// Which files a query looks at.
struct Filter<'a> {
    agent: Option<&'a str>,
    /// (agent, session id) of a requested key.
    session: Option<(String, String)>,
}

impl Filter<'_> {
    fn admits(&self, index: &Index, f: &FileIndex) -> bool {
        let agent = index.tables.str(f.agent);
        if self.agent.is_some_and(|a| a != agent) {
            return false;
        }
        match &self.session {
            Some((a, s)) => a == agent && **s == *f.session_id,
            None => true,
        }
    }
}

#[derive(Default)]
struct SessionAcc {
    totals: Totals,
    messages: Messages,
    first: Option<i64>,
    last: Option<i64>,
    models: BTreeMap<u32, (u64, Totals)>,
    daily: BTreeMap<i64, (Totals, Messages)>,
}

impl SessionAcc {
    fn touch(&mut self, ts: i64) {
        self.first = Some(self.first.map_or(ts, |f| f.min(ts)));
        self.last = Some(self.last.map_or(ts, |l| l.max(ts)));
    }
}

/// Accumulates one file's records in range into its session.
fn accumulate(
    acc: &mut SessionAcc,
    f: &FileIndex,
    range: &Range,
    prices: &[Option<ModelPrice>],
    tools: &mut HashMap<u32, u64>,
) {
    for m in &f.msgs {
        if range.contains(m.ts) {
            acc.messages.add_rec(m.kind, m.tool_calls);
            acc.daily
                .entry(range.day(m.ts))
                .or_default()
                .1
                .add_rec(m.kind, m.tool_calls);
            acc.touch(m.ts);
        }
    }
    for u in &f.usage {
        if range.contains(u.ts) {
            let price = prices.get(u.model as usize).and_then(Option::as_ref);
            acc.totals.add_usage(u, price);
            let e = acc.models.entry(u.model).or_default();
            e.0 += 1;
            e.1.add_usage(u, price);
            acc.daily
                .entry(range.day(u.ts))
                .or_default()
                .0
                .add_usage(u, price);
            acc.touch(u.ts);
        }
    }
    for t in &f.tools {
        if range.contains(t.ts) {
            *tools.entry(t.name).or_default() += 1;
        }
    }
}

/// Inputs shared by the usage methods.
pub struct Ctx<'a> {
    pub index: &'a Index,
    pub stores: &'a StoresView,
    pub prices: &'a Prices,
    pub now_ms: i64,
    pub cache: CacheStatus,
}

struct Grouped<'a> {
    /// (agent, session id) → accumulated usage, with the store entry when there is one.
    sessions: BTreeMap<(&'a str, &'a str), (SessionAcc, Option<&'a SessionEntry>)>,
    tools: HashMap<u32, u64>,
}

fn group<'a>(cx: &'a Ctx<'a>, filter: &Filter<'_>, range: &Range) -> Grouped<'a> {
    let prices = prices_by_model(cx.index, cx.prices);
    let mut out = Grouped {
        sessions: BTreeMap::new(),
        tools: HashMap::new(),
    };
    for f in cx.index.files.values() {
        if !filter.admits(cx.index, f) {
            continue;
        }
        let agent = cx.index.tables.str(f.agent);
        let key = (agent, &*f.session_id);
        let slot = out
            .sessions
            .entry(key)
            .or_insert_with(|| (SessionAcc::default(), cx.stores.entry(agent, &f.session_id)));
        accumulate(&mut slot.0, f, range, &prices, &mut out.tools);
    }
    out.sessions.retain(|_, (acc, _)| acc.first.is_some());
    out
}

fn channel_of(entry: Option<&SessionEntry>) -> &str {
    entry
        .and_then(|e| e.channel.as_deref())
        .unwrap_or("unknown")
}

/// `sessions.usage`.
pub fn sessions_usage(cx: &Ctx<'_>, p: &Value) -> Result<Value, RpcError> {
    let range = parse_range(p, cx.now_ms, 30)?;
    let key = opt_str(p, "key")?;
    let agent_id = opt_str(p, "agentId")?;
    let scope = opt_str(p, "agentScope")?;
    if scope.is_some_and(|s| s == "all") && (agent_id.is_some() || key.is_some()) {
        return Err(RpcError::invalid(
            "agentScope=all cannot be combined with key or agentId",
        ));
    }
    let agent = agent_id.or(scope.filter(|s| *s != "all"));
    let limit = opt_u64(p, "limit", 10_000)?.unwrap_or(50) as usize;
    let cursor = match opt_str(p, "cursor")? {
        None => 0,
        Some(c) => c.parse::<usize>().map_err(|_| {
            RpcError::invalid(format!(
                "invalid params: cursor {c:?} is not one this gateway gave"
            ))
        })?,
    };
    let session = match key {
        None => None,
        Some(k) => {
            let found = cx
                .stores
                .snapshots
                .iter()
                .filter(|s| agent.is_none_or(|a| a == s.agent_id))
                .find_map(|s| {
                    s.entries
                        .iter()
                        .find(|e| e.key == k)
                        .map(|e| (s.agent_id.clone(), e.session_id.clone()))
                });
            Some(found.ok_or_else(|| RpcError::invalid(format!("no session with key {k:?}")))?)
        }
    };
    let grouped = group(cx, &Filter { agent, session }, &range);
    let index = cx.index;

    // Aggregates over every matching session.
    let mut totals = Totals::default();
    let mut messages = Messages::default();
    let mut by_model: BTreeMap<u32, (u64, Totals)> = BTreeMap::new();
    let mut by_provider: BTreeMap<&str, (u64, Totals)> = BTreeMap::new();
    let mut by_agent: BTreeMap<&str, Totals> = BTreeMap::new();
    let mut by_channel: BTreeMap<&str, Totals> = BTreeMap::new();
    let mut daily: BTreeMap<i64, (Totals, Messages)> = BTreeMap::new();
    for ((agent, _), (acc, entry)) in &grouped.sessions {
        totals.add(&acc.totals);
        messages.add(&acc.messages);
        for (model, (count, t)) in &acc.models {
            let e = by_model.entry(*model).or_default();
            e.0 += count;
            e.1.add(t);
            let provider = index.tables.model_names(*model).0;
            let e = by_provider.entry(provider).or_default();
            e.0 += count;
            e.1.add(t);
        }
        by_agent.entry(agent).or_default().add(&acc.totals);
        by_channel
            .entry(channel_of(*entry))
            .or_default()
            .add(&acc.totals);
        for (day, (t, m)) in &acc.daily {
            let e = daily.entry(*day).or_default();
            e.0.add(t);
            e.1.add(m);
        }
    }
    let by_cost = |a: &Totals, b: &Totals| {
        b.total_cost
            .total_cmp(&a.total_cost)
            .then(b.total_tokens.cmp(&a.total_tokens))
    };
    let mut models: Vec<_> = by_model.iter().collect();
    models.sort_by(|a, b| by_cost(&a.1.1, &b.1.1));
    let mut providers: Vec<_> = by_provider.iter().collect();
    providers.sort_by(|a, b| by_cost(&a.1.1, &b.1.1));
    let mut agents: Vec<_> = by_agent.iter().collect();
    agents.sort_by(|a, b| by_cost(a.1, b.1));
    let mut channels: Vec<_> = by_channel.iter().collect();
    channels.sort_by(|a, b| by_cost(a.1, b.1));
    let mut tool_list: Vec<(&str, u64)> = grouped
        .tools
        .iter()
        .map(|(n, c)| (index.tables.str(*n), *c))
        .collect();
    tool_list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let aggregates = json!({
        "sessionCount": grouped.sessions.len(),
        "messages": messages.to_json(),
        "tools": {
            "totalCalls": tool_list.iter().map(|t| t.1).sum::<u64>(),
            "uniqueTools": tool_list.len(),
            "tools": tool_list.iter().map(|(n, c)| json!({"name": n, "count": c})).collect::<Vec<_>>(),
        },
        "byModel": models.iter().map(|(m, (count, t))| {
            let (provider, model) = index.tables.model_names(**m);
            json!({"provider": provider, "model": model, "count": count, "totals": t.to_json()})
        }).collect::<Vec<_>>(),
        "byProvider": providers.iter().map(|(p, (count, t))| json!({"provider": p, "count": count, "totals": t.to_json()})).collect::<Vec<_>>(),
        "byAgent": agents.iter().map(|(a, t)| json!({"agentId": a, "totals": t.to_json()})).collect::<Vec<_>>(),
        "byChannel": channels.iter().map(|(c, t)| json!({"channel": c, "totals": t.to_json()})).collect::<Vec<_>>(),
        "daily": daily.iter().map(|(d, (t, m))| json!({
            "date": time::format_day(*d), "tokens": t.total_tokens, "cost": t.total_cost,
            "messages": m.total, "toolCalls": m.tool_calls, "errors": m.errors,
        })).collect::<Vec<_>>(),
        "costDaily": daily.iter().map(|(d, (t, _))| t.with(json!({"date": time::format_day(*d)}))).collect::<Vec<_>>(),
    });

    // The page of sessions, most expensive first.
    let mut rows: Vec<_> = grouped.sessions.iter().collect();
    rows.sort_by(|a, b| by_cost(&a.1.0.totals, &b.1.0.totals).then_with(|| a.0.cmp(b.0)));
    let page: Vec<Value> = rows
        .iter()
        .skip(cursor)
        .take(limit)
        .map(|((agent, sid), (acc, entry))| session_row(index, agent, sid, acc, *entry))
        .collect();
    let next = cursor + page.len();
    let mut out = json!({
        "updatedAt": cx.now_ms,
        "startDate": time::format_day(range.start_day),
        "endDate": time::format_day(range.end_day),
        "sessions": page,
        "totals": totals.to_json(),
        "aggregates": aggregates,
        "cacheStatus": cx.cache.to_json(),
    });
    if next < rows.len() {
        out["nextCursor"] = json!(next.to_string());
    }
    Ok(out)
}

fn session_row(
    index: &Index,
    agent: &str,
    sid: &str,
    acc: &SessionAcc,
    entry: Option<&SessionEntry>,
) -> Value {
    let mut usage = acc.totals.with(json!({
        "firstActivity": acc.first,
        "lastActivity": acc.last,
        "messageCounts": acc.messages.to_json(),
        "modelUsage": acc.models.iter().map(|(m, (count, t))| {
            let (provider, model) = index.tables.model_names(*m);
            json!({"provider": provider, "model": model, "count": count, "totals": t.to_json()})
        }).collect::<Vec<_>>(),
        "dailyBreakdown": acc.daily.iter().map(|(d, (t, _))| json!({"date": time::format_day(*d), "tokens": t.total_tokens, "cost": t.total_cost})).collect::<Vec<_>>(),
        "dailyMessageCounts": acc.daily.iter().map(|(d, (_, m))| {
            let mut v = m.to_json();
            v["date"] = json!(time::format_day(*d));
            v
        }).collect::<Vec<_>>(),
    }));
    if let Some(d) = acc.first.zip(acc.last).map(|(f, l)| l - f) {
        usage["durationMs"] = json!(d);
    }
    let mut row = Map::new();
    row.insert("key".into(), entry.map_or(Value::Null, |e| json!(e.key)));
    if let Some(l) = entry.and_then(|e| e.label.as_ref()) {
        row.insert("label".into(), json!(l));
    }
    row.insert("sessionId".into(), json!(sid));
    row.insert(
        "updatedAt".into(),
        json!(entry.and_then(|e| e.updated_at).or(acc.last)),
    );
    row.insert("agentId".into(), json!(agent));
    if let Some(c) = entry.and_then(|e| e.channel.as_ref()) {
        row.insert("channel".into(), json!(c));
    }
    if let Some(e) = entry {
        if let Some(m) = &e.model {
            row.insert("model".into(), json!(m));
        }
        if let Some(p) = &e.model_provider {
            row.insert("modelProvider".into(), json!(p));
        }
        if let Some(c) = &e.chat_type {
            row.insert("chatType".into(), json!(c));
        }
    } else {
        row.insert("deleted".into(), json!(true));
    }
    row.insert("usage".into(), usage);
    Value::Object(row)
}

/// `usage.cost`: one row per day of the range (days without usage included), and totals.
pub fn usage_cost(cx: &Ctx<'_>, p: &Value) -> Result<Value, RpcError> {
    let range = parse_range(p, cx.now_ms, 30)?;
    let agent = opt_str(p, "agentId")?;
    let prices = prices_by_model(cx.index, cx.prices);
    let mut days = vec![Totals::default(); range.days() as usize];
    for f in cx.index.files.values() {
        if agent.is_some_and(|a| a != cx.index.tables.str(f.agent)) {
            continue;
        }
        for u in &f.usage {
            if range.contains(u.ts) {
                let i = (range.day(u.ts) - range.start_day) as usize;
                days[i].add_usage(u, prices.get(u.model as usize).and_then(Option::as_ref));
            }
        }
    }
    let mut totals = Totals::default();
    for d in &days {
        totals.add(d);
    }
    Ok(json!({
        "updatedAt": cx.now_ms,
        "days": range.days(),
        "startDate": time::format_day(range.start_day),
        "endDate": time::format_day(range.end_day),
        "daily": days.iter().enumerate().map(|(i, t)| t.with(json!({"date": time::format_day(range.start_day + i as i64)}))).collect::<Vec<_>>(),
        "totals": totals.to_json(),
        "cacheStatus": cx.cache.to_json(),
    }))
}

/// `sessions.list`.
pub fn sessions_list(
    stores: &StoresView,
    state_dir: &std::path::Path,
    p: &Value,
    now_ms: i64,
) -> Result<Value, RpcError> {
    let limit = opt_u64(p, "limit", 100_000)?.unwrap_or(50) as usize;
    let active = opt_u64(p, "activeMinutes", 10_000_000)?;
    let agent = opt_str(p, "agentId")?;
    let search = opt_str(p, "search")?.map(str::to_lowercase);
    let label = opt_str(p, "label")?;
    let mut rows: Vec<(&str, &SessionEntry)> = Vec::new();
    for s in &stores.snapshots {
        if agent.is_some_and(|a| a != s.agent_id) {
            continue;
        }
        for e in &s.entries {
            if let Some(m) = active
                && e.updated_at.is_none_or(|u| u < now_ms - m as i64 * 60_000)
            {
                continue;
            }
            if label.is_some_and(|l| e.label.as_deref() != Some(l)) {
                continue;
            }
            if let Some(q) = &search {
                let hit = [
                    Some(&e.key),
                    e.label.as_ref(),
                    e.display_name.as_ref(),
                    Some(&e.session_id),
                ]
                .into_iter()
                .flatten()
                .any(|f| f.to_lowercase().contains(q));
                if !hit {
                    continue;
                }
            }
            rows.push((&s.agent_id, e));
        }
    }
    rows.sort_by(|a, b| {
        b.1.updated_at
            .cmp(&a.1.updated_at)
            .then_with(|| a.1.key.cmp(&b.1.key))
    });
    let total = rows.len();
    let sessions: Vec<Value> = rows
        .iter()
        .take(limit)
        .map(|(agent, e)| {
            let mut m = Map::new();
            m.insert("key".into(), json!(e.key));
            m.insert("kind".into(), json!(e.kind()));
            m.insert("agentId".into(), json!(agent));
            let mut opt = |k: &str, v: &Option<String>| {
                if let Some(v) = v {
                    m.insert(k.into(), json!(v));
                }
            };
            opt("label", &e.label);
            opt("displayName", &e.display_name);
            opt("channel", &e.channel);
            opt("model", &e.model);
            opt("modelProvider", &e.model_provider);
            m.insert("updatedAt".into(), json!(e.updated_at));
            m.insert("sessionId".into(), json!(e.session_id));
            for (k, v) in [
                ("inputTokens", e.input_tokens),
                ("outputTokens", e.output_tokens),
                ("totalTokens", e.total_tokens),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), json!(v));
                }
            }
            Value::Object(m)
        })
        .collect();
    let path = match agent {
        Some(a) => super::store::agents_dir(state_dir)
            .join(a)
            .join("sessions")
            .join("sessions.json"),
        None => super::store::agents_dir(state_dir),
    };
    Ok(json!({
        "ts": now_ms,
        "path": path,
        "count": sessions.len(),
        "totalCount": total,
        "limitApplied": limit,
        "hasMore": total > sessions.len(),
        "sessions": sessions,
    }))
}

/// Milliseconds of local midnight starting `day` (for tests and the CLI).
pub fn day_start_ms(day: i64, offset_ms: i64) -> i64 {
    day * DAY_MS - offset_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let now = time::parse_iso_ms("2026-11-21T23:30:00Z").unwrap();
        let r = parse_range(&json!({}), now, 30).unwrap();
        assert_eq!(
            (time::format_day(r.start_day), time::format_day(r.end_day)),
            ("2026-10-23".into(), "2026-11-21".into())
        );
        let r = parse_range(
            &json!({"mode": "specific", "utcOffset": "UTC+5:30", "days": 1}),
            now,
            30,
        )
        .unwrap();
        assert_eq!(
            time::format_day(r.end_day),
            "2026-11-22",
            "already tomorrow at +5:30"
        );
        assert!(r.contains(now));
        let r = parse_range(
            &json!({"startDate": "2026-11-01", "endDate": "2026-11-03"}),
            now,
            30,
        )
        .unwrap();
        assert_eq!(r.days(), 3);
        assert!(r.contains(time::parse_iso_ms("2026-11-03T23:59:59Z").unwrap()));
        assert!(!r.contains(time::parse_iso_ms("2026-11-04T00:00:00Z").unwrap()));
        assert_eq!(
            day_start_ms(r.start_day, 0),
            time::parse_iso_ms("2026-11-01").unwrap()
        );
        for bad in [
            json!({"startDate": "2026-11-05", "endDate": "2026-11-03"}),
            json!({"startDate": "yesterday"}),
            json!({"mode": "specific"}),
            json!({"mode": "lunar"}),
            json!({"days": -1}),
        ] {
            assert!(parse_range(&bad, now, 30).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_prices_are_missing_not_zero() {
        let mut t = Totals::default();
        let rec = |cost0: f64, total: u64| UsageRec {
            ts: 0,
            cost: [cost0, 0.0, 0.0, 0.0, 0.0],
            tokens: [1_000_000, 0, 0, 0, total],
            model: 0,
        };
        t.add_usage(&rec(f64::NAN, 1_000_000), None);
        assert_eq!((t.total_cost, t.missing_cost_entries), (0.0, 1));
        let price = ModelPrice {
            input: 3.0,
            output: 15.0,
            cache_read: 0.3,
            cache_write: 3.75,
        };
        t.add_usage(&rec(f64::NAN, 1_000_000), Some(&price));
        assert_eq!(
            (t.total_cost, t.input_cost, t.missing_cost_entries),
            (3.0, 3.0, 1)
        );
        t.add_usage(&rec(0.25, 1_000_000), Some(&price));
        assert_eq!(t.total_cost, 3.25, "a recorded cost wins over the price");
        t.add_usage(&rec(f64::NAN, 0), None);
        assert_eq!(t.missing_cost_entries, 1, "no tokens, nothing missing");
        assert_eq!(t.input, 4_000_000);
    }
}
