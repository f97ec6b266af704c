//! Agent runs: settings, failover, the run loop and its tools.

pub mod engine;
pub mod failover;
pub mod runs;
pub mod settings;
pub mod tools;
pub mod transcript;
