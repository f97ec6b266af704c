//! Tools a model may call during a run: the built-in `sessions_spawn` (a child run — a
//! sub-agent — that carries its parent's requester origin through any depth) and the
//! operator's command tools (`tools.commands`): argv with `{{arg}}` substitution, no shell,
//! run with the job's deadline, killed on cancel, output bounded.
//! Each call emits `agent` tool events (`start`, then `result` or `error`) and the matching
//! `session.tool` mirrors.
//!
//! Invariants of a command tool call:
//! - a model's value never becomes an option: one whose text starts with `-` where it would
//!   begin its argv element is refused before anything starts, unless the tool sets
//!   `allowOptionArgs` (`expand`);
//! - no process outlives the call: the tool runs as the leader of its own process group, and
//!   however the call ends (the leader exits, times out, or the run is cancelled) the whole
//!   group gets SIGKILL while the leader is still unreaped — so the group's id, the leader's
//!   pid, cannot have been given to anyone else — and only then is the leader reaped;
//! - no thread outlives the call: output is read on the calling worker, from non-blocking
//!   pipes polled in the loop that waits for the leader, and once the group is dead what is
//!   left in the pipes is read for a short bound, then they are dropped;
//! - no process outlives keel: groups still running are in `procgroup`'s registry, which
//!   keel's exit paths empty with `procgroup::kill_all`.
//!
//! A process that leaves the group on purpose (`setsid`, `setpgid`) is beyond all this.

use super::provider::{ToolCall, ToolSpec};
use super::runs::{self, Request, Run, Runs};
use crate::clock;
use crate::config::agents::{AgentSettings, CommandTool};
use crate::ids::{AgentId, SessionKey};
use crate::jobs::JobCtx;
use crate::procgroup;
use crate::protocol::Event;
use crate::protocol::reply::ReplyTo;
use crate::sync::lock;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, WaitId, WaitIdOptions};
use serde_json::{Value, json};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

/// Sub-agents may nest this deep.
pub const MAX_DEPTH: u32 = 5;

pub fn specs(settings: &AgentSettings) -> Vec<ToolSpec> {
    let mut v = vec![ToolSpec {
        name: "sessions_spawn".into(),
        description: "Start a sub-agent on a task in its own session; its result is delivered to whoever asked for this run.".into(),
        parameters: json!({"type": "object", "properties": {
            "task": {"type": "string", "description": "What the sub-agent should do"},
            "agentId": {"type": "string"},
            "label": {"type": "string"},
        }, "required": ["task"]}),
    }];
    v.extend(settings.tools.iter().map(|t| ToolSpec {
        name: t.name.clone(),
        description: t.description.clone(),
        parameters: t.parameters.clone(),
    }));
    v
}

fn event(svc: &Runs, run: &Run, phase: &str, data: Value) {
    runs::emit(
        svc,
        run,
        Event::Agent,
        json!({"stream": "tool", "ts": clock::wall_ms(), "data": {"phase": phase, "data": data}}),
    );
    runs::mirror_tool(svc, run, phase, &data);
}

/// Runs one tool call; `Err` is a message for the model (the run goes on).
pub fn run(svc: &Arc<Runs>, run: &Run, ctx: &JobCtx, call: &ToolCall) -> Result<String, String> {
    event(
        svc,
        run,
        "start",
        json!({"name": call.name, "toolCallId": call.id, "args": call.arguments}),
    );
    let result = match call.name.as_str() {
        "sessions_spawn" => spawn(svc, run, call),
        name => match svc
            .h
            .config
            .get()
            .agents
            .tools
            .iter()
            .find(|t| t.name == name)
        {
            Some(t) => command(t, &call.arguments, ctx),
            None => Err(format!("unknown tool {name:?}")),
        },
    };
    match &result {
        Ok(out) => event(
            svc,
            run,
            "result",
            json!({"name": call.name, "toolCallId": call.id, "result": out}),
        ),
        Err(e) => event(
            svc,
            run,
            "error",
            json!({"name": call.name, "toolCallId": call.id, "error": e}),
        ),
    }
    result
}

