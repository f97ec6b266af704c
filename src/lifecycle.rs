//! Start-up, signals and the end of the process.
//!
//! `starting → serving → draining → stopped`: [`serve`] binds and answers `/healthz` before
//! anything else, then sends `READY=1`. Signals are registered before any thread is spawned
//! and handled on their own thread, never on the reactor:
//! - SIGTERM/SIGINT: begin the drain (`STOPPING=1`, `/readyz` 503, new work refused,
//!   `shutdown` to WebSocket clients); the watchdog cancels every token at the drain deadline
//!   and exits at deadline + grace. A second signal skips to the cancel step. Either way out,
//!   the process groups of tools still running are killed first.
//! - SIGUSR1: a JSON diagnostic dump to the log and `<state>/diagnostics/`.
//! - SIGHUP: reload the config file; an invalid file is refused and the running config kept.

use crate::clock;
use crate::config::{self, Config, EX_CONFIG, Overrides, Validated};
use crate::jobs::Pools;
use crate::phase::Phase;
use crate::reactor::{Reactor, WAKER};
use crate::runtime::{Shared, SharedParts};
use crate::sdnotify::Notifier;
use crate::state;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What `keel serve` was asked to do, after flags and environment were resolved.
#[derive(Debug, Clone, Default)]
pub struct ServeSettings {
    pub state_dir: PathBuf,
    /// `--config` / `KEEL_CONFIG`: must exist.
    pub config: Option<PathBuf>,
    pub overrides: Overrides,
    /// An invalid `*_HANDSHAKE_TIMEOUT_MS`, to be logged once.
    pub handshake_warning: Option<String>,
    pub test_hooks: bool,
}

/// The config file to use: the explicit one, else `<state>/keel.json` if present.
pub fn config_path(explicit: Option<&Path>, state_dir: &Path) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => Some(state_dir.join("keel.json")).filter(|p| p.is_file()),
    }
}

/// Loads and validates the config (or the embedded default) and logs what is wrong with it.
pub fn load_config(path: Option<&Path>) -> Validated {
    let v = match path {
        Some(p) => config::load_file(p),
        None => config::embedded_default(),
    };
    for w in &v.warnings {
        log::warn!("config: {w}");
    }
    for p in &v.problems {
        if p.fatal {
            log::error!("config: {p}");
        } else {
            log::warn!("config: {p}");
        }
    }
    v
}

/// Runs the gateway until it has drained. Returns the exit code.
pub fn serve(s: ServeSettings) -> i32 {
    let _ = clock::epoch();
    // Before any thread exists, so every thread inherits the mask.
    let signals = match Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGHUP]) {
        Ok(sig) => sig,
        Err(e) => {
            log::error!("cannot register signal handlers: {e}");
            return 1;
        }
    };
    if let Err(e) = state::ensure_dir(&s.state_dir) {
        log::error!(
            "cannot create state directory {}: {e}",
            s.state_dir.display()
        );
        return 1;
    }
    if let Some(w) = &s.handshake_warning {
        log::warn!("{w}");
    }
    let path = config_path(s.config.as_deref(), &s.state_dir);
    match &path {
        Some(p) => log::info!("config: {}", p.display()),
        None => log::info!("config: embedded default (no config file)"),
    }
    let validated = load_config(path.as_deref());
    if validated.is_fatal() {
        log::error!("refusing to start: fix the config above (`keel check` lists every problem)");
        return EX_CONFIG;
    }
    let mut overrides = s.overrides.clone();
    let mut cfg = validated.config;
    overrides.apply(&mut cfg);
    // Before the token file is read or made, and before anything binds.
    if let Some(why) = config::exposure_problem(&cfg) {
        log::error!("refusing to start: {why}");
        return EX_CONFIG;
    }
    if cfg.auth.token.is_none() && cfg.auth.mode == config::AuthMode::Token {
        match state::load_or_create_token(&s.state_dir) {
            Ok((token, created)) => {
                let at = state::token_path(&s.state_dir);
                if created {
                    log::info!("generated a gateway token in {} (mode 0600)", at.display());
                } else {
                    log::info!("using the gateway token in {}", at.display());
                }
                overrides.fallback_token = Some(token);
                overrides.apply(&mut cfg);
            }
            Err(e) => {
                log::error!(
                    "cannot read or create the gateway token in {}: {e}",
                    s.state_dir.display()
                );
                return 1;
            }
        }
    }
    if cfg.auth.token.is_none() && cfg.auth.password.is_none() {
        log::error!("refusing to start: no gateway token or password is configured");
        return EX_CONFIG;
    }
    run(s, path, overrides, cfg, signals)
}

