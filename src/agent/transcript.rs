//! Writing OpenClaw's session store from runs: a session entry in
//! `agents/<agentId>/sessions/sessions.json` (rewritten atomically, unknown fields kept) and
//! the transcript `<sessionId>.jsonl` (a `session` header, then one `message` line per user
//! message, model call — failed ones too — and tool result), in the format the usage index
//! reads (`docs/USAGE.md`).

use crate::clock;
use crate::ids::{self, AgentId, SessionKey};
use crate::sync::lock;
use serde_json::{Map, Value, json};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Store rewrites are read-modify-write: one at a time in this process.
static STORE_WRITES: Mutex<()> = Mutex::new(());

/// Where a run writes.
#[derive(Debug, Clone)]
pub struct SessionFile {
    pub agent_id: AgentId,
    pub key: String,
    pub session_id: String,
    pub transcript: PathBuf,
    store: PathBuf,
    last_id: Option<String>,
    /// The store had no entry for the key: this run made the session.
    pub created: bool,
    /// Messages in the transcript, once counted ([`SessionFile::message_count`]); appends
    /// keep it current.
    count: Option<u64>,
}

/// `<state>/agents/<agentId>/sessions`: an [`AgentId`] is one checked path component.
fn sessions_dir(state_dir: &Path, agent_id: &AgentId) -> PathBuf {
    ids::join(
        &crate::sessions::store::agents_dir(state_dir),
        agent_id.name(),
    )
    .join("sessions")
}

/// A store's `sessionId` names a file in the sessions directory: anything that is not a plain
/// file name (a path, `..`) is refused — the store may have been written by another program.
fn transcript_path(dir: &Path, session_id: &str) -> io::Result<PathBuf> {
    ids::file_in(dir, session_id, ".jsonl").map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sessions.json names the session id {session_id:?}, which is not a file name: it {e}"),
        )
    })
}

/// Reads a block at a time from the end of the file.
const TAIL_BLOCK: u64 = 64 << 10;

/// Calls `each` with the lines of the file at `path` from the last to the first, until it
/// returns false. It reads backwards a block at a time, so what a run reads for its context
/// depends on the history it needs, not on how long the transcript has grown. A missing file
/// has no lines; a line that is not UTF-8 is skipped.
fn lines_backwards(path: &Path, mut each: impl FnMut(&str) -> bool) -> io::Result<()> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut pos = f.metadata()?.len();
    // The start of the file's last line not yet given (its beginning lies before `pos`).
    let mut rest: Vec<u8> = Vec::new();
    let mut give = |line: &[u8]| match std::str::from_utf8(line) {
        Ok(l) if !l.trim().is_empty() => each(l.strip_suffix('\r').unwrap_or(l)),
        _ => true,
    };
    while pos > 0 {
        let n = TAIL_BLOCK.min(pos);
        pos -= n;
        let mut buf = vec![0u8; n as usize];
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut buf)?;
        buf.extend_from_slice(&rest);
        let mut end = buf.len();
        while let Some(i) = buf[..end].iter().rposition(|&b| b == b'\n') {
            if !give(&buf[i + 1..end]) {
                return Ok(());
            }
            end = i;
        }
        buf.truncate(end);
        rest = buf;
    }
    give(&rest);
    Ok(())
}

/// Where a session's live transcript is: a file, or (for an agent whose sessions live in
/// OpenClaw's SQLite store) its rows, read in short statements into memory.
enum Transcript {
    File(PathBuf),
    Db(Vec<u8>),
}

