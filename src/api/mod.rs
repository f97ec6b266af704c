//! The application layer: the method table — name → how it runs (inline on the reactor, or
//! as a job with a pool, lane and deadline) — and the adapters that read a method's params,
//! call a service and shape the answer. The only layer that knows both the wire and the
//! services. Only cheap, in-memory methods are inline; everything else is a job.
//!
//! The hidden `keel.test.*` methods exist only when the gateway was started with
//! `KEEL_TEST_HOOKS=1`; they still need the token. They let tests and the benchmark occupy
//! workers (`keel.test.busy`) — also with a job that ignores its cancel token — and raise the
//! process's resident memory (`keel.test.ballast`), so the watchdog, the queues, the drain and
//! memory pressure can be proven against the real binary.

pub mod agent;
pub mod chat_ui;
pub mod cron;
pub mod delivery;
pub mod inbound;
pub mod inbound_telegram;
pub mod sessions;
pub mod system;
pub mod ui;
pub mod usage;

use crate::error::RpcError;
use crate::jobs::{JobCtx, JobSpec, Lane, PoolKind, Work};
use crate::protocol::params::{self, parse};
use crate::protocol::reply::ReplyTo;
use crate::runtime::Shared;
use crate::sessions::QUERY_DEADLINE;
use crate::sync::lock;
use serde::Deserialize;
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

/// What the reactor does with a call ([`dispatch`]).
#[derive(Debug)]
pub enum Dispatched {
    /// Answer now.
    Now(Result<Value, RpcError>),
    /// Answer now ("accepted"); a WebSocket caller gets a second `res` with the same id when
    /// the work it started ends, so its in-flight slot stays taken until then.
    Accepted(Value),
    /// The answer comes later through the completion channel (a job, or a deferred wait).
    Later,
}

/// How a method runs: the table's "kind" column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Answered on the reactor, from memory.
    Now,
    /// Answered by a job.
    Job(Spec),
    /// Answered now ("accepted"), and again when the run it started ends: the run is a job on
    /// the io pool's interactive lane with `agents.defaults.timeoutSeconds` (+5 s).
    Accepted,
    /// Answered later, when something else happens (a run ends, a wait times out).
    Deferred,
}

/// Where a job runs and how long it may take from admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub pool: PoolKind,
    pub lane: Lane,
    pub deadline: Duration,
}

const fn job(pool: PoolKind, lane: Lane, deadline: Duration) -> Kind {
    Kind::Job(Spec {
        pool,
        lane,
        deadline,
    })
}

type InlineFn = fn(&Arc<Shared>, &Value, &ReplyTo) -> Result<Value, RpcError>;
/// Reads the params and builds the job's work.
type WorkFn = fn(&Arc<Shared>, &Value) -> Result<Work, RpcError>;
type CallFn = fn(&Arc<Shared>, &Value, &ReplyTo) -> Result<Call, RpcError>;

enum Handler {
    /// Answers now (kinds `Now` and `Accepted`).
    Inline(InlineFn),
    /// The work of a `Job`, run with the row's spec.
    Work(WorkFn),
    /// Decides for itself: answers now, later, or as a job with its own spec.
    Call(CallFn),
}

/// One row of the method table.
struct Method {
    name: &'static str,
    kind: Kind,
    handler: Handler,
    /// Served only with `KEEL_TEST_HOOKS=1`, and not announced in `hello-ok`.
    hidden: bool,
}

