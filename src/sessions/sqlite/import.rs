//! `keel import openclaw`: an OpenClaw state (SQLite-era or legacy) written into keel's own
//! store — per agent `sessions/sessions.json`, `<sid>.jsonl` transcripts, and the reset and
//! deleted transcripts as `<sid>.jsonl.reset.<stamp>` / `.deleted.<stamp>` archives — each
//! file written atomically (temp, fsync, rename), `sessions.json` last. A file already there
//! with the same bytes is left alone, so a run killed half-way is resumed by running it again.
//! The source is only read (the databases read-only, as everywhere in keel).

use super::live::Dbs;
use super::{Source, Table, db_path, jsonl, session_entries, with_conn};
use crate::sessions::index::FileKind;
use crate::sessions::store::{agents_dir, list_agents};
use serde_json::{Map, Value};
use std::io;
use std::path::Path;

/// What an import read, wrote and skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub agents: usize,
    pub sessions: usize,
    /// Transcript files (live and archives) read from the source.
    pub transcripts: usize,
    pub written: usize,
    /// Already there with the same bytes.
    pub unchanged: usize,
    /// (what, why) for everything not imported.
    pub skipped: Vec<(String, String)>,
}

impl Report {
    pub fn summary(&self, dry_run: bool) -> String {
        let mut s = format!(
            "read {} agents, {} sessions, {} transcripts; {} {} files, {} already there",
            self.agents,
            self.sessions,
            self.transcripts,
            if dry_run { "would write" } else { "wrote" },
            self.written,
            self.unchanged
        );
        s.push_str(&format!(", {} skipped\n", self.skipped.len()));
        for (what, why) in &self.skipped {
            s.push_str(&format!("  skipped {what}: {why}\n"));
        }
        s
    }
}

/// `YYYY-MM-DDTHH-MM-SS.mmmZ`, OpenClaw's archive stamp.
fn stamp(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    format!(
        "{}T{:02}-{:02}-{:02}.{:03}Z",
        crate::sessions::time::format_day(days),
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

struct Out<'a> {
    dir: &'a Path,
    dry_run: bool,
    report: &'a mut Report,
}

impl Out<'_> {
    fn put(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = crate::ids::file_in(self.dir, name, "")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:?}")))?;
        if std::fs::read(&path).is_ok_and(|old| old == bytes) {
            self.report.unchanged += 1;
            return Ok(());
        }
        self.report.written += 1;
        if self.dry_run {
            return Ok(());
        }
        std::fs::create_dir_all(self.dir)?;
        crate::state::write_atomic(&path, bytes)
    }
}

/// Imports `from` into `to` (which must not be `from`).
pub fn import(from: &Path, to: &Path, dry_run: bool) -> io::Result<Report> {
    let (a, b) = (from.canonicalize()?, to.canonicalize().ok());
    if b.as_ref() == Some(&a) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--to is the source itself: the source is never modified",
        ));
    }
    let mut report = Report::default();
    let dbs = Dbs::default();
    for agent in list_agents(from) {
        let dir = agents_dir(to).join(&agent).join("sessions");
        let src_sessions = agents_dir(from).join(&agent).join("sessions");
        let mut entries: Map<String, Value> = Map::new();
        let mut out = Out {
            dir: &dir,
            dry_run,
            report: &mut report,
        };
        // Archive files in sessions/ that count (all of them for a legacy agent; those the
        // database does not cover beside one).
        let mut files: Vec<crate::sessions::index::Seen> = crate::sessions::index::scan(from)
            .into_iter()
            .filter(|s| s.agent == agent)
            .collect();
        match dbs.check(from, &agent, true) {
            Some(view) => {
                if let Some(e) = &view.error {
                    out.report
                        .skipped
                        .push((format!("agent {agent}"), e.message.clone()));
                    continue;
                }
                let path = db_path(from, &agent);
                let mut skips = super::Skips::default();
                entries = with_conn(&path, dbs.busy(), |c| {
                    session_entries(c, &mut skips).map_err(|e| super::db_error(&path, e))
                })
                .map_err(|e| io::Error::other(e.message))?;
                let views = [(agent.clone(), Some(view.clone()))];
                files = super::files_beside(files, &views);
                let with_events: std::collections::HashSet<&str> = view
                    .listing
                    .seen
                    .iter()
                    .filter_map(|s| match Source::parse(&s.rel)?.table {
                        Table::Events => Some(s.session_id.as_str()),
                        _ => None,
                    })
                    .collect();
                let mut used = std::collections::HashSet::new();
                for s in view.listing.seen.iter() {
                    let Some(src) = Source::parse(&s.rel) else {
                        continue;
                    };
                    if src.table == Table::Cold && with_events.contains(s.session_id.as_str()) {
                        continue;
                    }
                    let bytes = jsonl(from, &src, dbs.busy())?;
                    let name = match (&src.table, s.kind) {
                        (Table::Events | Table::Cold, _) => format!("{}.jsonl", src.session_id),
                        (Table::Archive { .. }, kind) => {
                            let what = if kind == FileKind::Deleted {
                                "deleted"
                            } else {
                                "reset"
                            };
                            let base = format!(
                                "{}.jsonl.{what}.{}",
                                src.session_id,
                                stamp(s.ident.mtime_ns)
                            );
                            let mut name = base.clone();
                            let mut n = 1;
                            while !used.insert(name.clone()) {
                                n += 1;
                                name = format!("{base}-{n}");
                            }
                            name
                        }
                    };
                    out.report.transcripts += 1;
                    if let Err(e) = out.put(&name, &bytes) {
                        out.report.skipped.push((
                            format!("agents/{agent}: {}", s.rel.display()),
                            e.to_string(),
                        ));
                    }
                }
                if !skips.is_empty() {
                    out.report.skipped.push((
                        format!("agent {agent}"),
                        format!(
                            "{} session entries that are not JSON objects",
                            skips.get(super::Skip::Entry)
                        ),
                    ));
                }
            }
            None => match std::fs::read(src_sessions.join("sessions.json")) {
                Ok(b) => match serde_json::from_slice::<Value>(&b) {
                    Ok(Value::Object(m)) => entries = m,
                    _ => out.report.skipped.push((
                        format!("agents/{agent}/sessions/sessions.json"),
                        "not a JSON object".into(),
                    )),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            },
        }
        for s in files {
            let name = s
                .rel
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let bytes = std::fs::read(from.join(&s.rel))?;
            out.report.transcripts += 1;
            if let Err(e) = out.put(&name, &bytes) {
                out.report
                    .skipped
                    .push((format!("{}", s.rel.display()), e.to_string()));
            }
        }
        out.report.sessions += entries.len();
        let store = serde_json::to_vec_pretty(&Value::Object(entries)).map_err(io::Error::other)?;
        out.put("sessions.json", &store)?;
        report.agents += 1;
    }
    Ok(report)
}