impl Transcript {
    /// The session id of `key` and where its transcript is; `None` without a store entry.
    fn locate(state_dir: &Path, key: &SessionKey) -> io::Result<Option<(String, Transcript)>> {
        if crate::sessions::sqlite::has_db(state_dir, key.agent.as_str()) {
            return Ok(crate::sessions::sqlite::live_transcript(
                state_dir,
                key.agent.as_str(),
                &key.key,
            )?
            .map(|(sid, _, bytes)| (sid, Transcript::Db(bytes))));
        }
        let dir = sessions_dir(state_dir, &key.agent);
        let Some(sid) = read_store(&dir.join("sessions.json"))?
            .get(&key.key)
            .and_then(|e| e["sessionId"].as_str().map(String::from))
        else {
            return Ok(None);
        };
        let path = transcript_path(&dir, &sid)?;
        Ok(Some((sid, Transcript::File(path))))
    }

    /// [`lines_backwards`] of either kind.
    fn backwards(&self, mut each: impl FnMut(&str) -> bool) -> io::Result<()> {
        match self {
            Transcript::File(p) => lines_backwards(p, each),
            Transcript::Db(bytes) => {
                for line in bytes.rsplit(|&b| b == b'\n') {
                    if let Ok(l) = std::str::from_utf8(line)
                        && !l.trim().is_empty()
                        && !each(l.strip_suffix('\r').unwrap_or(l))
                    {
                        break;
                    }
                }
                Ok(())
            }
        }
    }
}

fn read_store(path: &Path) -> io::Result<Map<String, Value>> {
    match std::fs::read(path) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a JSON object; not rewriting it", path.display()),
            )),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Map::new()),
        Err(e) => Err(e),
    }
}

/// Changes one entry of a store (creating it if `create` is given), keeping everything else.
fn update_store(
    path: &Path,
    key: &str,
    create: Option<Value>,
    update: impl FnOnce(&mut Map<String, Value>),
) -> io::Result<Value> {
    let _guard = lock(&STORE_WRITES);
    let mut store = read_store(path)?;
    if !store.contains_key(key) {
        match create {
            Some(v) => {
                store.insert(key.to_string(), v);
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no session {key}"),
                ));
            }
        }
    }
    let entry = store
        .get_mut(key)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("session {key} is not an object"),
            )
        })?;
    update(entry);
    let out = Value::Object(entry.clone());
    let bytes = serde_json::to_vec_pretty(&Value::Object(store)).map_err(io::Error::other)?;
    crate::state::write_atomic(path, &bytes)?;
    Ok(out)
}

fn append_line(path: &Path, line: &Value) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let mut text = line.to_string();
    text.push('\n');
    // One write per line: concurrent readers see whole lines or nothing of it.
    f.write_all(text.as_bytes())
}

/// What the session's origin says about where it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Origin {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
}

impl SessionFile {
    /// Opens (creating if needed) the session `key` in its agent's store.
    pub fn open(state_dir: &Path, key: &SessionKey, origin: &Origin) -> io::Result<SessionFile> {
        let (agent_id, key) = (&key.agent, key.key.as_str());
        let dir = sessions_dir(state_dir, agent_id);
        crate::state::ensure_dir(&dir)?;
        let store = dir.join("sessions.json");
        let now = clock::wall_ms();
        let new_id = clock::Rng::from_os().uuid();
        let mut fresh = json!({"sessionId": new_id, "updatedAt": now, "chatType": "direct"});
        if let Some(c) = &origin.channel {
            fresh["channel"] = json!(c);
            fresh["origin"] = json!({"provider": c, "to": origin.to, "accountId": origin.account_id, "threadId": origin.thread_id});
        }
        // An existing session is only read; the store is rewritten when the run ends.
        let existing = read_store(&store)?
            .get(key)
            .filter(|e| e.get("sessionId").and_then(Value::as_str).is_some())
            .cloned();
        let created = existing.is_none();
        let entry = match existing {
            Some(e) => e,
            None => update_store(&store, key, Some(fresh), |_| {})?,
        };
        let session_id = entry["sessionId"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from)
            .unwrap_or(new_id);
        let transcript = transcript_path(&dir, &session_id)?;
        let existed = transcript.exists();
        let mut last_id = None;
        let mut count = None;
        if !existed {
            count = Some(0);
            append_line(
                &transcript,
                &json!({"type": "session", "version": 3, "id": session_id, "timestamp": clock::iso8601(now), "cwd": state_dir}),
            )?;
        } else {
            last_id = last_message_id(&transcript);
        }
        Ok(SessionFile {
            agent_id: agent_id.clone(),
            key: key.to_string(),
            session_id,
            transcript,
            store,
            last_id,
            created,
            count,
        })
    }

