//! Writes OpenClaw's agent database with OpenClaw's own table definitions (`schema.sql`), for
//! tests and benchmark states: the reader's fixtures are built by the tests themselves, and
//! `keel-gen-state --sqlite` turns a generated legacy state into a SQLite-era one the way
//! OpenClaw's import does (the files moved aside as `*.imported-<ms>`). Never used on a
//! state keel serves.

use super::{DB_FILE, SCHEMA_VERSION};
use rusqlite::{Connection, params};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The tables keel reads, as OpenClaw 2026.9.6 creates them.
pub const SCHEMA: &str = include_str!("schema.sql");

/// Events this long or longer are stored compressed, as OpenClaw does (1 KiB).
pub const COMPRESS_FROM: usize = 1024;

/// A valid `navigation_json` for a compressed row (OpenClaw's CHECK asks for one).
const NAVIGATION: &str = r#"{"version":1,"report":{"kind":"canonical"},"navigation":{},"reset":{},"model":{},"modelBytes":0,"modelWithoutCheckpointBytes":0,"withoutCustomDataBytes":0}"#;

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(bytes, ruzstd::encoding::CompressionLevel::Fastest)
}

/// A writer of one agent database, in WAL mode with OpenClaw's pragmas.
pub struct Writer {
    pub conn: Connection,
}

impl Writer {
    /// Creates (or opens) `agents/<agent>/agent/openclaw-agent.sqlite` under `state_dir` with
    /// the schema and `schema_version` given.
    pub fn create(state_dir: &Path, agent: &str, version: i64) -> rusqlite::Result<Writer> {
        let dir = state_dir.join("agents").join(agent).join("agent");
        std::fs::create_dir_all(&dir).map_err(|e| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(e.to_string()),
            )
        })?;
        let conn = Connection::open(dir.join(DB_FILE))?;
        conn.pragma_update(None, "journal_mode", "wal")?;
        conn.pragma_update(None, "synchronous", "normal")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute(
            "INSERT OR REPLACE INTO schema_meta (meta_key, role, schema_version, agent_id, app_version, created_at, updated_at) VALUES ('primary', 'agent', ?1, ?2, '2026.9.6', 0, 0)",
            params![version, agent],
        )?;
        Ok(Writer { conn })
    }

    /// The current schema version.
    pub fn create_current(state_dir: &Path, agent: &str) -> rusqlite::Result<Writer> {
        Writer::create(state_dir, agent, SCHEMA_VERSION)
    }

    /// A session key and its current session (`session_nodes` and its `session_windows` row).
    pub fn session(
        &self,
        key: &str,
        session_id: &str,
        entry: &Value,
        updated_at: i64,
    ) -> rusqlite::Result<()> {
        let s = |k: &str| entry.get(k).and_then(Value::as_str).map(String::from);
        self.conn.execute(
            "INSERT OR REPLACE INTO session_nodes (session_key, current_session_id, entry_json, entry_valid, updated_at, label, display_name) VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6)",
            params![key, session_id, entry.to_string(), updated_at, s("label"), s("displayName")],
        )?;
        self.window(key, session_id, "initial", updated_at)
    }

    /// A `session_windows` row (every session id a key has had).
    pub fn window(
        &self,
        key: &str,
        session_id: &str,
        reason: &str,
        at: i64,
    ) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO session_windows (session_id, session_key, reason, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
            params![session_id, key, reason, at],
        )?;
        Ok(())
    }

    /// One transcript event; compressed when it is [`COMPRESS_FROM`] bytes or more.
    pub fn event(&self, session_id: &str, seq: i64, line: &str) -> rusqlite::Result<()> {
        if line.len() >= COMPRESS_FROM {
            self.event_zstd(session_id, seq, &zstd(line.as_bytes()), line.len())
        } else {
            self.conn.execute(
                "INSERT INTO transcript_events (session_id, seq, event_json, created_at) VALUES (?1, ?2, ?3, 0)",
                params![session_id, seq, line],
            )?;
            Ok(())
        }
    }

    /// One compressed event, as given (tests store damaged ones this way).
    pub fn event_zstd(
        &self,
        session_id: &str,
        seq: i64,
        blob: &[u8],
        utf8_bytes: usize,
    ) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT INTO transcript_events (session_id, seq, event_zstd, event_utf8_bytes, navigation_json, created_at) VALUES (?1, ?2, ?3, ?4, ?5, 0)",
            params![session_id, seq, blob, utf8_bytes as i64, NAVIGATION],
        )?;
        Ok(())
    }

    /// A reset or deleted transcript kept in `session_transcript_archives`.
    pub fn archive(
        &self,
        session_id: &str,
        generation: &str,
        key: &str,
        reason: &str,
        jsonl: &[u8],
        compress: bool,
    ) -> rusqlite::Result<()> {
        let (encoding, blob) = if compress {
            ("zstd", zstd(jsonl))
        } else {
            ("identity", jsonl.to_vec())
        };
        let sha = crate::digest::hex(&crate::digest::sha256(&[&blob]));
        self.conn.execute(
            "INSERT INTO session_transcript_archives (session_id, generation, session_key, reason, encoding, archive_blob, archive_sha256, archive_name, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0)",
            params![session_id, generation, key, reason, encoding, blob, sha, format!("{session_id}.jsonl.{reason}.{generation}")],
        )?;
        Ok(())
    }

    /// A cold-archived transcript: in the database (`file` false) or as
    /// `agents/<agent>/sessions/cold/<name>` (`file` true).
    #[allow(clippy::too_many_arguments)]
    pub fn cold(
        &self,
        state_dir: &Path,
        agent: &str,
        session_id: &str,
        jsonl: &[u8],
        events: i64,
        file: bool,
    ) -> rusqlite::Result<()> {
        let blob = zstd(jsonl);
        let name = format!("{session_id}.jsonl.zst");
        let sha = crate::digest::hex(&crate::digest::sha256(&[&blob]));
        let stored: Option<&[u8]> = if file {
            let dir = state_dir
                .join("agents")
                .join(agent)
                .join("sessions")
                .join("cold");
            std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::write(dir.join(&name), &blob))
                .map_err(|e| {
                    rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                        Some(e.to_string()),
                    )
                })?;
            None
        } else {
            Some(&blob)
        };
        self.conn.execute(
            "INSERT INTO session_transcript_cold_archives (session_id, generation, archive_name, archive_sha256, event_count, raw_bytes, archive_bytes, last_seq, archived_at, storage, archive_blob) VALUES (?1, 'g1', ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9)",
            params![
                session_id,
                name,
                sha,
                events.max(1),
                jsonl.len() as i64,
                blob.len() as i64,
                events - 1,
                if file { "file" } else { "sqlite" },
                stored
            ],
        )?;
        Ok(())
    }
}

