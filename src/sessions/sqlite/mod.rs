//! OpenClaw's per-agent SQLite session store (OpenClaw 2026.7 and later), read live and
//! never disturbed: `agents/<agentId>/agent/openclaw-agent.sqlite`, WAL mode, agent schema
//! version [`SCHEMA_VERSION`].
//!
//! - Connections are read-only (`SQLITE_OPEN_READONLY`, `PRAGMA query_only`), wait up to
//!   [`BUSY_TIMEOUT`] for a lock, never checkpoint (not even on close:
//!   `SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`) and never write. Every read is one short statement or
//!   one short transaction, so keel never holds a read snapshot that would keep OpenClaw's
//!   WAL from being truncated.
//! - A database whose `schema_meta.schema_version` is not [`SCHEMA_VERSION`] is refused for
//!   its agent, with the reason kept for the log, `status`, `/readyz` and `/metrics`.
//! - Sessions come from `session_nodes` (`entry_json` is the old `sessions.json` entry, with
//!   `current_session_id` as its `sessionId`); transcript lines from `transcript_events`
//!   (`event_json`, or `event_zstd` decoded), `session_transcript_archives` (reset and deleted
//!   transcripts, identity or zstd) and `session_transcript_cold_archives` (a blob, or a
//!   `.jsonl.zst` file in the agent's `sessions/cold/`). Each row is one former JSONL line,
//!   so the transcript parser and the usage index take them unchanged.
//! - In the usage index each source is one entry under a virtual path
//!   ([`Source::rel`]): for `transcript_events` the "offset" is the next `seq` to read and
//!   the "size" one past the largest `seq`; an archive is read whole.
//!
//! All of this runs on cpu workers: the reactor never calls in here.

use super::index::{FileIdent, FileKind, Seen};
use super::transcript::Parsed;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// The agent schema version keel reads (OpenClaw 2026.9.6).
pub const SCHEMA_VERSION: i64 = 23;
/// The database file's name, in `agents/<agentId>/agent/`.
pub const DB_FILE: &str = "openclaw-agent.sqlite";
/// How long a read waits for a lock before it gives up (skipped, counted, tried again at the
/// next refresh).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows read per statement (each statement is its own short read transaction).
const BATCH_ROWS: i64 = 1024;
/// OpenClaw's own bound on one stored event (`event_utf8_bytes`, `length(event_zstd)`).
const MAX_EVENT: usize = 4 << 20;
/// Page cache per connection, in KiB.
const CACHE_KIB: i64 = 128;
/// The largest decoded archive keel reads; a larger one is skipped and counted.
const MAX_ARCHIVE: usize = 512 << 20;

/// The database of an agent.
pub fn db_path(state_dir: &Path, agent: &str) -> PathBuf {
    super::store::agents_dir(state_dir)
        .join(agent)
        .join("agent")
        .join(DB_FILE)
}

/// Whether an agent's sessions live in a SQLite store.
pub fn has_db(state_dir: &Path, agent: &str) -> bool {
    db_path(state_dir, agent).is_file()
}

/// Why rows or a whole database were skipped; each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// Not a database, or damaged (`SQLITE_CORRUPT`, `SQLITE_NOTADB`, …).
    Corrupt,
    /// A schema version keel does not read.
    Schema,
    /// Still locked after [`BUSY_TIMEOUT`].
    Busy,
    /// The file went away while keel had it open.
    Deleted,
    /// A compressed event or archive that does not decode (truncated, damaged, too large).
    Zstd,
    /// An event that is not a JSON object of the transcript's shape.
    NotJson,
    /// A session entry (`entry_json`) that is not a JSON object.
    Entry,
    /// A cold archive file that cannot be read.
    ColdFile,
}

