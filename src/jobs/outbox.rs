//! How workers hand the reactor replies and events: one crossbeam channel and one
//! `mio::Waker`. A wake-up is sent once per batch: while one is pending, more items ride along
//! (a run streaming to 100 listeners must not mean a wake-up per event); the reactor clears the
//! flag just before it drains the channel, so an item queued after that wakes it again.

use crate::payload::Outcome;
use crate::protocol::reply::{Completion, Fanout, Outbound, ReplyTo, encode_reply};
use crossbeam_channel::Sender;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Outbox {
    tx: Sender<Outbound>,
    waker: Arc<mio::Waker>,
    wake_pending: AtomicBool,
}

impl Outbox {
    pub fn new(tx: Sender<Outbound>, waker: Arc<mio::Waker>) -> Outbox {
        Outbox {
            tx,
            waker,
            wake_pending: AtomicBool::new(false),
        }
    }

    /// Wakes the reactor (a job ended, the drain began).
    pub fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake the reactor: {e}");
        }
    }

    /// Hands a reply to the reactor.
    pub fn push(&self, c: Completion) {
        self.send(Outbound::Reply(c));
    }

    /// Hands an event for several connections to the reactor.
    pub fn fanout(&self, f: Fanout) {
        if !f.targets.is_empty() {
            self.send(Outbound::Event(f));
        }
    }

    /// Serializes `outcome` for `reply` (here, on the worker) and hands it over; internal
    /// work has no one to answer.
    pub fn reply(&self, reply: &ReplyTo, outcome: &Outcome) {
        if let Some(c) = encode_reply(reply, outcome) {
            self.push(c);
        }
    }

    fn send(&self, o: Outbound) {
        if self.tx.send(o).is_ok() && !self.wake_pending.swap(true, Ordering::AcqRel) {
            self.wake();
        }
    }

    /// The reactor is about to drain the channel: the next item must wake it again.
    pub fn clear_wake_pending(&self) {
        self.wake_pending.store(false, Ordering::Release);
    }
}
