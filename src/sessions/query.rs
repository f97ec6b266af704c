//! `sessions.list`, `sessions.usage` and `usage.cost`, answered from store snapshots and the
//! usage index, in OpenClaw's shapes (see `docs/USAGE.md` for what is counted).

use super::index::{FileIndex, Index};
use super::json::Json;
use super::store::{SessionEntry, StoresView};
use super::time::{self, DAY_MS, Zone};
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
use std::hash::{Hash, Hasher};
use std::sync::Arc;

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

/// The day range of a query, in local days of its zone, resolved against the clock: where each
/// local day starts (in UTC milliseconds) and the zone's offsets across it, so that a record's
/// day and hour are found without a time-zone lookup per record.
#[derive(Debug, Clone)]
pub struct Range {
    pub start_day: i64,
    pub end_day: i64,
    pub zone: Zone,
    /// Where each local day of the range starts, and where the range ends: `days() + 1`
    /// instants, increasing.
    starts: Vec<i64>,
    /// `(from, offset)` across the range (see [`Zone::offsets`]).
    offsets: Vec<(i64, i64)>,
}

impl Range {
    /// Local days `start_day..=end_day` of `zone`.
    pub fn new(start_day: i64, end_day: i64, zone: Zone) -> Result<Range, RpcError> {
        let starts = (start_day..=end_day + 1)
            .map(|d| zone.day_start(d))
            .collect::<Option<Vec<i64>>>()
            .filter(|s| s.windows(2).all(|w| w[0] < w[1]))
            .ok_or_else(|| {
                RpcError::invalid(
                    "invalid params: a day of the range does not exist in the time zone",
                )
            })?;
        let offsets = zone.offsets(starts[0], starts[starts.len() - 1]);
        Ok(Range {
            start_day,
            end_day,
            zone,
            starts,
            offsets,
        })
    }

    /// `[start, end)` in ms.
    pub fn bounds(&self) -> (i64, i64) {
        (self.starts[0], self.starts[self.starts.len() - 1])
    }

    pub fn contains(&self, ts: i64) -> bool {
        let (lo, hi) = self.bounds();
        ts >= lo && ts < hi
    }

    /// The zone's offset at `ts` (a time in the range).
    pub fn offset_at(&self, ts: i64) -> i64 {
        match self.offsets.as_slice() {
            [(_, o)] => *o,
            segs => segs[segs.partition_point(|s| s.0 <= ts).saturating_sub(1)].1,
        }
    }

    /// The local day of `ts` (a time in the range), as an index from the range's first day.
    pub fn day_index(&self, ts: i64) -> usize {
        let day = time::day_of(ts, self.offset_at(ts)) - self.start_day;
        let i = day.clamp(0, self.days() - 1) as usize;
        // Where the zone's clock went back across midnight, the instants of a day are not
        // contiguous; the day boundaries decide.
        if ts >= self.starts[i] && ts < self.starts[i + 1] {
            i
        } else {
            self.starts
                .partition_point(|&s| s <= ts)
                .clamp(1, self.starts.len() - 1)
                - 1
        }
    }

    /// The local day of `ts` (a time in the range).
    pub fn day(&self, ts: i64) -> i64 {
        self.start_day + self.day_index(ts) as i64
    }

    /// `[start, end)` of local day `day` of the range, in ms.
    pub fn day_window(&self, day: i64) -> (i64, i64) {
        let i = (day - self.start_day).clamp(0, self.days() - 1) as usize;
        (self.starts[i], self.starts[i + 1])
    }

    /// Where the local hour holding `ts` starts, in ms.
    pub fn hour_start(&self, ts: i64) -> i64 {
        let off = self.offset_at(ts);
        let local = ts + off;
        local - local.rem_euclid(time::HOUR_MS) - off
    }

    pub fn days(&self) -> i64 {
        self.end_day - self.start_day + 1
    }
}

/// A query's day range as asked for, before it is resolved against the clock (what is not
/// given defaults to the last days up to today). `api::sessions` builds it from the params.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSpec {
    /// `startDate`, as a day number.
    pub start_day: Option<i64>,
    /// `endDate`, as a day number.
    pub end_day: Option<i64>,
    /// `days`, at least 1: the length of the range when `startDate` is not given.
    pub days: Option<i64>,
    /// Where local days are reckoned (`mode`, `timeZone`, `utcOffset`).
    pub zone: Zone,
}

/// The longest range a query covers, in days (about ten years).
pub const MAX_DAYS: i64 = 3660;

impl RangeSpec {
    /// The range at `now_ms`: it ends on `endDate` (today by default) and starts on
    /// `startDate`, or `days` (by default `default_days`) days before its end, that day
    /// included.
    pub fn resolve(&self, now_ms: i64, default_days: i64) -> Result<Range, RpcError> {
        let today = self.zone.day_of(now_ms);
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
        Range::new(start_day, end_day, self.zone.clone())
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

/// How `sessions.usage` groups transcripts into rows (`groupBy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Grouping {
    /// A row per session id: its live transcript and its archives.
    #[default]
    Instance,
    /// A row per session key: also the earlier sessions its entry lists in
    /// `usageFamilySessionIds` (those a reset replaced).
    Family,
}

/// The one creator keel knows: it does not record who created a session, so every session is
/// OpenClaw's "unknown" creator (shown as "Unattributed").
pub const UNKNOWN_CREATOR: &str = r#"["unknown"]"#;

/// `sessions.usage`: usage by session in a range, the most recently updated first, a page at
/// a time, with aggregates over every matching session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub range: RangeSpec,
    /// Only the session with this key (in the agent's store, if `agent` is given); a session
    /// without an entry is `agent:<agentId>:<sessionId>`.
    pub key: Option<String>,
    /// Only this agent's sessions.
    pub agent: Option<String>,
    pub limit: usize,
    /// Sessions of the page before this one (`nextCursor` of the previous answer).
    pub cursor: usize,
    pub grouping: Grouping,
    /// Only sessions of this creator (`creatorKey`).
    pub creator: Option<String>,
}