impl Skip {
    pub const ALL: [Skip; 8] = [
        Skip::Corrupt,
        Skip::Schema,
        Skip::Busy,
        Skip::Deleted,
        Skip::Zstd,
        Skip::NotJson,
        Skip::Entry,
        Skip::ColdFile,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Corrupt => "corrupt",
            Skip::Schema => "schema",
            Skip::Busy => "busy",
            Skip::Deleted => "deleted",
            Skip::Zstd => "zstd",
            Skip::NotJson => "not_json",
            Skip::Entry => "entry",
            Skip::ColdFile => "cold_file",
        }
    }
}

/// Counts of skipped things by reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skips(pub [u64; 8]);

impl Skips {
    pub fn add(&mut self, s: Skip, n: u64) {
        self.0[s as usize] += n;
    }
    pub fn get(&self, s: Skip) -> u64 {
        self.0[s as usize]
    }
    pub fn merge(&mut self, o: &Skips) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
    }
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&n| n == 0)
    }
}

/// A failure to read an agent's database, with its reason.
#[derive(Debug, Clone)]
pub struct DbError {
    pub skip: Skip,
    pub message: String,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn classify(e: &rusqlite::Error) -> Skip {
    use rusqlite::ffi::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => Skip::Busy,
        Some(ErrorCode::CannotOpen) => Skip::Deleted,
        _ => Skip::Corrupt,
    }
}

pub fn db_error(path: &Path, e: rusqlite::Error) -> DbError {
    let skip = classify(&e);
    let what = match skip {
        Skip::Busy => format!("still locked after {} s", BUSY_TIMEOUT.as_secs()),
        Skip::Deleted => "cannot be opened".into(),
        _ => "unreadable".into(),
    };
    DbError {
        skip,
        message: format!("{}: {what}: {e}", path.display()),
    }
}

/// Opens an agent database for reading only, and checks its schema version.
pub fn open(path: &Path, busy: Duration) -> Result<Connection, DbError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = (|| {
        let c = Connection::open_with_flags(path, flags)?;
        c.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        c.busy_timeout(busy)?;
        c.pragma_update(None, "query_only", true)?;
        // Reads are sequential and short; SQLite's default 2 MiB page cache per connection
        // (a probe and a few pooled ones per agent) was most of keel's RSS on a 9-agent state.
        c.pragma_update(None, "cache_size", -CACHE_KIB)?;
        Ok(c)
    })()
    .map_err(|e| db_error(path, e))?;
    check_schema(&conn, path)?;
    Ok(conn)
}

fn check_schema(conn: &Connection, path: &Path) -> Result<(), DbError> {
    let has_meta = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_meta'",
            [],
            |_| Ok(()),
        )
        .optional()
        .map_err(|e| db_error(path, e))?
        .is_some();
    if !has_meta {
        return Err(DbError {
            skip: Skip::Schema,
            message: format!(
                "{}: not an OpenClaw agent database (no schema_meta table)",
                path.display()
            ),
        });
    }
    let version: Option<i64> = conn
        .query_row(
            "SELECT schema_version FROM schema_meta WHERE meta_key = 'primary'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| db_error(path, e))?;
    match version {
        Some(SCHEMA_VERSION) => Ok(()),
        other => Err(DbError {
            skip: Skip::Schema,
            message: format!(
                "{}: agent schema version {} is not one keel reads (it reads {SCHEMA_VERSION}, OpenClaw 2026.9); this agent's sessions are not shown",
                path.display(),
                other.map_or_else(|| "(none)".to_string(), |v| v.to_string())
            ),
        }),
    }
}

/// Identity of a database and its WAL: a change in any means something may have been
/// written (or checkpointed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DbIdent {
    pub db: FileIdent,
    pub wal: Option<FileIdent>,
}

/// The database's and its `-wal`'s identity; `None` when the database is not there.
pub fn db_ident(path: &Path) -> Option<DbIdent> {
    let db = FileIdent::of(&std::fs::metadata(path).ok()?);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::fs::metadata(PathBuf::from(wal))
        .ok()
        .map(|m| FileIdent::of(&m));
    Some(DbIdent { db, wal })
}