    /// Appends a message line; returns its id.
    pub fn append(&mut self, message: Value) -> io::Result<String> {
        let now = clock::wall_ms();
        let id = format!("{:08x}", clock::Rng::from_os().next_u64() as u32);
        let line = json!({"type": "message", "id": id, "parentId": self.last_id, "timestamp": clock::iso8601(now), "message": message});
        append_line(&self.transcript, &line)?;
        self.last_id = Some(id.clone());
        if let Some(n) = &mut self.count {
            *n += 1;
        }
        Ok(id)
    }

    /// Appends an entry that is not a message (OpenClaw's `custom` entry: a `customType` and
    /// its `data`, never shown to the model, nor counted or listed as a message).
    pub fn append_custom(&mut self, custom_type: &str, data: Value) -> io::Result<()> {
        let now = clock::wall_ms();
        let id = format!("{:08x}", clock::Rng::from_os().next_u64() as u32);
        let line = json!({"type": "custom", "customType": custom_type, "data": data, "id": id, "parentId": self.last_id, "timestamp": clock::iso8601(now)});
        append_line(&self.transcript, &line)?;
        self.last_id = Some(id);
        Ok(())
    }

    /// How many messages the transcript holds (the last one appended is the last of them,
    /// so this is its `seq`). Counted from the file the first time it is asked for — only
    /// when someone watches the session — then kept current by [`SessionFile::append`].
    pub fn message_count(&mut self) -> io::Result<u64> {
        if let Some(n) = self.count {
            return Ok(n);
        }
        let mut n = 0;
        lines_backwards(&self.transcript, |l| {
            n += u64::from(is_message_line(l));
            true
        })?;
        self.count = Some(n);
        Ok(n)
    }

    /// Updates the store entry after a run: time, model and token totals.
    pub fn touch(
        &self,
        provider: Option<&str>,
        model: Option<&str>,
        input: u64,
        output: u64,
        total: u64,
    ) -> io::Result<()> {
        update_store(&self.store, &self.key, None, |e| {
            e.insert("updatedAt".into(), json!(clock::wall_ms()));
            if let (Some(p), Some(m)) = (provider, model) {
                e.insert("modelProvider".into(), json!(p));
                e.insert("model".into(), json!(m));
            }
            let add = |e: &mut Map<String, Value>, k: &str, n: u64| {
                let v = e.get(k).and_then(Value::as_u64).unwrap_or(0) + n;
                e.insert(k.into(), json!(v));
            };
            add(e, "inputTokens", input);
            add(e, "outputTokens", output);
            add(e, "totalTokens", total);
        })
        .map(|_| ())
    }
}

fn last_message_id(path: &Path) -> Option<String> {
    let mut id = None;
    lines_backwards(path, |l| {
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            return true;
        };
        if v["type"] == "message" {
            id = v["id"].as_str().map(String::from);
        }
        id.is_none()
    })
    .ok()?;
    id
}

/// The last `limit` messages of a session's transcript (for `chat.history` and for the next
/// run's context), oldest first. Malformed lines are skipped.
pub fn history(
    state_dir: &Path,
    key: &SessionKey,
    limit: usize,
) -> io::Result<(Option<String>, Vec<Value>)> {
    let Some((sid, transcript)) = Transcript::locate(state_dir, key)? else {
        return Ok((None, Vec::new()));
    };
    let mut out: Vec<Value> = Vec::new();
    if limit > 0 {
        transcript.backwards(|l| {
            if let Ok(mut v) = serde_json::from_str::<Value>(l)
                && v["type"] == "message"
                && v["message"].is_object()
            {
                out.push(v["message"].take());
            }
            out.len() < limit
        })?;
    }
    out.reverse();
    Ok((Some(sid), out))
}

