//! `sessions.list`, `sessions.usage` and `usage.cost`, answered from store snapshots and the
//! usage index, in OpenClaw's shapes (see `docs/USAGE.md` for what is counted).

use super::index::{FileIndex, Index};
use super::store::{SessionEntry, StoresView};
use super::time::{self, DAY_MS};
use super::transcript::{UsageRec, kind};
use crate::config::{ModelPrice, Prices};
use crate::error::RpcError;
use crate::ids::AgentId;
use crate::payload::Payload;
use crate::sync::lock;
use serde::Serialize;
use serde::ser::SerializeStruct;
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// Tokens and cost, with the keys OpenClaw uses.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
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

    fn is_empty(&self) -> bool {
        self.total_tokens == 0
            && self.total_cost == 0.0
            && self.missing_cost_entries == 0
            && self.input == 0
    }
}

/// Message counts with OpenClaw's keys.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
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
}

/// The day range of a query, in local days at `offset_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start_day: i64,
    pub end_day: i64,
    pub offset_ms: i64,
}

impl Range {
    /// `[start, end)` in ms.
    pub fn bounds(&self) -> (i64, i64) {
        (
            self.start_day * DAY_MS - self.offset_ms,
            (self.end_day + 1) * DAY_MS - self.offset_ms,
        )
    }

    pub fn contains(&self, ts: i64) -> bool {
        // Compared in milliseconds: no division for the records outside the range.
        ts >= self.start_day * DAY_MS - self.offset_ms
            && ts < (self.end_day + 1) * DAY_MS - self.offset_ms
    }

    pub fn day(&self, ts: i64) -> i64 {
        time::day_of(ts, self.offset_ms)
    }

    pub fn days(&self) -> i64 {
        self.end_day - self.start_day + 1
    }
}

/// A query's day range as asked for, before it is resolved against the clock (what is not
/// given defaults to the last days up to today). `api::sessions` builds it from the params.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeSpec {
    /// `startDate`, as a day number.
    pub start_day: Option<i64>,
    /// `endDate`, as a day number.
    pub end_day: Option<i64>,
    /// `days`, at least 1: the length of the range when `startDate` is not given.
    pub days: Option<i64>,
    /// The offset of local days from UTC (`mode` and `utcOffset`).
    pub offset_ms: i64,
}

/// The longest range a query covers, in days (about ten years).
pub const MAX_DAYS: i64 = 3660;

impl RangeSpec {
    /// The range at `now_ms`: it ends on `endDate` (today by default) and starts on
    /// `startDate`, or `days` (by default `default_days`) days before its end, that day
    /// included.
    pub fn resolve(&self, now_ms: i64, default_days: i64) -> Result<Range, RpcError> {
        let today = time::day_of(now_ms, self.offset_ms);
        let end_day = self.end_day.unwrap_or(today);
        let start_day = self
            .start_day
            .unwrap_or_else(|| end_day - self.days.unwrap_or(default_days) + 1);
        if start_day > end_day {
            return Err(RpcError::invalid(
                "invalid params: startDate is after endDate",
            ));
        }
        if end_day - start_day > MAX_DAYS {
            return Err(RpcError::invalid(
                "invalid params: the range is longer than ten years",
            ));
        }
        Ok(Range {
            start_day,
            end_day,
            offset_ms: self.offset_ms,
        })
    }
}

/// `sessions.list`: the most recently updated sessions first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub limit: usize,
    /// Only sessions updated within this many minutes.
    pub active_minutes: Option<u64>,
    /// Only this agent's sessions.
    pub agent: Option<AgentId>,
    /// Only sessions whose key, label, display name or id contains this, in any case.
    pub search: Option<String>,
    /// Only sessions with exactly this label.
    pub label: Option<String>,
}

/// `sessions.usage`: usage by session in a range, the most expensive first, a page at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub range: RangeSpec,
    /// Only the session with this key (in the agent's store, if `agent` is given).
    pub key: Option<String>,
    /// Only this agent's sessions.
    pub agent: Option<String>,
    pub limit: usize,
    /// Sessions of the page before this one (`nextCursor` of the previous answer).
    pub cursor: usize,
}

