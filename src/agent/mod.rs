//! The agent side of keel: talking to model providers on behalf of agents. Everything here
//! runs on the io worker pool and blocks; every call is bounded by its job's deadline, stall
//! limit and cancel token.

pub mod provider;
