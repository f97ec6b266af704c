//! The usage index: per transcript file, its identity (inode, size, mtime), the byte offset
//! parsed so far, and its records (messages, usage, tool calls).
//!
//! Refreshing is plan → parse → merge: [`plan`] compares a directory scan with the index and
//! lists what to read (a new file from 0, an appended one from its offset, a replaced or shrunk
//! one from 0 again); [`parse_task`] reads without any lock, in bounded slices, checking a
//! cancel check between slices; [`Index::merge`] applies the result under the write lock only
//! if the file is still where the plan found it (optimistic: a cold build and a query's inline
//! refresh may race on a file, and the loser's work is discarded, never counted twice).
//!
//! The index is persisted (`<state>/usage-index.bin`, atomic write, checksummed) and reloaded
//! at boot; a file that fails its checksum or version is ignored and the index rebuilt.

use super::transcript::{LocalNames, MsgRec, Parsed, ToolRec, UsageRec};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes read per slice; the cancel check runs between slices.
pub const SLICE: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Live = 0,
    Reset = 1,
    Deleted = 2,
}

/// Where a file was when it was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileIdent {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileIdent {
    pub fn of(meta: &std::fs::Metadata) -> FileIdent {
        FileIdent {
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        }
    }
}

/// One transcript file found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Relative to the state directory.
    pub rel: PathBuf,
    pub agent: String,
    pub session_id: String,
    pub kind: FileKind,
    pub ident: FileIdent,
}

/// Classifies a file name: `<sid>.jsonl`, `<sid>.jsonl.reset.<stamp>`,
/// `<sid>.jsonl.deleted.<stamp>`; anything else is not a transcript.
pub fn classify(name: &str) -> Option<(String, FileKind)> {
    // `*.imported-<ms>`: OpenClaw moved the file aside once it was in its SQLite store.
    if name.starts_with('.') || name.contains(".imported-") {
        return None;
    }
    if let Some(sid) = name.strip_suffix(".jsonl") {
        return (!sid.is_empty()).then(|| (sid.to_string(), FileKind::Live));
    }
    let (sid, rest) = name.split_once(".jsonl.")?;
    let kind = if rest.starts_with("reset.") {
        FileKind::Reset
    } else if rest.starts_with("deleted.") {
        FileKind::Deleted
    } else {
        return None;
    };
    (!sid.is_empty()).then(|| (sid.to_string(), kind))
}

/// Every transcript file under `<state>/agents/*/sessions/`. For an agent whose sessions live
/// in a SQLite store only its reset and deleted archives count (OpenClaw's import leaves them
/// there, and publishes its own archives there; see [`super::sqlite::files_beside`]): a live
/// `<sid>.jsonl` beside a database is not its session.
pub fn scan(state_dir: &Path) -> Vec<Seen> {
    let mut out = Vec::new();
    for agent in super::store::list_agents(state_dir) {
        let db = super::sqlite::has_db(state_dir, &agent);
        let dir = super::store::agents_dir(state_dir)
            .join(&agent)
            .join("sessions");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let Some((session_id, kind)) = classify(&name) else {
                continue;
            };
            if db && kind == FileKind::Live {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            out.push(Seen {
                rel: PathBuf::from("agents")
                    .join(&agent)
                    .join("sessions")
                    .join(&name),
                agent: agent.clone(),
                session_id,
                kind,
                ident: FileIdent::of(&meta),
            });
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

/// One file's records.
#[derive(Debug, Clone)]
pub struct FileIndex {
    pub agent: u32,
    pub session_id: Arc<str>,
    pub kind: FileKind,
    pub ident: FileIdent,
    /// Bytes parsed (up to the last complete line).
    pub offset: u64,
    pub lines: u64,
    pub malformed: u64,
    pub msgs: Vec<MsgRec>,
    pub usage: Vec<UsageRec>,
    pub tools: Vec<ToolRec>,
    /// The session id interned in [`Tables`], for cheap grouping.
    pub sid: u32,
    /// Earliest and latest record time (`(i64::MAX, i64::MIN)` when there is none): a query
    /// skips a file outside its range, and stops range-checking records of a file inside it.
    pub span: (i64, i64),
}

fn span_of(msgs: &[MsgRec], usage: &[UsageRec], tools: &[ToolRec]) -> (i64, i64) {
    let ts = msgs
        .iter()
        .map(|m| m.ts)
        .chain(usage.iter().map(|u| u.ts))
        .chain(tools.iter().map(|t| t.ts));
    ts.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)))
}

