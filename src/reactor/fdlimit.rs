//! Connections against the descriptor limit (`RLIMIT_NOFILE`).
//!
//! At boot the soft limit is raised to the hard one (what the account may use anyway). Client
//! connections may take the limit less a reserve for everything else keel opens — the
//! listener, the poller, state files, outbound calls of the workers, logs — so that a flood
//! of clients can never leave the workers without descriptors. The reactor re-reads the limit
//! every second (`prlimit` can change it under a running process).

use crate::config::Config;
use rustix::process::{Resource, getrlimit, setrlimit};

/// Raises the soft descriptor limit to the hard limit; returns the soft limit in force.
pub fn raise() -> u64 {
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let wanted = lim.maximum;
        lim.current = wanted;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            log::warn!("cannot raise the descriptor limit to {wanted:?}: {e}");
        }
    }
    soft()
}

/// The soft descriptor limit (`u64::MAX` when unlimited).
pub fn soft() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Descriptors kept for what is not a client connection.
pub fn reserve(cfg: &Config) -> usize {
    64 + 2 * (cfg.cpu_workers + cfg.io_workers)
}

/// How many client connections a soft limit allows: the limit less the reserve, and never
/// less than half the limit (a tiny limit still serves some clients).
pub fn cap(soft: u64, reserve: usize) -> usize {
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    soft.saturating_sub(reserve).max(soft / 2)
}

#[cfg(test)]
mod tests {
    #[test]
    fn caps() {
        assert_eq!(super::cap(65536, 100), 65436);
        assert_eq!(super::cap(1024, 100), 924);
        assert_eq!(super::cap(150, 100), 75);
        assert_eq!(super::cap(u64::MAX, 100), usize::MAX - 100);
    }
}