/// `usage.cost`: usage by day in a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostQuery {
    pub range: RangeSpec,
    /// Only this agent's usage.
    pub agent: Option<AgentId>,
}

/// One session, as the Usage page's session detail names it: a key, and the agent and session
/// id the page knows for it (both optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRef {
    pub key: String,
    pub agent: Option<String>,
    pub session_id: Option<String>,
}

/// `sessions.usage.logs`: a session's last messages, for the session detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsQuery {
    pub session: SessionRef,
    pub limit: usize,
}

/// A usage method with its params read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    List(ListQuery),
    Usage(UsageQuery),
    Cost(CostQuery),
    /// `sessions.usage.timeseries`.
    Timeseries(SessionRef),
    Logs(LogsQuery),
}

impl Query {
    /// The method's name, for the log.
    pub fn method(&self) -> &'static str {
        match self {
            Query::List(_) => "sessions.list",
            Query::Usage(_) => "sessions.usage",
            Query::Cost(_) => "usage.cost",
            Query::Timeseries(_) => "sessions.usage.timeseries",
            Query::Logs(_) => "sessions.usage.logs",
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

/// One local hour of one session: where it starts, its first record, its messages (and how
/// many failed) and its tokens. The Usage page places activity by hour of day and weekday in
/// the zone it asked in; a local hour is the finest grain it shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HourAcc {
    start: i64,
    first: i64,
    msgs: u32,
    errors: u32,
    tokens: u64,
}

/// One session's usage in the range. Days, hours, models and tools are small vectors; records
/// arrive in time order, so the day and hour just used are almost always the ones needed next
/// (no division, no search). Session totals are summed from the days at the end.
#[derive(Clone)]
struct SessionAcc {
    totals: Totals,
    messages: Messages,
    first: i64,
    last: i64,
    /// (model id, messages with usage, totals).
    models: Vec<(u32, u64, Totals)>,
    days: Vec<DayAcc>,
    hours: Vec<HourAcc>,
    /// (tool name id, calls).
    tools: Vec<(u32, u64)>,
    hot: usize,
    /// The hot day's window, in ms.
    hot_window: (i64, i64),
    hot_hour: usize,
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
            hours: Vec::new(),
            tools: Vec::new(),
            hot: 0,
            hot_window: (0, 0),
            hot_hour: 0,
        }
    }
}

fn count_tool(tools: &mut Vec<(u32, u64)>, name: u32, n: u64) {
    match tools.iter_mut().find(|t| t.0 == name) {
        Some(t) => t.1 += n,
        None => tools.push((name, n)),
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
            self.hot_window = range.day_window(day);
        }
        &mut self.days[self.hot]
    }

    fn hour(&mut self, ts: i64, range: &Range) -> &mut HourAcc {
        let start = range.hour_start(ts);
        if self
            .hours
            .get(self.hot_hour)
            .is_none_or(|h| h.start != start)
        {
            self.hot_hour = match self.hours.iter().rposition(|h| h.start == start) {
                Some(i) => i,
                None => {
                    self.hours.push(HourAcc {
                        start,
                        first: ts,
                        msgs: 0,
                        errors: 0,
                        tokens: 0,
                    });
                    self.hours.len() - 1
                }
            };
        }
        let h = &mut self.hours[self.hot_hour];
        h.first = h.first.min(ts);
        h
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
    fn add_file(&mut self, f: &FileIndex, range: &Range, prices: &[Option<ModelPrice>]) {
        let (lo, hi) = range.bounds();
        if f.span.1 < lo || f.span.0 >= hi {
            return;
        }
        let inside = f.span.0 >= lo && f.span.1 < hi;
        let within = |ts: i64| inside || (ts >= lo && ts < hi);
        for m in &f.msgs {
            if within(m.ts) {
                self.day(m.ts, range).msgs.add_rec(m.kind, m.tool_calls);
                let h = self.hour(m.ts, range);
                h.msgs += 1;
                h.errors += u32::from(m.kind & kind::ERROR != 0);
                self.first = self.first.min(m.ts);
                self.last = self.last.max(m.ts);
            }
        }
        for u in &f.usage {
            if within(u.ts) {
                let price = prices.get(u.model as usize).and_then(Option::as_ref);
                self.day(u.ts, range).totals.add_usage(u, price);
                self.hour(u.ts, range).tokens += u.tokens[4];
                let m = self.model(u.model);
                m.1 += 1;
                m.2.add_usage(u, price);
                self.first = self.first.min(u.ts);
                self.last = self.last.max(u.ts);
            }
        }
        for t in &f.tools {
            if within(t.ts) {
                count_tool(&mut self.tools, t.name, 1);
            }
        }
    }

    /// Adds a file's cached contribution.
    fn add_agg(&mut self, a: &FileAgg) {
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
        for h in &a.hours {
            match self.hours.iter_mut().rfind(|x| x.start == h.start) {
                Some(x) => {
                    x.first = x.first.min(h.first);
                    x.msgs += h.msgs;
                    x.errors += h.errors;
                    x.tokens += h.tokens;
                }
                None => self.hours.push(*h),
            }
        }
        for (m, count, t) in &a.models {
            let e = self.model(*m);
            e.1 += count;
            e.2.add(t);
        }
        self.first = self.first.min(a.first);
        self.last = self.last.max(a.last);
        for &(name, c) in &a.tools {
            count_tool(&mut self.tools, name, c);
        }
    }

    /// Sorts the days and hours and sums the days into the session's totals.
    fn finish(&mut self) {
        self.days.sort_by_key(|d| d.day);
        self.hours.sort_by_key(|h| h.start);
        for d in &self.days {
            self.totals.add(&d.totals);
            self.messages.add(&d.msgs);
        }
    }
}