/// Interned strings (agents, providers, models, tools) and the model table.
#[derive(Debug, Default)]
pub struct Tables {
    pub strings: Vec<Arc<str>>,
    string_ids: HashMap<Arc<str>, u32>,
    /// (provider, model) as string ids.
    pub models: Vec<(u32, u32)>,
    model_ids: HashMap<(u32, u32), u32>,
}

impl Tables {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as u32;
        let a: Arc<str> = Arc::from(s);
        self.strings.push(a.clone());
        self.string_ids.insert(a, id);
        id
    }

    pub fn model(&mut self, provider: &str, model: &str) -> u32 {
        let key = (self.intern(provider), self.intern(model));
        if let Some(&id) = self.model_ids.get(&key) {
            return id;
        }
        let id = self.models.len() as u32;
        self.models.push(key);
        self.model_ids.insert(key, id);
        id
    }

    pub fn str(&self, id: u32) -> &str {
        self.strings.get(id as usize).map_or("unknown", |s| s)
    }

    /// (provider, model) of a model id.
    pub fn model_names(&self, id: u32) -> (&str, &str) {
        match self.models.get(id as usize) {
            Some(&(p, m)) => (self.str(p), self.str(m)),
            None => ("unknown", "unknown"),
        }
    }
}

/// What to read from one file.
#[derive(Debug, Clone)]
pub struct Task {
    pub seen: Seen,
    /// Where to start reading.
    pub from: u64,
    /// The index entry's (inode, offset) when planned; `None` for a file not in the index.
    pub expect: Option<(u64, u64)>,
}

impl Task {
    pub fn bytes(&self) -> u64 {
        self.seen.ident.size.saturating_sub(self.from)
    }
}

/// The result of reading a task.
#[derive(Debug)]
pub struct Chunk {
    pub task: Task,
    pub parsed: Parsed,
    /// Offset after the last complete line read (for a database source: the next `seq`).
    pub end: u64,
    pub ident: FileIdent,
    /// Bytes parsed.
    pub bytes: u64,
    /// What a database source skipped, by reason.
    pub skips: super::sqlite::Skips,
}

/// Why a parse stopped early.
#[derive(Debug)]
pub enum ParseError {
    Io(io::Error),
    /// A database source could not be read (busy past its timeout, damaged).
    Db(super::sqlite::DbError),
    Cancelled,
}

/// Reads a task's bytes from `from` to the current end of the file, in [`SLICE`]s, calling
/// `check` between slices. A trailing line without its newline is left for the next read.
pub fn parse_task(
    state_dir: &Path,
    task: Task,
    mut check: impl FnMut() -> bool,
) -> Result<Chunk, ParseError> {
    if let Some(src) = super::sqlite::Source::parse(&task.seen.rel) {
        return parse_db_task(state_dir, &src, task, check);
    }
    let path = state_dir.join(&task.seen.rel);
    let mut f = File::open(&path).map_err(ParseError::Io)?;
    let ident = FileIdent::of(&f.metadata().map_err(ParseError::Io)?);
    f.seek(SeekFrom::Start(task.from)).map_err(ParseError::Io)?;
    let mut parsed = Parsed::default();
    let mut buf: Vec<u8> = Vec::with_capacity(SLICE + 4096);
    let mut offset = task.from;
    let mut chunk = vec![0u8; SLICE];
    loop {
        if !check() {
            return Err(ParseError::Cancelled);
        }
        let n = f.read(&mut chunk).map_err(ParseError::Io)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let used = parsed.lines(&buf);
        offset += used as u64;
        buf.drain(..used);
        // A single line longer than 64 MiB is not a transcript line: count it and move on.
        if buf.len() > 64 << 20 {
            parsed.lines += 1;
            parsed.malformed += 1;
            offset += buf.len() as u64;
            buf.clear();
        }
    }
    Ok(Chunk {
        bytes: offset - task.from,
        task,
        parsed,
        end: offset,
        ident,
        skips: Default::default(),
    })
}