fn run(
    s: ServeSettings,
    path: Option<PathBuf>,
    overrides: Overrides,
    mut cfg: Config,
    signals: Signals,
) -> i32 {
    let nofile = crate::reactor::fdlimit::raise();
    log::info!("descriptor limit (RLIMIT_NOFILE): {nofile}");
    let addr = cfg.listen_addr();
    let std_listener = match std::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot listen on {addr}: {e}");
            return 1;
        }
    };
    let local = std_listener.local_addr().unwrap_or(addr);
    if let Err(e) = std_listener.set_nonblocking(true) {
        log::error!("cannot make the listener non-blocking: {e}");
        return 1;
    }
    cfg.source = path;
    crate::logring::global().set_secrets(cfg.secrets());
    let poll = match mio::Poll::new() {
        Ok(p) => p,
        Err(e) => {
            log::error!("cannot create the poller: {e}");
            return 1;
        }
    };
    let waker = match mio::Waker::new(poll.registry(), WAKER) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            log::error!("cannot create the reactor waker: {e}");
            return 1;
        }
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let (pools, receivers) = Pools::new(cfg.cpu_workers, cfg.io_workers, cfg.queues);
    let (cpu, io, nice) = (cfg.cpu_workers, cfg.io_workers, cfg.worker_nice);
    let shared = Arc::new(Shared::new(SharedParts {
        state_dir: s.state_dir.clone(),
        overrides,
        config: cfg,
        pools,
        completions: tx,
        waker,
        notifier: Notifier::from_env(),
        test_hooks: s.test_hooks,
    }));
    if s.test_hooks {
        log::warn!(
            "KEEL_TEST_HOOKS=1: test-only methods are enabled; never set this in production"
        );
    }
    let runner = shared.clone();
    let started = receivers
        .spawn(nice, Arc::new(move |job| runner.jobs.run_job(job)))
        .and_then(|()| crate::watchdog::spawn(shared.clone()))
        .and_then(|()| spawn_signal_thread(signals, shared.clone()));
    if let Err(e) = started {
        log::error!("cannot start threads: {e}");
        return 1;
    }
    let reactor = match Reactor::new(
        poll,
        mio::net::TcpListener::from_std(std_listener),
        shared.clone(),
        rx,
    ) {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot register the listener: {e}");
            return 1;
        }
    };
    shared.set_listen_addr(local);
    // READY=1 before the phase changes: the watchdog's WATCHDOG=1 keep-alives start with the
    // phase, and systemd expects them after READY=1.
    shared
        .notifier
        .notify(&format!("READY=1\nSTATUS=serving on {local}"));
    shared.set_phase(Phase::Serving);
    // Serving first, indexing after: the index loads and builds in the background, and so do
    // the idempotency keys of runs and sends (each refuses new work until its keys are in).
    crate::agent::runs::start_keys(&shared.runs);
    shared.sessions.start();
    shared.delivery.start();
    shared.ui.start();
    shared.inbound.start();
    shared.cron.start();
    log::info!(
        "keel {} listening on {local} ({cpu} cpu workers, {io} io workers, nice {nice})",
        crate::VERSION
    );
    let ran = reactor.run();
    // Jobs are over by now, and with them their tools; this catches any that are not.
    let tools = crate::procgroup::kill_all();
    if tools > 0 {
        log::warn!("killed the process groups of {tools} running tool(s)");
    }
    if let Err(e) = ran {
        log::error!("reactor failed: {e}");
        return 1;
    }
    let code = shared.exit_code();
    if code == 0 {
        log::info!("drained cleanly; exiting");
    } else {
        log::warn!("stopped with work aborted; exiting with status {code}");
    }
    code
}