/// What a session's transcript holds of the run whose user message carries an idempotency
/// key ([`find_run`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunTrace {
    /// Up to `context` messages before the user message, oldest first.
    pub before: Vec<Value>,
    /// The user message.
    pub user: Value,
    /// The run's own messages after it (its model calls and tool results), up to the next
    /// user message, oldest first.
    pub after: Vec<Value>,
    /// `custom` entries of type `custom_type` naming the key, written after the user message.
    pub marks: u32,
}

/// The run whose user message carries `idem`, looked for among the newest `search` messages
/// of the session's transcript; `None` when it is not there (the run never wrote it).
pub fn find_run(
    state_dir: &Path,
    key: &SessionKey,
    idem: &str,
    search: usize,
    context: usize,
    custom_type: &str,
) -> io::Result<Option<RunTrace>> {
    let dir = sessions_dir(state_dir, &key.agent);
    let Some(sid) = read_store(&dir.join("sessions.json"))?
        .get(&key.key)
        .and_then(|e| e["sessionId"].as_str().map(String::from))
    else {
        return Ok(None);
    };
    let path = transcript_path(&dir, &sid)?;
    // Newest first until the user message is found.
    let mut later: Vec<Value> = Vec::new();
    let mut marks_later: Vec<usize> = Vec::new(); // how many messages were newer than each mark
    let mut seen = 0usize;
    let mut found: Option<RunTrace> = None;
    lines_backwards(&path, |l| {
        let Ok(mut v) = serde_json::from_str::<Value>(l) else {
            return true;
        };
        if let Some(t) = found.as_mut() {
            if v["type"] == "message" && v["message"].is_object() {
                t.before.push(v["message"].take());
            }
            return t.before.len() < context;
        }
        if v["type"] == "custom" && v["customType"] == custom_type {
            if v["data"]["idempotencyKey"] == idem {
                marks_later.push(later.len());
            }
            return true;
        }
        if v["type"] != "message" || !v["message"].is_object() {
            return true;
        }
        let m = v["message"].take();
        if m["role"] == "user" && m["idempotencyKey"] == idem {
            // The run's messages end at the next user message (another run's).
            let own = later
                .iter()
                .rposition(|m| m["role"] == "user")
                .map_or(0, |i| i + 1);
            let marks = marks_later.iter().filter(|&&n| n >= own).count();
            let mut after: Vec<Value> = later.drain(own..).collect();
            after.reverse();
            found = Some(RunTrace {
                before: Vec::new(),
                user: m,
                after,
                marks: u32::try_from(marks).unwrap_or(u32::MAX),
            });
            return context > 0;
        }
        later.push(m);
        seen += 1;
        seen < search
    })?;
    Ok(found.map(|mut t| {
        t.before.reverse();
        t
    }))
}

/// Whether a transcript line is a message (`{"type": "message", "message": {…}}`), read
/// without building it: what [`history`] and [`page`] count as one.
fn is_message_line(line: &str) -> bool {
    serde_json::from_str::<LineHead<'_>>(line)
        .is_ok_and(|h| h.kind.as_deref() == Some("message") && h.message.is_some_and(|m| m.0))
}

/// The two fields of a transcript line that say whether it is a message.
#[derive(serde::Deserialize)]
struct LineHead<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    message: Option<IsObject>,
}

/// Whether a value is a JSON object, read without keeping it.
struct IsObject(bool);