/// [`parse_task`] for a source in an agent's SQLite store.
fn parse_db_task(
    state_dir: &Path,
    src: &super::sqlite::Source,
    task: Task,
    check: impl FnMut() -> bool,
) -> Result<Chunk, ParseError> {
    use super::sqlite::{ReadError, Skip};
    let read = super::sqlite::read_source(
        state_dir,
        src,
        task.from,
        super::sqlite::BUSY_TIMEOUT,
        check,
    )
    .map_err(|e| match e {
        ReadError::Cancelled => ParseError::Cancelled,
        ReadError::Io(e) => ParseError::Io(e),
        ReadError::Db(e) if e.skip == Skip::Deleted => {
            ParseError::Io(io::Error::new(io::ErrorKind::NotFound, e.message))
        }
        ReadError::Db(e) => ParseError::Db(e),
    })?;
    let ident = task.seen.ident;
    Ok(Chunk {
        bytes: read.bytes,
        end: read.end,
        ident,
        parsed: read.parsed,
        skips: read.skips,
        task,
    })
}

/// What to read of one file, if anything: a new file from 0, an appended one from its offset,
/// a replaced (new inode) or shrunk one from 0 again.
fn plan_one(index: &Index, s: &Seen) -> Option<Task> {
    match index.files.get(&s.rel) {
        None => Some(Task {
            seen: s.clone(),
            from: 0,
            expect: None,
        }),
        Some(f) => {
            let expect = Some((f.ident.ino, f.offset));
            // A session's rows in a database: fewer than were read means it was rewritten.
            let fewer_rows = matches!(
                super::sqlite::Source::parse(&s.rel),
                Some(super::sqlite::Source {
                    table: super::sqlite::Table::Events,
                    ..
                })
            ) && (s.ident.mtime_ns.max(0) as u64) < f.lines;
            if f.ident.ino != s.ident.ino || s.ident.size < f.offset || fewer_rows {
                Some(Task {
                    seen: s.clone(),
                    from: 0,
                    expect,
                })
            } else if s.ident.size > f.offset {
                Some(Task {
                    seen: s.clone(),
                    from: f.offset,
                    expect,
                })
            } else {
                None
            }
        }
    }
}

/// Compares a scan with the index: what to read, and which indexed files are gone.
pub fn plan(index: &Index, seen: &[Seen]) -> (Vec<Task>, Vec<PathBuf>) {
    plan_where(index, seen, |_| true)
}

/// [`plan`] over the part of the index `mine` says the scan covered (files or database
/// sources): entries outside it are never called gone.
pub fn plan_where(
    index: &Index,
    seen: &[Seen],
    mine: impl Fn(&Path) -> bool,
) -> (Vec<Task>, Vec<PathBuf>) {
    let tasks = seen.iter().filter_map(|s| plan_one(index, s)).collect();
    let present: std::collections::HashSet<&PathBuf> = seen.iter().map(|s| &s.rel).collect();
    let gone = index
        .files
        .keys()
        .filter(|k| mine(k) && !present.contains(k))
        .cloned()
        .collect();
    (tasks, gone)
}

/// Like [`plan`], for a set of paths known to have changed (relative to the state directory,
/// `agents/<agent>/sessions/<file>`).
pub fn plan_paths(
    index: &Index,
    state_dir: &Path,
    paths: &std::collections::HashSet<PathBuf>,
) -> (Vec<Task>, Vec<PathBuf>) {
    let mut tasks = Vec::new();
    let mut gone = Vec::new();
    for rel in paths {
        let parts: Vec<_> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let [_, agent, _, name] = parts.as_slice() else {
            continue;
        };
        let Some((session_id, kind)) = classify(name) else {
            continue;
        };
        // A live transcript file beside an agent's SQLite store is not its session.
        if kind == FileKind::Live && super::sqlite::has_db(state_dir, agent) {
            continue;
        }
        match std::fs::metadata(state_dir.join(rel)) {
            Ok(meta) if meta.is_file() => {
                let seen = Seen {
                    rel: rel.clone(),
                    agent: agent.clone(),
                    session_id,
                    kind,
                    ident: FileIdent::of(&meta),
                };
                tasks.extend(plan_one(index, &seen));
            }
            _ if index.files.contains_key(rel) => gone.push(rel.clone()),
            _ => {}
        }
    }
    tasks.sort_by(|a, b| a.seen.rel.cmp(&b.seen.rel));
    (tasks, gone)
}

