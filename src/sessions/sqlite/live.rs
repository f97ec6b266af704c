//! Which agents have a database, and what changed in each since the last look: the
//! database's and its `-wal`'s identity (inode, size, mtime) and `PRAGMA data_version` on a
//! kept read-only connection (it moves whenever another connection commits). An agent whose
//! database changed is listed again (three small queries in one short read transaction);
//! the others answer from the last listing. Failures are kept per agent with their reason
//! (and the last good listing is kept while a database is only busy).

use super::{DbError, DbIdent, Listing, Skip, Skips, db_ident, db_path, open, scan};
use crate::sync::lock;
use rusqlite::Connection;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct AgentDb {
    ident: Option<DbIdent>,
    /// The connection `data_version` is asked on, with the inode it was opened on.
    probe: Option<(u64, Connection)>,
    data_version: Option<i64>,
    listing: Arc<Listing>,
    /// Bumped whenever the database was seen to change.
    version: u64,
    error: Option<DbError>,
}

/// One agent's state, and the view its last look gave (answered to a caller that finds
/// another worker looking, so no query waits on an agent whose database is slow or locked).
#[derive(Default)]
struct Slot {
    db: Mutex<AgentDb>,
    last: Mutex<Option<AgentView>>,
}

/// What one agent's database looks like now.
#[derive(Clone)]
pub struct AgentView {
    pub listing: Arc<Listing>,
    pub version: u64,
    pub error: Option<DbError>,
}

/// Every agent database's state. Only workers call in; the reactor reads [`Dbs::notes`] and
/// the counters, which no one holds across I/O.
pub struct Dbs {
    agents: Mutex<HashMap<String, Arc<Slot>>>,
    skips: [AtomicU64; 8],
    notes: Mutex<Arc<Vec<String>>>,
    /// Agent → why its database is not read (the source of `notes`).
    refused: Mutex<std::collections::BTreeMap<String, String>>,
    busy: Duration,
    /// Databases listed again (a change was seen, or a full check).
    pub rescans: AtomicU64,
}

impl Default for Dbs {
    fn default() -> Dbs {
        Dbs::with_busy(super::BUSY_TIMEOUT)
    }
}

impl Dbs {
    pub fn with_busy(busy: Duration) -> Dbs {
        Dbs {
            agents: Mutex::default(),
            skips: Default::default(),
            notes: Mutex::default(),
            refused: Mutex::default(),
            busy,
            rescans: AtomicU64::new(0),
        }
    }

    pub fn busy(&self) -> Duration {
        self.busy
    }