impl<'de> serde::Deserialize<'de> for IsObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<IsObject, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = IsObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<IsObject, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(IsObject(true))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<IsObject, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(IsObject(false))
            }
            fn visit_bool<E>(self, _: bool) -> Result<IsObject, E> {
                Ok(IsObject(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<IsObject, E> {
                Ok(IsObject(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<IsObject, E> {
                Ok(IsObject(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<IsObject, E> {
                Ok(IsObject(false))
            }
            fn visit_str<E>(self, _: &str) -> Result<IsObject, E> {
                Ok(IsObject(false))
            }
            fn visit_unit<E>(self) -> Result<IsObject, E> {
                Ok(IsObject(false))
            }
        }
        d.deserialize_any(V)
    }
}

/// The raw store entry of a session (`sessions.json`), if it has one: read-only, for clients
/// that show a session.
pub fn session_entry(state_dir: &Path, key: &SessionKey) -> io::Result<Option<Map<String, Value>>> {
    if crate::sessions::sqlite::has_db(state_dir, key.agent.as_str()) {
        return crate::sessions::sqlite::entry_of(state_dir, key.agent.as_str(), &key.key);
    }
    let store = sessions_dir(state_dir, &key.agent).join("sessions.json");
    Ok(read_store(&store)?.remove(&key.key).and_then(|v| match v {
        Value::Object(m) => Some(m),
        _ => None,
    }))
}

/// One message of a [`Page`].
#[derive(Debug, Clone, PartialEq)]
pub struct PageMessage {
    /// Its position among the transcript's messages, from 1 (the oldest).
    pub seq: u64,
    /// The line's `id`.
    pub id: Option<String>,
    /// The line's own `timestamp` (when it was written), in ms.
    pub record_ms: Option<i64>,
    pub message: Value,
}

/// A run of consecutive messages of a session's transcript.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    /// `None`: the session has no store entry (nothing was ever said in it).
    pub session_id: Option<String>,
    /// Oldest first.
    pub messages: Vec<PageMessage>,
    /// Messages in the whole transcript.
    pub total: u64,
}

/// How many lines [`page`] reads between two looks at `cancelled`.
const CANCEL_EVERY: u32 = 256;

/// The `limit` messages that come before the newest `skip` ones, oldest first, and how many
/// messages the transcript holds. Reads backwards: lines of the page are parsed, the older
/// ones only looked at to be counted. `cancelled` is asked every few hundred lines; when it
/// says so the read stops with `ErrorKind::Interrupted`.
pub fn page(
    state_dir: &Path,
    key: &SessionKey,
    skip: u64,
    limit: usize,
    cancelled: &dyn Fn() -> bool,
) -> io::Result<Page> {
    let Some((sid, transcript)) = Transcript::locate(state_dir, key)? else {
        return Ok(Page::default());
    };
    // Counted from the newest: the n-th message met is the n-th from the end.
    let mut from_end: u64 = 0;
    let mut newest_first: Vec<(u64, Option<String>, Option<i64>, Value)> = Vec::new();
    let mut lines: u32 = 0;
    let mut stopped = false;
    transcript.backwards(|l| {
        lines += 1;
        if lines.is_multiple_of(CANCEL_EVERY) && cancelled() {
            stopped = true;
            return false;
        }
        let in_page = from_end >= skip && newest_first.len() < limit;
        if !in_page {
            from_end += u64::from(is_message_line(l));
            return true;
        }
        if let Ok(mut v) = serde_json::from_str::<Value>(l)
            && v["type"] == "message"
            && v["message"].is_object()
        {
            from_end += 1;
            let id = v["id"].as_str().map(String::from);
            let record_ms = match &v["timestamp"] {
                Value::String(t) => crate::sessions::time::parse_iso_ms(t),
                Value::Number(n) => n.as_i64(),
                _ => None,
            };
            newest_first.push((from_end, id, record_ms, v["message"].take()));
        }
        true
    })?;
    if stopped {
        return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
    }
    let total = from_end;
    let messages = newest_first
        .into_iter()
        .rev()
        .map(|(n, id, record_ms, message)| PageMessage {
            seq: total + 1 - n,
            id,
            record_ms,
            message,
        })
        .collect();
    Ok(Page {
        session_id: Some(sid),
        messages,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> SessionKey {
        SessionKey::parse(k, &AgentId::main()).unwrap()
    }

    #[test]
    fn a_run_creates_its_session_and_appends_in_openclaw_format() {
        let d = tempfile::tempdir().unwrap();
        let origin = Origin {
            channel: Some("telegram".into()),
            to: Some("42".into()),
            ..Origin::default()
        };
        let mut s = SessionFile::open(d.path(), &key("agent:main:main"), &origin).unwrap();
        s.append(
            json!({"role": "user", "content": [{"type": "text", "text": "hi"}], "timestamp": 1}),
        )
        .unwrap();
        s.append(json!({"role": "assistant", "content": [{"type": "text", "text": "yo"}], "provider": "p", "model": "m",
                        "usage": {"input": 3, "output": 2, "totalTokens": 5, "cost": {"total": 0.1}}, "timestamp": 2})).unwrap();
        s.touch(Some("p"), Some("m"), 3, 2, 5).unwrap();
        // The usage index reads what was written.
        let mut idx = crate::sessions::index::Index::default();
        idx.refresh_all(d.path()).unwrap();
        let (files, msgs, usage, malformed) = idx.counts();
        assert_eq!((files, msgs, usage, malformed), (1, 2, 1, 0));
        // The store entry, and a second open finds the same session.
        let again =
            SessionFile::open(d.path(), &key("agent:main:main"), &Origin::default()).unwrap();
        assert_eq!(again.session_id, s.session_id);
        let store: Value = serde_json::from_slice(
            &std::fs::read(d.path().join("agents/main/sessions/sessions.json")).unwrap(),
        )
        .unwrap();
        let e = &store["agent:main:main"];
        assert_eq!(
            (
                e["channel"].as_str(),
                e["origin"]["to"].as_str(),
                e["totalTokens"].as_u64()
            ),
            (Some("telegram"), Some("42"), Some(5))
        );
        let (_, h) = history(d.path(), &key("agent:main:main"), 10).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1]["content"][0]["text"], "yo");
    }

    #[test]
    fn unknown_fields_in_the_store_survive_a_run() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("agents/main/sessions");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("sessions.json"),
            r#"{"k":{"sessionId":"s1","updatedAt":1,"skillsSnapshot":{"a":1}},"other":{"x":true}}"#,
        )
        .unwrap();
        let s = SessionFile::open(d.path(), &key("k"), &Origin::default()).unwrap();
        assert_eq!(s.session_id, "s1");
        s.touch(None, None, 1, 1, 2).unwrap();
        let store: Value =
            serde_json::from_slice(&std::fs::read(dir.join("sessions.json")).unwrap()).unwrap();
        assert_eq!(store["k"]["skillsSnapshot"]["a"], 1);
        assert_eq!(store["other"]["x"], true);
        std::fs::write(dir.join("sessions.json"), "{ broken").unwrap();
        assert!(
            s.touch(None, None, 1, 1, 2).is_err(),
            "a store another program broke is not overwritten"
        );
    }

    #[test]
    fn lines_come_backwards_whole_across_blocks() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("t.jsonl");
        // Lines of many sizes, one longer than a block, CRLF endings, a blank line, a line
        // that is not UTF-8 (skipped), and no newline at the end.
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        for i in 0..400 {
            let line = format!("{i}:{}", "x".repeat(i * 37 % 3000));
            bytes.extend_from_slice(line.as_bytes());
            bytes.extend_from_slice(if i % 7 == 0 { b"\r\n" } else { b"\n" });
            want.push(line);
            if i == 150 {
                let long = format!("long:{}", "y".repeat(TAIL_BLOCK as usize * 2 + 5));
                bytes.extend_from_slice(long.as_bytes());
                bytes.extend_from_slice(b"\n\n\xff\xfe not utf-8\n");
                want.push(long);
            }
        }
        bytes.extend_from_slice(b"last");
        want.push("last".into());
        std::fs::write(&path, &bytes).unwrap();
        let mut got = Vec::new();
        lines_backwards(&path, |l| {
            got.push(l.to_string());
            true
        })
        .unwrap();
        got.reverse();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "lines differ");
        // Stopping early reads no further; a missing file has no lines.
        let mut n = 0;
        lines_backwards(&path, |_| {
            n += 1;
            n < 3
        })
        .unwrap();
        assert_eq!(n, 3);
        lines_backwards(&d.path().join("none"), |_| panic!("no lines")).unwrap();
    }

    #[test]
    fn history_is_the_last_messages_of_a_long_transcript() {
        let d = tempfile::tempdir().unwrap();
        let mut s = SessionFile::open(d.path(), &key("k"), &Origin::default()).unwrap();
        for i in 0..3000 {
            s.append(json!({"role": "user", "content": [{"type": "text", "text": format!("m{i}")}], "timestamp": i}))
                .unwrap();
        }
        let (_, h) = history(d.path(), &key("k"), 40).unwrap();
        let texts: Vec<&str> = h
            .iter()
            .map(|m| m["content"][0]["text"].as_str().unwrap())
            .collect();
        let want: Vec<String> = (2960..3000).map(|i| format!("m{i}")).collect();
        assert_eq!(texts, want);
        let again = SessionFile::open(d.path(), &key("k"), &Origin::default()).unwrap();
        assert!(again.last_id.is_some());
    }

    #[test]
    fn a_page_is_numbered_from_the_oldest_message_and_skips_the_newest() {
        let d = tempfile::tempdir().unwrap();
        let never = || false;
        // No store entry: nothing, not an error.
        assert_eq!(
            page(d.path(), &key("k"), 0, 10, &never).unwrap(),
            Page::default()
        );
        let mut s = SessionFile::open(d.path(), &key("k"), &Origin::default()).unwrap();
        assert_eq!(s.message_count().unwrap(), 0);
        for i in 1..=7 {
            s.append(
                json!({"role": "user", "content": [{"type": "text", "text": format!("m{i}")}]}),
            )
            .unwrap();
        }
        // Lines that are not messages are neither shown nor counted.
        append_line(
            &s.transcript,
            &json!({"type": "custom", "message": {"role": "x"}}),
        )
        .unwrap();
        append_line(
            &s.transcript,
            &json!({"type": "message", "message": "not an object"}),
        )
        .unwrap();
        assert_eq!(s.message_count().unwrap(), 7);
        let text = |p: &Page| -> Vec<(u64, String)> {
            p.messages
                .iter()
                .map(|m| {
                    (
                        m.seq,
                        m.message["content"][0]["text"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                    )
                })
                .collect()
        };
        let p = page(d.path(), &key("k"), 0, 3, &never).unwrap();
        assert_eq!(p.total, 7);
        assert_eq!(p.session_id.as_deref(), Some(s.session_id.as_str()));
        assert_eq!(
            text(&p),
            [(5, "m5".into()), (6, "m6".into()), (7, "m7".into())]
        );
        assert!(p.messages[0].id.is_some() && p.messages[0].record_ms.is_some());
        let p = page(d.path(), &key("k"), 3, 3, &never).unwrap();
        assert_eq!(
            text(&p),
            [(2, "m2".into()), (3, "m3".into()), (4, "m4".into())]
        );
        let p = page(d.path(), &key("k"), 6, 3, &never).unwrap();
        assert_eq!((text(&p), p.total), (vec![(1, "m1".into())], 7));
        assert!(
            page(d.path(), &key("k"), 9, 3, &never)
                .unwrap()
                .messages
                .is_empty()
        );
        // A second writer's count starts from the file.
        let mut again = SessionFile::open(d.path(), &key("k"), &Origin::default()).unwrap();
        assert_eq!(again.message_count().unwrap(), 7);
        again
            .append(json!({"role": "user", "content": "m8"}))
            .unwrap();
        assert_eq!(again.message_count().unwrap(), 8);
        assert_eq!(
            page(d.path(), &key("k"), 0, 1, &never).unwrap().messages[0].seq,
            8
        );
        // A read asked to stop stops.
        for i in 0..600 {
            again
                .append(json!({"role": "user", "content": format!("n{i}")}))
                .unwrap();
        }
        let e = page(d.path(), &key("k"), 0, 1, &|| true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
    }

    #[test]
    fn a_run_is_found_by_its_key_with_its_own_turns_and_resume_marks() {
        let d = tempfile::tempdir().unwrap();
        let k = key("agent:main:main");
        let none = find_run(d.path(), &k, "k1", 200, 40, "mark").unwrap();
        assert_eq!(none, None, "no session");
        let mut s = SessionFile::open(d.path(), &k, &Origin::default()).unwrap();
        let msg = |role: &str, text: &str| json!({"role": role, "content": [{"type": "text", "text": text}]});
        for i in 0..5 {
            s.append(msg("user", &format!("old{i}"))).unwrap();
        }
        let mut u = msg("user", "do it");
        u["idempotencyKey"] = json!("k1");
        s.append(u).unwrap();
        s.append_custom("mark", json!({"idempotencyKey": "k1", "attempt": 1}))
            .unwrap();
        s.append(json!({"role": "assistant", "content": [{"type": "toolCall", "id": "c1", "name": "t", "arguments": {}}]}))
            .unwrap();
        s.append_custom("mark", json!({"idempotencyKey": "other"}))
            .unwrap();
        s.append(json!({"role": "toolResult", "toolCallId": "c1", "content": [{"type": "text", "text": "r"}]}))
            .unwrap();
        s.append_custom("mark", json!({"idempotencyKey": "k1", "attempt": 2}))
            .unwrap();
        // Another run after it: not part of it, and its marks do not count.
        let mut u2 = msg("user", "next");
        u2["idempotencyKey"] = json!("k2");
        s.append(u2).unwrap();
        s.append_custom("mark", json!({"idempotencyKey": "k1"}))
            .unwrap();
        s.append(msg("assistant", "answer to next")).unwrap();

        let t = find_run(d.path(), &k, "k1", 200, 3, "mark")
            .unwrap()
            .unwrap();
        assert_eq!(t.user["content"][0]["text"], "do it");
        assert_eq!(t.marks, 2);
        let roles: Vec<&str> = t
            .after
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["assistant", "toolResult"]);
        let before: Vec<&str> = t
            .before
            .iter()
            .map(|m| m["content"][0]["text"].as_str().unwrap())
            .collect();
        assert_eq!(
            before,
            ["old2", "old3", "old4"],
            "the last `context` before it"
        );
        let t2 = find_run(d.path(), &k, "k2", 200, 0, "mark")
            .unwrap()
            .unwrap();
        assert_eq!((t2.after.len(), t2.marks, t2.before.len()), (1, 0, 0));
        // Beyond the search: not found.
        assert_eq!(find_run(d.path(), &k, "k1", 3, 40, "mark").unwrap(), None);
        assert_eq!(
            find_run(d.path(), &k, "nope", 200, 40, "mark").unwrap(),
            None
        );
        // Custom entries are not messages.
        assert_eq!(s.message_count().unwrap(), 10);
        assert_eq!(history(d.path(), &k, 100).unwrap().1.len(), 10);
    }

    #[test]
    fn a_store_naming_a_path_as_session_id_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("agents/main/sessions");
        std::fs::create_dir_all(&dir).unwrap();
        for bad in ["../../escape", "/tmp/x", "..", "a/b"] {
            std::fs::write(
                dir.join("sessions.json"),
                json!({"k": {"sessionId": bad, "updatedAt": 1}}).to_string(),
            )
            .unwrap();
            let e = SessionFile::open(d.path(), &key("k"), &Origin::default()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bad}");
            assert!(e.to_string().contains("not a file name"), "{e}");
            assert!(history(d.path(), &key("k"), 10).is_err(), "{bad}");
        }
        assert!(!d.path().join("escape.jsonl").exists());
    }
}