/// The whole index.
/// Not `Clone`: the index is the one large structure keel holds, and is never copied.
#[derive(Debug, Default)]
pub struct Index {
    pub tables: Tables,
    pub files: HashMap<PathBuf, FileIndex>,
}

/// Parse buffers grow by doubling; the index keeps only what it uses.
fn shrunk<T>(mut v: Vec<T>) -> Vec<T> {
    v.shrink_to_fit();
    v
}

fn remap(tables: &mut Tables, names: &LocalNames) -> (Vec<u32>, Vec<u32>) {
    let models = names
        .models
        .iter()
        .map(|(p, m)| tables.model(p, m))
        .collect();
    let tools = names.tools.iter().map(|t| tables.intern(t)).collect();
    (models, tools)
}

impl Index {
    /// Applies a parsed chunk if the file is still as planned; false if the chunk is stale.
    pub fn merge(&mut self, c: Chunk) -> bool {
        let current = self
            .files
            .get(&c.task.seen.rel)
            .map(|f| (f.ident.ino, f.offset));
        if current != c.task.expect || (c.task.from > 0 && c.ident.ino != c.task.seen.ident.ino) {
            return false;
        }
        let (models, tools) = remap(&mut self.tables, &c.parsed.names);
        let agent = self.tables.intern(&c.task.seen.agent);
        let mut usage = c.parsed.usage;
        for u in &mut usage {
            u.model = models[u.model as usize];
        }
        let mut tool_recs = c.parsed.tools;
        for t in &mut tool_recs {
            t.name = tools[t.name as usize];
        }
        let rel = c.task.seen.rel.clone();
        if c.task.from == 0 {
            self.files.insert(
                rel,
                FileIndex {
                    agent,
                    session_id: Arc::from(c.task.seen.session_id.as_str()),
                    sid: self.tables.intern(&c.task.seen.session_id),
                    span: span_of(&c.parsed.msgs, &usage, &tool_recs),
                    kind: c.task.seen.kind,
                    ident: c.ident,
                    offset: c.end,
                    lines: c.parsed.lines,
                    malformed: c.parsed.malformed,
                    msgs: shrunk(c.parsed.msgs),
                    usage: shrunk(usage),
                    tools: shrunk(tool_recs),
                },
            );
        } else if let Some(f) = self.files.get_mut(&rel) {
            let (lo, hi) = span_of(&c.parsed.msgs, &usage, &tool_recs);
            f.span = (f.span.0.min(lo), f.span.1.max(hi));
            f.ident = c.ident;
            f.offset = c.end;
            f.lines += c.parsed.lines;
            f.malformed += c.parsed.malformed;
            f.msgs.extend(c.parsed.msgs);
            f.usage.extend(usage);
            f.tools.extend(tool_recs);
        }
        true
    }

    /// Drops files that are gone from disk.
    pub fn remove(&mut self, gone: &[PathBuf]) {
        for g in gone {
            self.files.remove(g);
        }
    }

    pub fn counts(&self) -> (usize, usize, usize, u64) {
        let mut msgs = 0;
        let mut usage = 0;
        let mut malformed = 0;
        for f in self.files.values() {
            msgs += f.msgs.len();
            usage += f.usage.len();
            malformed += f.malformed;
        }
        (self.files.len(), msgs, usage, malformed)
    }