/// Which files a query looks at.
struct Filter<'a> {
    agent: Option<&'a str>,
    /// (agent, session id of the row) of a requested key.
    session: Option<(String, String)>,
    grouping: Grouping,
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
    hours: Vec<HourAcc>,
    models: Vec<(u32, u64, Totals)>,
    first: i64,
    last: i64,
    tools: Vec<(u32, u64)>,
}

/// What a range's per-file results are keyed by: its bounds, its zone, and the prices.
type CacheKey = (i64, i64, Zone, usize);

/// Results per file for one range (the last one asked for), and the rows of
/// `sessions.usage` computed from them.
#[derive(Default)]
pub struct FileCache {
    key: Option<CacheKey>,
    files: HashMap<std::path::PathBuf, ((u64, u64), FileAgg)>,
    rows: RowMemo,
}

/// The rows of `sessions.usage` as last computed, for one range and one grouping: each
/// row's accumulation and its JSON, with a signature of everything they were computed from
/// (its files and their versions, what its entry says). A row whose signature is unchanged is
/// neither summed again nor written again: after one transcript grew, the Usage page's answer
/// of a thousand rows recomputes one of them.
#[derive(Default)]
struct RowMemo {
    grouping: Option<Grouping>,
    /// By [`RowMemo::id`], already a hash: not hashed again.
    rows: HashMap<u64, Row, std::hash::BuildHasherDefault<IdHasher>>,
    /// Calls that used the memo.
    calls: u64,
}

struct Row {
    agent: Box<str>,
    session_id: Box<str>,
    sig: u64,
    acc: Arc<SessionAcc>,
    /// The row as `sessions.usage` writes it, once written; shared with the calls that copy
    /// it into their answers.
    json: Option<Arc<[u8]>>,
    /// The call that last used it (rows no call uses any more are dropped).
    seen: u64,
}

impl RowMemo {
    fn id(agent: &str, session_id: &str) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (agent, session_id).hash(&mut h);
        h.finish()
    }

    /// The row of `s` if it was computed from what `s` is computed from.
    fn get_mut(&mut self, s: &Session<'_>) -> Option<&mut Row> {
        self.rows
            .get_mut(&s.memo_id)
            .filter(|r| r.sig == s.sig && &*r.agent == s.agent && &*r.session_id == s.session_id)
    }
}

/// The hasher of maps whose keys are hashes already: the key as it is.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed with it; anything else still gets a usable value.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl FileCache {
    /// Files with results kept.
    pub fn files_kept(&self) -> usize {
        self.files.len()
    }
}

fn cache_key(range: &Range, prices_version: usize) -> Option<CacheKey> {
    let (lo, hi) = range.bounds();
    Some((lo, hi, range.zone.clone(), prices_version))
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
    let key = cache_key(range, prices_version);
    let mut c = lock(cache);
    if c.key != key {
        c.key = key;
        c.files.clear();
    }
    for (rel, f) in &index.files {
        let version = (f.ident.ino, f.offset);
        if c.files.get(rel).is_none_or(|e| e.0 != version) {
            c.files
                .insert(rel.clone(), (version, FileAgg::compute(f, range, &table)));
        }
    }
}

impl FileAgg {
    fn compute(f: &FileIndex, range: &Range, prices: &[Option<ModelPrice>]) -> FileAgg {
        let mut acc = SessionAcc::default();
        acc.add_file(f, range, prices);
        acc.days.sort_by_key(|d| d.day);
        acc.hours.sort_by_key(|h| h.start);
        FileAgg {
            days: acc.days,
            hours: acc.hours,
            models: acc.models,
            first: acc.first,
            last: acc.last,
            tools: acc.tools,
        }
    }
}

/// What a computation covered, for its log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub sessions: Option<usize>,
    /// Rows of `sessions.usage` written as kept from an earlier call, and written anew.
    pub rows: Option<(usize, usize)>,
}

/// One row of `sessions.usage`: a session (or, grouped by family, a session key).
struct Session<'a> {
    agent: &'a str,
    /// The row's session id (for a family, its current one).
    session_id: &'a str,
    entry: Option<&'a SessionEntry>,
    /// The newest modification time of the row's transcripts, in ms.
    mtime: i64,
    /// Shared with the kept row (see [`RowMemo`]).
    acc: Arc<SessionAcc>,
    /// What the row is computed from, hashed (see [`RowMemo`]): its files and their
    /// versions. The entry's part is added once all files are seen.
    sig: u64,
    /// The row's files, while they are gathered.
    files: Vec<(&'a std::path::PathBuf, &'a FileIndex)>,
    /// Its key in [`RowMemo`] (`RowMemo::id`).
    memo_id: u64,
    /// Its JSON as kept from an earlier call, if it is.
    json: Option<Arc<[u8]>>,
}