// ---- Connections ---------------------------------------------------------------------------

/// Open read connections by database path, each with the inode it was opened on; a worker
/// takes one for a read and gives it back. None holds a transaction while it waits here.
static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(Default::default);
/// Database path → (inode it was opened on, connection).
type Pool = HashMap<PathBuf, Vec<(u64, Connection)>>;
/// Connections kept per database.
const POOL_PER_DB: usize = 2;

/// Runs `f` on a read connection to `path` (from the pool, or newly opened), checking first
/// that the database is still the file it was (a replaced or deleted one is reopened or
/// reported).
pub fn with_conn<T>(
    path: &Path,
    busy: Duration,
    f: impl FnOnce(&Connection) -> Result<T, DbError>,
) -> Result<T, DbError> {
    let ino = match std::fs::metadata(path) {
        Ok(m) => m.ino(),
        Err(e) => {
            return Err(DbError {
                skip: Skip::Deleted,
                message: format!("{}: gone: {e}", path.display()),
            });
        }
    };
    let pooled = {
        let mut pool = crate::sync::lock(&POOL);
        let v = pool.entry(path.to_path_buf()).or_default();
        v.retain(|(i, _)| *i == ino);
        v.pop()
    };
    let conn = match pooled {
        Some((_, c)) => c,
        None => open(path, busy)?,
    };
    let out = f(&conn);
    // A connection that saw the file vanish, or a damaged file, is not kept.
    if out.as_ref().is_ok() {
        let mut pool = crate::sync::lock(&POOL);
        let v = pool.entry(path.to_path_buf()).or_default();
        if v.len() < POOL_PER_DB {
            v.push((ino, conn));
        }
    }
    out
}

/// Drops the pooled connections of a database (it is gone or was replaced).
pub fn forget(path: &Path) {
    crate::sync::lock(&POOL).remove(path);
}

// ---- Sources (virtual paths in the usage index) ---------------------------------------------

/// Which rows of an agent database one usage-index entry stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Table {
    /// `transcript_events` of a session.
    Events,
    /// One row of `session_transcript_archives`.
    Archive { generation: String },
    /// The session's row of `session_transcript_cold_archives`.
    Cold,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub agent: String,
    pub session_id: String,
    pub table: Table,
}

/// `%`, `/` and `#` escaped, so a virtual path is one path component and parses back.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => o.push_str("%25"),
            '/' => o.push_str("%2F"),
            '#' => o.push_str("%23"),
            _ => o.push(c),
        }
    }
    o
}

fn unesc(s: &str) -> Option<String> {
    let mut o = String::with_capacity(s.len());
    let mut it = s.split('%');
    o.push_str(it.next()?);
    for part in it {
        let (code, rest) = (part.get(..2)?, part.get(2..)?);
        o.push(match code {
            "25" => '%',
            "2F" => '/',
            "23" => '#',
            _ => return None,
        });
        o.push_str(rest);
    }
    Some(o)
}

const MARK: &str = "#sqlite#";

impl Source {
    /// The path of this source in the usage index, relative to the state directory:
    /// `agents/<agent>/agent/openclaw-agent.sqlite#sqlite#<table>#…`.
    pub fn rel(&self) -> PathBuf {
        let tail = match &self.table {
            Table::Events => format!("events#{}", esc(&self.session_id)),
            Table::Archive { generation } => {
                format!("archive#{}#{}", esc(generation), esc(&self.session_id))
            }
            Table::Cold => format!("cold#{}", esc(&self.session_id)),
        };
        PathBuf::from(format!("agents/{}/agent/{DB_FILE}{MARK}{tail}", self.agent))
    }

