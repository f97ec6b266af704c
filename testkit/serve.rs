//! Starting `keel serve` on 127.0.0.1:0 with a state directory of its own: the command, its
//! config, its log, and the port and token it ends up with.

use super::log::{self, Log};
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The settings keel takes from its environment that must not leak in from the caller's: a run
/// has its own port, token, config and state, no test hooks it did not ask for, and no systemd.
pub const CALLER_SETTINGS: [&str; 10] = [
    "KEEL_CONFIG",
    "KEEL_GATEWAY_TOKEN",
    "KEEL_BIND",
    "KEEL_PORT",
    "KEEL_STATE_DIR",
    "KEEL_TEST_HOOKS",
    "KEEL_HANDSHAKE_TIMEOUT_MS",
    "OPENCLAW_HANDSHAKE_TIMEOUT_MS",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
];

/// `cmd` — keel itself, or a shell that execs keel with the arguments it is given — made to run
/// `serve --port 0 --state-dir <state>` without the caller's [`CALLER_SETTINGS`] (the run's own
/// settings are added after this), stdin and stdout closed.
pub fn serve_command(mut cmd: Command, state: &Path) -> Command {
    cmd.arg("serve")
        .arg("--port")
        .arg("0")
        .arg("--state-dir")
        .arg(state);
    for k in CALLER_SETTINGS {
        cmd.env_remove(k);
    }
    // A dashboard only from the run's own state directory or config, never the machine's
    // global npm install of OpenClaw.
    cmd.env("KEEL_CONTROL_UI_NPM", "0");
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

/// Writes `config` to `<state>/keel.json`, where keel finds it without `--config`.
pub fn write_config(state: &Path, config: &Value) -> Result<(), String> {
    fs::create_dir_all(state).map_err(|e| format!("cannot create {}: {e}", state.display()))?;
    let text = serde_json::to_vec_pretty(config).map_err(|e| e.to_string())?;
    fs::write(state.join("keel.json"), text).map_err(|e| format!("cannot write keel.json: {e}"))
}

/// Where keel's stderr goes.
pub enum LogTo<'a> {
    /// Into memory through a pipe ([`Log::Pipe`]).
    Pipe,
    /// Into this file, created anew, read every `poll` when a line is waited for ([`Log::File`]).
    File { path: &'a Path, poll: Duration },
}

/// Spawns `cmd`, its stderr where `to` says.
pub fn spawn(cmd: &mut Command, to: LogTo) -> Result<(Child, Log), String> {
    match to {
        LogTo::Pipe => cmd.stderr(Stdio::piped()),
        LogTo::File { path, .. } => {
            let file = fs::File::create(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            cmd.stderr(Stdio::from(file))
        }
    };
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start {}: {e}",
            Path::new(cmd.get_program()).display()
        )
    })?;
    let log = match to {
        LogTo::Pipe => Log::pipe(child.stderr.take().expect("stderr is piped")),
        LogTo::File { path, poll } => Log::File {
            path: path.to_path_buf(),
            poll,
        },
    };
    Ok((child, log))
}

/// Waits up to `timeout` for keel's `listening on ADDR:PORT` line and returns the port. Err
/// says why not: how keel ended — `exited` says so once it has (it is asked while waiting on a
/// file) — or that the time ran out.
pub fn wait_listening(
    log: &Log,
    timeout: Duration,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<u16, String> {
    let mut how = None;
    let line = log.wait_any(&[log::LISTENING], Instant::now() + timeout, || {
        how = exited();
        how.is_some()
    });
    if let Some(port) = line.as_deref().and_then(log::listening_port) {
        return Ok(port);
    }
    Err(match how.or_else(exited) {
        Some(how) => format!("{how} before it was listening"),
        None if log.closed() => "keel closed its log before it was listening".to_string(),
        None => format!(
            "keel did not log 'listening on 127.0.0.1:PORT' within {} s",
            timeout.as_secs()
        ),
    })
}

/// keel's token, `<state>/gateway.token`, trimmed: empty when there is none.
pub fn read_token(state: &Path) -> String {
    fs::read_to_string(state.join("gateway.token"))
        .map(|t| t.trim().to_string())
        .unwrap_or_default()
}