impl Session<'_> {
    /// OpenClaw's rule: the entry's key, or `agent:<agentId>:<sessionId>` for a session that
    /// has transcripts but no entry (a deleted one, an archive a reset left behind).
    fn key(&self) -> std::borrow::Cow<'_, str> {
        match self.entry {
            Some(e) => std::borrow::Cow::Borrowed(e.key.as_str()),
            None => std::borrow::Cow::Owned(format!("agent:{}:{}", self.agent, self.session_id)),
        }
    }

    /// When the session was last updated: its entry's `updatedAt`, else when its newest
    /// transcript was last written (OpenClaw's rule).
    fn updated_at(&self) -> i64 {
        self.entry.and_then(|e| e.updated_at).unwrap_or(self.mtime)
    }
}

/// Entries that own earlier sessions (`usageFamilySessionIds`): (agent, earlier session id) →
/// the entry, for session ids that are not themselves an entry's current session. Where two
/// entries claim one, the most recently updated wins.
fn family_owners(stores: &StoresView) -> HashMap<(&str, &str), &SessionEntry> {
    let mut owners = HashMap::new();
    for s in &stores.snapshots {
        for e in s.entries.iter().filter(|e| !e.family_ids.is_empty()) {
            for id in &e.family_ids {
                if s.by_session_id(id).is_none() {
                    owners
                        .entry((s.agent_id.as_str(), id.as_str()))
                        .or_insert(e);
                }
            }
        }
    }
    owners
}

fn group<'a>(cx: &'a Ctx<'a>, filter: &Filter<'_>, range: &Range) -> Vec<Session<'a>> {
    let prices = prices_by_model(cx.index, cx.prices);
    let owners = match filter.grouping {
        Grouping::Family => family_owners(cx.stores),
        Grouping::Instance => HashMap::new(),
    };
    let mut at: HashMap<(u32, &'a str), usize> = HashMap::with_capacity(cx.index.files.len());
    let mut out: Vec<Session<'a>> = Vec::new();
    let key = cache_key(range, cx.prices_version);
    let mut cache = cx.files.map(|m| lock(m));
    if let Some(c) = cache.as_deref_mut() {
        if c.key != key || c.files.len() > cx.index.files.len() + 256 {
            c.key = key.clone();
            c.files.clear();
            c.rows = RowMemo::default();
        }
        if c.rows.grouping != Some(filter.grouping) {
            c.rows = RowMemo {
                grouping: Some(filter.grouping),
                ..RowMemo::default()
            };
        }
    }
    for (rel, f) in &cx.index.files {
        let agent = cx.index.tables.str(f.agent);
        if filter.agent.is_some_and(|a| a != agent) {
            continue;
        }
        // The row this file counts in, and that row's entry.
        let sid: &'a str = &f.session_id;
        let (row_sid, entry): (&'a str, _) = match cx.stores.entry(agent, sid) {
            Some(e) => (sid, Some(e)),
            None => match owners.get(&(agent, sid)) {
                Some(e) => (e.session_id.as_str(), Some(*e)),
                None => (sid, None),
            },
        };
        if let Some((a, s)) = &filter.session
            && (a != agent || s != row_sid)
        {
            continue;
        }
        let i = *at.entry((f.agent, row_sid)).or_insert_with(|| {
            out.push(Session {
                agent,
                session_id: row_sid,
                entry,
                mtime: i64::MIN,
                acc: Arc::default(),
                sig: 0,
                files: Vec::new(),
                memo_id: RowMemo::id(agent, row_sid),
                json: None,
            });
            out.len() - 1
        });
        let row = &mut out[i];
        row.mtime = row.mtime.max(f.ident.mtime_ns.div_euclid(1_000_000));
        row.files.push((rel, f));
        // Summed, so the order files come in does not matter.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (f.agent, f.sid, f.ident.ino, f.offset).hash(&mut h);
        row.sig = row.sig.wrapping_add(h.finish());
    }
    match cache.as_deref_mut() {
        Some(c) => {
            c.rows.calls += 1;
            let call = c.rows.calls;
            for s in &mut out {
                s.sig = row_sig(s, &owners, &key, filter.grouping);
                if let Some(r) = c.rows.get_mut(s) {
                    r.seen = call;
                    s.acc = r.acc.clone();
                    s.json = r.json.clone();
                    continue;
                }
                let mut acc = SessionAcc::default();
                for &(rel, f) in &s.files {
                    let version = (f.ident.ino, f.offset);
                    let slot = match c.files.get_mut(rel) {
                        Some(slot) => slot,
                        None => c
                            .files
                            .entry(rel.clone())
                            .or_insert_with(|| ((u64::MAX, 0), FileAgg::default())),
                    };
                    if slot.0 != version {
                        *slot = (version, FileAgg::compute(f, range, &prices));
                    }
                    acc.add_agg(&slot.1);
                }
                acc.finish();
                s.acc = Arc::new(acc);
                let row = Row {
                    agent: s.agent.into(),
                    session_id: s.session_id.into(),
                    sig: s.sig,
                    acc: s.acc.clone(),
                    json: None,
                    seen: call,
                };
                c.rows.rows.insert(s.memo_id, row);
            }
            // Rows of sessions that are gone (only a call that saw every row can tell).
            if filter.agent.is_none() && filter.session.is_none() {
                c.rows.rows.retain(|_, r| r.seen == call);
            }
        }
        None => {
            for s in &mut out {
                let mut acc = SessionAcc::default();
                for &(_, f) in &s.files {
                    acc.add_file(f, range, &prices);
                }
                acc.finish();
                s.acc = Arc::new(acc);
            }
        }
    }
    out.retain(|s| s.acc.active());
    out
}