    /// The source a usage-index path names, if it is one of a database.
    pub fn parse(rel: &Path) -> Option<Source> {
        let s = rel.to_str()?;
        let (head, tail) = s.split_once(MARK)?;
        let agent = head
            .strip_prefix("agents/")?
            .strip_suffix(&format!("/agent/{DB_FILE}"))?;
        let mut parts = tail.split('#');
        let table = parts.next()?;
        let (table, sid) = match table {
            "events" => (Table::Events, parts.next()?),
            "cold" => (Table::Cold, parts.next()?),
            "archive" => {
                let generation = unesc(parts.next()?)?;
                (Table::Archive { generation }, parts.next()?)
            }
            _ => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Source {
            agent: agent.to_string(),
            session_id: unesc(sid)?,
            table,
        })
    }
}

/// Whether a usage-index path is a database source.
pub fn is_db_rel(rel: &Path) -> bool {
    rel.to_str().is_some_and(|s| s.contains(MARK))
}

/// The prefix every source of an agent's database has.
pub fn agent_prefix(agent: &str) -> String {
    format!("agents/{agent}/agent/{DB_FILE}{MARK}")
}

// ---- What is there (the analogue of a directory scan) ---------------------------------------

/// Every source of one database, as the usage index's [`Seen`] entries. For
/// `transcript_events`: `ident.size` is one past the largest `seq`, `ident.mtime_ns` the row
/// count (fewer rows than were read means the session was rewritten). For an archive: its
/// blob's length and creation time.
pub fn scan(conn: &Connection, agent: &str, ino: u64) -> rusqlite::Result<Listing> {
    let mut out = Vec::new();
    // One listed source: its table's rows as one virtual file (see [`Source::rel`]).
    let seen = |session_id: String, table: Table, kind: FileKind, size: u64, mtime_ns: i64| {
        let src = Source {
            agent: agent.to_string(),
            session_id: session_id.clone(),
            table,
        };
        Seen {
            rel: src.rel(),
            agent: agent.to_string(),
            session_id,
            kind,
            ident: FileIdent {
                ino,
                size,
                mtime_ns,
            },
        }
    };
    let mut names = std::collections::HashSet::new();
    // One transaction, so the three lists agree; it ends before this returns.
    let tx = conn.unchecked_transaction()?;
    {
        let mut st = tx.prepare(
            "SELECT session_id, count(*), max(seq) FROM transcript_events GROUP BY session_id",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let sid: String = r.get(0)?;
            let count: i64 = r.get(1)?;
            let max: i64 = r.get(2)?;
            out.push(seen(
                sid,
                Table::Events,
                FileKind::Live,
                max.saturating_add(1).max(0) as u64,
                count,
            ));
        }
        let mut st = tx.prepare(
            "SELECT session_id, generation, reason, length(archive_blob), created_at, archive_name FROM session_transcript_archives",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let sid: String = r.get(0)?;
            let generation: String = r.get(1)?;
            let reason: String = r.get(2)?;
            let len: i64 = r.get(3)?;
            let created: i64 = r.get(4)?;
            names.insert(r.get::<_, String>(5)?);
            out.push(seen(
                sid,
                Table::Archive { generation },
                if reason == "deleted" {
                    FileKind::Deleted
                } else {
                    FileKind::Reset
                },
                len.max(0) as u64,
                created,
            ));
        }
        let mut st = tx.prepare(
            "SELECT session_id, archive_bytes, last_seq FROM session_transcript_cold_archives",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let sid: String = r.get(0)?;
            let bytes: i64 = r.get(1)?;
            let last: i64 = r.get(2)?;
            out.push(seen(
                sid,
                Table::Cold,
                FileKind::Live,
                bytes.max(0) as u64,
                last,
            ));
        }
    }
    let mut ids = std::collections::HashSet::new();
    {
        let mut st = tx.prepare("SELECT session_id FROM session_windows")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            ids.insert(r.get::<_, String>(0)?);
        }
    }
    ids.extend(out.iter().map(|s| s.session_id.clone()));
    tx.commit()?;
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(Listing {
        seen: out,
        archive_names: names,
        session_ids: ids,
    })
}

