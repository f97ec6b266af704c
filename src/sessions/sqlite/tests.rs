use super::fixture::{Writer, zstd};
use super::live::Dbs;
use super::*;
use crate::sessions::index::{self, Index};
use crate::sessions::store::Stores;
use serde_json::json;

/// An assistant line with usage and a recorded cost; `pad` makes it longer (≥ 1 KiB is
/// stored compressed).
fn line(ts: i64, input: u64, cost: f64, pad: usize) -> String {
    json!({
        "type": "message",
        "id": format!("m{ts}"),
        "message": {
            "role": "assistant", "provider": "anthropic", "model": "claude",
            "timestamp": ts,
            "content": [{"type": "text", "text": "x".repeat(pad)}, {"type": "toolCall", "name": "exec"}],
            "usage": {"input": input, "output": 1, "cost": {"total": cost}}
        }
    })
    .to_string()
}

fn user(ts: i64) -> String {
    json!({"type": "message", "message": {"role": "user", "timestamp": ts, "content": "hi"}})
        .to_string()
}

/// (usage records, input tokens, cost) over the whole index.
fn totals(idx: &Index) -> (usize, u64, f64) {
    let mut n = 0;
    let mut input = 0;
    let mut cost = 0.0;
    for f in idx.files.values() {
        for u in &f.usage {
            n += 1;
            input += u.tokens[0];
            cost += u.cost[0];
        }
    }
    (n, input, (cost * 1e6).round() / 1e6)
}

/// A state with agent `main` in a database: session s1 (plain and compressed events), a
/// reset archive (zstd) and a deleted one (identity) of s0, s2 cold in the database and s3
/// cold in a file.
fn state() -> (tempfile::TempDir, Writer) {
    let d = tempfile::tempdir().unwrap();
    let w = Writer::create_current(d.path(), "main").unwrap();
    w.session(
        "agent:main:main",
        "s1",
        &json!({"sessionId": "stale", "updatedAt": 5, "chatType": "direct", "channel": "telegram", "usageFamilySessionIds": ["s0"]}),
        5,
    )
    .unwrap();
    w.session("agent:main:cron:x", "s2", &json!({"label": "nightly"}), 9)
        .unwrap();
    w.event("s1", 0, &user(1000)).unwrap();
    w.event("s1", 1, &line(1001, 10, 0.5, 0)).unwrap();
    w.event("s1", 2, &line(1002, 20, 0.25, 2000)).unwrap(); // compressed
    let archived = format!(
        "{}\n{}\n",
        r#"{"type":"session","id":"s0"}"#,
        line(500, 100, 1.0, 0)
    );
    w.archive(
        "s0",
        "g1",
        "agent:main:main",
        "reset",
        archived.as_bytes(),
        true,
    )
    .unwrap();
    w.archive(
        "s0",
        "g2",
        "agent:main:main",
        "deleted",
        line(600, 200, 2.0, 10).as_bytes(),
        false,
    )
    .unwrap();
    let cold = format!(
        "{}\n{}\n",
        line(700, 1000, 4.0, 0),
        line(701, 2000, 8.0, 1500)
    );
    w.cold(d.path(), "main", "s2", cold.as_bytes(), 2, false)
        .unwrap();
    w.session("agent:main:x", "s3", &json!({}), 1).unwrap();
    w.cold(
        d.path(),
        "main",
        "s3",
        line(800, 5, 0.125, 0).as_bytes(),
        1,
        true,
    )
    .unwrap();
    (d, w)
}

#[test]
fn virtual_paths_round_trip_any_id() {
    for sid in ["s1", "a/b#c%d", "%2F", ""] {
        for table in [
            Table::Events,
            Table::Cold,
            Table::Archive {
                generation: "g#1/2%".into(),
            },
        ] {
            let s = Source {
                agent: "main".into(),
                session_id: sid.into(),
                table,
            };
            let rel = s.rel();
            assert!(is_db_rel(&rel));
            assert_eq!(rel.components().count(), 4, "{rel:?}");
            assert_eq!(Source::parse(&rel), Some(s));
        }
    }
    assert_eq!(
        Source::parse(Path::new("agents/main/sessions/s1.jsonl")),
        None
    );
}