/// `sessions_spawn {task, agentId?, label?}`: queues a child run with the parent's origin.
fn spawn(svc: &Arc<Runs>, parent: &Run, call: &ToolCall) -> Result<String, String> {
    let task = call
        .arguments
        .get("task")
        .or_else(|| call.arguments.get("message"))
        .and_then(Value::as_str)
        .ok_or("sessions_spawn needs a task")?;
    if parent.request.depth + 1 > MAX_DEPTH {
        return Err(format!("sub-agents may nest at most {MAX_DEPTH} deep"));
    }
    // The model's agentId is hostile like any other input: normalized as every agent id is.
    let agent = match call.arguments.get("agentId") {
        None | Some(Value::Null) => parent.request.session.agent.clone(),
        Some(Value::String(raw)) => {
            AgentId::normalize(raw).map_err(|e| format!("sessions_spawn: invalid agentId: {e}"))?
        }
        Some(_) => return Err("sessions_spawn: agentId must be a string".into()),
    };
    let child = SessionKey::of(
        &agent,
        &format!("subagent:{}", clock::Rng::from_os().uuid()),
    );
    let child_key = child.key.clone();
    let request = Request {
        message: task.to_string(),
        session: child,
        // The requester's origin travels with the child, through any depth.
        origin: parent.request.origin.clone(),
        parent: Some(parent.id.clone()),
        depth: parent.request.depth + 1,
        deliver: true,
        resume: false,
    };
    let idem = format!("{}:spawn:{}", parent.id, call.id);
    let (child, _) = runs::start(svc, &idem, request, ReplyTo::Internal, None)
        .map_err(|e| format!("cannot start the sub-agent: {}", e.message))?;
    Ok(json!({"status": "accepted", "runId": child.id, "childSessionKey": child_key}).to_string())
}

/// A substitution refused because it would begin its argv element with `-`.
#[derive(Debug, PartialEq)]
struct OptionLike {
    arg: String,
    value: String,
}

impl OptionLike {
    fn message(&self, tool: &str) -> String {
        let mut value: String = self.value.chars().take(80).collect();
        if value.len() < self.value.len() {
            value.push('…');
        }
        format!(
            "{tool}: the value of argument {:?} ({value:?}) starts with \"-\", so {tool} would read it as an option; refused, nothing was run (pass it without the leading \"-\")",
            self.arg
        )
    }
}

/// Replaces `{{name}}` in an argv element with the argument `name` (strings as they are,
/// other values as JSON). Without a shell, arguments are never interpreted — but a program
/// reads an element that starts with `-` as an option, so a value whose text starts with `-`
/// (`-o/x`, `--`, `-`, the number `-3`) is refused where it would begin the element, unless
/// `allow_options`. After other text (`--file={{path}}`) it is an option's value and passes.
fn expand(arg: &str, args: &Value, allow_options: bool) -> Result<String, OptionLike> {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let name = rest[start + 2..start + end].trim();
        let value = match args.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        };
        if out.is_empty() && value.starts_with('-') && !allow_options {
            return Err(OptionLike {
                arg: name.to_string(),
                value,
            });
        }
        out.push_str(&value);
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The wait loop looks at the leader at least this often (output wakes it sooner).
const TICK: Duration = Duration::from_millis(10);
/// Once the group is dead, what it wrote is read from the pipes for at most this long: a
/// process that left the group (`setsid`) may hold them open.
const AFTER_KILL: Duration = Duration::from_millis(500);

/// A tool's process: the leader of its own group, registered in `procgroup` until reaped.
/// Lifecycle: started → (exited | timed out | cancelled) → group killed → leader reaped.
/// Dropping it unfinished (an early return, a panic) still kills the group and reaps.
struct Leader {
    child: Child,
    pid: i32,
    /// True until the leader is reaped: the cancel hook kills the group only under this lock,
    /// after which the pid may be another process's.
    unreaped: Arc<Mutex<bool>>,
}

impl Leader {
    fn spawn(argv: &[String]) -> Result<Leader, String> {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (child, pid) =
            procgroup::spawn(&mut cmd).map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
        Ok(Leader {
            child,
            pid,
            unreaped: Arc::new(Mutex::new(true)),
        })
    }

