//! The method table: name → how it runs (inline on the reactor, or as a job with a pool,
//! lane and deadline). Only cheap, in-memory methods are inline; everything else is a job.
//!
//! The hidden `keel.test.*` methods exist only when the gateway was started with
//! `KEEL_TEST_HOOKS=1`; they still need the token. They let tests and the benchmark occupy
//! workers (`keel.test.busy`) — also with a job that ignores its cancel token — and raise the
//! process's resident memory (`keel.test.ballast`), so the watchdog, the queues, the drain and
//! memory pressure can be proven against the real binary.

use crate::agent::runs;
use crate::error::RpcError;
use crate::jobs::{JobCtx, JobSpec, Lane, PoolKind, Work};
use crate::runtime::Shared;
use crate::sync::lock;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a call is carried out.
pub enum Call {
    /// Answered on the reactor from memory.
    Inline(Result<Value, RpcError>),
    /// Queued for a worker.
    Job(JobSpec, Work),
    /// Answered later through the completion channel (e.g. `agent.wait` until the run ends).
    Deferred,
}

/// Who is calling: a WebSocket request (which can receive events and a later `res` with the
/// same id), or an HTTP request (one answer only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Ws {
        conn: usize,
        generation: u64,
        id: String,
    },
    Http,
}

type InlineFn = fn(&Arc<Shared>, &Value, &Caller) -> Result<Value, RpcError>;
/// Builds a job; given the method name, so that one builder can serve several methods.
type JobFn = fn(&Arc<Shared>, &'static str, &Value) -> Result<(JobSpec, Work), RpcError>;
type CallFn = fn(&Arc<Shared>, &Value, &Caller) -> Result<Call, RpcError>;

enum Handler {
    Inline(InlineFn),
    Job(JobFn),
    /// Decides for itself (answer now, or later).
    Call(CallFn),
}

struct Method {
    name: &'static str,
    handler: Handler,
    hidden: bool,
}

const METHODS: &[Method] = &[
    Method {
        name: "health",
        handler: Handler::Inline(health),
        hidden: false,
    },
    Method {
        name: "status",
        handler: Handler::Job(status),
        hidden: false,
    },
    Method {
        name: "sessions.list",
        handler: Handler::Job(usage_job),
        hidden: false,
    },
    Method {
        name: "sessions.usage",
        handler: Handler::Job(usage_job),
        hidden: false,
    },
    Method {
        name: "usage.cost",
        handler: Handler::Job(usage_job),
        hidden: false,
    },
    Method {
        name: "chat.send",
        handler: Handler::Inline(chat_send),
        hidden: false,
    },
    Method {
        name: "agent",
        handler: Handler::Inline(agent),
        hidden: false,
    },
    Method {
        name: "agent.wait",
        handler: Handler::Call(agent_wait),
        hidden: false,
    },
    Method {
        name: "chat.abort",
        handler: Handler::Inline(chat_abort),
        hidden: false,
    },
    Method {
        name: "chat.history",
        handler: Handler::Job(chat_history),
        hidden: false,
    },
    Method {
        name: "sessions.subscribe",
        handler: Handler::Inline(subscribe),
        hidden: false,
    },
    Method {
        name: "sessions.unsubscribe",
        handler: Handler::Inline(unsubscribe),
        hidden: false,
    },
    Method {
        name: "send",
        handler: Handler::Job(delivery_job),
        hidden: false,
    },
    Method {
        name: "delivery.list",
        handler: Handler::Job(delivery_job),
        hidden: false,
    },
    Method {
        name: "delivery.retry",
        handler: Handler::Job(delivery_job),
        hidden: false,
    },
    Method {
        name: "delivery.drop",
        handler: Handler::Job(delivery_job),
        hidden: false,
    },
    Method {
        name: "keel.test.busy",
        handler: Handler::Job(test_busy),
        hidden: true,
    },
    Method {
        name: "keel.test.ballast",
        handler: Handler::Job(test_ballast),
        hidden: true,
    },
];

/// Method names announced in `hello-ok`.
pub fn public_names() -> Vec<&'static str> {
    METHODS
        .iter()
        .filter(|m| !m.hidden)
        .map(|m| m.name)
        .collect()
}