    /// Brings the index up to date in the calling thread (no bound: for the CLI and tests).
    pub fn refresh_all(&mut self, state_dir: &Path) -> io::Result<u64> {
        let dbs = super::sqlite::live::Dbs::default();
        let views = dbs.check_all(state_dir, true);
        let seen = super::sqlite::files_beside(scan(state_dir), &views);
        let (mut tasks, mut gone) = plan_where(self, &seen, |k| !super::sqlite::is_db_rel(k));
        let db_seen: Vec<Seen> = views
            .into_iter()
            .filter_map(|(_, v)| v)
            .flat_map(|v| v.listing.seen.to_vec())
            .collect();
        let (t, g) = plan_where(self, &db_seen, super::sqlite::is_db_rel);
        tasks.extend(t);
        gone.extend(g);
        self.remove(&gone);
        let mut bytes = 0;
        for t in tasks {
            match parse_task(state_dir, t, || true) {
                Ok(c) => {
                    bytes += c.bytes;
                    self.merge(c);
                }
                Err(ParseError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Err(ParseError::Io(e)) => return Err(e),
                Err(ParseError::Db(e)) => return Err(io::Error::other(e.message)),
                Err(ParseError::Cancelled) => {}
            }
        }
        Ok(bytes)
    }
}

// ---- persistence --------------------------------------------------------------------------
//
// Format: magic, body length (u64), FNV-1a of the body (u64), body. Written and read as a
// stream, so saving or loading never holds a second copy of the index in memory.

const MAGIC: &[u8; 8] = b"KEELUIX1";

/// Where the index lives in a state directory.
pub fn index_path(state_dir: &Path) -> PathBuf {
    state_dir.join("usage-index.bin")
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Writes little-endian values, hashing and counting what it writes.
struct W<T: Write> {
    out: T,
    hash: u64,
    len: u64,
}

impl<T: Write> W<T> {
    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.hash = fnv1a(self.hash, b);
        self.len += b.len() as u64;
        self.out.write_all(b)
    }
    fn u8(&mut self, v: u8) -> io::Result<()> {
        self.bytes(&[v])
    }
    fn u32(&mut self, v: u32) -> io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    fn i64(&mut self, v: i64) -> io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    fn f64(&mut self, v: f64) -> io::Result<()> {
        self.bytes(&v.to_bits().to_le_bytes())
    }
    fn str(&mut self, s: &str) -> io::Result<()> {
        self.u32(s.len() as u32)?;
        self.bytes(s.as_bytes())
    }
    fn len32(&mut self, n: usize) -> io::Result<()> {
        let n = u32::try_from(n).map_err(|_| io::Error::other("index too large to save"))?;
        self.u32(n)
    }
}

/// Reads what [`W`] wrote, hashing as it goes, never past the declared body length.
struct R<T: Read> {
    input: T,
    hash: u64,
    left: u64,
}

impl<T: Read> R<T> {
    fn fill(&mut self, buf: &mut [u8]) -> Option<()> {
        if (buf.len() as u64) > self.left {
            return None;
        }
        self.input.read_exact(buf).ok()?;
        self.left -= buf.len() as u64;
        self.hash = fnv1a(self.hash, buf);
        Some(())
    }
    fn arr<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut b = [0u8; N];
        self.fill(&mut b)?;
        Some(b)
    }
    fn u8(&mut self) -> Option<u8> {
        self.arr::<1>().map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.arr().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.arr().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.arr().map(i64::from_le_bytes)
    }
    fn f64(&mut self) -> Option<f64> {
        self.u64().map(f64::from_bits)
    }
    fn str(&mut self) -> Option<String> {
        let n = self.count(1)?;
        let mut b = vec![0u8; n];
        self.fill(&mut b)?;
        String::from_utf8(b).ok()
    }
    /// A count of items that each take at least `min` bytes: refuses counts the rest of the
    /// body cannot hold, so a corrupt length never allocates without bound.
    fn count(&mut self, min: u64) -> Option<usize> {
        let n = u64::from(self.u32()?);
        (n.saturating_mul(min) <= self.left).then_some(n as usize)
    }
}

