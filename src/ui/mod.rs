//! OpenClaw's dashboard (the Control UI) served from a build on disk, without Node.js and
//! without the reactor touching the disk.
//!
//! - **Where**: `gateway.controlUi.root`, else the first of [`tree::candidates`] holding a
//!   build (`<state>/control-ui`, then OpenClaw's `dist/control-ui` under the usual npm global
//!   roots). Looked for by a job at boot, on SIGHUP, and every [`CHECK_EVERY`] by the
//!   watchdog's tick (a new install, or a missing one appearing, is picked up without a
//!   restart).
//! - **What the reactor knows**: the root's listing (every file and its `.br`/`.gz` siblings),
//!   the prepared document (`index.html` with its CSP, made once per version of the file) and
//!   a bounded cache of files read ([`CACHE_BYTES`], least recently used out first). A request
//!   is decided from those in memory; a file not in the cache becomes an io job that reads it,
//!   fills the cache and answers. The reactor writes shared bodies in slices without copying.
//! - **Routes** ([`path::route`]): `GET`/`HEAD` of every path under `basePath` but `/api`:
//!   files by path, extension-less paths the document (the UI's own router), precompressed
//!   siblings by `Accept-Encoding`, direct `.br`/`.gz` and missing assets 404, and
//!   `control-ui-config.json` behind the gateway token ([`bootstrap_config`]).

pub mod cache;
pub mod html;
pub mod path;
pub mod tree;

use crate::config::Config;
use crate::config::live::ConfigCell;
use crate::error::{Code, RpcError};
use crate::jobs::periodic::Periodic;
use crate::jobs::system::{JobSystem, Responder};
use crate::jobs::{JobCtx, JobSpec, Lane, PoolKind, Work};
use crate::metrics::{Counter, Gauge};
use crate::pressure::{Level, PressureCell};
use crate::protocol::reply::{HttpAnswer, ReplyTo};
use crate::sync::lock;
use cache::Lru;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of files kept in memory, at most (the whole precompressed 2026.9.6 build is ~8 MB
/// in brotli); one file over a quarter of it is read each time instead.
pub const CACHE_BYTES: usize = 32 << 20;
/// How often the root is looked at again for a new version (or for one at all).
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// A file read's deadline, queue included.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// `Cache-Control` of fingerprinted `assets/*`: their names change with their content.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// What the dashboard service needs.
pub struct Handles {
    pub jobs: Arc<JobSystem>,
    pub config: Arc<ConfigCell>,
    pub pressure: Arc<PressureCell>,
    pub state_dir: PathBuf,
    pub test_hooks: bool,
}

/// A representation of a file: as stored, or a precompressed sibling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Identity,
    Br,
    Gzip,
}