/// Resolves a call. Unknown methods (and hidden ones without test hooks) are
/// `INVALID_REQUEST "unknown method: X"`.
pub fn call(
    shared: &Arc<Shared>,
    method: &str,
    params: &Value,
    caller: &Caller,
) -> Result<Call, RpcError> {
    let m = METHODS
        .iter()
        .find(|m| m.name == method && (!m.hidden || shared.test_hooks))
        .ok_or_else(|| RpcError::unknown_method(method))?;
    if !params.is_object() {
        return Err(RpcError::invalid("invalid params: expected an object"));
    }
    Ok(match &m.handler {
        Handler::Inline(f) => Call::Inline(f(shared, params, caller)),
        Handler::Call(f) => f(shared, params, caller)?,
        Handler::Job(f) => {
            let (spec, work) = f(shared, m.name, params)?;
            Call::Job(spec, work)
        }
    })
}

/// A delivery method: an io job (it writes the queue on disk).
fn delivery_job(
    shared: &Arc<Shared>,
    method: &'static str,
    params: &Value,
) -> Result<(JobSpec, Work), RpcError> {
    let sh = shared.clone();
    let params = params.clone();
    Ok((
        JobSpec {
            kind: method.into(),
            pool: PoolKind::Io,
            lane: Lane::Interactive,
            timeout: Duration::from_secs(10),
            stall_limit: None,
        },
        Box::new(move |ctx: &JobCtx| {
            ctx.check()?;
            crate::delivery::service::call(&sh.delivery, method, &params).map(Into::into)
        }),
    ))
}

fn chat_send(shared: &Arc<Shared>, p: &Value, caller: &Caller) -> Result<Value, RpcError> {
    runs::chat_send(&shared.runs, p, caller)
}

fn agent(shared: &Arc<Shared>, p: &Value, caller: &Caller) -> Result<Value, RpcError> {
    runs::agent(&shared.runs, p, caller)
}

fn chat_abort(shared: &Arc<Shared>, p: &Value, caller: &Caller) -> Result<Value, RpcError> {
    runs::chat_abort(&shared.runs, p, caller)
}

fn agent_wait(shared: &Arc<Shared>, p: &Value, caller: &Caller) -> Result<Call, RpcError> {
    Ok(match runs::agent_wait(&shared.runs, p, caller)? {
        Some(v) => Call::Inline(Ok(v)),
        None => Call::Deferred,
    })
}

fn subscribe(shared: &Arc<Shared>, p: &Value, caller: &Caller) -> Result<Value, RpcError> {
    runs::subscribe(&shared.runs, p, caller, true)
}

fn unsubscribe(shared: &Arc<Shared>, p: &Value, caller: &Caller) -> Result<Value, RpcError> {
    runs::subscribe(&shared.runs, p, caller, false)
}

fn chat_history(
    shared: &Arc<Shared>,
    _method: &str,
    params: &Value,
) -> Result<(JobSpec, Work), RpcError> {
    let sh = shared.clone();
    let params = params.clone();
    Ok((
        JobSpec {
            kind: "chat.history".into(),
            pool: PoolKind::Cpu,
            lane: Lane::Interactive,
            timeout: Duration::from_secs(5),
            stall_limit: None,
        },
        Box::new(move |ctx: &JobCtx| {
            ctx.check()?;
            runs::chat_history(&sh.runs, &params)
        }),
    ))
}

fn health(shared: &Arc<Shared>, _params: &Value, _caller: &Caller) -> Result<Value, RpcError> {
    Ok(shared.health_json())
}

