//! Helpers shared by keel's fuzz targets: input split into reads, an in-memory socket, and a
//! gateway state (`Shared`) built the way `keel serve` builds it, without its threads.

use keel::config::Config;
use keel::jobs::{PoolReceivers, Pools};
use keel::runtime::{Shared, SharedParts};
use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The gateway token of [`shared`]; the seeds' `connect` frames present it.
pub const TOKEN: &str = "fuzz-token";

/// Splits `data` into the pieces successive reads would return. The first two bytes choose
/// the split: `a` the largest piece (1 << (a % 15) bytes; `a % 15 == 14` is one piece for
/// everything), `b` seeds the lengths. Returns the pieces and the rest of the input.
pub fn split(input: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let (a, b, data) = match input {
        [a, b, rest @ ..] => (*a, *b, rest),
        _ => (14, 0, input),
    };
    let max = if a % 15 == 14 {
        usize::MAX
    } else {
        1usize << (a % 15)
    };
    let mut rng = u64::from(b) * 0x9E37_79B9_7F4A_7C15 + 1;
    let mut pieces = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let n = if max == usize::MAX {
            rest.len()
        } else {
            1 + (rng as usize) % max
        }
        .min(rest.len());
        pieces.push(&rest[..n]);
        rest = &rest[n..];
    }
    (pieces, data)
}

/// An in-memory socket: each piece of input is returned by reads until used up, then one read
/// says `WouldBlock` (the end of that readiness event), as a non-blocking socket would. When
/// every piece is read: `WouldBlock` for ever, or EOF if `eof_at_end`. Writes are kept; after
/// `shutdown_write` they fail, as a real socket's do.
#[derive(Debug, Default)]
pub struct MemSocket {
    pieces: VecDeque<Vec<u8>>,
    pending_block: bool,
    pub eof_at_end: bool,
    pub written: Vec<u8>,
    pub write_shut: Cell<bool>,
}

impl MemSocket {
    pub fn new(pieces: &[&[u8]], eof_at_end: bool) -> MemSocket {
        MemSocket {
            pieces: pieces.iter().map(|p| p.to_vec()).collect(),
            eof_at_end,
            ..MemSocket::default()
        }
    }

    /// True when every piece has been read.
    pub fn drained(&self) -> bool {
        self.pieces.is_empty()
    }
}

impl Read for MemSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending_block {
            self.pending_block = false;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let Some(front) = self.pieces.front_mut() else {
            return if self.eof_at_end {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        };
        let n = front.len().min(buf.len());
        buf[..n].copy_from_slice(&front[..n]);
        front.drain(..n);
        if front.is_empty() {
            self.pieces.pop_front();
            self.pending_block = true;
        }
        Ok(n)
    }
}

impl Write for MemSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.write_shut.get() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl keel::reactor::ws::Socket for MemSocket {
    fn shutdown_write(&self) {
        self.write_shut.set(true);
    }
}

/// The repository's small fixture state (two agents, transcripts, session stores).
pub fn fixture_state() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/small/state")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the fuzz state directory");
    for e in std::fs::read_dir(from).expect("read the fixture state") {
        let e = e.expect("read the fixture state");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy the fixture state");
        }
    }
}

/// The config the fuzzed gateway runs with: token auth, hooks on (so the hook routes and
/// their body limit are reachable), and the fuzz peer (127.0.0.1) a trusted proxy, so a head's
/// `X-Forwarded-For` chain is read to find the client the limiter counts.
pub fn config() -> Config {
    let text = format!(
        r#"{{"gateway":{{"auth":{{"mode":"token","token":"{TOKEN}"}},"trustedProxies":["127.0.0.1"]}},"hooks":{{"enabled":true,"token":"hook-token","path":"/hooks"}}}}"#
    );
    let v = keel::config::parse(&text, None);
    assert!(v.problems.is_empty(), "fuzz config: {:?}", v.problems);
    v.config
}

static COMPLETIONS: OnceLock<crossbeam_channel::Receiver<keel::protocol::reply::Outbound>> =
    OnceLock::new();

/// Drops the replies and events handed to the (absent) reactor; returns how many.
pub fn drain_completions() -> usize {
    COMPLETIONS.get().map_or(0, |rx| rx.try_iter().count())
}

/// One gateway state for the whole fuzzing process, over a copy of the fixture state: built
/// as `keel serve` builds it, but no threads run (jobs stay queued; targets run the work of
/// the jobs they get themselves).
pub fn shared() -> &'static Arc<Shared> {
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        copy_dir(&fixture_state(), &dir);
        let cfg = config();
        static POLL: OnceLock<mio::Poll> = OnceLock::new();
        let poll = POLL.get_or_init(|| mio::Poll::new().expect("poll"));
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(1)).expect("waker"));
        let (tx, rx) = crossbeam_channel::unbounded();
        let _ = COMPLETIONS.set(rx);
        // Jobs stay queued (no worker runs them); the queues stay connected.
        static RECEIVERS: OnceLock<PoolReceivers> = OnceLock::new();
        let (pools, receivers) = Pools::new(1, 1, cfg.queues);
        let _ = RECEIVERS.set(receivers);
        let shared = Arc::new(Shared::new(SharedParts {
            state_dir: dir,
            overrides: Default::default(),
            config: cfg,
            pools,
            completions: tx,
            waker,
            notifier: keel::sdnotify::Notifier::new(None, None, None),
            test_hooks: false,
        }));
        shared.set_phase(keel::phase::Phase::Serving);
        // As the boot job does: new runs start once the idempotency keys are loaded.
        keel::agent::runs::open_keys(&shared.runs);
        shared
    })
}

/// Drives a connection handler (`step`, one `drive` call) over input that arrives in
/// `pieces` pieces of `total_in` bytes in all, as the reactor would: again while it asks, once
/// more per readiness event, until it closes (true) or has nothing left to read (false). More
/// rounds than bytes is a spin and fails the run.
pub fn drive_until_quiet(
    total_in: usize,
    pieces: usize,
    mut step: impl FnMut() -> keel::reactor::Outcome,
) -> bool {
    use keel::reactor::Outcome;
    let (mut rounds, mut waits) = (0usize, 0usize);
    loop {
        rounds += 1;
        // Each round reads at least a byte or ends.
        assert!(
            rounds <= total_in + 64,
            "the handler keeps asking to run again"
        );
        let outcome = step();
        drain_completions();
        match outcome {
            Outcome::Close | Outcome::Upgrade => return true,
            Outcome::Again => {}
            // The socket said WouldBlock: that happens once per piece, then for ever.
            Outcome::Keep => {
                waits += 1;
                if waits > pieces {
                    return false;
                }
            }
        }
    }
}
