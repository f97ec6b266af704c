//! WebSocket frames after the upgrade, through keel's own connection handler (`WsConn`, as
//! the reactor drives it) over an in-memory socket: the `connect` handshake (the seeds carry
//! the fuzz gateway's token), then requests, binary frames, pings, fragments, closes and
//! garbage, split across reads as the input chooses. Nothing may panic, the handler must
//! finish with the input (no endless `Again`), and what it writes stays bounded. Then its
//! timers run at the deadlines it reports: never before, and never leaving one due.
//! `FUZZ_SHOW=1 fuzz/target/*/release/ws_frames FILE` prints what the gateway answered.
#![no_main]

use keel::auth::{Client, Limiters};
use keel::clock::Rng;
use keel::reactor::ws::WsConn;
use keel::reactor::{Cx, Outcome};
use keel_fuzz::MemSocket;
use libfuzzer_sys::fuzz_target;
use std::time::Instant;

fuzz_target!(|input: &[u8]| {
    let shared = keel_fuzz::shared();
    let flags = input.get(1).copied().unwrap_or(0);
    let (mut pieces, _) = keel_fuzz::split(input);
    // Bit 1: the first piece came with the upgrade request (read along with the head).
    let leftover = if flags & 2 != 0 && !pieces.is_empty() {
        pieces.remove(0).to_vec()
    } else {
        Vec::new()
    };
    let total_in: usize = leftover.len() + pieces.iter().map(|p| p.len()).sum::<usize>();
    // Bit 0: the client closes its side after its last byte.
    let socket = MemSocket::new(&pieces, flags & 1 != 0);
    let config = shared.config();
    let mut rng = Rng::new(7);
    let mut limiters = Limiters::default();
    let peer: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let now = Instant::now();
    let mut cx = Cx::new(shared, now, 0, 1, peer, &mut rng, &mut limiters, &config);
    // Bit 2: the client is remote, so its failed `connect`s meet the limiter.
    let client = Client {
        ip: peer.ip(),
        local: flags & 4 == 0,
        untrusted_forwarding: false,
    };
    let mut conn = WsConn::start(socket, leftover, client, None, &mut cx);
    let ended = keel_fuzz::drive_until_quiet(total_in, pieces.len(), || conn.drive(&mut cx));
    keel_fuzz::drain_completions();
    // The timers, checked against the deadline the connection reports (the reactor arms its
    // timer with it): nothing happens before it, and a connection that stays open reports
    // one after the time its timers ran (one left due would come due again at once).
    // Every state has a deadline: the handshake's, the next tick, the end of the linger.
    let mut at = now;
    for _ in 0..if ended { 0 } else { 4 } {
        let Some(deadline) = conn.next_deadline() else {
            panic!("a WebSocket without a deadline");
        };
        cx.now = deadline.max(at) - std::time::Duration::from_millis(1);
        if cx.now >= at {
            assert_eq!(
                conn.on_timer(&mut cx),
                Outcome::Keep,
                "acted before its deadline"
            );
        }
        at = deadline.max(at);
        cx.now = at;
        if conn.on_timer(&mut cx) == Outcome::Close {
            break;
        }
        let next = conn.next_deadline();
        assert!(
            next.is_some_and(|d| d > at),
            "a deadline left due: {next:?}"
        );
        keel_fuzz::drain_completions();
    }
    let socket = conn.into_stream();
    if std::env::var_os("FUZZ_SHOW").is_some() {
        eprintln!("{}", String::from_utf8_lossy(&socket.written));
    }
    // Each request is answered once, at most: output grows with input, never without bound.
    assert!(
        socket.written.len() <= 64 * 1024 + 64 * total_in,
        "{} bytes written for {total_in} read",
        socket.written.len()
    );
});