/// A row's signature (see [`RowMemo`]): its files' part (already in `s.sig`), the range, the
/// grouping, and everything of its entry the row shows.
fn row_sig(
    s: &Session<'_>,
    owners: &HashMap<(&str, &str), &SessionEntry>,
    key: &Option<CacheKey>,
    grouping: Grouping,
) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (s.sig, s.mtime, s.agent, s.session_id, key).hash(&mut h);
    (grouping == Grouping::Family).hash(&mut h);
    if let Some(e) = s.entry {
        (
            &e.key,
            &e.session_id,
            e.updated_at,
            &e.label,
            &e.display_name,
        )
            .hash(&mut h);
        (&e.channel, &e.chat_type, &e.model, &e.model_provider).hash(&mut h);
        for id in &e.family_ids {
            let owned = owners
                .get(&(s.agent, id.as_str()))
                .is_some_and(|o| std::ptr::eq(*o, e));
            (id, owned).hash(&mut h);
        }
    }
    h.finish()
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

/// A cost as answers write it: to a tenth of a nano-dollar. Sums of many f64 costs carry
/// noise in their last digits (`2.1787264500000004`); rounded, they print in half the
/// characters, and the Usage page's answer holds tens of thousands of them.
fn money(v: f64) -> f64 {
    if v.is_finite() && v.abs() < 1e12 {
        (v * 1e10).round() / 1e10
    } else {
        v
    }
}

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
        s.serialize_field("totalCost", &money(self.total_cost))?;
        s.serialize_field("inputCost", &money(self.input_cost))?;
        s.serialize_field("outputCost", &money(self.output_cost))?;
        s.serialize_field("cacheReadCost", &money(self.cache_read_cost))?;
        s.serialize_field("cacheWriteCost", &money(self.cache_write_cost))?;
        s.serialize_field("missingCostEntries", &self.missing_cost_entries)
    }
}

impl Serialize for Totals {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut s = ser.serialize_struct("Totals", Self::FIELDS)?;
        self.write(&mut s)?;
        s.end()
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

/// Sessions active on exactly these days, for the creators panel's day filter.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Activity<'a> {
    dates: Vec<&'a str>,
    session_count: usize,
}

/// A creator's usage (`aggregates.byCreator`); keel's one creator has no `actor`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Creator<'a> {
    key: &'static str,
    totals: Totals,
    session_count: usize,
    daily: Vec<Dated<'a, Totals>>,
    session_activity: Vec<Activity<'a>>,
}

#[derive(Serialize)]
struct CreatorOption {
    key: &'static str,
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
    by_creator: Vec<Creator<'a>>,
    daily: Vec<Day<'a>>,
    cost_daily: Vec<Dated<'a, Totals>>,
}

fn to_payload<T: Serialize>(v: &T) -> Result<Payload, RpcError> {
    serde_json::to_string(v).map(Payload::Raw).map_err(|e| {
        RpcError::new(
            crate::error::Code::Internal,
            format!("cannot serialize the answer: {e}"),
        )
    })
}

/// The size of the last `sessions.usage` answer: the next one is written into a buffer that
/// size (a tenth more), not one that doubles its way up through copies of megabytes.
static LAST_USAGE_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The agent and session id a key names: an entry's key (in `agent`'s store if given), or
/// `agent:<agentId>:<sessionId>` of a session that has transcripts and no entry.
fn resolve_key(cx: &Ctx<'_>, agent: Option<&str>, key: &str) -> Option<(String, String)> {
    let found = super::detail::store_entry(cx.stores, agent, key);
    if found.is_some() {
        return found;
    }
    let (a, sid) = key.strip_prefix("agent:")?.split_once(':')?;
    (agent.is_none_or(|x| x == a)
        && cx
            .index
            .files
            .values()
            .any(|f| *f.session_id == *sid && cx.index.tables.str(f.agent) == a))
    .then(|| (a.to_string(), sid.to_string()))
}

/// `YYYY-MM-DD` of the days a query's answer names, computed once.
struct Dates {
    first: i64,
    text: Vec<String>,
}

impl Dates {
    fn new(first: i64, last: i64) -> Dates {
        Dates {
            first,
            text: (first..=last.max(first)).map(time::format_day).collect(),
        }
    }

    fn get(&self, day: i64) -> &str {
        usize::try_from(day - self.first)
            .ok()
            .and_then(|i| self.text.get(i))
            .map_or("", String::as_str)
    }
}