#[test]
fn zstd_frames_decode_bounded_and_damage_is_an_error() {
    let a = zstd(b"hello ");
    let b = zstd(&vec![b'y'; 5000]);
    let both = [a.clone(), b.clone()].concat();
    let out = unzstd(&both, 1 << 20).unwrap();
    assert_eq!(out.len(), 5006);
    assert!(unzstd(&b, 100).is_err(), "over the limit");
    assert!(unzstd(&b[..b.len() / 2], 1 << 20).is_err(), "truncated");
    assert!(unzstd(b"not zstd at all", 1 << 20).is_err());
}

#[test]
fn reads_sessions_events_and_both_archive_kinds_like_the_files() {
    let (d, _w) = state();
    let mut idx = Index::default();
    idx.refresh_all(d.path()).unwrap();
    // s1: 2 records (one compressed), s0: 1 + 1 archived, s2: 2 cold (blob), s3: 1 cold (file).
    assert_eq!(
        totals(&idx),
        (7, 10 + 20 + 100 + 200 + 1000 + 2000 + 5, 15.875)
    );
    let kinds: Vec<_> = {
        let mut v: Vec<_> = idx
            .files
            .values()
            .map(|f| (f.session_id.to_string(), f.kind))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert!(kinds.contains(&("s0".into(), index::FileKind::Reset)));
    assert!(kinds.contains(&("s0".into(), index::FileKind::Deleted)));
    assert_eq!(idx.counts().3, 0, "no malformed line");
    // The store: entry_json with current_session_id as its sessionId, label from the column.
    let stores = Stores::default();
    let v = stores.refresh(d.path());
    let s = &v.snapshots[0];
    assert_eq!(s.entries.len(), 3);
    let main = s.by_session_id("s1").expect("current_session_id wins");
    assert_eq!(main.channel.as_deref(), Some("telegram"));
    assert_eq!(main.family_ids, ["s0"]);
    assert_eq!(
        s.by_session_id("s2").unwrap().label.as_deref(),
        Some("nightly")
    );
    assert!(v.errors.is_empty());
    // Unchanged: not read again.
    assert_eq!(stores.refresh(d.path()).reloaded, 0);
}

#[test]
fn the_same_sessions_as_files_and_in_a_database_count_the_same() {
    // A legacy state, indexed; then converted as OpenClaw's import does, indexed again.
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("agents/main/sessions");
    std::fs::create_dir_all(&s).unwrap();
    std::fs::write(
        s.join("sessions.json"),
        r#"{"agent:main:main":{"sessionId":"s1","updatedAt":5}}"#,
    )
    .unwrap();
    let lines: String = (0..50)
        .map(|i| line(1000 + i, i as u64, 0.01 * i as f64, (i as usize % 3) * 700) + "\n")
        .collect();
    std::fs::write(s.join("s1.jsonl"), &lines).unwrap();
    std::fs::write(
        s.join("s0.jsonl.reset.2026-01-01T00-00-00.000Z"),
        line(10, 7, 0.5, 0) + "\n",
    )
    .unwrap();
    let mut files = Index::default();
    files.refresh_all(d.path()).unwrap();
    let before = totals(&files);
    let c = fixture::convert_legacy(d.path()).unwrap();
    assert_eq!((c.sessions, c.events, c.archives), (1, 50, 1));
    assert!(!s.join("s1.jsonl").exists(), "moved aside as .imported-*");
    let mut db = Index::default();
    db.refresh_all(d.path()).unwrap();
    assert_eq!(totals(&db), before, "never counted twice, nothing lost");
    assert!(db.files.keys().all(|k| is_db_rel(k)));
    // And the incremental path: the refresh that follows reads nothing.
    let dbs = Dbs::default();
    let seen: Vec<_> = dbs
        .check_all(d.path(), true)
        .into_iter()
        .flat_map(|(_, v)| v.unwrap().listing.seen.to_vec())
        .collect();
    let (tasks, gone) = index::plan_where(&db, &seen, is_db_rel);
    assert!(tasks.is_empty() && gone.is_empty());
}

fn plan(dbs: &Dbs, d: &Path, idx: &Index, full: bool) -> (Vec<index::Task>, Vec<PathBuf>) {
    let seen: Vec<_> = dbs
        .check_all(d, full)
        .into_iter()
        .filter_map(|(_, v)| v)
        .flat_map(|v| v.listing.seen.to_vec())
        .collect();
    index::plan_where(idx, &seen, is_db_rel)
}

fn apply(d: &Path, idx: &mut Index, (tasks, gone): (Vec<index::Task>, Vec<PathBuf>)) -> usize {
    idx.remove(&gone);
    let n = tasks.len();
    for t in tasks {
        let c = index::parse_task(d, t, || true).unwrap();
        assert!(idx.merge(c));
    }
    n
}

#[test]
fn new_rows_are_read_from_the_last_seq_and_rewrites_from_the_start() {
    let (d, w) = state();
    let dbs = Dbs::default();
    let mut idx = Index::default();
    let p = plan(&dbs, d.path(), &idx, true);
    apply(d.path(), &mut idx, p);
    let base = totals(&idx);
    // Nothing changed: data_version and the WAL say so, nothing is listed again.
    let rescans = dbs.rescans.load(std::sync::atomic::Ordering::Relaxed);
    let p = plan(&dbs, d.path(), &idx, false);
    assert_eq!(apply(d.path(), &mut idx, p), 0);
    assert_eq!(
        dbs.rescans.load(std::sync::atomic::Ordering::Relaxed),
        rescans
    );
    // Appended: one task, from the next seq.
    w.event("s1", 3, &line(1003, 40, 1.0, 0)).unwrap();
    let (tasks, gone) = plan(&dbs, d.path(), &idx, false);
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].from, 3);
    apply(d.path(), &mut idx, (tasks, gone));
    assert_eq!(totals(&idx).0, base.0 + 1);
    // Rewritten with fewer rows (compaction): read again from seq 0.
    w.conn
        .execute(
            "DELETE FROM transcript_events WHERE session_id = 's1' AND seq < 2",
            [],
        )
        .unwrap();
    let (tasks, gone) = plan(&dbs, d.path(), &idx, false);
    assert_eq!((tasks.len(), tasks[0].from), (1, 0));
    apply(d.path(), &mut idx, (tasks, gone));
    assert_eq!(
        totals(&idx).0,
        base.0 + 1 - 1,
        "the deleted usage row is gone"
    );
    // Cold-archived: the events leave transcript_events, the archive counts instead.
    let before = totals(&idx);
    let mut jsonl = String::new();
    for seq in [2, 3] {
        let (j, z): (Option<String>, Option<Vec<u8>>) = w
            .conn
            .query_row(
                "SELECT event_json, event_zstd FROM transcript_events WHERE session_id='s1' AND seq=?1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let text =
            j.unwrap_or_else(|| String::from_utf8(unzstd(&z.unwrap(), 1 << 20).unwrap()).unwrap());
        jsonl.push_str(&text);
        jsonl.push('\n');
    }
    w.conn
        .execute("DELETE FROM transcript_events WHERE session_id = 's1'", [])
        .unwrap();
    w.cold(d.path(), "main", "s1", jsonl.as_bytes(), 2, false)
        .unwrap();
    let p = plan(&dbs, d.path(), &idx, false);
    apply(d.path(), &mut idx, p);
    assert_eq!(
        totals(&idx),
        before,
        "the same records, now from the cold archive"
    );
    assert!(
        !idx.files
            .keys()
            .any(|k| matches!(Source::parse(k), Some(Source { table: Table::Events, ref session_id, .. }) if session_id == "s1"))
    );
}