    /// Has the leader exited? It is not reaped here: its pid, the group's id, must stay
    /// its own until the group is killed.
    fn exited(&self) -> std::io::Result<bool> {
        let Some(pid) = Pid::from_raw(self.pid) else {
            return Ok(true);
        };
        let how = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG;
        match rustix::process::waitid(WaitId::Pid(pid), how) {
            Ok(status) => Ok(status.is_some()),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Kills the whole group, then reaps the leader — in that order, under `unreaped`.
    /// `None` if it was already reaped or its status could not be read.
    fn finish(&mut self) -> Option<ExitStatus> {
        let mut unreaped = lock(&self.unreaped);
        if !*unreaped {
            return None;
        }
        procgroup::kill(self.pid);
        procgroup::forget(self.pid);
        let status = self.child.wait().ok();
        *unreaped = false;
        status
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One of the tool's output pipes, read without blocking on the calling worker.
struct Pipe {
    file: Option<std::fs::File>,
    kept: Vec<u8>,
    dropped: bool,
}

impl Pipe {
    fn new(fd: OwnedFd) -> std::io::Result<Pipe> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(Pipe {
            file: Some(fd.into()),
            kept: Vec::new(),
            dropped: false,
        })
    }

    /// Reads what is there now, keeping at most `max` bytes. Bounded per call, so that a
    /// tool writing without pause cannot keep the loop from its other checks.
    fn pump(&mut self, max: usize) {
        let Some(file) = &mut self.file else { return };
        let mut buf = [0u8; 8192];
        for _ in 0..16 {
            match file.read(&mut buf) {
                Ok(0) => {
                    self.file = None;
                    return;
                }
                Ok(n) => {
                    let room = max.saturating_sub(self.kept.len());
                    self.kept.extend_from_slice(&buf[..n.min(room)]);
                    self.dropped |= n > room;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.file = None;
                    return;
                }
            }
        }
    }

    fn open(&self) -> bool {
        self.file.is_some()
    }
}

/// Waits until a pipe has something to read or has closed, or `timeout` passes.
fn wait_output(pipes: &[Pipe], timeout: Duration) {
    let mut fds: Vec<PollFd<'_>> = pipes
        .iter()
        .filter_map(|p| p.file.as_ref())
        .map(|f| PollFd::new(f, PollFlags::IN))
        .collect();
    match Timespec::try_from(timeout) {
        Ok(t) if !fds.is_empty() => {
            // An error (EINTR) only ends this wait early; the loop looks again.
            let _ = rustix::event::poll(&mut fds, Some(&t));
        }
        _ => std::thread::sleep(timeout),
    }
}

/// How a call's wait ended.
enum Ended {
    Exited,
    TimedOut,
    Cancelled,
    Failed(std::io::Error),
}

fn command(tool: &CommandTool, args: &Value, ctx: &JobCtx) -> Result<String, String> {
    let argv = tool
        .argv
        .iter()
        .map(|a| expand(a, args, tool.allow_option_args))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|r| r.message(&tool.name))?;
    let mut leader = Leader::spawn(&argv)?;
    // Cancel kills the group at once, wherever the run is — but only while the leader is
    // unreaped: the hook outlives the tool, and after the reap the id may be reused.
    let (pid, hook) = (leader.pid, Arc::downgrade(&leader.unreaped));
    ctx.token().on_cancel(move || {
        let Some(unreaped) = hook.upgrade() else {
            return;
        };
        // Taken only by `finish`, which kills the group itself: the canceller (the watchdog)
        // need not wait for its reap.
        let unreaped = match unreaped.try_lock() {
            Ok(u) => u,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if *unreaped {
            procgroup::kill(pid);
        }
    });
    let max = tool.max_output;
    let mut pipes = Vec::new();
    let fds = [
        leader.child.stdout.take().map(OwnedFd::from),
        leader.child.stderr.take().map(OwnedFd::from),
    ];
    for fd in fds.into_iter().flatten() {
        // A blocking pipe could hold the worker forever; `leader` is dropped (killed) on error.
        pipes.push(Pipe::new(fd).map_err(|e| format!("{}: {e}", argv[0]))?);
    }
    let deadline = (Instant::now() + tool.timeout).min(ctx.deadline());
    let ended = loop {
        for p in &mut pipes {
            p.pump(max);
        }
        match leader.exited() {
            Ok(true) => break Ended::Exited,
            Ok(false) => {}
            Err(e) => break Ended::Failed(e),
        }
        if ctx.token().is_cancelled() {
            break Ended::Cancelled;
        }
        let now = Instant::now();
        if now >= deadline {
            break Ended::TimedOut;
        }
        wait_output(&pipes, (deadline - now).min(TICK));
    };
    // Also when the leader exited by itself: what it left running in the background goes too.
    let status = leader.finish();
    let until = Instant::now() + AFTER_KILL;
    loop {
        for p in &mut pipes {
            p.pump(max);
        }
        let now = Instant::now();
        if !pipes.iter().any(Pipe::open) || now >= until {
            break;
        }
        wait_output(&pipes, (until - now).min(TICK));
    }
    let mut output = Vec::new();
    let mut truncated = false;
    for p in pipes {
        output.extend(p.kept);
        truncated |= p.dropped;
    }
    truncated |= output.len() > max;
    output.truncate(max);
    let mut text = String::from_utf8_lossy(&output).into_owned();
    if truncated {
        text.push_str(&format!("\n[output truncated at {max} bytes]"));
    }
    let cancelled = || Err(format!("{} was killed: the run was cancelled", tool.name));
    match (ended, status) {
        (Ended::Cancelled, _) => cancelled(),
        (Ended::TimedOut, _) => Err(format!(
            "{} was killed after {} ms (timeout)",
            tool.name,
            tool.timeout.as_millis()
        )),
        (Ended::Failed(e), _) => Err(format!("{}: {e}", argv[0])),
        (Ended::Exited, Some(s)) if s.success() => Ok(text),
        // The cancel hook's kill, seen as an exit.
        (Ended::Exited, _) if ctx.token().is_cancelled() => cancelled(),
        (Ended::Exited, Some(s)) => Err(format!("{} exited with {s}: {text}", tool.name)),
        (Ended::Exited, None) => Err(format!("{}: its exit status was lost", tool.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::CancelReason;
    use crate::jobs::{JobInfo, JobSpec, Lane, PoolKind};
    use crate::protocol::reply::ReplyTo;

    #[test]
    fn arguments_are_substituted_not_interpreted() {
        let args = json!({"path": "/tmp/a b; rm -rf /", "n": 3});
        let expand = |a: &str| expand(a, &args, false).unwrap();
        assert_eq!(expand("--file={{path}}"), "--file=/tmp/a b; rm -rf /");
        assert_eq!(expand("{{ n }}x{{missing}}"), "3x");
        assert_eq!(expand("plain"), "plain");
        assert_eq!(expand("{{unclosed"), "{{unclosed");
    }

    #[test]
    fn a_value_that_would_begin_its_element_with_a_dash_is_refused() {
        let args = json!({"file": "-o/tmp/victim", "long": "--x", "dash": "-", "ends": "--",
                          "n": -3, "f": -0.5, "empty": "", "word": "a-b", "space": " -o", "pos": 3});
        for (element, name) in [
            ("{{file}}", "file"),
            ("{{long}}", "long"),
            ("{{dash}}", "dash"),
            ("{{ends}}", "ends"),
            ("{{n}}", "n"),
            ("{{ f }}", "f"),
            // Nothing before it once the empty values are in: it begins the element.
            ("{{empty}}{{missing}}{{file}}", "file"),
        ] {
            let refused = expand(element, &args, false).unwrap_err();
            assert_eq!(refused.arg, name, "{element}");
        }
        let passes = |element: &str| expand(element, &args, false).unwrap();
        // After other text a value is an option's value (or part of a word), not an option.
        assert_eq!(passes("--file={{file}}"), "--file=-o/tmp/victim");
        assert_eq!(passes("x{{n}}"), "x-3");
        assert_eq!(passes("{{word}}{{long}}"), "a-b--x");
        assert_eq!(passes("{{pos}}"), "3");
        assert_eq!(passes("{{word}}"), "a-b");
        assert_eq!(passes("{{space}}"), " -o");
        // A dash the operator wrote is the operator's.
        assert_eq!(passes("-{{word}}"), "-a-b");
        // allowOptionArgs lets them all through, as they are.
        assert_eq!(expand("{{file}}", &args, true).unwrap(), "-o/tmp/victim");
        assert_eq!(expand("{{n}}", &args, true).unwrap(), "-3");
        assert_eq!(expand("{{dash}}", &args, true).unwrap(), "-");
    }

    #[test]
    fn a_refusal_names_the_tool_and_the_argument_and_clips_the_value() {
        let r = OptionLike {
            arg: "file".into(),
            value: format!("-{}", "é".repeat(500)),
        };
        let m = r.message("sort_file");
        assert!(m.starts_with("sort_file: "), "{m}");
        assert!(m.contains("argument \"file\""), "{m}");
        assert!(m.contains("starts with \"-\""), "{m}");
        assert!(m.contains("nothing was run"), "{m}");
        assert!(m.chars().count() < 400, "{m}");
    }

    fn tool(argv: &[&str], timeout: Duration) -> CommandTool {
        CommandTool {
            name: "t".into(),
            description: String::new(),
            parameters: json!({}),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            timeout,
            max_output: 4096,
            allow_option_args: false,
        }
    }

    fn job() -> Arc<JobInfo> {
        let spec = JobSpec {
            kind: "t".into(),
            pool: PoolKind::Io,
            lane: Lane::Interactive,
            timeout: Duration::from_secs(60),
            stall_limit: None,
        };
        Arc::new(JobInfo::new(1, &spec, ReplyTo::Internal, Instant::now()))
    }

    /// Waits (at most 20 s) until `pid` has exited: gone, or a zombie its new parent has not
    /// reaped yet.
    #[track_caller]
    fn assert_gone(pid: &str) {
        let stat = format!("/proc/{}/stat", pid.trim());
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let state = std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.chars().next()));
            if matches!(state, None | Some(Some('Z'))) {
                return;
            }
            assert!(Instant::now() < until, "{stat}: still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `sh -c script`, where the script writes its background process's pid to `$0`;
    /// returns the result and that pid.
    fn run_script(
        script: &str,
        timeout: Duration,
        cancel_when_started: bool,
    ) -> (Result<String, String>, String) {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let info = job();
        let canceller = cancel_when_started.then(|| {
            let (info, pid_file) = (info.clone(), pid_file.clone());
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(20);
                while std::fs::read_to_string(&pid_file).map_or(true, |p| !p.ends_with('\n')) {
                    assert!(Instant::now() < until, "the tool never started");
                    std::thread::sleep(Duration::from_millis(5));
                }
                info.token.cancel(CancelReason::Client);
            })
        });
        let t = tool(&["sh", "-c", script, pid_file.to_str().unwrap()], timeout);
        let result = command(&t, &json!({}), &JobCtx { info: &info });
        if let Some(c) = canceller {
            c.join().unwrap();
        }
        (result, std::fs::read_to_string(&pid_file).unwrap())
    }

    #[test]
    fn what_a_tool_leaves_in_the_background_dies_with_the_call() {
        let (result, pid) = run_script(
            "sleep 30 & echo $! > \"$0\"; echo started",
            Duration::from_secs(20),
            false,
        );
        // The background process held the pipes; the output is there all the same.
        assert_eq!(result.unwrap(), "started\n");
        assert_gone(&pid);
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let (result, pid) = run_script(
            "sleep 30 & echo $! > \"$0\"; wait",
            Duration::from_millis(300),
            false,
        );
        assert!(result.unwrap_err().contains("timeout"));
        assert_gone(&pid);
    }

    #[test]
    fn a_cancel_kills_the_whole_group() {
        let (result, pid) = run_script(
            "sleep 30 & echo $! > \"$0\"; wait",
            Duration::from_secs(20),
            true,
        );
        assert!(result.unwrap_err().contains("cancelled"));
        assert_gone(&pid);
    }

    #[test]
    fn output_is_bounded_and_marked() {
        let t = tool(
            &["sh", "-c", "head -c 100000 /dev/zero; echo oops >&2"],
            Duration::from_secs(20),
        );
        let out = command(&t, &json!({}), &JobCtx { info: &job() }).unwrap();
        assert!(
            out.ends_with("\n[output truncated at 4096 bytes]"),
            "{out:?}"
        );
        assert_eq!(out.len(), 4096 + "\n[output truncated at 4096 bytes]".len());
    }
}