/// `usage.cost`: usage by day in a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostQuery {
    pub range: RangeSpec,
    /// Only this agent's usage.
    pub agent: Option<AgentId>,
}

/// A usage method with its params read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    List(ListQuery),
    Usage(UsageQuery),
    Cost(CostQuery),
}

impl Query {
    /// The method's name, for the log.
    pub fn method(&self) -> &'static str {
        match self {
            Query::List(_) => "sessions.list",
            Query::Usage(_) => "sessions.usage",
            Query::Cost(_) => "usage.cost",
        }
    }
}

/// How far the usage index is from what is on disk, as an answer reports it.
///
/// Lifecycle: `Partial` from boot until a build has covered every file once; from then on
/// `Refreshing` while a build runs and `Fresh` otherwise. It never goes back to `Partial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexState {
    /// Some files have never been indexed: totals may be short.
    Partial,
    /// Every file was indexed once; a build is catching up with what changed since.
    Refreshing,
    /// No build runs: the answer covers everything the query's own refresh saw.
    Fresh,
}

impl IndexState {
    /// The name in answers (`cacheStatus.status`, `status`'s `index.status`).
    pub fn as_str(self) -> &'static str {
        match self {
            IndexState::Partial => "partial",
            IndexState::Refreshing => "refreshing",
            IndexState::Fresh => "fresh",
        }
    }
}

/// What every usage answer reports about the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStatus {
    pub status: IndexState,
    pub files_indexed: usize,
    pub files_total: usize,
}

