//! Agent runs: settings, the providers' APIs, failover, the run loop and its tools, and the
//! transcripts they write. Runs execute on the io worker pool and block; every model call is
//! bounded by its job's deadline, the provider's stall limit and the run's cancel token.

pub mod engine;
pub mod failover;
pub mod provider;
pub mod runs;
pub mod tools;
pub mod transcript;