/// `sessions.usage`.
pub fn sessions_usage(cx: &Ctx<'_>, q: &UsageQuery) -> Result<(Payload, Summary), RpcError> {
    let range = q.range.resolve(cx.now_ms, 30)?;
    let agent = q.agent.as_deref();
    let (limit, cursor) = (q.limit, q.cursor);
    let session = match q.key.as_deref() {
        None => None,
        Some(k) => Some(
            resolve_key(cx, agent, k)
                .ok_or_else(|| RpcError::invalid(format!("no session with key {k:?}")))?,
        ),
    };
    let filter = Filter {
        agent,
        session,
        grouping: q.grouping,
    };
    let mut sessions = group(cx, &filter, &range);
    let creator_options = if sessions.is_empty() {
        Vec::new()
    } else {
        vec![CreatorOption {
            key: UNKNOWN_CREATOR,
        }]
    };
    if q.creator.as_deref().is_some_and(|c| c != UNKNOWN_CREATOR) {
        sessions.clear();
    }
    let index = cx.index;
    let dates = Dates::new(range.start_day, range.end_day);
    let date = |day: i64| dates.get(day);
    let (lo, hi) = range.bounds();
    let utc_dates = Dates::new(time::day_of(lo, 0), time::day_of(hi - 1, 0));

    // Aggregates over every matching session.
    let mut totals = Totals::default();
    let mut messages = Messages::default();
    let mut by_model: Vec<(u64, Totals)> = vec![(0, Totals::default()); index.tables.models.len()];
    let mut by_agent: HashMap<&str, Totals> = HashMap::new();
    let mut by_channel: HashMap<&str, Totals> = HashMap::new();
    let mut tool_counts = vec![0u64; index.tables.strings.len()];
    let mut daily = vec![DayAcc::default(); range.days() as usize];
    let mut activity: HashMap<Vec<i64>, usize> = HashMap::new();
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
        for &(name, c) in &s.acc.tools {
            if let Some(slot) = tool_counts.get_mut(name as usize) {
                *slot += c;
            }
        }
        *activity
            .entry(s.acc.days.iter().map(|d| d.day).collect())
            .or_default() += 1;
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
    let cost_daily = || -> Vec<Dated<'_, Totals>> {
        active
            .iter()
            .map(|d| Dated {
                date: date(d.day),
                inner: &d.totals,
            })
            .collect()
    };
    let by_creator = if sessions.is_empty() {
        Vec::new()
    } else {
        let mut session_activity: Vec<(Vec<i64>, usize)> = activity.into_iter().collect();
        session_activity.sort();
        vec![Creator {
            key: UNKNOWN_CREATOR,
            totals,
            session_count: sessions.len(),
            daily: cost_daily(),
            session_activity: session_activity
                .into_iter()
                .map(|(days, session_count)| Activity {
                    dates: days.iter().map(|&d| date(d)).collect(),
                    session_count,
                })
                .collect(),
        }]
    };
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
        by_creator,
        daily: active
            .iter()
            .map(|d| Day {
                date: date(d.day),
                tokens: d.totals.total_tokens,
                cost: money(d.totals.total_cost),
                messages: d.msgs.total,
                tool_calls: d.msgs.tool_calls,
                errors: d.msgs.errors,
            })
            .collect(),
        cost_daily: cost_daily(),
    };

    // The page of sessions, the most recently updated first (OpenClaw's order: by `updatedAt`,
    // then by when the transcripts were last written).
    let mut order: Vec<(i64, i64, &str, &str, usize)> = sessions
        .iter()
        .enumerate()
        .map(|(i, s)| (s.updated_at(), s.mtime, s.agent, s.session_id, i))
        .collect();
    order.sort_by(|a, b| {
        (b.0, b.1)
            .cmp(&(a.0, a.1))
            .then_with(|| (a.2, a.3).cmp(&(b.2, b.3)))
    });
    let total = sessions.len();
    let owners = match q.grouping {
        Grouping::Family => family_owners(cx.stores),
        Grouping::Instance => HashMap::new(),
    };
    let page = &order[cursor.min(total)..(cursor.saturating_add(limit)).min(total)];
    let next = cursor + page.len();

    // Written by hand (see `json`): the rows are nearly all of the answer.
    let hint = LAST_USAGE_BYTES.load(std::sync::atomic::Ordering::Relaxed);
    let mut j = Json::with_capacity(hint + hint / 10 + 4096);
    j.raw(b"{\"updatedAt\":");
    j.i64(cx.now_ms);
    j.raw(b",\"startDate\":");
    j.str(&time::format_day(range.start_day));
    j.raw(b",\"endDate\":");
    j.str(&time::format_day(range.end_day));
    j.raw(b",\"sessions\":[");
    let mut first = true;
    let rows = Rows {
        index,
        grouping: q.grouping,
        owners: &owners,
        dates: &dates,
        utc_dates: &utc_dates,
        range: &range,
    };
    // Rows computed before from the same inputs are copied as they were written (`group`
    // found them); the others are written, and kept for the next call.
    let mut kept_rows = 0;
    let mut written: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    for o in page {
        j.sep(&mut first);
        let s = &sessions[o.4];
        match &s.json {
            Some(json) => {
                kept_rows += 1;
                j.raw(json);
            }
            None => {
                let at = j.buf.len();
                rows.write(&mut j, s);
                written.push((o.4, at..j.buf.len()));
            }
        }
    }
    if let Some(m) = cx.files
        && !written.is_empty()
    {
        let mut c = lock(m);
        for (i, span) in written {
            if let Some(r) = c.rows.get_mut(&sessions[i]) {
                r.json = Some(Arc::from(&j.buf[span]));
            }
        }
    }
    let serialized = (|| {
        j.raw(b"],\"totals\":");
        j.serde(&totals)?;
        j.raw(b",\"aggregates\":");
        j.serde(&aggregates)?;
        j.raw(b",\"creatorOptions\":");
        j.serde(&creator_options)?;
        if next < total {
            j.raw(b",\"nextCursor\":");
            j.str(&next.to_string());
        }
        j.raw(b",\"cacheStatus\":");
        j.serde(&cx.cache.to_json())?;
        j.raw(b"}");
        Ok::<(), serde_json::Error>(())
    })();
    let fail = |e: String| {
        RpcError::new(
            crate::error::Code::Internal,
            format!("cannot serialize the answer: {e}"),
        )
    };
    serialized.map_err(|e| fail(e.to_string()))?;
    LAST_USAGE_BYTES.store(j.buf.len(), std::sync::atomic::Ordering::Relaxed);
    let text = String::from_utf8(j.buf).map_err(|e| fail(e.to_string()))?;
    Ok((
        Payload::Raw(text),
        Summary {
            sessions: Some(total),
            rows: Some((kept_rows, page.len() - kept_rows)),
        },
    ))
}