impl CacheStatus {
    pub fn to_json(self) -> Value {
        json!({
            "status": self.status.as_str(),
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

/// One day of one session (or of everything).
#[derive(Default, Clone, Copy)]
struct DayAcc {
    day: i64,
    totals: Totals,
    msgs: Messages,
}

/// One session's usage in the range. Days and models are small vectors; records arrive in
/// time order, so the day window just used is almost always the one needed next (no division,
/// no search). Session totals are summed from the days at the end.
struct SessionAcc {
    totals: Totals,
    messages: Messages,
    first: i64,
    last: i64,
    /// (model id, messages with usage, totals).
    models: Vec<(u32, u64, Totals)>,
    days: Vec<DayAcc>,
    hot: usize,
    /// The hot day's window, in ms.
    hot_window: (i64, i64),
}

impl Default for SessionAcc {
    fn default() -> SessionAcc {
        SessionAcc {
            totals: Totals::default(),
            messages: Messages::default(),
            first: i64::MAX,
            last: i64::MIN,
            models: Vec::new(),
            days: Vec::new(),
            hot: 0,
            hot_window: (0, 0),
        }
    }
}

impl SessionAcc {
    fn active(&self) -> bool {
        self.first <= self.last
    }

    fn activity(&self) -> (Option<i64>, Option<i64>) {
        if self.active() {
            (Some(self.first), Some(self.last))
        } else {
            (None, None)
        }
    }

    fn day(&mut self, ts: i64, range: &Range) -> &mut DayAcc {
        if ts < self.hot_window.0 || ts >= self.hot_window.1 {
            let day = range.day(ts);
            self.hot = match self.days.iter().rposition(|d| d.day == day) {
                Some(i) => i,
                None => {
                    self.days.push(DayAcc {
                        day,
                        ..DayAcc::default()
                    });
                    self.days.len() - 1
                }
            };
            let start = day * DAY_MS - range.offset_ms;
            self.hot_window = (start, start + DAY_MS);
        }
        &mut self.days[self.hot]
    }

    fn model(&mut self, model: u32) -> &mut (u32, u64, Totals) {
        let i = match self.models.iter().position(|m| m.0 == model) {
            Some(i) => i,
            None => {
                self.models.push((model, 0, Totals::default()));
                self.models.len() - 1
            }
        };
        &mut self.models[i]
    }

    /// Adds one file's records in range.
    fn add_file(
        &mut self,
        f: &FileIndex,
        range: &Range,
        prices: &[Option<ModelPrice>],
        tools: &mut [u64],
    ) {
        let (lo, hi) = range.bounds();
        if f.span.1 < lo || f.span.0 >= hi {
            return;
        }
        let inside = f.span.0 >= lo && f.span.1 < hi;
        let within = |ts: i64| inside || (ts >= lo && ts < hi);
        for m in &f.msgs {
            if within(m.ts) {
                self.day(m.ts, range).msgs.add_rec(m.kind, m.tool_calls);
                self.first = self.first.min(m.ts);
                self.last = self.last.max(m.ts);
            }
        }
        for u in &f.usage {
            if within(u.ts) {
                let price = prices.get(u.model as usize).and_then(Option::as_ref);
                self.day(u.ts, range).totals.add_usage(u, price);
                let m = self.model(u.model);
                m.1 += 1;
                m.2.add_usage(u, price);
                self.first = self.first.min(u.ts);
                self.last = self.last.max(u.ts);
            }
        }
        for t in &f.tools {
            if within(t.ts)
                && let Some(c) = tools.get_mut(t.name as usize)
            {
                *c += 1;
            }
        }
    }

    /// Adds a file's cached contribution.
    fn add_agg(&mut self, a: &FileAgg, tools: &mut [u64]) {
        for d in &a.days {
            let day = match self.days.iter().rposition(|x| x.day == d.day) {
                Some(i) => &mut self.days[i],
                None => {
                    self.days.push(DayAcc {
                        day: d.day,
                        ..DayAcc::default()
                    });
                    self.days.last_mut().expect("just pushed")
                }
            };
            day.totals.add(&d.totals);
            day.msgs.add(&d.msgs);
        }
        for (m, count, t) in &a.models {
            let e = self.model(*m);
            e.1 += count;
            e.2.add(t);
        }
        self.first = self.first.min(a.first);
        self.last = self.last.max(a.last);
        for (name, c) in &a.tools {
            if let Some(slot) = tools.get_mut(*name as usize) {
                *slot += c;
            }
        }
    }

    /// Sorts the days and sums them into the session's totals.
    fn finish(&mut self) {
        self.days.sort_by_key(|d| d.day);
        for d in &self.days {
            self.totals.add(&d.totals);
            self.messages.add(&d.msgs);
        }
    }
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

/// Inputs shared by the usage methods.
pub struct Ctx<'a> {
    pub index: &'a Index,
    pub stores: &'a StoresView,
    pub prices: &'a Prices,
    pub now_ms: i64,
    pub cache: CacheStatus,
    /// Per-file results kept between calls (the gateway keeps one; the CLI has none).
    pub files: Option<&'a std::sync::Mutex<FileCache>>,
    /// Changes when the prices may have (a config reload): cached results priced with the
    /// old ones are dropped.
    pub prices_version: usize,
}

/// One file's contribution to a range: what [`SessionAcc::add_file`] computes, kept so the
/// next query over the same range reuses it unless the file grew. At the incident's size this
/// turns a 10 ms pass over half a million records into a merge of 1,752 small summaries.
#[derive(Clone, Default)]
pub struct FileAgg {
    days: Vec<DayAcc>,
    models: Vec<(u32, u64, Totals)>,
    first: i64,
    last: i64,
    tools: Vec<(u32, u64)>,
}

/// Results per file for one range (the last one asked for).
#[derive(Default)]
pub struct FileCache {
    key: Option<(i64, i64, i64, usize)>,
    files: HashMap<std::path::PathBuf, ((u64, u64), FileAgg)>,
}

impl FileCache {
    /// Files with results kept.
    pub fn files_kept(&self) -> usize {
        self.files.len()
    }
}

/// Fills `cache` for `range`, so the first query over it is as fast as the next ones.
pub fn prewarm(
    index: &Index,
    prices: &Prices,
    prices_version: usize,
    range: &Range,
    cache: &std::sync::Mutex<FileCache>,
) {
    let table = prices_by_model(index, prices);
    let tool_space = index.tables.strings.len();
    let (lo, hi) = range.bounds();
    let key = Some((lo, hi, range.offset_ms, prices_version));
    let mut c = lock(cache);
    if c.key != key {
        c.key = key;
        c.files.clear();
    }
    for (rel, f) in &index.files {
        let version = (f.ident.ino, f.offset);
        if c.files.get(rel).is_none_or(|e| e.0 != version) {
            c.files.insert(
                rel.clone(),
                (version, FileAgg::compute(f, range, &table, tool_space)),
            );
        }
    }
}

impl FileAgg {
    fn compute(
        f: &FileIndex,
        range: &Range,
        prices: &[Option<ModelPrice>],
        tool_space: usize,
    ) -> FileAgg {
        let mut acc = SessionAcc::default();
        let mut tools = vec![0u64; tool_space];
        acc.add_file(f, range, prices, &mut tools);
        acc.days.sort_by_key(|d| d.day);
        FileAgg {
            days: acc.days,
            models: acc.models,
            first: acc.first,
            last: acc.last,
            tools: tools
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
        }
    }
}

/// What a computation covered, for its log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub sessions: Option<usize>,
}

struct Session<'a> {
    agent: &'a str,
    session_id: &'a str,
    entry: Option<&'a SessionEntry>,
    acc: SessionAcc,
}

fn group<'a>(
    cx: &'a Ctx<'a>,
    filter: &Filter<'_>,
    range: &Range,
    tools: &mut [u64],
) -> Vec<Session<'a>> {
    let prices = prices_by_model(cx.index, cx.prices);
    let mut at: HashMap<(u32, u32), usize> = HashMap::new();
    let mut out: Vec<Session<'a>> = Vec::new();
    let mut cache = cx.files.map(|m| lock(m));
    if let Some(c) = cache.as_deref_mut() {
        let (lo, hi) = range.bounds();
        let key = Some((lo, hi, range.offset_ms, cx.prices_version));
        if c.key != key || c.files.len() > cx.index.files.len() + 256 {
            c.key = key;
            c.files.clear();
        }
    }
    let tool_space = cx.index.tables.strings.len();
    for (rel, f) in &cx.index.files {
        if !filter.admits(cx.index, f) {
            continue;
        }
        let i = *at.entry((f.agent, f.sid)).or_insert_with(|| {
            let agent = cx.index.tables.str(f.agent);
            out.push(Session {
                agent,
                session_id: &f.session_id,
                entry: cx.stores.entry(agent, &f.session_id),
                acc: SessionAcc::default(),
            });
            out.len() - 1
        });
        match cache.as_deref_mut() {
            Some(c) => {
                let version = (f.ident.ino, f.offset);
                let slot = c
                    .files
                    .entry(rel.clone())
                    .or_insert_with(|| ((u64::MAX, 0), FileAgg::default()));
                if slot.0 != version {
                    *slot = (version, FileAgg::compute(f, range, &prices, tool_space));
                }
                out[i].acc.add_agg(&slot.1, tools);
            }
            None => out[i].acc.add_file(f, range, &prices, tools),
        }
    }
    out.retain(|s| s.acc.active());
    for s in &mut out {
        s.acc.finish();
    }
    out
}