/// What [`scan`] found in one database.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listing {
    pub seen: Vec<Seen>,
    /// `archive_name` of every row of `session_transcript_archives`: OpenClaw publishes an
    /// archive as a file of that name in the agent's `sessions/` and keeps the row, so such
    /// a file is the same transcript and is not read again.
    pub archive_names: std::collections::HashSet<String>,
    /// Every session id the database knows (`session_windows`, and any with rows): the
    /// database is the whole record of those, so files of theirs beside it are not read
    /// (OpenClaw 2026.9.6 counts them the same way).
    pub session_ids: std::collections::HashSet<String>,
}

/// The reset and deleted transcript files beside an agent's database (OpenClaw's import
/// leaves them in `sessions/`, and publishes its own archives there) that the database does
/// not cover: `seen` (a file scan) less the published archives and the files of sessions
/// the database knows.
pub fn files_beside(seen: Vec<Seen>, views: &[(String, Option<live::AgentView>)]) -> Vec<Seen> {
    seen.into_iter()
        .filter(|s| {
            let Some(Some(v)) = views.iter().find(|(a, _)| *a == s.agent).map(|(_, v)| v) else {
                return true;
            };
            let name = s.rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !v.listing.archive_names.contains(name)
                && !v.listing.session_ids.contains(&s.session_id)
        })
        .collect()
}

// ---- Sessions -------------------------------------------------------------------------------

/// `session_nodes` as the object of session key → entry that `sessions.json` was:
/// `entry_json`, with `current_session_id` as its `sessionId`, and `updatedAt`, `label` and
/// `displayName` from their columns where the entry has none. Entries that are not JSON
/// objects are skipped and counted.
pub fn session_entries(
    conn: &Connection,
    skips: &mut Skips,
) -> rusqlite::Result<Map<String, Value>> {
    let mut out = Map::new();
    let mut st = conn.prepare(
        "SELECT session_key, current_session_id, entry_json, updated_at, label, display_name FROM session_nodes",
    )?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let key: String = r.get(0)?;
        let sid: String = r.get(1)?;
        let Ok(Value::Object(mut entry)) = serde_json::from_str::<Value>(&r.get::<_, String>(2)?)
        else {
            skips.add(Skip::Entry, 1);
            continue;
        };
        entry.insert("sessionId".into(), Value::String(sid));
        if !entry.get("updatedAt").is_some_and(Value::is_number) {
            entry.insert("updatedAt".into(), Value::from(r.get::<_, i64>(3)?));
        }
        for (col, field) in [(4, "label"), (5, "displayName")] {
            if entry.get(field).is_none_or(Value::is_null)
                && let Some(v) = r.get::<_, Option<String>>(col)?
            {
                entry.insert(field.into(), Value::String(v));
            }
        }
        out.insert(key, Value::Object(entry));
    }
    Ok(out)
}

/// One session entry by key.
pub fn session_entry(conn: &Connection, key: &str) -> rusqlite::Result<Option<Map<String, Value>>> {
    let mut skips = Skips::default();
    // The table is keyed by session_key; reading one row is cheap.
    let mut st = conn.prepare(
        "SELECT session_key, current_session_id, entry_json, updated_at, label, display_name FROM session_nodes WHERE session_key = ?1",
    )?;
    let mut rows = st.query([key])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    let sid: String = r.get(1)?;
    let Ok(Value::Object(mut entry)) = serde_json::from_str::<Value>(&r.get::<_, String>(2)?)
    else {
        skips.add(Skip::Entry, 1);
        return Ok(None);
    };
    entry.insert("sessionId".into(), Value::String(sid));
    if !entry.get("updatedAt").is_some_and(Value::is_number) {
        entry.insert("updatedAt".into(), Value::from(r.get::<_, i64>(3)?));
    }
    Ok(Some(entry))
}

// ---- Transcript lines -----------------------------------------------------------------------

