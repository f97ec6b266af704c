//! Cancel tokens: how a deadline, a stall, a drain or a client stops a piece of work. A job's
//! token is fired by the watchdog or by `chat.abort`; whatever blocks (an outbound socket, a
//! child process) registers a hook that unblocks it at once. Cancelling is idempotent and the
//! first reason sticks; a hook registered after the token fired runs at once.

use crate::sync::lock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Why a token fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    Deadline = 1,
    Stalled = 2,
    Drain = 3,
    Client = 4,
}

impl CancelReason {
    fn from_u8(v: u8) -> Option<CancelReason> {
        match v {
            1 => Some(CancelReason::Deadline),
            2 => Some(CancelReason::Stalled),
            3 => Some(CancelReason::Drain),
            4 => Some(CancelReason::Client),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Deadline => "deadline",
            CancelReason::Stalled => "stalled",
            CancelReason::Drain => "drain",
            CancelReason::Client => "client",
        }
    }
}

type CancelHook = Box<dyn FnOnce() + Send>;

/// A cancel token. Cancelling is idempotent; the first reason sticks. Outbound calls register a
/// hook (shutting their socket) so a cancel unblocks a read at once.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<TokenInner>);

#[derive(Default)]
struct TokenInner {
    reason: AtomicU8,
    hooks: Mutex<Vec<CancelHook>>,
}

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Fires the token; returns true if this call was the one that fired it.
    pub fn cancel(&self, reason: CancelReason) -> bool {
        if self
            .0
            .reason
            .compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        let hooks = std::mem::take(&mut *lock(&self.0.hooks));
        for hook in hooks {
            hook();
        }
        true
    }

    pub fn reason(&self) -> Option<CancelReason> {
        CancelReason::from_u8(self.0.reason.load(Ordering::SeqCst))
    }

    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }

    /// A token that fires with this one (with its reason) and can also fire on its own. The
    /// hook left on this token holds only a weak reference: a child that is dropped costs
    /// this token an empty hook until it fires, never the child itself.
    pub fn child(&self) -> CancelToken {
        let child = CancelToken::new();
        let weak = Arc::downgrade(&child.0);
        let parent = Arc::downgrade(&self.0);
        self.on_cancel(move || {
            let reason = parent
                .upgrade()
                .and_then(|p| CancelReason::from_u8(p.reason.load(Ordering::SeqCst)));
            if let Some(inner) = weak.upgrade() {
                CancelToken(inner).cancel(reason.unwrap_or(CancelReason::Drain));
            }
        });
        child
    }

    /// Runs `hook` when the token fires (at once if it already has).
    pub fn on_cancel(&self, hook: impl FnOnce() + Send + 'static) {
        let mut hooks = lock(&self.0.hooks);
        if self.is_cancelled() {
            drop(hooks);
            hook();
        } else {
            hooks.push(Box::new(hook));
        }
    }
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CancelToken({:?})", self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_fires_with_its_parent_and_alone() {
        let parent = CancelToken::new();
        let alone = parent.child();
        let with = parent.child();
        assert!(alone.cancel(CancelReason::Client));
        assert!(!parent.is_cancelled(), "a child never fires its parent");
        parent.cancel(CancelReason::Drain);
        assert_eq!(with.reason(), Some(CancelReason::Drain));
        assert_eq!(
            alone.reason(),
            Some(CancelReason::Client),
            "the first reason sticks"
        );
        // A child made after the parent fired is born fired.
        assert_eq!(parent.child().reason(), Some(CancelReason::Drain));
    }
}