#[test]
fn damaged_rows_are_skipped_and_counted() {
    let (d, w) = state();
    let good = line(2000, 3, 0.5, 2000);
    let z = zstd(good.as_bytes());
    w.event_zstd("s1", 3, &z[..z.len() / 2], good.len())
        .unwrap(); // truncated
    w.event("s1", 4, "{ this is not json").unwrap();
    w.event("s1", 5, &line(2001, 4, 0.5, 0)).unwrap();
    w.conn
        .execute(
            "UPDATE session_nodes SET entry_json = '[1]' WHERE session_key = 'agent:main:cron:x'",
            [],
        )
        .unwrap();
    let src = Source {
        agent: "main".into(),
        session_id: "s1".into(),
        table: Table::Events,
    };
    let r = read_source(d.path(), &src, 0, BUSY_TIMEOUT, || true).unwrap();
    assert_eq!(r.end, 6);
    assert_eq!(r.parsed.lines, 6, "one line per row, skipped ones too");
    assert_eq!(r.parsed.usage.len(), 3);
    assert_eq!(r.skips.get(Skip::Zstd), 1);
    assert_eq!(r.skips.get(Skip::NotJson), 1);
    let stores = Stores::default();
    let v = stores.refresh(d.path());
    assert_eq!(v.snapshots[0].entries.len(), 2);
    assert_eq!(stores.dbs.skipped().get(Skip::Entry), 1);
    // chat.history's reader leaves the damaged rows out.
    let text = jsonl(d.path(), &src, BUSY_TIMEOUT).unwrap();
    assert_eq!(text.iter().filter(|&&b| b == b'\n').count(), 5);
}