fn status(
    shared: &Arc<Shared>,
    _method: &str,
    _params: &Value,
) -> Result<(JobSpec, Work), RpcError> {
    let sh = shared.clone();
    Ok((
        JobSpec {
            kind: "status".into(),
            pool: PoolKind::Cpu,
            lane: Lane::Control,
            timeout: Duration::from_secs(5),
            stall_limit: None,
        },
        Box::new(move |ctx: &JobCtx| {
            ctx.check()?;
            Ok(sh.status_json().into())
        }),
    ))
}

/// A usage method: an interactive cpu job with the usage deadline.
fn usage_job(
    shared: &Arc<Shared>,
    method: &'static str,
    params: &Value,
) -> Result<(JobSpec, Work), RpcError> {
    let sh = shared.clone();
    let params = params.clone();
    Ok((
        JobSpec {
            kind: method.into(),
            pool: PoolKind::Cpu,
            lane: Lane::Interactive,
            timeout: crate::sessions::QUERY_DEADLINE,
            stall_limit: None,
        },
        Box::new(move |ctx: &JobCtx| sh.sessions.run(method, &params, ctx)),
    ))
}

fn opt_u64(params: &Value, key: &str, default: u64, max: u64) -> Result<u64, RpcError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().filter(|n| *n <= max).ok_or_else(|| {
            RpcError::invalid(format!("invalid params: {key} must be an integer <= {max}"))
        }),
    }
}

fn opt_bool(params: &Value, key: &str) -> Result<bool, RpcError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(RpcError::invalid(format!(
            "invalid params: {key} must be a boolean"
        ))),
    }
}

/// `keel.test.busy {ms, pool?, lane?, timeoutMs?, stallMs?, ignoreCancel?, stall?, panic?,
/// sleep?, replyBytes?}`: occupies a worker for `ms` (and answers with `replyBytes` of padding). `ignoreCancel` keeps going after the token fires;
/// `stall` stops stamping progress; `sleep` sleeps instead of spinning the CPU.
fn test_busy(_shared: &Arc<Shared>, _method: &str, p: &Value) -> Result<(JobSpec, Work), RpcError> {
    let ms = opt_u64(p, "ms", 100, 3_600_000)?;
    let pool = match p.get("pool").and_then(Value::as_str) {
        None => PoolKind::Cpu,
        Some(s) => PoolKind::parse(s)
            .ok_or_else(|| RpcError::invalid("invalid params: pool must be cpu or io"))?,
    };
    let lane = match p.get("lane").and_then(Value::as_str) {
        None => Lane::Interactive,
        Some(s) => {
            Lane::parse(s).ok_or_else(|| RpcError::invalid("invalid params: unknown lane"))?
        }
    };
    let timeout = opt_u64(p, "timeoutMs", ms + 60_000, 7_200_000)?;
    let stall = opt_u64(p, "stallMs", 0, 7_200_000)?;
    let ignore_cancel = opt_bool(p, "ignoreCancel")?;
    let stall_progress = opt_bool(p, "stall")?;
    let panic = opt_bool(p, "panic")?;
    let sleep = opt_bool(p, "sleep")?;
    let reply_bytes = opt_u64(p, "replyBytes", 0, 256 << 20)? as usize;
    let spec = JobSpec {
        kind: "keel.test.busy".into(),
        pool,
        lane,
        timeout: Duration::from_millis(timeout),
        stall_limit: (stall > 0).then(|| Duration::from_millis(stall)),
    };
    let work: Work = Box::new(move |ctx: &JobCtx| {
        if panic {
            panic!("keel.test.busy was asked to panic");
        }
        let start = Instant::now();
        let end = start + Duration::from_millis(ms);
        let mut spins: u64 = 0;
        while Instant::now() < end {
            if sleep {
                std::thread::sleep(
                    Duration::from_millis(2).min(end.saturating_duration_since(Instant::now())),
                );
            } else {
                // About a millisecond of real CPU work between checks.
                let slice = Instant::now() + Duration::from_millis(1);
                while Instant::now() < slice {
                    spins = spins.wrapping_add(1);
                    std::hint::spin_loop();
                }
            }
            if !ignore_cancel {
                if stall_progress {
                    if let Some(reason) = ctx.token().reason() {
                        return Err(crate::jobs::cancel_error(ctx.info, reason));
                    }
                } else {
                    ctx.check()?;
                }
            }
        }
        Ok(json!({
            "sleptMs": start.elapsed().as_millis() as u64,
            "spins": spins,
            "ignoredCancel": ctx.token().is_cancelled(),
            "padding": "x".repeat(reply_bytes),
        })
        .into())
    });
    Ok((spec, work))
}