impl Index {
    /// Streams the index body to `w`.
    fn write_body<T: Write>(&self, w: &mut W<T>) -> io::Result<()> {
        w.len32(self.tables.strings.len())?;
        for s in &self.tables.strings {
            w.str(s)?;
        }
        w.len32(self.tables.models.len())?;
        for &(p, m) in &self.tables.models {
            w.u32(p)?;
            w.u32(m)?;
        }
        let mut files: Vec<_> = self.files.iter().collect();
        files.sort_by(|a, b| a.0.cmp(b.0));
        w.len32(files.len())?;
        for (rel, f) in files {
            w.str(&rel.to_string_lossy())?;
            w.u32(f.agent)?;
            w.str(&f.session_id)?;
            w.u8(f.kind as u8)?;
            w.u64(f.ident.ino)?;
            w.u64(f.ident.size)?;
            w.i64(f.ident.mtime_ns)?;
            w.u64(f.offset)?;
            w.u64(f.lines)?;
            w.u64(f.malformed)?;
            w.len32(f.msgs.len())?;
            for m in &f.msgs {
                w.i64(m.ts)?;
                w.u8(m.kind)?;
                w.u8(m.tool_calls)?;
            }
            w.len32(f.usage.len())?;
            for u in &f.usage {
                w.i64(u.ts)?;
                for c in u.cost {
                    w.f64(c)?;
                }
                for t in u.tokens {
                    w.u64(t)?;
                }
                w.u32(u.model)?;
            }
            w.len32(f.tools.len())?;
            for t in &f.tools {
                w.i64(t.ts)?;
                w.u32(t.name)?;
            }
        }
        Ok(())
    }