#[test]
fn an_unknown_schema_or_a_corrupt_file_refuses_that_agent_only() {
    let (d, _w) = state();
    // Agent "old": schema 22. Agent "bad": not a database. Agent "legacy": files.
    let old = Writer::create(d.path(), "old", 22).unwrap();
    old.session("agent:old:main", "o1", &json!({}), 1).unwrap();
    old.event("o1", 0, &line(1, 1, 1.0, 0)).unwrap();
    let bad = d.path().join("agents/bad/agent");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join(DB_FILE), vec![7u8; 8192]).unwrap();
    let legacy = d.path().join("agents/legacy/sessions");
    std::fs::create_dir_all(&legacy).unwrap();
    std::fs::write(
        legacy.join("sessions.json"),
        r#"{"agent:legacy:main":{"sessionId":"l1","updatedAt":1}}"#,
    )
    .unwrap();
    std::fs::write(legacy.join("l1.jsonl"), line(1, 1, 1.0, 0) + "\n").unwrap();
    let stores = Stores::default();
    let v = stores.refresh(d.path());
    let agents: Vec<_> = v.snapshots.iter().map(|s| s.agent_id.as_str()).collect();
    assert_eq!(agents, ["legacy", "main"]);
    let errors: std::collections::HashMap<_, _> = v.errors.iter().cloned().collect();
    assert!(errors["old"].contains("schema version 22"), "{errors:?}");
    assert!(errors.contains_key("bad"));
    let notes = stores.dbs.notes();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("agent old") && n.contains("22"))
    );
    let skipped = stores.dbs.skipped();
    assert_eq!(skipped.get(Skip::Schema), 1);
    assert_eq!(skipped.get(Skip::Corrupt), 1);
    // The usage index has the others.
    let mut idx = Index::default();
    idx.refresh_all(d.path()).unwrap();
    let mut sids: Vec<_> = idx
        .files
        .values()
        .map(|f| f.session_id.to_string())
        .collect();
    sids.sort();
    sids.dedup();
    assert_eq!(sids, ["l1", "s0", "s1", "s2", "s3"]);
    // Looking again does not count again.
    stores.refresh(d.path());
    assert_eq!(stores.dbs.skipped().get(Skip::Schema), 1);
}