/// Writes the rows of `sessions.usage` (see [`super::json`]): everything the Usage page reads
/// of a session, in OpenClaw's shapes, and nothing it does not read.
struct Rows<'a> {
    index: &'a Index,
    grouping: Grouping,
    owners: &'a HashMap<(&'a str, &'a str), &'a SessionEntry>,
    dates: &'a Dates,
    utc_dates: &'a Dates,
    range: &'a Range,
}

/// The fields of [`Totals`], inline: `"input":…,…,"missingCostEntries":…`.
fn totals_fields(j: &mut Json, t: &Totals) {
    j.raw(b"\"input\":");
    j.u64(t.input);
    j.raw(b",\"output\":");
    j.u64(t.output);
    j.raw(b",\"cacheRead\":");
    j.u64(t.cache_read);
    j.raw(b",\"cacheWrite\":");
    j.u64(t.cache_write);
    j.raw(b",\"totalTokens\":");
    j.u64(t.total_tokens);
    j.raw(b",\"totalCost\":");
    j.money(t.total_cost);
    j.raw(b",\"inputCost\":");
    j.money(t.input_cost);
    j.raw(b",\"outputCost\":");
    j.money(t.output_cost);
    j.raw(b",\"cacheReadCost\":");
    j.money(t.cache_read_cost);
    j.raw(b",\"cacheWriteCost\":");
    j.money(t.cache_write_cost);
    j.raw(b",\"missingCostEntries\":");
    j.u64(t.missing_cost_entries);
}

/// `"name":"value"` after a comma, if there is a value.
fn opt_str(j: &mut Json, key: &[u8], v: Option<&str>) {
    if let Some(v) = v {
        j.raw(key);
        j.str(v);
    }
}

/// `"key":123` or `"key":null`.
fn opt_i64(j: &mut Json, key: &[u8], v: Option<i64>) {
    j.raw(key);
    match v {
        Some(v) => j.i64(v),
        None => j.raw(b"null"),
    }
}

