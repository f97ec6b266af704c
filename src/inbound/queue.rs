//! The durable ingress queue: every message a transport accepted is a file under
//! `<state>/inbound/` before the transport acknowledges it (a webhook's 200) or advances its
//! offset (Telegram's `getUpdates`), and stays there until its run has been accepted.
//!
//! Invariants:
//! - An entry is written as every durable file of keel's is (`state::write_atomic`: temp
//!   file, fsync, rename, fsync of the directory), so after a crash it is either whole or
//!   absent, and absent only if the transport was never told it was received.
//! - Its file name is [`entry_id`]: a hash of (channel, account, the channel's event id), so
//!   no id from outside ever becomes a path, and a redelivery of the same event finds the
//!   same name ([`Queue::contains`]).
//! - Entries come back in the order they were received (`seq`, kept in the file), so a
//!   conversation's messages run in order after a restart too.
//! - A file that cannot be read as an entry (another program's, a bug's) is moved aside to
//!   `malformed/` with a log line, never fatal; left-over temp files are removed.

use super::event::Inbound;
use crate::digest::{hex, sha256};
use crate::state;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The largest entry file read back (a message is at most 64 KiB of text plus ids).
const MAX_ENTRY_FILE: u64 = 256 << 10;

/// The queue's name for a message: 32 hex digits of SHA-256 over its channel, account and
/// the channel's own event id (each after its length). Safe as a file name and as an idempotency key.
pub fn entry_id(channel: &str, account_id: &str, event_id: &str) -> String {
    // Each part after its length, so no two triples hash the same bytes.
    let len = |s: &str| (s.len() as u64).to_be_bytes();
    let h = sha256(&[
        &len(channel),
        channel.as_bytes(),
        &len(account_id),
        account_id.as_bytes(),
        &len(event_id),
        event_id.as_bytes(),
    ]);
    hex(&h[..16])
}

/// One stored message, with what routing decided for it when it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// [`entry_id`] of the message: its file name and its run's idempotency key.
    pub id: String,
    /// Arrival order.
    pub seq: u64,
    pub received_ms: u64,
    /// The agent's session key the run goes to (`agent:<agentId>:…`).
    pub session_key: String,
    pub message: Inbound,
}

/// What opening the queue found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub entries: usize,
    /// Files moved to `malformed/`.
    pub set_aside: usize,
}

/// The entries on disk, mirrored in memory (one lock, held by workers and transports only).
#[derive(Debug)]
pub struct Queue {
    dir: PathBuf,
    /// seq → entry, in arrival order.
    by_seq: BTreeMap<u64, Entry>,
    /// id → seq.
    ids: HashMap<String, u64>,
    next_seq: u64,
}

impl Queue {
    /// Opens (creating, 0700) the queue directory and reads every entry in it.
    pub fn open(dir: &Path) -> io::Result<(Queue, Recovered)> {
        state::ensure_dir(dir)?;
        let mut q = Queue {
            dir: dir.to_path_buf(),
            by_seq: BTreeMap::new(),
            ids: HashMap::new(),
            next_seq: 1,
        };
        let mut rec = Recovered::default();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if !e.file_type()?.is_file() {
                continue;
            }
            if name.starts_with('.') {
                // A temp file of a write that never finished: its entry was never stored.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                q.set_aside(&path, &name, "not an entry file");
                rec.set_aside += 1;
                continue;
            };
            match read_entry(&path, stem) {
                Ok(entry) => {
                    q.next_seq = q.next_seq.max(entry.seq + 1);
                    q.insert(entry);
                    rec.entries += 1;
                }
                Err(why) => {
                    q.set_aside(&path, &name, &why);
                    rec.set_aside += 1;
                }
            }
        }
        Ok((q, rec))
    }

    fn set_aside(&self, path: &Path, name: &str, why: &str) {
        let aside = self.dir.join("malformed");
        let moved = state::ensure_dir(&aside).and_then(|()| {
            // The name is the directory listing's own (one component), never an outside id.
            fs::rename(path, aside.join(name))
        });
        match moved {
            Ok(()) => log::warn!(
                "inbound: {} is not a queue entry ({why}); moved to {}",
                path.display(),
                aside.display()
            ),
            Err(e) => log::warn!(
                "inbound: {} is not a queue entry ({why}) and cannot be moved aside: {e}; ignored",
                path.display()
            ),
        }
    }

    fn insert(&mut self, entry: Entry) {
        if let Some(old) = self.ids.insert(entry.id.clone(), entry.seq) {
            self.by_seq.remove(&old);
        }
        self.by_seq.insert(entry.seq, entry);
    }

    fn path(&self, id: &str) -> io::Result<PathBuf> {
        crate::ids::file_in(&self.dir, id, ".json")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("entry id {e}")))
    }

    /// Whether a message with this id is waiting.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    /// Stores a message durably; it gets the next arrival number. Returns the entry.
    pub fn store(
        &mut self,
        id: String,
        session_key: String,
        message: Inbound,
        now_ms: u64,
    ) -> io::Result<Entry> {
        let entry = Entry {
            id,
            seq: self.next_seq,
            received_ms: now_ms,
            session_key,
            message,
        };
        let bytes = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        state::write_atomic(&self.path(&entry.id)?, &bytes)?;
        self.next_seq += 1;
        self.insert(entry.clone());
        Ok(entry)
    }

    /// Removes an entry whose run has been accepted (or that will never run).
    pub fn remove(&mut self, id: &str) -> io::Result<()> {
        let path = self.path(id)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(seq) = self.ids.remove(id) {
            self.by_seq.remove(&seq);
        }
        Ok(())
    }

    /// Up to `limit` entries, oldest first.
    pub fn oldest(&self, limit: usize) -> Vec<Entry> {
        self.by_seq.values().take(limit).cloned().collect()
    }
}

