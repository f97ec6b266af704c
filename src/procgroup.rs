//! Process groups keel starts (command tools), and killing them with keel.
//!
//! Each child is started as the leader of its own process group, registered here under the
//! same lock as its spawn, so that keel's exit either sees a group or stops it from being made
//! ([`kill_all`] closes the registry for good). The registry never holds a group whose leader
//! has been reaped: callers [`forget`] a group before they reap its leader, so an id here is
//! always still that group's and never a reused pid.
//!
//! The lock is held for a spawn and an insert, a removal, or `kill_all`'s signals — never
//! across a wait; `kill_all`, which the watchdog's hard exit calls, only tries it for a short
//! bound.

use crate::sync::lock;
use rustix::process::{Pid, Signal};
use std::collections::BTreeSet;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

static LIVE: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
/// Set once keel is on its way out: nothing starts after [`kill_all`].
static CLOSING: AtomicBool = AtomicBool::new(false);

/// Starts `cmd` as the leader of a new process group and registers the group; returns the
/// child and the group's id (its pid).
pub fn spawn(cmd: &mut Command) -> io::Result<(Child, i32)> {
    cmd.process_group(0);
    let mut live = lock(&LIVE);
    if CLOSING.load(Ordering::SeqCst) {
        return Err(io::Error::other("keel is shutting down"));
    }
    let mut child = cmd.spawn()?;
    let Some(pgid) = i32::try_from(child.id()).ok().filter(|p| *p > 1) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(io::Error::other("unexpected pid"));
    };
    live.insert(pgid);
    Ok((child, pgid))
}

/// SIGKILL to every process of the group. The caller makes sure the leader is not reaped yet.
pub fn kill(pgid: i32) {
    // -1 would be every process keel may signal; a child's pid is never 0 or 1 anyway.
    if pgid > 1
        && let Some(p) = Pid::from_raw(pgid)
    {
        let _ = rustix::process::kill_process_group(p, Signal::KILL);
    }
}

/// Takes the group out of the registry: call it before reaping its leader.
pub fn forget(pgid: i32) {
    lock(&LIVE).remove(&pgid);
}

/// Kills every registered group and lets no new one start; returns how many it signalled.
/// For keel's exit paths (the watchdog's hard exit, the end of `serve`): it never waits long
/// on a worker — if the registry stays locked (a spawn stuck in exec) it gives up after 100 ms
/// and says so.
pub fn kill_all() -> usize {
    CLOSING.store(true, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_millis(100);
    let live = loop {
        match LIVE.try_lock() {
            Ok(l) => break l,
            Err(TryLockError::Poisoned(p)) => break p.into_inner(),
            Err(TryLockError::WouldBlock) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(TryLockError::WouldBlock) => {
                log::warn!("the registry of child processes stayed locked; some may outlive keel");
                return 0;
            }
        }
    };
    for &pgid in live.iter() {
        kill(pgid);
    }
    live.len()
}