/// What [`convert_legacy`] wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct Converted {
    pub agents: usize,
    pub sessions: usize,
    pub events: usize,
    pub archives: usize,
}

fn to_io(e: rusqlite::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Turns a legacy file state into a SQLite-era one, the way OpenClaw's import does: per
/// agent, `sessions.json` into `session_nodes`, `<sid>.jsonl` into `transcript_events`,
/// `*.jsonl.reset.*` / `*.jsonl.deleted.*` into `session_transcript_archives` (every other
/// one compressed), and every file moved aside as `<name>.imported-<ms>`.
pub fn convert_legacy(state_dir: &Path) -> std::io::Result<Converted> {
    let mut out = Converted::default();
    let stamp = crate::clock::wall_ms();
    for agent in super::super::store::list_agents(state_dir) {
        let sessions = state_dir.join("agents").join(&agent).join("sessions");
        let store = sessions.join("sessions.json");
        let entries: serde_json::Map<String, Value> = match std::fs::read(&store) {
            Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(e),
        };
        let w = Writer::create_current(state_dir, &agent).map_err(to_io)?;
        // A transcript without a store entry has no session key to hang its window on.
        w.conn
            .pragma_update(None, "foreign_keys", false)
            .map_err(to_io)?;
        w.conn.execute_batch("BEGIN").map_err(to_io)?;
        out.agents += 1;
        let mut key_of = std::collections::HashMap::new();
        for (key, entry) in &entries {
            let Some(sid) = entry.get("sessionId").and_then(Value::as_str) else {
                continue;
            };
            let at = entry.get("updatedAt").and_then(Value::as_i64).unwrap_or(0);
            w.session(key, sid, entry, at).map_err(to_io)?;
            key_of.insert(sid.to_string(), key.clone());
            out.sessions += 1;
        }
        let mut moved: Vec<PathBuf> = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(&sessions)?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            let Some((sid, kind)) = super::super::index::classify(&name) else {
                continue;
            };
            let path = sessions.join(&name);
            let text = std::fs::read(&path)?;
            let key = key_of
                .get(&sid)
                .cloned()
                .unwrap_or_else(|| format!("agent:{agent}:{sid}"));
            match kind {
                super::super::index::FileKind::Live => {
                    w.window(&key, &sid, "initial", 0).map_err(to_io)?;
                    for (seq, line) in text
                        .split(|&b| b == b'\n')
                        .filter(|l| !l.is_empty())
                        .enumerate()
                    {
                        w.event(&sid, seq as i64, &String::from_utf8_lossy(line))
                            .map_err(to_io)?;
                        out.events += 1;
                    }
                }
                k => {
                    let reason = if k == super::super::index::FileKind::Deleted {
                        "deleted"
                    } else {
                        "reset"
                    };
                    let generation = name.rsplit('.').nth(1).unwrap_or("g").to_string();
                    let generation = format!("{generation}-{}", out.archives);
                    w.archive(
                        &sid,
                        &generation,
                        &key,
                        reason,
                        &text,
                        out.archives % 2 == 0,
                    )
                    .map_err(to_io)?;
                    out.archives += 1;
                }
            }
            moved.push(path);
        }
        w.conn.execute_batch("COMMIT").map_err(to_io)?;
        drop(w);
        if store.exists() {
            moved.push(store);
        }
        for p in moved {
            let mut to = p.clone().into_os_string();
            to.push(format!(".imported-{stamp}"));
            std::fs::rename(&p, PathBuf::from(to))?;
        }
    }
    Ok(out)
}
