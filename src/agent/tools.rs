//! Tools a model may call during a run: the built-in `sessions_spawn` (a child run — a
//! sub-agent — that carries its parent's requester origin through any depth) and the
//! operator's command tools (`tools.commands`): argv with `{{arg}}` substitution, no shell,
//! run with the job's deadline, killed on cancel, output bounded.
//! Each call emits `agent` tool events (`start`, then `result` or `error`) and the matching
//! `session.tool` mirrors.

use super::provider::{ToolCall, ToolSpec};
use super::runs::{self, Request, Run};
use super::settings::{AgentSettings, CommandTool};
use crate::clock;
use crate::ids::{AgentId, SessionKey};
use crate::jobs::{JobCtx, ReplyTo};
use crate::runtime::Shared;
use serde_json::{Value, json};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
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

fn event(shared: &Shared, run: &Run, phase: &str, data: Value) {
    runs::emit(
        shared,
        run,
        "agent",
        json!({"stream": "tool", "ts": clock::wall_ms(), "data": {"phase": phase, "data": data}}),
    );
    runs::mirror_tool(shared, run, phase, &data);
}

/// Runs one tool call; `Err` is a message for the model (the run goes on).
pub fn run(
    shared: &Arc<Shared>,
    run: &Run,
    ctx: &JobCtx,
    call: &ToolCall,
) -> Result<String, String> {
    event(
        shared,
        run,
        "start",
        json!({"name": call.name, "toolCallId": call.id, "args": call.arguments}),
    );
    let result = match call.name.as_str() {
        "sessions_spawn" => spawn(shared, run, call),
        name => match shared.config().agents.tools.iter().find(|t| t.name == name) {
            Some(t) => command(t, &call.arguments, ctx),
            None => Err(format!("unknown tool {name:?}")),
        },
    };
    match &result {
        Ok(out) => event(
            shared,
            run,
            "result",
            json!({"name": call.name, "toolCallId": call.id, "result": out}),
        ),
        Err(e) => event(
            shared,
            run,
            "error",
            json!({"name": call.name, "toolCallId": call.id, "error": e}),
        ),
    }
    result
}

/// `sessions_spawn {task, agentId?, label?}`: queues a child run with the parent's origin.
fn spawn(shared: &Arc<Shared>, parent: &Run, call: &ToolCall) -> Result<String, String> {
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
    };
    let idem = format!("{}:spawn:{}", parent.id, call.id);
    let (child, _) = runs::start(shared, &idem, request, ReplyTo::Internal, None)
        .map_err(|e| format!("cannot start the sub-agent: {}", e.message))?;
    Ok(json!({"status": "accepted", "runId": child.id, "childSessionKey": child_key}).to_string())
}

/// Replaces `{{name}}` in an argv element with the argument `name` (strings as they are,
/// other values as JSON). Without a shell, arguments are never interpreted.
fn expand(arg: &str, args: &Value) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let name = rest[start + 2..start + end].trim();
        match args.get(name) {
            Some(Value::String(s)) => out.push_str(s),
            Some(v) => out.push_str(&v.to_string()),
            None => {}
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

fn command(tool: &CommandTool, args: &Value, ctx: &JobCtx) -> Result<String, String> {
    let argv: Vec<String> = tool.argv.iter().map(|a| expand(a, args)).collect();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let pid = child.id();
    // Cancel kills it at once, wherever the run is — but only while it has not been reaped:
    // the hook outlives the tool, and after a reap the pid may be another process's. The
    // child is reaped only under this lock, which the hook takes too.
    let unreaped = Arc::new(Mutex::new(true));
    let hook = Arc::downgrade(&unreaped);
    ctx.token().on_cancel(move || {
        if let Some(u) = hook.upgrade()
            && *u.lock().unwrap_or_else(|e| e.into_inner())
            && let Some(p) = rustix::process::Pid::from_raw(pid as i32)
        {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    });
    let max = tool.max_output;
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut r| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 8192];
            let mut truncated = false;
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
            (kept, truncated)
        })
    })
    .collect();
    let deadline = (Instant::now() + tool.timeout).min(ctx.deadline());
    let status = loop {
        let mut alive = unreaped.lock().unwrap_or_else(|e| e.into_inner());
        match child.try_wait() {
            Ok(Some(s)) => {
                *alive = false;
                break Some(s);
            }
            Ok(None) if Instant::now() >= deadline || ctx.token().is_cancelled() => {
                let _ = child.kill();
                let _ = child.wait();
                *alive = false;
                break None;
            }
            Ok(None) => {
                drop(alive);
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("{}: {e}", argv[0])),
        }
    };
    // A grandchild holding the pipes open must not hold the run: wait a moment, no more.
    let mut output = Vec::new();
    let mut truncated = false;
    let until = Instant::now() + Duration::from_secs(1);
    for r in readers {
        while !r.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if r.is_finished()
            && let Ok((o, t)) = r.join()
        {
            output.extend(o);
            truncated |= t;
        }
    }
    output.truncate(max);
    let mut text = String::from_utf8_lossy(&output).into_owned();
    if truncated {
        text.push_str(&format!("\n[output truncated at {max} bytes]"));
    }
    match status {
        None if ctx.token().is_cancelled() => {
            Err(format!("{} was killed: the run was cancelled", tool.name))
        }
        None => Err(format!(
            "{} was killed after {} ms (timeout)",
            tool.name,
            tool.timeout.as_millis()
        )),
        Some(s) if s.success() => Ok(text),
        Some(s) => Err(format!("{} exited with {s}: {text}", tool.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_substituted_not_interpreted() {
        let args = json!({"path": "/tmp/a b; rm -rf /", "n": 3});
        assert_eq!(
            expand("--file={{path}}", &args),
            "--file=/tmp/a b; rm -rf /"
        );
        assert_eq!(expand("{{ n }}x{{missing}}", &args), "3x");
        assert_eq!(expand("plain", &args), "plain");
        assert_eq!(expand("{{unclosed", &args), "{{unclosed");
    }
}