fn read_entry(path: &Path, stem: &str) -> Result<Entry, String> {
    let meta = fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_ENTRY_FILE {
        return Err(format!("{} bytes, more than an entry can be", meta.len()));
    }
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if entry.id != stem {
        return Err("its id is not its file name".into());
    }
    entry.message.check()?;
    if entry.id
        != entry_id(
            &entry.message.channel,
            &entry.message.account_id,
            &entry.message.event_id,
        )
    {
        return Err("its id does not match its message".into());
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::event::ChatKind;

    fn msg(event: &str) -> Inbound {
        Inbound {
            channel: "telegram".into(),
            account_id: "default".into(),
            event_id: event.into(),
            chat_kind: ChatKind::Direct,
            chat_id: "42".into(),
            thread_id: None,
            sender_id: "42".into(),
            sender_name: None,
            message_id: Some("1".into()),
            text: format!("hello {event}"),
            mentioned: false,
            ts_ms: 1,
        }
    }

    fn store(q: &mut Queue, event: &str) -> Entry {
        let m = msg(event);
        let id = entry_id(&m.channel, &m.account_id, &m.event_id);
        q.store(id, "agent:main:main".into(), m, 5).unwrap()
    }

    #[test]
    fn entries_survive_a_reopen_in_arrival_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, rec) = Queue::open(dir.path()).unwrap();
        assert_eq!(rec, Recovered::default());
        for e in ["9", "1", "5"] {
            store(&mut q, e);
        }
        let gone = q.oldest(1)[0].id.clone();
        q.remove(&gone).unwrap();
        assert!(!q.contains(&gone));
        drop(q);
        let (mut q, rec) = Queue::open(dir.path()).unwrap();
        assert_eq!(rec.entries, 2);
        let events: Vec<String> = q
            .oldest(10)
            .iter()
            .map(|e| e.message.event_id.clone())
            .collect();
        assert_eq!(events, ["1", "5"]);
        // New arrivals come after the recovered ones.
        let e = store(&mut q, "0");
        assert!(e.seq > q.oldest(10)[1].seq || q.oldest(10)[2].id == e.id);
        assert_eq!(q.oldest(10).last().unwrap().id, e.id);
    }

    #[test]
    fn ids_are_hashes_and_redeliveries_find_them() {
        let a = entry_id("telegram", "default", "../../etc/passwd");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, entry_id("telegram", "other", "../../etc/passwd"));
        assert_ne!(entry_id("a", "b\0c", "d"), entry_id("a", "b", "c\0d"));
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = Queue::open(dir.path()).unwrap();
        let e = store(&mut q, "77");
        assert!(q.contains(&entry_id("telegram", "default", "77")));
        assert_eq!(e.id, entry_id("telegram", "default", "77"));
    }

    #[test]
    fn malformed_files_are_moved_aside_and_temp_files_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = Queue::open(dir.path()).unwrap();
        let good = store(&mut q, "1");
        drop(q);
        fs::write(dir.path().join("0123.json"), b"{not json").unwrap();
        fs::write(dir.path().join("junk.txt"), b"x").unwrap();
        fs::write(dir.path().join(".abc.json.tmp.1"), b"half").unwrap();
        // A valid entry under another entry's name.
        let mut forged = good.clone();
        forged.id = entry_id("telegram", "default", "2");
        fs::write(
            dir.path().join(format!("{}.json", forged.id)),
            serde_json::to_vec(&forged).unwrap(),
        )
        .unwrap();
        let (q, rec) = Queue::open(dir.path()).unwrap();
        assert_eq!(
            rec,
            Recovered {
                entries: 1,
                set_aside: 3
            }
        );
        assert!(q.contains(&good.id));
        assert!(!dir.path().join(".abc.json.tmp.1").exists());
        assert!(dir.path().join("malformed").join("0123.json").exists());
    }
}