fn spawn_signal_thread(mut signals: Signals, shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("keel-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let name = match sig {
                    SIGTERM => "SIGTERM",
                    SIGINT => "SIGINT",
                    SIGUSR1 => "SIGUSR1",
                    SIGHUP => "SIGHUP",
                    _ => "signal",
                };
                match sig {
                    SIGTERM | SIGINT => on_stop_signal(&shared, name),
                    SIGUSR1 => {
                        if let Err(e) = write_dump(&shared) {
                            log::error!("SIGUSR1: cannot write the diagnostic dump: {e}");
                        }
                    }
                    SIGHUP => {
                        reload(&shared);
                        // The dashboard's root, base path or identity may have changed, or
                        // one was installed since.
                        shared.ui.rescan();
                    }
                    _ => {}
                }
            }
        })?;
    Ok(())
}

fn on_stop_signal(shared: &Shared, name: &str) {
    let now = Instant::now();
    if shared.drain().is_none() {
        // Logged and announced before the drain begins: a drain with nothing in flight ends
        // within one reactor iteration, and the process with it.
        let cfg = shared.config();
        log::info!(
            "{name}: draining ({} job(s) in flight; cancel in {} ms, exit by {} ms)",
            shared.jobs.len(),
            cfg.drain_timeout.as_millis(),
            (cfg.drain_timeout + cfg.drain_grace).as_millis()
        );
        let budget = cfg.drain_timeout + cfg.drain_grace + std::time::Duration::from_secs(5);
        shared.notifier.notify(&format!(
            "STOPPING=1\nEXTEND_TIMEOUT_USEC={}\nSTATUS=draining",
            budget.as_micros()
        ));
        shared.begin_drain(now);
    } else {
        log::warn!("second {name}: cancelling all in-flight work now");
        shared.hurry_drain(now);
    }
}

/// Writes the diagnostic dump to the log and to `<state>/diagnostics/dump-<timestamp>.json`.
pub fn write_dump(shared: &Shared) -> std::io::Result<PathBuf> {
    let dump = shared.dump_json();
    let text = serde_json::to_string_pretty(&dump).map_err(std::io::Error::other)?;
    let dir = shared.state_dir.join("diagnostics");
    state::ensure_dir(&dir)?;
    let path = dir.join(format!("dump-{}.json", clock::file_stamp(clock::wall_ms())));
    state::write_atomic(&path, text.as_bytes())?;
    log::info!(
        "SIGUSR1: diagnostic dump written to {}: {dump}",
        path.display()
    );
    Ok(path)
}

/// SIGHUP: re-reads the config file. A fatal problem keeps the running config; settings that
/// need a restart (listen address, pool sizes, queue sizes) keep their running values.
pub fn reload(shared: &Shared) {
    let running = shared.config();
    let Some(path) = running
        .source
        .clone()
        .or_else(|| config_path(None, &shared.state_dir))
    else {
        log::info!("SIGHUP: no config file (embedded default); nothing to reload");
        return;
    };
    let v = load_config(Some(&path));
    if v.is_fatal() {
        log::error!(
            "SIGHUP: {} refused; keeping the running config",
            path.display()
        );
        return;
    }
    let mut next = v.config;
    shared.overrides.apply(&mut next);
    next.source = Some(path.clone());
    if next.auth.token.is_none() && next.auth.password.is_none() {
        log::error!(
            "SIGHUP: {} leaves no token or password; keeping the running config",
            path.display()
        );
        return;
    }
    let restart_only = [
        (
            "listen address",
            next.listen_addr() != running.listen_addr(),
        ),
        (
            "gateway.workers",
            (next.cpu_workers, next.io_workers, next.worker_nice)
                != (running.cpu_workers, running.io_workers, running.worker_nice),
        ),
        ("gateway.queues", next.queues != running.queues),
    ];
    for (what, changed) in restart_only {
        if changed {
            log::warn!("SIGHUP: {what} changed; it takes effect after a restart");
        }
    }
    next.port = running.port;
    next.bind = running.bind;
    next.cpu_workers = running.cpu_workers;
    next.io_workers = running.io_workers;
    next.worker_nice = running.worker_nice;
    next.queues = running.queues;
    // The new secrets and the old ones: lines about the change may name either.
    let mut secrets = next.secrets();
    secrets.extend(running.secrets());
    crate::logring::global().set_secrets(secrets);
    shared.set_config(next);
    log::info!("SIGHUP: reloaded {}", path.display());
    // Channel accounts added, removed or changed: their pollers follow (on a thread of their
    // own; this one stays free for signals).
    shared.inbound.reconfigure();
    shared.cron.reconfigure();
}