/// The memory `keel.test.ballast` holds, in the chunks it was added in.
static BALLAST: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The largest ballast, in MiB.
const BALLAST_MAX_MIB: u64 = 4096;

/// Allocates `mib` MiB and writes every page, so all of it is resident.
fn fill_ballast(mib: u64, ctx: &JobCtx) -> Result<Vec<u8>, RpcError> {
    const PAGE: usize = 4096;
    let len = (mib as usize) << 20;
    // One allocation: glibc serves anything over 32 MiB with its own mmap and unmaps it on
    // free, so the resident set really drops when the ballast goes. Its fresh zero pages are
    // not resident until written: one byte a page makes them so.
    let mut v = vec![0u8; len];
    for (i, page) in v.chunks_mut(PAGE).enumerate() {
        page[0] = 1;
        if i % 4096 == 0 {
            ctx.check()?;
        }
    }
    Ok(v)
}

/// `keel.test.ballast {mib, spikeMs?}`: holds `mib` MiB of written pages (0 releases it all).
/// Growing adds a chunk and keeps what is held, so resident memory never dips on the way up;
/// shrinking drops whole chunks, newest first, then tops up. With `spikeMs`, the memory is
/// taken on top of the current ballast, held that long and released, and the answer says how
/// many watchdog samples were taken while it was fully resident (`ticksHeld`) and from the
/// first allocation to the release (`ticksSpan`), so a test can tell a spike the pressure
/// logic must ignore from one it must not.
fn test_ballast(
    shared: &Arc<Shared>,
    _method: &str,
    p: &Value,
) -> Result<(JobSpec, Work), RpcError> {
    let mib = opt_u64(p, "mib", 0, BALLAST_MAX_MIB)?;
    let spike = match p.get("spikeMs") {
        None | Some(Value::Null) => None,
        Some(_) => Some(Duration::from_millis(opt_u64(p, "spikeMs", 0, 60_000)?)),
    };
    let sh = shared.clone();
    let spec = JobSpec {
        kind: "keel.test.ballast".into(),
        pool: PoolKind::Cpu,
        lane: Lane::Control,
        timeout: Duration::from_secs(120),
        stall_limit: None,
    };
    let work: Work = Box::new(move |ctx: &JobCtx| {
        let ticks = || sh.metrics.watchdog_ticks.get();
        let mut out = json!({"mib": mib});
        if let Some(hold) = spike {
            let t0 = ticks();
            let v = fill_ballast(mib, ctx)?;
            let t1 = ticks();
            std::thread::sleep(hold);
            let t2 = ticks();
            drop(v);
            let t3 = ticks();
            out["ticksHeld"] = json!(t2 - t1);
            out["ticksSpan"] = json!(t3 - t0);
        } else {
            let mut held = lock(&BALLAST);
            let total = |h: &Vec<Vec<u8>>| h.iter().map(|c| c.len() as u64 >> 20).sum::<u64>();
            while total(&held) > mib {
                held.pop();
            }
            let missing = mib - total(&held);
            if missing > 0 {
                held.push(fill_ballast(missing, ctx)?);
            }
        }
        out["rssBytes"] = json!(crate::procfs::rss_bytes());
        Ok(out.into())
    });
    Ok((spec, work))
}
