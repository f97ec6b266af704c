//! Session stores: `agents/<agentId>/sessions/sessions.json`, loaded into immutable snapshots
//! shared by `Arc` (readers never copy them) and reloaded only when the file's size or mtime
//! changes. A malformed file keeps the last good snapshot; the error is kept for `status`,
//! `/metrics` and the log, and is never fatal. Unknown fields of every entry are kept, so a
//! rewrite ([`StoreSnapshot::to_json`]) loses nothing another program wrote.

use crate::sync::lock;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The fields keel reads from one session entry.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEntry {
    pub key: String,
    pub session_id: String,
    pub updated_at: Option<i64>,
    pub label: Option<String>,
    pub display_name: Option<String>,
    /// `channel`, else `origin.provider`.
    pub channel: Option<String>,
    pub chat_type: Option<String>,
    pub model: Option<String>,
    pub model_provider: Option<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    /// `usageFamilySessionIds`: earlier sessions of this key (replaced by resets) that count
    /// with it when usage is grouped by family.
    pub family_ids: Vec<String>,
    /// `usageFamilyKey`: the family's name, if not the key.
    pub family_key: Option<String>,
}

impl SessionEntry {
    /// OpenClaw's session kinds: `direct`, `group`, `global`, or `unknown`.
    pub fn kind(&self) -> &'static str {
        if self.key == "global" {
            return "global";
        }
        match self.chat_type.as_deref() {
            Some("direct") | Some("dm") => "direct",
            Some("group") | Some("channel") => "group",
            _ if self.key.contains(":group:") || self.key.contains(":channel:") => "group",
            _ if self.key.contains(":direct:") || self.key.contains(":dm:") => "direct",
            _ => "unknown",
        }
    }
}

/// One loaded `sessions.json`.
#[derive(Debug)]
pub struct StoreSnapshot {
    pub agent_id: String,
    pub path: PathBuf,
    /// Most recently updated first.
    pub entries: Vec<SessionEntry>,
    by_session: HashMap<String, usize>,
}

fn string(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

impl StoreSnapshot {
    /// Parses a store. Entries without a `sessionId` are skipped (and do not fail the file).
    pub fn parse(agent_id: &str, path: &Path, bytes: &[u8]) -> Result<StoreSnapshot, String> {
        let raw: Map<String, Value> = match serde_json::from_slice(bytes) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err("expected a JSON object of session key → entry".into()),
            Err(e) => return Err(format!("not valid JSON: {e}")),
        };
        Ok(StoreSnapshot::from_map(agent_id, path, &raw))
    }

    /// A store from its entries (session key → entry), as `sessions.json` holds them or as
    /// the SQLite store's `session_nodes` give them.
    pub fn from_map(agent_id: &str, path: &Path, raw: &Map<String, Value>) -> StoreSnapshot {
        let mut entries: Vec<SessionEntry> = raw
            .iter()
            .filter_map(|(key, v)| {
                let session_id = string(v, "sessionId")?;
                let channel = string(v, "channel")
                    .or_else(|| v.get("origin").and_then(|o| string(o, "provider")));
                let num = |k: &str| v.get(k).and_then(Value::as_u64);
                Some(SessionEntry {
                    key: key.clone(),
                    session_id,
                    updated_at: v.get("updatedAt").and_then(Value::as_i64),
                    label: string(v, "label"),
                    display_name: string(v, "displayName"),
                    channel,
                    chat_type: string(v, "chatType"),
                    model: string(v, "model"),
                    model_provider: string(v, "modelProvider"),
                    input_tokens: num("inputTokens"),
                    output_tokens: num("outputTokens"),
                    total_tokens: num("totalTokens"),
                    family_ids: v
                        .get("usageFamilySessionIds")
                        .and_then(Value::as_array)
                        .map(|ids| {
                            ids.iter()
                                .filter_map(Value::as_str)
                                .filter(|s| !s.is_empty())
                                .map(String::from)
                                .collect()
                        })
                        .unwrap_or_default(),
                    family_key: string(v, "usageFamilyKey"),
                })
            })
            .collect();
        entries.sort_by(|a, b| {
            b.updated_at
                .cmp(&a.updated_at)
                .then_with(|| a.key.cmp(&b.key))
        });
        let by_session = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.session_id.clone(), i))
            .collect();
        StoreSnapshot {
            agent_id: agent_id.to_string(),
            path: path.to_path_buf(),
            entries,
            by_session,
        }
    }

    pub fn by_session_id(&self, session_id: &str) -> Option<&SessionEntry> {
        self.by_session.get(session_id).map(|&i| &self.entries[i])
    }
}

