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
        if !existed {
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
        })
    }

    /// Appends a message line; returns its id.
    pub fn append(&mut self, message: Value) -> io::Result<String> {
        let now = clock::wall_ms();
        let id = format!("{:08x}", clock::Rng::from_os().next_u64() as u32);
        let line = json!({"type": "message", "id": id, "parentId": self.last_id, "timestamp": clock::iso8601(now), "message": message});
        append_line(&self.transcript, &line)?;
        self.last_id = Some(id.clone());
        Ok(id)
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
    let (agent_id, key) = (&key.agent, key.key.as_str());
    let store = sessions_dir(state_dir, agent_id).join("sessions.json");
    let Some(sid) = read_store(&store)?
        .get(key)
        .and_then(|e| e["sessionId"].as_str().map(String::from))
    else {
        return Ok((None, Vec::new()));
    };
    let path = transcript_path(&sessions_dir(state_dir, agent_id), &sid)?;
    let mut out: Vec<Value> = Vec::new();
    if limit > 0 {
        lines_backwards(&path, |l| {
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
