//! keel: a gateway for self-hosted AI agents, wire-compatible with the OpenClaw gateway.
//!
//! The process is one mio reactor thread (accept, parse, authenticate, answer health), two
//! fixed worker pools fed by bounded queues, a watchdog thread and a signal thread. See
//! `docs/DESIGN.md` for the whole story; each module opens with the part it keeps.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod auth;
pub mod cancel;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cron;
pub mod delivery;
pub mod digest;
pub mod error;
pub mod heartbeat;
pub mod idempotency;
pub mod ids;
pub mod inbound;
pub mod jobs;
pub mod lifecycle;
pub mod logring;
pub mod metrics;
pub mod net;
pub mod origin;
pub mod payload;
pub mod phase;
pub mod pressure;
pub mod procfs;
pub mod procgroup;
pub mod protocol;
pub mod reactor;
pub mod runtime;
pub mod sdnotify;
pub mod sessions;
pub mod state;
pub mod sync;
pub mod ui;
pub mod url;
pub mod watchdog;

/// The version keel reports to clients, in `--version`, `hello-ok` and `/metrics`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
