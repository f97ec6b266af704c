//! Delivery: getting agent replies and `send` calls out to channels, at least once and never
//! silently lost.
//!
//! Every outbound message is first written to a durable queue ([`queue`]) and only then sent;
//! each state change (`pending → sending → sent` or `failed`) is on disk before the caller acts
//! on it, so a crash, a forced exit or a full disk never loses a message or replays one blindly.
//! A message found mid-send at boot is sent again when its request never started (its wire
//! mark says so) or when the channel drops copies by the key sent with it; otherwise its
//! channel's `delivery.onUnknown` holds it as `unknown_after_send` for an operator, or sends it
//! again. Long replies are split at the channel's limit ([`split`]), one entry per part.

pub mod channels;
pub mod queue;
pub mod service;
pub mod split;