/// The method table. A job's deadline runs from admission, queue wait included.
const METHODS: &[Method] = &[
    Method {
        name: "health",
        kind: Kind::Now,
        handler: Handler::Inline(health),
        hidden: false,
    },
    Method {
        name: "status",
        kind: job(PoolKind::Cpu, Lane::Control, Duration::from_secs(5)),
        handler: Handler::Work(status),
        hidden: false,
    },
    Method {
        name: "sessions.list",
        kind: job(PoolKind::Cpu, Lane::Interactive, QUERY_DEADLINE),
        handler: Handler::Work(sessions_list),
        hidden: false,
    },
    Method {
        name: "sessions.usage",
        kind: job(PoolKind::Cpu, Lane::Interactive, QUERY_DEADLINE),
        handler: Handler::Work(sessions_usage),
        hidden: false,
    },
    Method {
        name: "usage.cost",
        kind: job(PoolKind::Cpu, Lane::Interactive, QUERY_DEADLINE),
        handler: Handler::Work(usage_cost),
        hidden: false,
    },
    Method {
        // Answered at once ({runId, status}); the run follows as `chat` and `agent` events.
        name: "chat.send",
        kind: Kind::Now,
        handler: Handler::Inline(chat_send),
        hidden: false,
    },
    Method {
        name: "agent",
        kind: Kind::Accepted,
        handler: Handler::Inline(agent),
        hidden: false,
    },
    Method {
        name: "agent.wait",
        kind: Kind::Deferred,
        handler: Handler::Call(agent_wait),
        hidden: false,
    },
    Method {
        name: "chat.abort",
        kind: Kind::Now,
        handler: Handler::Inline(chat_abort),
        hidden: false,
    },
    Method {
        name: "chat.history",
        kind: job(PoolKind::Cpu, Lane::Interactive, Duration::from_secs(5)),
        handler: Handler::Work(chat_history),
        hidden: false,
    },
    Method {
        name: "sessions.subscribe",
        kind: Kind::Now,
        handler: Handler::Inline(subscribe),
        hidden: false,
    },
    Method {
        name: "sessions.unsubscribe",
        kind: Kind::Now,
        handler: Handler::Inline(unsubscribe),
        hidden: false,
    },
    Method {
        name: "send",
        kind: job(PoolKind::Io, Lane::Interactive, Duration::from_secs(10)),
        handler: Handler::Work(send),
        hidden: false,
    },
    Method {
        name: "delivery.list",
        kind: job(PoolKind::Io, Lane::Interactive, Duration::from_secs(10)),
        handler: Handler::Work(delivery_list),
        hidden: false,
    },
    Method {
        name: "delivery.retry",
        kind: job(PoolKind::Io, Lane::Interactive, Duration::from_secs(10)),
        handler: Handler::Work(delivery_retry),
        hidden: false,
    },
    Method {
        name: "delivery.drop",
        kind: job(PoolKind::Io, Lane::Interactive, Duration::from_secs(10)),
        handler: Handler::Work(delivery_drop),
        hidden: false,
    },
    // ---- Dashboard: the common and system methods every page calls (api::ui, api::system).
    // What keel has, from its config and its own measurements; for what it has not
    // (approvals, boards, …), OpenClaw's empty answer of the same shape.
    Method {
        name: "agents.list",
        kind: Kind::Now,
        handler: Handler::Inline(ui::agents_list),
        hidden: false,
    },
    Method {
        name: "agent.identity.get",
        kind: Kind::Now,
        handler: Handler::Inline(ui::agent_identity_get),
        hidden: false,
    },
    Method {
        name: "models.authStatus",
        kind: Kind::Now,
        handler: Handler::Inline(ui::models_auth_status),
        hidden: false,
    },
    Method {
        name: "update.status",
        kind: Kind::Now,
        handler: Handler::Inline(ui::update_status),
        hidden: false,
    },
    Method {
        name: "last-heartbeat",
        kind: Kind::Now,
        handler: Handler::Inline(ui::last_heartbeat),
        hidden: false,
    },
    Method {
        name: "sessions.observer.visibility",
        kind: Kind::Now,
        handler: Handler::Inline(ui::observer_visibility),
        hidden: false,
    },
    Method {
        name: "sessions.viewers.set",
        kind: Kind::Now,
        handler: Handler::Inline(ui::viewers_set),
        hidden: false,
    },
    Method {
        name: "openclaw.setup.detect",
        kind: Kind::Now,
        handler: Handler::Inline(ui::setup_detect),
        hidden: false,
    },
    Method {
        name: "config.get",
        kind: job(PoolKind::Cpu, Lane::Interactive, Duration::from_secs(5)),
        handler: Handler::Work(system::config_get),
        hidden: false,
    },
    Method {
        name: "system.info",
        kind: job(PoolKind::Cpu, Lane::Interactive, Duration::from_secs(5)),
        handler: Handler::Work(system::system_info),
        hidden: false,
    },
    Method {
        name: "logs.tail",
        kind: job(PoolKind::Cpu, Lane::Interactive, Duration::from_secs(5)),
        handler: Handler::Work(system::logs_tail),
        hidden: false,
    },
    Method {
        name: "channels.status",
        kind: job(PoolKind::Cpu, Lane::Interactive, Duration::from_secs(5)),
        handler: Handler::Work(system::channels_status),
        hidden: false,
    },
    // Empty answers: keel has none of these.
    Method {
        name: "exec.approval.list",
        kind: Kind::Now,
        handler: Handler::Inline(ui::exec_approval_list),
        hidden: false,
    },
    Method {
        name: "plugin.approval.list",
        kind: Kind::Now,
        handler: Handler::Inline(ui::plugin_approval_list),
        hidden: false,
    },
    Method {
        name: "openclaw.approval.list",
        kind: Kind::Now,
        handler: Handler::Inline(ui::openclaw_approval_list),
        hidden: false,
    },
    Method {
        name: "question.list",
        kind: Kind::Now,
        handler: Handler::Inline(ui::question_list),
        hidden: false,
    },
    Method {
        name: "node.list",
        kind: Kind::Now,
        handler: Handler::Inline(ui::node_list),
        hidden: false,
    },
    Method {
        name: "environments.list",
        kind: Kind::Now,
        handler: Handler::Inline(ui::environments_list),
        hidden: false,
    },
    Method {
        name: "plugins.controlUi.list",
        kind: Kind::Now,
        handler: Handler::Inline(ui::plugins_control_ui_list),
        hidden: false,
    },
    Method {
        name: "sessions.groups.list",
        kind: Kind::Now,
        handler: Handler::Inline(ui::sessions_groups_list),
        hidden: false,
    },
    Method {
        name: "sessions.groups.defaults",
        kind: Kind::Now,
        handler: Handler::Inline(ui::sessions_groups_defaults),
        hidden: false,
    },
    Method {
        name: "mentions.list",
        kind: Kind::Now,
        handler: Handler::Inline(ui::mentions_list),
        hidden: false,
    },
    Method {
        name: "users.prefs.get",
        kind: Kind::Now,
        handler: Handler::Inline(ui::users_prefs_get),
        hidden: false,
    },
    Method {
        name: "sessions.catalog.list",
        kind: Kind::Now,
        handler: Handler::Inline(ui::sessions_catalog_list),
        hidden: false,
    },
    Method {
        name: "controlUi.sessionPullRequests.subscribe",
        kind: Kind::Now,
        handler: Handler::Inline(ui::pull_requests_subscribe),
        hidden: false,
    },
    Method {
        name: "board.get",
        kind: Kind::Now,
        handler: Handler::Inline(ui::board_get),
        hidden: false,
    },
    Method {
        name: "projects.list",
        kind: Kind::Now,
        handler: Handler::Inline(ui::projects_list),
        hidden: false,
    },
    Method {
        name: "talk.catalog",
        kind: Kind::Now,
        handler: Handler::Inline(ui::talk_catalog),
        hidden: false,
    },
    Method {
        name: "taskSuggestions.list",
        kind: Kind::Now,
        handler: Handler::Inline(ui::task_suggestions_list),
        hidden: false,
    },
    Method {
        name: "tasks.list",
        kind: Kind::Now,
        handler: Handler::Inline(ui::tasks_list),
        hidden: false,
    },
    Method {
        name: "sessions.branches.list",
        kind: Kind::Now,
        handler: Handler::Inline(ui::sessions_branches_list),
        hidden: false,
    },
    Method {
        name: "session.discussion.info",
        kind: Kind::Now,
        handler: Handler::Inline(ui::session_discussion_info),
        hidden: false,
    },
    Method {
        name: "sessions.companion.state",
        kind: Kind::Now,
        handler: Handler::Inline(ui::sessions_companion_state),
        hidden: false,
    },
    // ---- The dashboard's Chat page (`chat_ui`); `chat.history` and `chat.abort` above are
    // answered there too.
    Method {
        name: "chat.startup",
        kind: job(PoolKind::Cpu, Lane::Interactive, Duration::from_secs(5)),
        handler: Handler::Work(chat_startup),
        hidden: false,
    },
    Method {
        name: "sessions.describe",
        kind: job(PoolKind::Cpu, Lane::Interactive, Duration::from_secs(5)),
        handler: Handler::Work(sessions_describe),
        hidden: false,
    },
    Method {
        name: "chat.metadata",
        kind: Kind::Now,
        handler: Handler::Inline(chat_metadata),
        hidden: false,
    },
    Method {
        name: "models.list",
        kind: Kind::Now,
        handler: Handler::Inline(models_list),
        hidden: false,
    },
    Method {
        name: "sessions.messages.subscribe",
        kind: Kind::Now,
        handler: Handler::Inline(messages_subscribe),
        hidden: false,
    },
    Method {
        name: "sessions.messages.unsubscribe",
        kind: Kind::Now,
        handler: Handler::Inline(messages_unsubscribe),
        hidden: false,
    },
    Method {
        name: "progressCard.get",
        kind: Kind::Now,
        handler: Handler::Inline(progress_card),
        hidden: false,
    },
    Method {
        name: "sessions.abort",
        kind: Kind::Now,
        handler: Handler::Inline(sessions_abort),
        hidden: false,
    },
    // ---- the Usage page (OpenClaw's dashboard): session detail and provider quotas ----
    Method {
        name: "sessions.usage.timeseries",
        kind: job(PoolKind::Cpu, Lane::Interactive, QUERY_DEADLINE),
        handler: Handler::Work(usage::timeseries),
        hidden: false,
    },
    Method {
        // Reads the session's transcripts: a longer deadline than the index's queries.
        name: "sessions.usage.logs",
        kind: job(PoolKind::Cpu, Lane::Interactive, Duration::from_secs(10)),
        handler: Handler::Work(usage::logs),
        hidden: false,
    },
    Method {
        name: "usage.status",
        kind: Kind::Now,
        handler: Handler::Inline(usage::status),
        hidden: false,
    },
    // ---- inbound channels: who may talk (pairing) ----
    Method {
        name: "pairing.list",
        kind: job(PoolKind::Io, Lane::Interactive, Duration::from_secs(10)),
        handler: Handler::Work(|sh, p| inbound::list(&sh.inbound, p)),
        hidden: false,
    },
    Method {
        name: "pairing.approve",
        kind: job(PoolKind::Io, Lane::Interactive, Duration::from_secs(10)),
        handler: Handler::Work(|sh, p| inbound::approve(&sh.inbound, p)),
        hidden: false,
    },
    // ---- inbound-telegram: the dashboard's pairing methods (by requestId) ----
    Method {
        name: "channels.pairing.list",
        kind: job(PoolKind::Io, Lane::Interactive, Duration::from_secs(10)),
        handler: Handler::Work(|sh, p| inbound::dashboard_list(&sh.inbound, p)),
        hidden: false,
    },
    Method {
        name: "channels.pairing.approve",
        kind: job(PoolKind::Io, Lane::Interactive, Duration::from_secs(10)),
        handler: Handler::Work(|sh, p| inbound::dashboard_approve(&sh.inbound, p)),
        hidden: false,
    },
    Method {
        name: "channels.pairing.dismiss",
        kind: job(PoolKind::Io, Lane::Interactive, Duration::from_secs(10)),
        handler: Handler::Work(|sh, p| inbound::dashboard_dismiss(&sh.inbound, p)),
        hidden: false,
    },
    // ---- cron: the scheduler (api::cron, cron::service); the Automations page and `keel cron` ----
    Method {
        name: "cron.list",
        kind: job(PoolKind::Cpu, Lane::Interactive, Duration::from_secs(5)),
        handler: Handler::Work(|sh, p| cron::list(&sh.cron, p)),
        hidden: false,
    },
    Method {
        name: "cron.status",
        kind: job(PoolKind::Cpu, Lane::Interactive, Duration::from_secs(5)),
        handler: Handler::Work(|sh, p| cron::status(&sh.cron, p)),
        hidden: false,
    },
    Method {
        name: "cron.get",
        kind: job(PoolKind::Cpu, Lane::Interactive, Duration::from_secs(5)),
        handler: Handler::Work(|sh, p| cron::get(&sh.cron, p)),
        hidden: false,
    },
    Method {
        name: "cron.runs",
        kind: job(PoolKind::Io, Lane::Interactive, Duration::from_secs(10)),
        handler: Handler::Work(|sh, p| cron::runs(&sh.cron, p)),
        hidden: false,
    },
    Method {
        name: "cron.add",
        kind: job(PoolKind::Io, Lane::Interactive, Duration::from_secs(10)),
        handler: Handler::Work(|sh, p| cron::add(&sh.cron, p)),
        hidden: false,
    },
    Method {
        name: "cron.update",
        kind: job(PoolKind::Io, Lane::Interactive, Duration::from_secs(10)),
        handler: Handler::Work(|sh, p| cron::update(&sh.cron, p)),
        hidden: false,
    },
    Method {
        name: "cron.remove",
        kind: job(PoolKind::Io, Lane::Interactive, Duration::from_secs(10)),
        handler: Handler::Work(|sh, p| cron::remove(&sh.cron, p)),
        hidden: false,
    },
    Method {
        name: "cron.run",
        kind: job(PoolKind::Io, Lane::Interactive, Duration::from_secs(10)),
        handler: Handler::Work(|sh, p| cron::run(&sh.cron, p)),
        hidden: false,
    },
    Method {
        // A test hook: its params may choose another pool, lane and deadline.
        name: "keel.test.busy",
        kind: job(PoolKind::Cpu, Lane::Interactive, Duration::from_secs(60)),
        handler: Handler::Call(test_busy),
        hidden: true,
    },
    Method {
        name: "keel.test.ballast",
        kind: job(PoolKind::Cpu, Lane::Control, Duration::from_secs(120)),
        handler: Handler::Work(test_ballast),
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

fn find(shared: &Shared, method: &str) -> Result<&'static Method, RpcError> {
    METHODS
        .iter()
        .find(|m| m.name == method && (!m.hidden || shared.test_hooks))
        .ok_or_else(|| RpcError::unknown_method(method))
}

/// Resolves a call. Unknown methods (and hidden ones without test hooks) are
/// `INVALID_REQUEST "unknown method: X"`.
pub fn call(
    shared: &Arc<Shared>,
    method: &str,
    params: &Value,
    caller: &ReplyTo,
) -> Result<Call, RpcError> {
    run(shared, find(shared, method)?, params, caller)
}

fn run(
    shared: &Arc<Shared>,
    m: &'static Method,
    params: &Value,
    caller: &ReplyTo,
) -> Result<Call, RpcError> {
    if !params.is_object() {
        return Err(RpcError::invalid("invalid params: expected an object"));
    }
    Ok(match (&m.handler, m.kind) {
        (Handler::Inline(f), _) => Call::Inline(f(shared, params, caller)),
        (Handler::Call(f), _) => f(shared, params, caller)?,
        (Handler::Work(f), Kind::Job(spec)) => {
            let work = f(shared, params)?;
            let spec = JobSpec {
                kind: m.name.into(),
                pool: spec.pool,
                lane: spec.lane,
                timeout: spec.deadline,
                stall_limit: None,
            };
            Call::Job(spec, work)
        }
        (Handler::Work(_), kind) => {
            return Err(RpcError::new(
                crate::error::Code::Internal,
                format!("method {} is {kind:?} but has a job's handler", m.name),
            ));
        }
    })
}

/// The one path from a request — WebSocket or `POST /api/rpc/<method>` — to its answer: runs
/// the method, submits its job with `reply` as where the answer goes, and says what the reactor
/// does now. Never blocks: admission refuses at once when a queue is full.
pub fn dispatch(shared: &Arc<Shared>, method: &str, params: &Value, reply: &ReplyTo) -> Dispatched {
    let m = match find(shared, method) {
        Ok(m) => m,
        Err(e) => return Dispatched::Now(Err(e)),
    };
    let accepted = m.kind == Kind::Accepted;
    match run(shared, m, params, reply) {
        Ok(Call::Inline(Ok(v))) if accepted && matches!(reply, ReplyTo::Ws { .. }) => {
            Dispatched::Accepted(v)
        }
        Ok(Call::Inline(r)) => Dispatched::Now(r),
        Ok(Call::Deferred) => Dispatched::Later,
        Ok(Call::Job(spec, work)) => match shared.submit(spec, reply.clone(), work) {
            Ok(_) => Dispatched::Later,
            Err(e) => Dispatched::Now(Err(e)),
        },
        Err(e) => Dispatched::Now(Err(e)),
    }
}

fn send(shared: &Arc<Shared>, p: &Value) -> Result<Work, RpcError> {
    delivery::send(&shared.delivery, p)
}

fn delivery_list(shared: &Arc<Shared>, p: &Value) -> Result<Work, RpcError> {
    delivery::list(&shared.delivery, p)
}

fn delivery_retry(shared: &Arc<Shared>, p: &Value) -> Result<Work, RpcError> {
    delivery::retry(&shared.delivery, p)
}

fn delivery_drop(shared: &Arc<Shared>, p: &Value) -> Result<Work, RpcError> {
    delivery::drop_entry(&shared.delivery, p)
}

fn sessions_list(shared: &Arc<Shared>, p: &Value) -> Result<Work, RpcError> {
    let work = sessions::list(&shared.sessions, p)?;
    Ok(chat_ui::with_defaults(&shared.runs, p, work))
}

fn sessions_usage(shared: &Arc<Shared>, p: &Value) -> Result<Work, RpcError> {
    sessions::usage(&shared.sessions, p)
}

fn usage_cost(shared: &Arc<Shared>, p: &Value) -> Result<Work, RpcError> {
    sessions::cost(&shared.sessions, p)
}

fn chat_send(shared: &Arc<Shared>, p: &Value, caller: &ReplyTo) -> Result<Value, RpcError> {
    agent::chat_send(&shared.runs, p, caller)
}

fn agent(shared: &Arc<Shared>, p: &Value, caller: &ReplyTo) -> Result<Value, RpcError> {
    agent::agent(&shared.runs, p, caller)
}

fn chat_abort(shared: &Arc<Shared>, p: &Value, _caller: &ReplyTo) -> Result<Value, RpcError> {
    chat_ui::chat_abort(&shared.runs, p)
}

fn agent_wait(shared: &Arc<Shared>, p: &Value, caller: &ReplyTo) -> Result<Call, RpcError> {
    Ok(match agent::agent_wait(&shared.runs, p, caller)? {
        Some(v) => Call::Inline(Ok(v)),
        None => Call::Deferred,
    })
}

fn subscribe(shared: &Arc<Shared>, p: &Value, caller: &ReplyTo) -> Result<Value, RpcError> {
    agent::subscribe(&shared.runs, p, caller, true)
}

fn unsubscribe(shared: &Arc<Shared>, p: &Value, caller: &ReplyTo) -> Result<Value, RpcError> {
    agent::subscribe(&shared.runs, p, caller, false)
}

fn chat_history(shared: &Arc<Shared>, p: &Value) -> Result<Work, RpcError> {
    chat_ui::history(&shared.runs, p)
}

fn chat_startup(shared: &Arc<Shared>, p: &Value) -> Result<Work, RpcError> {
    chat_ui::history(&shared.runs, p)
}

fn sessions_describe(shared: &Arc<Shared>, p: &Value) -> Result<Work, RpcError> {
    chat_ui::describe(&shared.runs, p)
}

fn chat_metadata(shared: &Arc<Shared>, p: &Value, _caller: &ReplyTo) -> Result<Value, RpcError> {
    chat_ui::metadata(&shared.runs, p)
}

fn models_list(shared: &Arc<Shared>, p: &Value, _caller: &ReplyTo) -> Result<Value, RpcError> {
    chat_ui::models_list(&shared.runs, p)
}

fn messages_subscribe(
    shared: &Arc<Shared>,
    p: &Value,
    caller: &ReplyTo,
) -> Result<Value, RpcError> {
    chat_ui::watch(&shared.runs, p, caller, true)
}

fn messages_unsubscribe(
    shared: &Arc<Shared>,
    p: &Value,
    caller: &ReplyTo,
) -> Result<Value, RpcError> {
    chat_ui::watch(&shared.runs, p, caller, false)
}

fn progress_card(shared: &Arc<Shared>, p: &Value, _caller: &ReplyTo) -> Result<Value, RpcError> {
    chat_ui::progress_card(&shared.runs, p)
}

fn sessions_abort(shared: &Arc<Shared>, p: &Value, _caller: &ReplyTo) -> Result<Value, RpcError> {
    chat_ui::session_abort(&shared.runs, p)
}

fn health(shared: &Arc<Shared>, _params: &Value, _caller: &ReplyTo) -> Result<Value, RpcError> {
    Ok(shared.health_json())
}

fn status(shared: &Arc<Shared>, _params: &Value) -> Result<Work, RpcError> {
    let sh = shared.clone();
    Ok(Box::new(move |ctx: &JobCtx| {
        ctx.check()?;
        Ok(sh.status_json().into())
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Busy {
    /// 100 when not given.
    #[serde(default, deserialize_with = "params::count_max::<3_600_000, _>")]
    ms: Option<u64>,
    /// `cpu` (the default) or `io`.
    #[serde(default, deserialize_with = "params::string")]
    pool: Option<String>,
    /// `interactive` by default.
    #[serde(default, deserialize_with = "params::string")]
    lane: Option<String>,
    /// `ms` + 60 s when not given.
    #[serde(default, deserialize_with = "params::count_max::<7_200_000, _>")]
    timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "params::count_max::<7_200_000, _>")]
    stall_ms: Option<u64>,
    #[serde(default, deserialize_with = "params::flag")]
    ignore_cancel: Option<bool>,
    #[serde(default, deserialize_with = "params::flag")]
    stall: Option<bool>,
    #[serde(default, deserialize_with = "params::flag")]
    panic: Option<bool>,
    #[serde(default, deserialize_with = "params::flag")]
    sleep: Option<bool>,
    #[serde(default, deserialize_with = "params::count_max::<REPLY_BYTES_MAX, _>")]
    reply_bytes: Option<u64>,
}

/// The largest padding `keel.test.busy` answers with.
const REPLY_BYTES_MAX: u64 = 256 << 20;

/// `keel.test.busy {ms, pool?, lane?, timeoutMs?, stallMs?, ignoreCancel?, stall?, panic?,
/// sleep?, replyBytes?}`: occupies a worker for `ms` (and answers with `replyBytes` of
/// padding). `ignoreCancel` keeps going after the token fires; `stall` stops stamping
/// progress; `sleep` sleeps instead of spinning the CPU.
fn test_busy(_shared: &Arc<Shared>, p: &Value, _caller: &ReplyTo) -> Result<Call, RpcError> {
    let b: Busy = parse(p)?;
    let ms = b.ms.unwrap_or(100);
    let pool = match b.pool.as_deref() {
        None => PoolKind::Cpu,
        Some(s) => PoolKind::parse(s)
            .ok_or_else(|| RpcError::invalid("invalid params: pool must be cpu or io"))?,
    };
    let lane = match b.lane.as_deref() {
        None => Lane::Interactive,
        Some(s) => {
            Lane::parse(s).ok_or_else(|| RpcError::invalid("invalid params: unknown lane"))?
        }
    };
    let timeout = b.timeout_ms.unwrap_or(ms + 60_000);
    let stall = b.stall_ms.unwrap_or(0);
    let ignore_cancel = b.ignore_cancel.unwrap_or(false);
    let stall_progress = b.stall.unwrap_or(false);
    let panic = b.panic.unwrap_or(false);
    let sleep = b.sleep.unwrap_or(false);
    let reply_bytes = b.reply_bytes.unwrap_or(0) as usize;
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
    Ok(Call::Job(spec, work))
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ballast {
    #[serde(default, deserialize_with = "params::count_max::<BALLAST_MAX_MIB, _>")]
    mib: Option<u64>,
    #[serde(default, deserialize_with = "params::count_max::<60_000, _>")]
    spike_ms: Option<u64>,
}

/// `keel.test.ballast {mib, spikeMs?}`: holds `mib` MiB of written pages (0 releases it all).
/// Growing adds a chunk and keeps what is held, so resident memory never dips on the way up;
/// shrinking drops whole chunks, newest first, then tops up. With `spikeMs`, the memory is
/// taken on top of the current ballast, held that long and released, and the answer says how
/// many watchdog samples were taken while it was fully resident (`ticksHeld`) and from the
/// first allocation to the release (`ticksSpan`), so a test can tell a spike the pressure
/// logic must ignore from one it must not.
fn test_ballast(shared: &Arc<Shared>, p: &Value) -> Result<Work, RpcError> {
    let b: Ballast = parse(p)?;
    let mib = b.mib.unwrap_or(0);
    let spike = b.spike_ms.map(Duration::from_millis);
    let sh = shared.clone();
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
    Ok(work)
}

#[cfg(test)]
mod table_tests {
    use super::*;

    #[test]
    fn every_empty_answer_has_its_row() {
        for m in ui::EMPTY_METHODS {
            let row = METHODS.iter().find(|r| r.name == *m);
            assert!(row.is_some_and(|r| !r.hidden), "{m} is not served");
        }
    }

    /// The table is consistent: a job's handler sits in a `Job` row, an accepted method
    /// answers inline, and no name is listed twice.
    #[test]
    fn every_row_agrees_with_its_handler() {
        let mut names = std::collections::BTreeSet::new();
        for m in METHODS {
            assert!(names.insert(m.name), "{} is listed twice", m.name);
            match (&m.handler, m.kind) {
                (Handler::Work(_), Kind::Job(_)) => {}
                (Handler::Work(_), k) => panic!("{}: a job's handler in a {k:?} row", m.name),
                (Handler::Inline(_), Kind::Job(_)) => {
                    panic!("{}: an inline handler in a Job row", m.name)
                }
                _ => {}
            }
        }
    }
}