fn channel_of(entry: Option<&SessionEntry>) -> &str {
    entry
        .and_then(|e| e.channel.as_deref())
        .unwrap_or("unknown")
}

fn by_cost(a: &Totals, b: &Totals) -> std::cmp::Ordering {
    b.total_cost
        .total_cmp(&a.total_cost)
        .then(b.total_tokens.cmp(&a.total_tokens))
}

// ---- the answer's shapes ------------------------------------------------------------------

/// Types whose fields are written inline into another object (what `#[serde(flatten)]`
/// does, without its slow map-based path: these answers hold tens of thousands of them).
trait Inline {
    const FIELDS: usize;
    fn write<S: SerializeStruct>(&self, s: &mut S) -> Result<(), S::Error>;
}

impl Inline for Totals {
    const FIELDS: usize = 11;
    fn write<S: SerializeStruct>(&self, s: &mut S) -> Result<(), S::Error> {
        s.serialize_field("input", &self.input)?;
        s.serialize_field("output", &self.output)?;
        s.serialize_field("cacheRead", &self.cache_read)?;
        s.serialize_field("cacheWrite", &self.cache_write)?;
        s.serialize_field("totalTokens", &self.total_tokens)?;
        s.serialize_field("totalCost", &self.total_cost)?;
        s.serialize_field("inputCost", &self.input_cost)?;
        s.serialize_field("outputCost", &self.output_cost)?;
        s.serialize_field("cacheReadCost", &self.cache_read_cost)?;
        s.serialize_field("cacheWriteCost", &self.cache_write_cost)?;
        s.serialize_field("missingCostEntries", &self.missing_cost_entries)
    }
}