    /// Writes the whole file (header and body) to `out`, which must be seekable: the header's
    /// length and checksum are filled in after the body has been streamed.
    pub fn write_to<T: Write + Seek>(&self, out: &mut T) -> io::Result<u64> {
        out.write_all(MAGIC)?;
        out.write_all(&[0u8; 16])?;
        let mut w = W {
            out: io::BufWriter::with_capacity(256 << 10, &mut *out),
            hash: FNV_START,
            len: 0,
        };
        self.write_body(&mut w)?;
        let (hash, len) = (w.hash, w.len);
        w.out.flush()?;
        drop(w);
        out.seek(SeekFrom::Start(8))?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(&hash.to_le_bytes())?;
        out.seek(SeekFrom::End(0))?;
        Ok(len + 24)
    }

    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        let mut c = io::Cursor::new(Vec::new());
        // Writing to memory cannot fail.
        let _ = self.write_to(&mut c);
        c.into_inner()
    }

    /// Reads what [`Index::write_to`] wrote; `None` for anything else (wrong magic, length,
    /// checksum or structure), so a damaged file is rebuilt, never trusted.
    pub fn read_from<T: Read>(mut input: T, total_len: u64) -> Option<Index> {
        let mut head = [0u8; 24];
        input.read_exact(&mut head).ok()?;
        if &head[..8] != MAGIC {
            return None;
        }
        let len = u64::from_le_bytes(head[8..16].try_into().ok()?);
        let sum = u64::from_le_bytes(head[16..24].try_into().ok()?);
        if len != total_len.checked_sub(24)? {
            return None;
        }
        let mut r = R {
            input,
            hash: FNV_START,
            left: len,
        };
        let idx = Index::read_body(&mut r)?;
        (r.left == 0 && r.hash == sum).then_some(idx)
    }

    fn read_body<T: Read>(r: &mut R<T>) -> Option<Index> {
        let mut idx = Index::default();
        for _ in 0..r.count(4)? {
            let s = r.str()?;
            idx.tables.intern(&s);
        }
        let nstr = idx.tables.strings.len() as u32;
        for _ in 0..r.count(8)? {
            let (p, m) = (r.u32()?, r.u32()?);
            if p >= nstr || m >= nstr {
                return None;
            }
            let id = idx.tables.models.len() as u32;
            idx.tables.models.push((p, m));
            idx.tables.model_ids.insert((p, m), id);
        }
        let nmodels = idx.tables.models.len() as u32;
        for _ in 0..r.count(8)? {
            let rel = PathBuf::from(r.str()?);
            let agent = r.u32()?;
            let session_id: Arc<str> = Arc::from(r.str()?.as_str());
            let kind = match r.u8()? {
                0 => FileKind::Live,
                1 => FileKind::Reset,
                2 => FileKind::Deleted,
                _ => return None,
            };
            let ident = FileIdent {
                ino: r.u64()?,
                size: r.u64()?,
                mtime_ns: r.i64()?,
            };
            let (offset, lines, malformed) = (r.u64()?, r.u64()?, r.u64()?);
            let n = r.count(10)?;
            let mut msgs = Vec::with_capacity(n);
            for _ in 0..n {
                msgs.push(MsgRec {
                    ts: r.i64()?,
                    kind: r.u8()?,
                    tool_calls: r.u8()?,
                });
            }
            let n = r.count(92)?;
            let mut usage = Vec::with_capacity(n);
            for _ in 0..n {
                let ts = r.i64()?;
                let cost = [r.f64()?, r.f64()?, r.f64()?, r.f64()?, r.f64()?];
                let tokens = [r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?];
                let model = r.u32()?;
                if model >= nmodels {
                    return None;
                }
                usage.push(UsageRec {
                    ts,
                    cost,
                    tokens,
                    model,
                });
            }
            let n = r.count(12)?;
            let mut tools = Vec::with_capacity(n);
            for _ in 0..n {
                let ts = r.i64()?;
                let name = r.u32()?;
                if name >= nstr {
                    return None;
                }
                tools.push(ToolRec { ts, name });
            }
            if agent >= nstr {
                return None;
            }
            let sid = idx.tables.intern(&session_id);
            let span = span_of(&msgs, &usage, &tools);
            idx.files.insert(
                rel,
                FileIndex {
                    agent,
                    session_id,
                    sid,
                    span,
                    kind,
                    ident,
                    offset,
                    lines,
                    malformed,
                    msgs,
                    usage,
                    tools,
                },
            );
        }
        Some(idx)
    }

    #[cfg(test)]
    pub fn decode(bytes: &[u8]) -> Option<Index> {
        Index::read_from(bytes, bytes.len() as u64)
    }

    /// Writes the index atomically, streaming it to the temp file.
    pub fn save(&self, state_dir: &Path) -> io::Result<u64> {
        let mut written = 0;
        crate::state::write_atomic_with(&index_path(state_dir), |f| {
            written = self.write_to(f)?;
            Ok(())
        })?;
        Ok(written)
    }

    /// Loads a saved index; `Ok(None)` when there is none or it cannot be trusted.
    pub fn load(state_dir: &Path) -> io::Result<Option<Index>> {
        match File::open(index_path(state_dir)) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok(Index::read_from(
                    io::BufReader::with_capacity(256 << 10, f),
                    len,
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(ts: i64, input: u64) -> String {
        format!(
            r#"{{"type":"message","message":{{"role":"assistant","provider":"p","model":"m","timestamp":{ts},"content":[{{"type":"toolCall","name":"exec"}}],"usage":{{"input":{input},"cost":{{"total":0.5}}}}}}}}"#
        ) + "\n"
    }

    fn state() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("agents/main/sessions");
        std::fs::create_dir_all(&s).unwrap();
        (d, s)
    }

    #[test]
    fn names() {
        assert_eq!(classify("abc.jsonl"), Some(("abc".into(), FileKind::Live)));
        assert_eq!(
            classify("abc.jsonl.reset.2026-11-02T08-15-00.000Z"),
            Some(("abc".into(), FileKind::Reset))
        );
        assert_eq!(
            classify("abc.jsonl.deleted.2026"),
            Some(("abc".into(), FileKind::Deleted))
        );
        assert_eq!(classify("sessions.json"), None);
        assert_eq!(classify(".abc.jsonl.tmp.1"), None);
        assert_eq!(classify("abc.jsonl.lock"), None);
        assert_eq!(classify("abc.jsonl.imported-1796700240136"), None);
        assert_eq!(
            classify("abc.jsonl.deleted.2026-11-18T17-20-54.948Z.imported-1796700240136"),
            None
        );
    }

    #[test]
    fn appends_are_read_from_the_offset_and_replacements_from_zero() {
        let (d, s) = state();
        let path = s.join("s1.jsonl");
        std::fs::write(
            &path,
            line(1000, 1) + &line(2000, 2) + "{\"type\":\"message\",\"mess",
        )
        .unwrap();
        let mut idx = Index::default();
        idx.refresh_all(d.path()).unwrap();
        let rel = PathBuf::from("agents/main/sessions/s1.jsonl");
        assert_eq!(idx.files[&rel].usage.len(), 2, "the partial line waits");
        let offset = idx.files[&rel].offset;
        // The writer finishes its line and appends another.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        write!(f, "age\":{{\"role\":\"user\"}}}}\n{}", line(3000, 3)).unwrap();
        drop(f);
        let (tasks, _) = plan(&idx, &scan(d.path()));
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].from, offset, "appends start at the old offset");
        idx.refresh_all(d.path()).unwrap();
        let f = &idx.files[&rel];
        assert_eq!((f.msgs.len(), f.usage.len(), f.tools.len()), (4, 3, 3));
        assert_eq!(f.malformed, 0);
        // Replaced by a shorter file: read again from zero, nothing counted twice.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, line(5000, 9)).unwrap();
        idx.refresh_all(d.path()).unwrap();
        assert_eq!(idx.files[&rel].usage.len(), 1);
        assert_eq!(idx.files[&rel].usage[0].tokens[0], 9);
        // Gone: dropped.
        std::fs::remove_file(&path).unwrap();
        idx.refresh_all(d.path()).unwrap();
        assert!(idx.files.is_empty());
    }

    #[test]
    fn a_stale_chunk_is_discarded() {
        let (d, s) = state();
        std::fs::write(s.join("s1.jsonl"), line(1000, 1)).unwrap();
        let idx0 = Index::default();
        let (tasks, _) = plan(&idx0, &scan(d.path()));
        let a = parse_task(d.path(), tasks[0].clone(), || true).unwrap();
        let b = parse_task(d.path(), tasks[0].clone(), || true).unwrap();
        let mut idx = Index::default();
        assert!(idx.merge(a));
        assert!(!idx.merge(b), "the same bytes are never counted twice");
        assert_eq!(idx.counts().2, 1);
    }

    #[test]
    fn cancellation_stops_a_parse() {
        let (d, s) = state();
        std::fs::write(s.join("s1.jsonl"), line(1, 1)).unwrap();
        let (tasks, _) = plan(&Index::default(), &scan(d.path()));
        assert!(matches!(
            parse_task(d.path(), tasks[0].clone(), || false),
            Err(ParseError::Cancelled)
        ));
    }

    #[test]
    fn persistence_round_trips_and_rejects_damage() {
        let (d, s) = state();
        std::fs::write(
            s.join("s1.jsonl"),
            line(1000, 1) + &line(2000, 2) + "junk\n",
        )
        .unwrap();
        std::fs::write(
            s.join("s0.jsonl.deleted.2026-01-01T00-00-00.000Z"),
            line(500, 5),
        )
        .unwrap();
        let mut idx = Index::default();
        idx.refresh_all(d.path()).unwrap();
        idx.save(d.path()).unwrap();
        let back = Index::load(d.path()).unwrap().expect("loads");
        assert_eq!(back.counts(), idx.counts());
        assert_eq!(back.encode(), idx.encode());
        let mut bytes = std::fs::read(index_path(d.path())).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        assert!(Index::decode(&bytes).is_none(), "checksum");
        assert!(Index::decode(&bytes[..n - 1]).is_none(), "length");
        assert!(Index::decode(b"KEELUIX1").is_none());
        // A forged body with a huge count is refused without allocating for it.
        let body = u32::MAX.to_le_bytes();
        let mut forged = MAGIC.to_vec();
        forged.extend_from_slice(&(body.len() as u64).to_le_bytes());
        forged.extend_from_slice(&fnv1a(FNV_START, &body).to_le_bytes());
        forged.extend_from_slice(&body);
        assert!(Index::decode(&forged).is_none());
    }
}