    pub fn count(&self, skips: &Skips) {
        for (slot, n) in self.skips.iter().zip(skips.0) {
            slot.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn skipped(&self) -> Skips {
        let mut s = Skips::default();
        for (i, slot) in self.skips.iter().enumerate() {
            s.0[i] = slot.load(Ordering::Relaxed);
        }
        s
    }

    /// Why agent databases are not read, one line each (for `/readyz`, `status`).
    pub fn notes(&self) -> Arc<Vec<String>> {
        lock(&self.notes).clone()
    }

    /// Records an agent's state (`None`: read fine) and publishes the notes if it changed.
    fn set_refused(&self, agent: &str, error: Option<&DbError>) {
        let mut refused = lock(&self.refused);
        let now = error.map(|e| e.message.clone());
        if refused.get(agent) == now.as_ref() {
            return;
        }
        match now {
            Some(m) => refused.insert(agent.to_string(), m),
            None => refused.remove(agent),
        };
        let notes: Vec<String> = refused
            .iter()
            .map(|(a, e)| format!("agent {a}: session database not read: {e}"))
            .collect();
        *lock(&self.notes) = Arc::new(notes);
    }

    /// Looks at one agent's database: unchanged since the last look (and not `full`), the
    /// last listing; changed, a new one. `None` when the agent has no database.
    pub fn check(&self, state_dir: &Path, agent: &str, full: bool) -> Option<AgentView> {
        let path = db_path(state_dir, agent);
        let slot = lock(&self.agents)
            .entry(agent.to_string())
            .or_default()
            .clone();
        let mut st = match slot.db.try_lock() {
            Ok(st) => st,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                // Taken and released before waiting: the looker sets `last` while it holds
                // `db` (lock order: db, then last).
                let last = lock(&slot.last).clone();
                match last {
                    Some(v) => return Some(v),
                    None => lock(&slot.db),
                }
            }
        };
        let Some(ident) = db_ident(&path) else {
            if st.probe.is_some() || st.ident.is_some() {
                let mut s = Skips::default();
                s.add(Skip::Deleted, 1);
                self.count(&s);
                log::warn!(
                    "agent {agent}: session database {} went away; its sessions are no longer shown",
                    path.display()
                );
                super::forget(&path);
                *st = AgentDb {
                    version: st.version + 1,
                    ..AgentDb::default()
                };
            }
            *lock(&slot.last) = None;
            drop(st);
            self.set_refused(agent, None);
            return None;
        };
        let before = st.error.as_ref().map(|e| e.message.clone());
        let result = self.look(&path, agent, ident, full, &mut st);
        match result {
            Ok(()) => st.error = None,
            Err(e) => {
                if before.as_deref() != Some(e.message.as_str()) {
                    log::warn!("agent {agent}: {e}");
                    let mut s = Skips::default();
                    s.add(e.skip, 1);
                    self.count(&s);
                }
                // Busy is passing: the last listing stands. Anything else: nothing is shown.
                if e.skip != Skip::Busy {
                    st.listing = Arc::default();
                    st.probe = None;
                    st.ident = None;
                    st.data_version = None;
                    st.version += 1;
                    super::forget(&path);
                }
                st.error = Some(e);
            }
        }
        let view = AgentView {
            listing: st.listing.clone(),
            version: st.version,
            error: st.error.clone(),
        };
        *lock(&slot.last) = Some(view.clone());
        drop(st);
        self.set_refused(agent, view.error.as_ref());
        Some(view)
    }

    fn look(
        &self,
        path: &Path,
        agent: &str,
        ident: DbIdent,
        full: bool,
        st: &mut AgentDb,
    ) -> Result<(), DbError> {
        let ino = ident.db.ino;
        if st.probe.as_ref().is_none_or(|(i, _)| *i != ino) {
            st.probe = None;
            st.data_version = None;
            super::forget(path);
            st.probe = Some((ino, open(path, self.busy)?));
        }
        let Some((_, conn)) = &st.probe else {
            return Ok(());
        };
        let dv: i64 = conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| super::db_error(path, e))?;
        let same = st.ident == Some(ident) && st.data_version == Some(dv) && st.error.is_none();
        if same && !full {
            return Ok(());
        }
        let listing = scan(conn, agent, ino).map_err(|e| super::db_error(path, e))?;
        self.rescans.fetch_add(1, Ordering::Relaxed);
        if *st.listing != listing {
            st.version += 1;
            st.listing = Arc::new(listing);
        }
        st.ident = Some(ident);
        st.data_version = Some(dv);
        Ok(())
    }

    /// Whether a worker is looking at an agent's database right now (for tests).
    #[cfg(test)]
    pub fn looking(&self, agent: &str) -> bool {
        let slot = lock(&self.agents).get(agent).cloned();
        slot.is_some_and(|s| s.db.try_lock().is_err())
    }

    /// The agents that have a database under `state_dir`, each looked at.
    pub fn check_all(&self, state_dir: &Path, full: bool) -> Vec<(String, Option<AgentView>)> {
        let agents = super::super::store::list_agents(state_dir);
        let mut out = Vec::new();
        for a in agents {
            if super::has_db(state_dir, &a) || lock(&self.agents).contains_key(&a) {
                let v = self.check(state_dir, &a, full);
                out.push((a, v));
            }
        }
        out
    }
}
