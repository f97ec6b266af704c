//! The scheduler: jobs that start agent runs at set times (OpenClaw's `cron.*`), with a
//! receipt written before every run.
//!
//! - `schedule`: when a job is due (pure; every, cron in a zone, at).
//! - `job`: a job's definition (OpenClaw's shape, the file's content) and its checks.
//! - `receipts`: one file per run decision, written before the run starts.
//! - `service`: the jobs, the scheduler thread, heartbeats, and what the watchdog judges.

pub mod job;
pub mod receipts;
pub mod schedule;
pub mod service;