#[test]
fn a_locked_database_is_skipped_after_the_busy_timeout_and_a_deleted_one_dropped() {
    let (d, w) = state();
    // A writer that can take the database exclusively: out of WAL mode, before keel looks.
    w.conn
        .pragma_update(None, "journal_mode", "delete")
        .unwrap();
    let dbs = Dbs::with_busy(Duration::from_millis(100));
    let view = dbs.check(d.path(), "main", true).unwrap();
    assert!(view.error.is_none());
    let listed = view.listing.seen.len();
    let locker = Connection::open(db_path(d.path(), "main")).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let t0 = std::time::Instant::now();
    let view = dbs.check(d.path(), "main", true).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(100));
    assert_eq!(view.error.as_ref().map(|e| e.skip), Some(Skip::Busy));
    assert_eq!(
        view.listing.seen.len(),
        listed,
        "the last listing stands while busy"
    );
    assert_eq!(dbs.skipped().get(Skip::Busy), 1);
    locker.execute_batch("COMMIT").unwrap();
    let view = dbs.check(d.path(), "main", false).unwrap();
    assert!(view.error.is_none());
    // Deleted while keel has it open.
    drop(w);
    drop(locker);
    std::fs::remove_file(db_path(d.path(), "main")).unwrap();
    assert!(dbs.check(d.path(), "main", false).is_none());
    assert_eq!(dbs.skipped().get(Skip::Deleted), 1);
    let src = Source {
        agent: "main".into(),
        session_id: "s1".into(),
        table: Table::Events,
    };
    assert!(matches!(
        read_source(d.path(), &src, 0, BUSY_TIMEOUT, || true),
        Err(ReadError::Db(DbError {
            skip: Skip::Deleted,
            ..
        }))
    ));
}

#[test]
fn reading_never_writes_nor_checkpoints() {
    let (d, w) = state();
    let path = db_path(d.path(), "main");
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let before = (
        std::fs::read(&path).unwrap(),
        std::fs::metadata(&wal).unwrap().len(),
    );
    assert!(before.1 > 0, "the writer's WAL has frames");
    let mut idx = Index::default();
    idx.refresh_all(d.path()).unwrap();
    let stores = Stores::default();
    stores.refresh(d.path());
    forget(&path);
    drop(stores);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before.0,
        "the database file is untouched"
    );
    assert_eq!(
        std::fs::metadata(&wal).unwrap().len(),
        before.1,
        "no checkpoint"
    );
    // query_only: even a statement that would write is refused.
    let c = open(&path, BUSY_TIMEOUT).unwrap();
    assert!(c.execute("DELETE FROM transcript_events", []).is_err());
    drop(w);
}

#[test]
fn beside_a_database_only_archives_of_sessions_it_does_not_know_count() {
    // What OpenClaw's import leaves in sessions/: .reset./.deleted. files, and (published)
    // copies of the database's own archives.
    let (d, _w) = state();
    let s = d.path().join("agents/main/sessions");
    std::fs::create_dir_all(&s).unwrap();
    let mut idx = Index::default();
    idx.refresh_all(d.path()).unwrap();
    let base = totals(&idx);
    // A deleted session the database does not know: counted.
    std::fs::write(
        s.join("gone.jsonl.deleted.2026-01-01T00-00-00.000Z"),
        line(900, 11, 0.5, 0) + "\n",
    )
    .unwrap();
    // A reset transcript of a session it knows, a published copy of one of its archives, a
    // live file and an imported original: not counted.
    std::fs::write(
        s.join("s1.jsonl.reset.2026-01-01T00-00-00.000Z"),
        line(901, 13, 0.5, 0) + "\n",
    )
    .unwrap();
    std::fs::write(s.join("s0.jsonl.deleted.g2"), line(902, 17, 0.5, 0) + "\n").unwrap();
    std::fs::write(s.join("s9.jsonl"), line(903, 19, 0.5, 0) + "\n").unwrap();
    std::fs::write(
        s.join("s8.jsonl.imported-1796700240136"),
        line(904, 23, 0.5, 0) + "\n",
    )
    .unwrap();
    idx.refresh_all(d.path()).unwrap();
    assert_eq!(totals(&idx), (base.0 + 1, base.1 + 11, base.2 + 0.5));
}