/// Decodes a zstd stream (one or more frames) of at most `limit` bytes.
pub fn unzstd(bytes: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let mut src: &[u8] = bytes;
    let mut out = Vec::new();
    while !src.is_empty() {
        let dec = ruzstd::decoding::StreamingDecoder::new(&mut src)
            .map_err(|e| format!("not a zstd frame: {e}"))?;
        let room = (limit + 1).saturating_sub(out.len()) as u64;
        dec.take(room)
            .read_to_end(&mut out)
            .map_err(|e| format!("damaged zstd data: {e}"))?;
        if out.len() > limit {
            return Err(format!("decodes to more than {limit} bytes"));
        }
    }
    Ok(out)
}

/// One stored event as its JSON text: `event_json`, or `event_zstd` decoded (bounded by
/// OpenClaw's own limit).
fn event_text(json: Option<String>, zstd: Option<Vec<u8>>) -> Result<Vec<u8>, Skip> {
    match (json, zstd) {
        (Some(j), _) => Ok(j.into_bytes()),
        (None, Some(z)) => unzstd(&z, MAX_EVENT).map_err(|_| Skip::Zstd),
        (None, None) => Err(Skip::NotJson),
    }
}

/// Parses one event as one transcript line. JSON has no raw newline inside a string, so
/// one outside (pretty-printed JSON) is whitespace and becomes a space.
fn parse_event(parsed: &mut Parsed, text: &mut [u8], skips: &mut Skips) {
    for b in text.iter_mut() {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    let before = parsed.malformed;
    parsed.line(text);
    if parsed.malformed > before {
        skips.add(Skip::NotJson, 1);
    }
}

/// What a read of one source gave.
#[derive(Debug, Default)]
pub struct Read_ {
    pub parsed: Parsed,
    /// Where the next read starts: the next `seq` for events, the blob's length for an archive.
    pub end: u64,
    /// Bytes of JSON parsed.
    pub bytes: u64,
    pub skips: Skips,
}

/// Why a read stopped.
#[derive(Debug)]
pub enum ReadError {
    Db(DbError),
    Io(io::Error),
    Cancelled,
}

/// Reads a source from `from` (the next `seq` for events; archives are read whole), in
/// batches of short statements, calling `check` between batches.
pub fn read_source(
    state_dir: &Path,
    src: &Source,
    from: u64,
    busy: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<Read_, ReadError> {
    let path = db_path(state_dir, &src.agent);
    let mut out = Read_ {
        end: from,
        ..Read_::default()
    };
    match &src.table {
        Table::Events => loop {
            if !check() {
                return Err(ReadError::Cancelled);
            }
            let next = out.end;
            let got = with_conn(&path, busy, |c| {
                let mut st = c
                    .prepare_cached(
                        "SELECT seq, event_json, event_zstd FROM transcript_events WHERE session_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
                    )
                    .map_err(|e| db_error(&path, e))?;
                let rows = st
                    .query_map(
                        rusqlite::params![src.session_id, next.min(i64::MAX as u64) as i64, BATCH_ROWS],
                        |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, Option<String>>(1)?,
                                r.get::<_, Option<Vec<u8>>>(2)?,
                            ))
                        },
                    )
                    .map_err(|e| db_error(&path, e))?;
                rows.collect::<Result<Vec<_>, _>>()
                    .map_err(|e| db_error(&path, e))
            })
            .map_err(ReadError::Db)?;
            let n = got.len();
            for (seq, json, zstd) in got {
                out.end = seq.saturating_add(1).max(0) as u64;
                match event_text(json, zstd) {
                    Ok(mut text) => {
                        out.bytes += text.len() as u64;
                        parse_event(&mut out.parsed, &mut text, &mut out.skips);
                    }
                    Err(skip) => {
                        // Still one line: the index counts rows read as lines.
                        out.parsed.lines += 1;
                        out.parsed.malformed += 1;
                        out.skips.add(skip, 1);
                    }
                }
            }
            if (n as i64) < BATCH_ROWS {
                return Ok(out);
            }
        },
        Table::Archive { .. } | Table::Cold => {
            let blob = archive_bytes(state_dir, &path, src, busy)?;
            let len = blob.as_ref().map_or(0, |(raw, _)| *raw);
            out.end = len;
            match blob {
                None => {}
                Some((_, Err(skip))) => out.skips.add(skip, 1),
                Some((_, Ok(mut text))) => {
                    if !check() {
                        return Err(ReadError::Cancelled);
                    }
                    if text.last().is_some_and(|&b| b != b'\n') {
                        text.push(b'\n');
                    }
                    out.bytes += text.len() as u64;
                    let before = out.parsed.malformed;
                    out.parsed.lines(&text);
                    out.skips.add(Skip::NotJson, out.parsed.malformed - before);
                }
            }
            Ok(out)
        }
    }
}