impl Inline for Messages {
    const FIELDS: usize = 6;
    fn write<S: SerializeStruct>(&self, s: &mut S) -> Result<(), S::Error> {
        s.serialize_field("total", &self.total)?;
        s.serialize_field("user", &self.user)?;
        s.serialize_field("assistant", &self.assistant)?;
        s.serialize_field("toolCalls", &self.tool_calls)?;
        s.serialize_field("toolResults", &self.tool_results)?;
        s.serialize_field("errors", &self.errors)
    }
}

/// `{date, ...inner}`.
struct Dated<'a, T: Inline> {
    date: &'a str,
    inner: &'a T,
}

impl<T: Inline> Serialize for Dated<'_, T> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut s = ser.serialize_struct("Dated", 1 + T::FIELDS)?;
        s.serialize_field("date", self.date)?;
        self.inner.write(&mut s)?;
        s.end()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelUse<'a> {
    provider: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    count: u64,
    totals: Totals,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DayCost<'a> {
    date: &'a str,
    tokens: u64,
    cost: f64,
}

/// A session's `usage`: its totals inline, then the rest.
struct RowUsage<'a> {
    totals: &'a Totals,
    first_activity: Option<i64>,
    last_activity: Option<i64>,
    duration_ms: Option<i64>,
    message_counts: &'a Messages,
    model_usage: Vec<ModelUse<'a>>,
    daily_breakdown: Vec<DayCost<'a>>,
    daily_message_counts: Vec<Dated<'a, Messages>>,
}

impl Serialize for RowUsage<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut s = ser.serialize_struct("RowUsage", Totals::FIELDS + 7)?;
        self.totals.write(&mut s)?;
        s.serialize_field("firstActivity", &self.first_activity)?;
        s.serialize_field("lastActivity", &self.last_activity)?;
        s.serialize_field("durationMs", &self.duration_ms)?;
        s.serialize_field("messageCounts", self.message_counts)?;
        s.serialize_field("modelUsage", &self.model_usage)?;
        s.serialize_field("dailyBreakdown", &self.daily_breakdown)?;
        s.serialize_field("dailyMessageCounts", &self.daily_message_counts)?;
        s.end()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Row<'a> {
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    session_id: &'a str,
    updated_at: Option<i64>,
    agent_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chat_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_provider: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    usage: RowUsage<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Tool<'a> {
    name: &'a str,
    count: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Tools<'a> {
    total_calls: u64,
    unique_tools: usize,
    tools: Vec<Tool<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Agent<'a> {
    agent_id: &'a str,
    totals: Totals,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Channel<'a> {
    channel: &'a str,
    totals: Totals,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Day<'a> {
    date: &'a str,
    tokens: u64,
    cost: f64,
    messages: u64,
    tool_calls: u64,
    errors: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Aggregates<'a> {
    session_count: usize,
    messages: Messages,
    tools: Tools<'a>,
    by_model: Vec<ModelUse<'a>>,
    by_provider: Vec<ModelUse<'a>>,
    by_agent: Vec<Agent<'a>>,
    by_channel: Vec<Channel<'a>>,
    daily: Vec<Day<'a>>,
    cost_daily: Vec<Dated<'a, Totals>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageAnswer<'a> {
    updated_at: i64,
    start_date: String,
    end_date: String,
    sessions: Vec<Row<'a>>,
    totals: Totals,
    aggregates: Aggregates<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
    cache_status: Value,
}