#[test]
fn a_writer_appending_in_wal_mode_is_never_blocked_and_every_row_is_seen_at_the_next_refresh() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    let (d, w) = state();
    drop(w);
    let state_dir = d.path().to_path_buf();
    let committed = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    const ROWS: i64 = 400;
    // The writer: OpenClaw's pragmas (WAL, synchronous normal, 5 s busy timeout), one
    // transaction per appended event, a TRUNCATE checkpoint every 50 rows.
    let writer = {
        let (committed, done, dir) = (committed.clone(), done.clone(), state_dir.clone());
        std::thread::spawn(move || {
            let w = Writer::create_current(&dir, "main").unwrap();
            w.session("agent:main:live", "live", &json!({}), 1).unwrap();
            let wal = PathBuf::from(format!("{}-wal", db_path(&dir, "main").display()));
            let mut truncated = 0;
            for seq in 0..ROWS {
                let t0 = std::time::Instant::now();
                w.event(
                    "live",
                    seq,
                    &line(10_000 + seq, 1, 0.01, (seq as usize % 4) * 400),
                )
                .expect("the writer is never refused");
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "never waits out its timeout"
                );
                committed.store(seq + 1, Ordering::Release);
                if seq % 50 == 49 {
                    let busy: i64 = w
                        .conn
                        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                        .unwrap();
                    assert_eq!(busy, 0, "no reader holds a snapshot past the busy timeout");
                    if std::fs::metadata(&wal).map_or(0, |m| m.len()) == 0 {
                        truncated += 1;
                    }
                }
            }
            done.store(true, Ordering::Release);
            truncated
        })
    };
    // keel: refreshes in a loop, as queries do.
    let dbs = Dbs::default();
    let mut idx = Index::default();
    let live_rows = |idx: &Index| -> usize {
        idx.files
            .iter()
            .filter(|(_, f)| &*f.session_id == "live")
            .map(|(_, f)| f.usage.len())
            .sum()
    };
    let mut refreshes = 0;
    loop {
        let finished = done.load(Ordering::Acquire);
        let before = committed.load(Ordering::Acquire) as usize;
        let p = plan(&dbs, &state_dir, &idx, false);
        apply(&state_dir, &mut idx, p);
        refreshes += 1;
        assert!(
            live_rows(&idx) >= before,
            "every row committed before a refresh is seen by it ({} < {before})",
            live_rows(&idx)
        );
        if finished {
            break;
        }
    }
    let truncated = writer.join().unwrap();
    assert_eq!(live_rows(&idx), ROWS as usize);
    assert_eq!(
        truncated,
        (ROWS / 50) as usize,
        "the WAL shrank at every checkpoint"
    );
    assert!(refreshes > 1);
}