/// (size, mtime in ns) of `sessions.json`, or the version of an agent database's listing: a
/// change means the store must be read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ident {
    File(u64, i64),
    Db(u64),
}

fn ident(meta: &std::fs::Metadata) -> Ident {
    Ident::File(
        meta.size(),
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
    )
}

#[derive(Default)]
struct Cached {
    ident: Option<Ident>,
    snapshot: Option<Arc<StoreSnapshot>>,
    error: Option<String>,
}

/// Every agent's store, cached.
#[derive(Default)]
pub struct Stores {
    cache: Mutex<HashMap<String, Cached>>,
    /// The agents whose sessions live in OpenClaw's SQLite store.
    pub dbs: super::sqlite::live::Dbs,
}

/// What [`Stores::refresh`] found.
#[derive(Default)]
pub struct StoresView {
    pub snapshots: Vec<Arc<StoreSnapshot>>,
    /// (agent, error) for stores whose last read failed (their last good snapshot is used).
    pub errors: Vec<(String, String)>,
    /// Stores read from disk by this refresh.
    pub reloaded: usize,
}

impl StoresView {
    pub fn entry(&self, agent: &str, session_id: &str) -> Option<&SessionEntry> {
        self.snapshots
            .iter()
            .find(|s| s.agent_id == agent)
            .and_then(|s| s.by_session_id(session_id))
    }
}

/// The agents directory of a state directory.
pub fn agents_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("agents")
}

