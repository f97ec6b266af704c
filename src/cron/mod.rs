//! The scheduler: jobs that start agent runs at set times (OpenClaw's `cron.*`), with a
//! receipt written before every run.
//!
//! - `schedule`: when a job is due (pure; every, cron with a zone, at).

pub mod schedule;