impl Encoding {
    fn suffix(self) -> &'static str {
        match self {
            Encoding::Identity => "",
            Encoding::Br => ".br",
            Encoding::Gzip => ".gz",
        }
    }

    fn token(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

/// A file ready to answer with: its headers' values and its bytes (shared, never copied).
#[derive(Debug)]
pub struct Prepared {
    pub content_type: &'static str,
    pub encoding: Encoding,
    pub cache_control: &'static str,
    pub csp: Arc<str>,
    pub body: Arc<[u8]>,
}

impl Prepared {
    fn answer(&self) -> HttpAnswer {
        let mut headers = vec![
            ("Content-Type", self.content_type.to_string()),
            ("Cache-Control", self.cache_control.to_string()),
            ("Vary", "Accept-Encoding".to_string()),
        ];
        if self.encoding != Encoding::Identity {
            headers.push(("Content-Encoding", self.encoding.token().to_string()));
        }
        security_headers(&mut headers, &self.csp);
        HttpAnswer {
            status: 200,
            headers,
            body: self.body.clone(),
        }
    }
}

/// The headers OpenClaw puts on every Control UI answer (`applyControlUiSecurityHeaders`).
fn security_headers(h: &mut Vec<(&'static str, String)>, csp: &str) {
    h.push(("Content-Security-Policy", csp.to_string()));
    h.push(("X-Frame-Options", "DENY".into()));
    h.push(("X-Content-Type-Options", "nosniff".into()));
    h.push(("Referrer-Policy", "no-referrer".into()));
    h.push((
        "Permissions-Policy",
        "camera=(self), microphone=*, geolocation=*, clipboard-write=*".into(),
    ));
}

/// A short plain-text answer (404, 406, 503, 500) with the UI's headers.
pub fn plain(status: u16, text: &str) -> HttpAnswer {
    let mut headers = vec![
        ("Content-Type", "text/plain; charset=utf-8".to_string()),
        ("Cache-Control", "no-store".to_string()),
        ("Vary", "Accept-Encoding".to_string()),
    ];
    security_headers(&mut headers, &html::csp(&[]));
    if status == 503 {
        headers.push(("Retry-After", "1".into()));
    }
    HttpAnswer {
        status,
        headers,
        body: Arc::from(format!("{text}\n").into_bytes()),
    }
}

/// Content types by extension (OpenClaw's table, and a few more a build may hold).
pub fn content_type(ext: &str) -> Option<&'static str> {
    Some(match ext {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "application/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json; charset=utf-8",
        "webmanifest" => "application/manifest+json; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "pdf" => "application/pdf",
        _ => return None,
    })
}

/// Extensions whose `.br`/`.gz` siblings are offered (OpenClaw's compressible set).
fn compressible(ext: &str) -> bool {
    matches!(
        ext,
        "css"
            | "html"
            | "js"
            | "mjs"
            | "json"
            | "map"
            | "svg"
            | "txt"
            | "wasm"
            | "webmanifest"
            | "xml"
    )
}

/// OpenClaw's `resolveHttpContentEncodings`: the best of `available` and identity by the
/// client's `Accept-Encoding` (q-values, `*`, `identity;q=0`), br before gzip before identity
/// at equal quality; `None` when nothing offered is acceptable (406).
pub fn negotiate(accept_encoding: Option<&str>, available: &[Encoding]) -> Option<Encoding> {
    let header = accept_encoding.unwrap_or("").trim();
    if header.is_empty() {
        return Some(Encoding::Identity);
    }
    let mut q: Vec<(String, f64)> = Vec::new();
    for entry in header.split(',') {
        let mut parts = entry.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if name.is_empty() {
            continue;
        }
        let quality = match parts.find_map(|p| {
            let p = p.trim();
            p.get(..2)
                .filter(|k| k.eq_ignore_ascii_case("q="))
                .map(|_| &p[2..])
        }) {
            None => 1.0,
            Some(v) => qvalue(v).unwrap_or(0.0),
        };
        match q.iter_mut().find(|(n, _)| *n == name) {
            Some((_, old)) => *old = old.max(quality),
            None => q.push((name, quality)),
        }
    }
    let get = |name: &str| q.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let wildcard = get("*");
    let quality = |e: Encoding| match e {
        Encoding::Identity => {
            get("identity").unwrap_or(if wildcard == Some(0.0) { 0.0 } else { 1.0 })
        }
        e => get(e.token()).or(wildcard).unwrap_or(0.0),
    };
    let mut best: Option<(Encoding, f64)> = None;
    for e in [Encoding::Br, Encoding::Gzip, Encoding::Identity] {
        if e != Encoding::Identity && !available.contains(&e) {
            continue;
        }
        let v = quality(e);
        if v > 0.0 && best.is_none_or(|(_, b)| v > b) {
            best = Some((e, v));
        }
    }
    best.map(|(e, _)| e)
}

/// An HTTP q-value (`0`, `0.5`, `1.000`; RFC 9110 §12.4.2), or `None`.
fn qvalue(v: &str) -> Option<f64> {
    let v = v.trim();
    let ok = match v.split_once('.') {
        None => v == "0" || v == "1",
        Some((i, f)) => {
            f.len() <= 3
                && ((i == "0" && f.bytes().all(|b| b.is_ascii_digit()))
                    || (i == "1" && f.bytes().all(|b| b == b'0')))
        }
    };
    ok.then(|| v.parse().ok()).flatten()
}

/// Whether the client takes an HTML document (OpenClaw's `acceptsControlUiHtmlResponse`): no
/// `Accept`, or one admitting `text/html` or `application/xhtml+xml`.
pub fn accepts_html(accept: Option<&str>) -> bool {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return true;
    };
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .find_map(|p| {
                let p = p.trim();
                p.get(..2)
                    .filter(|k| k.eq_ignore_ascii_case("q="))
                    .map(|_| qvalue(&p[2..]).unwrap_or(0.0))
            })
            .unwrap_or(1.0);
        q > 0.0
            && matches!(
                media.as_str(),
                "text/html" | "text/*" | "*/*" | "application/xhtml+xml"
            )
    })
}