/// An archive's stored length and its decoded JSONL (or why it could not be decoded);
/// `None` when the row is gone.
type Archive = Option<(u64, Result<Vec<u8>, Skip>)>;

fn archive_bytes(
    state_dir: &Path,
    path: &Path,
    src: &Source,
    busy: Duration,
) -> Result<Archive, ReadError> {
    match &src.table {
        Table::Archive { generation } => {
            let row = with_conn(path, busy, |c| {
                c.query_row(
                    "SELECT encoding, archive_blob FROM session_transcript_archives WHERE session_id = ?1 AND generation = ?2",
                    [&src.session_id, generation],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)),
                )
                .optional()
                .map_err(|e| db_error(path, e))
            })
            .map_err(ReadError::Db)?;
            Ok(row.map(|(enc, blob)| {
                let raw = blob.len() as u64;
                let text = if enc == "zstd" {
                    unzstd(&blob, MAX_ARCHIVE).map_err(|_| Skip::Zstd)
                } else {
                    Ok(blob)
                };
                (raw, text)
            }))
        }
        Table::Cold => {
            let row = with_conn(path, busy, |c| {
                c.query_row(
                    "SELECT storage, archive_name, archive_blob, archive_bytes FROM session_transcript_cold_archives WHERE session_id = ?1",
                    [&src.session_id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<Vec<u8>>>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    },
                )
                .optional()
                .map_err(|e| db_error(path, e))
            })
            .map_err(ReadError::Db)?;
            let Some((storage, name, blob, bytes)) = row else {
                return Ok(None);
            };
            let raw = bytes.max(0) as u64;
            let blob = match (storage.as_str(), blob) {
                (_, Some(b)) => Ok(b),
                _ => cold_file(state_dir, &src.agent, &name),
            };
            Ok(Some((
                raw,
                blob.and_then(|b| unzstd(&b, MAX_ARCHIVE).map_err(|_| Skip::Zstd)),
            )))
        }
        Table::Events => Ok(None),
    }
}

/// A cold archive kept as a file: `agents/<agent>/sessions/cold/<archive_name>`; a name that
/// is not a plain file name is refused.
fn cold_file(state_dir: &Path, agent: &str, name: &str) -> Result<Vec<u8>, Skip> {
    let dir = super::store::agents_dir(state_dir)
        .join(agent)
        .join("sessions")
        .join("cold");
    let path = crate::ids::file_in(&dir, name, "").map_err(|_| Skip::ColdFile)?;
    let f = std::fs::File::open(path).map_err(|_| Skip::ColdFile)?;
    let mut buf = Vec::new();
    f.take(MAX_ARCHIVE as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|_| Skip::ColdFile)?;
    if buf.len() > MAX_ARCHIVE {
        return Err(Skip::ColdFile);
    }
    Ok(buf)
}