impl Rows<'_> {
    fn write(&self, j: &mut Json, s: &Session<'_>) {
        let acc = &s.acc;
        let e = s.entry;
        j.raw(b"{\"key\":");
        j.str(&s.key());
        opt_str(
            j,
            b",\"label\":",
            e.and_then(|e| e.label.as_deref().or(e.display_name.as_deref())),
        );
        j.raw(b",\"sessionId\":");
        j.str(s.session_id);
        j.raw(b",\"updatedAt\":");
        j.i64(s.updated_at());
        j.raw(b",\"agentId\":");
        j.str(s.agent);
        // Grouped by family, a key's row also counts the earlier sessions its entry owns: the
        // page shows how many. (OpenClaw also sends `sessionFamilyKey`, `currentSessionId` and
        // `historicalInstanceCount`, which the page does not read.)
        match e.filter(|_| self.grouping == Grouping::Family) {
            Some(e) => {
                j.raw(b",\"scope\":\"family\",\"includedSessionIds\":[");
                j.str(&e.session_id);
                for id in &e.family_ids {
                    let owned = self
                        .owners
                        .get(&(s.agent, id.as_str()))
                        .is_some_and(|o| std::ptr::eq(*o, e));
                    if owned {
                        j.raw(b",");
                        j.str(id);
                    }
                }
                j.raw(b"]");
            }
            None => j.raw(b",\"scope\":\"instance\""),
        }
        opt_str(j, b",\"channel\":", e.and_then(|e| e.channel.as_deref()));
        opt_str(j, b",\"chatType\":", e.and_then(|e| e.chat_type.as_deref()));
        opt_str(j, b",\"model\":", e.and_then(|e| e.model.as_deref()));
        opt_str(
            j,
            b",\"modelProvider\":",
            e.and_then(|e| e.model_provider.as_deref()),
        );
        if e.is_none() {
            j.raw(b",\"deleted\":true");
        }
        j.raw(b",\"usage\":{");
        totals_fields(j, &acc.totals);
        let (first, last) = acc.activity();
        opt_i64(j, b",\"firstActivity\":", first);
        opt_i64(j, b",\"lastActivity\":", last);
        opt_i64(
            j,
            b",\"durationMs\":",
            acc.active().then(|| acc.last - acc.first),
        );
        j.raw(b",\"activityDates\":[");
        let mut f = true;
        for d in &acc.days {
            j.sep(&mut f);
            j.str(self.dates.get(d.day));
        }
        j.raw(b"],\"messageCounts\":{\"total\":");
        let m = &acc.messages;
        j.u64(m.total);
        j.raw(b",\"user\":");
        j.u64(m.user);
        j.raw(b",\"assistant\":");
        j.u64(m.assistant);
        j.raw(b",\"toolCalls\":");
        j.u64(m.tool_calls);
        j.raw(b",\"toolResults\":");
        j.u64(m.tool_results);
        j.raw(b",\"errors\":");
        j.u64(m.errors);
        j.raw(b"}");
        if !acc.tools.is_empty() {
            let mut tools: Vec<(u64, &str)> = acc
                .tools
                .iter()
                .map(|&(name, count)| (count, self.index.tables.str(name)))
                .collect();
            tools.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
            j.raw(b",\"toolUsage\":{\"totalCalls\":");
            j.u64(tools.iter().map(|t| t.0).sum());
            j.raw(b",\"uniqueTools\":");
            j.u64(tools.len() as u64);
            j.raw(b",\"tools\":[");
            let mut f = true;
            for (count, name) in tools {
                j.sep(&mut f);
                j.raw(b"{\"name\":");
                j.str(name);
                j.raw(b",\"count\":");
                j.u64(count);
                j.raw(b"}");
            }
            j.raw(b"]}");
        }
        j.raw(b",\"modelUsage\":[");
        let mut f = true;
        for (id, count, t) in &acc.models {
            let (provider, model) = self.index.tables.model_names(*id);
            j.sep(&mut f);
            j.raw(b"{\"provider\":");
            j.str(provider);
            j.raw(b",\"model\":");
            j.str(model);
            j.raw(b",\"count\":");
            j.u64(*count);
            j.raw(b",\"totals\":{");
            totals_fields(j, t);
            j.raw(b"}}");
        }
        // A day's full totals: the page sums them into its daily charts when it filters.
        j.raw(b"],\"dailyBreakdown\":[");
        let mut f = true;
        for d in &acc.days {
            j.sep(&mut f);
            j.raw(b"{\"date\":");
            j.str(self.dates.get(d.day));
            j.raw(b",\"tokens\":");
            j.u64(d.totals.total_tokens);
            j.raw(b",\"cost\":");
            j.money(d.totals.total_cost);
            j.raw(b",");
            totals_fields(j, &d.totals);
            j.raw(b"}");
        }
        // What the page reads of a day's messages.
        j.raw(b"],\"dailyMessageCounts\":[");
        let mut f = true;
        for d in &acc.days {
            j.sep(&mut f);
            j.raw(b"{\"date\":");
            j.str(self.dates.get(d.day));
            j.raw(b",\"total\":");
            j.u64(d.msgs.total);
            j.raw(b",\"toolCalls\":");
            j.u64(d.msgs.tool_calls);
            j.raw(b",\"errors\":");
            j.u64(d.msgs.errors);
            j.raw(b"}");
        }
        j.raw(b"]");
        self.hours(j, &acc.hours);
        j.raw(b"}}");
    }

    /// The session's local hours merged to what the page reads of them: messages (and failed
    /// ones) by local hour of day, for its error rate by hour; tokens by local weekday and
    /// hour, for its activity chart and its hour filter. Each entry is placed at the UTC
    /// quarter-hour of its first record, which the page maps back to that local hour (and
    /// weekday) in the zone it asked in. OpenClaw sends every UTC quarter-hour of every
    /// session: at the incident's size, tens of megabytes. A session active within one local
    /// hour gets none: the page's own placement (between its first and last activity) is
    /// then exact.
    fn hours(&self, j: &mut Json, hours: &[HourAcc]) {
        // All in one local hour: the page places a session without these lists between its
        // first and last activity, which is then exact.
        if hours.len() <= 1 {
            return;
        }
        let mut by_hour: [Option<HourAcc>; 24] = [None; 24];
        let mut by_cell: [Option<HourAcc>; 168] = [None; 168];
        for h in hours {
            let local = h.start + self.range.offset_at(h.start);
            let hour = local.div_euclid(time::HOUR_MS).rem_euclid(24) as usize;
            let weekday = local.div_euclid(DAY_MS).rem_euclid(7) as usize;
            if h.msgs > 0 {
                merge_hour(&mut by_hour[hour], h);
            }
            if h.tokens > 0 {
                merge_hour(&mut by_cell[weekday * 24 + hour], h);
            }
        }
        let place = |j: &mut Json, ts: i64| {
            j.raw(b"{\"date\":");
            j.str(self.utc_dates.get(ts.div_euclid(DAY_MS)));
            j.raw(b",\"quarterIndex\":");
            j.i64(ts.rem_euclid(DAY_MS) / 900_000);
        };
        let mut msgs: Vec<HourAcc> = by_hour.into_iter().flatten().collect();
        if !msgs.is_empty() {
            msgs.sort_by_key(|h| h.first);
            j.raw(b",\"utcQuarterHourMessageCounts\":[");
            let mut f = true;
            for h in msgs {
                j.sep(&mut f);
                place(j, h.first);
                j.raw(b",\"total\":");
                j.u64(h.msgs.into());
                j.raw(b",\"errors\":");
                j.u64(h.errors.into());
                j.raw(b"}");
            }
            j.raw(b"]");
        }
        let mut tokens: Vec<HourAcc> = by_cell.into_iter().flatten().collect();
        if !tokens.is_empty() {
            tokens.sort_by_key(|h| h.first);
            j.raw(b",\"utcQuarterHourTokenUsage\":[");
            let mut f = true;
            for h in tokens {
                j.sep(&mut f);
                place(j, h.first);
                j.raw(b",\"totalTokens\":");
                j.u64(h.tokens);
                j.raw(b"}");
            }
            j.raw(b"]");
        }
    }
}

fn merge_hour(slot: &mut Option<HourAcc>, h: &HourAcc) {
    match slot {
        Some(x) => {
            x.first = x.first.min(h.first);
            x.msgs += h.msgs;
            x.errors += h.errors;
            x.tokens += h.tokens;
        }
        None => *slot = Some(*h),
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
        // Records are in time order: the day just used is almost always the next one's.
        let mut hot = (0usize, i64::MAX, i64::MIN);
        for u in &f.usage {
            if inside || (u.ts >= lo && u.ts < hi) {
                if u.ts < hot.1 || u.ts >= hot.2 {
                    let i = range.day_index(u.ts);
                    let (a, b) = range.day_window(range.start_day + i as i64);
                    hot = (i, a, b);
                }
                days[hot.0].add_usage(u, prices.get(u.model as usize).and_then(Option::as_ref));
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
    Ok((to_payload(&answer)?, Summary::default()))
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