/// A root being served: its listing, its document and the files read.
pub struct Served {
    pub listing: tree::Listing,
    /// Where it was found, for logs and `status`.
    pub source: String,
    /// `index.html`, prepared when the root was listed.
    index: Arc<Prepared>,
    /// The policy of every answer but the document's.
    csp: Arc<str>,
    cache: Mutex<Lru<(String, Encoding), Prepared>>,
    /// What the document was prepared with: a change needs a new one.
    prepared_for: (String, Option<Value>),
}

/// What [`Served::pick`] decided for a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pick {
    /// The prepared `index.html`.
    Index,
    /// A file of the listing in this representation; `document` for other `.html` files.
    File {
        rel: String,
        encoding: Encoding,
        document: bool,
    },
    NotFound,
    NotAcceptable,
}

impl Served {
    fn pick(&self, rel: &str, accept: Option<&str>, accept_encoding: Option<&str>) -> Pick {
        let ext = path::extension(rel);
        let identity_ok = || negotiate(accept_encoding, &[]).is_some();
        if matches!(ext.as_deref(), Some("br" | "gz")) {
            return Pick::NotFound;
        }
        if rel == "index.html" {
            return if identity_ok() {
                Pick::Index
            } else {
                Pick::NotAcceptable
            };
        }
        let Some(meta) = self.listing.files.get(rel) else {
            // A missing asset is a 404; anything else is a route of the UI's own router.
            return match ext.as_deref() {
                Some(e) if e != "html" && e != "htm" && content_type(e).is_some() => Pick::NotFound,
                _ if !accepts_html(accept) => Pick::NotFound,
                _ if identity_ok() => Pick::Index,
                _ => Pick::NotAcceptable,
            };
        };
        let ext = ext.unwrap_or_default();
        if ext == "html" || ext == "htm" {
            return if identity_ok() {
                Pick::File {
                    rel: rel.to_string(),
                    encoding: Encoding::Identity,
                    document: true,
                }
            } else {
                Pick::NotAcceptable
            };
        }
        let mut available = Vec::new();
        if compressible(&ext) {
            if meta.br.is_some() {
                available.push(Encoding::Br);
            }
            if meta.gz.is_some() {
                available.push(Encoding::Gzip);
            }
        }
        match negotiate(accept_encoding, &available) {
            Some(encoding) => Pick::File {
                rel: rel.to_string(),
                encoding,
                document: false,
            },
            None => Pick::NotAcceptable,
        }
    }

    /// Reads and prepares a file (on a worker).
    fn load(
        &self,
        rel: &str,
        encoding: Encoding,
        document: bool,
        cfg: &Config,
    ) -> Result<Prepared, tree::ReadError> {
        let body = tree::read(&self.listing.root, &format!("{rel}{}", encoding.suffix()))?;
        let ext = path::extension(rel).unwrap_or_default();
        let content_type = content_type(&ext).unwrap_or("application/octet-stream");
        if document {
            let text = String::from_utf8_lossy(&body);
            let ui = &cfg.control_ui;
            let doc = html::prepare(&text, &ui.base_path, ui.environment.as_ref());
            return Ok(Prepared {
                content_type,
                encoding,
                cache_control: "no-cache",
                csp: Arc::from(doc.csp),
                body: Arc::from(doc.html.into_bytes()),
            });
        }
        Ok(Prepared {
            content_type,
            encoding,
            cache_control: if rel.starts_with("assets/") {
                IMMUTABLE
            } else {
                "no-cache"
            },
            csp: self.csp.clone(),
            body: Arc::from(body),
        })
    }
}

/// Where the dashboard stands.
pub enum Root {
    /// Not looked for yet (boot).
    Starting,
    /// `gateway.controlUi.enabled: false`.
    Disabled,
    /// Nothing to serve: why (one sentence), and where keel looked.
    Missing {
        why: String,
        looked: Vec<PathBuf>,
    },
    Serving(Arc<Served>),
}