#[test]
fn a_look_never_waits_for_another_worker_stuck_on_a_locked_database() {
    let (d, w) = state();
    w.conn
        .pragma_update(None, "journal_mode", "delete")
        .unwrap();
    let dbs = std::sync::Arc::new(Dbs::with_busy(Duration::from_millis(1500)));
    let first = dbs.check(d.path(), "main", true).unwrap();
    let locker = Connection::open(db_path(d.path(), "main")).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let stuck = {
        let (dbs, dir) = (dbs.clone(), d.path().to_path_buf());
        std::thread::spawn(move || dbs.check(&dir, "main", true).unwrap())
    };
    // Once the other look holds the agent (waited for, bounded), a look answers at once
    // from the last view.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !dbs.looking("main") {
        assert!(
            std::time::Instant::now() < until,
            "the other look never started"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let t0 = std::time::Instant::now();
    let v = dbs.check(d.path(), "main", true).unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
    assert!(v.error.is_none());
    assert_eq!(v.listing, first.listing);
    let v = stuck.join().unwrap();
    assert_eq!(v.error.map(|e| e.skip), Some(Skip::Busy));
    locker.execute_batch("COMMIT").unwrap();
}

#[test]
fn import_writes_keels_store_with_the_same_usage_resumably_and_never_touches_the_source() {
    let (d, w) = state();
    drop(w);
    let db = db_path(d.path(), "main");
    let source_bytes = std::fs::read(&db).unwrap();
    let mut src = Index::default();
    src.refresh_all(d.path()).unwrap();
    let to = tempfile::tempdir().unwrap();
    let dry = import::import(d.path(), to.path(), true).unwrap();
    assert!(dry.written > 0);
    assert!(
        !to.path().join("agents").exists(),
        "a dry run writes nothing"
    );
    let r = import::import(d.path(), to.path(), false).unwrap();
    assert_eq!(
        (r.agents, r.sessions, r.written, r.unchanged),
        (1, 3, dry.written, 0)
    );
    assert!(r.skipped.is_empty(), "{r:?}");
    // keel's own store now: files, archives as archives, the same usage.
    let mut imported = Index::default();
    imported.refresh_all(to.path()).unwrap();
    assert_eq!(totals(&imported), totals(&src));
    assert!(imported.files.keys().all(|k| !is_db_rel(k)));
    let kinds: Vec<_> = imported.files.values().map(|f| f.kind).collect();
    assert!(kinds.contains(&index::FileKind::Reset) && kinds.contains(&index::FileKind::Deleted));
    let v = Stores::default().refresh(to.path());
    assert_eq!(v.snapshots[0].entries.len(), 3);
    // Killed half-way: a file lost is written again, the others left alone.
    let live = to.path().join("agents/main/sessions/s1.jsonl");
    std::fs::remove_file(&live).unwrap();
    let again = import::import(d.path(), to.path(), false).unwrap();
    assert_eq!((again.written, again.unchanged), (1, r.written - 1));
    assert!(live.exists());
    assert_eq!(
        std::fs::read(&db).unwrap(),
        source_bytes,
        "the source is never modified"
    );
    assert!(import::import(d.path(), d.path(), false).is_err());
}

#[test]
fn two_first_looks_at_once_do_not_deadlock() {
    // The first look ever at an agent has no last view to answer from: the second waits for
    // the first, which must be able to publish its view meanwhile.
    let (d, w) = state();
    w.conn
        .pragma_update(None, "journal_mode", "delete")
        .unwrap();
    let dbs = std::sync::Arc::new(Dbs::with_busy(Duration::from_millis(300)));
    let locker = Connection::open(db_path(d.path(), "main")).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let first = {
        let (dbs, dir) = (dbs.clone(), d.path().to_path_buf());
        std::thread::spawn(move || dbs.check(&dir, "main", true).map(|v| v.error.is_some()))
    };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !dbs.looking("main") && !first.is_finished() {
        assert!(std::time::Instant::now() < until);
        std::thread::sleep(Duration::from_millis(1));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (dbs, dir) = (dbs.clone(), d.path().to_path_buf());
        std::thread::spawn(move || {
            let _ = tx.send(dbs.check(&dir, "main", false).is_some());
        });
    }
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok(true),
        "deadlocked"
    );
    assert_eq!(
        first.join().unwrap(),
        Some(true),
        "the first look saw the lock"
    );
    locker.execute_batch("COMMIT").unwrap();
}
