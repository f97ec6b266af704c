//! Inbound channels: messages received from chat channels (Telegram, Slack, Feishu), stored
//! durably before the channel is acknowledged, checked against who may talk to the agent,
//! routed to an agent and a session, and run; the reply goes back through the delivery queue
//! to exactly the conversation the message came from.
//!
//! Every transport turns what it receives into one [`event::Inbound`]; everything after that
//! is the same for all channels.

pub mod access;
pub mod event;
pub mod feishu;
pub mod queue;
pub mod routes;
pub mod routing;
pub mod service;
pub mod slack;
pub mod telegram;
pub mod webhook;