/// What the reactor does with a dashboard request.
pub enum Reply {
    /// Answer this now (from memory).
    Now(HttpAnswer),
    /// A worker reads the file and answers.
    Later,
    /// No dashboard, and `/` was asked for: the page saying how to install one (the reactor
    /// adds the health it knows).
    Help { why: String, looked: Vec<PathBuf> },
    /// No dashboard: the gateway's own 404.
    NotUi,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct UiStats {
    pub cache_hits: Counter,
    pub file_reads: Counter,
    pub cache_bytes: Gauge,
}

/// The dashboard service.
pub struct ControlUi {
    h: Handles,
    /// Published whole; the lock is held for a pointer copy.
    root: Mutex<Arc<Root>>,
    serving: AtomicBool,
    /// A look at the root is queued or running.
    looking: AtomicBool,
    /// When the watchdog's tick next has the root looked at (monotonic ms).
    next_check_ms: AtomicU64,
    /// Memory pressure at the last tick (a level above normal with resident memory among its
    /// reasons): the cache is emptied and not filled. Pressure from lag or queues leaves it:
    /// dropping it would only send more reads to the workers.
    shrink: AtomicBool,
    /// `KEEL_TEST_UI_READ_DELAY_MS` (with `KEEL_TEST_HOOKS=1`): each file read waits first.
    read_delay: Option<Duration>,
    pub stats: UiStats,
}

impl ControlUi {
    pub fn new(h: Handles) -> ControlUi {
        let read_delay = h
            .test_hooks
            .then(|| {
                std::env::var("KEEL_TEST_UI_READ_DELAY_MS")
                    .ok()?
                    .parse()
                    .ok()
            })
            .flatten()
            .map(Duration::from_millis);
        ControlUi {
            h,
            root: Mutex::new(Arc::new(Root::Starting)),
            serving: AtomicBool::new(false),
            looking: AtomicBool::new(false),
            next_check_ms: AtomicU64::new(0),
            shrink: AtomicBool::new(false),
            read_delay,
            stats: UiStats::default(),
        }
    }