/// A source's lines as JSONL bytes (for the readers that show messages: `chat.history`,
/// `sessions.usage.logs`). Rows that cannot be decoded are left out.
pub fn jsonl(state_dir: &Path, src: &Source, busy: Duration) -> io::Result<Vec<u8>> {
    let path = db_path(state_dir, &src.agent);
    let to_io = |e: DbError| match e.skip {
        Skip::Deleted => io::Error::new(io::ErrorKind::NotFound, e.message),
        _ => io::Error::other(e.message),
    };
    match &src.table {
        Table::Events => {
            let mut out = Vec::new();
            let mut next: i64 = 0;
            loop {
                let got = with_conn(&path, busy, |c| {
                    let mut st = c
                        .prepare_cached(
                            "SELECT seq, event_json, event_zstd FROM transcript_events WHERE session_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
                        )
                        .map_err(|e| db_error(&path, e))?;
                    let rows = st
                        .query_map(rusqlite::params![src.session_id, next, BATCH_ROWS], |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, Option<String>>(1)?,
                                r.get::<_, Option<Vec<u8>>>(2)?,
                            ))
                        })
                        .map_err(|e| db_error(&path, e))?;
                    rows.collect::<Result<Vec<_>, _>>()
                        .map_err(|e| db_error(&path, e))
                })
                .map_err(to_io)?;
                let n = got.len();
                for (seq, json, zstd) in got {
                    next = seq.saturating_add(1);
                    if let Ok(mut text) = event_text(json, zstd) {
                        for b in text.iter_mut() {
                            if *b == b'\n' || *b == b'\r' {
                                *b = b' ';
                            }
                        }
                        out.extend_from_slice(&text);
                        out.push(b'\n');
                    }
                }
                if (n as i64) < BATCH_ROWS {
                    return Ok(out);
                }
            }
        }
        _ => match archive_bytes(state_dir, &path, src, busy) {
            Ok(Some((_, Ok(mut text)))) => {
                if text.last().is_some_and(|&b| b != b'\n') {
                    text.push(b'\n');
                }
                Ok(text)
            }
            Ok(_) => Ok(Vec::new()),
            Err(ReadError::Db(e)) => Err(to_io(e)),
            Err(ReadError::Io(e)) => Err(e),
            Err(ReadError::Cancelled) => Err(io::Error::from(io::ErrorKind::Interrupted)),
        },
    }
}

/// A session's id, its entry and its transcript as JSONL.
pub type LiveTranscript = (String, Map<String, Value>, Vec<u8>);

/// The live transcript of a session key of a database agent, as JSONL bytes, with its
/// session id; `None` when the key has no session. A cold-archived session is read from its
/// archive.
pub fn live_transcript(
    state_dir: &Path,
    agent: &str,
    key: &str,
) -> io::Result<Option<LiveTranscript>> {
    let path = db_path(state_dir, agent);
    let entry = with_conn(&path, BUSY_TIMEOUT, |c| {
        session_entry(c, key).map_err(|e| db_error(&path, e))
    })
    .map_err(|e| io::Error::other(e.message))?;
    let Some(entry) = entry else {
        return Ok(None);
    };
    let sid = entry
        .get("sessionId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let events = Source {
        agent: agent.to_string(),
        session_id: sid.clone(),
        table: Table::Events,
    };
    let mut lines = jsonl(state_dir, &events, BUSY_TIMEOUT)?;
    if lines.is_empty() {
        let cold = Source {
            table: Table::Cold,
            ..events
        };
        lines = jsonl(state_dir, &cold, BUSY_TIMEOUT)?;
    }
    Ok(Some((sid, entry, lines)))
}

pub mod fixture;
pub mod import;
pub mod live;

/// One session entry of a database agent by key (for clients that show a session).
pub fn entry_of(
    state_dir: &Path,
    agent: &str,
    key: &str,
) -> io::Result<Option<Map<String, Value>>> {
    let path = db_path(state_dir, agent);
    with_conn(&path, BUSY_TIMEOUT, |c| {
        session_entry(c, key).map_err(|e| db_error(&path, e))
    })
    .map_err(|e| io::Error::other(e.message))
}

#[cfg(test)]
mod tests;