fn to_payload<T: Serialize>(v: &T) -> Result<Payload, RpcError> {
    serde_json::to_string(v).map(Payload::Raw).map_err(|e| {
        RpcError::new(
            crate::error::Code::Internal,
            format!("cannot serialize the answer: {e}"),
        )
    })
}

/// `sessions.usage`.
pub fn sessions_usage(cx: &Ctx<'_>, q: &UsageQuery) -> Result<(Payload, Summary), RpcError> {
    let range = q.range.resolve(cx.now_ms, 30)?;
    let agent = q.agent.as_deref();
    let (limit, cursor) = (q.limit, q.cursor);
    let session = match q.key.as_deref() {
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
    let mut tool_counts = vec![0u64; cx.index.tables.strings.len()];
    let mut sessions = group(cx, &Filter { agent, session }, &range, &mut tool_counts);
    let index = cx.index;
    let dates: Vec<String> = (range.start_day..=range.end_day)
        .map(time::format_day)
        .collect();
    let date = |day: i64| dates[(day - range.start_day) as usize].as_str();

    // Aggregates over every matching session.
    let mut totals = Totals::default();
    let mut messages = Messages::default();
    let mut by_model: Vec<(u64, Totals)> = vec![(0, Totals::default()); index.tables.models.len()];
    let mut by_agent: HashMap<&str, Totals> = HashMap::new();
    let mut by_channel: HashMap<&str, Totals> = HashMap::new();
    let mut daily = vec![DayAcc::default(); range.days() as usize];
    for s in &sessions {
        totals.add(&s.acc.totals);
        messages.add(&s.acc.messages);
        for (model, count, t) in &s.acc.models {
            let e = &mut by_model[*model as usize];
            e.0 += count;
            e.1.add(t);
        }
        by_agent.entry(s.agent).or_default().add(&s.acc.totals);
        by_channel
            .entry(channel_of(s.entry))
            .or_default()
            .add(&s.acc.totals);
        for d in &s.acc.days {
            let e = &mut daily[(d.day - range.start_day) as usize];
            e.totals.add(&d.totals);
            e.msgs.add(&d.msgs);
        }
    }
    let mut by_provider: HashMap<&str, (u64, Totals)> = HashMap::new();
    let mut models: Vec<ModelUse> = Vec::new();
    for (id, (count, t)) in by_model.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        let (provider, model) = index.tables.model_names(id as u32);
        let e = by_provider.entry(provider).or_default();
        e.0 += count;
        e.1.add(t);
        models.push(ModelUse {
            provider,
            model: Some(model),
            count: *count,
            totals: *t,
        });
    }
    models.sort_by(|a, b| by_cost(&a.totals, &b.totals));
    let mut providers: Vec<ModelUse> = by_provider
        .into_iter()
        .map(|(provider, (count, totals))| ModelUse {
            provider,
            model: None,
            count,
            totals,
        })
        .collect();
    providers.sort_by(|a, b| by_cost(&a.totals, &b.totals).then(a.provider.cmp(b.provider)));
    let mut agents: Vec<Agent> = by_agent
        .into_iter()
        .map(|(agent_id, totals)| Agent { agent_id, totals })
        .collect();
    agents.sort_by(|a, b| by_cost(&a.totals, &b.totals).then(a.agent_id.cmp(b.agent_id)));
    let mut channels: Vec<Channel> = by_channel
        .into_iter()
        .map(|(channel, totals)| Channel { channel, totals })
        .collect();
    channels.sort_by(|a, b| by_cost(&a.totals, &b.totals).then(a.channel.cmp(b.channel)));
    let mut tools: Vec<Tool> = tool_counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(n, c)| Tool {
            name: index.tables.str(n as u32),
            count: *c,
        })
        .collect();
    tools.sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(b.name)));
    for (i, d) in daily.iter_mut().enumerate() {
        d.day = range.start_day + i as i64;
    }
    let active: Vec<&DayAcc> = daily
        .iter()
        .filter(|d| d.msgs.total > 0 || !d.totals.is_empty())
        .collect();
    let aggregates = Aggregates {
        session_count: sessions.len(),
        messages,
        tools: Tools {
            total_calls: tools.iter().map(|t| t.count).sum(),
            unique_tools: tools.len(),
            tools,
        },
        by_model: models,
        by_provider: providers,
        by_agent: agents,
        by_channel: channels,
        daily: active
            .iter()
            .map(|d| Day {
                date: date(d.day),
                tokens: d.totals.total_tokens,
                cost: d.totals.total_cost,
                messages: d.msgs.total,
                tool_calls: d.msgs.tool_calls,
                errors: d.msgs.errors,
            })
            .collect(),
        cost_daily: active
            .iter()
            .map(|d| Dated {
                date: date(d.day),
                inner: &d.totals,
            })
            .collect(),
    };

    // The page of sessions, most expensive first.
    sessions.sort_by(|a, b| {
        by_cost(&a.acc.totals, &b.acc.totals)
            .then_with(|| (a.agent, a.session_id).cmp(&(b.agent, b.session_id)))
    });
    let total = sessions.len();
    let page: Vec<Row> = sessions
        .iter()
        .skip(cursor)
        .take(limit)
        .map(|s| row(index, s, &date))
        .collect();
    let next = cursor + page.len();
    let answer = UsageAnswer {
        updated_at: cx.now_ms,
        start_date: time::format_day(range.start_day),
        end_date: time::format_day(range.end_day),
        sessions: page,
        totals,
        aggregates,
        next_cursor: (next < total).then(|| next.to_string()),
        cache_status: cx.cache.to_json(),
    };
    Ok((
        to_payload(&answer)?,
        Summary {
            sessions: Some(total),
        },
    ))
}