    /// Whether a dashboard root is being served (`hello-ok`'s
    /// `server.controlUiBuildSource: "configured"`). An atomic: cheap on the reactor.
    pub fn serving_ui(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// The published state.
    pub fn root(&self) -> Arc<Root> {
        lock(&self.root).clone()
    }

    fn publish(&self, r: Arc<Root>) {
        self.serving
            .store(matches!(*r, Root::Serving(_)), Ordering::Release);
        *lock(&self.root) = r;
    }

    /// Looks for the root now (boot, SIGHUP): a job, logged when what is served changes.
    pub fn start(self: &Arc<Self>) {
        self.look(true);
    }

    /// After a config reload: the root, base path or environment may have changed.
    pub fn rescan(self: &Arc<Self>) {
        self.look(true);
    }

    fn look(self: &Arc<Self>, force: bool) {
        if self.looking.swap(true, Ordering::AcqRel) && !force {
            return;
        }
        let svc = self.clone();
        let work: Work = Box::new(move |_ctx: &JobCtx| {
            svc.scan(force);
            svc.looking.store(false, Ordering::Release);
            Ok(Value::Null.into())
        });
        let spec = JobSpec {
            kind: "ui.scan".into(),
            pool: PoolKind::Io,
            lane: if force {
                Lane::Control
            } else {
                Lane::Background
            },
            timeout: Duration::from_secs(60),
            stall_limit: None,
        };
        if let Err(e) = self.h.jobs.submit(spec, ReplyTo::Internal, work) {
            self.looking.store(false, Ordering::Release);
            log::debug!("control UI: look not queued ({e})");
        }
    }

    /// Finds the root and publishes what changed (on a worker). Unforced, a root still at the
    /// same version (its stamp) is left alone.
    fn scan(&self, force: bool) {
        let cfg = self.h.config.get();
        let ui = &cfg.control_ui;
        let current = self.root();
        if self.shrink.load(Ordering::Acquire)
            && let Root::Serving(s) = &*current
        {
            let mut c = lock(&s.cache);
            c.clear();
            self.stats.cache_bytes.set(0);
        }
        if !force
            && let Root::Serving(s) = &*current
            && s.prepared_for == (ui.base_path.clone(), ui.environment.clone())
            && tree::stamp(&s.listing.root).ok() == Some(s.listing.stamp)
        {
            return;
        }
        let (next, problems) = self.find(&cfg);
        let same = match (&*current, &next) {
            (Root::Disabled, Root::Disabled) => true,
            (Root::Missing { why: a, .. }, Root::Missing { why: b, .. }) => a == b,
            // The same version prepared the same way: keep it, and the files read from it.
            (Root::Serving(a), Root::Serving(b)) => {
                a.listing.root == b.listing.root
                    && a.listing.stamp == b.listing.stamp
                    && a.prepared_for == b.prepared_for
            }
            _ => false,
        };
        if same {
            return;
        }
        let next = Arc::new(next);
        self.stats.cache_bytes.set(0);
        self.publish(next.clone());
        for p in problems {
            log::warn!("control UI: {p}");
        }
        match &*next {
            Root::Disabled => log::info!("control UI: disabled (gateway.controlUi.enabled)"),
            Root::Missing { why, looked } => {
                let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
                log::info!(
                    "control UI: {why} (looked in {}); / says how to install it \
                     (scripts/install-dashboard.sh)",
                    looked.join(", ")
                );
            }
            Root::Serving(s) => log::info!(
                "control UI: serving {} ({}): {} files, {:.1} MiB",
                s.listing.root.display(),
                s.source,
                s.listing.files.len(),
                s.listing.bytes as f64 / f64::from(1 << 20)
            ),
            Root::Starting => {}
        }
    }

    /// The root the config and the disk give now, and what was wrong with the places that
    /// hold something else (logged when what is served changes, not at every look).
    fn find(&self, cfg: &Config) -> (Root, Vec<String>) {
        let ui = &cfg.control_ui;
        if !ui.enabled {
            return (Root::Disabled, Vec::new());
        }
        let (candidates, configured) = match &ui.root {
            Some(r) => (vec![r.clone()], true),
            None => (
                tree::candidates(&self.h.state_dir, &|k| {
                    std::env::var(k).ok().filter(|v| !v.is_empty())
                }),
                false,
            ),
        };
        let mut problems = Vec::new();
        for (i, dir) in candidates.iter().enumerate() {
            // An unconfigured place that does not exist is not worth a word.
            if !configured && !dir.exists() {
                continue;
            }
            match self.serve_root(dir, cfg) {
                Ok(mut served) => {
                    served.source = if configured {
                        "gateway.controlUi.root".into()
                    } else if i == 0 {
                        "the state directory".into()
                    } else {
                        "an npm global install of openclaw".into()
                    };
                    return (Root::Serving(Arc::new(served)), problems);
                }
                Err(e) => problems.push(e),
            }
        }
        let why = if configured {
            format!(
                "gateway.controlUi.root {} holds no Control UI build",
                candidates[0].display()
            )
        } else if !problems.is_empty() {
            "no usable Control UI build found".into()
        } else {
            "no Control UI installed".into()
        };
        let root = Root::Missing {
            why,
            looked: candidates,
        };
        (root, problems)
    }

    /// Lists a root and prepares its document.
    fn serve_root(&self, dir: &Path, cfg: &Config) -> Result<Served, String> {
        let listing = tree::list(dir)?;
        let ui = &cfg.control_ui;
        let text = tree::read(&listing.root, "index.html")
            .map_err(|e| format!("{}: cannot read index.html: {e:?}", dir.display()))?;
        let doc = html::prepare(
            &String::from_utf8_lossy(&text),
            &ui.base_path,
            ui.environment.as_ref(),
        );
        Ok(Served {
            index: Arc::new(Prepared {
                content_type: "text/html; charset=utf-8",
                encoding: Encoding::Identity,
                cache_control: "no-cache",
                csp: Arc::from(doc.csp),
                body: Arc::from(doc.html.into_bytes()),
            }),
            csp: Arc::from(html::csp(&[])),
            cache: Mutex::new(Lru::new(CACHE_BYTES)),
            prepared_for: (ui.base_path.clone(), ui.environment.clone()),
            source: String::new(),
            listing,
        })
    }

    /// A `GET`/`HEAD` for `rel` (a checked relative path, [`path::route`]): answered from
    /// memory, or by a job answering `reply` (io pool). Never touches the disk.
    pub fn get(
        self: &Arc<Self>,
        rel: &str,
        accept: Option<&str>,
        accept_encoding: Option<&str>,
        reply: &ReplyTo,
    ) -> Result<Reply, RpcError> {
        let served = match &*self.root() {
            Root::Starting | Root::Disabled => {
                return Ok(Reply::Now(plain(
                    503,
                    "The dashboard is being looked for; retry in a moment.",
                )));
            }
            // Only `/` explains; every other path is the gateway's own 404, as before.
            Root::Missing { why, looked } if rel == "index.html" => {
                return Ok(Reply::Help {
                    why: why.clone(),
                    looked: looked.clone(),
                });
            }
            Root::Missing { .. } => return Ok(Reply::NotUi),
            Root::Serving(s) => s.clone(),
        };
        let (rel, encoding, document) = match served.pick(rel, accept, accept_encoding) {
            Pick::Index => return Ok(Reply::Now(served.index.answer())),
            Pick::NotFound => return Ok(Reply::Now(plain(404, "Not Found"))),
            Pick::NotAcceptable => return Ok(Reply::Now(plain(406, "Not Acceptable"))),
            Pick::File {
                rel,
                encoding,
                document,
            } => (rel, encoding, document),
        };
        let key = (rel, encoding);
        if let Some(p) = lock(&served.cache).get(&key) {
            self.stats.cache_hits.inc();
            return Ok(Reply::Now(p.answer()));
        }
        let (rel, encoding) = key;
        let ReplyTo::Http { conn, generation } = *reply else {
            return Err(RpcError::new(
                Code::Internal,
                "a dashboard file goes to an HTTP connection",
            ));
        };
        let svc = self.clone();
        let work: Work = Box::new(move |ctx: &JobCtx| {
            let mut answer = Responder::new(
                ctx,
                svc.h.jobs.clone(),
                conn,
                generation,
                plain(500, "Internal Server Error"),
            );
            if let Some(delay) = svc.read_delay {
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    ctx.check()?;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            ctx.check()?;
            answer.send(svc.read(&served, &rel, encoding, document));
            Ok(Value::Null.into())
        });
        let spec = JobSpec {
            kind: "ui.file".into(),
            pool: PoolKind::Io,
            lane: Lane::Interactive,
            timeout: READ_TIMEOUT,
            stall_limit: None,
        };
        self.h.jobs.submit(spec, reply.clone(), work)?;
        Ok(Reply::Later)
    }

    /// Reads a file for a request (on a worker) and keeps it for the next.
    fn read(&self, served: &Served, rel: &str, encoding: Encoding, document: bool) -> HttpAnswer {
        let cfg = self.h.config.get();
        self.stats.file_reads.inc();
        match served.load(rel, encoding, document, &cfg) {
            Ok(p) => {
                let answer = p.answer();
                if !self.shrink.load(Ordering::Acquire) {
                    let bytes = p.body.len();
                    let mut c = lock(&served.cache);
                    c.insert((rel.to_string(), encoding), Arc::new(p), bytes);
                    self.stats.cache_bytes.set(c.used() as u64);
                }
                answer
            }
            Err(tree::ReadError::NotFound) => {
                // The listing is out of date: have it taken again.
                self.next_check_ms.store(0, Ordering::Release);
                plain(404, "Not Found")
            }
            Err(tree::ReadError::TooLarge(n)) => {
                log::warn!("control UI: {rel} is {n} bytes, over the limit; not served");
                plain(404, "Not Found")
            }
            Err(tree::ReadError::Io(e)) => {
                log::warn!("control UI: cannot read {rel}: {e}");
                plain(500, "Internal Server Error")
            }
        }
    }

    /// `/metrics` lines.
    pub fn render_metrics(&self, out: &mut String) {
        use crate::metrics::family;
        family(
            out,
            "keel_ui_cache_hits_total",
            "counter",
            "Dashboard files answered from memory.",
            self.stats.cache_hits.get(),
        );
        family(
            out,
            "keel_ui_file_reads_total",
            "counter",
            "Dashboard files read from disk (by io workers).",
            self.stats.file_reads.get(),
        );
        family(
            out,
            "keel_ui_cache_bytes",
            "gauge",
            "Bytes of dashboard files kept in memory.",
            self.stats.cache_bytes.get(),
        );
        family(
            out,
            "keel_ui_serving",
            "gauge",
            "1 while a dashboard root is served.",
            u8::from(self.serving_ui()),
        );
    }

    /// For `status`: what is served, from where.
    pub fn status_json(&self) -> Value {
        match &*self.root() {
            Root::Starting => json!({"state": "starting"}),
            Root::Disabled => json!({"state": "disabled"}),
            Root::Missing { why, .. } => json!({"state": "missing", "reason": why}),
            Root::Serving(s) => json!({
                "state": "serving",
                "root": s.listing.root,
                "source": s.source,
                "files": s.listing.files.len(),
                "bytes": s.listing.bytes,
                "cacheBytes": self.stats.cache_bytes.get(),
            }),
        }
    }
}

impl Periodic for Arc<ControlUi> {
    fn name(&self) -> &'static str {
        "ui"
    }

    /// Every [`CHECK_EVERY`], a background job looks whether the root has a new version (or
    /// appeared); memory pressure is noted for the cache, which the next look empties.
    fn tick(&self, now: Instant, level: Level) {
        let memory = level != Level::Normal
            && self
                .h
                .pressure
                .get()
                .reasons
                .iter()
                .any(|r| r.starts_with("rss "));
        if memory && !self.shrink.swap(true, Ordering::AcqRel) {
            self.next_check_ms.store(0, Ordering::Release);
        } else if !memory {
            self.shrink.store(false, Ordering::Release);
        }
        let now_ms = crate::clock::mono_ms(now);
        if now_ms < self.next_check_ms.load(Ordering::Acquire) {
            return;
        }
        self.next_check_ms
            .store(now_ms + CHECK_EVERY.as_millis() as u64, Ordering::Release);
        self.look(false);
    }
}

/// `control-ui-config.json`: what OpenClaw's dashboard reads at boot
/// (`handleControlUiHttpRequest`), from the config in memory. `serverBuildId` is left out, as
/// OpenClaw leaves it out for a configured root: keel's version never matches the UI's, and
/// the UI must not reload for it.
pub fn bootstrap_config(cfg: &Config) -> Value {
    let ui = &cfg.control_ui;
    let mut v = json!({
        "basePath": ui.base_path,
        "assistantName": ui.assistant.name,
        "assistantAvatar": ui.assistant.avatar,
        "assistantAvatarSource": null,
        "assistantAvatarStatus": null,
        "assistantAvatarReason": null,
        "assistantAgentId": ui.assistant.agent_id.as_str(),
        "serverVersion": crate::VERSION,
        "embedSandbox": ui.embed_sandbox,
        "allowExternalEmbedUrls": ui.allow_external_embed_urls,
        "automaticallyFetchFavicons": ui.automatically_fetch_favicons,
        "communityInvite": ui.community_invite,
        "terminalEnabled": false,
        "cliAgentsEnabled": false,
        "pluginAssetsRequireAuth": true,
        "pluginFrameGrants": [],
    });
    if let Some(env) = &ui.environment {
        v["environment"] = env.clone();
    }
    v
}

/// The bootstrap config as an answer with the UI's headers.
pub fn bootstrap_answer(cfg: &Config) -> HttpAnswer {
    let mut headers = vec![
        (
            "Content-Type",
            "application/json; charset=utf-8".to_string(),
        ),
        ("Cache-Control", "no-cache".to_string()),
    ];
    security_headers(&mut headers, &html::csp(&[]));
    HttpAnswer {
        status: 200,
        headers,
        body: Arc::from(bootstrap_config(cfg).to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn encodings_are_negotiated_as_openclaw_does() {
        use Encoding::*;
        let both = [Br, Gzip];
        for (header, available, want) in [
            (None, &both[..], Some(Identity)),
            (Some(""), &both[..], Some(Identity)),
            (Some("gzip, deflate, br"), &both[..], Some(Br)),
            (Some("gzip, deflate, br"), &[Gzip][..], Some(Gzip)),
            (Some("gzip, deflate, br"), &[][..], Some(Identity)),
            // Identity is q=1 unless named: preferred over anything lower.
            (Some("br;q=0.5, gzip;q=0.8"), &both[..], Some(Identity)),
            (
                Some("br;q=0.5, gzip;q=0.8, identity;q=0.1"),
                &both[..],
                Some(Gzip),
            ),
            (Some("br;q=0, gzip;q=0"), &both[..], Some(Identity)),
            (Some("*"), &both[..], Some(Br)),
            (Some("identity;q=0"), &[][..], None),
            (Some("*;q=0"), &[][..], None),
            (Some("*;q=0, gzip"), &both[..], Some(Gzip)),
            (Some("br;q=2"), &both[..], Some(Identity)),
            (Some("BR"), &both[..], Some(Br)),
            (Some("br;q=0.001"), &both[..], Some(Identity)),
        ] {
            assert_eq!(
                negotiate(header, available),
                want,
                "{header:?} {available:?}"
            );
        }
    }

    #[test]
    fn html_acceptance() {
        assert!(accepts_html(None));
        assert!(accepts_html(Some(
            "text/html,application/xhtml+xml,*/*;q=0.8"
        )));
        assert!(accepts_html(Some("*/*")));
        assert!(!accepts_html(Some("application/json")));
        assert!(!accepts_html(Some("text/html;q=0")));
        assert!(!accepts_html(Some("image/avif,image/webp")));
    }

    fn served(files: &[(&str, tree::Meta)]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<html></html>").unwrap();
        let mut listing = tree::list(dir.path()).unwrap();
        listing.files = files
            .iter()
            .map(|(k, m)| (k.to_string(), *m))
            .collect::<HashMap<_, _>>();
        Served {
            listing,
            source: String::new(),
            index: Arc::new(Prepared {
                content_type: "text/html; charset=utf-8",
                encoding: Encoding::Identity,
                cache_control: "no-cache",
                csp: Arc::from(""),
                body: Arc::from(&b""[..]),
            }),
            csp: Arc::from(""),
            cache: Mutex::new(Lru::new(1 << 20)),
            prepared_for: (String::new(), None),
        }
    }

    #[test]
    fn picks() {
        let m = |br: bool, gz: bool| tree::Meta {
            len: 1,
            br: br.then_some(1),
            gz: gz.then_some(1),
        };
        let s = served(&[
            ("index.html", m(false, false)),
            ("assets/a.js", m(true, true)),
            ("favicon.ico", m(false, true)),
            ("about.html", m(false, false)),
        ]);
        let file = |rel: &str, encoding, document| Pick::File {
            rel: rel.into(),
            encoding,
            document,
        };
        let br = Some("gzip, br");
        assert_eq!(s.pick("index.html", None, br), Pick::Index);
        assert_eq!(s.pick("chat", None, br), Pick::Index);
        assert_eq!(s.pick("chat/x.unknown", None, br), Pick::Index);
        assert_eq!(s.pick("chat", Some("application/json"), br), Pick::NotFound);
        assert_eq!(
            s.pick("assets/a.js", None, br),
            file("assets/a.js", Encoding::Br, false)
        );
        assert_eq!(
            s.pick("assets/a.js", None, Some("gzip")),
            file("assets/a.js", Encoding::Gzip, false)
        );
        assert_eq!(
            s.pick("favicon.ico", None, br),
            file("favicon.ico", Encoding::Identity, false),
            "an icon is not offered compressed"
        );
        assert_eq!(
            s.pick("about.html", None, br),
            file("about.html", Encoding::Identity, true)
        );
        assert_eq!(s.pick("missing.html", None, br), Pick::Index);
        assert_eq!(s.pick("assets/missing.js", None, br), Pick::NotFound);
        assert_eq!(s.pick("assets/a.js.br", None, br), Pick::NotFound);
        assert_eq!(s.pick("assets/a.js.gz", None, br), Pick::NotFound);
        assert_eq!(
            s.pick("assets/a.js", None, Some("br, identity;q=0")),
            file("assets/a.js", Encoding::Br, false)
        );
        assert_eq!(
            s.pick("assets/a.js", None, Some("identity;q=0")),
            Pick::NotAcceptable
        );
        assert_eq!(
            s.pick("favicon.ico", None, Some("identity;q=0")),
            Pick::NotAcceptable
        );
    }

    #[test]
    fn the_bootstrap_config_has_the_fields_the_ui_reads() {
        let v = bootstrap_config(&Config::default());
        for key in [
            "basePath",
            "assistantName",
            "assistantAvatar",
            "serverVersion",
            "embedSandbox",
            "allowExternalEmbedUrls",
            "automaticallyFetchFavicons",
            "communityInvite",
            "terminalEnabled",
            "cliAgentsEnabled",
            "pluginAssetsRequireAuth",
            "pluginFrameGrants",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["serverVersion"], crate::VERSION);
        assert_eq!(v["terminalEnabled"], false, "matches the page's attribute");
        assert!(v.get("serverBuildId").is_none());
    }
}