/// Agent ids with a `sessions` directory or a SQLite session store, sorted.
pub fn list_agents(state_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(agents_dir(state_dir))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.path().join("sessions").is_dir()
                        || e.path()
                            .join("agent")
                            .join(super::sqlite::DB_FILE)
                            .is_file()
                })
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Stores {
    /// Re-reads each store whose size or mtime changed; a store that fails to parse keeps its
    /// last good snapshot. Runs on a worker (it touches the disk).
    pub fn refresh(&self, state_dir: &Path) -> StoresView {
        let mut view = StoresView::default();
        let agents = list_agents(state_dir);
        for agent in &agents {
            // An agent with a SQLite store is read from it alone: the files beside it are
            // OpenClaw's imported originals (`*.imported-*`) or older leftovers.
            let db = self.dbs.check(state_dir, agent, false);
            let path = match &db {
                Some(_) => super::sqlite::db_path(state_dir, agent),
                None => agents_dir(state_dir)
                    .join(agent)
                    .join("sessions")
                    .join("sessions.json"),
            };
            let now_ident = match &db {
                Some(v) => Some(Ident::Db(v.version)),
                None => std::fs::metadata(&path).ok().as_ref().map(ident),
            };
            let stale = {
                let cache = lock(&self.cache);
                cache.get(agent).is_none_or(|c| c.ident != now_ident)
            };
            if stale {
                let loaded = match &db {
                    Some(v) => match &v.error {
                        Some(e) if e.skip != super::sqlite::Skip::Busy => Err(e.message.clone()),
                        _ => self.read_db(state_dir, agent, &path),
                    },
                    None => match std::fs::read(&path) {
                        Ok(bytes) => StoreSnapshot::parse(agent, &path, &bytes),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            StoreSnapshot::parse(agent, &path, b"{}")
                        }
                        Err(e) => Err(format!("cannot read: {e}")),
                    },
                };
                let refused = matches!(&db, Some(v) if v.error.as_ref().is_some_and(|e| e.skip != super::sqlite::Skip::Busy));
                view.reloaded += 1;
                let mut cache = lock(&self.cache);
                let c = cache.entry(agent.clone()).or_default();
                c.ident = now_ident;
                match loaded {
                    Ok(s) => {
                        c.snapshot = Some(Arc::new(s));
                        c.error = None;
                    }
                    Err(e) if refused => {
                        // A database keel does not read shows nothing (said in the log once,
                        // by the check).
                        c.snapshot = None;
                        c.error = Some(e);
                    }
                    Err(e) => {
                        log::warn!(
                            "session store {}: {e}; keeping the last good snapshot",
                            path.display()
                        );
                        c.error = Some(e);
                    }
                }
            }
            let cache = lock(&self.cache);
            if let Some(c) = cache.get(agent) {
                if let Some(s) = &c.snapshot {
                    view.snapshots.push(s.clone());
                }
                if let Some(e) = &c.error {
                    view.errors.push((agent.clone(), e.clone()));
                }
            }
        }
        view
    }

    /// An agent's sessions from its SQLite store (`session_nodes`), in one short read.
    fn read_db(&self, state_dir: &Path, agent: &str, path: &Path) -> Result<StoreSnapshot, String> {
        let mut skips = super::sqlite::Skips::default();
        let map = super::sqlite::with_conn(path, self.dbs.busy(), |c| {
            super::sqlite::session_entries(c, &mut skips)
                .map_err(|e| super::sqlite::db_error(path, e))
        });
        self.dbs.count(&skips);
        if skips.get(super::sqlite::Skip::Entry) > 0 {
            log::warn!(
                "agent {agent}: {} session entries in {} are not JSON objects; skipped",
                skips.get(super::sqlite::Skip::Entry),
                path.display()
            );
        }
        let _ = state_dir;
        match map {
            Ok(m) => Ok(StoreSnapshot::from_map(agent, path, &m)),
            Err(e) => {
                let mut s = super::sqlite::Skips::default();
                s.add(e.skip, 1);
                self.dbs.count(&s);
                Err(e.message)
            }
        }
    }

    /// Stores whose last read failed: (agent, error).
    pub fn errors(&self) -> Vec<(String, String)> {
        let cache = lock(&self.cache);
        let mut v: Vec<_> = cache
            .iter()
            .filter_map(|(a, c)| c.error.as_ref().map(|e| (a.clone(), e.clone())))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_keep_unknown_fields_and_the_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = dir.path().join("agents/main/sessions");
        std::fs::create_dir_all(&sessions).unwrap();
        let file = sessions.join("sessions.json");
        std::fs::write(
            &file,
            r#"{"agent:main:main":{"sessionId":"s1","updatedAt":5,"origin":{"provider":"telegram"},"skillsSnapshot":{"x":1}},
               "agent:main:telegram:group:9":{"sessionId":"s2","updatedAt":9,"chatType":"group","label":"ops"},
               "broken":{"updatedAt":1}}"#,
        )
        .unwrap();
        let stores = Stores::default();
        let v = stores.refresh(dir.path());
        assert_eq!(v.reloaded, 1);
        let s = &v.snapshots[0];
        assert_eq!(s.entries.len(), 2);
        assert_eq!(s.entries[0].session_id, "s2", "newest first");
        assert_eq!(s.entries[0].kind(), "group");
        assert_eq!(
            s.by_session_id("s1").unwrap().channel.as_deref(),
            Some("telegram")
        );
        // Another program relabels a session (keel's own rewrites, which keep unknown fields,
        // are in agent::transcript).
        std::fs::write(
            &file,
            r#"{"agent:main:main":{"sessionId":"s1","updatedAt":5,"label":"renamed"},
               "agent:main:telegram:group:9":{"sessionId":"s2","updatedAt":9,"chatType":"group","label":"ops"}}"#,
        )
        .unwrap();
        let relabelled = stores.refresh(dir.path());
        assert_eq!(
            relabelled.snapshots[0]
                .by_session_id("s1")
                .unwrap()
                .label
                .as_deref(),
            Some("renamed")
        );
        // Unchanged: not read again, same Arc.
        let s = &relabelled.snapshots[0];
        let again = stores.refresh(dir.path());
        assert_eq!(again.reloaded, 0);
        assert!(Arc::ptr_eq(&again.snapshots[0], s));
        // Malformed: the last good snapshot stays, the error is reported.
        std::fs::write(&file, "{ nope").unwrap();
        let bad = stores.refresh(dir.path());
        assert_eq!(bad.snapshots[0].entries.len(), 2);
        assert!(bad.errors[0].1.contains("not valid JSON"));
        assert_eq!(stores.errors().len(), 1);
    }
}
