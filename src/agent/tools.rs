//! Tools a model may call during a run: the built-in `sessions_spawn` (a child run — a
//! sub-agent — that carries its parent's requester origin through any depth) and the
//! operator's command tools (`tools.commands`): argv with `{{arg}}` substitution, no shell,
//! run with the job's deadline, killed on cancel, output bounded.
//! Each call emits `agent` tool events (`start`, then `result` or `error`) and the matching
//! `session.tool` mirrors.
//!
//! A model's value never becomes an option: one whose text starts with `-` where it would
//! begin its argv element is refused before anything starts, unless the tool sets
//! `allowOptionArgs` ([`expand`]).

use super::provider::{ToolCall, ToolSpec};
use super::runs::{self, Request, Run};
use super::settings::{AgentSettings, CommandTool};
use crate::clock;
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
    let agent_id = call
        .arguments
        .get("agentId")
        .and_then(Value::as_str)
        .unwrap_or(&parent.request.agent_id)
        .to_string();
    let child_key = format!("agent:{agent_id}:subagent:{}", clock::Rng::from_os().uuid());
    let request = Request {
        message: task.to_string(),
        agent_id,
        session_key: child_key.clone(),
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

fn command(tool: &CommandTool, args: &Value, ctx: &JobCtx) -> Result<String, String> {
    let argv = tool
        .argv
        .iter()
        .map(|a| expand(a, args, tool.allow_option_args))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|r| r.message(&tool.name))?;
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
}