fn row<'a>(index: &'a Index, s: &'a Session<'a>, date: &impl Fn(i64) -> &'a str) -> Row<'a> {
    let acc = &s.acc;
    let e = s.entry;
    Row {
        key: e.map(|e| e.key.as_str()),
        label: e.and_then(|e| e.label.as_deref()),
        session_id: s.session_id,
        updated_at: e.and_then(|e| e.updated_at).or(acc.activity().1),
        agent_id: s.agent,
        channel: e.and_then(|e| e.channel.as_deref()),
        chat_type: e.and_then(|e| e.chat_type.as_deref()),
        model: e.and_then(|e| e.model.as_deref()),
        model_provider: e.and_then(|e| e.model_provider.as_deref()),
        deleted: e.is_none(),
        usage: RowUsage {
            totals: &acc.totals,
            first_activity: acc.activity().0,
            last_activity: acc.activity().1,
            duration_ms: acc.active().then(|| acc.last - acc.first),
            message_counts: &acc.messages,
            model_usage: acc
                .models
                .iter()
                .map(|(m, count, totals)| {
                    let (provider, model) = index.tables.model_names(*m);
                    ModelUse {
                        provider,
                        model: Some(model),
                        count: *count,
                        totals: *totals,
                    }
                })
                .collect(),
            daily_breakdown: acc
                .days
                .iter()
                .map(|d| DayCost {
                    date: date(d.day),
                    tokens: d.totals.total_tokens,
                    cost: d.totals.total_cost,
                })
                .collect(),
            daily_message_counts: acc
                .days
                .iter()
                .map(|d| Dated {
                    date: date(d.day),
                    inner: &d.msgs,
                })
                .collect(),
        },
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CostAnswer<'a> {
    updated_at: i64,
    days: i64,
    start_date: &'a str,
    end_date: &'a str,
    daily: Vec<Dated<'a, Totals>>,
    totals: Totals,
    cache_status: Value,
}

/// `usage.cost`: one row per day of the range (days without usage included), and totals.
pub fn usage_cost(cx: &Ctx<'_>, q: &CostQuery) -> Result<(Payload, Summary), RpcError> {
    let range = q.range.resolve(cx.now_ms, 30)?;
    let agent = q.agent.as_ref().map(AgentId::as_str);
    let prices = prices_by_model(cx.index, cx.prices);
    let mut days = vec![Totals::default(); range.days() as usize];
    for f in cx.index.files.values() {
        if agent.is_some_and(|a| a != cx.index.tables.str(f.agent)) {
            continue;
        }
        let (lo, hi) = range.bounds();
        if f.span.1 < lo || f.span.0 >= hi {
            continue;
        }
        let inside = f.span.0 >= lo && f.span.1 < hi;
        for u in &f.usage {
            if inside || (u.ts >= lo && u.ts < hi) {
                let i = ((u.ts - lo) / DAY_MS) as usize;
                days[i].add_usage(u, prices.get(u.model as usize).and_then(Option::as_ref));
            }
        }
    }
    let mut totals = Totals::default();
    for d in &days {
        totals.add(d);
    }
    let dates: Vec<String> = (range.start_day..=range.end_day)
        .map(time::format_day)
        .collect();
    let answer = CostAnswer {
        updated_at: cx.now_ms,
        days: range.days(),
        start_date: &dates[0],
        end_date: &dates[dates.len() - 1],
        daily: days
            .iter()
            .zip(&dates)
            .map(|(t, d)| Dated { date: d, inner: t })
            .collect(),
        totals,
        cache_status: cx.cache.to_json(),
    };
    Ok((to_payload(&answer)?, Summary { sessions: None }))
}

/// `sessions.list`.
pub fn sessions_list(
    stores: &StoresView,
    state_dir: &std::path::Path,
    q: &ListQuery,
    now_ms: i64,
) -> Result<Value, RpcError> {
    let limit = q.limit;
    let active = q.active_minutes;
    let agent = q.agent.as_ref().map(AgentId::as_str);
    let search = q.search.as_deref().map(str::to_lowercase);
    let label = q.label.as_deref();
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
    fn a_range_resolves_against_the_clock() {
        let now = time::parse_iso_ms("2026-11-21T23:30:00Z").unwrap();
        let r = RangeSpec::default().resolve(now, 30).unwrap();
        assert_eq!(
            (time::format_day(r.start_day), time::format_day(r.end_day)),
            ("2026-10-23".into(), "2026-11-21".into())
        );
        let day = |s: &str| time::parse_day(s).unwrap();
        let r = RangeSpec {
            start_day: Some(day("2026-11-01")),
            end_day: Some(day("2026-11-03")),
            ..RangeSpec::default()
        }
        .resolve(now, 30)
        .unwrap();
        assert_eq!(r.days(), 3);
        assert!(r.contains(time::parse_iso_ms("2026-11-03T23:59:59Z").unwrap()));
        assert!(!r.contains(time::parse_iso_ms("2026-11-04T00:00:00Z").unwrap()));
        assert_eq!(
            day_start_ms(r.start_day, 0),
            time::parse_iso_ms("2026-11-01").unwrap()
        );
        let after_today = RangeSpec {
            start_day: Some(day("2026-11-25")),
            ..RangeSpec::default()
        };
        let e = after_today.resolve(now, 30).unwrap_err();
        assert_eq!(e.message, "invalid params: startDate is after endDate");
        let too_long = RangeSpec {
            start_day: Some(day("2010-01-01")),
            ..RangeSpec::default()
        };
        let e = too_long.resolve(now, 30).unwrap_err();
        assert_eq!(
            e.message,
            "invalid params: the range is longer than ten years"
        );
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
