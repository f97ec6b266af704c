//! Delivery: getting agent replies and `send` calls out to channels, at least once and never
//! silently lost.
//!
//! Every outbound message is first written to a durable queue ([`queue`]) and only then sent;
//! each state change (`pending → sending → sent` or `failed`) is on disk before the caller acts
//! on it, so a crash, a forced exit or a full disk never loses a message or replays one blindly.
//! A message that may have left before a crash is held as `unknown_after_send` for an operator
//! to decide on, not sent again.

pub mod channels;
pub mod queue;
pub mod service;
